//! Fuzz target: the configuration parser never panics; its errors name a position inside the text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = leasefs::config::Config::parse(std::path::Path::new("config.json"), &text) {
        assert!(e.line <= text.lines().count() + 1);
    }
});
