//! The credential dies with its lease, not only the file: against the real OpenBao (PKI and SSH
//! engines set up by the recipe in docs/issuers.md) and a real sshd, a copied SSH key and
//! certificate log in while the lease lives and are refused once it has ended; a PKI
//! certificate is asked for the lease's ttl, not the role's; one that states a longer life and
//! cannot be revoked is refused (`EIO`, audited `outlives`) unless `allow_overhang` serves it.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::backends::{bao, path_str};
use common::recipes::recipe;
use common::*;
use serde_json::json;

/// The OpenBao setup of docs/issuers.md, run once with the real `bao` CLI on the dev server.
fn engines() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let b = bao();
        let bin = std::env::var("LEASEFS_BAO").expect("LEASEFS_BAO (eval \"$(./scripts/backends.sh)\")");
        let dir = std::path::Path::new(&bin).parent().unwrap().to_string_lossy().to_string();
        let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
        let o = Command::new("sh")
            .args(["-ec", &recipe("docs/issuers.md", "bao-pki-ssh")])
            .env("PATH", path)
            .env("BAO_ADDR", &b.addr)
            .env("BAO_TOKEN", &b.token)
            .env("HOME", &b.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "the docs' OpenBao setup failed: {}", String::from_utf8_lossy(&o.stderr));
    });
}

/// A mount with the OpenBao base and `entries` (documents written one attribute a line, so that
/// `check` names lines).
fn setup(entries: Vec<serde_json::Value>) -> Env {
    setup_with(entries, json!({}))
}

fn setup_with(entries: Vec<serde_json::Value>, defaults: serde_json::Value) -> Env {
    engines();
    let b = bao();
    let env = Env::new();
    let mut docs = vec![
        json!({"path": "base:bao", "attributes": {"type": "openbao"}, "data": {"address": b.addr, "token": b.token}}),
    ];
    docs.extend(entries);
    env.doc("certs.json", &serde_json::to_string_pretty(&docs).unwrap());
    env.config(json!({"defaults": defaults}));
    env
}

/// A recipe's document with some attributes set by the test.
fn from_recipe(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut doc: serde_json::Value = serde_json::from_str(&recipe("docs/issuers.md", name)).unwrap();
    doc["attributes"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    doc
}

fn lease_end(env: &Env, path: &str) -> DateTime<Utc> {
    let leases = env.leases();
    let l = leases.iter().find(|l| l["path"] == path).unwrap_or_else(|| panic!("no lease for {path}: {leases:?}"));
    DateTime::parse_from_rfc3339(l["expires_at"].as_str().unwrap()).unwrap().with_timezone(&Utc)
}

fn not_after(cert: &std::path::Path) -> DateTime<Utc> {
    let end = ok("openssl", &["x509", "-in", path_str(cert), "-noout", "-enddate"]);
    chrono::NaiveDateTime::parse_from_str(end.trim().trim_start_matches("notAfter="), "%b %e %H:%M:%S %Y GMT")
        .unwrap()
        .and_utc()
}

/// A real sshd on a loopback port that trusts OpenBao's SSH CA and lets principal `deploy` in as root.
struct Sshd {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start(dir: &std::path::Path) -> Sshd {
        assert!(std::path::Path::new("/usr/sbin/sshd").exists(), "/usr/sbin/sshd is missing (openssh-server)");
        std::fs::create_dir_all("/run/sshd").unwrap(); // its privilege separation directory
        let ca = Command::new("curl").args(["-sf", &format!("{}/v1/ssh/public_key", bao().addr)]).output().unwrap();
        assert!(ca.status.success() && ca.stdout.starts_with(b"ssh-"), "OpenBao's SSH CA key");
        std::fs::write(dir.join("ca.pub"), &ca.stdout).unwrap();
        std::fs::write(dir.join("principals"), "deploy\n").unwrap();
        ok("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", path_str(&dir.join("host"))]);
        let port = free_tcp_port();
        let p = |n: &str| dir.join(n).to_string_lossy().to_string();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nTrustedUserCAKeys {}\n\
             AuthorizedPrincipalsFile {}\nAuthorizedKeysFile none\nPermitRootLogin yes\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nLogLevel VERBOSE\n",
            p("host"),
            p("sshd.pid"),
            p("ca.pub"),
            p("principals")
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", &p("sshd_config")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Sshd { child, port, log };
        eventually(Duration::from_secs(10), "sshd to listen", || {
            assert!(s.child.try_wait().unwrap().is_none(), "sshd exited: {}", s.log());
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh … root@127.0.0.1 true` with the copied key and certificate.
    fn login(&self, key: &std::path::Path, cert: &std::path::Path) -> std::process::Output {
        self.ssh(key, cert, &[], &["true"])
    }

    /// `ssh` with options `pre` (before the destination) and a remote command.
    fn ssh(
        &self,
        key: &std::path::Path,
        cert: &std::path::Path,
        pre: &[&str],
        command: &[&str],
    ) -> std::process::Output {
        let port = self.port.to_string();
        let opt = |o: &str| ["-o".to_string(), o.to_string()];
        let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into(), "-p".into(), port];
        for o in [
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "IdentitiesOnly=yes",
            "ConnectTimeout=5",
            &format!("CertificateFile={}", cert.display()),
        ] {
            args.extend(opt(o));
        }
        args.extend(pre.iter().map(|c| c.to_string()));
        args.extend(["-i".into(), key.display().to_string(), "root@127.0.0.1".into()]);
        args.extend(command.iter().map(|c| c.to_string()));
        Command::new("ssh").args(&args).output().unwrap()
    }
}

#[test]
fn a_copied_ssh_certificate_dies_with_its_lease_at_a_real_sshd() {
    require_root("sshd logs a user in as root");
    // The docs' entry (no ttl in its body), with a short lease and a small allowed overhang.
    let mut env = setup(vec![from_recipe("ssh-deploy", json!({"ttl": "15s", "max_overhang": "5s"}))]);
    env.start();
    let sshd = Sshd::start(&env.path(""));
    let copy = env.path("copy");
    std::fs::create_dir(&copy).unwrap();
    let m = env.m("ssh/deploy");
    ok("sh", &["-c", &format!("cp {0}/id_ed25519 {0}/id_ed25519-cert.pub {1}/", m.display(), copy.display())]);
    let (key, cert) = (copy.join("id_ed25519"), copy.join("id_ed25519-cert.pub"));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let end = lease_end(&env, "/ssh/deploy");

    // The certificate states its own end: no later than the lease's plus max_overhang.
    let shown = Command::new("ssh-keygen").args(["-L", "-f", path_str(&cert)]).env("TZ", "UTC").output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    let valid = shown.lines().find_map(|l| l.trim().strip_prefix("Valid: from ")).expect("a Valid: line");
    let before = valid.split(" to ").nth(1).expect("a validity with an end");
    let before = chrono::NaiveDateTime::parse_from_str(before.trim(), "%Y-%m-%dT%H:%M:%S").unwrap().and_utc();
    assert!(
        before <= end + chrono::Duration::seconds(5),
        "the certificate is valid until {before}, the lease ends {end} (max_overhang 5 s):\n{shown}"
    );

    // While the lease lives, the copy logs in.
    let o = sshd.login(&key, &cert);
    assert!(o.status.success(), "login while the lease lives: {}\n{}", String::from_utf8_lossy(&o.stderr), sshd.log());
    // The role of the docs permits a terminal (`permit-pty`): an interactive session gets one.
    let o = sshd.ssh(&key, &cert, &["-tt"], &["tty"]);
    let tty = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(tty.starts_with("/dev/pts/"), "no terminal for the session: {tty} {}", String::from_utf8_lossy(&o.stderr));

    // The lease ends (its expiry is audited); then sshd refuses the copy as expired.
    let id = env.leases()[0]["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the lease's expiry in the audit log", || {
        env.audit().iter().any(|e| e["event"] == "expire" && e["lease_id"] == id.as_str())
    });
    eventually(Duration::from_secs(10), "sshd to refuse the copied certificate as expired", || {
        Utc::now() > before && !sshd.login(&key, &cert).status.success() && sshd.log().contains("expired")
    });
    let refused_at = Utc::now();
    assert!(
        refused_at <= end + chrono::Duration::seconds(5 + 5),
        "refused at {refused_at}, the lease ended {end}: within max_overhang (5 s) and a poll"
    );
}

#[test]
fn a_pki_certificate_is_asked_for_its_lease_not_the_roles_ttl() {
    // The docs' entry: a 24 h lease on a role whose max_ttl is 72 h; its body sets no ttl.
    let mut env = setup_with(vec![from_recipe("pki-web", json!({}))], json!({"max_ttl": "24h"}));
    env.start();
    let opened = Utc::now();
    let copy = env.path("cert.pem");
    std::fs::write(&copy, cat(&env.m("tls/web/cert.pem"))).unwrap();
    let end = lease_end(&env, "/tls/web");
    let day = chrono::Duration::hours(24);
    assert!(
        (end - (opened + day)).num_seconds().abs() <= 60,
        "the lease is the entry's 24 h: ends {end}, opened {opened}"
    );
    let not_after = not_after(&copy);
    assert!(not_after <= end + chrono::Duration::seconds(60), "notAfter {not_after} is past the lease's end {end}");
}

#[test]
fn a_certificate_that_outlives_its_lease_is_refused_unless_allowed_and_check_says_so() {
    // The body asks for 2 h while the lease is 20 s; OpenBao grants it.
    let long = |path: &str, extra: serde_json::Value| {
        let cn = format!("{}.example.com", path.trim_start_matches("tls:"));
        let mut a = json!({"path": "pki/issue/web", "method": "POST",
            "body": {"common_name": cn, "ttl": "2h"}, "ttl": "20s", "format": "raw:certificate"});
        a.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        dynamic(path, "base:bao", a)
    };
    let mut env = setup(vec![
        long("tls:kept", json!({})),
        long("tls:allowed", json!({"allow_overhang": true})),
        long("tls:revocable", json!({"revoke": "serial"})),
    ]);
    // `check` warns about the entry that allows it, at its line.
    let cfg = env.path("config.json");
    let o = run(BIN, &["check", "--config", path_str(&cfg)]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    let text = std::fs::read_to_string(env.docs().join("certs.json")).unwrap();
    let line = text.lines().position(|l| l.contains("allow_overhang")).unwrap() + 1;
    let place = format!("{}:{line}:", env.docs().join("certs.json").display());
    assert!(
        err.lines().any(|l| l.starts_with("warning: ") && l.contains(&place) && l.contains("allow_overhang")),
        "{err}"
    );

    env.start();
    // Refused: EIO, audited `outlives`.
    assert_eq!(errno_of(read(&env.m("tls/kept"))), libc::EIO);
    eventually(Duration::from_secs(5), "the refusal audited as outlives", || {
        env.audit().iter().any(|e| e["event"] == "error" && e["outcome"] == "outlives" && e["path"] == "/tls/kept")
    });
    assert!(env.leases().iter().all(|l| l["path"] != "/tls/kept"));
    // The refused certificate was revoked at once: OpenBao shows it revoked (its CRL lists it).
    let seen = env.path("seen.pem");
    eventually(Duration::from_secs(10), "the refused certificate revoked at OpenBao", || {
        let b = bao();
        let serials = b.api("LIST", "pki/certs", None);
        serials["data"]["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).any(|serial| {
            let c = b.api("GET", &format!("pki/cert/{serial}"), None);
            std::fs::write(&seen, c["data"]["certificate"].as_str().unwrap_or_default()).unwrap();
            let subject = run("openssl", &["x509", "-noout", "-subject", "-in", path_str(&seen)]);
            String::from_utf8_lossy(&subject.stdout).contains("kept.example.com")
                && c["data"]["revocation_time"].as_i64().unwrap_or(0) > 0
        })
    });
    // Allowed: served, audited and counted.
    let cert = env.path("allowed.pem");
    std::fs::write(&cert, cat(&env.m("tls/allowed"))).unwrap();
    assert!(not_after(&cert) > Utc::now() + chrono::Duration::minutes(90), "the 2 h certificate is served as is");
    assert!(
        env.audit().iter().any(|e| e["event"] == "issue" && e["outcome"] == "outlives" && e["path"] == "/tls/allowed")
    );
    let metrics = cat(&env.m(".leasefs/metrics"));
    assert!(metrics.contains("leasefs_overhang_allowed_total{issuer=\"openbao\"} 1"), "{metrics}");
    assert!(metrics.contains("reason=\"outlives\"} 1"), "{metrics}");
    // Revocable by serial: the lease's end revokes it, so it is served.
    assert!(cat(&env.m("tls/revocable")).contains("BEGIN CERTIFICATE"));
}

#[test]
fn a_wrong_issuer_parameter_is_named_at_its_line_by_check() {
    let env = setup(vec![dynamic(
        "tls:bad",
        "base:bao",
        json!({"path": "pki/issue/web", "method": "PUT", "body": {"common_name": "x.example.com"}}),
    )]);
    let cfg = env.path("config.json");
    let o = run(BIN, &["check", "--config", path_str(&cfg)]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "check passed a method OpenBao is never called with: {err}");
    let text = std::fs::read_to_string(env.docs().join("certs.json")).unwrap();
    let line = text.lines().position(|l| l.contains("\"method\"")).unwrap() + 1;
    let place = format!("{}:{line}:", env.docs().join("certs.json").display());
    assert!(err.lines().any(|l| l.contains(&place) && l.contains("attributes.method")), "{err}");
}
