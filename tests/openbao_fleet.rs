//! Several OpenBao nodes and a misbehaving one (SPEC §9.5): a dead address is skipped, a 429's
//! `Retry-After` is waited for, a 503 goes to the next node or is retried with backoff, TLS is
//! checked against `ca_file` and `tls_server_name`. The 3-node raft cluster and its failover
//! scenarios are the subject of a later change (docs/fleet.md says what is proven).

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::backends::bao;
use common::*;
use serde_json::json;

struct Proxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A CA, and a certificate for the name `bao.internal` only (not for 127.0.0.1).
fn certs(dir: &Path) {
    test_certificates(dir, "DNS:bao.internal");
}

fn proxy(dir: &Path, name: &str, inject: &str) -> Proxy {
    let port = free_tcp_port();
    let log = dir.join(format!("{name}.jsonl"));
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    let (port_s, log_s) = (port.to_string(), log.to_string_lossy().to_string());
    let child = fixture_server(
        "flaky_proxy.py",
        &[
            "--port",
            &port_s,
            "--cert",
            &p("node.pem"),
            "--key",
            &p("node.key"),
            "--upstream",
            &bao().addr,
            "--log",
            &log_s,
            "--inject",
            inject,
        ],
    );
    Proxy { child, port, log }
}

fn fleet_env(addresses: &[String], tls: Option<&Path>) -> Env {
    let b = bao();
    // Once for the tests of this file (OpenBao refuses concurrent engine configuration).
    static SETUP: std::sync::Once = std::sync::Once::new();
    SETUP.call_once(|| {
        b.kv_put("fleet/app", json!({"password": "fleet-value"}));
        b.database_role("fleet", "1m");
    });
    let env = Env::new();
    let token = env.path("bao-token");
    std::fs::write(&token, &b.token).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut src = json!({"type": "openbao", "prefix": "/bao", "addresses": addresses, "token_file": token,
                         "kv_mounts": ["secret"], "dynamic_mounts": ["database"]});
    if let Some(dir) = tls {
        src["ca_file"] = json!(dir.join("ca.pem"));
        src["tls_server_name"] = json!("bao.internal");
    }
    let cfg = json!({"sources": [src], "state_dir": env.path("state"), "audit_log": env.path("audit.jsonl"),
                     "defaults": {"issue_timeout": "8s", "cache_ttl": "1s"}});
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    std::fs::set_permissions(env.path("config.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env
}

#[test]
fn a_dead_node_is_skipped_and_a_429_and_a_503_are_waited_out_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let dead = format!(
        "https://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    // The first three requests of this node: a 429 (Retry-After: 1), then two 503s.
    let flaky = proxy(dir.path(), "flaky", "429,503,503");
    let good = format!("https://127.0.0.1:{}", flaky.port);
    let mut env = fleet_env(&[dead, good], Some(dir.path()));
    let t = Instant::now();
    env.start();
    let started = t.elapsed();
    // The listing went through the dead node, the 429 (waited ~1 s) and the 503s (backoff).
    let reqs = flaky.requests();
    assert!(reqs.len() >= 4, "{reqs:?}");
    let (t429, t_next) = (reqs[0]["time"].as_f64().unwrap(), reqs[1]["time"].as_f64().unwrap());
    assert_eq!(reqs[0]["injected"], 429);
    assert!(t_next - t429 >= 0.95, "the 429's Retry-After was not waited for ({}s)", t_next - t429);
    assert!(started < Duration::from_secs(15), "startup took {started:?}");
    let v: serde_json::Value = serde_json::from_str(&cat(&env.m("bao/secret/fleet/app"))).unwrap();
    assert_eq!(v["password"], "fleet-value");
    // A dynamic credential through the same nodes (the dead one is no longer tried first).
    let c: serde_json::Value = serde_json::from_str(&cat(&env.m("bao/database/creds/fleet"))).unwrap();
    assert!(c["username"].as_str().is_some_and(|u| !u.is_empty()), "{c}");
    let before = flaky.requests().len();
    std::thread::sleep(Duration::from_millis(1100)); // past cache_ttl
    cat(&env.m("bao/secret/fleet/app"));
    assert!(flaky.requests().len() > before, "the good node serves reads");
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let node = proxy(dir.path(), "node", "");
    let mut env = fleet_env(&[format!("https://127.0.0.1:{}", node.port)], Some(dir.path()));
    // Trust the CA, but expect another name than the certificate's.
    let cfg = std::fs::read_to_string(env.path("config.json")).unwrap().replace("bao.internal", "other.internal");
    std::fs::write(env.path("config.json"), cfg).unwrap();
    env.start();
    let status = read(&env.m(".leasefs/status.json")).unwrap();
    assert!(status.contains("\"up\": false"), "a node with the wrong name was trusted: {status}");
    assert!(node.requests().is_empty(), "no request reached a node whose certificate does not match");
}

#[test]
fn an_approle_token_with_a_short_ttl_is_renewed_and_logged_in_again_while_leasefs_keeps_issuing() {
    let b = bao();
    approle_once();
    let role_id =
        b.api("GET", "auth/approle/role/leasefs/role-id", None)["data"]["role_id"].as_str().unwrap().to_string();
    let secret_id = b.api("POST", "auth/approle/role/leasefs/secret-id", Some(json!({})))["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    let env = fleet_env(std::slice::from_ref(&b.addr), None);
    for (name, value) in [("role-id", &role_id), ("secret-id", &secret_id)] {
        std::fs::write(env.path(name), value).unwrap();
        std::fs::set_permissions(env.path(name), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let cfg = std::fs::read_to_string(env.path("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let src = cfg["sources"][0].as_object_mut().unwrap();
    src.remove("token_file");
    src.insert(
        "auth".into(),
        json!({"method": "approle", "role_id_file": env.path("role-id"), "secret_id_file": env.path("secret-id")}),
    );
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    let mut env = env;
    let logins_before = b.requests().iter().filter(|(_, p)| p == "auth/approle/login").count();
    env.start();
    // 20 s of reads and issuances across several token lifetimes (TTL 4 s, max 8 s).
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(20) {
        let v: serde_json::Value = serde_json::from_str(
            &read(&env.m("bao/secret/fleet/app"))
                .unwrap_or_else(|e| panic!("read failed after {:?}: {e}\n{}", start.elapsed(), env.log())),
        )
        .unwrap();
        assert_eq!(v["password"], "fleet-value");
        let c = read(&env.m("bao/database/creds/fleet"))
            .unwrap_or_else(|e| panic!("issuance failed after {:?}: {e}\n{}", start.elapsed(), env.log()));
        assert!(c.contains("username"));
        n += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    let reqs = b.requests();
    let logins = reqs.iter().filter(|(_, p)| p == "auth/approle/login").count() - logins_before;
    let renewals = reqs.iter().filter(|(_, p)| p == "auth/token/renew-self").count();
    eprintln!("{n} rounds of a read and an issuance in 20 s: {logins} AppRole logins, {renewals} token renewals");
    assert!(logins >= 2, "the token reached its max TTL and leasefs logged in again: {logins}");
    assert!(renewals >= 1, "the token was renewed at 2/3 of its TTL: {renewals}");
}

/// AppRole for leasefs on the shared dev server (4 s TTL, 8 s max), set up once.
fn approle_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let b = bao();
    ONCE.call_once(|| {
        b.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})));
        b.api("PUT", "sys/policies/acl/leasefs", Some(json!({"policy": "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }"})));
        let v = b.api("POST", "auth/approle/role/leasefs", Some(json!({"token_policies": ["leasefs"], "token_ttl": "4s", "token_max_ttl": "8s"})));
        assert!(v.get("errors").is_none(), "{v}");
    });
}

#[test]
fn openbaos_own_rate_limit_quota_answers_429_with_retry_after_and_leasefs_waits_instead_of_hammering() {
    let b = bao();
    b.api("POST", "sys/quotas/config", Some(json!({"enable_rate_limit_response_headers": true})));
    // A KV mount of its own under a quota of one request per 2 s (other tests are not limited).
    b.api("POST", "sys/mounts/limited", Some(json!({"type": "kv", "options": {"version": "2"}})));
    b.api("POST", "limited/data/app", Some(json!({"data": {"password": "limited-value"}})));
    let v = b.api(
        "POST",
        "sys/quotas/rate-limit/leasefs-test",
        Some(json!({"path": "limited/", "rate": 1, "interval": "2s"})),
    );
    assert!(v.is_null() || v.get("errors").is_none(), "{v}");
    let mut env = fleet_env(std::slice::from_ref(&b.addr), None);
    let cfg = std::fs::read_to_string(env.path("config.json"))
        .unwrap()
        .replace("\"cache_ttl\":\"1s\"", "\"cache_ttl\":\"0s\"")
        .replace("\"kv_mounts\":[\"secret\"]", "\"kv_mounts\":[\"secret\",\"limited\"]");
    std::fs::write(env.path("config.json"), cfg).unwrap();
    env.start();
    let f = env.m("bao/limited/app");
    let t = Instant::now();
    for _ in 0..4 {
        let v: serde_json::Value =
            serde_json::from_str(&read(&f).unwrap_or_else(|e| panic!("{e}\n{}", env.log()))).unwrap();
        assert_eq!(v["password"], "limited-value");
    }
    let took = t.elapsed();
    let waits = env.log().matches("OpenBao rate limit (429)").count();
    let hits = b.requests().iter().filter(|(_, p)| p == "limited/data/app").count();
    eprintln!(
        "4 reads under a 1-per-2s quota: {took:?}, {waits} waits on Retry-After, {hits} requests; quota {}",
        b.api("GET", "sys/quotas/rate-limit/leasefs-test", None)
    );
    assert!(waits >= 1, "the quota's 429 was met and waited out:\n{}", env.log());
    assert!(waits <= 20, "{waits} waits for 4 reads over {took:?}: the node was hammered (Retry-After: 0 is not a go)");
    assert!(took >= Duration::from_millis(1900), "the reads were spread by the quota, not hammered: {took:?}");
    assert!(hits <= 4 + waits + 1, "{hits} requests for 4 reads: leasefs hammered the node");
}

#[test]
fn a_response_wrapped_secret_id_is_unwrapped_at_login() {
    let b = bao();
    approle_once();
    let role_id =
        b.api("GET", "auth/approle/role/leasefs/role-id", None)["data"]["role_id"].as_str().unwrap().to_string();
    // The secret id, response-wrapped: what a bootstrap hands a new node.
    let o = run(
        "curl",
        &[
            "-s",
            "-X",
            "POST",
            "-H",
            &format!("X-Vault-Token: {}", b.token),
            "-H",
            "X-Vault-Wrap-TTL: 60s",
            &format!("{}/v1/auth/approle/role/leasefs/secret-id", b.addr),
        ],
    );
    let wrapped: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let wrapping_token = wrapped["wrap_info"]["token"].as_str().unwrap_or_else(|| panic!("{wrapped}")).to_string();
    let mut env = fleet_env(std::slice::from_ref(&b.addr), None);
    for (name, value) in [("role-id", &role_id), ("secret-id", &wrapping_token)] {
        std::fs::write(env.path(name), value).unwrap();
        std::fs::set_permissions(env.path(name), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("config.json")).unwrap()).unwrap();
    let src = cfg["sources"][0].as_object_mut().unwrap();
    src.remove("token_file");
    src.insert("auth".into(), json!({"method": "approle", "role_id_file": env.path("role-id"), "secret_id_file": env.path("secret-id"), "wrapped": true}));
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    env.start();
    let v: serde_json::Value = serde_json::from_str(&cat(&env.m("bao/secret/fleet/app"))).unwrap();
    assert_eq!(v["password"], "fleet-value");
    assert!(b.requests().iter().any(|(_, p)| p == "sys/wrapping/unwrap"), "the wrapping token was unwrapped");
    // Past the token's max TTL (8 s) leasefs logs in again with the secret id it unwrapped.
    std::thread::sleep(Duration::from_secs(9));
    assert!(read(&env.m("bao/database/creds/fleet")).is_ok(), "{}", env.log());
    assert!(env.log().matches("logged in to OpenBao with AppRole").count() >= 2, "{}", env.log());
}
