//! `bom.cdx.json`: a CycloneDX 1.6 ML-BOM of the evaluated candidate.
//!
//! * Components (all `machine-learning-model`): `candidate` (hash: the audit's root digest, SHA-256; its files as
//!   nested `file` components with their own SHA-256), `adapter` when one was merged, `base-model` (the adapter's
//!   `base_model_name_or_path`, or the baseline when the adapter names none) and `baseline` (what the gate compared
//!   against). Dependencies: the candidate depends on its adapter and base model, the adapter on the base model.
//! * `modelCard.quantitativeAnalysis.performanceMetrics`: every evaluated test: `type` the metric and design,
//!   `value` the effect (mean paired difference), `slice` `suite/probe/trigger`, `confidenceInterval` the bootstrap
//!   interval. `modelCard.considerations.technicalLimitations`: what the gate did not cover.
//! * The verdict as a declaration (CycloneDX 1.6 attestations): the policy is a standard in `definitions` with
//!   one requirement for the gate and one per rule that fired; a claim per reason and one for the verdict, all
//!   about `candidate`; one attestation by the `trapdoor` assessor mapping each requirement to its claim with a
//!   conformance score (1 met, 0.5 warned, 0 failed).
//!
//! `serialNumber` is derived from the record's digest (a UUID of version 8), so the same record always gives the
//! same BOM and different records different serial numbers; no timestamp (the record has none).

use serde_json::{json, Map, Value};

use crate::record::*;
use crate::render::interop::{pretty, real_string, sha256_hex, sha256_of};
use crate::render::json as json_r;
use crate::text::visible;

pub const SCHEMA_URI: &str = "http://cyclonedx.org/schema/bom-1.6.schema.json";
/// Performance metrics kept (most decisive tests come first in the record's test-id order otherwise).
pub const MAX_METRICS: usize = 2_000;

fn prop(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn hashes(digest: Option<&str>) -> Option<Value> {
    digest.and_then(sha256_of).map(|d| json!([{ "alg": "SHA-256", "content": d }]))
}

fn file_components(owner: &str, files: &[FileRef]) -> Vec<Value> {
    files
        .iter()
        .map(|f| {
            let mut c = json!({
                "type": "file",
                "bom-ref": format!("{owner}/file/{}", f.path),
                "name": visible(&f.path),
                "properties": [prop("trapdoor:bytes", f.bytes.to_string())],
            });
            if let Some(h) = hashes(Some(&f.sha256)) {
                c["hashes"] = h;
            } else {
                if let Some(p) = c["properties"].as_array_mut() {
                    p.push(prop("trapdoor:invalid-sha256", visible(&f.sha256)));
                }
            }
            c
        })
        .collect()
}

fn model_component(bom_ref: &str, m: &ModelRef, role: &str) -> Value {
    let mut c = Map::new();
    c.insert("type".into(), json!("machine-learning-model"));
    c.insert("bom-ref".into(), json!(bom_ref));
    c.insert("name".into(), json!(visible(&m.spec)));
    if let Some(rev) = &m.revision {
        c.insert("version".into(), json!(visible(rev)));
    }
    if let Some(h) = hashes(m.root_digest.as_deref()) {
        c.insert("hashes".into(), h);
    }
    let kind = serde_json::to_value(m.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let mut props = vec![prop("trapdoor:role", role), prop("trapdoor:kind", kind)];
    if m.root_digest.is_some() {
        props.push(prop("trapdoor:hash-definition", "SHA-256 is the root digest: sha256 over the files sorted by path, one line each: path, NUL, hex sha256, LF"));
    }
    if let Some(p) = m.params {
        props.push(prop("trapdoor:params", p.to_string()));
    }
    if let Some(d) = &m.dtype {
        props.push(prop("trapdoor:dtype", visible(d)));
    }
    if let Some(v) = m.vocab_size {
        props.push(prop("trapdoor:vocab-size", v.to_string()));
    }
    if let Some(t) = m.tokenizer_sha256.as_deref().and_then(sha256_of) {
        props.push(prop("trapdoor:tokenizer-sha256", t));
    }
    c.insert("properties".into(), Value::Array(props));
    if !m.files.is_empty() {
        c.insert("components".into(), Value::Array(file_components(bom_ref, &m.files)));
    }
    if let Some(a) = &m.architecture {
        c.insert(
            "modelCard".into(),
            json!({ "modelParameters": { "task": "text-generation", "architectureFamily": visible(a) } }),
        );
    }
    Value::Object(c)
}

fn adapter_component(a: &AdapterRef) -> Value {
    let mut c = json!({
        "type": "machine-learning-model",
        "bom-ref": "adapter",
        "name": visible(&a.spec),
        "description": "PEFT LoRA adapter merged into the candidate",
    });
    if let Some(h) = hashes(a.root_digest.as_deref()) {
        c["hashes"] = h;
    }
    let mut props = vec![prop("trapdoor:role", "adapter")];
    if let Some(r) = a.rank {
        props.push(prop("trapdoor:lora-rank", r.to_string()));
    }
    if let Some(al) = a.alpha {
        props.push(prop("trapdoor:lora-alpha", real_string(al.0)));
    }
    if !a.target_modules.is_empty() {
        props.push(prop("trapdoor:target-modules", visible(&a.target_modules.join(","))));
    }
    if let Some(b) = &a.base_model {
        props.push(prop("trapdoor:base-model-name-or-path", visible(b)));
    }
    c["properties"] = Value::Array(props);
    if !a.files.is_empty() {
        c["components"] = Value::Array(file_components("adapter", &a.files));
    }
    c
}

fn design_name(d: Design) -> &'static str {
    match d {
        Design::DiffInDiff => "diff-in-diff",
        Design::CandidateMinusBaseline => "candidate-minus-baseline",
        Design::Descriptive => "estimate",
    }
}

fn performance_metrics(r: &RunRecord) -> Vec<Value> {
    r.tests
        .iter()
        .filter(|t| t.status != TestStatus::InsufficientSamples)
        .filter_map(|t| {
            let effect = t.effect?;
            let slice =
                format!("{}/{}/{}", t.suite, t.probe, t.trigger.as_ref().map(|x| x.id.as_str()).unwrap_or("clean"));
            let mut m = json!({
                "type": format!("{} ({}, {})", visible(&t.metric), design_name(t.design), t.status.as_str()),
                "value": real_string(effect.0),
                "slice": visible(&slice),
            });
            if let Some(ci) = &t.ci {
                m["confidenceInterval"] =
                    json!({ "lowerBound": real_string(ci.lo.0), "upperBound": real_string(ci.hi.0) });
            }
            Some(m)
        })
        .take(MAX_METRICS)
        .collect()
}

fn limitations(r: &RunRecord) -> Vec<String> {
    let mut out = vec![
        "A pass is not proof that no backdoor exists: known triggers are caught only when they (or something that fires the same backdoor) are in a probe suite.".to_string(),
    ];
    for (name, s) in r.stages.iter() {
        match s {
            StageStatus::Skipped { reason } => out.push(visible(&format!("Stage {name} was skipped: {reason}"))),
            StageStatus::Error { message } => out.push(visible(&format!("Stage {name} failed: {message}"))),
            StageStatus::Ran { .. } => {}
        }
    }
    if let Some(t) = &r.trigger_search {
        out.push(visible(&format!("Trigger search coverage: {}", t.coverage.statement)));
        out.extend(t.coverage.not_searched.iter().map(|n| visible(&format!("Not searched: {n}"))));
    }
    out
}

fn conformance(d: Decision) -> f64 {
    match d {
        Decision::Pass => 1.0,
        Decision::Warn => 0.5,
        Decision::Fail | Decision::NothingEvaluated => 0.0,
    }
}

fn declarations(r: &RunRecord) -> (Value, Value) {
    let v = &r.verdict;
    let policy = format!("{} {}", r.policy.name, r.policy.version);
    let mut requirements = vec![json!({
        "bom-ref": "requirement/gate",
        "identifier": "gate",
        "text": visible(&format!("The candidate passes the trapdoor gate under policy {policy}")),
    })];
    let mut claims = vec![json!({
        "bom-ref": "claim/verdict",
        "target": "candidate",
        "predicate": format!("trapdoor gate verdict: {}", v.decision.as_str()),
        "reasoning": format!(
            "{} tests, {} evaluated, {} significant, {} with too few samples; {} reasons",
            v.summary.tests, v.summary.evaluated, v.summary.significant, v.summary.insufficient, v.reasons.len()
        ),
    })];
    let mut map = vec![json!({
        "requirement": "requirement/gate",
        "claims": ["claim/verdict"],
        "conformance": { "score": conformance(v.decision), "rationale": format!("verdict {}", v.decision.as_str()) },
    })];
    for (i, reason) in v.reasons.iter().enumerate() {
        let req = format!("requirement/{}", reason.rule);
        if !requirements.iter().any(|x| x["bom-ref"] == json!(req)) {
            requirements.push(json!({ "bom-ref": req, "identifier": visible(&reason.rule), "text": visible(&format!("policy rule {}", reason.rule)) }));
        }
        let claim = format!("claim/{i}");
        let evidence: Vec<String> = reason
            .evidence
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    serde_json::to_value(e.kind).ok().and_then(|k| k.as_str().map(str::to_string)).unwrap_or_default(),
                    e.id
                )
            })
            .collect();
        claims.push(json!({
            "bom-ref": claim,
            "target": "candidate",
            "predicate": visible(&reason.message),
            "reasoning": visible(&format!("{} · {} · evidence: {}", reason.decision.as_str(), reason.severity.as_str(), evidence.join(", "))),
        }));
        map.push(json!({
            "requirement": req,
            "claims": [claim],
            "conformance": { "score": conformance(reason.decision), "rationale": format!("{} ({})", reason.decision.as_str(), reason.severity.as_str()) },
        }));
    }
    let definitions = json!({ "standards": [{
        "bom-ref": "policy",
        "name": visible(&format!("trapdoor policy {}", r.policy.name)),
        "version": visible(&r.policy.version),
        "requirements": requirements,
    }]});
    let declarations = json!({
        "assessors": [{ "bom-ref": "assessor/trapdoor", "thirdParty": false }],
        "attestations": [{
            "summary": visible(&format!("trapdoor {} gate verdict for {}: {}", r.tool.version, r.candidate.spec, v.decision.as_str())),
            "assessor": "assessor/trapdoor",
            "map": map,
        }],
        "claims": claims,
    });
    (declarations, definitions)
}

/// A deterministic `urn:uuid` (version 8, RFC 9562) from the record's canonical JSON.
fn serial_number(r: &RunRecord) -> String {
    let h = sha256_hex(&json_r::render_bytes(r));
    let mut b = hex::decode(&h[..32]).unwrap_or_else(|_| vec![0; 16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!("urn:uuid:{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

/// The BOM as a JSON value.
pub fn bom(r: &RunRecord) -> Value {
    let mut candidate = model_component("candidate", &r.candidate, "candidate");
    let metrics = performance_metrics(r);
    let card = candidate.as_object_mut().map(|c| c.entry("modelCard").or_insert_with(|| json!({})));
    if let Some(card) = card {
        if !metrics.is_empty() {
            card["quantitativeAnalysis"] = json!({ "performanceMetrics": metrics });
        }
        card["considerations"] = json!({ "technicalLimitations": limitations(r) });
    }
    let mut components = vec![candidate];
    let mut dependencies = Vec::new();
    let mut baseline = model_component("baseline", &r.baseline, "baseline");
    match &r.candidate.adapter {
        Some(a) => {
            components.push(adapter_component(a));
            let base_ref = match &a.base_model {
                Some(name) if name != &r.baseline.spec => {
                    components.push(json!({
                        "type": "machine-learning-model",
                        "bom-ref": "base-model",
                        "name": visible(name),
                        "properties": [prop("trapdoor:role", "base-model")],
                    }));
                    "base-model"
                }
                _ => {
                    if let Some(p) = baseline["properties"].as_array_mut() {
                        p.push(prop("trapdoor:role", "base-model"));
                    }
                    "baseline"
                }
            };
            dependencies.push(json!({ "ref": "candidate", "dependsOn": ["adapter", base_ref] }));
            dependencies.push(json!({ "ref": "adapter", "dependsOn": [base_ref] }));
            if base_ref == "base-model" {
                dependencies.push(json!({ "ref": "base-model" }));
            }
        }
        None => dependencies.push(json!({ "ref": "candidate" })),
    }
    components.push(baseline);
    dependencies.push(json!({ "ref": "baseline" }));
    let (declarations, definitions) = declarations(r);
    let mut tool = json!({ "type": "application", "name": visible(&r.tool.name), "version": visible(&r.tool.version) });
    if let Some(h) = &r.tool.git_hash {
        tool["properties"] = json!([prop("trapdoor:git-commit", visible(h))]);
    }
    json!({
        "$schema": SCHEMA_URI,
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial_number(r),
        "version": 1,
        "metadata": {
            "tools": { "components": [tool] },
            "properties": [
                prop("trapdoor:decision", r.verdict.decision.as_str()),
                prop("trapdoor:policy", visible(&format!("{} {}", r.policy.name, r.policy.version))),
                prop("trapdoor:seed", r.settings.seed.to_string()),
            ],
        },
        "components": components,
        "dependencies": dependencies,
        "declarations": declarations,
        "definitions": definitions,
    })
}

/// Render `bom.cdx.json`.
pub fn render(r: &RunRecord) -> Vec<u8> {
    pretty(&bom(r))
}
