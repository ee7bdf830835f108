//! Secret documents on disk: one DSV-shaped document, an array of them, or a Royal JSON `{"Objects": [...]}`; metadata parsing never keeps a value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::text::{FileText, problem_at};
use crate::attrs::Step;
use crate::diag::FileError;
use crate::diag::json_cause;
use crate::fields::SecretFields;
use crate::paths::{parse_mode, resolve_group, resolve_user, split_path};
use crate::policy::{IssuerKind, Policy};
use crate::secret::{DocFile, SecretKind, SecretMeta};

/// `data` must be an object; its contents are skipped without being copied.
struct ObjectShape;

impl<'de> Deserialize<'de> for ObjectShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ObjectShape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ObjectShape, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ObjectShape)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct DocMeta {
    #[serde(default)]
    id: Option<String>,
    path: String,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    data: Option<ObjectShape>,
}

#[derive(Deserialize)]
struct DocData<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The result of reading one file: the secrets it defines and what was wrong in it.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub secrets: Vec<SecretMeta>,
    pub problems: Vec<FileError>,
    /// Dynamic entries with attributes only their issuer can judge (`attrs::check_for_issuer`).
    pub pending: Vec<crate::attrs::Pending>,
}

enum Layout<'a> {
    Docs(Vec<&'a RawValue>),
    Royal { objects: Vec<&'a RawValue>, linked: Option<String> },
}

/// Deepest nesting accepted inside one document (serde_json skips values without a limit).
pub const MAX_DEPTH: usize = 64;

/// Returns the position of the first bracket nested deeper than `MAX_DEPTH`, outside strings.
fn too_deep(slice: &str) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, b) in slice.bytes().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn layout<'a>(file: &Path, text: &'a str) -> Result<Layout<'a>, FileError> {
    let first = text.trim_start().chars().next();
    match first {
        Some('[') => {
            serde_json::from_str::<Vec<&RawValue>>(text).map(Layout::Docs).map_err(|e| FileError::from_json(file, &e))
        }
        Some('{') => {
            let top: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).map_err(|e| FileError::from_json(file, &e))?;
            if let Some(objs) = top.get("Objects") {
                let objects: Vec<&RawValue> = serde_json::from_str(objs.get())
                    .map_err(|e| problem_at(file, text, objs.get(), Some(&e), json_cause(&e)))?;
                let linked = match top.get("linkedSecret") {
                    Some(l) => Some(serde_json::from_str::<String>(l.get()).map_err(|e| {
                        problem_at(file, text, l.get(), Some(&e), format!("linkedSecret: {}", json_cause(&e)))
                    })?),
                    None => None,
                };
                Ok(Layout::Royal { objects, linked })
            } else {
                let raw: &RawValue = serde_json::from_str(text).map_err(|e| FileError::from_json(file, &e))?;
                Ok(Layout::Docs(vec![raw]))
            }
        }
        None => Err(FileError::whole(file, "file is empty")),
        Some(_) => serde_json::from_str::<IgnoredAny>(text)
            .map_err(|e| FileError::from_json(file, &e))
            .and_then(|_| Err(FileError::whole(file, "expected a document object, an array or {\"Objects\": [...]}"))),
    }
}

struct Ownership {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u16>,
}

fn ownership(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<Ownership, String> {
    let uid = attrs.get("owner").map(resolve_user).transpose().map_err(|e| format!("attributes.owner: {e}"))?;
    let gid = attrs.get("group").map(resolve_group).transpose().map_err(|e| format!("attributes.group: {e}"))?;
    let mode = match attrs.get("mode") {
        None => None,
        Some(serde_json::Value::String(m)) => Some(parse_mode(m).map_err(|e| format!("attributes.mode: {e}"))?),
        Some(other) => {
            return Err(format!("attributes.mode must be an octal string like \"0440\", not {other}"));
        }
    };
    Ok(Ownership { uid, gid, mode })
}

fn kind_of(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<SecretKind, String> {
    if let Some(link) = attrs.get("linkConfig") {
        let lt = link.get("linkType").and_then(|v| v.as_str());
        if lt == Some("dynamic") {
            let target = link
                .get("linkedSecret")
                .and_then(|v| v.as_str())
                .ok_or("attributes.linkConfig.linkedSecret must name the base secret")?;
            split_path(target, false).map_err(|e| format!("attributes.linkConfig.linkedSecret: {e}"))?;
            return Ok(SecretKind::Dynamic { link: target.replace(':', "/") });
        }
        return Err(format!(
            "attributes.linkConfig.linkType {:?} is not supported (use \"dynamic\")",
            lt.unwrap_or("")
        ));
    }
    if let Some(t) = attrs.get("type") {
        let name = t.as_str().ok_or("attributes.type must be a string")?;
        let issuer = IssuerKind::parse(name)
            .ok_or_else(|| format!("attributes.type {name:?} is not an issuer kind ({})", IssuerKind::names()))?;
        let expose = match attrs.get("expose") {
            None => false,
            Some(v) => v.as_bool().ok_or("attributes.expose must be true or false")?,
        };
        return Ok(SecretKind::Base { issuer, expose });
    }
    Ok(SecretKind::Static)
}

/// Reads the metadata of every secret in a file. Values are skipped, never copied.
pub fn parse_file(file: &Path, text: &str, mtime: SystemTime) -> ParsedFile {
    let mut out = ParsedFile::default();
    let (items, royal) = match layout(file, text) {
        Ok(Layout::Docs(docs)) => (docs, None),
        Ok(Layout::Royal { objects, linked }) => (objects, Some(linked)),
        Err(e) => {
            out.problems.push(e);
            return out;
        }
    };
    let cx = FileText {
        file,
        text,
        mtime,
        shared: Arc::new(DocFile { path: file.to_path_buf(), size: text.len() as u64, mtime }),
    };
    for (index, raw) in items.into_iter().enumerate() {
        let slice = raw.get();
        if let Some(at) = too_deep(slice) {
            let msg = format!("nested more than {MAX_DEPTH} levels deep");
            out.problems.push(problem_at(file, text, &slice[at..], None, msg));
            continue;
        }
        match &royal {
            None => document(&cx, index, slice, &mut out),
            Some(linked) => match super::royal::object(&cx, index, slice, linked.as_deref()) {
                Some(Ok(m)) => out.secrets.push(m),
                Some(Err(e)) => out.problems.push(e),
                None => {}
            },
        }
    }
    out
}

/// One DSV-shaped document: its secret, or the problem placed at the attribute it names.
fn document(cx: &FileText<'_>, index: usize, slice: &str, out: &mut ParsedFile) {
    let doc: DocMeta = match cx.item(slice) {
        Ok(d) => d,
        Err(e) => return out.problems.push(e),
    };
    let mut keys: Vec<String> = Vec::new();
    // An attribute's problem is placed at its key (named in the message, or the first
    // `attributes.<key>` the message names); any other at the document.
    let at_key = |key: &str, msg: String| {
        let path = [Step::Key("attributes"), Step::Key(key)];
        let slice_at = crate::attrs::locate(slice, &path).map_or(slice, |o| &slice[o..]);
        cx.problem(slice_at, None, msg)
    };
    let built = document_meta(cx, index, slice, doc, &mut keys).map_err(|(key, msg)| {
        match key.or_else(|| crate::attrs::attribute_named(&msg)) {
            Some(k) => at_key(&k, msg),
            None => cx.problem(slice, None, msg),
        }
    });
    if let Ok(SecretMeta { kind: SecretKind::Dynamic { link }, .. }) = &built {
        if !keys.is_empty() {
            let (secret, link) = (out.secrets.len(), link.clone());
            let keys = keys.into_iter().map(|k| (k.clone(), at_key(&k, String::new()))).collect();
            out.pending.push(crate::attrs::Pending { secret, link, keys });
        }
    }
    match built {
        Ok(m) => out.secrets.push(m),
        Err(e) => out.problems.push(e),
    }
}

/// A document's metadata; `keys` gets the attributes only its issuer can judge. An error names
/// the attribute it concerns, where it knows it.
fn document_meta(
    cx: &FileText<'_>,
    index: usize,
    slice: &str,
    doc: DocMeta,
    keys: &mut Vec<String>,
) -> Result<SecretMeta, (Option<String>, String)> {
    let plain = |m: String| (None, m);
    let segments = split_path(&doc.path, false).map_err(|e| plain(format!("path {:?}: {e}", doc.path)))?;
    let kind = kind_of(&doc.attributes).map_err(plain)?;
    let known = crate::attrs::check_keys(&kind, &doc.attributes).map_err(|p| (Some(p.key), p.message))?;
    *keys = known.into_iter().map(str::to_string).collect();
    let policy = Policy::parse(&doc.attributes).map_err(|e| (Some(e.key), e.message))?;
    if policy.files.is_some() && !matches!(kind, SecretKind::Dynamic { .. }) {
        let msg = "attributes.files makes a bundle of a dynamic secret; this one is not dynamic";
        return Err((Some("files".into()), msg.into()));
    }
    let own = ownership(&doc.attributes).map_err(plain)?;
    let locator = cx.locator(index, slice);
    let id = doc.id.as_deref().unwrap_or(&doc.path);
    let mut m = SecretMeta::new(Some(id), &segments, kind, doc.attributes, None, cx.mtime, locator);
    if !policy.is_empty() || own.uid.is_some() || own.gid.is_some() || own.mode.is_some() {
        let e = m.extras_mut();
        (e.uid, e.gid, e.mode, e.policy) = (own.uid, own.gid, own.mode, policy);
    }
    Ok(m)
}

/// Reads the `data` of one document given as its own text, if it is the secret at `path`
/// (None: it is not, e.g. the file changed; read the whole file instead).
pub fn read_doc(doc: &str, path: &str) -> Option<Result<SecretFields, String>> {
    let meta: DocMeta = serde_json::from_str(doc).ok()?;
    if split_path(&meta.path, false).ok()?.join("/") != path {
        return None;
    }
    let d: DocData<'_> = serde_json::from_str(doc).ok()?;
    Some(match d.data {
        None => Ok(SecretFields::default()),
        Some(data) => SecretFields::from_json_object(data.get()).map_err(|e| format!("data: {}", json_cause(&e))),
    })
}

/// The `data` of one document given as its own text (no check of its path: the caller sliced it
/// from the listing it parsed), unparsed; `Some(None)` when it has none, `None` when the document
/// does not parse.
pub fn data_raw(doc: &str) -> Option<Option<&RawValue>> {
    serde_json::from_str::<DocData<'_>>(doc).ok().map(|d| d.data)
}

/// The fields of a document's `data` (none: no fields). None when it is not an object.
pub fn fields_of(data: Option<&RawValue>) -> Option<SecretFields> {
    match data {
        None => Some(SecretFields::default()),
        Some(data) => SecretFields::from_json_object(data.get()).ok(),
    }
}

/// `data` that is exactly `{"value": "…"}` with no escape in the string (borrowing fails on one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoneValue<'a> {
    #[serde(borrow)]
    value: &'a str,
}

/// The rendered length of a `data` that is exactly `{"value": "…"}`, its string free of escapes,
/// for an entry without `format` (the value is its contents, byte for byte): the listing's size
/// without building the fields. `None`: any other shape (render it).
pub fn lone_value_len(data: &RawValue) -> Option<usize> {
    serde_json::from_str::<LoneValue<'_>>(data.get()).ok().map(|v| v.value.len())
}

/// Reads the `data` of the document at `index`, checking that it is still the secret at `path`.
pub fn read_data(file: &Path, text: &str, index: usize, path: &str) -> Result<SecretFields, String> {
    let docs = match layout(file, text).map_err(|e| e.to_string())? {
        Layout::Docs(d) => d,
        Layout::Royal { .. } => return Ok(SecretFields::default()),
    };
    let matches = |raw: &&&RawValue| {
        serde_json::from_str::<DocMeta>(raw.get())
            .ok()
            .and_then(|d| split_path(&d.path, false).ok())
            .map(|s| s.join("/") == path)
            .unwrap_or(false)
    };
    // The document usually stays where it was; if the file was edited, look for it by path.
    let raw = match docs.get(index).filter(|r| matches(r)) {
        Some(r) => *r,
        None => *docs
            .iter()
            .find(matches)
            .ok_or_else(|| format!("{}: secret {path:?} is no longer there", file.display()))?,
    };
    let d: DocData<'_> =
        serde_json::from_str(raw.get()).map_err(|e| format!("{}: {}", file.display(), json_cause(&e)))?;
    match d.data {
        None => Ok(SecretFields::default()),
        Some(data) => SecretFields::from_json_object(data.get())
            .map_err(|e| format!("{}: data: {}", file.display(), json_cause(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParsedFile {
        parse_file(Path::new("t.json"), text, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn a_lone_value_is_sized_without_rendering_and_exactly_as_rendered() {
        let rendered =
            |doc: &str| crate::render::render_static(&fields_of(data_raw(doc).unwrap()).unwrap(), None).unwrap().len();
        let lone_value_len = |doc: &str| data_raw(doc).flatten().and_then(lone_value_len);
        for doc in [
            r#"{"path": "a", "data": {"value": "secret-0-0-1"}}"#,
            r#"{"path": "a", "data": { "value" : "" } }"#,
            r#"{"data": {"value": "naïve ✓"}, "path": "a"}"#,
        ] {
            assert_eq!(lone_value_len(doc), Some(rendered(doc)), "{doc}");
        }
        // Any other shape is left to the renderer (escapes, other fields, a non-string, no data).
        for doc in [
            r#"{"path": "a", "data": {"value": "line
break"}}"#,
            r#"{"path": "a", "data": {"value": "x", "user": "y"}}"#,
            r#"{"path": "a", "data": {"value": 5}}"#,
            r#"{"path": "a", "data": {"password": "x"}}"#,
            r#"{"path": "a"}"#,
        ] {
            assert_eq!(lone_value_len(doc), None, "{doc}");
        }
    }

    #[test]
    fn dsv_document() {
        let p = parse(
            r#"{"id": "cc61", "path": "dynamic:aws:temp-api", "description": "",
            "attributes": {"linkConfig": {"linkType": "dynamic", "linkedSecret": "base:aws:creds:api-account"},
                           "ttl": "15m", "format": "credential_process"}, "data": {}}"#,
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let s = &p.secrets[0];
        assert_eq!(s.path(), "dynamic/aws/temp-api");
        assert_eq!(s.kind, SecretKind::Dynamic { link: "base/aws/creds/api-account".into() });
    }

    #[test]
    fn array_with_bad_member_keeps_the_good_ones() {
        let text = "[\n {\"path\": \"a:b\", \"data\": {\"value\": \"x\"}},\n {\"path\": \"a:..:c\"},\n {\"path\": 5},\n {\"path\": \"ok\"}\n]";
        let p = parse(text);
        assert_eq!(p.secrets.len(), 2);
        assert_eq!(p.problems.len(), 2);
        assert_eq!((p.problems[0].line, p.problems[0].column), (3, 2));
        assert_eq!(p.problems[1].line, 4);
        assert!(p.problems[1].message.contains("invalid type"), "{}", p.problems[1]);
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let p = parse("{\n  \"path\": \"a\",\n  \"data\": {\"value\": }\n}");
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].line, 3);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("{{\"path\": \"a\", \"data\": {{\"v\": {}{}}}}}", "[".repeat(10_000), "]".repeat(10_000));
        let p = parse(&text);
        assert!(p.secrets.is_empty());
        assert_eq!(p.problems.len(), 1);
    }

    #[test]
    fn royal_json_objects() {
        let p = parse(
            r#"{"linkedSecret": "base:royal", "Objects": [
            {"Type": "DynamicCredential", "Name": "User 1", "ID": "Cred01", "Path": "team/ops"},
            {"Type": "Credential", "Name": "plain"},
            {"Type": "DynamicCredential", "Name": "User 2", "ID": "Cred02"}]}"#,
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.secrets.len(), 2);
        assert_eq!(p.secrets[0].path(), "team/ops/User 1");
        assert_eq!(p.secrets[0].id(), "Cred01");
        assert_eq!(p.secrets[1].path(), "credentials/User 2");
        assert_eq!(p.secrets[1].kind, SecretKind::Dynamic { link: "base/royal".into() });
    }

    #[test]
    fn read_data_finds_the_value_even_after_edits() {
        let text = r#"[{"path": "a", "data": {"value": "one"}}, {"path": "b", "data": {"value": "two"}}]"#;
        let f = read_data(Path::new("t.json"), text, 1, "b").unwrap();
        assert_eq!(f.get("value"), Some("two"));
        let f = read_data(Path::new("t.json"), text, 0, "b").unwrap();
        assert_eq!(f.get("value"), Some("two"));
        assert!(read_data(Path::new("t.json"), text, 0, "c").is_err());
    }

    #[test]
    fn base_secrets_are_hidden_unless_exposed() {
        let p = parse(
            r#"[{"path": "base:x", "attributes": {"type": "exec"}, "data": {"command": ["/bin/true"]}},
                          {"path": "base:y", "attributes": {"type": "exec", "expose": true}},
                          {"path": "base:z", "attributes": {"type": "nope"}}]"#,
        );
        assert_eq!(p.secrets.len(), 2);
        assert!(!p.secrets[0].is_listed());
        assert!(p.secrets[1].is_listed());
        assert!(p.problems[0].message.contains("not an issuer kind"));
    }
}
