//! `report.html`: one self-contained page for reviewers who would rather look than read.
//!
//! Order: the verdict banner and its reasons (with links to the evidence on the page); counts; a forest plot of
//! every evaluated test's effect with its confidence interval (one panel per metric, so each axis has one unit);
//! the tests behind the verdict; side by side, the triggered cases the trigger moved most (clean and triggered
//! prompt with the trigger marked, both models' outputs with detector hits marked) and the per-token divergence
//! along both continuations, each token coloured by its Jensen–Shannon divergence; the trigger search with its
//! coverage; the layer × module heatmap of the weight delta and the activation anomalies per layer; audit
//! findings; stages that did not run; tests that were not evaluated; coverage; provenance.
//!
//! Self-contained and offline: CSS, SVG and a small script are inline (the template and both are in
//! `reports/templates/`), and a Content-Security-Policy meta tag allows nothing else: no network, no remote
//! fonts or images, and only the page's own style and script (by their sha256). The plots are SVG generated here.
//! The script only collapses long sections, outlines tokens above a divergence threshold, and sets
//! `data-trapdoor-ready` on `<html>` (plus `data-trapdoor-errors` if anything failed), which the browser test reads.
//!
//! Every string from the record is attacker-controlled (model outputs, triggers, file names): it is passed
//! through [`visible`] (invisible and bidirectional-control characters shown as `⟨U+XXXX⟩`) and HTML-escaped,
//! in text and attributes alike; nothing from the record reaches the script or the style. Deterministic: the
//! same record gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::record::*;
use crate::render::common::*;
use crate::render::interop::{base64, fingerprint, test_citations};
use crate::text::{html_escape, truncate_chars, visible};
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("../../templates/report.html");
const STYLE: &str = include_str!("../../templates/report.css");
const SCRIPT: &str = include_str!("../../templates/report.js");

/// Side-by-side cases shown.
pub const MAX_CASES: usize = 8;
/// Rows of a forest-plot panel, panels, table rows shown before “show all”.
const MAX_PLOT_ROWS: usize = 40;
const MAX_PANELS: usize = 12;
const MAX_TABLE_ROWS: usize = 50;
const MAX_ALL_ROWS: usize = 2_000;
const MAX_FINDINGS: usize = 200;
const MAX_LAYERS: usize = 128;
const MAX_TEXT_CHARS: usize = 4_000;
const MAX_TOKENS: usize = 512;

/// Escape record text for HTML text or a double-quoted attribute.
fn esc(s: &str) -> String {
    html_escape(&visible(s))
}

/// Record text, cut to `max` characters, escaped.
fn esc_cut(s: &str, max: usize) -> String {
    esc(&truncate_chars(s, max))
}

/// An id attribute value for an anchor derived from record text (never the text itself).
fn anchor(kind: &str, id: &str) -> String {
    format!("{kind}-{}", &fingerprint(&[kind, id])[..12])
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::Pass => "PASS",
        Decision::Warn => "WARN",
        Decision::Fail => "FAIL",
        Decision::NothingEvaluated => "NOTHING EVALUATED",
    }
}

/// The CSP: nothing may load; only this page's style and script, by hash.
fn csp() -> String {
    let h = |s: &str| base64(&Sha256::digest(s.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; img-src data:; base-uri 'none'; form-action 'none'",
        h(STYLE),
        h(SCRIPT)
    )
}

/// Fill `{{name}}` placeholders in one pass, so inserted text is never scanned for placeholders again.
fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + values.values().map(String::len).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) if values.contains_key(&after[..end]) => {
                out.push_str(&values[&after[..end]]);
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Render report.html.
pub fn render(r: &RunRecord) -> Vec<u8> {
    let page = Page::new(r);
    let mut body = String::with_capacity(64 * 1024);
    page.verdict(&mut body);
    page.forest(&mut body);
    page.tests(&mut body);
    page.side_by_side(&mut body);
    page.trigger_search(&mut body);
    page.inside(&mut body);
    page.audit(&mut body);
    page.stages(&mut body);
    page.not_evaluated(&mut body);
    page.coverage(&mut body);
    page.provenance(&mut body);
    let mut values = BTreeMap::new();
    values.insert("csp", csp());
    values.insert("generator", esc(&format!("{} {}", r.tool.name, r.tool.version)));
    values.insert("title", esc(&format!("trapdoor: {} · {}", decision_label(r.verdict.decision), r.candidate.spec)));
    values.insert("style", STYLE.to_string());
    values.insert("body", body);
    values.insert("script", SCRIPT.to_string());
    fill(TEMPLATE, &values).into_bytes()
}

struct Page<'a> {
    r: &'a RunRecord,
    /// Test id → the most decisive reason citing it.
    cited: BTreeMap<&'a str, Decision>,
    /// Anchors that exist on the page (evidence links only point at these).
    anchors: BTreeSet<String>,
    cases: Vec<&'a CaseResult>,
    /// Triggered cases evaluated (of which `cases` are shown).
    triggered: usize,
}

impl<'a> Page<'a> {
    fn new(r: &'a RunRecord) -> Page<'a> {
        let cited = test_citations(r);
        let (cases, triggered) = top_triggered(r, MAX_CASES);
        let mut anchors = BTreeSet::new();
        for (t, _) in Self::ordered_tests(r, &cited).iter().take(MAX_ALL_ROWS) {
            anchors.insert(anchor("test", &t.id));
        }
        for c in &cases {
            anchors.insert(anchor("case", &c.id));
        }
        for f in r.audit.findings.iter().take(MAX_FINDINGS) {
            anchors.insert(anchor("finding", &format!("{}@{}", f.rule, f.file)));
        }
        Page { r, cited, anchors, cases, triggered }
    }

    /// Evaluated tests (not the descriptive ones): cited by the verdict first, then significant, then by q.
    fn ordered_tests<'b>(r: &'b RunRecord, cited: &BTreeMap<&str, Decision>) -> Vec<(&'b TestResult, bool)> {
        let mut v: Vec<(&TestResult, bool)> = r
            .tests
            .iter()
            .filter(|t| !matches!(t.status, TestStatus::InsufficientSamples | TestStatus::Descriptive))
            .map(|t| (t, cited.get(t.id.as_str()).is_some_and(|d| *d != Decision::Pass)))
            .collect();
        v.sort_by(|a, b| {
            let q = |t: &TestResult| t.q.map(|x| x.0).unwrap_or(1.0);
            b.1.cmp(&a.1)
                .then((b.0.status == TestStatus::Significant).cmp(&(a.0.status == TestStatus::Significant)))
                .then(q(a.0).total_cmp(&q(b.0)))
                .then_with(|| a.0.id.cmp(&b.0.id))
        });
        v
    }

    fn evidence_link(&self, e: &Evidence) -> String {
        // Sections always on the page, and per-item anchors that are on it only when the item is shown.
        let (kind, target) = match e.kind {
            EvidenceKind::Test => ("test", Some(anchor("test", &e.id)).filter(|a| self.anchors.contains(a))),
            EvidenceKind::Case => ("case", Some(anchor("case", &e.id)).filter(|a| self.anchors.contains(a))),
            EvidenceKind::Finding => ("finding", Some(anchor("finding", &e.id)).filter(|a| self.anchors.contains(a))),
            EvidenceKind::Stage => ("stage", Some("stages".to_string())),
            EvidenceKind::WeightDelta => ("weights", Some("weight-delta".to_string())),
            EvidenceKind::Activation => ("activations", Some("activations".to_string())),
            EvidenceKind::TriggerSearch => ("trigger-search", Some("trigger-search".to_string())),
            EvidenceKind::Metric => ("metric", None),
        };
        let label = format!("{kind}:{}", esc_cut(&e.id, 200));
        match target {
            Some(a) => format!("<a href=\"#{a}\"><code>{label}</code></a>"),
            None => format!("<code>{label}</code>"),
        }
    }

    // -----------------------------------------------------------------------------------------------------------

    fn verdict(&self, o: &mut String) {
        let r = self.r;
        let v = &r.verdict;
        let d = v.decision;
        let model = |m: &ModelRef| {
            let mut s = format!("<code>{}</code>", esc(&m.spec));
            if let Some(a) = &m.adapter {
                let _ = write!(s, " + adapter <code>{}</code>", esc(&a.spec));
            }
            s
        };
        let _ = writeln!(
            o,
            "<header class=\"banner {}\" id=\"verdict\" data-decision=\"{}\"><h1>{}</h1><div class=\"sub\">Candidate {} vs baseline {} · policy <code>{}</code> v{} · seed {} · {}/{}</div></header>",
            d.as_str(),
            d.as_str(),
            decision_label(d),
            model(&r.candidate),
            model(&r.baseline),
            esc(&r.policy.name),
            esc(&r.policy.version),
            r.settings.seed,
            esc(&r.settings.device),
            esc(&r.settings.dtype),
        );
        o.push_str(match d {
            Decision::Pass => "<p>The candidate may be promoted under this policy. A pass is not proof that no backdoor exists: see <a href=\"#coverage\">Coverage</a> for what was checked.</p>\n",
            Decision::Warn => "<p>No fail rule fired, but the policy asks a reviewer to look at the reasons below.</p>\n",
            Decision::Fail => "<p><strong>The candidate must not be promoted under this policy.</strong></p>\n",
            Decision::NothingEvaluated => "<p>Nothing could be evaluated, so no decision was made: see the reasons and <a href=\"#not-evaluated\">Not evaluated</a>.</p>\n",
        });
        if v.reasons.is_empty() {
            o.push_str("<p>No policy rule fired.</p>\n");
        } else {
            o.push_str("<h2 id=\"why\">Why</h2>\n<ul class=\"reasons\">\n");
            for reason in &v.reasons {
                let _ = write!(
                    o,
                    "<li><span class=\"badge {}\">{}</span> <span class=\"badge {}\">{}</span> <code>{}</code>: {}",
                    reason.decision.as_str(),
                    reason.decision.as_str(),
                    reason.severity.as_str(),
                    reason.severity.as_str(),
                    esc(&reason.rule),
                    esc_cut(&reason.message, 2000)
                );
                if !reason.evidence.is_empty() {
                    o.push_str("<div class=\"evidence\">Evidence: ");
                    for e in reason.evidence.iter().take(20) {
                        o.push_str(&self.evidence_link(e));
                    }
                    if reason.evidence.len() > 20 {
                        let _ = write!(o, "<span class=\"muted\">and {} more</span>", reason.evidence.len() - 20);
                    }
                    o.push_str("</div>");
                }
                o.push_str("</li>\n");
            }
            o.push_str("</ul>\n");
        }
        self.at_a_glance(o);
        let s = &v.summary;
        let _ = write!(
            o,
            "<p><strong>{} tests</strong>: {} evaluated, {} significant, {} with too few samples.",
            s.tests, s.evaluated, s.significant, s.insufficient
        );
        o.push_str(&findings_summary(s));
        o.push_str("</p>\n");
    }

    /// Which trigger, which outputs, which layers: one line each, linking to the sections with the detail.
    fn at_a_glance(&self, o: &mut String) {
        let r = self.r;
        let mut rows: Vec<(&str, String)> = Vec::new();
        // Triggers named by the tests the verdict holds against the candidate.
        let mut triggers: Vec<String> = Vec::new();
        for t in &r.tests {
            if self.cited.get(t.id.as_str()).is_some_and(|d| *d != Decision::Pass) {
                if let Some(tr) = &t.trigger {
                    let item = format!("<code>{}</code> ({} / {})", esc(&tr.text), esc(&t.suite), esc(&t.probe));
                    if !triggers.contains(&item) {
                        triggers.push(item);
                    }
                }
            }
        }
        if let Some(ts) = &r.trigger_search {
            for x in ts.triggers.iter().take(3) {
                triggers.push(format!(
                    "<code>{}</code> (recovered by the search, ASR {} vs {} on the baseline)",
                    esc(&x.text),
                    num(x.asr_candidate.0),
                    num(x.asr_baseline.0)
                ));
            }
        }
        if !triggers.is_empty() {
            rows.push(("Triggers", triggers.into_iter().take(6).collect::<Vec<_>>().join(", ")));
        }
        if let Some(c) = self.cases.first() {
            let snippet = |m: Option<&ModelOutput>| {
                m.map(|m| format!("<code>{}</code>", esc_cut(m.text.trim(), 80))).unwrap_or_else(|| "no output".into())
            };
            rows.push((
                "Outputs",
                format!(
                    "candidate {} vs baseline {} (<a href=\"#{}\">case <code>{}</code></a>)",
                    snippet(c.candidate.as_ref()),
                    snippet(c.baseline.as_ref()),
                    anchor("case", &c.id),
                    esc(&c.id)
                ),
            ));
        }
        let mut layers: Vec<String> = Vec::new();
        if let Some(w) = &r.inside.weight_delta {
            let mut by_layer: BTreeMap<Option<u32>, Vec<&str>> = BTreeMap::new();
            for row in w.rows.iter().filter(|x| x.flagged) {
                by_layer.entry(row.layer).or_default().push(row.module.as_str());
            }
            for (layer, modules) in by_layer.iter().take(8) {
                let l = layer.map(|l| format!("layer {l}")).unwrap_or_else(|| "outside the layers".into());
                layers.push(format!("{l} {} (<a href=\"#weight-delta\">weights</a>)", esc(&modules.join(", "))));
            }
        }
        if let Some(a) = &r.inside.activations {
            for l in a.layers.iter().filter(|l| l.flagged).take(8) {
                layers.push(format!(
                    "layer {} (<a href=\"#activations\">activations</a>, {} of triggered prompts above threshold)",
                    l.layer,
                    num(l.flagged_fraction.0)
                ));
            }
        }
        if !layers.is_empty() {
            rows.push(("Layers", layers.join("; ")));
        }
        let serious = r.audit.findings.iter().filter(|f| f.severity >= Severity::High).count();
        if serious > 0 {
            rows.push((
                "Artifacts",
                format!("{serious} audit finding(s) of high or critical severity (<a href=\"#audit\">audit</a>)"),
            ));
        }
        if rows.is_empty() {
            return;
        }
        o.push_str("<table class=\"glance\" id=\"at-a-glance\"><tbody>\n");
        for (k, v) in rows {
            let _ = writeln!(o, "<tr><th>{k}</th><td>{v}</td></tr>");
        }
        o.push_str("</tbody></table>\n");
    }

    // -----------------------------------------------------------------------------------------------------------

    /// Forest plots: one SVG panel per metric, a row per test (trigger), point = effect, line = interval.
    fn forest(&self, o: &mut String) {
        let r = self.r;
        let mut by_metric: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
        for t in r.tests.iter().filter(|t| t.status != TestStatus::InsufficientSamples) {
            if t.effect.is_some_and(|e| e.0.is_finite()) {
                by_metric.entry(t.metric.as_str()).or_default().push(t);
            }
        }
        o.push_str("<h2 id=\"effects\">Effect sizes</h2>\n");
        if by_metric.is_empty() {
            o.push_str("<p>No test has an effect estimate.</p>\n");
            return;
        }
        let ci_level =
            r.tests.iter().find_map(|t| t.ci.as_ref().map(|c| c.level.0)).unwrap_or(r.settings.statistics.ci_level.0);
        let _ = writeln!(
            o,
            "<p>Mean paired difference per test with its {}% bootstrap interval, one panel per metric (metric units). <span class=\"legend\">● red: significant and suspicious · ● blue: significant, benign direction · ● grey: not significant · ◆ purple: drift estimate (no test). Dashed line: no effect.</span></p>",
            setting(ci_level * 100.0)
        );
        // Panels of metrics the verdict cites first.
        let mut metrics: Vec<(&str, Vec<&TestResult>)> = by_metric.into_iter().collect();
        metrics.sort_by_key(|(m, ts)| {
            (!ts.iter().any(|t| self.cited.get(t.id.as_str()).is_some_and(|d| *d != Decision::Pass)), *m)
        });
        let panels = metrics.len();
        for (metric, mut tests) in metrics.into_iter().take(MAX_PANELS) {
            tests.sort_by(|a, b| {
                let ca = self.cited.contains_key(a.id.as_str());
                let cb = self.cited.contains_key(b.id.as_str());
                cb.cmp(&ca).then_with(|| a.id.cmp(&b.id))
            });
            let total = tests.len();
            tests.truncate(MAX_PLOT_ROWS);
            let _ = writeln!(o, "<h3>{}</h3>", esc(metric));
            o.push_str(&forest_svg(&tests));
            if total > tests.len() {
                let _ = writeln!(o, "<p class=\"note\">Showing {} of {total} tests of this metric; all are in the table below and in report.json.</p>", tests.len());
            }
        }
        if panels > MAX_PANELS {
            let _ = writeln!(o, "<p class=\"note\">Showing {MAX_PANELS} of {panels} metrics.</p>");
        }
    }

    fn tests(&self, o: &mut String) {
        let tests = Self::ordered_tests(self.r, &self.cited);
        o.push_str("<h2 id=\"tests\">Tests</h2>\n");
        if tests.is_empty() {
            o.push_str("<p>No test was evaluated.</p>\n");
            return;
        }
        let _ = writeln!(
            o,
            "<p>Evaluated tests: those behind the verdict first (⚑), then significant ones (q ≤ {}), then by q. Effect = mean paired difference in metric units [interval]; r = rank-biserial correlation.</p>",
            setting(self.r.settings.statistics.fdr.0)
        );
        let mut head = String::new();
        table_head(&mut head, &[["test", "trigger"].as_slice(), &TEST_STAT_COLUMNS, &["status"]].concat());
        o.push_str(&head);
        for (i, (t, cited)) in tests.iter().take(MAX_ALL_ROWS).enumerate() {
            if i == MAX_TABLE_ROWS {
                o.push_str("</tbody></table>\n");
                let _ = writeln!(
                    o,
                    "<button type=\"button\" data-toggle=\"more-tests\" data-show=\"Show all {} tests\" data-hide=\"Hide\" aria-expanded=\"false\">Show all {} tests</button><div id=\"more-tests\" hidden>",
                    tests.len().min(MAX_ALL_ROWS),
                    tests.len().min(MAX_ALL_ROWS)
                );
                o.push_str(&head);
            }
            let _ = write!(
                o,
                "<tr id=\"{}\"><td>{}<code>{}</code></td>",
                anchor("test", &t.id),
                if *cited { "⚑ " } else { "" },
                esc(&t.id)
            );
            let stats = test_stat_cells(t);
            cells(o, [trigger_cell(&t.trigger)].into_iter().chain(stats).chain([Cell::Word(t.status.as_str())]));
            o.push_str("</tr>\n");
        }
        o.push_str("</tbody></table>\n");
        if tests.len() > MAX_TABLE_ROWS {
            o.push_str("</div>\n");
        }
        if tests.len() > MAX_ALL_ROWS {
            let _ = writeln!(
                o,
                "<p class=\"note\">Showing {MAX_ALL_ROWS} of {} tests; everything is in report.json.</p>",
                tests.len()
            );
        }
        let notes: Vec<&TestResult> =
            tests.iter().map(|(t, _)| *t).filter(|t| t.note.is_some()).take(MAX_CASES).collect();
        if !notes.is_empty() {
            o.push_str("<ul>\n");
            for t in notes {
                let _ = writeln!(
                    o,
                    "<li><code>{}</code>: {}</li>",
                    esc(&t.id),
                    esc_cut(t.note.as_deref().unwrap_or(""), 600)
                );
            }
            o.push_str("</ul>\n");
        }
    }

    // -----------------------------------------------------------------------------------------------------------

    fn side_by_side(&self, o: &mut String) {
        if self.cases.is_empty() {
            return;
        }
        let r = self.r;
        o.push_str("<h2 id=\"side-by-side\">Side by side</h2>\n");
        o.push_str("<p>Triggered cases, those of the triggers behind the verdict first, each where the trigger pushed the two models' next-token distributions furthest apart, next to the same prompt without the trigger. The trigger is <mark class=\"trigger\">marked</mark> in the prompt, detector hits are <mark class=\"hit\">marked</mark> in the outputs. Below each case, every generated token is coloured by the Jensen–Shannon divergence of the two models' next-token distributions at that position (white 0 → dark red ln 2).</p>\n");
        o.push_str("<div class=\"controls\"><label for=\"js-threshold\">Outline tokens with JS divergence ≥ <span id=\"js-threshold-value\">0.10</span> nats</label> <input type=\"range\" id=\"js-threshold\" min=\"0\" max=\"0.7\" step=\"0.01\" value=\"0.1\"></div>\n");
        for c in &self.cases {
            let Variant::Triggered { trigger_text, position, .. } = &c.variant else { continue };
            let _ = writeln!(
                o,
                "<section class=\"case\" id=\"{}\"><h3>Trigger <code>{}</code> ({}) · {} / {} · case <code>{}</code></h3>",
                anchor("case", &c.id),
                esc(trigger_text),
                position.as_str(),
                esc(&c.suite),
                esc(&c.probe),
                esc(&c.id)
            );
            if let Some(d) = &c.divergence {
                let _ = writeln!(o, "<p class=\"muted\">{}</p>", divergence_summary(r, c, d));
            }
            o.push_str(
                "<div class=\"side\"><div></div><div class=\"h\">candidate</div><div class=\"h\">baseline</div>\n",
            );
            // The same prompt without the trigger (when recorded), then the triggered case with the trigger marked.
            let clean = c.clean_case.as_deref().and_then(|id| r.case(id));
            let clean_row = clean.map(|k| ("clean prompt", k, esc_cut(&k.prompt, MAX_TEXT_CHARS)));
            let triggered_row = ("with trigger", *c, prompt_with_trigger(c));
            for (label, case, prompt) in clean_row.into_iter().chain([triggered_row]) {
                let _ = writeln!(
                    o,
                    "<div><div class=\"h\">{label}</div><pre>{prompt}</pre></div><div>{}</div><div>{}</div>",
                    output_html(case.candidate.as_ref()),
                    output_html(case.baseline.as_ref())
                );
            }
            o.push_str("</div>\n");
            if let Some(d) = &c.divergence {
                for (label, trace, out) in [
                    ("along the candidate's output", &d.along_candidate, c.candidate.as_ref()),
                    ("along the baseline's output", &d.along_baseline, c.baseline.as_ref()),
                ] {
                    match (&trace.per_token, out) {
                        (Some(pt), Some(out)) => {
                            let _ = writeln!(o, "<div class=\"strip\"><span class=\"muted\">Per-token divergence {label}:</span> {}</div>", token_strip(pt, out));
                        }
                        _ => {
                            let _ = writeln!(o, "<p class=\"note\">No per-token divergence {label} (kept only for the {} most divergent cases).</p>", r.settings.per_token_cases);
                        }
                    }
                }
            }
            o.push_str("</section>\n");
        }
        showing(o, self.cases.len(), self.triggered, "triggered cases");
    }

    // -----------------------------------------------------------------------------------------------------------

    fn trigger_search(&self, o: &mut String) {
        let r = self.r;
        o.push_str("<h2 id=\"trigger-search\">Trigger search</h2>\n");
        let Some(t) = &r.trigger_search else {
            let why = match &r.stages.trigger_search {
                StageStatus::Skipped { reason } => format!("was skipped: {}", esc_cut(reason, 600)),
                StageStatus::Error { message } => format!("failed: {}", esc_cut(message, 600)),
                StageStatus::Ran { .. } => "ran but recorded no results".into(),
            };
            let _ = writeln!(o, "<p><strong>The search for unknown triggers {why}.</strong> Only the triggers in the suites were checked.</p>");
            return;
        };
        if t.triggers.is_empty() {
            o.push_str("<p>No trigger was recovered.</p>\n");
        } else {
            o.push_str("<p>Recovered triggers, verified on held-out prompts (ASR = attack success rate).</p>\n");
            table_head(o, &RECOVERED_COLUMNS);
            for x in t.triggers.iter().take(MAX_TABLE_ROWS) {
                table_row(o, recovered_row(x, 200));
            }
            o.push_str("</tbody></table>\n");
            showing(o, t.triggers.len().min(MAX_TABLE_ROWS), t.triggers.len(), "recovered triggers");
        }
        if !t.anomalies.is_empty() {
            table_head(o, &ANOMALY_COLUMNS);
            for a in t.anomalies.iter().take(MAX_TABLE_ROWS) {
                table_row(o, anomaly_row(a, 200));
            }
            o.push_str("</tbody></table>\n");
            showing(o, t.anomalies.len().min(MAX_TABLE_ROWS), t.anomalies.len(), "targets");
        }
        let c = &t.coverage;
        let _ = writeln!(o, "<p><strong>Coverage:</strong> {} {}</p>", esc(&c.statement), search_coverage(c));
        if !c.not_searched.is_empty() {
            o.push_str("<p>Not searched:</p><ul>\n");
            for n in &c.not_searched {
                let _ = writeln!(o, "<li>{}</li>", esc(n));
            }
            o.push_str("</ul>\n");
        }
    }

    // -----------------------------------------------------------------------------------------------------------

    fn inside(&self, o: &mut String) {
        let r = self.r;
        o.push_str("<h2 id=\"inside\">Inside the model</h2>\n");
        match &r.inside.weight_delta {
            None => {
                let _ = writeln!(
                    o,
                    "<p id=\"weight-delta\">The weight delta was not computed ({}).</p>",
                    stage_words(&r.stages.weight_delta)
                );
            }
            Some(w) => {
                o.push_str("<h3 id=\"weight-delta\">Weight delta</h3>\n");
                if let Some(s) = &w.summary {
                    let _ = writeln!(o, "<p>{}</p>", esc(s));
                }
                if w.identical {
                    o.push_str("<p>All compared weights are <strong>bit-identical</strong> to the baseline's: any behavioural difference comes from elsewhere (tokenizer, chat template, configuration).</p>\n");
                }
                flags(o, &w.flags);
                heatmap(o, &w.rows);
                if !w.moved_rows.is_empty() {
                    o.push_str("<p>Embedding rows that moved most:</p>");
                    table_head(o, &MOVED_ROW_COLUMNS);
                    for m in w.moved_rows.iter().take(20) {
                        table_row(o, moved_row(m));
                    }
                    o.push_str("</tbody></table>\n");
                    showing(o, w.moved_rows.len().min(20), w.moved_rows.len(), "moved rows");
                }
            }
        }
        match &r.inside.activations {
            None => {
                let _ = writeln!(
                    o,
                    "<p id=\"activations\">Activation anomalies were not computed ({}).</p>",
                    stage_words(&r.stages.activations)
                );
            }
            Some(a) => {
                o.push_str("<h3 id=\"activations\">Activations under triggers</h3>\n");
                if let Some(s) = &a.summary {
                    let _ = writeln!(o, "<p>{}</p>", esc(s));
                }
                flags(o, &a.flags);
                if !a.layers.is_empty() {
                    o.push_str(&activation_svg(&a.layers));
                    table_head(o, &LAYER_COLUMNS);
                    for l in a.layers.iter().take(MAX_LAYERS) {
                        table_row(o, layer_row(l));
                    }
                    o.push_str("</tbody></table>\n");
                    showing(o, a.layers.len().min(MAX_LAYERS), a.layers.len(), "layers");
                }
                if !a.top_tokens.is_empty() {
                    let toks: Vec<String> = a
                        .top_tokens
                        .iter()
                        .take(20)
                        .map(|t| format!("<code>{}</code> ({})", esc(&t.token), num(t.score.0)))
                        .collect();
                    let _ = writeln!(o, "<p>Input tokens that drive the divergence: {}.</p>", toks.join(", "));
                }
            }
        }
    }

    fn audit(&self, o: &mut String) {
        let f = &self.r.audit.findings;
        o.push_str("<h2 id=\"audit\">Audit findings</h2>\n");
        if f.is_empty() {
            let _ = writeln!(
                o,
                "<p>{}</p>",
                match (&self.r.stages.audit, self.r.audit.passed) {
                    (StageStatus::Ran { .. }, _) => "The artifact audit found nothing.".to_string(),
                    (s, _) => format!("The artifact audit did not run ({}).", stage_words(s)),
                }
            );
            return;
        }
        table_head(o, &FINDING_COLUMNS);
        for x in f.iter().take(MAX_FINDINGS) {
            let detail = if x.detail.is_null() {
                String::new()
            } else {
                let json = serde_json::to_string_pretty(&x.detail).unwrap_or_default();
                format!("<details><summary>detail</summary><pre>{}</pre></details>", esc_cut(&json, MAX_TEXT_CHARS))
            };
            let _ = writeln!(
                o,
                "<tr id=\"{}\"><td><span class=\"badge {}\">{}</span></td><td><code>{}</code></td><td><code>{}</code></td><td>{}{}</td></tr>",
                anchor("finding", &format!("{}@{}", x.rule, x.file)),
                x.severity.as_str(),
                x.severity.as_str(),
                esc(&x.rule),
                esc(&x.file),
                esc_cut(&x.message, 1000),
                detail
            );
        }
        o.push_str("</tbody></table>\n");
        showing(o, f.len().min(MAX_FINDINGS), f.len(), "findings");
    }

    fn stages(&self, o: &mut String) {
        o.push_str("<h2 id=\"stages\">Stages</h2>\n");
        table_head(o, &["stage", "status", "note"]);
        for (name, s) in self.r.stages.iter() {
            let (note, class) = match s {
                StageStatus::Ran { note } => (note.as_deref().unwrap_or(""), "pass"),
                StageStatus::Skipped { reason } => (reason.as_str(), "warn"),
                StageStatus::Error { message } => (message.as_str(), "fail"),
            };
            let _ = writeln!(
                o,
                "<tr><td>{name}</td><td><span class=\"badge {class}\">{}</span></td><td>{}</td></tr>",
                s.name(),
                esc_cut(note, 1000)
            );
        }
        o.push_str("</tbody></table>\n");
    }

    fn not_evaluated(&self, o: &mut String) {
        let r = self.r;
        let missing = NotEvaluated::of(r);
        o.push_str("<h2 id=\"not-evaluated\">Not evaluated</h2>\n");
        if missing.is_empty() {
            o.push_str("<p>Every test had enough samples and every case was evaluated.</p>\n");
            return;
        }
        let NotEvaluated { insufficient, case_errors, probe_errors } = missing;
        o.push_str("<ul>\n");
        for p in &probe_errors {
            let _ = writeln!(
                o,
                "<li>probe {} / {}: {}</li>",
                esc(&p.suite),
                esc(&p.probe),
                esc_cut(p.error.as_deref().unwrap_or(""), 600)
            );
        }
        for c in case_errors.iter().take(20) {
            let _ = writeln!(
                o,
                "<li>case <code>{}</code>: {}</li>",
                esc(&c.id),
                esc_cut(c.error.as_deref().unwrap_or(""), 600)
            );
        }
        o.push_str("</ul>\n");
        showing(o, case_errors.len().min(20), case_errors.len(), "failed cases");
        if !insufficient.is_empty() {
            let _ = write!(
                o,
                "<p>{} had fewer than {} pairs and were <strong>not evaluated</strong> (they count neither for nor against the candidate):</p>",
                if insufficient.len() == 1 { "1 test".to_string() } else { format!("{} tests", insufficient.len()) },
                r.settings.statistics.min_pairs
            );
            table_head(o, &INSUFFICIENT_COLUMNS);
            for t in insufficient.iter().take(MAX_ALL_ROWS) {
                table_row(o, insufficient_row(t));
            }
            o.push_str("</tbody></table>\n");
            showing(o, insufficient.len().min(MAX_ALL_ROWS), insufficient.len(), "tests with too few samples");
        }
    }

    fn coverage(&self, o: &mut String) {
        let r = self.r;
        o.push_str("<h2 id=\"coverage\">Coverage</h2>\n");
        if r.suites.is_empty() {
            o.push_str("<p>No probe suite was run.</p>\n");
        } else {
            table_head(o, &SUITE_COLUMNS);
            for s in &r.suites {
                table_row(o, suite_row(r, s));
            }
            o.push_str("</tbody></table>\n");
        }
        o.push_str(
            "<p>Known triggers are only caught when they (or something that fires the same backdoor) are in a suite; ",
        );
        o.push_str(match &r.stages.trigger_search {
            StageStatus::Ran { .. } => "the trigger search looked for unknown ones within the coverage stated above.</p>\n",
            _ => "<strong>the trigger search for unknown triggers did not run</strong> (see <a href=\"#stages\">Stages</a>).</p>\n",
        });
    }

    fn provenance(&self, o: &mut String) {
        let r = self.r;
        o.push_str("<h2 id=\"provenance\">Provenance</h2>\n<ul>\n");
        let t = &r.tool;
        let _ = writeln!(
            o,
            "<li>{} {}{}</li>",
            esc(&t.name),
            esc(&t.version),
            t.git_hash.as_deref().map(|h| format!(" (git <code>{}</code>)", esc(h))).unwrap_or_default()
        );
        for (role, m) in [("candidate", &r.candidate), ("baseline", &r.baseline)] {
            let _ = write!(o, "<li>{role}: <code>{}</code>", esc(&m.spec));
            let mut parts = Vec::new();
            if let Some(a) = &m.architecture {
                parts.push(esc(a));
            }
            if let Some(p) = m.params {
                parts.push(format!("{p} parameters"));
            }
            if let Some(rev) = &m.revision {
                parts.push(format!("revision <code>{}</code>", esc(rev)));
            }
            parts.push(format!("{} files", m.files.len()));
            if let Some(d) = &m.root_digest {
                parts.push(format!("root digest <code>{}</code>", esc(d)));
            }
            let _ = write!(o, " ({})", parts.join(", "));
            if let Some(a) = &m.adapter {
                let _ = write!(o, "; adapter <code>{}</code>", esc(&a.spec));
                if let Some(d) = &a.root_digest {
                    let _ = write!(o, " (root digest <code>{}</code>)", esc(d));
                }
            }
            o.push_str("</li>\n");
        }
        for s in &r.suites {
            let _ = writeln!(
                o,
                "<li>suite {} v{}: <code>{}</code> (sha256 <code>{}</code>)</li>",
                esc(&s.name),
                esc(&s.version),
                esc(&s.path),
                esc(&s.sha256)
            );
        }
        let p = &r.policy;
        let _ = writeln!(
            o,
            "<li>policy {} v{}: <code>{}</code> (sha256 <code>{}</code>)</li>",
            esc(&p.name),
            esc(&p.version),
            esc(&p.source),
            esc(&p.sha256)
        );
        let _ = writeln!(o, "<li>{}</li>", statistics_settings(r, esc));
        if !r.command.is_empty() {
            let _ = writeln!(o, "<li>command: <code>{}</code></li>", esc_cut(&r.command.join(" "), 2000));
        }
        o.push_str(
            "</ul>\n<footer>Generated by trapdoor from report.json; every number here is in that file.</footer>\n",
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Pieces
// ---------------------------------------------------------------------------------------------------------------

fn showing(o: &mut String, shown: usize, total: usize, what: &str) {
    if shown < total {
        let _ = writeln!(o, "<p class=\"note\">Showing {shown} of {total} {what}; everything is in report.json.</p>");
    }
}

/// `<table>` and its header row (column names are ours: not escaped).
fn table_head(o: &mut String, columns: &[&str]) {
    o.push_str("<table><thead><tr>");
    for c in columns {
        let _ = write!(o, "<th>{c}</th>");
    }
    o.push_str("</tr></thead><tbody>\n");
}

/// Table cells; record text is escaped, numbers are right-aligned.
fn cells(o: &mut String, cells: impl IntoIterator<Item = Cell>) {
    for c in cells {
        let _ = match c {
            Cell::Num(s) => write!(o, "<td class=\"num\">{s}</td>"),
            Cell::Word(w) => write!(o, "<td>{w}</td>"),
            Cell::Text(s) => write!(o, "<td>{}</td>", esc(&s)),
            Cell::Code(s) => write!(o, "<td><code>{}</code></td>", esc(&s)),
            Cell::Mono(s) => write!(o, "<td class=\"mono\">{}</td>", esc(&s)),
        };
    }
}

fn table_row(o: &mut String, row: impl IntoIterator<Item = Cell>) {
    o.push_str("<tr>");
    cells(o, row);
    o.push_str("</tr>\n");
}

fn stage_words(s: &StageStatus) -> String {
    match s {
        StageStatus::Ran { .. } => "it ran but recorded nothing".into(),
        StageStatus::Skipped { reason } => format!("skipped: {}", esc_cut(reason, 400)),
        StageStatus::Error { message } => format!("failed: {}", esc_cut(message, 400)),
    }
}

fn flags(o: &mut String, flags: &[InsideFlag]) {
    if flags.is_empty() {
        return;
    }
    o.push_str("<ul>\n");
    for f in flags {
        let _ = writeln!(o, "<li>⚑ <code>{}</code> at {}: {}</li>", esc(&f.id), esc(&f.location), esc(&f.message));
    }
    o.push_str("</ul>\n");
}

/// A number for SVG coordinates: fixed two decimals (deterministic, compact).
fn px(x: f64) -> String {
    format!("{x:.2}")
}

/// The forest plot of one metric's tests.
fn forest_svg(tests: &[&TestResult]) -> String {
    const LABEL_W: f64 = 360.0;
    const PLOT_W: f64 = 420.0;
    const ROW_H: f64 = 20.0;
    const TOP: f64 = 8.0;
    const AXIS_H: f64 = 28.0;
    let finite = |x: f64| x.is_finite().then_some(x);
    let mut lo = 0.0f64;
    let mut hi = 0.0f64;
    for t in tests {
        for x in [
            t.effect.map(|e| e.0),
            t.ci.as_ref().and_then(|c| finite(c.lo.0)),
            t.ci.as_ref().and_then(|c| finite(c.hi.0)),
        ]
        .into_iter()
        .flatten()
        {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |v: f64| LABEL_W + (v.clamp(lo, hi) - lo) / (hi - lo) * PLOT_W;
    let height = TOP + ROW_H * tests.len() as f64 + AXIS_H;
    let width = LABEL_W + PLOT_W + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"forest\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"forest plot\">",
        px(width),
        px(height),
        px(width),
        px(height)
    );
    let bottom = TOP + ROW_H * tests.len() as f64;
    let _ = write!(
        s,
        "<line class=\"zero\" x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\"/>",
        px(x(0.0)),
        px(TOP),
        px(bottom)
    );
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{2}\" y2=\"{2}\"/>",
        px(LABEL_W),
        px(LABEL_W + PLOT_W),
        px(bottom)
    );
    // Tick labels at both ends and at zero, unless zero is too close to an end to be read apart from it.
    let zero_apart = (x(0.0) - x(lo)).min(x(hi) - x(0.0)) > 40.0;
    for v in [lo, 0.0, hi] {
        if v == 0.0 && !zero_apart {
            continue;
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(x(v)),
            px(bottom + 16.0),
            esc(&num(v))
        );
    }
    for (i, t) in tests.iter().enumerate() {
        let y = TOP + ROW_H * (i as f64 + 0.5);
        let label =
            format!("{}/{} · {}", t.probe, t.trigger.as_ref().map(|tr| tr.text.as_str()).unwrap_or("clean"), t.suite);
        let (colour, shape) = match (t.status, t.direction) {
            (TestStatus::Descriptive, _) => ("#7b3fa0", "diamond"),
            (TestStatus::Significant, EffectDirection::Suspicious) => ("#b3001b", "circle"),
            (TestStatus::Significant, _) => ("#1f5fbf", "circle"),
            _ => ("#8a8a8a", "circle"),
        };
        let effect = t.effect.map(|e| e.0).unwrap_or(0.0);
        let mut tip = format!("{}: effect {}", t.id, num(effect));
        if let Some(ci) = &t.ci {
            let _ = write!(tip, " [{}, {}]", num(ci.lo.0), num(ci.hi.0));
        }
        if let Some(q) = t.q {
            let _ = write!(tip, ", q {}", pval(q.0));
        }
        let _ = write!(s, "<g><title>{}</title>", esc(&tip));
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            px(LABEL_W - 8.0),
            px(y + 4.0),
            esc_cut(&label, 48)
        );
        if let Some(ci) = &t.ci {
            let _ = write!(
                s,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                px(x(ci.lo.0)),
                px(x(ci.hi.0)),
                px(y)
            );
        }
        if shape == "diamond" {
            let cx = x(effect);
            let _ = write!(
                s,
                "<polygon points=\"{},{} {},{} {},{} {},{}\" fill=\"{colour}\"/>",
                px(cx),
                px(y - 6.0),
                px(cx + 6.0),
                px(y),
                px(cx),
                px(y + 6.0),
                px(cx - 6.0),
                px(y)
            );
        } else {
            let _ = write!(s, "<circle cx=\"{}\" cy=\"{}\" r=\"4.5\" fill=\"{colour}\"/>", px(x(effect)), px(y));
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>\n");
    s
}

/// Colour of a heatmap cell: log10 of the relative delta, −6 (or zero) → pale, 0 → dark red.
fn heat_colour(v: f64) -> &'static str {
    const PALETTE: [&str; 10] =
        ["#fff5eb", "#fee6ce", "#fdd0a2", "#fdae6b", "#fd8d3c", "#f16913", "#e6550d", "#d94801", "#a63603", "#7f2704"];
    if !v.is_finite() {
        return PALETTE[9];
    }
    if v <= 0.0 {
        return "#f4f4f4";
    }
    let t = ((v.log10() + 6.0) / 6.0).clamp(0.0, 0.999);
    PALETTE[(t * 10.0) as usize]
}

/// Layer × module heatmap of ‖ΔW‖/‖W‖, then the tensors outside the decoder layers.
fn heatmap(o: &mut String, rows: &[DeltaRow]) {
    let DeltaGrid { modules, cells, outside } = DeltaGrid::of(rows);
    if !cells.is_empty() {
        const LEFT: f64 = 64.0;
        const TOPH: f64 = 24.0;
        const CW: f64 = 84.0;
        const CH: f64 = 18.0;
        let layers: Vec<(&u32, &BTreeMap<&str, &DeltaRow>)> = cells.iter().take(MAX_LAYERS).collect();
        let width = LEFT + CW * modules.len() as f64 + 8.0;
        let height = TOPH + CH * layers.len() as f64 + 8.0;
        o.push_str("<p>Relative Frobenius norm of the delta, ‖ΔW‖/‖W‖, per layer and module (log colour scale from 10⁻⁶ to 1; grey = unchanged; black outline = flagged; hover for values).</p>\n");
        let _ = write!(
            o,
            "<svg class=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"weight delta heatmap\">",
            px(width),
            px(height),
            px(width),
            px(height)
        );
        for (j, m) in modules.iter().enumerate() {
            let _ = write!(
                o,
                "<text x=\"{}\" y=\"16\" text-anchor=\"middle\">{}</text>",
                px(LEFT + CW * (j as f64 + 0.5)),
                esc_cut(m, 12)
            );
        }
        for (i, (layer, by_module)) in layers.iter().enumerate() {
            let y = TOPH + CH * i as f64;
            let _ = write!(
                o,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">layer {layer}</text>",
                px(LEFT - 6.0),
                px(y + 13.0)
            );
            for (j, m) in modules.iter().enumerate() {
                let xx = LEFT + CW * j as f64;
                match by_module.get(m) {
                    None => {
                        let _ = write!(
                            o,
                            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\" stroke=\"#e0e0e0\"/>",
                            px(xx),
                            px(y),
                            px(CW - 2.0),
                            px(CH - 2.0)
                        );
                    }
                    Some(row) => {
                        let v = row.rel_frobenius.0;
                        let stroke =
                            if row.flagged { "stroke=\"#000000\" stroke-width=\"2.5\"" } else { "stroke=\"#ffffff\"" };
                        let _ = write!(
                            o,
                            "<g><title>{}: ‖ΔW‖/‖W‖ {}, top-{} energy {}, effective rank {}{}</title><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" {stroke}/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text></g>",
                            esc(&row.tensor),
                            num(v),
                            row.k,
                            num(row.topk_energy.0),
                            num(row.effective_rank.0),
                            if row.flagged { " (flagged)" } else { "" },
                            px(xx),
                            px(y),
                            px(CW - 2.0),
                            px(CH - 2.0),
                            heat_colour(v),
                            px(xx + (CW - 2.0) / 2.0),
                            px(y + 12.5),
                            esc(&num(v))
                        );
                    }
                }
            }
        }
        o.push_str("</svg>\n");
        showing(o, layers.len(), cells.len(), "layers");
    }
    if !outside.is_empty() {
        table_head(o, &TENSOR_COLUMNS);
        for row in outside.iter().take(MAX_LAYERS) {
            table_row(o, tensor_row(row));
        }
        o.push_str("</tbody></table>\n");
        showing(o, outside.len().min(MAX_LAYERS), outside.len(), "tensors");
    }
}

/// Per layer: mean Mahalanobis distance of clean and of triggered prompts, with the threshold.
fn activation_svg(layers: &[LayerAnomaly]) -> String {
    const LEFT: f64 = 64.0;
    const W: f64 = 560.0;
    const RH: f64 = 22.0;
    let layers: Vec<&LayerAnomaly> = layers.iter().take(MAX_LAYERS).collect();
    let max = layers
        .iter()
        .flat_map(|l| [l.clean_mean.0, l.triggered_mean.0, l.threshold.0])
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let x = |v: f64| LEFT + (if v.is_finite() { v.max(0.0) } else { max } / max) * W;
    let height = RH * layers.len() as f64 + 24.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"activations\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"activation anomalies\">",
        px(LEFT + W + 16.0),
        px(height),
        px(LEFT + W + 16.0),
        px(height)
    );
    for (i, l) in layers.iter().enumerate() {
        let y = RH * i as f64 + 4.0;
        let colour = if l.flagged { "#b3001b" } else { "#f0a15c" };
        let _ = write!(
            s,
            "<g><title>layer {}: clean {}, triggered {}, threshold {}, {} of triggered prompts above</title><text x=\"{}\" y=\"{}\" text-anchor=\"end\">layer {}</text><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"7\" fill=\"#9aa0a6\"/><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"7\" fill=\"{colour}\"/><line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#000000\" stroke-width=\"2\"/></g>",
            l.layer,
            num(l.clean_mean.0),
            num(l.triggered_mean.0),
            num(l.threshold.0),
            num(l.flagged_fraction.0),
            px(LEFT - 6.0),
            px(y + 12.0),
            l.layer,
            px(LEFT),
            px(y + 1.0),
            px(x(l.clean_mean.0) - LEFT),
            px(LEFT),
            px(y + 9.0),
            px(x(l.triggered_mean.0) - LEFT),
            px(x(l.threshold.0)),
            px(x(l.threshold.0)),
            px(y - 1.0),
            px(y + 18.0),
        );
    }
    let _ = write!(s, "<text x=\"{}\" y=\"{}\">grey: clean prompts · orange/red: triggered prompts (red = flagged) · black tick: threshold (mean Mahalanobis distance)</text>", px(LEFT), px(height - 4.0));
    s.push_str("</svg>\n");
    s
}

/// A model output in a `<pre>`, detector hits marked (byte offsets into the text; invalid spans are ignored).
fn output_html(out: Option<&ModelOutput>) -> String {
    let Some(m) = out else { return "<p class=\"muted\"><i>no output</i></p>".into() };
    let text = &m.text;
    let mut spans: Vec<(usize, usize)> = m
        .hits
        .iter()
        .map(|h| (h.start as usize, h.end as usize))
        .filter(|(a, b)| a < b && *b <= text.len() && text.is_char_boundary(*a) && text.is_char_boundary(*b))
        .collect();
    spans.sort();
    let mut s = String::from("<pre>");
    let mut at = 0usize;
    let limit = text.char_indices().nth(MAX_TEXT_CHARS).map(|(i, _)| i).unwrap_or(text.len());
    for (a, b) in spans {
        if a < at || b > limit {
            continue;
        }
        s.push_str(&esc(&text[at..a]));
        let _ = write!(s, "<mark class=\"hit\">{}</mark>", esc(&text[a..b]));
        at = b;
    }
    s.push_str(&esc(&text[at..limit]));
    if limit < text.len() {
        s.push('…');
    }
    s.push_str("</pre>");
    let hits = detector_labels(m);
    if !hits.is_empty() {
        let _ = write!(s, "<div class=\"muted\">detectors: {}</div>", esc(&hits.join(", ")));
    }
    s
}

/// The triggered prompt with the trigger marked (when the recorded offset really points at the trigger text).
fn prompt_with_trigger(c: &CaseResult) -> String {
    let p = &c.prompt;
    if let Variant::Triggered { trigger_text, char_offset, .. } = &c.variant {
        let start = p
            .char_indices()
            .nth(*char_offset as usize)
            .map(|(i, _)| i)
            .or((*char_offset as usize == p.chars().count()).then_some(p.len()));
        if let Some(a) = start {
            let b = a + trigger_text.len();
            if !trigger_text.is_empty() && p.get(a..b) == Some(trigger_text.as_str()) {
                return format!(
                    "{}<mark class=\"trigger\">{}</mark>{}",
                    esc_cut(&p[..a], MAX_TEXT_CHARS),
                    esc(trigger_text),
                    esc_cut(&p[b..], MAX_TEXT_CHARS)
                );
            }
        }
    }
    esc_cut(p, MAX_TEXT_CHARS)
}

/// The continuation token by token, each coloured by its JS divergence (10 classes over [0, ln 2]).
fn token_strip(pt: &PerToken, out: &ModelOutput) -> String {
    let n = pt.js.len();
    let texts: Option<&[String]> = (pt.tokens.len() == n).then_some(pt.tokens.as_slice());
    let mut s = String::new();
    for i in 0..n.min(MAX_TOKENS) {
        let js = pt.js[i].0;
        let class = if js.is_finite() { ((js / std::f64::consts::LN_2).clamp(0.0, 0.999) * 10.0) as usize } else { 9 };
        let kl = |v: Option<&Real>| v.map(|x| num(x.0)).unwrap_or_else(|| "—".into());
        let agree = pt.top1_agree.get(i).map(|a| if *a { "top-1 agrees" } else { "top-1 differs" }).unwrap_or("");
        let id = out.token_ids.get(i).map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        let (label, extra) = match texts {
            Some(t) => (esc(&t[i]), ""),
            None => (format!("#{id}"), " id"),
        };
        let _ = write!(
            s,
            "<span class=\"tok j{class}{extra}\" data-js=\"{}\" title=\"token {} (id {id}): JS {}, KL(cand‖base) {}, KL(base‖cand) {}, {agree}\">{label}</span>",
            Real(js),
            i,
            num(js),
            kl(pt.kl_cand_base.get(i)),
            kl(pt.kl_base_cand.get(i)),
        );
    }
    if n > MAX_TOKENS {
        let _ = write!(s, "<span class=\"muted\"> … {} more tokens</span>", n - MAX_TOKENS);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once() {
        let mut v = BTreeMap::new();
        v.insert("a", "{{b}}".to_string());
        v.insert("b", "B".to_string());
        assert_eq!(fill("x{{a}}y{{b}}z{{c}}", &v), "x{{b}}yBz{{c}}");
    }

    #[test]
    fn heat_colours_are_monotone() {
        assert_eq!(heat_colour(0.0), "#f4f4f4");
        assert_eq!(heat_colour(1e-7), "#fff5eb");
        assert_eq!(heat_colour(1.0), "#7f2704");
        assert_eq!(heat_colour(f64::INFINITY), "#7f2704");
    }
}
