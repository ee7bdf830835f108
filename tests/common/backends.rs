//! Real servers for the issuer tests — PostgreSQL, OpenBao, an STS API (moto) — each started once per
//! test binary on a free loopback port and stopped when the binary exits. Installed by scripts/backends.sh.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

fn cache() -> PathBuf {
    std::env::var_os("LEASEFS_TEST_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/leasefs-test")
    })
}

fn need(p: PathBuf, what: &str) -> PathBuf {
    assert!(p.exists(), "{what} not found at {}: run ./scripts/test.sh (or scripts/backends.sh) first", p.display());
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

type Spawn = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Servers are spawned from one thread that lives as long as the test binary: PR_SET_PDEATHSIG is
/// tied to the thread that forked, so the servers get SIGTERM when the binary exits, not when a test ends.
pub fn spawn_server(mut cmd: Command) -> Child {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Spawn>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Spawn>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            // Keep the thread (and so the servers) alive until the process exits.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    });
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let (rtx, rrx) = mpsc::channel();
    tx.lock().unwrap().send((cmd, rtx)).unwrap();
    rrx.recv().unwrap().expect("spawn a test server")
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not become ready in {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("leasefs-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- PostgreSQL

pub struct Pg {
    pub port: u16,
    pub password: String,
    child: Mutex<Child>,
}

pub fn pg() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| {
        let bin = std::env::var_os("LEASEFS_PG_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
                .unwrap_or_default();
            v.sort();
            v.pop().unwrap_or_default()
        });
        let initdb = need(bin.join("initdb"), "PostgreSQL's initdb");
        let dir = scratch("pg");
        let password = "pg-admin-Secret-4c1f".to_string();
        std::fs::write(dir.join("pw"), &password).unwrap();
        let (uid, gid) = (user_id("postgres"), group_id("postgres"));
        for p in [dir.clone(), dir.join("pw")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
        let o = Command::new("setpriv")
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(&initdb)
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "scram-sha-256", "--no-sync", "-E", "UTF8"])
            .arg(format!("--pwfile={}", dir.join("pw").display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "initdb failed: {}", String::from_utf8_lossy(&o.stderr));
        let port = free_port();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string(), "-c", "fsync=off", "-c"])
            .arg(format!("unix_socket_directories={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("postgres.log")).unwrap());
        let child = spawn_server(cmd);
        let pg = Pg { port, password, child: Mutex::new(child) };
        wait_for("PostgreSQL", Duration::from_secs(30), || {
            pg.psql("postgres", &pg.password, "SELECT 1").status.success()
        });
        // A table for grant tests, created once (concurrent CREATE TABLE IF NOT EXISTS races).
        pg.admin("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)");
        pg
    })
}

impl Pg {
    /// Runs SQL through the real `psql` client as `user`.
    pub fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        self.psql_db("postgres", user, password, sql)
    }

    /// Runs SQL through the real `psql` client as `user` on database `db`.
    pub fn psql_db(&self, db: &str, user: &str, password: &str, sql: &str) -> Output {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap()
    }

    /// Runs SQL as the admin and returns trimmed stdout (panics on failure).
    pub fn admin(&self, sql: &str) -> String {
        let o = self.psql("postgres", &self.password, sql);
        assert!(o.status.success(), "{sql}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn role_exists(&self, role: &str) -> bool {
        self.admin(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{}'", role.replace('\'', "''"))) == "1"
    }

    /// Roles whose names start with `prefix`.
    pub fn roles_like(&self, prefix: &str) -> Vec<String> {
        let out = self.admin(&format!(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE '{}%' ORDER BY 1",
            prefix.replace('\'', "''")
        ));
        out.lines().filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// The base secret data for the postgres issuer.
    pub fn base_data(&self) -> Value {
        serde_json::json!({"host": "127.0.0.1", "port": self.port, "database": "postgres", "username": "postgres", "password": self.password})
    }
}

fn user_id(name: &str) -> u32 {
    String::from_utf8(Command::new("id").arg("-u").arg(name).output().unwrap().stdout).unwrap().trim().parse().unwrap()
}
fn group_id(name: &str) -> u32 {
    String::from_utf8(Command::new("id").arg("-g").arg(name).output().unwrap().stdout).unwrap().trim().parse().unwrap()
}

// ---------------------------------------------------------------- OpenBao

pub struct Bao {
    pub addr: String,
    pub port: u16,
    pub token: String,
    pub audit: PathBuf,
    pub dir: PathBuf,
    child: Mutex<Option<Child>>,
}

pub fn bao() -> &'static Bao {
    static BAO: OnceLock<Bao> = OnceLock::new();
    BAO.get_or_init(|| {
        let dir = scratch("bao");
        let port = free_port();
        let b = Bao {
            addr: format!("http://127.0.0.1:{port}"),
            port,
            token: "root-test-token-7d2e".into(),
            audit: dir.join("audit.log"),
            dir,
            child: Mutex::new(None),
        };
        b.start();
        b
    })
}

impl Bao {
    pub fn bin() -> PathBuf {
        need(
            std::env::var_os("LEASEFS_BAO").map(PathBuf::from).unwrap_or_else(|| cache().join("bin/bao")),
            "the OpenBao server (bao)",
        )
    }

    /// Starts the dev server (in-memory: a restart starts empty) with a file audit device.
    pub fn start(&self) {
        let cfg = self.dir.join("config.hcl");
        std::fs::write(
            &cfg,
            format!(
                "audit \"file\" \"audit\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                self.audit.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(Self::bin());
        cmd.args(["server", "-dev"])
            .arg(format!("-dev-root-token-id={}", self.token))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .arg(format!("-config={}", cfg.display()))
            .env("HOME", &self.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("bao.log")).unwrap());
        *self.child.lock().unwrap() = Some(spawn_server(cmd));
        wait_for("OpenBao", Duration::from_secs(30), || {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &format!("{}/v1/sys/health", self.addr)])
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// Stops the server (to test an outage); `start` brings back an empty one.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Calls the HTTP API with the root token through curl; returns the JSON answer (or Null).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-X",
            method,
            "-H",
            &format!("X-Vault-Token: {}", self.token),
            &format!("{}/v1/{path}", self.addr),
        ]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        let o = c.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) }
    }

    pub fn kv_put(&self, path: &str, data: Value) {
        let v = self.api("POST", &format!("secret/data/{path}"), Some(serde_json::json!({"data": data})));
        assert!(v.get("errors").is_none(), "kv put {path}: {v}");
    }

    /// (operation, path) of every request in the audit log so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "request")
            .map(|v| {
                (
                    v["request"]["operation"].as_str().unwrap_or("").to_string(),
                    v["request"]["path"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Mounts the database engine against the test PostgreSQL with a role `role` (idempotent).
    pub fn database_role(&self, role: &str, ttl: &str) {
        let pg = pg();
        self.api("POST", "sys/mounts/database", Some(serde_json::json!({"type": "database"})));
        let v = self.api(
            "POST",
            "database/config/pg",
            Some(serde_json::json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
                "username": "postgres", "password": pg.password, "allowed_roles": "*",
                "verify_connection": true
            })),
        );
        assert!(v.get("errors").is_none(), "database config: {v}");
        let v = self.api(
            "POST",
            &format!("database/roles/{role}"),
            Some(serde_json::json!({
                "db_name": "pg",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "revocation_statements": ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';", "DROP ROLE IF EXISTS \"{{name}}\";"],
                "default_ttl": ttl, "max_ttl": "1h"
            })),
        );
        assert!(v.get("errors").is_none(), "database role: {v}");
    }
}

// ---------------------------------------------------------------- STS (moto)

pub struct Sts {
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub role_arn: String,
    child: Mutex<Child>,
}

fn venv() -> PathBuf {
    need(
        std::env::var_os("LEASEFS_MOTO_VENV").map(PathBuf::from).unwrap_or_else(|| cache().join("moto-venv")),
        "the moto venv",
    )
}

pub fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// Runs Python from the moto venv (boto3 is there) with a script; returns stdout.
pub fn python(script: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(venv_bin("python"));
    c.arg("-c").arg(script).env_remove("AWS_PROFILE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn sts() -> &'static Sts {
    static STS: OnceLock<Sts> = OnceLock::new();
    STS.get_or_init(|| {
        let port = free_port();
        let dir = scratch("moto");
        let mut cmd = Command::new(venv_bin("moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The first 4 calls are unauthenticated (the setup below); after that signatures are checked.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).unwrap());
        let child = spawn_server(cmd);
        let endpoint = format!("http://127.0.0.1:{port}");
        // A TCP connect, not an HTTP request: moto would count a request against the 4 free actions.
        wait_for("moto", Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let setup = r#"
import boto3, json, os
kw = dict(endpoint_url=os.environ["EP"], region_name="us-east-1", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="leasefs")
key = iam.create_access_key(UserName="leasefs")["AccessKey"]
iam.put_user_policy(UserName="leasefs", PolicyName="all", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
role = iam.create_role(RoleName="app", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))["Role"]
print(json.dumps({"key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "role": role["Arn"]}))
"#;
        let o = python(setup, &[("EP", &endpoint)]);
        assert!(o.status.success(), "moto setup: {}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        Sts {
            endpoint,
            access_key_id: v["key"].as_str().unwrap().into(),
            secret_access_key: v["secret"].as_str().unwrap().into(),
            role_arn: v["role"].as_str().unwrap().into(),
            child: Mutex::new(child),
        }
    })
}

impl Sts {
    /// A signed STS GetCallerIdentity with the given keys (boto3 signs); Ok(arn) or Err(error code).
    pub fn caller_identity(&self, key: &str, secret: &str, token: Option<&str>) -> Result<String, String> {
        let script = r#"
import boto3, os, sys
from botocore.exceptions import ClientError
kw = dict(endpoint_url=os.environ["EP"], region_name="us-east-1", aws_access_key_id=os.environ["K"], aws_secret_access_key=os.environ["S"])
if os.environ.get("T"): kw["aws_session_token"] = os.environ["T"]
try:
    print(boto3.client("sts", **kw).get_caller_identity()["Arn"])
except ClientError as e:
    print("ERR " + e.response["Error"]["Code"])
"#;
        let o = python(script, &[("EP", &self.endpoint), ("K", key), ("S", secret), ("T", token.unwrap_or(""))]);
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(o.status.success(), "boto3: {}", String::from_utf8_lossy(&o.stderr));
        match out.strip_prefix("ERR ") {
            Some(code) => Err(code.to_string()),
            None => Ok(out),
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
