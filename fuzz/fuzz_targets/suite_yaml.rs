//! Probe-suite YAML loader on arbitrary text: bounded parsing (aliases, depth, scalar sizes), schema errors with
//! locations, then expansion of whatever validated — never a panic, never unbounded memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(suite) = trapdoor_probes::suite::Suite::from_str(text, "fuzz.yaml") {
            // Expansion multiplies prompts × triggers × positions: cap what a fuzz input may ask for.
            if suite.case_count() <= 10_000 {
                let _ = suite.expand();
            }
        }
        let _ = trapdoor::gate::policy::Policy::from_str(text, "fuzz-policy.yaml");
    }
});
