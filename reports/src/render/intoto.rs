//! `attestation.intoto.json`: an in-toto Statement v1 with the test-result predicate (v0.1), so a deploy step can
//! check that this exact artifact passed this exact gate.
//!
//! * `subject`: the candidate, by the audit's root digest (`sha256` over the sorted `path NUL sha256 LF` lines of
//!   its files; annotated so a verifier knows how to recompute it). Without a root digest, one subject per model
//!   file with its own sha256. An adapter is a further subject (its root digest, or its files).
//! * `predicate.result`: `PASSED` / `WARNED` / `FAILED`; `nothing_evaluated` is `FAILED` (nothing was shown, so
//!   nothing may be deployed on the strength of it).
//! * `predicate.configuration`: ResourceDescriptors of what the result depends on: every suite (sha256 of its
//!   bytes), the policy (sha256), the baseline (root digest or files) and the tool (git commit, when known).
//! * `passedTests` / `warnedTests` / `failedTests`: every test id of the run, by what the verdict made of it (cited
//!   by a fail reason, by a warn reason or too few samples, otherwise passed), plus `policy/<rule>` for every rule
//!   that failed or warned.
//!
//! Unsigned: signing (DSSE) is the deploy pipeline's job, with its own keys. Deterministic: no timestamps.

use serde_json::{json, Map, Value};

use crate::record::*;
use crate::render::interop::{adverse_reasons, pretty, sha256_of, test_outcomes, Outcome};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://in-toto.io/attestation/test-result/v0.1";

/// How `root_digest` is defined, for verifiers.
const ROOT_DIGEST_DEFINITION: &str =
    "sha256 over the model's files sorted by path bytes, one line each: path, NUL, lowercase hex sha256, LF";

/// The in-toto result for a decision.
pub fn result(d: Decision) -> &'static str {
    match d {
        Decision::Pass => "PASSED",
        Decision::Warn => "WARNED",
        Decision::Fail | Decision::NothingEvaluated => "FAILED",
    }
}

fn descriptor(name: &str, digest: Option<(&str, String)>, annotations: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::String(name.into()));
    if let Some((alg, d)) = digest {
        m.insert("digest".into(), json!({ alg: d }));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    Value::Object(m)
}

/// A suite or policy file by its recorded sha256; a recorded value that is not a sha256 is kept as the
/// `trapdoor.invalidSha256` annotation instead of a digest.
fn file_descriptor(name: &str, sha256: &str, mut annotations: Map<String, Value>) -> Value {
    let digest = sha256_of(sha256);
    if digest.is_none() {
        annotations.insert("trapdoor.invalidSha256".into(), Value::String(sha256.to_string()));
    }
    descriptor(name, digest.map(|d| ("sha256", d)), annotations)
}

fn annotations(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string()))).collect()
}

/// Descriptors of a set of files: by root digest when there is a valid one, else one per file with a valid sha256.
/// Invalid digests are never passed off as digests; they are kept in an annotation.
fn model_descriptors(role: &str, spec: &str, root: Option<&str>, files: &[FileRef]) -> Vec<Value> {
    if let Some(root) = root.and_then(sha256_of) {
        let ann = annotations(&[
            ("trapdoor.role", role),
            ("trapdoor.spec", spec),
            ("trapdoor.digest", "root_digest"),
            ("trapdoor.rootDigestDefinition", ROOT_DIGEST_DEFINITION),
        ]);
        return vec![descriptor(spec, Some(("sha256", root)), ann)];
    }
    files
        .iter()
        .map(|f| {
            let mut ann = annotations(&[("trapdoor.role", role), ("trapdoor.spec", spec)]);
            let d = sha256_of(&f.sha256);
            if d.is_none() {
                ann.insert("trapdoor.invalidSha256".into(), Value::String(f.sha256.clone()));
            }
            descriptor(&format!("{spec}/{}", f.path), d.map(|d| ("sha256", d)), ann)
        })
        .collect()
}

/// The Statement as a JSON value.
pub fn statement(r: &RunRecord) -> Value {
    let c = &r.candidate;
    let mut subject = model_descriptors("candidate", &c.spec, c.root_digest.as_deref(), &c.files);
    if let Some(a) = &c.adapter {
        subject.extend(model_descriptors("adapter", &a.spec, a.root_digest.as_deref(), &a.files));
    }

    let mut configuration = Vec::new();
    for s in &r.suites {
        let ann =
            annotations(&[("trapdoor.role", "suite"), ("trapdoor.path", &s.path), ("trapdoor.version", &s.version)]);
        configuration.push(file_descriptor(&format!("suite/{}", s.name), &s.sha256, ann));
    }
    let p = &r.policy;
    let ann =
        annotations(&[("trapdoor.role", "policy"), ("trapdoor.source", &p.source), ("trapdoor.version", &p.version)]);
    configuration.push(file_descriptor(&format!("policy/{}", p.name), &p.sha256, ann));
    let b = &r.baseline;
    configuration.extend(model_descriptors("baseline", &b.spec, b.root_digest.as_deref(), &b.files));
    let t = &r.tool;
    let commit = t.git_hash.as_deref().filter(|h| h.len() == 40 && h.bytes().all(|x| x.is_ascii_hexdigit()));
    configuration.push(descriptor(
        &format!("{} {}", t.name, t.version),
        commit.map(|h| ("gitCommit", h.to_ascii_lowercase())),
        annotations(&[("trapdoor.role", "tool")]),
    ));

    let (mut passed, mut warned, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (test, outcome) in test_outcomes(r) {
        match outcome {
            Outcome::Passed => passed.push(test.id.clone()),
            Outcome::Warned => warned.push(test.id.clone()),
            Outcome::Failed => failed.push(test.id.clone()),
        }
    }
    for reason in adverse_reasons(r) {
        let name = format!("policy/{}", reason.rule);
        let list = if reason.decision == Decision::Warn { &mut warned } else { &mut failed };
        if !list.contains(&name) {
            list.push(name);
        }
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "result": result(r.verdict.decision),
            "configuration": configuration,
            "passedTests": passed,
            "warnedTests": warned,
            "failedTests": failed,
        }
    })
}

/// Render `attestation.intoto.json`.
pub fn render(r: &RunRecord) -> Vec<u8> {
    pretty(&statement(r))
}
