//! Helpers shared by the machine-readable renderers (SARIF, in-toto, CycloneDX) and the HTML report: which tests
//! and rules the verdict holds against the candidate, digests as the standards want them, URI and base64 encoding,
//! and pretty JSON with a trailing newline.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::record::*;

/// How the verdict treats one test: the outcome a consumer (an attestation, a dashboard) sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// Evaluated and not held against the candidate.
    Passed,
    /// Cited by a `warn` reason, or not evaluated (too few samples): a reviewer should look.
    Warned,
    /// Cited by a `fail` (or `nothing_evaluated`) reason.
    Failed,
}

/// The most decisive reason decision citing each test id.
pub(crate) fn test_citations(r: &RunRecord) -> BTreeMap<&str, Decision> {
    let mut out: BTreeMap<&str, Decision> = BTreeMap::new();
    for reason in &r.verdict.reasons {
        for e in reason.evidence.iter().filter(|e| e.kind == EvidenceKind::Test) {
            let slot = out.entry(e.id.as_str()).or_insert(reason.decision);
            if rank(reason.decision) > rank(*slot) {
                *slot = reason.decision;
            }
        }
    }
    out
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Pass => 0,
        Decision::Warn => 1,
        Decision::NothingEvaluated => 2,
        Decision::Fail => 3,
    }
}

/// The outcome of every test of the run, in test-id order.
pub(crate) fn test_outcomes(r: &RunRecord) -> Vec<(&TestResult, Outcome)> {
    let cited = test_citations(r);
    r.tests
        .iter()
        .map(|t| {
            let o = match cited.get(t.id.as_str()) {
                Some(Decision::Fail | Decision::NothingEvaluated) => Outcome::Failed,
                Some(Decision::Warn) => Outcome::Warned,
                _ if t.status == TestStatus::InsufficientSamples => Outcome::Warned,
                _ => Outcome::Passed,
            };
            (t, o)
        })
        .collect()
}

/// Reasons that hold something against the candidate (`fail`, `warn`, `nothing_evaluated`), in record order.
pub(crate) fn adverse_reasons(r: &RunRecord) -> impl Iterator<Item = &Reason> {
    r.verdict.reasons.iter().filter(|x| x.decision != Decision::Pass)
}

/// Is `s` a lowercase hex sha256?
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A sha256 as recorded, normalised to lowercase, if it is one.
pub(crate) fn sha256_of(s: &str) -> Option<String> {
    let l = s.to_ascii_lowercase();
    is_sha256(&l).then_some(l)
}

/// Hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A stable fingerprint of the given parts (length-prefixed so `("ab","c")` and `("a","bc")` differ): the first
/// 32 hex digits of their sha256.
pub(crate) fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())[..32].to_string()
}

/// Percent-encode a relative path for a URI reference: unreserved characters and `/` stay, everything else
/// (spaces, `<`, `%`, `:`, non-ASCII bytes) becomes `%XX`, so a first segment never reads as a scheme.
pub(crate) fn uri_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding (for CSP hashes).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// A number as a string, shortest round-trip form (CycloneDX metric values are strings).
pub(crate) fn real_string(x: f64) -> String {
    Real(x).to_string()
}

/// Pretty JSON plus a trailing newline. Serialising a `Value` cannot fail.
pub(crate) fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The distinct suites a set of tests belongs to, as (name, path).
pub(crate) fn suite_path<'a>(r: &'a RunRecord, suite: &str) -> Option<&'a str> {
    r.suites.iter().find(|s| s.name == suite).map(|s| s.path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn uri_paths_are_encoded() {
        assert_eq!(uri_path("extra <script>.py"), "extra%20%3Cscript%3E.py");
        assert_eq!(uri_path("a/b-c_d.json"), "a/b-c_d.json");
        assert_eq!(uri_path("ü"), "%C3%BC");
        assert_eq!(uri_path("50%"), "50%25");
    }

    #[test]
    fn digests_and_fingerprints() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"p".repeat(64)));
        assert_eq!(sha256_of(&"A".repeat(64)), Some("a".repeat(64)));
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["x"]).len(), 32);
    }
}
