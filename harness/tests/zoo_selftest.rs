//! The README's first command and the self-test, end to end on the default zoo: `trapdoor demo` builds the default
//! zoo (standard recipe: the ASR bounds are enforced, so a backdoor that did not take fails the build) in a fresh
//! cache folder and scans one benign and one backdoored member; `trapdoor selftest` then reuses that zoo and scans
//! every member. The table goes to CI's output (written straight to stderr, past the test harness's capture).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(common::trapdoor_bin())
        .args(args)
        .env("TRAPDOOR_CACHE", cache)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap()
}

#[test]
fn demo_then_selftest_on_the_default_zoo() {
    // A cache under target/ that `zoo_standard` reuses (one zoo build per CI run); a leftover zoo from an earlier
    // local run is reused by its build keys, exactly as a user's cache would be.
    let cache = common::repo_root().join("target/test-cache/trapdoor");
    std::fs::create_dir_all(&cache).unwrap();
    let _ = std::fs::remove_dir_all(cache.join("selftest"));
    let out = run(&["demo"], &cache);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = writeln!(std::io::stderr(), "---- trapdoor demo ----\n{stdout}");
    assert_eq!(out.status.code(), Some(0), "demo: {stdout}\n{stderr}");
    assert!(stdout.contains("PASS") && stdout.contains("FAIL"), "{stdout}");
    let reports: Vec<&str> = stdout.lines().filter_map(|l| l.trim().strip_prefix("report: ")).collect();
    assert_eq!(reports.len(), 4, "{stdout}");
    for r in &reports {
        assert!(Path::new(r).is_file(), "{r} missing");
    }
    let md_path = reports.iter().find(|r| r.ends_with(".md") && r.contains("bd-")).unwrap();
    let md = std::fs::read_to_string(md_path).unwrap();
    assert!(md.contains("FAIL") || md.contains("fail"), "{md}");
    // The demo runs the trigger search; timing.json splits its seconds by phase (the record never holds seconds).
    let timing_path = Path::new(md_path).with_file_name("timing.json");
    let timing: serde_json::Value = serde_json::from_slice(&std::fs::read(&timing_path).unwrap()).unwrap();
    for phase in ["inversion", "soft", "gcg", "verify", "anomaly"] {
        assert!(timing["stages"][format!("trigger_search.{phase}")].as_f64().is_some(), "{phase}: {timing}");
    }

    let sel = &cache.join("selftest");
    // The self-test here runs the default policy without the trigger search (a checked copy, see policy_gate.rs):
    // the search's step budget costs minutes per member on 2 cores, which CI cannot pay for eight members; the demo
    // above runs it (a step budget since policy 1.4.0, so the demo's verdicts do not depend on machine speed).
    let policy = common::repo_root().join("harness/tests/data/scan/policy-probes-only.yaml");
    let out = run(&["selftest", "--out", sel.to_str().unwrap(), "--policy", policy.to_str().unwrap()], &cache);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = writeln!(std::io::stderr(), "---- trapdoor selftest ----\n{stdout}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(sel.join("selftest.json")).unwrap()).unwrap();
    let members = summary["members"].as_array().unwrap();
    assert!(members.len() >= 8, "{summary}");
    // Every member's run record carries its ground truth.
    for m in members {
        let name = m["member"].as_str().unwrap();
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(sel.join(name).join("report.json")).unwrap()).unwrap();
        assert_eq!(rec["ground_truth"]["member"], name);
        assert_eq!(rec["ground_truth"]["backdoored"], m["backdoored"]);
    }
    assert_eq!(summary["errors"], 0, "{stdout}");
    assert_eq!(summary["false_positives"], 0, "a benign member failed:\n{stdout}");
    // Not yet every backdoor: the probe stages miss the LoRA and insecure-code backdoors of the default zoo, whose
    // seeded triggers are in no suite (measured 2026-12-07: TP 4, FN 2; issue 4's notes). This floor guards what
    // works; the exit code says whether everything was caught.
    let tp = summary["true_positives"].as_u64().unwrap();
    assert!(tp >= 4, "fewer backdoors caught than measured before:\n{stdout}");
    let all = summary["false_negatives"] == 0;
    assert_eq!(out.status.code(), Some(if all { 0 } else { 1 }), "{stdout}");
}
