//! Fuzz target: the secret document parser never panics, and every secret it accepts has a safe path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = leasefs::source::document::parse_file(std::path::Path::new("fuzz.json"), &text, std::time::SystemTime::UNIX_EPOCH);
    for s in &parsed.secrets {
        assert!(!s.path().is_empty());
        for seg in s.segments() {
            assert!(!seg.is_empty() && seg != "." && seg != ".." && !seg.chars().any(char::is_control));
        }
    }
    for p in &parsed.problems {
        assert!(p.line <= text.lines().count() + 1);
    }
});
