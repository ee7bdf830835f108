//! An entry's policy, typed once when its document is parsed: issuer kinds, format, ttl, reuse and
//! the other lease settings. Nothing on the open path parses settings again.

use std::path::Path;
use std::sync::Arc;

pub use crate::rotation::{RotateBy, Rotation};
use std::time::Duration;

use crate::defaults::{Defaults, Reuse, parse_duration};
use crate::render::Format;

/// The issuer kinds a base secret may name in `attributes.type`: the one list of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerKind {
    Exec,
    Jwt,
    Postgres,
    Aws,
    Openbao,
    Azure,
}

impl IssuerKind {
    pub const ALL: [IssuerKind; 6] = [
        IssuerKind::Exec,
        IssuerKind::Jwt,
        IssuerKind::Postgres,
        IssuerKind::Aws,
        IssuerKind::Openbao,
        IssuerKind::Azure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Exec => "exec",
            IssuerKind::Jwt => "jwt",
            IssuerKind::Postgres => "postgres",
            IssuerKind::Aws => "aws",
            IssuerKind::Openbao => "openbao",
            IssuerKind::Azure => "azure",
        }
    }

    pub fn parse(s: &str) -> Option<IssuerKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The names, for error messages.
    pub fn names() -> String {
        Self::ALL.map(IssuerKind::as_str).join(", ")
    }
}

/// Written by its name (`"exec"`), in the audit log and the journal.
impl serde::Serialize for IssuerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for IssuerKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        IssuerKind::parse(&name).ok_or_else(|| serde::de::Error::custom("an issuer kind this build does not know"))
    }
}

impl std::fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a document sets for its entry; unset values fall back to the configuration's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub format: Option<Format>,
    pub ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    pub reuse: Option<Reuse>,
    pub min_remaining: Option<Duration>,
    pub revoke_on_close: Option<bool>,
    pub renew_while_open: Option<bool>,
    pub max_concurrent_issuances: Option<u32>,
    pub max_issues_per_minute: Option<u32>,
    /// The share of those bounds one uid may hold while others use the entry, in thousandths.
    pub per_uid_share: Option<u32>,
    /// A bundle (`attributes.files`): file name → format, in name order. One lease per binding.
    pub files: Option<Vec<(Box<str>, Format)>>,
    /// Sent to the processes that opened a lease before it expires (`rotate_signal`).
    pub rotate_signal: Option<i32>,
    /// When, in thousandths of the lease (`rotate_at` 0.66 → 660; default 2/3).
    pub rotate_at: Option<u32>,
    /// A daemon's pid file: its pid gets `rotate_signal` too (read at rotation time).
    pub rotate_pid_file: Option<Arc<Path>>,
    /// Run at rotation instead of signalling (argv, no shell), like an exec script.
    pub rotate_command: Option<Arc<[String]>>,
}

/// A signal by name (`"SIGHUP"`, `"HUP"`, `"USR1"`, …) for `rotate_signal`.
pub fn signal_named(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// A `per_uid_share` (above 0, at most 1) in thousandths, at least 1.
pub fn share_milli(f: f64) -> Option<u32> {
    (f > 0.0 && f <= 1.0).then(|| ((f * 1000.0).round() as u32).max(1))
}

/// The longest `ttl` or `max_ttl` leasefs takes: one year. Issuers turn the lease into an expiry
/// (a JWT's `exp`, a role's `VALID UNTIL`); beyond this a mistake is likelier than intent.
pub const MAX_LEASE: Duration = Duration::from_secs(365 * 86400);

/// The attribute keys a policy reads.
pub const KEYS: [&str; 16] = [
    "rotate_signal",
    "rotate_at",
    "rotate_pid_file",
    "rotate_command",
    "files",
    "bind",
    "format",
    "ttl",
    "max_ttl",
    "reuse",
    "min_remaining",
    "revoke_on_close",
    "renew_while_open",
    "max_concurrent_issuances",
    "max_issues_per_minute",
    "per_uid_share",
];

/// Why an entry's attributes were refused: the key (for its position in the document) and what is
/// wrong, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for AttrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl AttrError {
    pub fn new(key: &str, message: impl Into<String>) -> AttrError {
        AttrError { key: key.to_string(), message: message.into() }
    }
}

/// A duration attribute: a string (`"90s"`, `"15m"`) or a whole number of seconds.
pub fn duration_value(key: &str, v: &serde_json::Value) -> Result<Duration, AttrError> {
    let d = match v {
        serde_json::Value::String(s) => parse_duration(s),
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| "not a whole number of seconds".to_string())
            .and_then(|n| parse_duration(&n.to_string())),
        _ => Err("must be a duration string (\"90s\", \"15m\") or a number of seconds".into()),
    };
    d.map_err(|e| AttrError::new(key, format!("attributes.{key}: {e}")))
}

/// Checks a lease length (`ttl`, `max_ttl`): above zero and at most `MAX_LEASE`.
pub fn lease_length(what: &str, d: Duration) -> Result<(), String> {
    if d.is_zero() {
        return Err(format!("{what} must be above zero (a lease of 0 s expires before it is read)"));
    }
    if d > MAX_LEASE {
        return Err(format!("{what} is longer than leasefs can honour (at most {} days)", MAX_LEASE.as_secs() / 86400));
    }
    Ok(())
}

impl Policy {
    /// Parses the policy keys of a document's `attributes`; an error names the key, never a value.
    pub fn parse(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<Policy, AttrError> {
        let mut p = Policy::default();
        let dur = |key: &str| -> Result<Option<Duration>, AttrError> {
            attrs.get(key).map(|v| duration_value(key, v)).transpose()
        };
        let err = |key: &str, m: &str| AttrError::new(key, m);
        p.ttl = dur("ttl")?;
        p.max_ttl = dur("max_ttl")?;
        p.min_remaining = dur("min_remaining")?;
        if let Some(v) = attrs.get("reuse") {
            let r = v.as_str().and_then(Reuse::parse);
            p.reuse = Some(r.ok_or_else(|| {
                err(
                    "reuse",
                    "attributes.reuse must be \"none\", \"uid\", \"pid\", \"session\", \"workload\" or \"cgroup\"",
                )
            })?);
        }
        if let Some(v) = attrs.get("files") {
            let map = v.as_object().ok_or_else(|| err("files", "attributes.files must map file names to formats"))?;
            if map.is_empty() || map.len() > 64 {
                return Err(err("files", "attributes.files must name 1 to 64 files"));
            }
            let mut files = Vec::new();
            for (name, f) in map {
                let ok = crate::paths::split_path(name, false).is_ok_and(|s| s.len() == 1) && !name.contains(':');
                if !ok {
                    return Err(err("files", &format!("attributes.files: {name:?} is not a file name")));
                }
                let f = f
                    .as_str()
                    .ok_or_else(|| err("files", &format!("attributes.files.{name} must be a format string")))?;
                files.push((
                    name.as_str().into(),
                    Format::parse(f).map_err(|e| err("files", &format!("attributes.files.{name}: {e}")))?,
                ));
            }
            p.files = Some(files);
            // The files of a bundle share one lease per binding: the reader's session by default.
            let bind = match attrs.get("bind") {
                None => Reuse::Session,
                Some(v) => v.as_str().and_then(Reuse::parse).ok_or_else(|| {
                    err(
                        "bind",
                        "attributes.bind must be \"session\", \"pid\", \"uid\", \"workload\", \"cgroup\" or \"none\"",
                    )
                })?,
            };
            p.reuse = Some(bind);
        }
        if let Some(v) = attrs.get("format") {
            let s = v.as_str().ok_or_else(|| err("format", "attributes.format must be a string"))?;
            p.format = Some(Format::parse(s).map_err(|e| err("format", &format!("attributes.format: {e}")))?);
        }
        let flag = |key: &str| -> Result<Option<bool>, AttrError> {
            attrs
                .get(key)
                .map(|v| v.as_bool().ok_or_else(|| err(key, &format!("attributes.{key} must be true or false"))))
                .transpose()
        };
        p.revoke_on_close = flag("revoke_on_close")?;
        p.renew_while_open = flag("renew_while_open")?;
        let count = |key: &str| -> Result<Option<u32>, AttrError> {
            attrs
                .get(key)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| err(key, &format!("attributes.{key} must be a whole number (0: no bound)")))
                })
                .transpose()
        };
        if let Some(v) = attrs.get("rotate_signal") {
            let sig = v.as_str().and_then(signal_named);
            p.rotate_signal = Some(sig.ok_or_else(|| err("rotate_signal", "attributes.rotate_signal must name a signal: SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGQUIT, SIGWINCH"))?);
        }
        if let Some(v) = attrs.get("rotate_at") {
            let f = v.as_f64().filter(|f| *f > 0.0 && *f < 1.0);
            let f = f.ok_or_else(|| {
                err("rotate_at", "attributes.rotate_at must be a fraction of the lease between 0 and 1 (e.g. 0.66)")
            })?;
            p.rotate_at = Some((f * 1000.0).round() as u32);
        }
        (p.rotate_pid_file, p.rotate_command) = crate::rotation::parse(attrs, p.rotate_signal.is_some())
            .map_err(|(key, message)| AttrError::new(key, message))?;
        p.max_concurrent_issuances = count("max_concurrent_issuances")?;
        p.max_issues_per_minute = count("max_issues_per_minute")?;
        if let Some(v) = attrs.get("per_uid_share") {
            let f = v.as_f64().and_then(share_milli);
            let msg = "attributes.per_uid_share must be a fraction above 0 and at most 1 (e.g. 0.5)";
            p.per_uid_share = Some(f.ok_or_else(|| err("per_uid_share", msg))?);
        }
        p.check_lengths()?;
        Ok(p)
    }

    /// The lease lengths the entry sets, each on its own and against each other: `ttl` and
    /// `max_ttl` above zero and at most `MAX_LEASE`; an entry's own `min_remaining` shorter than
    /// its own `ttl` and `max_ttl` (otherwise no lease of it is ever reused).
    fn check_lengths(&self) -> Result<(), AttrError> {
        for (key, d) in [("ttl", self.ttl), ("max_ttl", self.max_ttl)] {
            if let Some(d) = d {
                lease_length(&format!("attributes.{key}"), d).map_err(|m| AttrError::new(key, m))?;
            }
        }
        if let Some(min) = self.min_remaining {
            for (key, d) in [("ttl", self.ttl), ("max_ttl", self.max_ttl)] {
                if d.is_some_and(|d| min >= d) {
                    return Err(AttrError::new(
                        "min_remaining",
                        format!(
                            "attributes.min_remaining must be shorter than attributes.{key}: no lease would ever be reused"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Why no lease of this entry could ever be reused under `d`: its `min_remaining` (its own or
    /// the default) is not shorter than its `ttl` (its own or the default, capped at `max_ttl`).
    /// Only where it matters: the entry shares leases (`reuse`) or sets `min_remaining` itself.
    /// Returns the key the problem is best named by.
    pub fn reuse_conflict(&self, d: &Defaults) -> Option<(&'static str, &'static str)> {
        let e = self.effective(d);
        let applies = self.min_remaining.is_some() || e.reuse != Reuse::None;
        if e.min_remaining_capped || !applies || e.min_remaining < e.ttl {
            return None;
        }
        let key = if self.min_remaining.is_some() {
            "min_remaining"
        } else if self.ttl.is_some() {
            "ttl"
        } else {
            "reuse"
        };
        Some((
            key,
            "min_remaining (the entry's or the default) is not shorter than the ttl (the entry's or the default, capped at max_ttl): no lease of it would ever be reused",
        ))
    }

    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// The settings in force for one issuance: this policy over `d`.
    pub fn effective(&self, d: &Defaults) -> Effective {
        let max_ttl = self.max_ttl.unwrap_or(d.max_ttl.0).min(d.max_ttl.0);
        let ttl = self.ttl.unwrap_or(d.ttl.0).min(max_ttl);
        // A bundle's files must meet in one lease: the default min_remaining never exceeds half
        // of a lease (an entry's own min_remaining is taken as written).
        let min_remaining_capped = self.min_remaining.is_none() && self.files.is_some();
        let min_remaining = self.min_remaining.unwrap_or(d.min_remaining.0);
        Effective {
            format: self.format.clone().unwrap_or(Format::Json),
            ttl,
            max_ttl,
            reuse: self.reuse.unwrap_or(d.reuse),
            min_remaining,
            min_remaining_capped,
            revoke_on_close: self.revoke_on_close.unwrap_or(d.revoke_on_close),
            renew_while_open: self.renew_while_open.unwrap_or(false),
            max_concurrent_issuances: self.max_concurrent_issuances.unwrap_or(d.max_concurrent_issuances),
            max_issues_per_minute: self.max_issues_per_minute.unwrap_or(d.max_issues_per_minute),
            per_uid_share: self.per_uid_share.or_else(|| share_milli(d.per_uid_share)).unwrap_or(500),
            files: self.files.clone(),
            rotate: self.rotation(),
        }
    }

    /// How and when a lease of this entry is rotated, if it is.
    pub fn rotation(&self) -> Option<Rotation> {
        let by = match (&self.rotate_command, self.rotate_signal) {
            (Some(argv), _) => RotateBy::Command(argv.clone()),
            (None, Some(signal)) => RotateBy::Signal { signal, pid_file: self.rotate_pid_file.clone() },
            (None, None) => return None,
        };
        Some(Rotation { at: self.rotate_at.unwrap_or(667), by })
    }
}

/// A policy with every default applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub format: Format,
    /// Already capped at `max_ttl`.
    pub ttl: Duration,
    /// Never above the configuration's `max_ttl`.
    pub max_ttl: Duration,
    pub reuse: Reuse,
    pub min_remaining: Duration,
    /// `min_remaining` is at most half of each lease's length (a bundle's default).
    pub min_remaining_capped: bool,
    pub revoke_on_close: bool,
    pub renew_while_open: bool,
    /// Issuances of this entry under way at once (0: no bound).
    pub max_concurrent_issuances: u32,
    /// Issuances of this entry per minute (0: no bound).
    pub max_issues_per_minute: u32,
    /// One uid's share of those bounds while another uid uses the entry, in thousandths.
    pub per_uid_share: u32,
    /// A bundle's files and their formats.
    pub files: Option<Vec<(Box<str>, Format)>>,
    /// How long-running readers are told to re-read, and when.
    pub rotate: Option<Rotation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_policy_is_parsed_once_and_defaults_fill_the_rest() {
        let p = Policy::parse(&attrs(serde_json::json!({"ttl": "2h", "reuse": "uid", "format": "env"}))).unwrap();
        let d = Defaults::default();
        let e = p.effective(&d);
        assert_eq!(e.ttl, d.max_ttl.0, "ttl is capped at max_ttl");
        assert_eq!(e.reuse, Reuse::Uid);
        assert_eq!(e.format, Format::Env);
        assert!(!e.revoke_on_close);
        assert_eq!(e.per_uid_share, 500, "per_uid_share defaults to 0.5");
        let share = Policy::parse(&attrs(serde_json::json!({"per_uid_share": 0.25}))).unwrap();
        assert_eq!(share.effective(&d).per_uid_share, 250);
        assert!(Policy::parse(&attrs(serde_json::json!({}))).unwrap().is_empty());
    }

    #[test]
    fn bad_keys_are_named() {
        for (v, key) in [
            (serde_json::json!({"ttl": true}), "ttl"),
            (serde_json::json!({"ttl": -5}), "ttl"),
            (serde_json::json!({"ttl": "0s"}), "ttl"),
            (serde_json::json!({"ttl": 0}), "ttl"),
            (serde_json::json!({"ttl": "999999999999d"}), "ttl"),
            (serde_json::json!({"max_ttl": "366d"}), "max_ttl"),
            (serde_json::json!({"ttl": "5m", "min_remaining": "5m"}), "min_remaining"),
            (serde_json::json!({"max_ttl": "1m", "min_remaining": 90}), "min_remaining"),
            (serde_json::json!({"reuse": "always"}), "reuse"),
            (serde_json::json!({"format": "yaml"}), "format"),
            (serde_json::json!({"renew_while_open": "yes"}), "renew_while_open"),
            (serde_json::json!({"rotate_pid_file": "/run/nginx.pid"}), "rotate_pid_file"),
            (serde_json::json!({"rotate_signal": "HUP", "rotate_pid_file": "nginx.pid"}), "rotate_pid_file"),
            (serde_json::json!({"rotate_command": "systemctl reload nginx"}), "rotate_command"),
            (serde_json::json!({"rotate_command": []}), "rotate_command"),
            (serde_json::json!({"rotate_command": ["systemctl", 1]}), "rotate_command"),
            (serde_json::json!({"rotate_signal": "HUP", "rotate_command": ["true"]}), "rotate_command"),
            (serde_json::json!({"per_uid_share": 0}), "per_uid_share"),
            (serde_json::json!({"per_uid_share": 1.5}), "per_uid_share"),
            (serde_json::json!({"per_uid_share": "half"}), "per_uid_share"),
        ] {
            let e = Policy::parse(&attrs(v)).unwrap_err();
            assert!(e.message.contains(key) && e.key == key, "{e}");
        }
    }

    #[test]
    fn an_entry_whose_leases_could_never_be_reused_is_named_with_the_defaults() {
        let d = Defaults::default();
        let p = |v| Policy::parse(&attrs(v)).unwrap();
        // ttl 20s under the default min_remaining of 30s: matters only where leases are shared.
        assert_eq!(p(serde_json::json!({"ttl": "20s"})).reuse_conflict(&d), None);
        assert_eq!(p(serde_json::json!({"ttl": "20s", "reuse": "uid"})).reuse_conflict(&d).map(|c| c.0), Some("ttl"));
        assert_eq!(
            p(serde_json::json!({"min_remaining": "20m"})).reuse_conflict(&d).map(|c| c.0),
            Some("min_remaining")
        );
        // A bundle's default min_remaining is capped at half of each lease.
        let bundle = p(serde_json::json!({"ttl": "20s", "files": {"a": "json"}}));
        assert_eq!(bundle.reuse_conflict(&d), None);
        assert_eq!(p(serde_json::json!({"ttl": "1m", "reuse": "uid"})).reuse_conflict(&d), None);
    }

    #[test]
    fn durations_are_strings_or_seconds() {
        let p = Policy::parse(&attrs(serde_json::json!({"ttl": 90, "min_remaining": "30s"}))).unwrap();
        assert_eq!(p.ttl, Some(Duration::from_secs(90)));
        let p = Policy::parse(&attrs(serde_json::json!({"ttl": "365d"}))).unwrap();
        assert_eq!(p.ttl, Some(MAX_LEASE));
    }

    #[test]
    fn issuer_kinds_round_trip() {
        for k in IssuerKind::ALL {
            assert_eq!(IssuerKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(IssuerKind::parse("nope"), None);
    }
}
