//! `leasefs demo`: an embedded sample catalog written to a private temp dir, mounted with no setup.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::{Config, Defaults, Dur, SourceConfig};

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

/// Writes the catalog into `dir` (mode 0700, files 0600) and returns a config that serves it.
pub fn write_catalog(dir: &Path) -> std::io::Result<Config> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let docs = dir.join("secrets");
    std::fs::create_dir_all(&docs)?;
    std::fs::set_permissions(&docs, std::fs::Permissions::from_mode(0o700))?;
    for (name, text) in CATALOG {
        let p = docs.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(Config {
        sources: vec![SourceConfig::local(docs)],
        defaults: Defaults { refresh: Dur::secs(5), cache_ttl: Dur::secs(5), ..Defaults::default() },
        state_dir: dir.join("state"),
        audit_log: Some(dir.join("audit.jsonl")),
        allow_other: false,
    })
}

/// The commands printed once the demo is mounted.
pub fn banner(mnt: &Path, dir: &Path) -> String {
    let m = mnt.display();
    format!(
        "leasefs demo is mounted at {m}. Try, in another terminal:\n\
         \n  ls -lR {m}\n  cat {m}/app/db/password\n  cat {m}/app/db/connection\n  cat {m}/app/api/env\n\
         \x20 getfattr -d {m}/app/db/password\n  tail -f {audit}\n\
         \nPress Ctrl-C to unmount.",
        audit = dir.join("audit.jsonl").display()
    )
}
