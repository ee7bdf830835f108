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
}
