//! Secret values by name (`SecretFields`): a static payload, a base secret's data, an issued
//! credential. Every value sits in a `secrecy` box and is zeroized when dropped.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

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

#[cfg(test)]
mod tests {
    use super::*;

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
