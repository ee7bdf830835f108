//! Fuzz target: path mapping accepts only segments that cannot escape or confuse the tree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(segs) = leasefs::paths::split_path(text, true) {
        for seg in &segs {
            assert!(!seg.is_empty() && seg != "." && seg != ".." && seg != ".leasefs");
            assert!(!seg.contains('/') && !seg.contains('\0') && !seg.chars().any(char::is_control));
            assert!(seg.len() <= leasefs::paths::MAX_SEGMENT);
        }
        // Joining and splitting again is stable.
        if !segs.is_empty() {
            assert_eq!(leasefs::paths::split_path(&segs.join("/"), false).ok(), Some(segs.clone()));
        }
    }
});
