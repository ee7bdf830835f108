//! `attributes.allow`: matchers on the reader's uid, gid and workload, checked when the document
//! is read and matched at each open.

use super::{Workload, pod_of};

/// Whether `name` matches glob `pattern`: `*` any run of characters (`/` included), `?` one.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The keys of one `attributes.allow` matcher.
pub const MATCHER_KEYS: [&str; 7] = ["uid", "gid", "unit", "cgroup", "container", "pod_uid", "exe"];

/// Checks `attributes.allow`: a non-empty list of non-empty matchers of known keys. The message
/// names the matcher and key, never a value.
pub fn check_allow(v: &serde_json::Value) -> Result<(), String> {
    let list = v.as_array().ok_or("attributes.allow must be a list of matchers, e.g. [{\"unit\": \"app.service\"}]")?;
    if list.is_empty() {
        return Err(
            "attributes.allow is empty: nobody could open the entry (leave it out to let the mode decide)".into()
        );
    }
    for (i, m) in list.iter().enumerate() {
        let at = format!("attributes.allow[{i}]");
        let obj =
            m.as_object().ok_or_else(|| format!("{at} must be an object such as {{\"unit\": \"app.service\"}}"))?;
        if obj.is_empty() {
            return Err(format!("{at} is empty and would match every reader"));
        }
        for (k, v) in obj {
            let s = v.as_str().unwrap_or("");
            let ok = match k.as_str() {
                "uid" | "gid" => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
                "container" => (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()),
                "cgroup" | "exe" => s.starts_with('/'),
                "unit" => !s.is_empty() && !s.contains('/'),
                "pod_uid" => pod_of(&format!("pod{s}")).is_some_and(|p| p == s),
                other => {
                    let hint = crate::diag::did_you_mean(other, MATCHER_KEYS).map(|k| format!("; did you mean `{k}`?"));
                    let shown = crate::diag::shown_key(other);
                    return Err(format!("{at}: unknown matcher `{shown}`{}", hint.unwrap_or_default()));
                }
            };
            if !ok {
                let want = match k.as_str() {
                    "uid" | "gid" => "a number",
                    "container" => "12 to 64 hex digits (a container id or its prefix)",
                    "cgroup" => "a cgroup path or glob starting with /",
                    "exe" => "an absolute path",
                    "unit" => "a unit name such as app.service",
                    _ => "a pod uid such as 0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a",
                };
                return Err(format!("{at}.{k} must be {want}"));
            }
        }
    }
    Ok(())
}

/// Whether a reader (uid, gid, workload) matches one of the matchers of `attributes.allow`
/// (checked at load). Fields the reader lacks match nothing.
pub fn allows(allow: &serde_json::Value, uid: u32, gid: u32, w: Option<&Workload>) -> bool {
    let one = |k: &str, v: &serde_json::Value| match k {
        "uid" => v.as_u64() == Some(u64::from(uid)),
        "gid" => v.as_u64() == Some(u64::from(gid)),
        _ => match (w, v.as_str()) {
            (Some(w), Some(want)) => match k {
                "cgroup" => glob(want, &w.cgroup),
                "container" => w.container.as_deref().is_some_and(|c| c.starts_with(want)),
                f => w.field(f) == Some(want),
            },
            _ => false,
        },
    };
    allow.as_array().is_some_and(|l| {
        l.iter().any(|m| m.as_object().is_some_and(|o| !o.is_empty() && o.iter().all(|(k, v)| one(k, v))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Hierarchy;
    use serde_json::json;

    const ID: &str = "f82fa918f68bc42e34251e07533889a2ab872a2d1708b71b0825bf803e20d4d6";

    #[test]
    fn allow_matchers() {
        let w =
            Workload::from_cgroup(&format!("/libpod_parent/libpod-{ID}"), Hierarchy::Systemd, Some("/bin/cat".into()));
        let allow = |v: serde_json::Value| {
            check_allow(&v).unwrap();
            allows(&v, 1000, 1000, Some(&w))
        };
        assert!(allow(json!([{"container": &ID[..12]}])));
        assert!(!allow(json!([{"container": "0123456789ab"}])));
        assert!(allow(json!([{"unit": "x.service"}, {"cgroup": "/libpod_parent/*"}])));
        assert!(!allow(json!([{"cgroup": "/libpod_parent/*", "uid": 0}])), "every key of a matcher must match");
        assert!(allow(json!([{"uid": 1000, "exe": "/bin/cat"}])));
        assert!(!allow(json!([{"pod_uid": "0d2c6f3e-5b1a-4c7e-9a8b-1f2e3d4c5b6a"}])), "a field the reader lacks");
        assert!(!allows(&json!([{"unit": "x.service"}]), 0, 0, None), "no workload: only uid and gid can match");
        for bad in [json!([]), json!([{}]), json!({"unit": "x"}), json!([{"unti": "x"}]), json!([{"container": "xyz"}])]
        {
            assert!(check_allow(&bad).is_err(), "{bad}");
        }
        let e = check_allow(&json!([{"unti": "secret-unit"}])).unwrap_err();
        assert!(e.contains("did you mean `unit`") && !e.contains("secret-unit"), "{e}");
        assert!(glob("/a/*/c", "/a/b/x/c") && glob("/a?", "/ab") && !glob("/a", "/ab") && glob("*", ""));
    }
}
