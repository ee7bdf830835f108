//! Path and ownership rules for secret entries: splitting `a:b:c` safely, octal modes, user and group names.

use std::ffi::CString;

/// Longest path segment accepted (Linux NAME_MAX).
pub const MAX_SEGMENT: usize = 255;
/// Longest whole path accepted.
pub const MAX_PATH: usize = 4096;
/// Most segments (directory levels) in one path.
pub const MAX_DEPTH: usize = 64;

/// Characters that change how text is displayed without being seen — bidirectional overrides
/// and isolates, zero-width characters, the byte-order mark — so that a name could pose as
/// another (`rtl\u{202e}x`).
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}' | '\u{061C}' | '\u{180E}' | '\u{00AD}')
}

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
        if seg.chars().any(is_invisible) {
            return Err("path contains an invisible or bidirectional-override character".into());
        }
        if seg == ".leasefs" {
            return Err("path segment \".leasefs\" is reserved for the control directory".into());
        }
        out.push(seg.to_string());
        if out.len() > MAX_DEPTH {
            return Err(format!("path has more than {MAX_DEPTH} segments"));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_colon_or_slash() {
        assert_eq!(split_path("dynamic:aws:temp-api", false).unwrap(), ["dynamic", "aws", "temp-api"]);
        assert_eq!(split_path("app/db/password", false).unwrap(), ["app", "db", "password"]);
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
            "rtl\u{202e}txt.exe",
            "a:zero\u{200b}width",
            "\u{feff}bom",
        ] {
            assert!(split_path(bad, false).is_err(), "{bad:?} accepted");
        }
        assert!(split_path(&"x".repeat(300), false).is_err());
        assert!(split_path(&"a:".repeat(3000), false).is_err());
        assert!(split_path(&vec!["a"; 65].join(":"), false).is_err(), "65 levels");
        assert!(split_path(&vec!["a"; 64].join(":"), false).is_ok(), "64 levels");
        assert!(split_path("café:日本", false).is_ok(), "ordinary non-ASCII names are fine");
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
}
