//! Fuzzes the exposition parser with arbitrary bytes: it must never panic, and whatever it
//! accepts must be internally consistent. Only the parser module is compiled in, so the fuzz
//! build does not drag the agent's network stack through a sanitizer build.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/expo.rs"]
mod expo;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(e) = expo::Exposition::parse(&text) {
        for s in e.samples() {
            assert!(!s.name.is_empty());
            assert!(text.contains(s.name));
            for l in e.labels(s) {
                assert!(!l.name.is_empty());
            }
        }
    }
});
