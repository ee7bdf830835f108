//! At the most verbose log level, with every issuer and format exercised against the real servers,
//! no secret value appears in the daemon's output, the audit log, the journal or the control files.

mod common;

use std::time::Duration;

use common::backends::{bao, pg, sts};
use common::*;
use serde_json::json;

#[test]
fn no_value_reaches_any_log_audit_journal_or_control_file_at_trace_level() {
    let (pg, sts, bao) = (pg(), sts(), bao());
    bao.database_role("leak", "10m");
    bao.kv_put("leakcheck/app", json!({"password": "kv-value-8c1d5e"}));
    let mut env = Env::new();
    let script = env.script();
    let jwt_key = ok("openssl", &["genpkey", "-algorithm", "ed25519"]);
    let static_value = "static-value-5b7e02";
    let exec_base = "exec-base-token-91af3c";
    let docs = json!([
        {"path": "static:plain", "data": {"value": static_value}},
        {"path": "static:multi", "attributes": {"format": "env"}, "data": {"user": "u", "password": "static-pw-3e9a41"}},
        {"path": "base:exec", "attributes": {"type": "exec"}, "data": {"command": [script, "royal"], "revoke_command": [script, "revoke"], "api_token": exec_base}},
        {"path": "base:jwt", "attributes": {"type": "jwt"}, "data": {"algorithm": "EdDSA", "private_key": jwt_key, "issuer": "i"}},
        {"path": "base:pg", "attributes": {"type": "postgres"}, "data": pg.base_data()},
        {"path": "base:aws", "attributes": {"type": "aws"}, "data": {"access_key_id": sts.access_key_id, "secret_access_key": sts.secret_access_key, "endpoint": sts.endpoint}},
        {"path": "base:bao", "attributes": {"type": "openbao"}, "data": {"address": bao.addr, "token": bao.token}},
        dynamic("d:exec:json", "base:exec", json!({})),
        dynamic("d:exec:env", "base:exec", json!({"format": "env"})),
        dynamic("d:exec:tpl", "base:exec", json!({"format": "template:{{Username}}:{{Password}}"})),
        dynamic("d:exec:raw", "base:exec", json!({"format": "raw:Password", "revoke_on_close": true})),
        dynamic("d:jwt", "base:jwt", json!({"format": "exec_credential"})),
        dynamic("d:pg", "base:pg", json!({"format": "template:postgres://{{username}}:{{password}}@h/db", "ttl": "2s"})),
        dynamic("d:aws:cp", "base:aws", json!({"role_arn": sts.role_arn, "format": "credential_process"})),
        dynamic("d:aws:ini", "base:aws", json!({"role_arn": sts.role_arn, "format": "aws_ini"})),
        dynamic("d:bao", "base:bao", json!({"path": "database/creds/leak", "format": "json"})),
        dynamic("d:broken", "base:exec", json!({"format": "raw:NoSuchField"}))
    ]);
    env.doc("all.json", &docs.to_string());
    let token = env.path("bao-token");
    std::fs::write(&token, &bao.token).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = json!({
        "sources": [
            {"type": "local", "prefix": "/", "path": env.docs()},
            {"type": "openbao", "prefix": "/bao", "address": bao.addr, "token_file": token, "kv_mounts": ["secret"], "dynamic_mounts": ["database"]}
        ],
        "state_dir": env.path("state"), "audit_log": env.path("audit.jsonl")
    });
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    std::fs::set_permissions(env.path("config.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.mount = Some(Mounted::start_full(
        &env.path("config.json"),
        &env.mnt(),
        &env.path("daemon.log"),
        &["--log-level", "trace"],
        &[],
        &[],
    ));

    // Every value leasefs handed out, and every base credential it holds.
    let mut secrets: Vec<String> = vec![
        static_value.into(),
        "static-pw-3e9a41".into(),
        exec_base.into(),
        pg.password.clone(),
        sts.secret_access_key.clone(),
        bao.token.clone(),
        "kv-value-8c1d5e".into(),
    ];
    secrets.extend(jwt_key.lines().filter(|l| !l.starts_with("-----")).map(str::to_string));
    let files = [
        "static/plain",
        "static/multi",
        "d/exec/json",
        "d/exec/env",
        "d/exec/tpl",
        "d/exec/raw",
        "d/jwt",
        "d/pg",
        "d/aws/cp",
        "d/aws/ini",
        "d/bao",
        "bao/secret/leakcheck/app",
        "bao/database/creds/leak",
    ];
    for f in files {
        let text = read(&env.m(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{}", env.log()));
        // Collect the secret parts of what was served: every token of 12+ characters.
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_+/=.".contains(c))) {
            if word.len() >= 12
                && !word.starts_with("client.authentication")
                && !word.contains("amazonaws")
                && !word.starts_with("2026-")
            {
                secrets.push(word.to_string());
            }
        }
    }
    assert_eq!(errno_of(read(&env.m("d/broken"))), libc::EIO);
    // Let the short postgres lease expire and be revoked, then revoke the rest.
    std::thread::sleep(Duration::from_millis(2500));
    let status = read(&env.m(".leasefs/status.json")).unwrap();
    let leases = read(&env.m(".leasefs/leases.json")).unwrap();
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), "--all"]);
    let leases_cli = ok(BIN, &["leases", env.mnt().to_str().unwrap()]);
    assert!(env.daemon().stop().success());

    let log = env.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "the log is not verbose");
    let places = [
        ("daemon log", log),
        ("audit log", std::fs::read_to_string(env.path("audit.jsonl")).unwrap()),
        ("journal", std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap()),
        ("status.json", status),
        ("leases.json", leases),
        ("metrics", metrics),
        ("leases CLI", leases_cli),
    ];
    // Lease ids are identifiers, logged on purpose (the test script also echoes them as LeaseId).
    let lease_ids: std::collections::HashSet<String> =
        env.audit().iter().filter_map(|l| l["lease_id"].as_str().map(str::to_string)).collect();
    secrets.retain(|s| !lease_ids.contains(s));
    secrets.sort();
    secrets.dedup();
    assert!(secrets.len() > 25, "too few values collected: {}", secrets.len());
    for (place, text) in &places {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret value ({} chars) appears in the {place}", s.len());
        }
    }
    eprintln!(
        "no_leaks: {} distinct values checked against {} places, {} bytes of trace log",
        secrets.len(),
        places.len(),
        places[0].1.len()
    );
}
