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

/// How long to wait after the `attempt`-th 429 in a row: what `Retry-After` says (seconds), but
/// never less than 250 ms doubling with each 429 (up to 4 s) — a server may well say
/// `Retry-After: 0` while still refusing, and must not be hammered.
pub fn retry_after(resp: &reqwest::Response, attempt: u32) -> Duration {
    let said = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1));
    said.max(Duration::from_millis(250 << attempt.min(4)))
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

/// The URL prefix and shared client for one OpenBao node: trusting `ca_file` too, and verifying
/// the certificate against `server_name` (the URL then names it, resolved to the node's
/// address) when the address is an IP.
pub fn node_client(
    address: &str,
    ca_file: Option<&std::path::Path>,
    server_name: Option<&str>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    timeout: Duration,
) -> Result<(String, reqwest::Client), String> {
    let address = address.trim_end_matches('/');
    if ca_file.is_none() && server_name.is_none() && identity.is_none() {
        return Ok((address.to_string(), client_for(address, timeout)?));
    }
    let url = url::Url::parse(address).map_err(|e| format!("address {address:?}: {e}"))?;
    let base = match server_name {
        Some(name) => {
            let mut u = url.clone();
            u.set_host(Some(name)).map_err(|e| format!("tls_server_name {name:?}: {e}"))?;
            u.as_str().trim_end_matches('/').to_string()
        }
        None => address.to_string(),
    };
    let key = (format!("node:{address}:{ca_file:?}:{server_name:?}:{identity:?}"), timeout);
    if let Some(c) = CLIENTS.lock().get(&key) {
        return Ok((base, c.clone()));
    }
    install_crypto();
    let mut b = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout);
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_file {}: {e}", ca.display()))? {
            b = b.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = identity {
        // A client certificate for the `cert` login: the key and the certificate, one PEM.
        let mut pem =
            zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?);
        pem.extend_from_slice(&std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?);
        b = b.identity(
            reqwest::Identity::from_pem(&pem).map_err(|e| format!("client certificate {}: {e}", cert.display()))?,
        );
    }
    if let Some(name) = server_name {
        let host = url.host_str().ok_or_else(|| format!("address {address:?} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(8200);
        let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().map_err(|_| {
            format!("tls_server_name needs an IP address (the node's); {host:?} is a name: put the name in the address")
        })?;
        b = b.resolve(name, std::net::SocketAddr::new(ip, port));
    }
    let c = b.build().map_err(|e| format!("cannot set up HTTPS: {e}"))?;
    CLIENTS.lock().insert(key, c.clone());
    Ok((base, c))
}

/// The default of `max_response_bytes`: the most of one server answer that is read.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

static MAX_RESPONSE_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(DEFAULT_MAX_RESPONSE_BYTES);

/// Sets `max_response_bytes` for every client of this process (the daemon does, from its config).
pub fn set_max_response_bytes(n: u64) {
    MAX_RESPONSE_BYTES.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

pub fn max_response_bytes() -> u64 {
    MAX_RESPONSE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Why an answer's body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than `max_response_bytes`: the message names where and the size, never the body.
    TooLarge(String),
    /// The connection failed or timed out while reading.
    Read(reqwest::Error),
}

/// Reads an answer's body (as text) in chunks, refusing it past `max_response_bytes`: at once when
/// `Content-Length` says so, else as soon as the bytes read pass the cap (the rest is never read).
/// `what` names the request (a path or an endpoint) in the error.
pub async fn read_capped(mut resp: reqwest::Response, what: &str) -> Result<zeroize::Zeroizing<String>, BodyError> {
    let cap = max_response_bytes();
    let said = resp.content_length();
    if let Some(n) = said.filter(|n| *n > cap) {
        return Err(BodyError::TooLarge(format!(
            "{what}: the answer is {n} bytes, over max_response_bytes ({cap}); refused"
        )));
    }
    // Sized once when the length is known: a grown buffer would leave copies behind unzeroized.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(said.unwrap_or(0) as usize));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if buf.len() as u64 + chunk.len() as u64 > cap {
            return Err(BodyError::TooLarge(format!(
                "{what}: the answer is more than {cap} bytes (max_response_bytes); refused after reading {} bytes",
                buf.len() as u64 + chunk.len() as u64
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    let text = match std::str::from_utf8(&buf) {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(&buf).into_owned(),
    };
    Ok(zeroize::Zeroizing::new(text))
}
