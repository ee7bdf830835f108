//! Which keys a document's `attributes` may hold (per kind of entry and issuer), near-miss
//! suggestions for the rest, and where a key sits in JSON text (for file:line:column errors).

use crate::diag::{FileError, did_you_mean, near_miss, shown_key};
use crate::policy::{IssuerKind, KEYS as POLICY_KEYS};
use crate::secret::{SecretKind, SecretMeta};

/// Keys leasefs itself reads on any document, besides the policy's (`policy::KEYS`).
const OWN_KEYS: [&str; 9] =
    ["owner", "group", "mode", "type", "expose", "linkConfig", "allow", "max_overhang", "allow_overhang"];

/// How far past its lease a credential may state it is valid when its issuer cannot revoke it,
/// unless the entry's `max_overhang` says otherwise.
pub const MAX_OVERHANG: std::time::Duration = std::time::Duration::from_secs(60);

/// What a dynamic entry allows of a credential that states a validity past its lease's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overhang {
    /// `max_overhang`: the most a credential leasefs cannot revoke may outlive its lease.
    pub max: std::time::Duration,
    /// `allow_overhang: true`: serve it anyway (audited and counted).
    pub allow: bool,
}

/// Reads `max_overhang` (a duration) and `allow_overhang` (a boolean); an error names the key.
pub fn overhang(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<Overhang, KeyProblem> {
    let max = match attrs.get("max_overhang") {
        None => MAX_OVERHANG,
        Some(v) => crate::policy::duration_value("max_overhang", v)
            .map_err(|e| KeyProblem { key: e.key, message: e.message })?,
    };
    let allow = match attrs.get("allow_overhang") {
        None => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            let message = "attributes.allow_overhang must be true or false".to_string();
            return Err(KeyProblem { key: "allow_overhang".into(), message });
        }
    };
    Ok(Overhang { max, allow })
}

/// The per-entry keys each issuer reads from a dynamic entry's `attributes` (`src/issuer/*.rs`).
/// `exec` passes every attribute to its script, so it has no fixed list.
pub fn issuer_keys(kind: IssuerKind) -> &'static [&'static str] {
    match kind {
        IssuerKind::Exec | IssuerKind::Azure => &[],
        IssuerKind::Jwt => &["audience", "subject", "claims"],
        IssuerKind::Postgres => &["grants"],
        IssuerKind::Aws => &["role_arn", "session_name"],
        IssuerKind::Openbao => &["path", "method", "body", "generate_key", "revoke"],
    }
}

/// Every key leasefs reads whatever the issuer.
fn leasefs_keys() -> impl Iterator<Item = &'static str> + Clone {
    POLICY_KEYS.into_iter().chain(OWN_KEYS)
}

fn is_leasefs_key(key: &str) -> bool {
    leasefs_keys().any(|k| k == key)
}

/// An attribute key that is refused, and why (the key, never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    pub key: String,
    pub message: String,
}

fn unknown(key: &str, what: &str, known: impl Iterator<Item = &'static str>) -> KeyProblem {
    let shown = shown_key(key);
    let message = match did_you_mean(key, known) {
        Some(k) => format!("unknown attribute `{shown}` ({what}); did you mean `{k}`?"),
        None => format!("unknown attribute `{shown}` ({what}); leasefs would ignore it"),
    };
    KeyProblem { key: key.to_string(), message }
}

/// Checks the keys of a document's `attributes` that can be judged without its base secret. Static
/// and base documents take leasefs's keys only. A dynamic entry may not hold a near miss of one of
/// them (whatever its issuer, `exec` included); the keys returned are the others leasefs does not
/// read itself, which only its issuer can judge (`check_for_issuer`, once the base is found).
pub fn check_keys<'a>(
    kind: &SecretKind,
    attrs: &'a serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<&'a str>, KeyProblem> {
    if let Some(v) = attrs.get("allow") {
        crate::workload::check_allow(v).map_err(|message| KeyProblem { key: "allow".into(), message })?;
    }
    if matches!(kind, SecretKind::Dynamic { .. }) {
        if let Err(e) = crate::workload::check_template_names(attrs) {
            let key = attribute_named(&e).unwrap_or_default();
            return Err(KeyProblem { key, message: e });
        }
    }
    let mut pending = Vec::new();
    if attrs.contains_key("max_overhang") || attrs.contains_key("allow_overhang") {
        if !matches!(kind, SecretKind::Dynamic { .. }) {
            let key = if attrs.contains_key("max_overhang") { "max_overhang" } else { "allow_overhang" };
            let message = format!("attributes.{key} bounds a dynamic credential's life; this secret is not dynamic");
            return Err(KeyProblem { key: key.into(), message });
        }
        overhang(attrs)?;
    }
    for key in attrs.keys().map(String::as_str).filter(|k| !is_leasefs_key(k)) {
        match kind {
            SecretKind::Dynamic { .. } => {
                if let Some(k) = leasefs_keys().find(|k| near_miss(key, k)) {
                    let shown = shown_key(key);
                    let message = format!("unknown attribute `{shown}`; did you mean `{k}`?");
                    return Err(KeyProblem { key: key.to_string(), message });
                }
                pending.push(key);
            }
            SecretKind::Static => return Err(unknown(key, "a static secret", leasefs_keys())),
            SecretKind::Base { .. } => return Err(unknown(key, "a base secret", leasefs_keys())),
        }
    }
    Ok(pending)
}

/// Judges the keys `check_keys` left to the issuer: an `exec` entry passes them to its script;
/// any other issuer reads only its own (`issuer_keys`).
pub fn check_for_issuer<'a>(issuer: IssuerKind, keys: impl IntoIterator<Item = &'a str>) -> Result<(), KeyProblem> {
    if issuer == IssuerKind::Exec {
        return Ok(());
    }
    let own = issuer_keys(issuer);
    for key in keys {
        if !own.contains(&key) {
            let what = format!("a {issuer} entry");
            return Err(unknown(key, &what, leasefs_keys().chain(own.iter().copied())));
        }
    }
    Ok(())
}

/// Parses an entry's parameters as its issuer will at each open, so that a wrong one is named
/// when the document loads (`check`, the mount's log) rather than at the first open.
pub fn check_params(issuer: IssuerKind, attrs: &serde_json::Map<String, serde_json::Value>) -> Result<(), KeyProblem> {
    let problem = |e: crate::policy::AttrError| KeyProblem { key: e.key, message: e.message };
    match issuer {
        IssuerKind::Openbao => crate::issuer::openbao::Params::parse(attrs).map(|_| ()).map_err(problem),
        IssuerKind::Postgres => crate::issuer::postgres::check_grants(attrs).map_err(problem),
        IssuerKind::Jwt => {
            let bad = |key: &str, what: &str| KeyProblem {
                key: key.into(),
                message: format!("attributes.{key} must be {what}"),
            };
            match (attrs.get("claims"), attrs.get("subject"), attrs.get("audience")) {
                (Some(c), _, _) if !c.is_object() => Err(bad("claims", "an object of claims")),
                (_, Some(s), _) if !s.is_string() => Err(bad("subject", "a string")),
                (_, _, Some(a))
                    if !(a.is_string() || a.as_array().is_some_and(|l| l.iter().all(|v| v.is_string()))) =>
                {
                    Err(bad("audience", "a string or an array of strings"))
                }
                _ => Ok(()),
            }
        }
        IssuerKind::Exec | IssuerKind::Aws | IssuerKind::Azure => Ok(()),
    }
}

/// A dynamic entry's attribute keys that leasefs does not read itself: fine for an `exec` base
/// (passed to the script), refused for another issuer unless it reads them. Judged once the
/// source's listing is whole, since the base may be in another file.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Index of the entry in `document::ParsedFile::secrets` (callers shift it as they join listings).
    pub secret: usize,
    /// The base's path, `/`-separated.
    pub link: String,
    /// Each key, and where it is written (a `FileError` whose message the judgement fills in).
    pub keys: Vec<(String, FileError)>,
}

/// Judges the pending keys of a source's dynamic entries once its listing is whole: returns the
/// indices of the entries refused (in `secrets`, ascending) and a problem for each, at its key.
pub fn settle(secrets: &[std::sync::Arc<SecretMeta>], pending: Vec<Pending>) -> (Vec<usize>, Vec<FileError>) {
    let mut bases: std::collections::HashMap<&str, IssuerKind> = std::collections::HashMap::new();
    for m in secrets {
        if let SecretKind::Base { issuer, .. } = m.kind {
            bases.entry(m.path()).or_insert(issuer);
        }
    }
    let (mut refused, mut problems) = (Vec::new(), Vec::new());
    for p in pending {
        // A link that finds no base is reported as such (`check`); its keys cannot be judged.
        let Some(issuer) = bases.get(p.link.as_str()) else { continue };
        let judged = check_for_issuer(*issuer, p.keys.iter().map(|(k, _)| k.as_str()))
            .and_then(|()| secrets.get(p.secret).map_or(Ok(()), |m| check_params(*issuer, m.attributes())));
        if let Err(k) = judged {
            // At its key; a missing key's problem at the entry's first key leasefs does not read.
            let at = p.keys.iter().position(|(key, _)| *key == k.key).unwrap_or(0);
            if let Some((_, at)) = p.keys.into_iter().nth(at) {
                problems.push(FileError { message: k.message, ..at });
                refused.push(p.secret);
            }
        }
    }
    refused.sort_unstable();
    (refused, problems)
}

/// The attribute a message is about: the key after its first `attributes.`.
pub fn attribute_named(msg: &str) -> Option<String> {
    let rest = &msg[msg.find("attributes.")? + "attributes.".len()..];
    let key: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!key.is_empty()).then_some(key)
}

/// One step of a path into JSON text: an object's key or an array's element.
#[derive(Clone, Copy, Debug)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index after the string that opens at `i`.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The index after the value that starts at `i` (no recursion: containers are skipped by depth).
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => Some(i + b[i..].iter().position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())?),
    }
}

/// The byte offset in `text` of the last step of `path`: the opening quote of a key, or the start
/// of an array element. None if the path is not there (or the text does not parse that far).
pub fn locate(text: &str, path: &[Step<'_>]) -> Option<usize> {
    let b = text.as_bytes();
    let mut pos = ws(b, 0);
    for (n, step) in path.iter().enumerate() {
        let last = n + 1 == path.len();
        match *step {
            Step::Key(want) => {
                if *b.get(pos)? != b'{' {
                    return None;
                }
                let mut i = ws(b, pos + 1);
                loop {
                    if *b.get(i)? != b'"' {
                        return None;
                    }
                    let end = skip_string(b, i)?;
                    let key: String = serde_json::from_str(&text[i..end]).ok()?;
                    let colon = ws(b, end);
                    if *b.get(colon)? != b':' {
                        return None;
                    }
                    let value = ws(b, colon + 1);
                    if key == want {
                        if last {
                            return Some(i);
                        }
                        pos = value;
                        break;
                    }
                    i = ws(b, skip_value(b, value)?);
                    if *b.get(i)? != b',' {
                        return None;
                    }
                    i = ws(b, i + 1);
                }
            }
            Step::Index(want) => {
                if *b.get(pos)? != b'[' {
                    return None;
                }
                let mut i = ws(b, pos + 1);
                for _ in 0..want {
                    i = ws(b, skip_value(b, i)?);
                    if *b.get(i)? != b',' {
                        return None;
                    }
                    i = ws(b, i + 1);
                }
                if last {
                    return Some(i);
                }
                pos = i;
            }
        }
    }
    None
}

/// Where an entry's attribute `key` is written, as `file:line:column` (the document's start if
/// the key is not written in it); None for an entry that has no document file. Reads the file
/// again: for `check`, never on a request path.
pub fn place_of(meta: &SecretMeta, key: &str) -> Option<String> {
    let crate::secret::Locator::File { file, offset, len, .. } = &meta.locator else { return None };
    let text = std::fs::read_to_string(&file.path).ok();
    let (start, end) = (*offset as usize, *offset as usize + *len as usize);
    let at = text.as_deref().and_then(|t| {
        let doc = t.get(start..end)?;
        let inner = locate(doc, &[Step::Key("attributes"), Step::Key(key)]).unwrap_or(0);
        Some(crate::diag::line_col(t, start + inner))
    });
    Some(match at {
        Some((line, col)) => format!("{}:{line}:{col}", file.path.display()),
        None => file.path.display().to_string(),
    })
}

/// `check`'s warning for an entry that lets a credential outlive its lease (`allow_overhang`).
pub fn overhang_warning(meta: &SecretMeta, shown_path: &str) -> Option<String> {
    if meta.attributes().get("allow_overhang") != Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    let place = place_of(meta, "allow_overhang").unwrap_or_else(|| shown_path.to_string());
    Some(format!(
        "{place}: attributes.allow_overhang: a credential that states a validity past its lease and cannot be revoked is served (audited `outlives`, counted in leasefs_overhang_allowed_total)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn keys_are_located() {
        let text = "{\"a\": [1, {\"x\": \"}\"}],\n \"attributes\": {\"ttl\": \"0s\",\n   \"colour\": 1}}";
        let at = locate(text, &[Step::Key("attributes"), Step::Key("colour")]).unwrap();
        assert_eq!(crate::diag::line_col(text, at), (3, 4));
        let at = locate(text, &[Step::Key("a"), Step::Index(1), Step::Key("x")]).unwrap();
        assert_eq!(&text[at..at + 3], "\"x\"");
        assert_eq!(locate(text, &[Step::Key("nope")]), None);
    }

    #[test]
    fn attribute_keys_are_judged_by_kind_and_issuer() {
        let dynamic = SecretKind::Dynamic { link: "base/x".into() };
        let e = check_keys(&SecretKind::Static, &attrs(serde_json::json!({"colour": "red"}))).unwrap_err();
        assert!(e.message.contains("`colour`") && !e.message.contains("red"), "{e:?}");
        let e = check_keys(&dynamic, &attrs(serde_json::json!({"rotate_signl": "SIGHUP"}))).unwrap_err();
        assert!(e.message.contains("did you mean `rotate_signal`"), "{e:?}");
        let e = check_keys(&dynamic, &attrs(serde_json::json!({"rotate_pid_fle": "/run/x.pid"}))).unwrap_err();
        assert!(e.message.contains("did you mean `rotate_pid_file`"), "{e:?}");
        let e = check_keys(&SecretKind::Static, &attrs(serde_json::json!({"rotate_comand": ["true"]}))).unwrap_err();
        assert!(e.message.contains("did you mean `rotate_command`"), "{e:?}");
        let ok = attrs(serde_json::json!({"rotate_signal": "SIGHUP", "rotate_pid_file": "/run/x.pid"}));
        assert_eq!(check_keys(&dynamic, &ok).unwrap(), Vec::<&str>::new());
        assert!(check_keys(&dynamic, &attrs(serde_json::json!({"rotate_command": ["true"]}))).unwrap().is_empty());
        let a = attrs(serde_json::json!({"colour": "red", "audience": "x", "ttl": "1m"}));
        let mut pending = check_keys(&dynamic, &a).unwrap();
        pending.sort();
        assert_eq!(pending, ["audience", "colour"]);
        assert!(check_for_issuer(IssuerKind::Exec, pending.iter().copied()).is_ok());
        let e = check_for_issuer(IssuerKind::Jwt, pending.iter().copied()).unwrap_err();
        assert_eq!(e.key, "colour");
        let e = check_for_issuer(IssuerKind::Jwt, ["audiance"]).unwrap_err();
        assert!(e.message.contains("did you mean `audience`"), "{e:?}");
        // `allow` and templates are judged when the document is read.
        assert!(check_keys(&SecretKind::Static, &attrs(serde_json::json!({"allow": [{"unit": "a.service"}]}))).is_ok());
        let e =
            check_keys(&SecretKind::Static, &attrs(serde_json::json!({"allow": [{"unti": "a.service"}]}))).unwrap_err();
        assert!(e.key == "allow" && e.message.contains("did you mean `unit`"), "{e:?}");
        let e = check_keys(&dynamic, &attrs(serde_json::json!({"subject": "{{workload.pod}}"}))).unwrap_err();
        assert_eq!(e.key, "subject", "{e:?}");
    }

    #[test]
    fn overhang_keys_are_judged_at_load() {
        let dynamic = SecretKind::Dynamic { link: "base/x".into() };
        let ok = attrs(serde_json::json!({"max_overhang": "5s", "allow_overhang": true}));
        assert!(check_keys(&dynamic, &ok).unwrap().is_empty());
        assert_eq!(overhang(&ok).unwrap(), Overhang { max: std::time::Duration::from_secs(5), allow: true });
        assert_eq!(overhang(&attrs(serde_json::json!({}))).unwrap().max, MAX_OVERHANG);
        for (bad, key) in [
            (serde_json::json!({"max_overhang": "soon"}), "max_overhang"),
            (serde_json::json!({"allow_overhang": "yes"}), "allow_overhang"),
        ] {
            let e = check_keys(&dynamic, &attrs(bad)).unwrap_err();
            assert_eq!(e.key, key, "{e:?}");
        }
        let e = check_keys(&SecretKind::Static, &attrs(serde_json::json!({"allow_overhang": true}))).unwrap_err();
        assert!(e.message.contains("not dynamic"), "{e:?}");
        let e = check_params(IssuerKind::Postgres, &attrs(serde_json::json!({"grants": [1]}))).unwrap_err();
        assert_eq!(e.key, "grants");
        let e = check_params(IssuerKind::Jwt, &attrs(serde_json::json!({"claims": "x"}))).unwrap_err();
        assert_eq!(e.key, "claims");
    }

    /// Every attribute an issuer reads is in its list, so that no valid entry is refused.
    #[test]
    fn issuer_key_lists_cover_what_the_issuers_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/issuer");
        for kind in IssuerKind::ALL {
            let file = match kind {
                IssuerKind::Openbao => dir.join("openbao.rs"),
                k => dir.join(format!("{k}.rs")),
            };
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(!text.is_empty(), "{} is missing", file.display());
            for lead in ["attr_str(\"", "attrs.get(\"", "attributes().get(\"", "attr_text(attrs, \""] {
                for (i, _) in text.match_indices(lead) {
                    let rest = &text[i + lead.len()..];
                    let key = &rest[..rest.find('"').unwrap_or(0)];
                    let known = is_leasefs_key(key) || issuer_keys(kind).contains(&key) || kind == IssuerKind::Exec;
                    assert!(known, "{} reads attributes.{key}, which the {kind} list lacks", file.display());
                }
            }
        }
    }
}
