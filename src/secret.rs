//! The model shared by sources, issuers and the filesystem: secret metadata, secret-holding fields, requesters, path rules.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// Longest path segment accepted (Linux NAME_MAX).
pub const MAX_SEGMENT: usize = 255;
/// Longest whole path accepted.
pub const MAX_PATH: usize = 4096;

/// Splits a secret path (`dynamic:aws:temp-api` or `dynamic/aws/temp-api`) into its segments,
/// refusing anything that could escape or confuse the tree.
pub fn split_path(path: &str, allow_empty: bool) -> Result<Vec<String>, String> {
    if path.len() > MAX_PATH {
        return Err(format!("path is {} bytes long (limit {MAX_PATH})", path.len()));
    }
    if path.is_empty() {
        return if allow_empty { Ok(Vec::new()) } else { Err("path is empty".into()) };
    }
    if path.contains(':') && path.contains('/') {
        return Err("path mixes ':' and '/' separators".into());
    }
    let sep = if path.contains(':') { ':' } else { '/' };
    let mut out = Vec::new();
    for seg in path.split(sep) {
        if seg.is_empty() {
            return Err("path has an empty segment".into());
        }
        if seg == "." || seg == ".." {
            return Err(format!("path segment {seg:?} is not allowed"));
        }
        if seg.len() > MAX_SEGMENT {
            return Err(format!("path segment is {} bytes long (limit {MAX_SEGMENT})", seg.len()));
        }
        if seg.contains('/') {
            return Err("path segment contains '/'".into());
        }
        if seg.chars().any(|c| c == '\0' || c.is_control()) {
            return Err("path contains a NUL or control character".into());
        }
        if seg == ".leasefs" {
            return Err("path segment \".leasefs\" is reserved for the control directory".into());
        }
        out.push(seg.to_string());
    }
    Ok(out)
}

/// Parses an octal mode string such as `"0440"`.
pub fn parse_mode(text: &str) -> Result<u16, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let m = u32::from_str_radix(digits, 8).map_err(|_| format!("{text:?} is not an octal mode"))?;
    if m > 0o7777 {
        return Err(format!("{text:?} is out of range"));
    }
    if m & 0o7000 != 0 {
        return Err(format!("{text:?}: setuid, setgid and sticky bits are not allowed"));
    }
    Ok(m as u16)
}

/// Resolves an owner given as a number, a numeric string or a user name.
pub fn resolve_user(v: &serde_json::Value) -> Result<u32, String> {
    resolve_id(v, true)
}

/// Resolves a group given as a number, a numeric string or a group name.
pub fn resolve_group(v: &serde_json::Value) -> Result<u32, String> {
    resolve_id(v, false)
}

fn resolve_id(v: &serde_json::Value, user: bool) -> Result<u32, String> {
    let what = if user { "user" } else { "group" };
    match v {
        serde_json::Value::Number(n) => {
            n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("{what} id {n} is out of range"))
        }
        serde_json::Value::String(s) => {
            if let Ok(n) = s.parse::<u32>() {
                return Ok(n);
            }
            lookup_name(s, user).ok_or_else(|| format!("unknown {what} {s:?}"))
        }
        other => Err(format!("{what} must be a number or a name, not {other}")),
    }
}

fn lookup_name(name: &str, user: bool) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: the *_r functions write only into the structs and buffer we pass, whose sizes we give.
    unsafe {
        if user {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
            (rc == 0 && !out.is_null()).then_some(pw.pw_uid)
        } else {
            let mut gr: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out);
            (rc == 0 && !out.is_null()).then_some(gr.gr_gid)
        }
    }
}

/// What kind of entry a secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// `data` holds the payload, fetched on open.
    Static,
    /// Opening issues a credential through the issuer of the base secret at `link` (source-relative path).
    Dynamic { link: String },
    /// Holds an issuer's long-lived credential; `issuer` is `attributes.type`.
    Base { issuer: String, expose: bool },
}

/// Metadata of one secret. Never holds a value.
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

#[derive(Debug)]
pub struct SecretMeta {
    pub id: SecretId,
    /// Source-relative path, segments joined with `/` (no segment holds a `/`).
    pub path: Box<str>,
    pub kind: SecretKind,
    /// Non-secret parameters (`ttl`, `format`, `reuse`, grants, …).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u16>,
    /// Size in bytes when the source knows it without reading the value.
    pub size: Option<u64>,
    pub mtime: SystemTime,
    /// Where the source finds the payload (source-specific, e.g. file and index).
    pub locator: Locator,
}

impl SecretMeta {
    /// Builds the metadata of a secret from its path segments; `id` defaults to the path.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Option<&str>,
        segments: &[String],
        kind: SecretKind,
        attributes: serde_json::Map<String, serde_json::Value>,
        size: Option<u64>,
        mtime: SystemTime,
        locator: Locator,
    ) -> SecretMeta {
        let path = segments.join("/");
        SecretMeta {
            id: id.map_or(SecretId::Path, |i| SecretId::new(i, &path)),
            path: path.into(),
            kind,
            attributes,
            uid: None,
            gid: None,
            mode: None,
            size,
            mtime,
            locator,
        }
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
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
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
    File { file: Arc<DocFile>, index: u32, offset: u64, len: u32 },
    /// A key in a remote store (OpenBao KV path or dynamic path).
    Remote(String),
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

    /// Every value, for scanning logs in tests and for redaction.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.fields.values().map(|v| v.text.expose_secret())
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
}

impl Requester {
    /// A requester without its command name (reading /proc costs a syscall trio per open;
    /// `with_comm` adds it where it is recorded).
    pub fn new(uid: u32, gid: u32, pid: u32) -> Self {
        Requester { uid, gid, pid, comm: String::new() }
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

/// Rendered contents shared by the handles of one open (and, for dynamic secrets, by the lease).
/// `expire` zeroizes the bytes; reads after that fail with `EKEYEXPIRED`.
pub struct SharedBytes {
    inner: std::sync::RwLock<Option<crate::memlock::LockedBuf>>,
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({:?} bytes)", self.len())
    }
}

impl SharedBytes {
    pub fn new(bytes: zeroize::Zeroizing<Vec<u8>>) -> Self {
        // Copied into locked memory; the rendering buffer is zeroized as it drops here.
        SharedBytes { inner: std::sync::RwLock::new(Some(crate::memlock::LockedBuf::copy_from(&bytes))) }
    }

    /// The length, or `None` once expired.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Option<usize> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.len())
    }

    /// Calls `f` with the requested slice, or `None` once expired.
    pub fn with_slice<R>(&self, offset: u64, size: u32, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            None => f(None),
            Some(b) => {
                let b = b.as_slice();
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                f(Some(&b[start..end]))
            }
        }
    }

    /// Zeroizes the bytes now; later reads see `None`.
    pub fn expire(&self) {
        let taken = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }

    pub fn is_expired(&self) -> bool {
        self.len().is_none()
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        self.expire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_colon_or_slash() {
        assert_eq!(split_path("dynamic:aws:temp-api", false).unwrap(), ["dynamic", "aws", "temp-api"]);
        assert_eq!(split_path("app/db/password", false).unwrap(), ["app", "db", "password"]);
    }

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
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "a::b",
            "a:..:b",
            "..",
            ".",
            "a/../b",
            "/abs",
            "a/",
            "a\0b",
            "a\nb",
            "a\x1bb",
            "a:b/c",
            ".leasefs/status.json",
        ] {
            assert!(split_path(bad, false).is_err(), "{bad:?} accepted");
        }
        assert!(split_path(&"x".repeat(300), false).is_err());
        assert!(split_path(&"a:".repeat(3000), false).is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0440").unwrap(), 0o440);
        assert_eq!(parse_mode("400").unwrap(), 0o400);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("4755").is_err());
    }

    #[test]
    fn ids_resolve_by_number_and_name() {
        assert_eq!(resolve_user(&serde_json::json!(0)).unwrap(), 0);
        assert_eq!(resolve_user(&serde_json::json!("root")).unwrap(), 0);
        assert_eq!(resolve_group(&serde_json::json!("1000")).unwrap(), 1000);
        assert!(resolve_user(&serde_json::json!("no-such-user-here")).is_err());
        assert!(resolve_user(&serde_json::json!(-1)).is_err());
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
