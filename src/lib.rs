//! leasefs: a FUSE filesystem that exposes secrets as files and issues short-lived credentials on open.

pub mod audit;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod fs;
pub mod fuse;
pub mod issuer;
pub mod lease;
pub mod memlock;
pub mod metrics;
pub mod notify;
pub mod openbao;
pub mod render;
pub mod secret;
pub mod source;
