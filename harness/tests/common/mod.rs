//! Shared helpers for integration tests: where the fixtures are, and the optional gemma-3-270m file.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/fixtures` beside the repository (override with `TRAPDOOR_FIXTURES`). Tests that need fixtures fail
/// loudly when they are missing: CI always has them, and a silent skip would hide a broken checkout.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("TRAPDOOR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(dir.join("README.md").is_file(), "test fixtures not found at {} (set TRAPDOOR_FIXTURES)", dir.display());
    dir
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The gemma-3-270m GGUF fetched by `scripts/fetch-gemma.sh` (or `TRAPDOOR_GEMMA_GGUF`). `None` means skip, and the
/// caller must say so; with `TRAPDOOR_REQUIRE_GEMMA=1` (set by the test script used in CI) a missing file is a
/// failure instead, so CI can never skip these tests silently.
pub fn gemma_gguf(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("TRAPDOOR_GEMMA_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/models/gemma-3-270m-q4_k_m.gguf"));
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("TRAPDOOR_REQUIRE_GEMMA").as_deref() == Ok("1") {
        panic!("{test}: gemma-3-270m not found at {} and TRAPDOOR_REQUIRE_GEMMA=1 (run scripts/fetch-gemma.sh)", p.display());
    }
    eprintln!("SKIPPED {test}: gemma-3-270m not found at {} (run scripts/fetch-gemma.sh)", p.display());
    None
}

/// Path of the built `trapdoor` binary, for CLI tests.
pub fn trapdoor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trapdoor"))
}
