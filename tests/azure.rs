//! The `azure` issuer against a local HTTPS server that implements Microsoft's documented token
//! and Graph `addPassword`/`removePassword` requests and answers (a contract test: no Azure
//! emulator exists). See docs/issuers.md for what Entra ID needs.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;
use serde_json::json;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const SECRET: &str = "base-client-secret-Zx9";
const APP: &str = "99999999-8888-7777-6666-555555555555";

struct Server {
    child: Child,
    url: String,
    ca: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1, then the contract server on a free port.
fn server(dir: &Path) -> Server {
    test_certificates(dir, "IP:127.0.0.1,DNS:localhost");
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    let port = free_tcp_port().to_string();
    let child = fixture_server(
        "graph_contract.py",
        &[
            "--port",
            &port,
            "--cert",
            &p("node.pem"),
            "--key",
            &p("node.key"),
            "--tenant",
            TENANT,
            "--client-id",
            CLIENT,
            "--client-secret",
            SECRET,
            "--app",
            APP,
        ],
    );
    Server { child, url: format!("https://127.0.0.1:{port}"), ca: dir.join("ca.pem") }
}

fn state(s: &Server) -> serde_json::Value {
    let o = run("curl", &["-sf", "--cacert", s.ca.to_str().unwrap(), &format!("{}/state", s.url)]);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn azure_client_secrets_are_added_per_lease_removed_at_its_end_and_429_is_waited_for() {
    let mut env = Env::new();
    let srv = server(env.dir.path());
    let base = |secret: &str| {
        json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": secret, "application_object_id": APP,
               "authority": srv.url, "graph": srv.url, "ca_file": srv.ca})
    };
    env.doc(
        "azure.json",
        &json!([
            {"path": "base:azure:app", "attributes": {"type": "azure"}, "data": base(SECRET)},
            {"path": "base:azure:wrong", "attributes": {"type": "azure"}, "data": base("not-the-secret")},
            dynamic("dynamic:azure:app", "base:azure:app", json!({"ttl": "10m", "format": "json"})),
            dynamic("dynamic:azure:env", "base:azure:app", json!({"ttl": "3s", "format": "env"})),
            dynamic("dynamic:azure:wrong", "base:azure:wrong", json!({})),
        ])
        .to_string(),
    );
    env.config(json!({}));
    env.start();

    // Issue: a token, one 429 waited out, then addPassword with the lease id as displayName.
    let t = std::time::Instant::now();
    let v: serde_json::Value = serde_json::from_str(&cat(&env.m("dynamic/azure/app"))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(950), "Retry-After: 1 was not waited for");
    let st = state(&srv);
    let key_id = v["key_id"].as_str().unwrap();
    let cred = &st["passwords"][key_id];
    assert_eq!(v["client_secret"], cred["secretText"], "the file holds the new secretText");
    assert_eq!(v["client_id"], CLIENT);
    assert_eq!(v["tenant_id"], TENANT);
    let lease = env.leases().into_iter().find(|l| l["path"] == "/dynamic/azure/app").unwrap();
    assert_eq!(cred["displayName"], lease["id"], "displayName is the lease id");
    let log: Vec<String> =
        st["log"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    let adds: Vec<f64> = st["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"].as_str().unwrap().ends_with("addPassword"))
        .map(|e| e["time"].as_f64().unwrap())
        .collect();
    assert_eq!(adds.len(), 2, "one throttled, one retried: {log:?}");
    assert!(adds[1] - adds[0] >= 0.95, "retried {}s after the 429", adds[1] - adds[0]);

    // At the end of the lease (here: its 3 s expiry) removePassword takes the secret away.
    let e = cat(&env.m("dynamic/azure/env"));
    let short_key = e.lines().find_map(|l| l.strip_prefix("KEY_ID='")).unwrap().trim_end_matches('\'').to_string();
    assert!(state(&srv)["passwords"].get(&short_key).is_some());
    eventually(Duration::from_secs(10), "removePassword at expiry", || {
        state(&srv)["passwords"].get(&short_key).is_none()
    });
    // And on revoke.
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), lease["id"].as_str().unwrap()]);
    eventually(Duration::from_secs(10), "removePassword on revoke", || state(&srv)["passwords"].get(key_id).is_none());

    // A wrong client secret: EIO, Entra ID's code in the log, no secret anywhere.
    assert_eq!(errno_of(read(&env.m("dynamic/azure/wrong"))), libc::EIO);
    let log = env.log();
    assert!(log.contains("AADSTS7000215"), "{log}");
    let audit = std::fs::read_to_string(env.path("audit.jsonl")).unwrap();
    let journal = std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap_or_default();
    for text in [&log, &audit, &journal] {
        assert!(
            !text.contains("not-the-secret") && !text.contains(SECRET) && !text.contains("lfs~"),
            "a secret leaked"
        );
    }
}
