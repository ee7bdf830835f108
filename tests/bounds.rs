//! Everything from outside is bounded (SPEC §10.6, issue 20): a fake OpenBao answering a 50 MB
//! listing or a 2 MiB credential; leasefs keeps serving, its log stays small, SIGTERM is prompt.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Writes config.json: a local source at `/` and the fake OpenBao at `/bao`.
fn config(env: &Env, port: u16, kv: bool, defaults: serde_json::Value) {
    let token = env.path("bao-token");
    std::fs::write(&token, "fake-token").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut bao = json!({"type": "openbao", "prefix": "/bao", "address": format!("http://127.0.0.1:{port}"),
                         "token_file": token});
    if kv {
        bao["kv_mounts"] = json!(["secret"]);
    } else {
        bao["dynamic_mounts"] = json!(["database"]);
    }
    let cfg = json!({
        "sources": [{"type": "local", "prefix": "/", "path": env.docs()}, bao],
        "state_dir": env.path("state"),
        "audit_log": env.path("audit.jsonl"),
        "defaults": {"refresh": "1s", "issue_timeout": "5s"}
    });
    let mut cfg = cfg;
    for (k, v) in defaults.as_object().unwrap() {
        cfg["defaults"][k] = v.clone();
    }
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    std::fs::set_permissions(env.path("config.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Starts leasefs at `--log-level debug` whatever LEASEFS_TEST_LOG says.
fn start_debug(env: &mut Env) {
    let m = Mounted::start_full(
        &env.path("config.json"),
        &env.mnt(),
        &env.path("daemon.log"),
        &["--log-level", "debug"],
        &[],
        &[],
    );
    env.mount = Some(m);
}

fn log_size(env: &Env) -> u64 {
    std::fs::metadata(env.path("daemon.log")).map(|m| m.len()).unwrap_or(0)
}

/// The log's longest line, without reading a runaway log whole.
fn longest_line(env: &Env) -> usize {
    let text = std::fs::read(env.path("daemon.log")).unwrap_or_default();
    text.split(|b| *b == b'\n').map(<[u8]>::len).max().unwrap_or(0)
}

/// `cat` under `timeout`: a stuck daemon fails the test instead of hanging it.
fn cat_bounded(p: &std::path::Path, limit_s: u32) -> std::process::Output {
    run("timeout", &[&limit_s.to_string(), "cat", p.to_str().unwrap()])
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_50_mb_listing_is_refused_and_the_daemon_keeps_serving() {
    require_root("it mounts FUSE");
    let port = free_tcp_port();
    let _bao = Killed(fixture_server("huge_bao.py", &["--port", &port.to_string(), "--listing-mb", "50"]));
    let mut env = Env::new();
    env.doc("app.json", r#"{"path": "app:token", "data": {"value": "local-ok"}}"#);
    config(&env, port, true, json!({}));
    let started = Instant::now();
    start_debug(&mut env);
    // 30 s of refreshes every second, each answered 50 MB: the local source is served all along,
    // and the log stays under 1 MB.
    while started.elapsed() < Duration::from_secs(30) {
        let t = Instant::now();
        let out = cat_bounded(&env.m("app/token"), 5);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "local-ok", "the local source is served: {out:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "a read of a local secret took {:?}", t.elapsed());
        assert!(env.daemon().child.as_mut().unwrap().try_wait().unwrap().is_none(), "leasefs exited");
        let size = log_size(&env);
        assert!(size < 1024 * 1024, "the log reached {size} bytes after {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = env.log();
    assert!(
        log.contains("max_response_bytes") && log.contains("secret/metadata"),
        "the refusal names the setting and the path:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(!log.contains(&"a".repeat(300)), "no log line carries the answer's body");
    assert!(longest_line(&env) <= 4096, "a log line of {} bytes", longest_line(&env));
    // SIGTERM: out in under 5 s.
    let t = Instant::now();
    env.daemon().signal(libc::SIGTERM);
    let st = env.daemon().wait(Duration::from_secs(5));
    assert!(st.is_some(), "leasefs was still running 5 s after SIGTERM");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_2_mib_openbao_credential_is_refused_with_eio_naming_its_size() {
    require_root("it mounts FUSE");
    let port = free_tcp_port();
    let _bao = Killed(fixture_server("huge_bao.py", &["--port", &port.to_string(), "--cred-bytes", "2097152"]));
    let mut env = Env::new();
    env.doc("app.json", r#"{"path": "app:token", "data": {"value": "local-ok"}}"#);
    config(&env, port, false, json!({}));
    start_debug(&mut env);
    let file = env.m("bao/database/creds/big");
    eventually(Duration::from_secs(10), "the role to be listed", || file.exists());
    let t = Instant::now();
    let out = cat_bounded(&file, 15);
    assert!(t.elapsed() < Duration::from_secs(10), "the open took {:?}", t.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty() && err.contains("Input/output error"), "a 2 MiB credential is refused (EIO): {err}");
    // username "u" + password: 8 + 1 + 8 + 2 MiB bytes of names and values.
    let size = 2 * 1024 * 1024 + "username".len() + 1 + "password".len();
    eventually(Duration::from_secs(5), "the refusal in the log", || {
        env.log().contains(&format!("the credential is {size} bytes, over the 1048576-byte limit"))
    });
    let log = env.log();
    assert!(!log.contains("HUGECREDHUGECRED"), "the credential never reaches the log");
    assert!(longest_line(&env) <= 4096);
    assert_eq!(String::from_utf8_lossy(&cat_bounded(&env.m("app/token"), 5).stdout), "local-ok");
    let st = env.daemon().stop();
    assert!(st.success(), "{st}");
}

#[test]
fn max_response_bytes_refuses_by_content_length_before_reading() {
    require_root("it mounts FUSE");
    let port = free_tcp_port();
    let args = ["--port", &port.to_string(), "--listing-mb", "2", "--with-length"].map(String::from);
    let _bao = Killed(fixture_server("huge_bao.py", &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut env = Env::new();
    env.doc("app.json", r#"{"path": "app:token", "data": {"value": "local-ok"}}"#);
    config(&env, port, true, json!({"max_response_bytes": 1048576}));
    start_debug(&mut env);
    let n = r#"{"data":{"keys":[""#.len() + 2 * 1024 * 1024 + r#""]}}"#.len();
    let said = format!("secret/metadata/: the answer is {n} bytes, over max_response_bytes (1048576)");
    eventually(Duration::from_secs(10), "the refusal by Content-Length", || env.log().contains(&said));
    assert_eq!(String::from_utf8_lossy(&cat_bounded(&env.m("app/token"), 5).stdout), "local-ok");
    assert!(longest_line(&env) <= 4096);
    let st = env.daemon().stop();
    assert!(st.success(), "{st}");
}

#[test]
fn sigterm_during_a_refresh_that_a_server_dribbles_exits_in_under_5_s() {
    require_root("it mounts FUSE");
    let port = free_tcp_port();
    let args = ["--port", &port.to_string(), "--dribble-after", "1"].map(String::from);
    let _bao = Killed(fixture_server("huge_bao.py", &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut env = Env::new();
    env.doc("app.json", r#"{"path": "app:token", "data": {"value": "local-ok"}}"#);
    // The refresh may run 60 s; SIGTERM must not wait for it.
    config(&env, port, true, json!({"issue_timeout": "60s"}));
    start_debug(&mut env);
    std::thread::sleep(Duration::from_secs(3)); // the refresh at 1 s is being dribbled
    assert_eq!(String::from_utf8_lossy(&cat_bounded(&env.m("app/token"), 5).stdout), "local-ok");
    let t = Instant::now();
    env.daemon().signal(libc::SIGTERM);
    let st = env.daemon().wait(Duration::from_secs(5));
    assert!(st.is_some(), "leasefs was still running 5 s after SIGTERM (waiting for its refresh)");
    assert!(t.elapsed() < Duration::from_secs(5));
}
