//! leasefs: a FUSE filesystem that exposes secrets as files and issues short-lived credentials on open.

pub mod audit;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fs;
pub mod fuse;
pub mod memlock;
pub mod render;
pub mod secret;
pub mod source;
