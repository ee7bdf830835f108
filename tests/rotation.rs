//! Rotation reaches real daemons (SPEC §10.10): nginx run the usual way — daemonizing, so the
//! process that opened its certificate is gone — is reached through its pid file across three
//! rotations without a failed request; a rotation that reaches nobody is audited
//! `rotate_unheard`, counted and logged; a `rotate_command` runs at `rotate_at`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::backends::bao;
use common::*;
use serde_json::json;

/// The PKI engine on this binary's OpenBao dev server, set up once.
fn pki() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let b = bao();
        b.api("POST", "sys/mounts/pki", Some(json!({"type": "pki", "config": {"max_lease_ttl": "24h"}})));
        let root =
            b.api("POST", "pki/root/generate/internal", Some(json!({"common_name": "leasefs test CA", "ttl": "24h"})));
        assert!(root["data"]["certificate"].is_string(), "{root}");
        b.api(
            "POST",
            "pki/roles/app",
            Some(json!({"allowed_domains": "example.com", "allow_subdomains": true, "max_ttl": "1h"})),
        );
    });
}

/// `leasefs_rotate_unheard_total` from `/.leasefs/metrics`.
fn unheard_metric(env: &Env) -> u64 {
    let m = cat(&env.m(".leasefs/metrics"));
    let line = m.lines().find(|l| l.starts_with("leasefs_rotate_unheard_total "));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or_else(|| panic!("no metric in:\n{m}"))
}

/// Audit lines of `rotate` events for `path`.
fn rotations(env: &Env, path: &str) -> Vec<serde_json::Value> {
    env.audit().into_iter().filter(|e| e["event"] == "rotate" && e["path"] == path).collect()
}

/// Waits until `f` holds, or fails with the audit log and the daemon's log.
fn wait(env: &Env, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            let audit = std::fs::read_to_string(env.path("audit.jsonl")).unwrap_or_default();
            panic!("timed out waiting for: {what}\naudit:\n{audit}\nlog:\n{}", env.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a daemonized nginx — its master and workers, the process group it leads after `setsid`
/// — by the pid in its pid file.
struct KillNginx(PathBuf);
impl Drop for KillNginx {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(&self.0).ok().and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            // SAFETY: signalling the process group of the nginx this test started.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_daemonized_nginx_is_reached_through_its_pid_file_across_three_rotations_without_a_failed_request() {
    require_root("nginx binds, FUSE mounts, signals a root daemon");
    pki();
    let b = bao();
    let mut env = Env::new();
    let dir = env.path("nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let pid_file = dir.join("nginx.pid");
    let docs = json!([
        {"path": "base:bao", "attributes": {"type": "openbao"}, "data": {"address": b.addr, "token": b.token}},
        dynamic("tls:web", "base:bao", json!({
            "path": "pki/issue/app", "method": "POST", "body": {"common_name": "web.example.com", "ttl": "9s"},
            "rotate_signal": "SIGHUP", "rotate_pid_file": pid_file,
            "files": {"cert.pem": "raw:certificate", "key.pem": "raw:private_key"}
        })),
    ]);
    env.doc("certs.json", &docs.to_string());
    env.config(json!({}));
    env.start();
    // The CA from OpenBao itself: nothing but nginx opens the bundle.
    let ca = dir.join("ca.pem");
    ok("curl", &["-sf", "--max-time", "5", "-o", ca.to_str().unwrap(), &format!("{}/v1/pki/ca/pem", b.addr)]);
    let port = free_tcp_port();
    let (d, m) = (dir.display(), env.m("tls/web"));
    // As Debian runs it: no `daemon off;` — the process that reads the certificate forks the
    // master and exits.
    let conf = format!(
        "master_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {m}/cert.pem;\n    ssl_certificate_key {m}/key.pem;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        m = m.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let _kill = KillNginx(pid_file.clone());
    let mut start = std::process::Command::new("nginx")
        .args(["-c", dir.join("nginx.conf").to_str().unwrap(), "-p", dir.to_str().unwrap()])
        .process_group(0)
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let why = || {
        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    };
    let opener = start.id();
    let limit = Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = start.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < limit, "nginx did not daemonize:\n{}", why());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "nginx failed to start ({st}):\n{}\n{}", why(), env.log());
    eventually(Duration::from_secs(10), "nginx's pid file", || read(&pid_file).is_ok_and(|t| !t.trim().is_empty()));
    let master: u32 = read(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(master, opener, "the master is not the process that opened the certificate");
    let url = format!("https://web.example.com:{port}/");
    let resolve = format!("web.example.com:{port}:127.0.0.1");
    let get =
        || run("curl", &["-sf", "--max-time", "3", "--cacert", ca.to_str().unwrap(), "--resolve", &resolve, &url]);
    eventually(Duration::from_secs(10), "nginx to serve TLS", || get().status.success());
    let serial = || {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "timeout 5 openssl s_client -connect 127.0.0.1:{port} -servername web.example.com </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let mut serials: Vec<String> = Vec::new();
    let (mut requests, mut failures) = (0, 0);
    let began = Instant::now();
    // Leases of 9 s rotated at 2/3: a new certificate about every 6 s. Three rotations: four.
    while serials.len() < 4 && began.elapsed() < Duration::from_secs(40) {
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
    let events = rotations(&env, "/tls/web");
    eprintln!("{requests} requests, {failures} failed; serials: {serials:?}; rotate events: {events:?}");
    assert_eq!(failures, 0, "a request failed across rotations:\n{}", why());
    assert!(
        serials.len() >= 4,
        "three rotations change the served certificate three times: {serials:?}\n{}",
        env.log()
    );
    let signalled: Vec<_> = events.iter().filter(|e| e["outcome"] == "signalled").collect();
    assert!(signalled.len() >= 3, "each rotation signals nginx: {events:?}");
    assert!(signalled.iter().all(|e| e["pid"] == master), "the master got each signal, once: {events:?}");
    assert!(!events.iter().any(|e| e["outcome"] == "rotate_unheard"), "{events:?}");
    let initial = events.iter().find(|e| e["outcome"] == "signalled").unwrap();
    assert_eq!(initial["pid"], master, "the first rotation reached the master through its pid file");
}

/// A script that appends its lease id and its environment to files next to it.
fn rotate_script(env: &Env) -> PathBuf {
    let p = env.path("reload.sh");
    let here = env.path("");
    let text = format!(
        "#!/bin/sh\necho \"$LEASEFS_LEASE_ID\" >> {0}/reloaded.txt\nenv > {0}/reload-env.txt\n",
        here.display()
    );
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    p
}

/// A pid that no process can hold: `pid_max` itself (pids are below it). A reaped child's pid
/// would do only until another process — nginx in a test running alongside — is given it.
fn dead_pid() -> u32 {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    max.trim().parse().unwrap()
}

fn write_pid_file(p: &Path, pid: u32, mode: u32) {
    std::fs::write(p, format!("{pid}\n")).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_rotation_that_reaches_nobody_is_audited_counted_and_logged() {
    require_root("FUSE mounts");
    let mut env = Env::new();
    let script = env.script();
    let (dead, loose) = (env.path("dead.pid"), env.path("loose.pid"));
    write_pid_file(&dead, dead_pid(), 0o644);
    // A live process named by a pid file others could have written: never signalled.
    let mut bystander = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    write_pid_file(&loose, bystander.id(), 0o666);
    let rot = |extra: serde_json::Value| {
        let mut a = json!({"ttl": "4s", "rotate_signal": "SIGTERM", "rotate_at": 0.5});
        a.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        a
    };
    env.doc(
        "exec.json",
        &exec_catalog(
            &script,
            &[
                ("dyn:nobody", "royal", rot(json!({}))),
                ("dyn:dead", "royal", rot(json!({"rotate_pid_file": dead}))),
                ("dyn:loose", "royal", rot(json!({"rotate_pid_file": loose}))),
            ],
        ),
    );
    env.config(json!({}));
    env.start();
    for name in ["nobody", "dead", "loose"] {
        cat(&env.m(&format!("dyn/{name}"))); // the opener exits at once
    }
    let unheard = |path: &str| rotations(&env, path).into_iter().find(|e| e["outcome"] == "rotate_unheard");
    wait(&env, Duration::from_secs(15), "three rotate_unheard audit lines", || {
        ["/dyn/nobody", "/dyn/dead", "/dyn/loose"].iter().all(|p| unheard(p).is_some())
    });
    let detail = |p: &str| unheard(p).unwrap()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail("/dyn/nobody").contains("no live opener"), "{}", detail("/dyn/nobody"));
    assert!(detail("/dyn/dead").contains("is not running"), "{}", detail("/dyn/dead"));
    assert!(detail("/dyn/loose").contains("writable by group or others"), "{}", detail("/dyn/loose"));
    for p in ["/dyn/nobody", "/dyn/dead", "/dyn/loose"] {
        let signalled: Vec<_> = rotations(&env, p).into_iter().filter(|e| e["outcome"] == "signalled").collect();
        assert!(signalled.is_empty(), "{p}: {signalled:?}");
    }
    assert!(bystander.try_wait().unwrap().is_none(), "the pid in a loose pid file was not signalled");
    bystander.kill().unwrap();
    let _ = bystander.wait();
    assert!(unheard_metric(&env) >= 3, "counted");
    let log = env.log();
    let id = unheard("/dyn/nobody").unwrap()["lease_id"].as_str().unwrap().to_string();
    let line = log.lines().find(|l| l.contains("rotation reached nobody") && l.contains(&id));
    let line = line.unwrap_or_else(|| panic!("no warn line for lease {id}:\n{log}"));
    assert!(line.contains("WARN") && line.contains("/dyn/nobody"), "{line}");
}

#[test]
fn a_rotate_command_runs_at_rotate_at_and_one_that_fails_is_unheard() {
    require_root("FUSE mounts");
    let mut env = Env::new();
    let script = env.script();
    let reload = rotate_script(&env);
    env.doc(
        "exec.json",
        &exec_catalog(
            &script,
            &[
                ("dyn:cmd", "royal", json!({"ttl": "6s", "rotate_command": [reload], "rotate_at": 0.5})),
                ("dyn:fails", "royal", json!({"ttl": "6s", "rotate_command": ["false"], "rotate_at": 0.5})),
            ],
        ),
    );
    env.config(json!({}));
    env.start();
    let opened = Instant::now();
    cat(&env.m("dyn/cmd"));
    cat(&env.m("dyn/fails"));
    let leases = env.leases();
    let id = leases.iter().find(|l| l["path"] == "/dyn/cmd").unwrap_or_else(|| panic!("{leases:?}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait(&env, Duration::from_secs(10), "the rotate_command to run", || !env.lines("reloaded.txt").is_empty());
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(2500), "ran at rotate_at (3 s into a 6 s lease), not at once: {took:?}");
    assert_eq!(env.lines("reloaded.txt"), vec![id.clone()], "once, with the lease's id");
    let cmd_env = std::fs::read_to_string(env.path("reload-env.txt")).unwrap();
    assert!(!cmd_env.contains("LEASEFS_TEST_LEAK"), "a cleared environment: {cmd_env}");
    assert!(cmd_env.contains("LEASEFS_SECRET_PATH=/dyn/cmd"), "{cmd_env}");
    wait(&env, Duration::from_secs(10), "the failing command's rotate_unheard", || {
        rotations(&env, "/dyn/fails").iter().any(|e| e["outcome"] == "rotate_unheard")
    });
    let ran = rotations(&env, "/dyn/cmd");
    assert!(ran.iter().any(|e| e["outcome"] == "command" && e["lease_id"] == id.as_str()), "{ran:?}");
    assert!(!ran.iter().any(|e| e["outcome"] == "rotate_unheard"), "{ran:?}");
    let failed = rotations(&env, "/dyn/fails");
    let detail = failed.iter().find(|e| e["outcome"] == "rotate_unheard").unwrap()["detail"].clone();
    assert!(detail.as_str().unwrap_or_default().contains("rotate_command"), "{detail}");
    assert!(unheard_metric(&env) >= 1);
}

#[test]
fn check_accepts_the_rotation_keys_and_refuses_near_misses_mixtures_and_an_untrusted_command() {
    require_root("the ownership checks are of root-owned files");
    let env = Env::new();
    let script = env.script();
    let check = |env: &Env| {
        let o = run(BIN, &["check", "--config", env.path("config.json").to_str().unwrap()]);
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let good = [
        ("dyn:pid", "royal", json!({"rotate_signal": "SIGHUP", "rotate_pid_file": "/run/nginx.pid"})),
        ("dyn:cmd", "royal", json!({"rotate_command": ["systemctl", "reload", "nginx"]})),
    ];
    env.doc("exec.json", &exec_catalog(&script, &good));
    env.config(json!({}));
    let (ok_, err) = check(&env);
    assert!(ok_, "both keys are accepted: {err}");
    // A program anyone could have replaced, in a directory writable by others.
    let open = env.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let reload = open.join("reload");
    std::fs::write(&reload, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&reload, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (attrs, want) in [
        (json!({"rotate_signal": "SIGHUP", "rotate_pid_fle": "/run/nginx.pid"}), "did you mean `rotate_pid_file`"),
        (json!({"rotate_pid_file": "/run/nginx.pid"}), "needs attributes.rotate_signal"),
        (json!({"rotate_signal": "SIGHUP", "rotate_command": ["true"]}), "instead of signalling"),
        (json!({"rotate_command": "systemctl reload nginx"}), "array of strings"),
        (json!({"rotate_command": [reload]}), "is not trusted"),
    ] {
        env.doc("exec.json", &exec_catalog(&script, &[("dyn:bad", "royal", attrs.clone())]));
        let (ok_, err) = check(&env);
        assert!(!ok_ && err.contains(want), "{attrs}: expected {want:?} in:\n{err}");
        assert!(err.contains("exec.json:"), "named at its file: {err}");
    }
}
