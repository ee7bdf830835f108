//! Recipes run as the docs write them: each test reads its blocks from docs/*.md through their
//! `<!-- recipe: … -->` markers (placeholders such as `db.internal:5432` and `'...'` are the only
//! things replaced), and every marker in the docs names a test that exists.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use common::backends::{Bao, bao, pg, python, sts};
use common::recipes::{recipe, recipes_in};
use common::*;
use serde_json::{Value, json};

const ADMIN_PW: &str = "recipe-admin-Pw-81c";

/// `psql` as `user` on the test server's database `db`.
fn psql(db: &str, user: &str, password: &str, sql: &str) -> Output {
    pg().psql_db(db, user, password, sql)
}

fn must(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The database the recipes talk about: `app`, with `orders (id serial PRIMARY KEY, item text)`
/// and a schema `reporting` (created once per test binary).
fn app_db() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let pg = pg();
        must(psql("postgres", "postgres", &pg.password, "CREATE DATABASE app"), "create database");
        let schema = "CREATE TABLE orders (id serial PRIMARY KEY, item text); CREATE SCHEMA reporting";
        must(psql("app", "postgres", &pg.password, schema), "schema");
    });
}

#[test]
fn the_postgres_recipe_lets_the_credential_insert_into_a_serial_table() {
    let pg = pg();
    app_db();
    // The admin, as docs/issuers.md sets it up.
    let admin_sql = recipe("docs/issuers.md", "postgres-admin").replace("'...'", &format!("'{ADMIN_PW}'"));
    must(psql("app", "postgres", &pg.password, &admin_sql), "the admin recipe");
    // The entry as written; only the base secret's address and password are this server's.
    let mut docs: Value = serde_json::from_str(&recipe("docs/issuers.md", "postgres-entry")).unwrap();
    let data = &mut docs[0]["data"];
    assert_eq!((data["host"].as_str(), data["password"].as_str()), (Some("db.internal"), Some("...")));
    data["host"] = "127.0.0.1".into();
    data["port"] = pg.port.into();
    data["password"] = ADMIN_PW.into();
    let mut env = Env::new();
    env.doc("db.json", &docs.to_string());
    env.config(json!({}));
    env.start();

    let url = cat(&env.m("dynamic/db/app"));
    assert!(url.starts_with("postgres://lfs_"), "the recipe's template");
    let o = Command::new("psql")
        .args([
            url.trim(),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            "INSERT INTO orders (item) VALUES ('tea') RETURNING id",
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    let id = must(o, "INSERT into the serial table with the recipe's grants");
    assert!(id.parse::<i64>().is_ok(), "{id}");
    let o = Command::new("psql").args([url.trim(), "-tAc", "SELECT count(*) FROM orders"]).output().unwrap();
    assert!(must(o, "SELECT").parse::<i64>().unwrap() >= 1);
}

#[test]
fn the_openbao_database_recipe_issues_and_revokes_with_its_grants() {
    let pg = pg();
    let b = bao();
    app_db();
    let script = recipe("docs/issuers.md", "openbao-database");
    for placeholder in ["db.internal:5432", "username=vault_admin", "password='...'"] {
        assert!(script.contains(placeholder), "the recipe's placeholder {placeholder}");
    }
    let script = script
        .replace("db.internal:5432", &format!("127.0.0.1:{}", pg.port))
        .replace("username=vault_admin", "username=postgres")
        .replace("password='...'", &format!("password='{}'", pg.password));
    let env = Env::new();
    let bin = env.path("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(Bao::bin(), bin.join("bao")).unwrap();
    let o = Command::new("sh")
        .args(["-ec", &script])
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .env("BAO_ADDR", &b.addr)
        .env("BAO_TOKEN", &b.token)
        .env("HOME", env.path(""))
        .output()
        .unwrap();
    must(o, "the recipe, run by sh with the bao CLI");

    let mut env = env;
    let token = env.path("bao-token");
    std::fs::write(&token, &b.token).unwrap();
    env.config(json!({"sources": [
        {"type": "local", "prefix": "/", "path": env.docs()},
        {"type": "openbao", "prefix": "/bao", "address": b.addr, "token_file": token, "dynamic_mounts": ["database"]}
    ]}));
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.start();
    let v: Value = serde_json::from_str(&cat(&env.m("bao/database/creds/app"))).unwrap();
    let (user, pw) = (v["username"].as_str().unwrap().to_string(), v["password"].as_str().unwrap().to_string());
    must(psql("app", &user, &pw, "INSERT INTO orders (item) VALUES ('bao') RETURNING id"), "the recipe's grants");

    let lease = env.leases().into_iter().find(|l| l["path"] == "/bao/database/creds/app").unwrap();
    ok(BIN, &["revoke", env.mnt().to_str().unwrap(), lease["id"].as_str().unwrap()]);
    eventually(Duration::from_secs(10), "the role gone from pg_roles", || !pg.role_exists(&user));
    let o = psql("app", &user, &pw, "SELECT 1");
    assert!(!o.status.success(), "the revoked password still logs in");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn the_aws_profile_recipe_works_for_the_aws_cli_and_boto3() {
    let s = sts();
    let mut env = Env::new();
    // The entry as written, on the test server's role; the base secret is the test server's.
    let mut entry: Value = serde_json::from_str(&recipe("docs/integrations.md", "aws-entry")).unwrap();
    entry["attributes"]["role_arn"] = s.role_arn.clone().into();
    let base = json!({"path": "base:aws:api", "attributes": {"type": "aws"},
        "data": {"access_key_id": s.access_key_id, "secret_access_key": s.secret_access_key, "endpoint": s.endpoint}});
    env.doc("aws.json", &json!([base, entry]).to_string());
    env.config(json!({}));
    env.start();
    let profile = recipe("docs/integrations.md", "aws-profile");
    assert!(profile.contains("cat /secrets/dynamic/aws/temp-api"), "{profile}");
    let cfg = env.path("aws-config");
    std::fs::write(&cfg, profile.replace("/secrets/", &format!("{}/", env.mnt().display()))).unwrap();

    // The AWS CLI, with nothing but the profile: no region in the environment.
    let o = Command::new(common::backends::venv_bin("aws"))
        .args(["--profile", "app", "--endpoint-url", &s.endpoint, "sts", "get-caller-identity", "--output", "json"])
        .env("AWS_CONFIG_FILE", &cfg)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let out = must(o, "aws --profile app sts get-caller-identity");
    assert!(out.contains("assumed-role/app/"), "{out}");
    // boto3 reads the same profile.
    let script = r#"
import boto3, os
s = boto3.Session(profile_name="app")
print(s.region_name, s.client("sts", endpoint_url=os.environ["EP"]).get_caller_identity()["Arn"])
"#;
    let o = python(
        script,
        &[
            ("EP", &s.endpoint),
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ],
    );
    let out = must(o, "boto3 with the profile");
    assert!(out.starts_with("us-east-1 ") && out.contains("assumed-role/app/"), "{out}");
}

#[test]
fn every_recipe_marker_names_a_test_that_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    docs.push("README.md".into());
    docs.sort();
    let mut seen = 0;
    for doc in &docs {
        for (name, test) in recipes_in(doc) {
            seen += 1;
            let (file, func) = test
                .split_once("::")
                .unwrap_or_else(|| panic!("{doc}: recipe {name}: {test:?} is not tests/FILE.rs::TEST"));
            assert!(file.starts_with("tests/") && file.ends_with(".rs"), "{doc}: recipe {name}: {file}");
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("{doc}: recipe {name} names {file}: {e}"));
            assert!(text.contains(&format!("fn {func}(")), "{doc}: recipe {name}: {file} has no test {func}");
            // The test must read this recipe from this doc, and the block must be there.
            assert!(text.contains(&format!("\"{name}\"")), "{doc}: recipe {name}: {file} never reads it");
            recipe(doc, &name);
        }
    }
    assert!(seen >= 5, "only {seen} recipe markers in {docs:?}: the docs' tested recipes carry markers");
}
