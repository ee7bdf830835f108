//! Certificates and SSH keys from the real OpenBao: a `pki/issue` bundle (cert.pem, key.pem,
//! ca.pem from one issuance) that openssl verifies and a CRL that lists it after revocation, and
//! an `ssh/sign` bundle whose key pair leasefs made, read back by ssh-keygen.

mod common;

use std::os::unix::process::CommandExt;
use std::sync::OnceLock;
use std::time::Duration;

use common::backends::bao;
use common::*;
use serde_json::json;

/// The PKI and SSH engines, set up once on the shared dev server.
fn engines() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let b = bao();
        b.api("POST", "sys/mounts/pki", Some(json!({"type": "pki", "config": {"max_lease_ttl": "24h"}})));
        let root = b.api("POST", "pki/root/generate/internal", Some(json!({"common_name": "leasefs test CA", "ttl": "24h"})));
        assert!(root["data"]["certificate"].is_string(), "{root}");
        b.api("POST", "pki/roles/app", Some(json!({"allowed_domains": "example.com", "allow_subdomains": true, "max_ttl": "1h"})));
        b.api("POST", "sys/mounts/ssh", Some(json!({"type": "ssh"})));
        b.api("POST", "ssh/config/ca", Some(json!({"generate_signing_key": true})));
        b.api(
            "POST",
            "ssh/roles/app",
            Some(json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "deploy,app", "default_user": "deploy", "ttl": "60s", "max_ttl": "1h"})),
        );
    });
}

fn setup(entries: serde_json::Value) -> Env {
    engines();
    let b = bao();
    let mut env = Env::new();
    let mut docs = vec![
        json!({"path": "base:bao", "attributes": {"type": "openbao"}, "data": {"address": b.addr, "token": b.token}}),
    ];
    docs.extend(entries.as_array().unwrap().iter().cloned());
    env.doc("certs.json", &serde_json::Value::Array(docs).to_string());
    env.config(json!({}));
    env.start();
    env
}

fn openssl(args: &[&str]) -> String {
    ok("openssl", args)
}

#[test]
fn a_pki_bundle_verifies_matches_its_key_ends_with_its_lease_and_is_revoked_by_serial() {
    let env = setup(json!([dynamic(
        "tls:web",
        "base:bao",
        json!({
            "path": "pki/issue/app", "method": "POST", "body": {"common_name": "web.example.com", "ttl": "90s"},
            "revoke": "serial",
            "files": {"cert.pem": "raw:certificate", "key.pem": "raw:private_key", "ca.pem": "raw:issuing_ca"}
        })
    )]));
    let dir = env.path("copy");
    std::fs::create_dir(&dir).unwrap();
    // One session copies the three files (as an app's start script would).
    let m = env.m("tls/web");
    ok("sh", &["-c", &format!("cp {0}/cert.pem {0}/key.pem {0}/ca.pem {1}/", m.display(), dir.display())]);
    let f = |n: &str| dir.join(n).to_string_lossy().to_string();
    assert!(openssl(&["verify", "-CAfile", &f("ca.pem"), &f("cert.pem")]).contains(": OK"));
    let cert_key = openssl(&["x509", "-in", &f("cert.pem"), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", &f("key.pem"), "-pubout"]);
    assert_eq!(cert_key, key_pub, "key.pem is the key of cert.pem: one issuance");
    let end = openssl(&["x509", "-in", &f("cert.pem"), "-noout", "-enddate"]);
    let end =
        chrono::NaiveDateTime::parse_from_str(end.trim().trim_start_matches("notAfter="), "%b %e %H:%M:%S %Y GMT")
            .unwrap()
            .and_utc();
    let lease = &env.leases()[0];
    let lease_end = chrono::DateTime::parse_from_rfc3339(lease["expires_at"].as_str().unwrap()).unwrap();
    assert!(end <= lease_end + chrono::Duration::seconds(1), "notAfter {end} after the lease's end {lease_end}");
    // Revoked by serial: the CRL lists it.
    let serial = openssl(&["x509", "-in", &f("cert.pem"), "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), lease["id"].as_str().unwrap()]);
    let crl = env.path("crl.pem");
    eventually(Duration::from_secs(10), "the CRL to list the serial", || {
        let o = run("curl", &["-sf", "-o", crl.to_str().unwrap(), &format!("{}/v1/pki/crl/pem", bao().addr)]);
        o.status.success()
            && openssl(&["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"]).to_uppercase().contains(&serial)
    });
}

#[test]
fn an_ssh_bundle_holds_a_key_leasefs_made_and_the_certificate_openbao_signed() {
    let env = setup(json!([dynamic(
        "ssh:deploy",
        "base:bao",
        json!({
            "path": "ssh/sign/app", "method": "POST", "generate_key": "ed25519",
            "body": {"valid_principals": "deploy", "cert_type": "user"},
            "files": {"id_ed25519": "raw:private_key", "id_ed25519-cert.pub": "raw:signed_key", "id_ed25519.pub": "raw:public_key"}
        })
    )]));
    let dir = env.path("ssh");
    std::fs::create_dir(&dir).unwrap();
    let m = env.m("ssh/deploy");
    ok(
        "sh",
        &[
            "-c",
            &format!("cp {0}/id_ed25519 {0}/id_ed25519-cert.pub {0}/id_ed25519.pub {1}/", m.display(), dir.display()),
        ],
    );
    std::fs::set_permissions(dir.join("id_ed25519"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cert = ok("ssh-keygen", &["-L", "-f", dir.join("id_ed25519-cert.pub").to_str().unwrap()]);
    assert!(cert.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"), "{cert}");
    assert!(cert.contains("Principals:") && cert.contains("deploy"), "{cert}");
    assert!(cert.contains("Valid: from"), "{cert}");
    // The private key is the one the certificate was signed for.
    let derived = ok("ssh-keygen", &["-y", "-f", dir.join("id_ed25519").to_str().unwrap()]);
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    assert_eq!(derived.split_whitespace().nth(1), public.split_whitespace().nth(1));
    let signed_key = ok("ssh-keygen", &["-L", "-f", dir.join("id_ed25519-cert.pub").to_str().unwrap()]);
    let fp = ok("ssh-keygen", &["-l", "-f", dir.join("id_ed25519.pub").to_str().unwrap()]);
    let fp = fp.split_whitespace().nth(1).unwrap();
    assert!(signed_key.contains(fp), "the certificate is for this key ({fp}): {signed_key}");
}

#[test]
fn nginx_serving_a_leasefs_certificate_is_rotated_by_sighup_without_a_failed_request() {
    let env = setup(json!([dynamic(
        "tls:rot",
        "base:bao",
        json!({
            "path": "pki/issue/app", "method": "POST", "body": {"common_name": "rot.example.com", "ttl": "9s"},
            "rotate_signal": "SIGHUP",
            "files": {"cert.pem": "raw:certificate", "key.pem": "raw:private_key", "ca.pem": "raw:issuing_ca"}
        })
    )]));
    let dir = env.path("nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    // The CA, copied by another process (a process that opens the bundle gets the rotation signal).
    let ca = dir.join("ca.pem");
    ok("sh", &["-c", &format!("cat {}/ca.pem > {}", env.m("tls/rot").display(), ca.display())]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    let m = env.m("tls/rot");
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {m}/cert.pem;\n    ssl_certificate_key {m}/key.pem;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        m = m.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut nginx = std::process::Command::new("nginx")
        .args(["-c", dir.join("nginx.conf").to_str().unwrap(), "-p", dir.to_str().unwrap()])
        .process_group(0)
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    /// Stops nginx: its master and workers (its own process group).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling the process group nginx leads.
            unsafe { libc::killpg(self.0.id() as i32, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
    let _ = nginx.try_wait();
    let _nginx = Kill(nginx);
    let url = format!("https://rot.example.com:{port}/");
    let resolve = format!("rot.example.com:{port}:127.0.0.1");
    let get =
        || run("curl", &["-sf", "--max-time", "3", "--cacert", ca.to_str().unwrap(), "--resolve", &resolve, &url]);
    let started = std::time::Instant::now();
    while !get().status.success() {
        let why = || {
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        };
        assert!(started.elapsed() < Duration::from_secs(10), "nginx does not serve TLS:\n{}\n{}", why(), env.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let serial = || {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername rot.example.com </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let mut serials: Vec<String> = Vec::new();
    let (mut requests, mut failures) = (0, 0);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(21) {
        for _ in 0..4 {
            requests += 1;
            if !get().status.success() {
                failures += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = serial();
        if !s.is_empty() && serials.last() != Some(&s) {
            serials.push(s);
        }
    }
    let rotations =
        std::fs::read_to_string(env.path("audit.jsonl")).unwrap().matches("\"outcome\":\"signalled\"").count();
    eprintln!("{requests} requests, {failures} failed; serials seen: {serials:?}; rotate events: {rotations}");
    assert_eq!(failures, 0, "a request failed across rotations");
    assert!(serials.len() >= 4, "three rotations change the served certificate three times: {serials:?}");
    assert!(rotations >= 3, "each rotation is audited");
}
