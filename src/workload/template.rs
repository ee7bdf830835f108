//! `{{workload.*}}` and `{{requester.uid}}` templates in a `jwt` entry's `subject`, `audience` and
//! `claims`: a field the reader lacks is an error, never an empty string.

use super::{FIELDS, Hierarchy, Workload};

/// Renders `{{workload.FIELD}}` and `{{requester.uid}}` / `{{requester.gid}}` in `text`; a field
/// this reader lacks (or no workload at all) is an error naming it, never an empty string.
pub fn render(text: &str, uid: u32, gid: u32, w: Option<&Workload>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find("}}").ok_or("a template opens with {{ and does not close with }}")?;
        let name = after[..end].trim();
        let value = match name {
            "requester.uid" => uid.to_string(),
            "requester.gid" => gid.to_string(),
            _ => match name.strip_prefix("workload.") {
                Some(f) if FIELDS.contains(&f) => match w.and_then(|w| w.field(f)) {
                    Some(v) => v.to_string(),
                    None => return Err(format!("this reader has no {name}")),
                },
                _ => {
                    return Err(format!(
                        "unknown template field {name:?} (workload.<{}>, requester.uid)",
                        FIELDS.join("|")
                    ));
                }
            },
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `render` over every string in a JSON value (a claim's value, an audience list).
pub fn render_value(
    v: &serde_json::Value,
    uid: u32,
    gid: u32,
    w: Option<&Workload>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) if s.contains("{{") => Value::String(render(s, uid, gid, w)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_value(x, uid, gid, w)).collect::<Result<_, _>>()?),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, x)| Ok((k.clone(), render_value(x, uid, gid, w)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The attributes whose strings may hold templates (the `jwt` issuer's).
pub const TEMPLATED: [&str; 3] = ["subject", "audience", "claims"];

/// Renders the templated attributes of an entry for a reader, to check that every field is
/// known for it (the open is refused otherwise) before anything is issued.
pub fn check_templates(
    attrs: &serde_json::Map<String, serde_json::Value>,
    uid: u32,
    gid: u32,
    w: Option<&Workload>,
) -> Result<(), String> {
    for key in TEMPLATED {
        if let Some(v) = attrs.get(key) {
            render_value(v, uid, gid, w).map_err(|e| format!("attributes.{key}: {e}"))?;
        }
    }
    Ok(())
}

/// Whether an entry's attributes name a template anywhere a template is rendered.
pub fn has_templates(attrs: &serde_json::Map<String, serde_json::Value>) -> bool {
    fn any(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains("{{"),
            serde_json::Value::Array(a) => a.iter().any(any),
            serde_json::Value::Object(o) => o.values().any(any),
            _ => false,
        }
    }
    TEMPLATED.iter().any(|k| attrs.get(*k).is_some_and(any))
}

/// Checks the templates of an entry at load: every field named is one leasefs knows.
pub fn check_template_names(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    let all = Workload {
        cgroup: "/".into(),
        unit: Some(String::new()),
        container: Some(String::new()),
        pod_uid: Some(String::new()),
        exe: Some(String::new()),
        hierarchy: Hierarchy::Unified,
    };
    check_templates(attrs, 0, 0, Some(&all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "f82fa918f68bc42e34251e07533889a2ab872a2d1708b71b0825bf803e20d4d6";

    #[test]
    fn templates_render_known_fields_and_refuse_the_rest() {
        let w = Workload::from_cgroup(&format!("/kubepods/besteffort/podabcdef12-3456/{ID}"), Hierarchy::Unified, None);
        let r = render("spiffe://x/pod/{{ workload.pod_uid }}/u{{requester.uid}}", 7, 8, Some(&w));
        assert_eq!(r.unwrap(), "spiffe://x/pod/abcdef12-3456/u7");
        assert!(render("{{workload.unit}}", 7, 8, Some(&w)).unwrap_err().contains("no workload.unit"));
        assert!(render("{{workload.pod_uid}}", 7, 8, None).is_err());
        assert!(render("{{workload.nope}}", 7, 8, Some(&w)).is_err());
        assert!(render("{{workload.unit", 7, 8, Some(&w)).is_err());
        let v = render_value(&json!({"a": ["{{requester.uid}}", 1]}), 7, 8, None).unwrap();
        assert_eq!(v, json!({"a": ["7", 1]}));
        let attrs = json!({"subject": "{{workload.container}}", "claims": {"x": "{{workload.bogus}}"}});
        assert!(check_template_names(attrs.as_object().unwrap()).unwrap_err().contains("attributes.claims"));
        assert!(has_templates(attrs.as_object().unwrap()));
        assert_eq!(w.env().len(), 3, "cgroup, container, pod_uid: {:?}", w.env());
    }
}
