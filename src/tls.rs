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

/// A new HTTP client whose requests and connects time out after `timeout`. Fails (rather than
/// panicking) where the system has no CA certificates, e.g. a bare container image.
pub fn new_client(timeout: Duration) -> Result<reqwest::Client, String> {
    install_crypto();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => format!("cannot set up HTTPS: {cause}"),
            None => format!("cannot set up HTTPS: {e}"),
        })
}

/// A client that also trusts the CA certificates in `ca_file` (PEM), for a private CA or a
/// proxy; shared per (file, timeout) like [`client_for`].
pub fn client_with_ca(ca_file: &std::path::Path, timeout: Duration) -> Result<reqwest::Client, String> {
    let key = (format!("ca:{}", ca_file.display()), timeout);
    if let Some(c) = CLIENTS.lock().get(&key) {
        return Ok(c.clone());
    }
    install_crypto();
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read ca_file {}: {e}", ca_file.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("ca_file {}: not PEM certificates ({e})", ca_file.display()))?;
    let mut b = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout);
    for c in certs {
        b = b.add_root_certificate(c);
    }
    let c = b.build().map_err(|e| format!("cannot set up HTTPS: {e}"))?;
    CLIENTS.lock().insert(key, c.clone());
    Ok(c)
}

static CLIENTS: LazyLock<Mutex<HashMap<(String, Duration), reqwest::Client>>> = LazyLock::new(Default::default);

/// The one client for `server` (an address such as `https://bao-1:8200`) with this timeout:
/// made on first use, then shared (a `reqwest::Client` is a handle on one connection pool).
pub fn client_for(server: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut g = CLIENTS.lock();
    if let Some(c) = g.get(&(server.to_string(), timeout)) {
        return Ok(c.clone());
    }
    let c = new_client(timeout)?;
    g.insert((server.to_string(), timeout), c.clone());
    Ok(c)
}
