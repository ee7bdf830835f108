//! leasefs: a FUSE filesystem that exposes secrets as files and issues short-lived credentials on open.

pub mod attrs;
pub mod audit;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod diag;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod issuer;
pub mod lease;
pub mod memlock;
pub mod metrics;
pub mod notifier;
pub mod notify;
pub mod openbao;
pub mod openbao_auth;
pub mod paths;
pub mod policy;
pub mod render;
pub mod rotation;
pub mod secret;
pub mod source;
pub mod tls;
pub mod trust;
