//! Diagnostics about input files: an error that names the file and, where known, the line and column — never a value.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error that names the file and, where known, the line and column.
#[derive(Debug, Clone)]
pub struct FileError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

impl std::error::Error for FileError {}

impl FileError {
    pub fn whole(file: &Path, message: impl Into<String>) -> Self {
        FileError { file: file.to_path_buf(), line: 0, column: 0, message: message.into() }
    }

    /// A serde_json error at its position. serde's message may quote the input (`invalid type:
    /// string "hunter2"`), so only its category and, for type errors, the expected type are kept.
    pub fn from_json(file: &Path, e: &serde_json::Error) -> Self {
        FileError { file: file.to_path_buf(), line: e.line(), column: e.column(), message: json_cause(e) }
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), control characters dropped, and
/// how much was left out.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end].chars().filter(|c| !c.is_control()).collect();
    if end < text.len() {
        out.push_str(&format!("… ({} more bytes)", text.len() - end));
    }
    out
}

/// Line and column (both from 1, the column in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..].chars().count() + 1;
    (line, col)
}

/// Edit distance (insertions, deletions, substitutions, and swaps of two neighbours) between two
/// keys, counted in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i-2, i-1 and i of the optimal-string-alignment table.
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// Whether `key` is a near miss of `known` (a likely typo): within one edit for names of up to
/// five characters, two for longer ones, and not the same name.
pub fn near_miss(key: &str, known: &str) -> bool {
    let limit = if known.chars().count() <= 5 { 1 } else { 2 };
    key != known && edit_distance(&key.to_ascii_lowercase(), known) <= limit
}

/// The closest of `known` that `key` is a near miss of.
pub fn did_you_mean<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known.into_iter().filter(|k| near_miss(key, k)).min_by_key(|k| edit_distance(key, k))
}

/// A key as it may appear in an error: control characters escaped, at most 64 characters.
pub fn shown_key(key: &str) -> String {
    let mut s: String = key.chars().take(64).flat_map(char::escape_debug).collect();
    if key.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// serde's `unknown field `x`, expected one of `a`, `b`` as `unknown key `x`; did you mean `a`?`
/// when `x` is a near miss of one of them.
fn suggest_field(t: &str) -> Option<String> {
    let rest = t.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let key = shown_key(key);
    Some(match did_you_mean(&key, expected.iter().copied()) {
        Some(k) => format!("unknown key `{key}`; did you mean `{k}`?"),
        None if expected.is_empty() => format!("unknown key `{key}`"),
        None => format!("unknown key `{key}` (known: {})", expected.join(", ")),
    })
}

/// What went wrong in a JSON text, without quoting any of it: serde_json's messages embed the
/// offending value (`invalid type: string "hunter2", expected u32`); only the parts that name
/// types, fields and positions are kept.
pub fn json_cause(e: &serde_json::Error) -> String {
    let t = e.to_string();
    let t = match t.rfind(" at line ") {
        Some(i) => &t[..i],
        None => &t[..],
    };
    redact_json_message(t)
}

/// Rewrites a serde_json message so that it holds no input: quoted strings and literal values
/// become their type.
pub fn redact_json_message(t: &str) -> String {
    // `invalid type: string "x", expected …` / `invalid value: integer `5`, expected …`
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = t.strip_prefix(lead) {
            let kind = rest.split([' ', ',']).next().unwrap_or("value");
            let expected = rest.rfind(", expected ").map(|i| &rest[i..]).unwrap_or("");
            return format!("{lead}{kind}{expected}");
        }
    }
    // `unknown field `x`, expected one of …`: field names are keys, not values.
    if let Some(m) = suggest_field(t) {
        return m;
    }
    if t.starts_with("unknown field") || t.starts_with("missing field") || t.starts_with("duplicate field") {
        return t.to_string();
    }
    // Syntax errors (`expected value`, `EOF while parsing …`, `invalid escape`, …) quote nothing,
    // except `unknown variant `x``.
    if let Some(rest) = t.strip_prefix("unknown variant ") {
        let expected = rest.find(", expected ").map(|i| &rest[i..]).unwrap_or("");
        return format!("unknown variant{expected}");
    }
    if t.contains('"') || t.contains('`') {
        return "invalid JSON".into();
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_types_never_values() {
        let e = serde_json::from_str::<u32>("\"hunter2\"").unwrap_err();
        let m = json_cause(&e);
        assert!(!m.contains("hunter2") && m.contains("string") && m.contains("u32"), "{m}");
        let e = serde_json::from_str::<bool>("12345678").unwrap_err();
        assert!(!json_cause(&e).contains("12345678"), "{}", json_cause(&e));
        let e = serde_json::from_str::<serde_json::Value>("{\"a\": }").unwrap_err();
        assert_eq!(json_cause(&e), "expected value");
    }

    #[test]
    fn near_misses_are_suggested() {
        assert_eq!(edit_distance("rotate_signl", "rotate_signal"), 1);
        assert_eq!(edit_distance("mdoe", "mode"), 1);
        assert_eq!(did_you_mean("rotate_signl", ["rotate_at", "rotate_signal"]), Some("rotate_signal"));
        assert_eq!(did_you_mean("colour", ["format", "owner", "group", "mode"]), None);
        assert_eq!(did_you_mean("url", ["ttl"]), None, "two edits from a short key is not a near miss");
        assert!(!near_miss("ttl", "ttl"));
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct C {
            allow_other: Option<bool>,
            state_dir: Option<String>,
        }
        let e = serde_json::from_str::<C>(r#"{"alow_other": true}"#).unwrap_err();
        assert_eq!(json_cause(&e), "unknown key `alow_other`; did you mean `allow_other`?");
        let e = serde_json::from_str::<C>(r#"{"colour": true}"#).unwrap_err();
        assert_eq!(json_cause(&e), "unknown key `colour` (known: allow_other, state_dir)");
    }
}
