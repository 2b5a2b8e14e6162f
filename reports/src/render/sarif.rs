//! `report.sarif`: audit findings and gate failures as SARIF 2.1.0 results, for code-scanning dashboards that track
//! issues across runs.
//!
//! Results, each with a stable `ruleId` and `partialFingerprints` (so a dashboard sees the same issue in the next
//! run as the same issue, and a fixed one as fixed):
//! * one per audit finding: rule `audit/<finding rule>`, level from the severity (critical/high → error, medium →
//!   warning, low/info → note), located at the model file (relative to the candidate, `uriBaseId` `CANDIDATE`);
//!   fingerprint over (rule, file);
//! * one per policy reason that fails or warns: rule `policy/<rule>`, level error (fail) or warning (warn),
//!   located at the suites its tests come from, with every piece of evidence as a logical location; fingerprint
//!   over (rule, evidence ids);
//! * one per test a fail or warn reason cites: rule `test/<probe kind>/<metric>`, its effect, interval and q in the
//!   message, located at its suite file, logical location the test id; fingerprint over the test id.
//!
//! Stages that failed are tool execution notifications of the invocation (`executionSuccessful` false), skipped
//! ones are notes. Size limits (GitHub code scanning: 25 000 results and 25 000 rules per run, 1 000 locations per
//! result, 10 MB): at most [`MAX_RESULTS`] results (the most severe first), [`MAX_LOCATIONS`] locations of each
//! kind per result, messages cut at [`MAX_MESSAGE_CHARS`] characters; `run.properties.truncation` says what was cut.
//! Message text has invisible and bidirectional-control characters made visible. No timestamps.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::record::*;
use crate::render::common::{num, pval};
use crate::render::interop::{adverse_reasons, fingerprint, pretty, suite_path, test_citations, uri_path};
use crate::text::{truncate_chars, visible};

pub const SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";
/// Results kept per run (GitHub shows the first 5 000 of at most 25 000).
pub const MAX_RESULTS: usize = 5_000;
/// Physical and logical locations kept per result (GitHub accepts 1 000).
pub const MAX_LOCATIONS: usize = 100;
/// Characters of a message text.
pub const MAX_MESSAGE_CHARS: usize = 2_000;

/// The key under which fingerprints are written (versioned so a change of definition is a new key).
const FINGERPRINT_KEY: &str = "trapdoor/v1";

struct Rule {
    id: String,
    short: String,
    level: &'static str,
    security_severity: Option<&'static str>,
    tags: Vec<&'static str>,
}

struct SarifResult {
    rule: String,
    level: &'static str,
    /// Sort key: more severe first.
    weight: u8,
    message: String,
    files: Vec<(String, Option<&'static str>)>,
    logical: Vec<(String, &'static str)>,
    fingerprint: String,
    properties: Value,
}

fn severity_level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

fn security_severity(s: Severity) -> Option<&'static str> {
    match s {
        Severity::Critical => Some("9.5"),
        Severity::High => Some("8.0"),
        Severity::Medium => Some("5.5"),
        Severity::Low => Some("3.0"),
        Severity::Info => None,
    }
}

fn decision_level(d: Decision) -> &'static str {
    match d {
        Decision::Fail | Decision::NothingEvaluated => "error",
        Decision::Warn => "warning",
        Decision::Pass => "note",
    }
}

fn level_weight(level: &str) -> u8 {
    match level {
        "error" => 3,
        "warning" => 2,
        "note" => 1,
        _ => 0,
    }
}

/// A suite's file as an artifact location: a relative path, or the `embedded:NAME` pseudo-URI of a shipped suite.
fn suite_location(r: &RunRecord, suite: &str) -> Option<(String, Option<&'static str>)> {
    let path = suite_path(r, suite)?;
    Some(match path.strip_prefix("embedded:") {
        Some(name) => (format!("embedded:{}", uri_path(name)), None),
        None => (uri_path(path), Some("SUITES")),
    })
}

/// Count a result against rule `id` at `level`: the rule is made by `new` on first use and raised to `level` when that
/// is more severe than before. Returns the rule and whether this result raised it.
fn use_rule<'a>(
    rules: &'a mut BTreeMap<String, Rule>,
    id: &str,
    level: &'static str,
    new: impl FnOnce() -> Rule,
) -> (&'a mut Rule, bool) {
    let rule = rules.entry(id.to_string()).or_insert_with(new);
    let raised = level_weight(level) > level_weight(rule.level);
    if raised {
        rule.level = level;
    }
    (rule, raised)
}

fn collect(r: &RunRecord) -> (BTreeMap<String, Rule>, Vec<SarifResult>) {
    let mut rules: BTreeMap<String, Rule> = BTreeMap::new();
    let mut results = Vec::new();

    for f in &r.audit.findings {
        let id = format!("audit/{}", f.rule);
        let level = severity_level(f.severity);
        let (rule, raised) = use_rule(&mut rules, &id, level, || Rule {
            id: id.clone(),
            short: format!("Artifact audit: {}", f.rule),
            level,
            security_severity: security_severity(f.severity),
            tags: vec!["security", "supply-chain", "audit"],
        });
        if raised {
            rule.security_severity = security_severity(f.severity);
        }
        results.push(SarifResult {
            rule: id.clone(),
            level,
            weight: 10 + f.severity as u8,
            message: format!("{} ({} in {})", f.message, f.rule, f.file),
            files: vec![(uri_path(&f.file), Some("CANDIDATE"))],
            logical: vec![],
            fingerprint: fingerprint(&[&id, &f.file]),
            properties: json!({ "severity": f.severity.as_str() }),
        });
    }

    for reason in adverse_reasons(r) {
        let id = format!("policy/{}", reason.rule);
        let level = decision_level(reason.decision);
        use_rule(&mut rules, &id, level, || Rule {
            id: id.clone(),
            short: format!("Gate policy rule {}", reason.rule),
            level,
            security_severity: security_severity(reason.severity),
            tags: vec!["security", "backdoor", "gate"],
        });
        let mut files: Vec<(String, Option<&'static str>)> = Vec::new();
        let mut logical = Vec::new();
        for e in &reason.evidence {
            if e.kind == EvidenceKind::Test {
                if let Some(t) = r.tests.iter().find(|t| t.id == e.id) {
                    if let Some(loc) = suite_location(r, &t.suite) {
                        if !files.contains(&loc) {
                            files.push(loc);
                        }
                    }
                }
            }
            if e.kind == EvidenceKind::Finding {
                if let Some((_, file)) = e.id.split_once('@') {
                    let loc = (uri_path(file), Some("CANDIDATE"));
                    if !files.contains(&loc) {
                        files.push(loc);
                    }
                }
            }
            logical.push((e.id.clone(), evidence_kind(e.kind)));
        }
        let ids: Vec<&str> = reason.evidence.iter().map(|e| e.id.as_str()).collect();
        let mut parts = vec![id.as_str()];
        parts.extend(ids);
        results.push(SarifResult {
            rule: id.clone(),
            level,
            weight: 20 + level_weight(level),
            message: format!("{} ({} · {})", reason.message, reason.decision.as_str(), reason.severity.as_str()),
            files,
            logical,
            fingerprint: fingerprint(&parts),
            properties: json!({ "decision": reason.decision.as_str(), "severity": reason.severity.as_str() }),
        });
    }

    let cited = test_citations(r);
    for t in &r.tests {
        let Some(decision) = cited.get(t.id.as_str()).copied().filter(|d| *d != Decision::Pass) else { continue };
        let id = format!("test/{}/{}", t.kind.as_str(), t.metric);
        let level = decision_level(decision);
        use_rule(&mut rules, &id, level, || Rule {
            id: id.clone(),
            short: format!("Paired test of {} on {} probes", t.metric, t.kind.as_str()),
            level,
            security_severity: None,
            tags: vec!["security", "backdoor", "statistics"],
        });
        let mut message =
            format!("{}: effect {}", t.id, t.effect.map(|e| num(e.0)).unwrap_or_else(|| "undefined".into()));
        if let Some(ci) = &t.ci {
            message.push_str(&format!(
                " [{}, {}] ({}% {})",
                num(ci.lo.0),
                num(ci.hi.0),
                num(ci.level.0 * 100.0),
                ci.method
            ));
        }
        message.push_str(&format!(
            ", q {}, n {}, {}",
            t.q.map(|q| pval(q.0)).unwrap_or_else(|| "undefined".into()),
            t.n,
            t.status.as_str()
        ));
        if let Some(tr) = &t.trigger {
            message.push_str(&format!("; trigger `{}`", tr.text));
        }
        results.push(SarifResult {
            rule: id.clone(),
            level,
            weight: level_weight(level),
            message,
            files: suite_location(r, &t.suite).into_iter().collect(),
            logical: vec![(t.id.clone(), "test")],
            fingerprint: fingerprint(&[&t.id]),
            properties: json!({
                "suite": t.suite, "probe": t.probe, "metric": t.metric, "status": t.status.as_str(),
                "effect": t.effect, "ci": t.ci, "q": t.q, "n": t.n,
            }),
        });
    }
    (rules, results)
}

fn evidence_kind(k: EvidenceKind) -> &'static str {
    match k {
        EvidenceKind::Test => "test",
        EvidenceKind::Finding => "finding",
        EvidenceKind::Case => "case",
        EvidenceKind::Stage => "stage",
        EvidenceKind::WeightDelta => "weight_delta",
        EvidenceKind::Activation => "activation",
        EvidenceKind::TriggerSearch => "trigger_search",
        EvidenceKind::Metric => "metric",
    }
}

/// The SARIF log as a JSON value.
pub fn log(r: &RunRecord) -> Value {
    let (rules, mut results) = collect(r);
    // Most severe first; ties in the order produced (findings, reasons, tests — each in record order).
    results.sort_by_key(|x| std::cmp::Reverse(x.weight));
    let total = results.len();
    results.truncate(MAX_RESULTS);
    let rule_index: BTreeMap<&str, usize> = rules.keys().enumerate().map(|(i, k)| (k.as_str(), i)).collect();

    let mut messages_cut = 0usize;
    let mut locations_cut = 0usize;
    let mut message = |s: &str| {
        let v = visible(s);
        if v.chars().count() > MAX_MESSAGE_CHARS {
            messages_cut += 1;
            truncate_chars(&v, MAX_MESSAGE_CHARS - 1)
        } else {
            v
        }
    };
    let mut out_results = Vec::with_capacity(results.len());
    for res in &results {
        if res.files.len() > MAX_LOCATIONS || res.logical.len() > MAX_LOCATIONS {
            locations_cut += 1;
        }
        let physical: Vec<Value> = res
            .files
            .iter()
            .take(MAX_LOCATIONS)
            .map(|(uri, base)| {
                let mut loc = json!({ "uri": uri });
                if let Some(b) = base {
                    loc["uriBaseId"] = json!(b);
                }
                json!({ "physicalLocation": { "artifactLocation": loc } })
            })
            .collect();
        let logical: Vec<Value> = res
            .logical
            .iter()
            .take(MAX_LOCATIONS)
            .map(|(name, kind)| json!({ "fullyQualifiedName": message(name), "kind": kind }))
            .collect();
        let mut locations = physical;
        if !logical.is_empty() {
            locations.push(json!({ "logicalLocations": logical }));
        }
        out_results.push(json!({
            "ruleId": res.rule,
            "ruleIndex": rule_index.get(res.rule.as_str()).copied().unwrap_or(0),
            "level": res.level,
            "message": { "text": message(&res.message) },
            "locations": locations,
            "partialFingerprints": { FINGERPRINT_KEY: res.fingerprint },
            "properties": res.properties,
        }));
    }

    let out_rules: Vec<Value> = rules
        .values()
        .map(|rule| {
            let mut props = json!({ "tags": rule.tags });
            if let Some(s) = rule.security_severity {
                props["security-severity"] = json!(s);
            }
            json!({
                "id": rule.id,
                "name": rule.id.replace(['/', '.', '-'], "_"),
                "shortDescription": { "text": visible(&rule.short) },
                "defaultConfiguration": { "level": rule.level },
                "properties": props,
            })
        })
        .collect();

    let mut notifications = Vec::new();
    let mut ok = true;
    for (name, s) in r.stages.iter() {
        match s {
            StageStatus::Error { message: m } => {
                ok = false;
                notifications.push(json!({ "level": "error", "message": { "text": message(&format!("stage {name} failed: {m}")) }, "descriptor": { "id": format!("stage/{name}") } }));
            }
            StageStatus::Skipped { reason } => {
                notifications.push(json!({ "level": "note", "message": { "text": message(&format!("stage {name} skipped: {reason}")) }, "descriptor": { "id": format!("stage/{name}") } }));
            }
            StageStatus::Ran { .. } => {}
        }
    }
    let mut driver = json!({
        "name": r.tool.name,
        "version": r.tool.version,
        "semanticVersion": r.tool.version,
        "rules": out_rules,
    });
    if let Some(h) = &r.tool.git_hash {
        driver["properties"] = json!({ "gitCommit": h });
    }
    let mut truncation = json!({ "results_total": total, "results_kept": results.len() });
    truncation["results_dropped"] = json!(total - results.len());
    truncation["messages_cut"] = json!(messages_cut);
    truncation["results_with_locations_cut"] = json!(locations_cut);
    truncation["limits"] =
        json!({ "results": MAX_RESULTS, "locations": MAX_LOCATIONS, "message_chars": MAX_MESSAGE_CHARS });
    json!({
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": driver },
            "invocations": [{
                "executionSuccessful": ok,
                "arguments": r.command.iter().map(|a| visible(a)).collect::<Vec<_>>(),
                "toolExecutionNotifications": notifications,
            }],
            "automationDetails": { "id": format!("trapdoor/{}/", visible(&r.policy.name)) },
            "results": out_results,
            "properties": {
                "decision": r.verdict.decision.as_str(),
                "candidate": visible(&r.candidate.spec),
                "baseline": visible(&r.baseline.spec),
                "truncation": truncation,
            },
        }]
    })
}

/// Render `report.sarif`.
pub fn render(r: &RunRecord) -> Vec<u8> {
    pretty(&log(r))
}
