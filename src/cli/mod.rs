//! The command line's larger commands, kept out of main.rs: `check`, the man page, and the
//! `mount.leasefs` helper.

pub mod check;
pub mod logs;
pub mod manpage;
pub mod mount_helper;
