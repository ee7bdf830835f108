//! `leasefs demo`: an embedded sample catalog written to a private temp dir, mounted with no setup.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::{Config, SourceConfig};

use crate::defaults::{Defaults, Dur};

/// The demo's documents: (file name, JSON).
pub const CATALOG: &[(&str, &str)] = &[(
    "app.json",
    r#"[
  {"id": "demo-0001", "path": "app:db:password", "description": "a static secret served raw",
   "data": {"value": "correct-horse-battery-staple"}},
  {"id": "demo-0002", "path": "app:db:connection", "description": "a static secret with several fields",
   "attributes": {"format": "template:postgres://{{username}}:{{password}}@{{host}}:{{port}}/app\n"},
   "data": {"username": "app", "password": "s3cr3t-demo", "host": "db.internal", "port": 5432}},
  {"id": "demo-0003", "path": "app:api:env", "description": "an env file for a legacy app",
   "attributes": {"format": "env", "mode": "0440"},
   "data": {"api_url": "https://api.example.com", "api_key": "demo-api-key-123"}}
]
"#,
)];

/// The demo's exec issuer: prints a RoyalJSONDynamicCredential; with `revoke`, records the revocation.
const SCRIPT: &str = r#"#!/bin/sh
# leasefs demo issuer. The request arrives as JSON on stdin; tokens in LEASEFS_* variables.
here=$(dirname "$0")
if [ "$1" = revoke ]; then
  cat >> "$here/revoked.jsonl"; echo >> "$here/revoked.jsonl"; exit 0
fi
cat > /dev/null
pw=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '{"Username": "demo-%s", "Password": "%s", "LeaseId": "%s"}\n' "$LEASEFS_UID" "$pw" "$LEASEFS_LEASE_ID"
"#;

fn write_private(p: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    std::fs::write(p, text)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Writes the catalog into `dir` (mode 0700, files 0600) and returns a config that serves it.
pub fn write_catalog(dir: &Path) -> std::io::Result<Config> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let docs = dir.join("secrets");
    std::fs::create_dir_all(&docs)?;
    std::fs::set_permissions(&docs, std::fs::Permissions::from_mode(0o700))?;
    for (name, text) in CATALOG {
        write_private(&docs.join(name), text, 0o600)?;
    }
    let script = dir.join("issuer.sh");
    write_private(&script, SCRIPT, 0o700)?;
    let dynamic = serde_json::json!([
        {"id": "demo-base-jwt", "path": "base:jwt:demo",
         "attributes": {"type": "jwt"},
         "data": {"algorithm": "EdDSA", "issuer": "leasefs-demo",
                  "private_key": crate::issuer::jwt::generate_ed25519_pem()}},
        {"id": "demo-token", "path": "dynamic:token",
         "description": "a signed session token, fresh on every open, valid 30 seconds",
         "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:jwt:demo"},
                        "ttl": "30s", "audience": "demo-api", "format": "json"}},
        {"id": "demo-base-exec", "path": "base:exec:demo",
         "attributes": {"type": "exec"},
         "data": {"command": [script], "revoke_command": [script, "revoke"]}},
        {"id": "demo-db-user", "path": "dynamic:db-user",
         "description": "a credential minted by a script, revoked by it after 20 seconds",
         "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:exec:demo"},
                        "ttl": "20s", "format": "env"}}
    ]);
    write_private(&docs.join("dynamic.json"), &serde_json::to_string_pretty(&dynamic).unwrap_or_default(), 0o600)?;
    let royal = serde_json::json!({"linkedSecret": "base:exec:demo", "Objects": [
        {"Type": "DynamicCredential", "Name": "Ops admin", "ID": "Cred01", "Path": "royal"}
    ]});
    write_private(&docs.join("royal.json"), &serde_json::to_string_pretty(&royal).unwrap_or_default(), 0o600)?;
    Ok(Config {
        sources: vec![SourceConfig::local(docs)],
        defaults: Defaults { refresh: Dur::secs(5), cache_ttl: Dur::secs(5), ..Defaults::default() },
        state_dir: dir.join("state"),
        audit_log: Some(dir.join("audit.jsonl")),
        allow_other: false,
    })
}

/// How the user can run this binary from where they stand: `leasefs` when that name on `PATH`
/// is this very binary, else its full path (e.g. `target/release/leasefs` after `cargo run`).
pub fn command_name() -> String {
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("leasefs"))
            .find(|c| c.is_file())
            .and_then(|c| std::fs::canonicalize(c).ok())
    });
    match (me, on_path) {
        (Some(me), Some(found)) if me == found => "leasefs".into(),
        (Some(me), _) => shell_quote(&me.to_string_lossy()),
        (None, _) => "leasefs".into(),
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The commands printed once the demo is mounted; each works as printed from the directory the
/// demo was started in.
pub fn banner(mnt: &Path, dir: &Path) -> String {
    let m = shell_quote(&mnt.to_string_lossy());
    let leasefs = command_name();
    format!(
        "leasefs demo is mounted at {m}. Try, in another terminal:\n\
         \n  ls -lR {m}                       # listing issues nothing\n\
         \x20 cat {m}/app/db/password           # a static secret\n\
         \x20 cat {m}/app/db/connection\n\
         \x20 cat {m}/dynamic/token; cat {m}/dynamic/token   # two opens, two fresh tokens\n\
         \x20 cat {m}/dynamic/db-user           # minted by a script (env format)\n\
         \x20 cat {m}/royal/'Ops admin'         # a Royal TS DynamicCredential\n\
         \x20 getfattr -d {m}/dynamic/token\n\
         \x20 {leasefs} leases {m}                # live leases (metadata only)\n\
         \x20 exec 3< {m}/dynamic/token; sleep 31; cat <&3   # expired: \"Key has expired\"\n\
         \x20 cat {dir}/revoked.jsonl           # what the script was asked to revoke\n\
         \x20 tail -f {audit}\n\
         \nPress Ctrl-C to unmount (live leases are revoked first).",
        dir = dir.display(),
        audit = dir.join("audit.jsonl").display()
    )
}
