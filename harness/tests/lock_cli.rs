//! `--lock` / `--baseline-lock` on the two-model commands (`diff`, `invert`, `scan`): both models are verified
//! against their locks before either is loaded; a mismatch is one line naming the flag and the file, exit 2.
//! "Before loading" is shown by truncating the weights: the loader would fail on them with its own error, and the
//! lock error comes instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

fn zoo(name: &str) -> PathBuf {
    common::fixtures().join("zoo-dev").join(name)
}

fn trapdoor<S: AsRef<str>>(args: &[S]) -> Output {
    std::process::Command::new(common::trapdoor_bin()).args(args.iter().map(|a| a.as_ref())).output().unwrap()
}

fn ok<S: AsRef<str> + std::fmt::Debug>(args: &[S]) {
    let out = trapdoor(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Exit 2 with one line on stderr containing every needle; returns the line.
fn fails<S: AsRef<str> + std::fmt::Debug>(args: &[S], needles: &[&str]) -> String {
    let out = trapdoor(args);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
    err
}

/// A writable copy of a fixture folder.
fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        let mut perms = std::fs::metadata(&to).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&to, perms).unwrap();
    }
}

fn lock(model: &Path, adapter: Option<&Path>, out: &Path) {
    let mut args = vec!["lock", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    ok(&args);
}

/// Cut a weights file in half: still the same name, no longer loadable.
fn truncate(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, &bytes[..bytes.len() / 2]).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writable copies of a backdoored candidate and its base in `dir`, each locked.
struct LockedPair {
    cand: PathBuf,
    base: PathBuf,
    cand_lock: PathBuf,
    base_lock: PathBuf,
}

fn locked_pair(dir: &Path) -> LockedPair {
    let (cand, base) = (dir.join("cand"), dir.join("base"));
    copy_model(&zoo("stories-bd-word"), &cand);
    copy_model(&zoo("stories-base"), &base);
    let (cand_lock, base_lock) = (dir.join("cand.lock"), dir.join("base.lock"));
    lock(&cand, None, &cand_lock);
    lock(&base, None, &base_lock);
    LockedPair { cand, base, cand_lock, base_lock }
}

/// A command line: `head` then `extra`.
fn command(head: &[&str], extra: &[&str]) -> Vec<String> {
    head.iter().chain(extra).map(|a| a.to_string()).collect()
}

/// Truncates the baseline's weights, then the candidate's, and checks at each step that a lock is verified before
/// any model is loaded: the lock's mismatch is reported, not the loader's error (which is what comes without locks).
fn locks_are_verified_before_loading(p: &LockedPair, run: impl Fn(&[&str]) -> Vec<String>) {
    let both = ["--lock", s(&p.cand_lock), "--baseline-lock", s(&p.base_lock)];
    truncate(&p.base.join("model.safetensors"));
    let load_err = fails(&run(&[]), &["model.safetensors"]);
    assert!(!load_err.contains("lock"), "{load_err}");
    fails(&run(&both), &["--baseline-lock", "base.lock", "changed model.safetensors"]);

    // The candidate's lock fails first (checked before anything is loaded).
    truncate(&p.cand.join("model.safetensors"));
    fails(&run(&both), &["--lock", "cand.lock", "changed model.safetensors"]);
}

#[test]
fn diff_verifies_both_models_before_loading_either() {
    let d = tempfile::tempdir().unwrap();
    let p = locked_pair(d.path());
    let (cl, bl) = (&p.cand_lock, &p.base_lock);
    let diff =
        |extra: &[&str]| command(&["diff", "--candidate", s(&p.cand), "--baseline", s(&p.base), "--top", "1"], extra);

    // Good locks pass, each on its own and together.
    ok(&diff(&["--lock", s(cl)]));
    ok(&diff(&["--lock", s(cl), "--baseline-lock", s(bl)]));

    // Locks swapped: the candidate's weights are not the baseline's.
    fails(&diff(&["--lock", s(bl)]), &["--lock", "does not match the lock", "changed model.safetensors"]);
    fails(&diff(&["--baseline-lock", s(cl)]), &["--baseline-lock", "changed model.safetensors"]);

    // A lock edited by hand (one digest changed) is refused as a lock, not taken as a mismatch.
    let text = std::fs::read_to_string(cl).unwrap();
    let at = text.find("\"sha256\": \"").unwrap() + 11;
    let flipped = if &text[at..at + 1] == "0" { "1" } else { "0" };
    let edited = d.path().join("edited.lock");
    std::fs::write(&edited, format!("{}{flipped}{}", &text[..at], &text[at + 1..])).unwrap();
    fails(&diff(&["--lock", s(&edited)]), &["--lock", "edited.lock", "the lock was edited"]);

    locks_are_verified_before_loading(&p, diff);
}

#[test]
fn diff_locks_an_adapter_with_its_base_and_alone() {
    let d = tempfile::tempdir().unwrap();
    let (base, adapter) = (zoo("stories-base"), zoo("stories-bd-lora-adapter"));
    let (with_adapter, adapter_only, base_only) =
        (d.path().join("with.lock"), d.path().join("adapter.lock"), d.path().join("base.lock"));
    lock(&base, Some(&adapter), &with_adapter);
    lock(&adapter, None, &adapter_only);
    lock(&base, None, &base_only);

    // Candidate + adapter, baseline defaulting to the candidate: --lock pins both, --baseline-lock the base alone.
    let c = ["diff", "--candidate", s(&base), "--adapter", s(&adapter), "--top", "1"];
    ok(&[&c[..], &["--lock", s(&with_adapter), "--baseline-lock", s(&base_only)]].concat());
    // The base's lock lacks the adapter's files.
    fails(&[&c[..], &["--lock", s(&base_only)]].concat(), &["--lock", "extra adapter/"]);
    fails(&[&c[..], &["--baseline-lock", s(&with_adapter)]].concat(), &["--baseline-lock", "missing adapter/"]);

    // The adapter alone: --lock pins the adapter folder; there is no baseline to lock.
    let a = ["diff", "--adapter", s(&adapter), "--top", "1"];
    ok(&[&a[..], &["--lock", s(&adapter_only)]].concat());
    fails(&[&a[..], &["--lock", s(&base_only)]].concat(), &["--lock", "does not match the lock"]);
    fails(&[&a[..], &["--baseline-lock", s(&base_only)]].concat(), &["--baseline-lock", "no baseline"]);
}

#[test]
fn invert_verifies_both_models_before_loading_either() {
    let d = tempfile::tempdir().unwrap();
    let p = locked_pair(d.path());
    let invert = |extra: &[&str]| {
        let mut a = vec!["invert", "--candidate", s(&p.cand), "--baseline", s(&p.base), "--json"];
        a.extend(["--budget-seconds", "1", "--max-steps", "1", "--restarts", "1", "--max-targets", "1"]);
        a.extend(["--gcg-steps", "1"]);
        command(&a, extra)
    };

    ok(&invert(&["--lock", s(&p.cand_lock), "--baseline-lock", s(&p.base_lock)]));
    fails(&invert(&["--lock", s(&p.base_lock)]), &["--lock", "changed model.safetensors"]);

    locks_are_verified_before_loading(&p, invert);
}

#[test]
fn scan_verifies_the_baseline_lock_before_anything_loads() {
    let d = tempfile::tempdir().unwrap();
    let LockedPair { cand, base, cand_lock: cl, base_lock: bl } = locked_pair(d.path());
    // Truncated candidate weights keep every run cheap: the audit stops the scan before loading either model.
    truncate(&cand.join("model.safetensors"));
    let out = d.path().join("out");
    let scan =
        |extra: &[&str]| command(&["scan", "--candidate", s(&cand), "--baseline", s(&base), "--out", s(&out)], extra);
    // The right lock changes nothing: same exit code and no lock message as without it.
    let plain = trapdoor(&scan(&[]));
    let locked = trapdoor(&scan(&["--baseline-lock", s(&bl)]));
    assert_eq!(plain.status.code(), locked.status.code(), "{}", String::from_utf8_lossy(&locked.stderr));
    assert!(!String::from_utf8_lossy(&locked.stderr).contains("lock"), "{}", String::from_utf8_lossy(&locked.stderr));
    // Another model's lock is an error naming the flag, the lock and the file, before the audit runs.
    std::fs::remove_dir_all(&out).unwrap();
    fails(&scan(&["--baseline-lock", s(&cl)]), &["--baseline-lock", "cand.lock", "changed model.safetensors"]);
    assert!(!out.join("report.json").exists(), "no report from a refused scan");
    // Without a live baseline there is nothing to check the lock against.
    let snap = trapdoor(&[
        "scan",
        "--candidate",
        s(&cand),
        "--baseline-snapshot",
        s(d.path()),
        "--baseline-lock",
        s(&bl),
        "--out",
        s(&out),
    ]);
    assert_eq!(snap.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&snap.stderr).contains("--baseline"), "{}", String::from_utf8_lossy(&snap.stderr));
}

#[test]
fn zoo_build_verifies_its_base_before_loading_it() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    copy_model(&zoo("stories-base"), &base);
    let other = d.path().join("other.lock");
    lock(&zoo("stories-bd-word"), None, &other);
    let out = d.path().join("zoo");
    fails(
        &["zoo", "build", "--out", s(&out), "--base", s(&base), "--lock", s(&other), "--quiet"],
        &["--lock", "other.lock", "changed model.safetensors"],
    );
    assert!(!out.join("zoo.json").exists(), "nothing built from an unverified base");
    fails(&["zoo", "build", "--out", s(&out), "--lock", s(&other), "--quiet"], &["--lock", "tiny base"]);
}
