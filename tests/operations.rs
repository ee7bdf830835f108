//! Running leasefs the way people run secrets: systemd (units, sd_notify), mount(8)/fstab, and the
//! recipes — credential_process, LoadCredential-style reads, a container bind mount, kubectl ExecCredential, env files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

fn dynamic_env(entries: &[(&str, &str, serde_json::Value)]) -> Env {
    let env = Env::new();
    let script = env.script();
    env.doc("dynamic.json", &exec_catalog(&script, entries));
    env.doc("static.json", r#"{"path": "app:config", "data": {"value": "static-value"}}"#);
    env.config(json!({}));
    env
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&units).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap().replace("/usr/bin/leasefs", BIN);
        let name = if name == "leasefs@.service" { "leasefs@payments.service".to_string() } else { name };
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(name);
    }
    assert!(names.len() >= 3, "{names:?}");
    let unit = std::fs::read_to_string(units.join("leasefs.service")).unwrap();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "LimitCORE=0",
        "KillMode=mixed",
        "CapabilityBoundingSet=CAP_SYS_ADMIN",
    ] {
        assert!(unit.contains(want), "leasefs.service lacks {want}");
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&names)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn sd_notify_says_ready_once_mounted_reloading_on_hup_and_stopping_on_term() {
    let mut env = dynamic_env(&[]);
    let sock_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mnt = env.mnt();
    env.start_env(&[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 4096];
    let recv = |buf: &mut [u8]| -> String {
        let n = sock.recv(buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv(&mut buf);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("STATUS=serving 1 static"), "{ready}");
    assert!(is_mounted(&mnt), "READY=1 came before the mount was live");
    env.daemon().signal(libc::SIGHUP);
    assert_eq!(recv(&mut buf), "RELOADING=1");
    assert_eq!(recv(&mut buf), "READY=1");
    env.daemon().signal(libc::SIGTERM);
    assert!(recv(&mut buf).starts_with("STOPPING=1"));
    assert!(env.daemon().wait(Duration::from_secs(10)).unwrap().success());
}

/// Installs /usr/sbin/mount.leasefs for the duration of a test (as root), removing it after.
struct Helper(Option<std::path::PathBuf>);
impl Helper {
    fn install() -> Helper {
        let p = std::path::PathBuf::from("/usr/sbin/mount.leasefs");
        if p.exists() {
            return Helper(None);
        }
        std::os::unix::fs::symlink(BIN, &p).unwrap();
        Helper(Some(p))
    }
}
impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn wait_no_daemon(mnt: &Path) {
    let m = mnt.to_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "the daemon to exit after umount", || {
        !std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&m) && String::from_utf8_lossy(&c).contains("leasefs"))
                .unwrap_or(false)
        })
    });
}

#[test]
fn mount_t_leasefs_and_fstab_work_through_mount_leasefs() {
    require_root("mount(8) helpers need root");
    let env = dynamic_env(&[]);
    let _helper = Helper::install();
    let cfg = env.path("config.json");
    let mnt = env.mnt();
    let log = env.path("helper.log");
    let o = Command::new("mount")
        .args([
            "-t",
            "leasefs",
            cfg.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "-o",
            &format!("defaults,_netdev,log={}", log.display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "mount -t leasefs: {}", String::from_utf8_lossy(&o.stderr));
    assert!(is_mounted(&mnt));
    assert_eq!(cat(&env.m("app/config")), "static-value");
    let o = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "umount: {}", String::from_utf8_lossy(&o.stderr));
    wait_no_daemon(&mnt);
    assert!(std::fs::read_to_string(&log).unwrap().contains("mounted"));

    // The fstab line from the docs, through `mount -T <fstab> MOUNTPOINT`.
    let fstab = env.path("fstab");
    std::fs::write(
        &fstab,
        format!("{} {} leasefs defaults,_netdev,log={} 0 0\n", cfg.display(), mnt.display(), log.display()),
    )
    .unwrap();
    let o = Command::new("mount").arg("-T").arg(&fstab).arg(&mnt).output().unwrap();
    assert!(o.status.success(), "mount via fstab: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(cat(&env.m("app/config")), "static-value");
    Command::new("umount").arg(&mnt).status().unwrap();
    wait_no_daemon(&mnt);

    // A bad config: mount fails with mount(8)'s failure code and points at the log.
    std::fs::write(&cfg, "{").unwrap();
    let o =
        Command::new("mount").args(["-t", "leasefs", cfg.to_str().unwrap(), mnt.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(32));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exited"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn load_credential_style_reads_and_cp_get_a_fresh_credential_each_time() {
    // systemd's LoadCredential= reads the file to EOF once per service start; cp and install do the same.
    let mut env = dynamic_env(&[("dynamic:db:app", "royal", json!({"ttl": "5m"}))]);
    env.start();
    let src = env.m("dynamic/db/app");
    let a = env.path("cred-start-1");
    let b = env.path("cred-start-2");
    ok("cp", &[src.to_str().unwrap(), a.to_str().unwrap()]);
    ok("install", &["-m", "0400", src.to_str().unwrap(), b.to_str().unwrap()]);
    let (a, b) = (std::fs::read_to_string(a).unwrap(), std::fs::read_to_string(b).unwrap());
    assert!(a.contains("Password") && b.contains("Password"), "{a}");
    assert_ne!(a, b, "each service start gets a new credential");
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/example-app.service")).unwrap();
    assert!(unit.contains("LoadCredential=db:/secrets/dynamic/db/app"));
}

#[test]
fn a_bind_mount_of_one_file_in_a_new_mount_namespace_serves_fresh_credentials() {
    require_root("unshare -m needs root");
    // What `docker run -v /secrets/dynamic/db/app:/run/secrets/db:ro` does, without a container engine.
    let mut env = dynamic_env(&[("dynamic:db:app", "royal", json!({"ttl": "5m"}))]);
    env.start();
    let target = env.path("container-target");
    std::fs::write(&target, "").unwrap();
    let script = format!(
        "mount --bind -o ro '{}' '{}' && cat '{t}' && echo && cat '{t}'",
        env.m("dynamic/db/app").display(),
        target.display(),
        t = target.display()
    );
    let out = ok("unshare", &["-m", "--propagation", "private", "sh", "-c", &script]);
    let creds: Vec<serde_json::Value> = out
        .split("}\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| serde_json::from_str(&format!("{s}}}")).unwrap())
        .collect();
    assert_eq!(creds.len(), 2, "{out}");
    assert_ne!(creds[0]["Password"], creds[1]["Password"]);
    // The bind mount lived only in that namespace.
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
}

#[test]
fn kubectl_uses_an_exec_credential_file_as_its_exec_plugin() {
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        panic!("kubectl is missing: scripts/test.sh installs it");
    }
    let mut env = dynamic_env(&[("k8s:token", "token", json!({"format": "exec_credential", "ttl": "10m"}))]);
    env.start();
    // A stand-in API server that records the Authorization header kubectl sends.
    let port = common::backends::free_port();
    let seen = env.path("auth-seen");
    // kubectl sends credentials over TLS only: a throwaway self-signed certificate.
    let (crt, key) = (env.path("api.crt"), env.path("api.key"));
    ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ed25519",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    let server = r#"
import http.server, ssl, sys
seen = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open(seen, "a").write((self.headers.get("Authorization") or "none") + "\n")
        body = b'{"major": "1", "minor": "30", "gitVersion": "v1.30.0"}'
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
    let mut srv = Command::new("python3")
        .args(["-c", server, &port.to_string(), seen.to_str().unwrap(), crt.to_str().unwrap(), key.to_str().unwrap()])
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the stand-in API server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let kubeconfig = env.path("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: cat\n      args: [\"{}\"]\n      interactiveMode: Never\n\
             contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            env.m("k8s/token").display()
        ),
    )
    .unwrap();
    let o = Command::new("kubectl")
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "get", "--raw", "/version"])
        .output()
        .unwrap();
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(o.status.success(), "kubectl: {}", String::from_utf8_lossy(&o.stderr));
    let auth = std::fs::read_to_string(&seen).unwrap();
    assert!(auth.lines().any(|l| l.starts_with("Bearer tok-")), "kubectl did not send the issued token: {auth}");
}

#[test]
fn json_logs_metrics_version_manpage_and_completions() {
    let mut env = dynamic_env(&[("dyn:a", "royal", json!({}))]);
    env.mount = Some(Mounted::start_full(
        &env.path("config.json"),
        &env.mnt(),
        &env.path("daemon.log"),
        &["--log-format", "json"],
        &[],
        &[],
    ));
    cat(&env.m("dyn/a"));
    cat(&env.m("app/config"));
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    for want in [
        "leasefs_issuances_total{issuer=\"exec\"} 1",
        "leasefs_issue_duration_seconds_count{issuer=\"exec\"} 1",
        "leasefs_leases_live 1",
        "# TYPE leasefs_issue_duration_seconds histogram",
        "leasefs_fuse_requests_total{op=\"open\"}",
    ] {
        assert!(metrics.contains(want), "metrics lack {want}:\n{metrics}");
    }
    env.daemon().stop();
    let log = env.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 5);
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(ok(BIN, &["--version"]).starts_with("leasefs "));
    let man = ok(BIN, &["manpage"]);
    assert!(man.contains(".TH leasefs 1") && man.contains("EXAMPLES"), "{}", &man[..200.min(man.len())]);
    let comp = env.path("leasefs.bash");
    std::fs::write(&comp, ok(BIN, &["completions", "bash"])).unwrap();
    ok("bash", &["-n", comp.to_str().unwrap()]);
    let help = ok(BIN, &["--help"]);
    assert!(help.contains("EXAMPLES:") && help.contains("EXIT STATUS:") && help.contains("SIGNALS:"));
}

#[test]
fn sighup_reopens_a_rotated_audit_log() {
    let mut env = dynamic_env(&[]);
    env.start();
    cat(&env.m("app/config"));
    let audit = env.path("audit.jsonl");
    let rotated = env.path("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    env.daemon().signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), "a new audit file after SIGHUP", || audit.exists());
    cat(&env.m("app/config"));
    assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 1);
    assert_eq!(std::fs::read_to_string(&audit).unwrap().lines().count(), 1);
}

#[test]
fn a_bind_mounted_file_held_open_is_shared_with_its_user_and_busy_for_another() {
    require_root("unshare -m and runuser need root");
    // One file bind-mounted into a container is one kernel node for every process in it: while
    // one process holds it open, another open shares that lease (same uid) — never a second lease
    // on the same pages — and another uid's open is refused.
    let mut env = dynamic_env(&[("dynamic:db:app", "royal", json!({"ttl": "5m", "mode": "0444"}))]);
    env.config(json!({"allow_other": true}));
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    env.start();
    let target = env.path("container-target");
    std::fs::write(&target, "").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "mount --bind -o ro '{src}' '{t}' && exec 3< '{t}' && echo \"A=$(cat '{t}' | tr -d '\\n')\" && \
         echo \"B=$(runuser -u nobody -- cat '{t}' 2>&1 | tr -d '\\n')\" && echo \"C=$(cat <&3 | tr -d '\\n')\" && \
         exec 3<&- && echo \"D=$(cat '{t}' | tr -d '\\n')\"",
        src = env.m("dynamic/db/app").display(),
        t = target.display()
    );
    let out = ok("unshare", &["-m", "--propagation", "private", "sh", "-c", &script]);
    let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().to_string();
    let (a, b, c, d) = (field("A="), field("B="), field("C="), field("D="));
    assert!(a.contains("Password"), "{out}");
    assert_eq!(a, c, "a second open of the held node shares its lease\n{out}");
    assert!(b.contains("busy"), "another user is refused while it is held: {b}\n{out}");
    assert!(d.contains("Password") && d != a, "once closed, the next open issues afresh\n{out}");
    assert!(env.audit().iter().any(|l| l["event"] == "reuse" && l["detail"] == "the same node, open already"));
}
