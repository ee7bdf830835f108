//! Configuration file: sources, defaults (`defaults.rs`), state and audit paths; parsed with
//! serde_json, every error at its line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::defaults::{Defaults, Reuse};
use crate::diag::FileError;

/// Owner, group and mode applied to a source's entries unless a document says otherwise.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ownership {
    pub owner: Option<serde_json::Value>,
    pub group: Option<serde_json::Value>,
    pub mode: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Local,
    Openbao,
}

/// One entry of `sources`. A flat struct rather than a tagged enum, so that serde reports errors at
/// their exact line and column; `validate` checks the keys each kind needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    #[serde(default = "root_prefix")]
    pub prefix: String,
    /// `local`: the directory of documents.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `openbao`: the server address.
    #[serde(default)]
    pub address: Option<String>,
    /// `openbao`: several nodes of one cluster, tried in turn.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `openbao`: CA certificates (PEM) to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `openbao`: the name the nodes' certificates are checked against (addresses are IPs).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// `openbao`: a file holding the token (the same as `"auth": {"method": "token", …}`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `openbao`: how leasefs logs in (`token`, `approle`).
    #[serde(default)]
    pub auth: Option<crate::openbao_auth::AuthConfig>,
    #[serde(default)]
    pub kv_mounts: Vec<String>,
    #[serde(default)]
    pub dynamic_mounts: Vec<String>,
    #[serde(default)]
    pub owner: Option<serde_json::Value>,
    #[serde(default)]
    pub group: Option<serde_json::Value>,
    #[serde(default)]
    pub mode: Option<String>,
    /// Whether static secrets may be served through the kernel page cache (exact sizes in `stat`,
    /// contents kept across opens until a reload or a changed payload drops them). Default: on for
    /// `local` (the documents sit in the page cache already), off for remote sources.
    #[serde(default)]
    pub static_page_cache: Option<bool>,
}

fn root_prefix() -> String {
    "/".into()
}

impl SourceConfig {
    pub fn local(path: PathBuf) -> Self {
        SourceConfig {
            kind: SourceKind::Local,
            prefix: root_prefix(),
            path: Some(path),
            address: None,
            addresses: Vec::new(),
            ca_file: None,
            tls_server_name: None,
            token_file: None,
            auth: None,
            kv_mounts: Vec::new(),
            dynamic_mounts: Vec::new(),
            owner: None,
            group: None,
            mode: None,
            static_page_cache: None,
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The nodes of an `openbao` source: `address` first, then `addresses`.
    pub fn endpoints(&self) -> crate::openbao::Endpoints {
        let mut addresses: Vec<String> = self.address.iter().cloned().collect();
        addresses.extend(self.addresses.iter().filter(|a| Some(*a) != self.address.as_ref()).cloned());
        crate::openbao::Endpoints {
            addresses: addresses.into_iter().map(|a| a.trim_end_matches('/').to_string()).collect(),
            ca_file: self.ca_file.clone(),
            tls_server_name: self.tls_server_name.clone(),
            client_cert: None,
        }
    }

    /// `static_page_cache` as set, or the default for the source's kind.
    pub fn page_cache(&self) -> bool {
        self.static_page_cache.unwrap_or(self.kind == SourceKind::Local)
    }

    pub fn ownership(&self) -> Ownership {
        Ownership { owner: self.owner.clone(), group: self.group.clone(), mode: self.mode.clone() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    #[serde(default)]
    pub allow_other: bool,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/leasefs")
}

impl Config {
    pub fn parse(file: &Path, text: &str) -> Result<Config, FileError> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| FileError::from_json(file, &e))?;
        cfg.validate(file, text)?;
        Ok(cfg)
    }

    pub fn load(file: &Path) -> Result<Config, FileError> {
        let text = std::fs::read_to_string(file).map_err(|e| FileError::whole(file, e.to_string()))?;
        Config::parse(file, &text)
    }

    fn validate(&self, file: &Path, text: &str) -> Result<(), FileError> {
        use crate::attrs::Step::{Index, Key};
        // An error at the key `path` names (the whole file if it is not written there).
        let at = |path: &[crate::attrs::Step<'_>], msg: String| match crate::attrs::locate(text, path) {
            Some(offset) => {
                let (line, column) = crate::diag::line_col(text, offset);
                FileError { file: file.to_path_buf(), line, column, message: msg }
            }
            None => FileError::whole(file, msg),
        };
        if self.sources.is_empty() {
            return Err(at(&[Key("sources")], "\"sources\" must list at least one source".into()));
        }
        let d = &self.defaults;
        for (key, v) in [("ttl", d.ttl), ("max_ttl", d.max_ttl)] {
            crate::policy::lease_length(&format!("defaults.{key}"), v.0)
                .map_err(|m| at(&[Key("defaults"), Key(key)], m))?;
        }
        if d.ttl > d.max_ttl {
            return Err(at(&[Key("defaults"), Key("ttl")], "defaults.ttl is longer than defaults.max_ttl".into()));
        }
        // A min_remaining as long as the lease means no lease is ever reused: refused where it is
        // written, or where the defaults share leases (`reuse`) and so rely on it.
        let written = crate::attrs::locate(text, &[Key("defaults"), Key("min_remaining")]).is_some();
        if d.min_remaining >= d.ttl && (written || d.reuse != Reuse::None) {
            let msg = "defaults.min_remaining must be shorter than defaults.ttl: no lease would ever be reused";
            let key = if written { "min_remaining" } else { "ttl" };
            return Err(at(&[Key("defaults"), Key(key)], msg.into()));
        }
        if d.issue_timeout.0.is_zero() {
            let msg = "defaults.issue_timeout must be above zero".into();
            return Err(at(&[Key("defaults"), Key("issue_timeout")], msg));
        }
        if crate::policy::share_milli(d.per_uid_share).is_none() {
            let msg = "defaults.per_uid_share must be a fraction above 0 and at most 1 (e.g. 0.5)".into();
            return Err(at(&[Key("defaults"), Key("per_uid_share")], msg));
        }
        if d.max_response_bytes == 0 {
            let msg = "defaults.max_response_bytes must be above zero".into();
            return Err(at(&[Key("defaults"), Key("max_response_bytes")], msg));
        }
        for (i, s) in self.sources.iter().enumerate() {
            let here = |key: &'static str, msg: String| at(&[Key("sources"), Index(i), Key(key)], msg);
            let need = |ok: bool, key: &str| {
                if ok {
                    Ok(())
                } else {
                    let msg = format!("sources[{i}] ({:?}) needs \"{key}\"", s.kind);
                    Err(at(&[Key("sources"), Index(i)], msg))
                }
            };
            match s.kind {
                SourceKind::Local => need(s.path.is_some(), "path")?,
                SourceKind::Openbao => {
                    if s.static_page_cache == Some(true) {
                        return Err(here(
                            "static_page_cache",
                            format!(
                                "sources[{i}]: static_page_cache needs exact sizes at listing, which only a local source has"
                            ),
                        ));
                    }
                    need(s.address.is_some() || !s.addresses.is_empty(), "address")?;
                    need(s.token_file.is_some() || s.auth.is_some(), "token_file\" or \"auth")?;
                }
            }
            let p = s.prefix();
            if !p.starts_with('/') {
                return Err(here("prefix", format!("source prefix {p:?} must start with '/'")));
            }
            crate::paths::split_path(p.trim_start_matches('/'), true)
                .map_err(|e| here("prefix", format!("source prefix {p:?}: {e}")))?;
            if let Some(m) = s.ownership().mode {
                crate::paths::parse_mode(&m).map_err(|e| here("mode", format!("source mode {m:?}: {e}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::Dur;

    #[test]
    fn lease_lengths_and_min_remaining_are_checked_where_written() {
        let cfg = |defaults: &str| {
            let text =
                format!("{{\"sources\": [{{\"type\": \"local\", \"path\": \"/x\"}}],\n \"defaults\": {defaults}}}");
            Config::parse(Path::new("c.json"), &text)
        };
        for (d, needle) in [
            (r#"{"ttl": "0s"}"#, "defaults.ttl must be above zero"),
            (r#"{"ttl": 0}"#, "defaults.ttl must be above zero"),
            (r#"{"max_ttl": "400d", "ttl": "1h"}"#, "defaults.max_ttl is longer than leasefs can honour"),
            (r#"{"ttl": "999999999999d"}"#, "too long"),
            (r#"{"ttl": "5m", "min_remaining": "5m"}"#, "defaults.min_remaining must be shorter"),
            (r#"{"ttl": "20s", "reuse": "uid"}"#, "defaults.min_remaining must be shorter"),
            (r#"{"per_uid_share": 0}"#, "defaults.per_uid_share must be a fraction"),
        ] {
            let e = cfg(d).unwrap_err();
            assert!(e.message.contains(needle) && e.line == 2, "{d}: {e}");
        }
        // Numbers are seconds; a default min_remaining no lease shares is not in the way.
        let c = cfg(r#"{"ttl": 90, "max_ttl": 3600, "cache_ttl": 5}"#).unwrap();
        assert_eq!(c.defaults.ttl, Dur::secs(90));
        assert!(cfg(r#"{"ttl": "20s", "max_ttl": "30s"}"#).is_ok());
    }

    #[test]
    fn config_errors_name_line_and_column() {
        let text = "{\n  \"sources\": [\n    {\"type\": \"local\", \"path\": 7}\n  ]\n}";
        let e = Config::parse(Path::new("c.json"), text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("c.json:3:"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = r#"{"sources": [{"type": "local", "path": "/x"}], "defualts": {}}"#;
        let e = Config::parse(Path::new("c.json"), text).unwrap_err();
        assert!(e.message.contains("defualts") && e.message.contains("did you mean `defaults`"), "{e}");
        assert!(e.line == 1 && e.column > 0, "{e}");
        let text = r#"{"sources": [{"type": "local", "path": "/x", "pth": 1}]}"#;
        assert!(Config::parse(Path::new("c.json"), text).is_err());
    }

    #[test]
    fn full_example_parses() {
        let text = r#"{
          "sources": [
            {"type": "local", "prefix": "/", "path": "/etc/leasefs/secrets"},
            {"type": "openbao", "prefix": "/bao", "address": "http://127.0.0.1:8200",
             "token_file": "/etc/leasefs/bao-token", "kv_mounts": ["secret"],
             "dynamic_mounts": ["database"]}
          ],
          "defaults": {"ttl": "15m", "max_ttl": "1h", "cache_ttl": "30s",
                       "max_stale": "10m", "issue_timeout": "10s", "reuse": "none",
                       "min_remaining": "30s", "refresh": "60s",
                       "revoke_on_shutdown": true},
          "state_dir": "/var/lib/leasefs",
          "audit_log": "/var/log/leasefs/audit.jsonl",
          "allow_other": true
        }"#;
        let c = Config::parse(Path::new("c.json"), text).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.defaults.ttl, Dur::secs(900));
        assert!(c.allow_other);
        // The page cache for static secrets: on for local, off for OpenBao, where it cannot be on.
        assert!(c.sources[0].page_cache() && !c.sources[1].page_cache());
        let on = text.replace(r#""kv_mounts""#, r#""static_page_cache": true, "kv_mounts""#);
        let e = Config::parse(Path::new("c.json"), &on).unwrap_err();
        assert!(e.message.contains("static_page_cache needs exact sizes"), "{e}");
    }
}
