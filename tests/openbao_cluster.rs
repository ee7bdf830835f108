//! A fleet's engine for real (SPEC §9.5): a 3-node OpenBao cluster with integrated raft
//! storage, TLS, AppRole, KV v2 and the database engine against the real PostgreSQL. leasefs
//! keeps issuing while the leader is killed and comes back, and recovers by itself after the
//! whole cluster was down for longer than its token's TTL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::backends::{pg, spawn_server};
use common::*;
use serde_json::{Value, json};

struct Cluster {
    dir: PathBuf,
    ports: [u16; 3],
    nodes: [Option<Child>; 3],
    key: String,
    token: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut().flatten() {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

impl Cluster {
    fn addr(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.ports[i])
    }

    fn curl(&self, i: usize, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "5", "--cacert", self.dir.join("ca.pem").to_str().unwrap(), "-X", method]);
        c.args(["-H", &format!("X-Vault-Token: {}", self.token), &format!("{}/v1/{path}", self.addr(i))]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        let o = c.output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// A call to whichever node is active.
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let i = self.leader().expect("an active node");
        self.curl(i, method, path, body)
    }

    fn start_node(&mut self, i: usize) {
        let mut cmd = Command::new(std::env::var("LEASEFS_BAO").expect("scripts/backends.sh sets LEASEFS_BAO"));
        cmd.arg("server").arg(format!("-config={}", self.dir.join(format!("n{i}.hcl")).display()));
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(self.dir.join(format!("n{i}.log"))).unwrap());
        self.nodes[i] = Some(spawn_server(cmd));
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            let _ = n.kill();
            let _ = n.wait();
        }
    }

    /// Unseals node `i` (retrying while it joins).
    fn unseal(&self, i: usize) {
        self.unseal_all(&[i]);
    }

    /// Unseals the nodes `which`, asking each still sealed in turn until none is (a node started
    /// with the others down answers only once it has read its raft log: slow on a loaded machine).
    fn unseal_all(&self, which: &[usize]) {
        let mut sealed: Vec<usize> = which.to_vec();
        eventually(Duration::from_secs(60), "the nodes to unseal", || {
            sealed.retain(|&i| self.curl(i, "PUT", "sys/unseal", Some(json!({"key": self.key})))["sealed"] != false);
            sealed.is_empty()
        });
    }

    /// The index of the active node, if any.
    fn leader(&self) -> Option<usize> {
        (0..3).find(|i| {
            self.nodes[*i].is_some() && {
                let v = self.curl(*i, "GET", "sys/leader", None);
                v["is_self"] == true
            }
        })
    }

    fn start(pgport: u16) -> Cluster {
        let dir = tempfile::Builder::new().prefix("leasefs-test-cluster-").tempdir().unwrap().keep();
        test_certificates(&dir, "IP:127.0.0.1,DNS:localhost");
        let ports = [free_tcp_port(), free_tcp_port(), free_tcp_port()];
        let cports = [free_tcp_port(), free_tcp_port(), free_tcp_port()];
        let d = dir.display();
        for i in 0..3 {
            let joins: String = (0..3)
                .map(|j| format!("  retry_join {{\n    leader_api_addr = \"https://127.0.0.1:{}\"\n    leader_ca_cert_file = \"{d}/ca.pem\"\n  }}\n", ports[j]))
                .collect();
            std::fs::create_dir_all(dir.join(format!("n{i}"))).unwrap();
            std::fs::write(
                dir.join(format!("n{i}.hcl")),
                format!(
                    "disable_mlock = true\nui = false\nstorage \"raft\" {{\n  path = \"{d}/n{i}\"\n  node_id = \"n{i}\"\n  performance_multiplier = 1\n{joins}}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{p}\"\n  cluster_address = \"127.0.0.1:{c}\"\n  tls_cert_file = \"{d}/node.pem\"\n  tls_key_file = \"{d}/node.key\"\n}}\n\
                     api_addr = \"https://127.0.0.1:{p}\"\ncluster_addr = \"https://127.0.0.1:{c}\"\n",
                    p = ports[i],
                    c = cports[i]
                ),
            )
            .unwrap();
        }
        let mut cl = Cluster { dir, ports, nodes: [None, None, None], key: String::new(), token: String::new() };
        cl.start_node(0);
        let mut init = Value::Null;
        eventually(Duration::from_secs(20), "node 0 to answer", || {
            init = cl.curl(0, "PUT", "sys/init", Some(json!({"secret_shares": 1, "secret_threshold": 1})));
            init["root_token"].is_string()
        });
        cl.key = init["keys_base64"][0].as_str().unwrap().to_string();
        cl.token = init["root_token"].as_str().unwrap().to_string();
        cl.unseal(0);
        eventually(Duration::from_secs(20), "node 0 to become active", || cl.leader() == Some(0));
        cl.curl(0, "PUT", "sys/storage/raft/autopilot/configuration", Some(json!({"server_stabilization_time": "1s"})));
        for i in 1..3 {
            cl.start_node(i);
            cl.unseal(i);
        }
        eventually(Duration::from_secs(40), "three voters", || {
            let v = cl.curl(0, "GET", "sys/storage/raft/configuration", None);
            v["data"]["config"]["servers"]
                .as_array()
                .is_some_and(|s| s.len() == 3 && s.iter().all(|x| x["voter"] == true))
        });
        // What leasefs uses: KV v2, the database engine, AppRole with a policy for leasefs.
        cl.api("POST", "sys/mounts/secret", Some(json!({"type": "kv", "options": {"version": "2"}})));
        cl.api("POST", "secret/data/cl/app", Some(json!({"data": {"password": "cluster-value"}})));
        cl.api("POST", "sys/mounts/database", Some(json!({"type": "database"})));
        let v = cl.api("POST", "database/config/pg", Some(json!({
            "plugin_name": "postgresql-database-plugin", "allowed_roles": "*", "username": "postgres", "password": pg().password,
            "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pgport}/postgres?sslmode=disable"),
        })));
        assert!(v.get("errors").is_none(), "{v}");
        let v = cl.api("POST", "database/roles/cl", Some(json!({
            "db_name": "pg", "default_ttl": "6s", "max_ttl": "1h",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            "revocation_statements": ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';", "DROP ROLE IF EXISTS \"{{name}}\";"],
        })));
        assert!(v.get("errors").is_none(), "{v}");
        cl.api("POST", "sys/auth/approle", Some(json!({"type": "approle"})));
        cl.api("PUT", "sys/policies/acl/leasefs", Some(json!({"policy": "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }"})));
        cl
    }

    /// An AppRole for leasefs with this token TTL and max TTL; writes role id and secret id files.
    fn approle(&self, dir: &Path, ttl: &str, max_ttl: &str) {
        let v = self.api(
            "POST",
            "auth/approle/role/leasefs",
            Some(json!({"token_policies": ["leasefs"], "token_ttl": ttl, "token_max_ttl": max_ttl})),
        );
        assert!(v.get("errors").is_none(), "{v}");
        let role =
            self.api("GET", "auth/approle/role/leasefs/role-id", None)["data"]["role_id"].as_str().unwrap().to_string();
        let secret = self.api("POST", "auth/approle/role/leasefs/secret-id", Some(json!({})))["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        for (n, v) in [("role-id", role), ("secret-id", secret)] {
            std::fs::write(dir.join(n), v).unwrap();
            std::fs::set_permissions(dir.join(n), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        }
    }

    /// TLS certificate login for leasefs: a client certificate signed by the test CA, trusted by
    /// a cert role with this token TTL and max TTL.
    fn cert_role(&self, dir: &Path, ttl: &str, max_ttl: &str) {
        let p = |n: &str| dir.join(n).to_string_lossy().to_string();
        let ca = |n: &str| self.dir.join(n).to_string_lossy().to_string();
        ok(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("client.key"),
                "-out",
                &p("client.csr"),
                "-subj",
                "/CN=leasefs-node-1",
            ],
        );
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n").unwrap();
        ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &p("client.csr"),
                "-CA",
                &ca("ca.pem"),
                "-CAkey",
                &ca("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("client.pem"),
                "-days",
                "1",
                "-extfile",
                &p("client.ext"),
            ],
        );
        std::fs::set_permissions(dir.join("client.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        self.api("POST", "sys/auth/cert", Some(json!({"type": "cert"})));
        let v = self.api(
            "POST",
            "auth/cert/certs/leasefs",
            Some(json!({
                "certificate": std::fs::read_to_string(self.dir.join("ca.pem")).unwrap(),
                "token_policies": ["leasefs"], "token_ttl": ttl, "token_max_ttl": max_ttl,
            })),
        );
        assert!(v.get("errors").is_none(), "{v}");
    }

    fn env(&self, ttl: &str, max_ttl: &str) -> Env {
        self.env_with(ttl, max_ttl, false)
    }

    fn env_with(&self, ttl: &str, max_ttl: &str, cert: bool) -> Env {
        let env = Env::new();
        let auth = if cert {
            self.cert_role(env.dir.path(), ttl, max_ttl);
            json!({"method": "cert", "cert_file": env.path("client.pem"), "key_file": env.path("client.key"), "name": "leasefs"})
        } else {
            self.approle(env.dir.path(), ttl, max_ttl);
            json!({"method": "approle", "role_id_file": env.path("role-id"), "secret_id_file": env.path("secret-id")})
        };
        let cfg = json!({
            "sources": [{"type": "openbao", "prefix": "/bao", "addresses": [self.addr(0), self.addr(1), self.addr(2)],
                         "ca_file": self.dir.join("ca.pem"),
                         "auth": auth,
                         "kv_mounts": ["secret"], "dynamic_mounts": ["database"]}],
            "state_dir": env.path("state"), "audit_log": env.path("audit.jsonl"),
            "defaults": {"issue_timeout": "5s", "cache_ttl": "1m", "max_stale": "10m", "refresh": "2s"}
        });
        std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
        std::fs::set_permissions(env.path("config.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        env
    }
}

/// Roles OpenBao made for the `cl` database role, still in PostgreSQL.
fn cluster_roles() -> usize {
    pg().admin("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-approle-cl-%'").parse().unwrap()
}

#[test]
fn leasefs_keeps_issuing_while_the_leader_is_killed_and_revokes_every_lease_once_it_is_back() {
    let pgport = pg().port;
    let mut cl = Cluster::start(pgport);
    let mut env = cl.env("8s", "16s");
    env.start();
    let static_file = env.m("bao/secret/cl/app");
    assert!(cat(&static_file).contains("cluster-value"));
    let creds = env.m("bao/database/creds/cl");
    let mnt = env.mnt();
    // Readers of listings and of the cached static value, the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, f, mnt) = (stop.clone(), static_file.clone(), mnt.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Err(e) = read(&f) {
                    failures.push(format!("static read: {e}"));
                }
                if let Err(e) = std::fs::read_dir(mnt.join("bao/database/creds")) {
                    failures.push(format!("listing: {e}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            failures
        })
    };
    // 60 opens over 15 s; the leader is killed at 4 s and restarted at 10 s.
    let leader = cl.leader().unwrap();
    let start = Instant::now();
    let (mut ok_n, mut errs, mut slowest) = (0, Vec::new(), Duration::ZERO);
    let (mut killed, mut restarted) = (false, false);
    for _ in 0..60 {
        if !killed && start.elapsed() > Duration::from_secs(4) {
            cl.kill_node(leader);
            killed = true;
        }
        if killed && !restarted && start.elapsed() > Duration::from_secs(10) {
            cl.start_node(leader);
            cl.unseal(leader);
            restarted = true;
        }
        let t = Instant::now();
        match read(&creds) {
            Ok(text) => {
                assert!(text.contains("username"), "{text}");
                ok_n += 1;
            }
            Err(e) => errs.push(e.raw_os_error().unwrap_or(0)),
        }
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures = watcher.join().unwrap();
    eprintln!(
        "60 opens across a leader kill: {ok_n} issued, errors {errs:?}, slowest {slowest:?}; listing/static failures: {}",
        failures.len()
    );
    assert!(failures.is_empty(), "listings and cached static reads failed during the failover: {failures:?}");
    assert!(slowest < Duration::from_secs(7), "an open took {slowest:?} (issue_timeout 5 s)");
    assert!(errs.iter().all(|e| *e == libc::EIO || *e == libc::ETIMEDOUT), "only clear errnos: {errs:?}");
    assert!(ok_n >= 42, "most opens issued (70 %): {ok_n}");
    // Every lease issued ends (6 s TTL) and is revoked: OpenBao has none left, PostgreSQL no role.
    eventually(Duration::from_secs(60), "every cluster lease revoked", || {
        let v = cl.api("LIST", "sys/leases/lookup/database/creds/cl", None);
        v["data"]["keys"].as_array().is_none_or(|k| k.is_empty()) && cluster_roles() == 0
    });
    // …and leasefs revoked each one itself, exactly once (revocations that met the failover
    // are retried with backoff until the cluster answers).
    let counts = || {
        let metrics = read(&env.m(".leasefs/metrics")).unwrap();
        let value = |name: &str| -> u64 {
            metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
        };
        (
            value("leasefs_issuances_total{issuer=\"openbao\"}"),
            value("leasefs_revocations_total{issuer=\"openbao\"}"),
            value("leasefs_revocations_pending"),
        )
    };
    eventually(Duration::from_secs(60), "leasefs's revocations to finish", || {
        let (issued, revoked, pending) = counts();
        revoked == issued && pending == 0
    });
    let (issued, revoked, _) = counts();
    assert_eq!(issued, ok_n as u64);
    assert_eq!(revoked, issued, "each lease revoked exactly once");
    // Over 20 s with an 8 s token (16 s max): renewed, and logged in again at its max TTL.
    let logins = env.log().matches("logged in to OpenBao with AppRole").count();
    assert!(logins >= 2, "an AppRole login past the token's max TTL: {logins}");
    drop(env.mount.take());
    let _ = &mut cl;
}

#[test]
fn after_the_whole_cluster_was_down_longer_than_the_token_ttl_leasefs_recovers_by_itself_with_a_client_certificate() {
    let pgport = pg().port;
    let mut cl = Cluster::start(pgport);
    // This node logs in with a TLS client certificate.
    let mut env = cl.env_with("2s", "4s", true);
    env.start();
    assert!(env.log().contains("logged in to OpenBao with a TLS client certificate"), "{}", env.log());
    let creds = env.m("bao/database/creds/cl");
    assert!(read(&creds).is_ok());
    for i in 0..3 {
        cl.kill_node(i);
    }
    // Down for longer than the token's whole life: listings stay, issuance fails clearly.
    std::thread::sleep(Duration::from_secs(5));
    assert!(std::fs::read_dir(env.m("bao/database/creds")).is_ok());
    let e = read(&creds).unwrap_err().raw_os_error().unwrap();
    assert!(e == libc::EIO || e == libc::ETIMEDOUT, "{e}");
    for i in 0..3 {
        cl.start_node(i);
    }
    cl.unseal_all(&[0, 1, 2]);
    eventually(Duration::from_secs(60), "an active node again", || cl.leader().is_some());
    // No restart of leasefs: it logs in again and issues.
    eventually(Duration::from_secs(30), "issuance after the outage", || read(&creds).is_ok());
    let logins = env.log().matches("logged in to OpenBao with a TLS client certificate").count();
    assert!(logins >= 2, "it logged in again after the outage: {logins}");
}
