//! `trapdoor scan` end to end on the stories260K zoo: the shipped default suites and the default policy, through
//! the binary (exit codes, report.md) and the library (the record), plus the contract that every shipped suite is
//! checked and scanned. Each default scan of the stories pair takes well under a minute on 2 cores.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{fixtures, trapdoor_bin};
use trapdoor::gate::scan::{run_scan, scan_loaded, ScanConfig, ScanError};
use trapdoor::runtime::{LoadOptions, Model};
use trapdoor_reports::record::{AuditSection, Decision, Finding, Severity, StageStatus};

fn zoo(name: &str) -> String {
    fixtures().join("zoo-dev").join(name).display().to_string()
}

fn scan_cli(candidate: &str, adapter: Option<&str>, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(trapdoor_bin());
    cmd.args(["scan", "--candidate", candidate, "--baseline", &zoo("stories-base"), "--out"]).arg(out);
    if !extra.contains(&"--policy") {
        cmd.arg("--policy").arg(probes_only_policy());
    }
    if let Some(a) = adapter {
        cmd.args(["--adapter", a]);
    }
    cmd.args(extra).output().expect("run trapdoor")
}

/// The default policy without the trigger search (which has its own tests); see the file's header.
fn probes_only_policy() -> PathBuf {
    common::repo_root().join("harness/tests/data/scan/policy-probes-only.yaml")
}

fn new_cfg(candidate: String, baseline: String) -> ScanConfig {
    let mut cfg = ScanConfig::new(candidate, baseline);
    cfg.policy = trapdoor::gate::policy::Policy::from_path(&probes_only_policy()).unwrap();
    cfg
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The backdoored LoRA scanned once through the binary, shared by the tests that read its reports.
fn bd_lora_scan() -> &'static (Output, PathBuf) {
    static RUN: OnceLock<(Output, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = scan_cli(&zoo("stories-base"), Some(&zoo("stories-bd-lora-adapter")), &dir, &[]);
        (out, dir)
    })
}

#[test]
fn backdoored_lora_fails_naming_its_trigger() {
    let (out, dir) = bd_lora_scan();
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("verdict: fail\n"), "{}", text(&out.stdout));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.len() <= 60 * 1024, "report.md is {} bytes", md.len());
    let why = &md[..md.find("## ").and_then(|i| md[i + 3..].find("## ").map(|j| i + 3 + j)).unwrap_or(md.len())];
    assert!(why.contains("`cf tq`"), "the planted trigger is named in the verdict's reasons:\n{why}");
    for f in ["report.json", "report.md", "samples.csv", "junit.xml", "trapdoor-manifest.json", "timing.json"] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let timing: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("timing.json")).unwrap()).unwrap();
    assert!(timing["distinct_prompts"].as_u64().unwrap() > 0 && timing["stages"]["generate"].as_f64().is_some());
}

#[test]
fn rerun_with_the_same_seed_is_byte_identical() {
    let (out, dir) = bd_lora_scan();
    assert_eq!(out.status.code(), Some(1));
    // The same scan again, through the library.
    let mut cfg = new_cfg(zoo("stories-base"), zoo("stories-base"));
    cfg.adapter = Some(PathBuf::from(zoo("stories-bd-lora-adapter")));
    let again = tempfile::tempdir().unwrap();
    cfg.out = Some(again.path().to_path_buf());
    let r = run_scan(&cfg).unwrap();
    assert_eq!(r.decision, Decision::Fail);
    let a = std::fs::read(dir.join("report.json")).unwrap();
    let b = std::fs::read(again.path().join("report.json")).unwrap();
    // The CLI records its argv; the library call recorded none. Everything else must match byte for byte.
    let mut va: serde_json::Value = serde_json::from_slice(&a).unwrap();
    let vb: serde_json::Value = serde_json::from_slice(&b).unwrap();
    va["command"] = vb["command"].clone();
    assert!(va == vb, "report.json differs between two runs with the same seed");
    // And the library's own rerun is byte-identical, command included.
    let third = tempfile::tempdir().unwrap();
    cfg.out = Some(third.path().to_path_buf());
    run_scan(&cfg).unwrap();
    assert_eq!(b, std::fs::read(third.path().join("report.json")).unwrap());
}

#[test]
fn benign_full_finetune_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = scan_cli(&zoo("stories-clean-ft"), None, dir.path(), &["--strict"]);
    assert_eq!(out.status.code(), Some(0), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("verdict: pass\n"), "{}", text(&out.stdout));
}

#[test]
fn benign_lora_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = scan_cli(&zoo("stories-base"), Some(&zoo("stories-clean-lora-adapter")), dir.path(), &["--strict"]);
    assert_eq!(out.status.code(), Some(0), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("verdict: pass\n"), "{}", text(&out.stdout));
}

#[test]
fn tampered_tokenizer_fails_through_the_audit_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let out = scan_cli(&zoo("stories-tok-tamper"), None, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "a finding, not an error: {}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"]["decision"], "fail");
    assert!(r["audit"]["findings"].as_array().unwrap().iter().any(|f| f["rule"] == "tokenizer/vocab-swap"));
    assert_eq!(r["stages"]["probes"]["status"], "skipped", "no weights loaded");
    assert!(r["stages"]["probes"]["reason"].as_str().unwrap().contains("no weights were loaded"));
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("vocab-swap"), "{md}");
}

/// The other side of the vocabulary rule: after loading, a token → id map that differs is a skipped probes stage
/// when the audit reported it, and an error when it did not.
#[test]
fn differing_token_maps_after_loading() {
    let opts = LoadOptions::default();
    let tamper = Model::load(&zoo("stories-tok-tamper"), &opts).unwrap();
    let base = Model::load(&zoo("stories-base"), &opts).unwrap();
    let cfg = new_cfg(zoo("stories-tok-tamper"), zoo("stories-base"));
    let e = scan_loaded(&cfg, &tamper, &base, AuditSection::default()).unwrap_err();
    assert!(matches!(e, ScanError::VocabularyMismatch(_)), "{e}");
    assert!(e.to_string().contains("different ids") && !e.to_string().contains('\n'), "{e}");
    let finding = Finding {
        rule: "tokenizer/vocab-swap".into(),
        severity: Severity::Critical,
        file: "tokenizer.json".into(),
        message: "swapped".into(),
        detail: serde_json::Value::Null,
    };
    let r = scan_loaded(&cfg, &tamper, &base, AuditSection { passed: Some(false), findings: vec![finding] }).unwrap();
    assert_eq!(r.decision, Decision::Fail);
    assert!(
        matches!(&r.record.stages.probes, StageStatus::Skipped { reason } if reason.contains("tokenizer/vocab-swap"))
    );
    assert!(r.record.cases.is_empty());
}

/// Contract: every shipped suite passes `suite check` and runs in a scan of the stories pair without case errors.
#[test]
fn every_shipped_suite_checks_and_scans() {
    let out = Command::new(trapdoor_bin()).args(["suite", "check", "--shipped"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (out, dir) = bd_lora_scan();
    assert!(out.status.code() == Some(1));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let suites: Vec<&str> = r["suites"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap()).collect();
    for (file, _) in trapdoor_probes::shipped::SHIPPED {
        assert!(suites.contains(&format!("embedded:{file}").as_str()), "{file} in {suites:?}");
        let name = file.trim_end_matches(".yaml");
        let cases: Vec<&serde_json::Value> =
            r["cases"].as_array().unwrap().iter().filter(|c| c["suite"] == name).collect();
        assert!(!cases.is_empty(), "{name} produced cases");
        assert!(
            cases.iter().all(|c| c["error"].is_null() && c["candidate"].is_object() && c["divergence"].is_object()),
            "{name}"
        );
    }
    assert_eq!(r["stages"]["probes"]["status"], "ran");
    let tests = r["tests"].as_array().unwrap();
    assert!(tests.iter().all(|t| t["status"] != "insufficient_samples"), "every shipped probe has enough prompts");
}
