//! Issuers against the real thing: a PostgreSQL server, an STS API (moto, signatures checked) and an OpenBao server.

mod common;

use std::time::{Duration, Instant};

use common::backends::{bao, pg, python, sts};
use common::*;
use serde_json::json;

fn pg_env(ttl: &str, extra: serde_json::Value) -> Env {
    let pg = pg();
    let mut env = Env::new();
    let docs = json!([
        {"path": "base:db:main", "attributes": {"type": "postgres"}, "data": pg.base_data()},
        dynamic("dynamic:db:app", "base:db:main", json!({
            "ttl": ttl, "format": "json",
            "grants": ["GRANT SELECT ON orders TO {{name}}"]
        })),
        dynamic("dynamic:db:url", "base:db:main", json!({
            "ttl": ttl, "format": "template:postgres://{{username}}:{{password}}@{{host}}:{{port}}/{{database}}"
        }))
    ]);
    env.doc("db.json", &docs.to_string());
    env.config(json!({"defaults": extra}));
    env.start();
    env
}

fn cred(env: &Env, file: &str) -> (String, String) {
    let text = read(&env.m(file)).unwrap_or_else(|e| panic!("{file}: {e}\n{}", env.log()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (v["username"].as_str().unwrap().to_string(), v["password"].as_str().unwrap().to_string())
}

/// A psql session that stays connected (pg_sleep) as `user`.
fn hold_session(user: &str, pw: &str) -> std::process::Child {
    std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg().port.to_string(),
            "-U",
            user,
            "-d",
            "postgres",
            "-tAc",
            "SELECT pg_sleep(30)",
        ])
        .env("PGPASSWORD", pw)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The session was terminated by the revocation (it would otherwise run 30 s).
fn assert_session_ends(mut session: std::process::Child) {
    let t = Instant::now();
    while session.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "the open session survived revocation");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_credentials_log_in_with_their_grants_and_the_role_is_dropped_at_expiry() {
    let pg = pg();
    let env = pg_env("3s", json!({}));
    let (user, pw) = cred(&env, "dynamic/db/app");
    assert!(user.starts_with("lfs_dynamic_db_app_"), "{user}");
    let o = pg.psql(&user, &pw, "SELECT current_user, (SELECT count(*) FROM orders)");
    assert!(o.status.success(), "login with the issued credential: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{user}|1"));
    // VALID UNTIL is set to the lease expiry.
    let until = pg.admin(&format!("SELECT rolvaliduntil IS NOT NULL FROM pg_roles WHERE rolname = '{user}'"));
    assert_eq!(until, "t");
    // A session open at expiry is terminated, then the role is dropped.
    let session = hold_session(&user, &pw);
    eventually(Duration::from_secs(8), "the role to be dropped after expiry", || !pg.role_exists(&user));
    assert_session_ends(session);
    let o = pg.psql(&user, &pw, "SELECT 1");
    assert!(!o.status.success(), "a revoked credential still logs in");
    // The template format gives a working URL.
    let url = cat(&env.m("dynamic/db/url"));
    let o = std::process::Command::new("psql").args([url.as_str(), "-tAc", "SELECT 42"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42", "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn leasefs_revoke_drops_the_postgres_role_now() {
    let pg = pg();
    let env = pg_env("10m", json!({}));
    let (user, pw) = cred(&env, "dynamic/db/app");
    assert!(pg.psql(&user, &pw, "SELECT 1").status.success());
    let id = env.leases()[0]["id"].as_str().unwrap().to_string();
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), &id]);
    eventually(Duration::from_secs(5), "the role dropped after leasefs revoke", || !pg.role_exists(&user));
    assert!(!pg.psql(&user, &pw, "SELECT 1").status.success());
}

#[test]
fn kill_9_with_live_postgres_leases_leaves_no_role_after_restart() {
    let pg = pg();
    let mut env = pg_env("10m", json!({}));
    let users: Vec<String> = (0..3).map(|_| cred(&env, "dynamic/db/app").0).collect();
    for u in &users {
        assert!(pg.role_exists(u));
    }
    env.daemon().kill9();
    for u in &users {
        assert!(pg.role_exists(u), "roles survive the crash until the restart");
    }
    env.start();
    eventually(Duration::from_secs(10), "orphaned roles dropped", || users.iter().all(|u| !pg.role_exists(u)));
    let journal = std::fs::read_to_string(env.path("state/journal.jsonl")).unwrap();
    assert!(!journal.contains(&pg.password), "the journal holds the admin password");
}

#[test]
fn a_role_whose_create_was_journaled_but_never_finished_is_cleaned_up() {
    // The intent (role name) is journaled before CREATE ROLE: simulate a crash right after the CREATE.
    let pg = pg();
    let mut env = pg_env("10m", json!({}));
    let (user, _) = cred(&env, "dynamic/db/app");
    env.daemon().kill9();
    // Rewrite the journal to hold only the intent line, as if the daemon died between CREATE and `issued`.
    let j = env.path("state/journal.jsonl");
    let text = std::fs::read_to_string(&j).unwrap();
    let intent: Vec<&str> = text.lines().filter(|l| l.contains("\"op\":\"intent\"")).collect();
    assert_eq!(intent.len(), 1, "the intent is journaled: {text}");
    std::fs::write(&j, format!("{}\n", intent[0])).unwrap();
    env.start();
    eventually(Duration::from_secs(10), "the half-issued role dropped", || !pg.role_exists(&user));
}

#[test]
fn sts_keys_from_credential_process_work_for_a_signed_call() {
    let s = sts();
    let mut env = Env::new();
    let base = json!({"access_key_id": s.access_key_id, "secret_access_key": s.secret_access_key, "region": "us-east-1", "endpoint": s.endpoint});
    let docs = json!([
        {"path": "base:aws:api", "attributes": {"type": "aws"}, "data": base},
        {"path": "base:aws:wrong", "attributes": {"type": "aws"}, "data": {"access_key_id": s.access_key_id, "secret_access_key": "not-the-secret", "endpoint": s.endpoint}},
        dynamic("dynamic:aws:temp-api", "base:aws:api", json!({"role_arn": s.role_arn, "ttl": "15m", "format": "credential_process"})),
        dynamic("dynamic:aws:session", "base:aws:api", json!({"format": "credential_process"})),
        dynamic("dynamic:aws:ini", "base:aws:api", json!({"role_arn": s.role_arn, "format": "aws_ini"})),
        dynamic("dynamic:aws:bad", "base:aws:wrong", json!({"role_arn": s.role_arn, "format": "credential_process"}))
    ]);
    env.doc("aws.json", &docs.to_string());
    env.config(json!({}));
    env.start();

    let v: serde_json::Value = serde_json::from_str(&cat(&env.m("dynamic/aws/temp-api"))).unwrap();
    assert_eq!(v["Version"], 1);
    let key = v["AccessKeyId"].as_str().unwrap();
    assert!(key.starts_with("ASIA"), "AssumeRole keys: {key}");
    let arn = s
        .caller_identity(key, v["SecretAccessKey"].as_str().unwrap(), v["SessionToken"].as_str())
        .expect("the issued keys sign a call");
    assert!(arn.contains("assumed-role/app/"), "{arn}");
    let exp = chrono::DateTime::parse_from_rfc3339(v["Expiration"].as_str().unwrap()).unwrap();
    assert!(exp.signed_duration_since(chrono::Utc::now()).num_seconds() <= 15 * 60);

    let g: serde_json::Value = serde_json::from_str(&cat(&env.m("dynamic/aws/session"))).unwrap();
    assert!(g["SessionToken"].as_str().is_some_and(|t| !t.is_empty()), "GetSessionToken: {g}");

    // A wrong base secret: STS refuses our signature; the file gives EIO and the log names the code.
    assert_eq!(errno_of(read(&env.m("dynamic/aws/bad"))), libc::EIO);
    let log = env.log();
    assert!(log.contains("SignatureDoesNotMatch") || log.contains("InvalidClientTokenId"), "{log}");
    assert!(!log.contains(&s.secret_access_key) && !log.contains("not-the-secret"), "a key reached the log");

    // credential_process = cat <file>, driven by boto3 through ~/.aws/config.
    let cfg = env.path("aws-config");
    std::fs::write(
        &cfg,
        format!(
            "[profile leasefs]\ncredential_process = cat {}\nregion = us-east-1\n",
            env.m("dynamic/aws/temp-api").display()
        ),
    )
    .unwrap();
    let script = r#"
import boto3, os
s = boto3.Session(profile_name="leasefs")
print(s.client("sts", endpoint_url=os.environ["EP"]).get_caller_identity()["Arn"])
"#;
    let o = python(
        script,
        &[
            ("EP", &s.endpoint),
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ],
    );
    assert!(o.status.success(), "boto3 with credential_process: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("assumed-role/app/"));

    // The same profile through the AWS CLI.
    let o = std::process::Command::new(common::backends::venv_bin("aws"))
        .args(["--profile", "leasefs", "--endpoint-url", &s.endpoint, "sts", "get-caller-identity", "--output", "json"])
        .env("AWS_CONFIG_FILE", &cfg)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(o.status.success(), "aws cli with credential_process: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("assumed-role/app/"));

    let ini = cat(&env.m("dynamic/aws/ini"));
    assert!(ini.contains("aws_access_key_id = ASIA") && ini.contains("aws_session_token = "), "{ini}");
}

fn bao_env(kv: bool, dynamic_mounts: &[&str], refresh: &str) -> Env {
    let b = bao();
    let env = Env::new();
    let token = env.path("bao-token");
    std::fs::write(&token, &b.token).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let kv_mounts: Vec<&str> = if kv { vec!["secret"] } else { vec![] };
    let cfg = json!({
        "sources": [
            {"type": "local", "prefix": "/", "path": env.docs()},
            {"type": "openbao", "prefix": "/bao", "address": b.addr, "token_file": token, "kv_mounts": kv_mounts, "dynamic_mounts": dynamic_mounts}
        ],
        "state_dir": env.path("state"),
        "audit_log": env.path("audit.jsonl"),
        "defaults": {"refresh": refresh, "issue_timeout": "3s", "cache_ttl": "1s"}
    });
    std::fs::write(env.path("config.json"), cfg.to_string()).unwrap();
    std::fs::set_permissions(env.path("config.json"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.doc("local.json", r#"{"path": "local:note", "data": {"value": "local"}}"#);
    env
}

#[test]
fn openbao_kv_is_listed_without_reading_values_and_read_on_open() {
    let b = bao();
    let tag = format!("t{}", std::process::id());
    b.kv_put(&format!("{tag}/app/db"), json!({"password": "kv-pw-91", "user": "app"}));
    b.kv_put(&format!("{tag}/app/api"), json!({"value": "kv-token-77"}));
    let mut env = bao_env(true, &[], "1h");
    env.start();
    let before = b.requests().len();
    let listing = ok("ls", &["-lR", env.m("bao").to_str().unwrap()]);
    assert!(listing.contains("db") && listing.contains("api"), "{listing}");
    ok("stat", &[env.m(&format!("bao/secret/{tag}/app/db")).to_str().unwrap()]);
    ok("getfattr", &["-d", env.m(&format!("bao/secret/{tag}/app/db")).to_str().unwrap()]);
    let during_listing = &b.requests()[before..];
    assert!(
        !during_listing.iter().any(|(_, path)| path.starts_with("secret/data/")),
        "ls/stat read a value: {during_listing:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&cat(&env.m(&format!("bao/secret/{tag}/app/db")))).unwrap();
    assert_eq!(v["password"], "kv-pw-91");
    assert_eq!(cat(&env.m(&format!("bao/secret/{tag}/app/api"))), "kv-token-77");
    let reads: Vec<_> = b
        .requests()
        .into_iter()
        .filter(|(op, p)| op == "read" && p.starts_with(&format!("secret/data/{tag}")))
        .collect();
    assert_eq!(reads.len(), 2, "one read per open: {reads:?}");
    // The initial listing used metadata LISTs only.
    assert!(b.requests().iter().any(|(op, p)| op == "list" && p.starts_with("secret/metadata")));
}

#[test]
fn openbao_database_credentials_are_issued_and_revoked_through_openbao() {
    let b = bao();
    let pg = pg();
    b.database_role("app", "10m");
    let mut env = bao_env(false, &["database"], "1h");
    // The openbao issuer for a DSV document pointing at any dynamic path.
    let docs = json!([
        {"path": "base:bao", "attributes": {"type": "openbao"}, "data": {"address": b.addr, "token": b.token}},
        dynamic("dsv:db", "base:bao", json!({"path": "database/creds/app", "format": "template:{{username}} {{password}}"}))
    ]);
    env.doc("dsv.json", &docs.to_string());
    env.start();
    let v: serde_json::Value = serde_json::from_str(&cat(&env.m("bao/database/creds/app"))).unwrap();
    let (user, pw) = (v["username"].as_str().unwrap().to_string(), v["password"].as_str().unwrap().to_string());
    assert!(pg.psql(&user, &pw, "SELECT 1").status.success(), "log in with OpenBao-issued credentials");
    let lease = env.leases().into_iter().find(|l| l["path"] == "/bao/database/creds/app").unwrap();
    assert!(lease["remaining_seconds"].as_u64().unwrap() > 500, "duration from OpenBao: {lease}");
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), lease["id"].as_str().unwrap()]);
    eventually(Duration::from_secs(5), "OpenBao revoked the lease", || !pg.role_exists(&user));
    assert!(b.requests().iter().any(|(_, p)| p == "sys/leases/revoke"));

    let dsv = cat(&env.m("dsv/db"));
    let (u2, p2) = dsv.split_once(' ').unwrap();
    assert!(pg.psql(u2, p2, "SELECT 1").status.success());
    assert!(env.daemon().stop().success());
    assert!(!pg.role_exists(u2), "revoked at shutdown");
}

#[test]
fn renew_while_open_keeps_an_openbao_lease_alive_past_its_duration() {
    let b = bao();
    b.database_role("short", "3s");
    let mut env = bao_env(false, &[], "1h");
    let docs = json!([
        {"path": "base:bao", "attributes": {"type": "openbao"}, "data": {"address": b.addr, "token": b.token}},
        dynamic("dsv:short", "base:bao", json!({"path": "database/creds/short", "renew_while_open": true, "format": "raw:username"}))
    ]);
    env.doc("dsv.json", &docs.to_string());
    env.start();
    let mut fd = std::fs::File::open(env.m("dsv/short")).unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    let mut s = String::new();
    std::io::Read::read_to_string(&mut fd, &mut s).expect("renewed: still readable past the 3 s lease");
    assert!(s.starts_with("v-"), "{s}");
    assert!(b.requests().iter().any(|(_, p)| p == "sys/leases/renew"), "no renewal reached OpenBao");
    drop(fd);
    // Closed: no more renewals; the lease ends at its expiry.
    eventually(Duration::from_secs(8), "the lease ends once closed", || env.leases().is_empty());
}

#[test]
fn a_createrole_admin_that_is_not_a_superuser_issues_and_revokes() {
    let pg = pg();
    // The admin the docs describe: CREATEROLE and the granted privileges WITH GRANT OPTION only.
    let admin = "lfs_admin_nosuper";
    let admin_pw = "admin-pw-Zq81";
    if !pg.role_exists(admin) {
        pg.admin(&format!("CREATE ROLE {admin} WITH LOGIN CREATEROLE PASSWORD '{admin_pw}'"));
        pg.admin(&format!("GRANT SELECT ON orders TO {admin} WITH GRANT OPTION"));
    }
    assert_eq!(pg.admin(&format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{admin}'")), "f");
    let mut env = Env::new();
    let mut base = pg.base_data();
    base["username"] = admin.into();
    base["password"] = admin_pw.into();
    let docs = json!([
        {"path": "base:db:limited", "attributes": {"type": "postgres"}, "data": base},
        dynamic("dynamic:db:ro", "base:db:limited", json!({
            "ttl": "3s", "format": "json", "grants": ["GRANT SELECT ON orders TO {{name}}"]
        })),
    ]);
    env.doc("db.json", &docs.to_string());
    env.config(json!({}));
    env.start();
    let (user, pw) = cred(&env, "dynamic/db/ro");
    let o = pg.psql(&user, &pw, "SELECT count(*) FROM orders");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let session = hold_session(&user, &pw);
    eventually(Duration::from_secs(10), "the role to be dropped by the non-superuser admin", || !pg.role_exists(&user));
    assert_session_ends(session);
    let metrics = read(&env.m(".leasefs/metrics")).unwrap();
    assert!(!metrics.contains("leasefs_revocation_failures_total{issuer=\"postgres\"}"), "{metrics}\n{}", env.log());
}

#[test]
fn the_credential_process_recipe_lets_the_aws_cli_and_boto3_cache_one_sts_session() {
    let s = sts();
    let mut env = Env::new();
    let base = json!({"access_key_id": s.access_key_id, "secret_access_key": s.secret_access_key, "region": "us-east-1", "endpoint": s.endpoint});
    let docs = json!([
        {"path": "base:aws:api", "attributes": {"type": "aws"}, "data": base},
        // What the docs used to say: every SDK refresh and every CLI command is a new STS session.
        dynamic("dynamic:aws:short", "base:aws:api", json!({"role_arn": s.role_arn, "ttl": "15m", "format": "credential_process"})),
        // The recipe: outlives the SDKs' 15-minute refresh window, and repeated commands by one
        // user share it while it has more than that left.
        dynamic("dynamic:aws:recipe", "base:aws:api", json!({"role_arn": s.role_arn, "ttl": "1h", "reuse": "uid", "min_remaining": "20m", "format": "credential_process"})),
    ]);
    env.doc("aws.json", &docs.to_string());
    let cfg = env.config(json!({}));
    // `check` warns about the short one.
    let o = run(BIN, &["check", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "a warning is not a failure: {err}");
    assert!(err.contains("dynamic/aws/short") && err.contains("refresh"), "{err}");
    assert!(!err.contains("dynamic/aws/recipe"), "{err}");
    env.start();
    let aws_cfg = env.path("aws-config");
    std::fs::write(
        &aws_cfg,
        format!(
            "[profile short]\ncredential_process = cat {}\nregion = us-east-1\n[profile recipe]\ncredential_process = cat {}\nregion = us-east-1\n",
            env.m("dynamic/aws/short").display(),
            env.m("dynamic/aws/recipe").display()
        ),
    )
    .unwrap();
    let issued = |path: &str| -> usize {
        std::fs::read_to_string(env.path("audit.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event\":\"issue\"") && l.contains(&format!("\"path\":\"/{path}\"")))
            .count()
    };
    let mut figures = Vec::new();
    for profile in ["short", "recipe"] {
        for _ in 0..3 {
            let o = std::process::Command::new(common::backends::venv_bin("aws"))
                .args(["--profile", profile, "--endpoint-url", &s.endpoint, "sts", "get-caller-identity"])
                .env("AWS_CONFIG_FILE", &aws_cfg)
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let cli = issued(&format!("dynamic/aws/{profile}"));
        let script = r#"
import boto3, os
c = boto3.Session(profile_name=os.environ["P"]).client("sts", endpoint_url=os.environ["EP"])
for _ in range(5):
    c.get_caller_identity()
"#;
        let o = python(
            script,
            &[
                ("P", profile),
                ("EP", &s.endpoint),
                ("AWS_CONFIG_FILE", aws_cfg.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let sdk = issued(&format!("dynamic/aws/{profile}")) - cli;
        figures.push((profile, cli, sdk));
    }
    eprintln!("STS sessions issued (3 AWS CLI commands; one boto3 client making 5 calls): {figures:?}");
    let (_, short_cli, short_sdk) = figures[0];
    let (_, recipe_cli, recipe_sdk) = figures[1];
    assert!(
        short_cli >= 3 && short_sdk >= 5,
        "the 15-minute entry re-issues on every command and refresh: {figures:?}"
    );
    assert_eq!((recipe_cli, recipe_sdk), (1, 0), "the recipe: one STS session for all of it: {figures:?}");
}
