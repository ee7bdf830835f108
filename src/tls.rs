//! TLS and HTTP clients for every issuer and source: the rustls provider installed once, and one
//! long-lived client per server so that connections and TLS sessions are reused.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::Mutex;

/// Installs the process-wide rustls crypto provider (ring) once; reqwest is built without one.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A new HTTP client whose requests and connects time out after `timeout`.
pub fn new_client(timeout: Duration) -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_default()
}

static CLIENTS: LazyLock<Mutex<HashMap<(String, Duration), reqwest::Client>>> = LazyLock::new(Default::default);

/// The one client for `server` (an address such as `https://bao-1:8200`) with this timeout:
/// made on first use, then shared (a `reqwest::Client` is a handle on one connection pool).
pub fn client_for(server: &str, timeout: Duration) -> reqwest::Client {
    CLIENTS.lock().entry((server.to_string(), timeout)).or_insert_with(|| new_client(timeout)).clone()
}
