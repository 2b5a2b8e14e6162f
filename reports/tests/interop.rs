//! SARIF, in-toto and CycloneDX: golden files, validation against the published schemas vendored in
//! `reports/schemas/` (no network: every `$ref` resolves to a file there), and the properties consumers rely on
//! (stable rule ids and fingerprints, subject digests, size limits). `UPDATE_GOLDEN=1` rewrites the golden files.

mod common;

use std::path::PathBuf;

use common::{golden, rich_record, with_trigger_search};
use serde_json::Value;
use trapdoor_reports::record::*;
use trapdoor_reports::render::{cyclonedx, intoto, sarif};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// Resolves the schemas' external `$ref`s (`http://cyclonedx.org/schema/spdx.schema.json`, …) to the vendored
/// files by their last path segment; anything else is an error (never a download).
struct Vendored;

impl jsonschema::Retrieve for Vendored {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or("").split('#').next().unwrap_or("");
        let path = schemas_dir().join(name);
        if name.is_empty() || !path.is_file() {
            return Err(format!("{uri} is not vendored in reports/schemas").into());
        }
        Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
    }
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schemas_dir().join(file)).unwrap();
    // The SARIF 2.1.0 schema (its draft-07 edition) has a malformed `language` pattern, `^[a-zA-Z]{2}|^[a-zA-Z]{2}-
    // [a-zA-Z]{2}]?$`, which no ECMA-262 engine compiles; OASIS errata 01 replaced it with the one used here. The
    // vendored file stays byte for byte as published.
    let text = text.replace(r#""^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$""#, r#""^[a-zA-Z]{2}(-[a-zA-Z]{2})?$""#);
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .with_retriever(Vendored)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn assert_valid(file: &str, doc: &Value) {
    let v = validator(file);
    let errors: Vec<String> = v.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{file}: {} errors:\n{}", errors.len(), errors.join("\n"));
}

/// The rich record with a real-looking policy digest (the shared sample uses `ppp…`, which is not hex).
fn record() -> RunRecord {
    let mut r = rich_record();
    r.policy.sha256 = "7".repeat(64);
    r
}

fn parse(bytes: &[u8]) -> Value {
    assert!(bytes.ends_with(b"\n"));
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn golden_files() {
    let r = record();
    golden("report.sarif", &sarif::render(&r));
    golden("attestation.intoto.json", &intoto::render(&r));
    golden("bom.cdx.json", &cyclonedx::render(&r));
    let r = with_trigger_search(record());
    golden("bom-trigger-search.cdx.json", &cyclonedx::render(&r));
}

#[test]
fn the_validators_reject_what_the_schemas_forbid() {
    // A validator that accepts everything would make the tests below meaningless.
    let sarif_v = validator("sarif-schema-2.1.0.json");
    assert!(!sarif_v.is_valid(&serde_json::json!({"version": "2.1.0"})));
    assert!(!sarif_v.is_valid(&serde_json::json!({"version": "2.0.0", "runs": []})));
    let bom_v = validator("bom-1.6.schema.json");
    assert!(!bom_v.is_valid(&serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [{"type": "model", "name": "x"}]})));
    // The SPDX reference resolves to the vendored file: an unknown licence id is rejected.
    let lic = serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [{"type": "library", "name": "x", "licenses": [{"license": {"id": "NOT-A-LICENCE"}}]}]});
    assert!(!bom_v.is_valid(&lic));
    let mut ok = lic.clone();
    ok["components"][0]["licenses"][0]["license"]["id"] = Value::String("MIT".into());
    assert!(bom_v.is_valid(&ok));
    let intoto_v = validator("in-toto-test-result-v0.1.schema.json");
    let mut st = intoto::statement(&record());
    assert!(intoto_v.is_valid(&st));
    st["subject"][0]["digest"]["sha256"] = Value::String("ABC".into());
    assert!(!intoto_v.is_valid(&st));
    st["subject"] = serde_json::json!([]);
    assert!(!intoto_v.is_valid(&st));
}

#[test]
fn outputs_pass_schema_validation() {
    for r in [record(), with_trigger_search(record())] {
        assert_valid("sarif-schema-2.1.0.json", &parse(&sarif::render(&r)));
        assert_valid("in-toto-test-result-v0.1.schema.json", &parse(&intoto::render(&r)));
        assert_valid("bom-1.6.schema.json", &parse(&cyclonedx::render(&r)));
    }
    // A passing run without adapter, audit or tests, and a run with nothing evaluated.
    let mut bare = record();
    bare.candidate.adapter = None;
    bare.audit = AuditSection::default();
    bare.tests.clear();
    bare.verdict = Verdict { decision: Decision::Pass, reasons: vec![], summary: VerdictSummary::default() };
    for d in [Decision::Pass, Decision::NothingEvaluated] {
        bare.verdict.decision = d;
        assert_valid("sarif-schema-2.1.0.json", &parse(&sarif::render(&bare)));
        assert_valid("in-toto-test-result-v0.1.schema.json", &parse(&intoto::render(&bare)));
        assert_valid("bom-1.6.schema.json", &parse(&cyclonedx::render(&bare)));
    }
}

#[test]
fn intoto_binds_the_candidate_and_the_gate() {
    let r = record();
    let st = intoto::statement(&r);
    assert_eq!(st["_type"], intoto::STATEMENT_TYPE);
    assert_eq!(st["predicateType"], intoto::PREDICATE_TYPE);
    assert_eq!(st["subject"][0]["digest"]["sha256"], "c".repeat(64));
    assert_eq!(st["subject"][1]["digest"]["sha256"], "1".repeat(64), "the adapter is a subject too");
    let p = &st["predicate"];
    assert_eq!(p["result"], "FAILED");
    let config = p["configuration"].as_array().unwrap();
    let names: Vec<&str> = config.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["suite/drift", "suite/known-triggers", "suite/safety", "policy/default", "stories260K.gguf", "trapdoor 0.1.0"]
    );
    assert_eq!(config[3]["digest"]["sha256"], "7".repeat(64));
    assert_eq!(config[5]["digest"]["gitCommit"], "0123456789abcdef0123456789abcdef01234567");
    let list = |k: &str| p[k].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert!(list("failedTests").contains(&"known-triggers/badnets/cf/js_mean".to_string()));
    assert!(list("failedTests").contains(&"policy/audit-high".to_string()));
    assert!(list("warnedTests").contains(&"policy/stage-error".to_string()));
    assert!(
        list("warnedTests").contains(&"safety/harmful/sudo/refusal_rate".to_string()),
        "too few samples is not a pass"
    );
    assert!(list("passedTests").contains(&"known-triggers/badnets/rlo/js_mean".to_string()));
    let all = [list("passedTests"), list("warnedTests"), list("failedTests")].concat();
    assert_eq!(all.iter().filter(|n| !n.starts_with("policy/")).count(), r.tests.len(), "every test is listed once");

    for (d, want) in [(Decision::Pass, "PASSED"), (Decision::Warn, "WARNED"), (Decision::NothingEvaluated, "FAILED")] {
        let mut x = r.clone();
        x.verdict.decision = d;
        assert_eq!(intoto::statement(&x)["predicate"]["result"], want);
    }
    // Without a root digest the subjects are the files; a digest that is not a sha256 is never passed off as one.
    let mut x = r.clone();
    x.candidate.root_digest = None;
    x.candidate.adapter = None;
    x.candidate.files[0].sha256 = "not-a-digest".into();
    let st = intoto::statement(&x);
    let subjects = st["subject"].as_array().unwrap();
    assert_eq!(subjects.len(), 2);
    assert!(subjects
        .iter()
        .all(|s| s["name"].as_str().unwrap().starts_with("../shared/fixtures/zoo-dev/stories-base/")));
    let bad = subjects.iter().find(|s| s.get("digest").is_none()).unwrap();
    assert_eq!(bad["annotations"]["trapdoor.invalidSha256"], "not-a-digest");
}

#[test]
fn sarif_rule_ids_and_fingerprints_are_stable() {
    let r = record();
    let log = sarif::log(&r);
    let run = &log["runs"][0];
    let results = run["results"].as_array().unwrap();
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    for res in results {
        let idx = res["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], res["ruleId"], "ruleIndex points at the result's rule");
    }
    let ids: Vec<&str> = results.iter().map(|x| x["ruleId"].as_str().unwrap()).collect();
    assert!(ids.contains(&"audit/tokenizer.vocab_swap"));
    assert!(ids.contains(&"policy/trigger-divergence"));
    assert!(ids.contains(&"test/trigger/js_mean"));
    assert!(
        !ids.iter().any(|i| i.contains("trigger-search-anomaly")),
        "an informational (pass) reason is not a result"
    );
    assert_eq!(results[0]["level"], "error");
    // The file with markup in its name is a percent-encoded URI reference.
    let uris: Vec<&str> = results
        .iter()
        .flat_map(|x| x["locations"].as_array().unwrap().iter())
        .filter_map(|l| l["physicalLocation"]["artifactLocation"]["uri"].as_str())
        .collect();
    assert!(uris.contains(&"extra%20%3Cscript%3E.py"), "{uris:?}");
    assert!(uris.contains(&"embedded:known-triggers"), "{uris:?}");
    // URI references (RFC 3986): no spaces, markup, quotes or raw non-ASCII; `%` only as an escape.
    for u in &uris {
        assert!(u.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/:%".contains(&b)), "{u}");
        for (i, _) in u.match_indices('%') {
            assert!(u.len() >= i + 3 && u[i + 1..i + 3].bytes().all(|b| b.is_ascii_hexdigit()), "{u}");
        }
    }
    // Failed stage → unsuccessful invocation with an error notification.
    assert_eq!(run["invocations"][0]["executionSuccessful"], false);
    // Same finding in a later run (other message, other order) → same fingerprint.
    let fp = |log: &Value, rule: &str| -> String {
        log["runs"][0]["results"].as_array().unwrap().iter().find(|x| x["ruleId"] == rule).unwrap()
            ["partialFingerprints"]["trapdoor/v1"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut later = r.clone();
    later.audit.findings[0].message = "ids of 3 tokens are swapped".into();
    later.audit.findings.reverse();
    assert_eq!(fp(&log, "audit/tokenizer.vocab_swap"), fp(&sarif::log(&later), "audit/tokenizer.vocab_swap"));
    assert_ne!(fp(&log, "audit/tokenizer.vocab_swap"), fp(&log, "audit/chat_template.content_conditional"));
    // Bidi controls are made visible in messages.
    let text = String::from_utf8(sarif::render(&r)).unwrap();
    assert!(!text.contains('\u{202e}'));
}

#[test]
fn sarif_respects_its_size_limits_and_says_what_it_cut() {
    let mut r = record();
    let f0 = r.audit.findings[0].clone();
    for i in 0..(sarif::MAX_RESULTS + 50) {
        let mut f = f0.clone();
        f.file = format!("shard-{i:05}.safetensors");
        f.severity = if i % 2 == 0 { Severity::Low } else { Severity::Critical };
        f.message = "x".repeat(sarif::MAX_MESSAGE_CHARS + 10);
        r.audit.findings.push(f);
    }
    r.verdict.reasons[0].evidence =
        (0..300).map(|i| Evidence { kind: EvidenceKind::Case, id: format!("case-{i}") }).collect();
    r.canonicalize();
    let log = sarif::log(&r);
    let run = &log["runs"][0];
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), sarif::MAX_RESULTS);
    let t = &run["properties"]["truncation"];
    assert_eq!(t["results_kept"], sarif::MAX_RESULTS);
    assert!(t["results_dropped"].as_u64().unwrap() > 50);
    assert!(t["messages_cut"].as_u64().unwrap() > 0);
    assert_eq!(t["results_with_locations_cut"], 1);
    // The most severe results are kept: every critical finding and every gate failure survives the cut.
    let critical = results.iter().filter(|x| x["properties"]["severity"] == "critical").count();
    assert_eq!(critical, (sarif::MAX_RESULTS + 50) / 2);
    assert!(results.iter().any(|x| x["ruleId"] == "policy/trigger-divergence"));
    for x in results {
        assert!(x["message"]["text"].as_str().unwrap().chars().count() <= sarif::MAX_MESSAGE_CHARS);
        for l in x["locations"].as_array().unwrap() {
            if let Some(ll) = l["logicalLocations"].as_array() {
                assert!(ll.len() <= sarif::MAX_LOCATIONS);
            }
        }
    }
    assert_valid("sarif-schema-2.1.0.json", &log);
}

#[test]
fn cyclonedx_describes_the_model_its_dependencies_metrics_and_verdict() {
    let r = record();
    let bom = cyclonedx::bom(&r);
    assert_eq!(bom["specVersion"], "1.6");
    let comps = bom["components"].as_array().unwrap();
    let cand = &comps[0];
    assert_eq!(cand["type"], "machine-learning-model");
    assert_eq!(cand["bom-ref"], "candidate");
    assert_eq!(cand["hashes"][0]["content"], "c".repeat(64));
    assert_eq!(cand["components"].as_array().unwrap().len(), 2, "the model files, with their hashes");
    let refs: Vec<&str> = comps.iter().map(|c| c["bom-ref"].as_str().unwrap()).collect();
    assert_eq!(refs, ["candidate", "adapter", "base-model", "baseline"]);
    let deps = bom["dependencies"].as_array().unwrap();
    assert_eq!(deps[0]["ref"], "candidate");
    assert_eq!(deps[0]["dependsOn"], serde_json::json!(["adapter", "base-model"]));
    let metrics = cand["modelCard"]["quantitativeAnalysis"]["performanceMetrics"].as_array().unwrap();
    let js = metrics
        .iter()
        .find(|m| m["slice"] == "known-triggers/badnets/cf" && m["type"].as_str().unwrap().starts_with("js_mean"))
        .unwrap();
    assert_eq!(js["value"], "0.41");
    assert!(js["confidenceInterval"]["lowerBound"].as_str().unwrap().starts_with("0.24"));
    assert_eq!(metrics.len(), r.tests.iter().filter(|t| t.status != TestStatus::InsufficientSamples).count());
    let att = &bom["declarations"]["attestations"][0];
    assert_eq!(att["map"][0]["requirement"], "requirement/gate");
    assert_eq!(att["map"][0]["conformance"]["score"], 0.0);
    assert_eq!(bom["declarations"]["claims"][0]["predicate"], "trapdoor gate verdict: fail");
    // Deterministic serial number, different for a different record.
    assert_eq!(bom["serialNumber"], cyclonedx::bom(&r)["serialNumber"]);
    let mut other = r.clone();
    other.settings.seed = 8;
    assert_ne!(bom["serialNumber"], cyclonedx::bom(&other)["serialNumber"]);
    // An adapter that names no base model depends on the baseline.
    let mut x = r.clone();
    x.candidate.adapter.as_mut().unwrap().base_model = None;
    let b = cyclonedx::bom(&x);
    assert_eq!(b["dependencies"][0]["dependsOn"], serde_json::json!(["adapter", "baseline"]));
}
