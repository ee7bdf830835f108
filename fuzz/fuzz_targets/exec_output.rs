//! Fuzz target: the exec issuer's output parser never panics and never quotes the output in its errors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = leasefs::issuer::exec::parse_output(data) {
        // A distinctive marker in the input must never reach the message (it could be a secret).
        let text = String::from_utf8_lossy(data);
        if text.contains("SECRETMARK") {
            assert!(!e.contains("SECRETMARK"), "{e}");
        }
    }
});
