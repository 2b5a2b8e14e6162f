//! `trapdoor scan` errors: exit 2 with one line naming the file, flag or model, before any model is run.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, trapdoor_bin};

fn zoo(name: &str) -> String {
    fixtures().join("zoo-dev").join(name).display().to_string()
}

fn scan(out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(trapdoor_bin());
    cmd.args(["scan", "--candidate", &zoo("stories-clean-ft"), "--baseline", &zoo("stories-base"), "--out"]).arg(out);
    cmd.args(extra).output().expect("run trapdoor")
}

/// Exit 2, exactly one line on stderr, containing every `needle`; nothing written.
fn assert_error(out: &Output, dir: &Path, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` in: {err}");
    }
    assert!(!dir.join("report.json").exists(), "no report on an error");
}

#[test]
fn malformed_suite() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("bad.yaml");
    std::fs::write(
        &suite,
        "schema: trapdoor.suite/v1\nname: bad\nversion: 1.0.0\nprobes:\n  - kind: drift\n    id: d\n    promts: [a]\n",
    )
    .unwrap();
    let out = scan(&dir.path().join("out"), &["--suite", suite.to_str().unwrap()]);
    assert_error(&out, &dir.path().join("out"), &["bad.yaml", "promts"]);
}

#[test]
fn duplicate_suite_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    let body = "schema: trapdoor.suite/v1\nname: same\nversion: 1.0.0\nprobes:\n  - kind: drift\n    id: d\n    prompts: [a, b]\n";
    std::fs::write(&a, body).unwrap();
    std::fs::write(&b, body).unwrap();
    let out = scan(&dir.path().join("out"), &["--suite", a.to_str().unwrap(), "--suite", b.to_str().unwrap()]);
    assert_error(&out, &dir.path().join("out"), &["`same`", "a.yaml", "b.yaml"]);
}

#[test]
fn policy_naming_an_unknown_metric() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(
        &p,
        "schema: trapdoor.policy/v1\nname: p\nversion: 1.0.0\nrules:\n  - id: r\n    decision: fail\n    when:\n      kind: test\n      metrics: [js_meen]\n",
    )
    .unwrap();
    let out = scan(&dir.path().join("out"), &["--policy", p.to_str().unwrap()]);
    assert_error(&out, &dir.path().join("out"), &["--policy", "policy.yaml", "js_meen"]);
}

#[test]
fn vocabulary_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    // A llama with a 300-token vocabulary against stories260K's 512: refused before the audit or any load.
    let other = fixtures().join("parity/llama").display().to_string();
    let out = Command::new(trapdoor_bin())
        .args(["scan", "--candidate", &other, "--baseline", &zoo("stories-base"), "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_error(&out, &dir.path().join("out"), &["vocabulary mismatch", "300", "512"]);
    if let Some(gemma) = common::gemma_gguf("scan vocabulary_mismatch (gemma)") {
        let out = Command::new(trapdoor_bin())
            .args(["scan", "--candidate", &zoo("stories-base"), "--baseline", gemma.to_str().unwrap(), "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert_error(&out, &dir.path().join("out"), &["vocabulary mismatch", "262144"]);
    }
}

#[test]
fn missing_model_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(trapdoor_bin())
        .args(["scan", "--candidate", "./no/such/model", "--baseline", &zoo("stories-base"), "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_error(&out, &dir.path().join("out"), &["no/such/model"]);
    let out = scan(&dir.path().join("out"), &["--adapter", "./no/such/adapter"]);
    assert_error(&out, &dir.path().join("out"), &["no/such/adapter"]);
}

#[test]
fn bad_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("out");
    assert_error(&scan(&o, &["--device", "tpu"]), &o, &["--device", "tpu"]);
    assert_error(&scan(&o, &["--dtype", "f8"]), &o, &["--dtype", "f8"]);
    assert_error(&scan(&o, &["--max-new-tokens", "0"]), &o, &["--max-new-tokens 0"]);
    assert_error(&scan(&o, &["--batch-size", "0"]), &o, &["--batch-size 0"]);
    assert_error(&scan(&o, &["--lock", "./no/such.lock"]), &o, &["--lock", "no/such.lock"]);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(trapdoor_bin())
        .args(["scan", "--candidate", &zoo("stories-clean-ft"), "--baseline", &zoo("stories-base"), "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert_error(&out, &o, &["--out", "a-file"]);
    // clap's own usage errors (a number that is not one) also exit 2.
    let out = scan(&o, &["--seed", "abc"]);
    assert_eq!(out.status.code(), Some(2));
}
