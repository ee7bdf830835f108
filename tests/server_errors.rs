//! What a user reads when a server misbehaves: a TLS certificate from a CA the configuration does
//! not trust is named as a certificate problem (with the CA file and the name checked), and a
//! server that accepts and never answers gives `ETIMEDOUT` every time, never `EIO`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bao_entry(env: &mut Env, address: &str, ca_file: Option<&str>) {
    let mut data = json!({"address": address, "token": "not-a-real-token"});
    if let Some(ca) = ca_file {
        data["ca_file"] = json!(ca);
    }
    let docs = json!([
        {"path": "base:bao", "attributes": {"type": "openbao"}, "data": data},
        dynamic("db:creds", "base:bao", json!({"path": "database/creds/app"})),
    ]);
    env.doc("bao.json", &docs.to_string());
    env.config(json!({"defaults": {"issue_timeout": "2s"}}));
    env.start();
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_named_as_a_tls_problem() {
    let mut env = Env::new();
    let (served, trusted) = (env.path("served-ca"), env.path("trusted-ca"));
    for d in [&served, &trusted] {
        std::fs::create_dir_all(d).unwrap();
        test_certificates(d, "IP:127.0.0.1");
    }
    let port = free_tcp_port();
    let server = Killed(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(served.join("node.pem"))
            .arg("-key")
            .arg(served.join("node.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    eventually(Duration::from_secs(10), "the TLS server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let ca = trusted.join("ca.pem");
    bao_entry(&mut env, &format!("https://127.0.0.1:{port}"), Some(ca.to_str().unwrap()));
    assert_eq!(errno_of(read(&env.m("db/creds"))), libc::EIO);
    let log = env.log();
    let line = log.lines().find(|l| l.contains("TLS certificate problem")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("ca_file {}", ca.display())), "names the CA file: {line}");
    assert!(!line.contains("connection refused"), "{line}");
    drop(server);
}

#[test]
fn a_server_that_accepts_and_never_answers_gives_etimedout_every_time() {
    let mut env = Env::new();
    let port = free_tcp_port();
    // Accepts connections and holds them, never answering.
    let silent = Killed(
        Command::new("python3")
            .args([
                "-c",
                "import socket, sys, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen(64)\nheld = []\nwhile True:\n    held.append(s.accept())\n",
                &port.to_string(),
            ])
            .spawn()
            .expect("python3"),
    );
    eventually(Duration::from_secs(10), "the silent server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    bao_entry(&mut env, &format!("http://127.0.0.1:{port}"), None);
    for i in 0..3 {
        let t = Instant::now();
        assert_eq!(errno_of(read(&env.m("db/creds"))), libc::ETIMEDOUT, "open {i}");
        assert!(t.elapsed() < Duration::from_secs(6), "bounded by issue_timeout: {:?}", t.elapsed());
    }
    drop(silent);
}
