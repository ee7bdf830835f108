//! The model shared by sources, issuers and the filesystem: secret metadata, secret-holding fields, requesters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::policy::{IssuerKind, Policy};

/// What kind of entry a secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// `data` holds the payload, fetched on open.
    Static,
    /// Opening issues a credential through the issuer of the base secret at `link` (source-relative path).
    Dynamic { link: String },
    /// Holds an issuer's long-lived credential; `issuer` is `attributes.type`.
    Base { issuer: IssuerKind, expose: bool },
}

/// A secret's id, stored only when it is not its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretId {
    /// The path itself (`a/b/c`).
    Path,
    /// The path written with `:` separators (`a:b:c`, as documents write it).
    Colons,
    Own(Box<str>),
}

impl SecretId {
    pub fn new(id: &str, path: &str) -> SecretId {
        if id == path {
            SecretId::Path
        } else if id.len() == path.len()
            && id.bytes().zip(path.bytes()).all(|(i, p)| if p == b'/' { i == b':' } else { i == p })
        {
            SecretId::Colons
        } else {
            SecretId::Own(id.into())
        }
    }
}

/// Metadata of one secret. Never holds a value.
#[derive(Debug)]
pub struct SecretMeta {
    pub id: SecretId,
    /// Source-relative path, segments joined with `/` (no segment holds a `/`).
    pub path: Box<str>,
    pub kind: SecretKind,
    /// What the document sets beyond path and kind; most static secrets set nothing, and a
    /// million of them cost a pointer each (see `Extras`).
    extras: Option<Box<Extras>>,
    /// Size in bytes when the source knows it without reading the value (documents are at most
    /// 16 MiB, so 32 bits hold any rendered size).
    pub size: Option<u32>,
    pub mtime: SystemTime,
    /// Where the source finds the payload (source-specific, e.g. file and index).
    pub locator: Locator,
}

/// Attributes, policy and ownership a document sets for its entry.
#[derive(Debug, Default)]
pub struct Extras {
    /// Non-secret parameters (`ttl`, `format`, `reuse`, grants, …), passed on to issuers.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The lease and rendering settings of `attributes`, parsed once.
    pub policy: Policy,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u16>,
}

impl SecretMeta {
    /// Builds the metadata of a secret from its path segments; `id` defaults to the path.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Option<&str>,
        segments: &[String],
        kind: SecretKind,
        attributes: serde_json::Map<String, serde_json::Value>,
        size: Option<u32>,
        mtime: SystemTime,
        locator: Locator,
    ) -> SecretMeta {
        let path = segments.join("/");
        let extras = (!attributes.is_empty()).then(|| Box::new(Extras { attributes, ..Extras::default() }));
        SecretMeta {
            id: id.map_or(SecretId::Path, |i| SecretId::new(i, &path)),
            path: path.into(),
            kind,
            extras,
            size,
            mtime,
            locator,
        }
    }

    /// The extras, created on first change.
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }
    /// Non-secret parameters (`ttl`, `format`, `reuse`, grants, …), passed on to issuers.
    pub fn attributes(&self) -> &serde_json::Map<String, serde_json::Value> {
        static EMPTY: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
            std::sync::LazyLock::new(serde_json::Map::new);
        self.extras.as_ref().map_or(&EMPTY, |e| &e.attributes)
    }
    pub fn uid(&self) -> Option<u32> {
        self.extras.as_ref().and_then(|e| e.uid)
    }
    pub fn gid(&self) -> Option<u32> {
        self.extras.as_ref().and_then(|e| e.gid)
    }
    pub fn mode(&self) -> Option<u16> {
        self.extras.as_ref().and_then(|e| e.mode)
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.path.split('/')
    }
    /// The last path segment: the file's name.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
    pub fn id(&self) -> std::borrow::Cow<'_, str> {
        match &self.id {
            SecretId::Path => std::borrow::Cow::Borrowed(&self.path),
            SecretId::Colons => std::borrow::Cow::Owned(self.path.replace('/', ":")),
            SecretId::Own(s) => std::borrow::Cow::Borrowed(s),
        }
    }
    /// The entry's own policy (empty when the document sets none).
    pub fn policy(&self) -> &Policy {
        static EMPTY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        self.extras.as_ref().map_or_else(|| EMPTY.get_or_init(Policy::default), |e| &e.policy)
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes().get(key).and_then(|v| v.as_str())
    }
    pub fn is_listed(&self) -> bool {
        !matches!(self.kind, SecretKind::Base { expose: false, .. })
    }
}

/// A document file as it was when listed: opens read just one document's bytes while the file
/// still has this size and modification time.
#[derive(Debug)]
pub struct DocFile {
    pub path: std::path::PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Where a source finds a payload again.
#[derive(Clone, Debug)]
pub enum Locator {
    /// A local document file, the index of the document within it, and its byte range there.
    File { file: Arc<DocFile>, index: u32, offset: u32, len: u32 },
    /// A key in a remote store (OpenBao KV path or dynamic path).
    Remote(Box<str>),
    /// Fields that the source embeds itself (the demo catalog's jwt key, generated at start).
    None,
}

/// One field value, held as a secret. `json` marks a value kept as JSON text (numbers, arrays, objects).
pub struct FieldValue {
    pub text: SecretString,
    pub json: bool,
}

impl FieldValue {
    pub fn string(s: impl Into<String>) -> Self {
        FieldValue { text: SecretString::from(s.into()), json: false }
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Drops the whitespace outside strings of a JSON text (documents are often pretty-printed;
/// nested values are passed on as one line).
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_str, mut esc) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            if c == '"' {
                in_str = true;
            }
            out.push(c);
        }
    }
    out
}

/// A set of named secret values (a static payload, a base secret's data, an issued credential).
/// Every value is zeroized when dropped; `Debug` prints only the names.
#[derive(Default)]
pub struct SecretFields {
    pub fields: BTreeMap<String, FieldValue>,
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.fields.keys()).finish()
    }
}

impl SecretFields {
    /// Builds fields from a JSON object, keeping nested values as JSON text.
    pub fn from_json_object(text: &str) -> Result<SecretFields, serde_json::Error> {
        let map: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
        let mut fields = BTreeMap::new();
        for (k, raw) in map {
            let r = raw.get();
            let v = if r.starts_with('"') {
                FieldValue { text: SecretString::from(serde_json::from_str::<String>(r)?), json: false }
            } else {
                FieldValue { text: SecretString::from(minify(r)), json: true }
            };
            fields.insert(k, v);
        }
        Ok(SecretFields { fields })
    }

    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        self.fields.insert(key.to_string(), FieldValue::string(value));
    }

    pub fn insert_json(&mut self, key: &str, value: &serde_json::Value) {
        let text = match value {
            serde_json::Value::String(s) => return self.insert(key, s.clone()),
            other => other.to_string(),
        };
        self.fields.insert(key.to_string(), FieldValue { text: SecretString::from(text), json: true });
    }

    /// A field as text (strings as they are, other values as JSON).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(|v| v.text.expose_secret())
    }

    /// Case-insensitive lookup, for formats that accept `AccessKeyId` or `access_key_id`.
    pub fn get_any(&self, keys: &[&str]) -> Option<&str> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return Some(v);
            }
        }
        let norm = |s: &str| s.chars().filter(|c| *c != '_').collect::<String>().to_ascii_lowercase();
        let wanted: Vec<String> = keys.iter().map(|k| norm(k)).collect();
        self.fields.iter().find(|(k, _)| wanted.contains(&norm(k))).map(|(_, v)| v.text.expose_secret())
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Serializes the fields as one JSON object; values go straight from their secret boxes to the writer.
impl Serialize for SecretFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            let text = v.text.expose_secret();
            if v.json {
                match serde_json::from_str::<&RawValue>(text) {
                    Ok(raw) => m.serialize_entry(k, raw)?,
                    Err(_) => m.serialize_entry(k, text)?,
                }
            } else {
                m.serialize_entry(k, text)?;
            }
        }
        m.end()
    }
}

/// Who asked: copied out of the FUSE request.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The process's command name (`/proc/PID/comm`), when it could be read.
    pub comm: String,
    /// Its session id, read when a lease is bound to the session (0: not read).
    #[serde(skip)]
    pub sid: u32,
    /// Its start time (`/proc/PID/stat` field 22, clock ticks since boot), read where a process
    /// must not be taken for a later one with the same pid (0: not read, or gone).
    #[serde(skip)]
    pub start: u64,
    /// Its cgroup, unit, container, pod and executable, read where an entry needs them.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "crate::workload::serialize_shared")]
    pub workload: Option<Arc<crate::workload::Workload>>,
}

/// The session id and start time of a live process, from one read of `/proc/PID/stat`.
pub fn process_stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // After the command name (in parentheses, which may hold spaces): field 3 (state) onwards.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let sid = rest.nth(3)?.parse().ok()?; // field 6
    let start = rest.nth(15)?.parse().ok()?; // field 22
    Some((sid, start))
}

impl Requester {
    /// A requester without its command name (reading /proc costs a syscall trio per open;
    /// `with_comm` adds it where it is recorded).
    pub fn new(uid: u32, gid: u32, pid: u32) -> Self {
        Requester { uid, gid, pid, comm: String::new(), sid: 0, start: 0, workload: None }
    }

    /// Fills in the session id and start time from one read of `/proc/PID/stat`.
    fn read_stat(&mut self) {
        let (sid, start) = process_stat(self.pid).unwrap_or((self.pid, 0));
        self.sid = sid;
        self.start = start;
    }

    /// Fills in the session id (and the start time with it), if not known yet.
    pub fn with_session(mut self) -> Self {
        if self.sid == 0 {
            self.read_stat();
        }
        self
    }

    /// Fills in the start time (and the session id with it), if not known yet.
    pub fn with_start(mut self) -> Self {
        if self.start == 0 {
            self.read_stat();
        }
        self
    }

    /// Whether `other` is this very process: same uid, pid and start time (a start time that
    /// could not be read matches nothing).
    pub fn same_process(&self, other: &Requester) -> bool {
        self.uid == other.uid && self.pid == other.pid && self.start != 0 && self.start == other.start
    }

    /// Fills in the command name from `/proc/PID/comm`, if not known yet.
    pub fn with_comm(mut self) -> Self {
        if self.comm.is_empty() {
            self.comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_stored_only_when_it_is_not_the_path() {
        let segs = ["a".to_string(), "b".to_string(), "c".to_string()];
        let meta = |id: &str| {
            SecretMeta::new(
                Some(id),
                &segs,
                SecretKind::Static,
                Default::default(),
                None,
                SystemTime::UNIX_EPOCH,
                Locator::None,
            )
        };
        assert_eq!(meta("a/b/c").id, SecretId::Path);
        assert_eq!(meta("a:b:c").id, SecretId::Colons);
        assert_eq!(meta("a:b:c").id(), "a:b:c");
        // Mixed separators are kept as written.
        assert_eq!(meta("a:b/c").id(), "a:b/c");
        assert_eq!(meta("Cred01").id(), "Cred01");
    }

    #[test]
    fn the_session_and_start_time_are_read_after_the_command_name() {
        let line = "4242 (a) b (c) S 1 4242 4100 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 987654 2490368 200";
        assert_eq!(parse_stat(line), Some((4100, 987654)));
        assert_eq!(parse_stat("1 (x) S 1"), None, "cut short");
        // This very process: its session, and a start time that a later process cannot have.
        let me = std::process::id();
        let (sid, start) = process_stat(me).unwrap();
        // SAFETY: getsid of the calling process.
        assert_eq!(sid as i32, unsafe { libc::getsid(0) });
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let (_, later) = process_stat(child.id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(start > 0 && later >= start, "{start} {later}");
        let who = Requester::new(0, 0, me).with_start();
        assert_eq!((who.start, who.sid), (start, sid), "one read fills both");
        assert!(who.same_process(&who.clone()));
        assert!(!who.same_process(&Requester { start: start + 1, ..who.clone() }), "a later process at the pid");
        assert!(!who.same_process(&Requester { uid: 1, ..who.clone() }), "another uid");
        let gone = Requester::new(0, 0, u32::MAX).with_start();
        assert!(!gone.same_process(&gone.clone()), "an unknown start time matches nothing");
    }

    #[test]
    fn nested_values_are_kept_on_one_line() {
        let f = SecretFields::from_json_object("{\"command\": [\n  \"/bin/x\",\n  \"a b\"\n]}").unwrap();
        assert_eq!(f.get("command"), Some(r#"["/bin/x","a b"]"#));
    }

    #[test]
    fn fields_debug_never_shows_values() {
        let f = SecretFields::from_json_object(r#"{"password": "hunter2", "port": 5432}"#).unwrap();
        let dbg = format!("{f:?}");
        assert!(!dbg.contains("hunter2"));
        assert_eq!(f.get("port"), Some("5432"));
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"password":"hunter2","port":5432}"#);
    }
}
