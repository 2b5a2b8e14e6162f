//! `report.md`: the verdict first, then what diverged, sized to fit a pull-request comment.
//!
//! Order: verdict and its reasons; counts; significant tests (effect, confidence interval, q); side-by-side
//! outputs for the most divergent triggered cases (clean and triggered prompt, candidate and baseline); audit
//! findings; the look inside (layer × module table, moved embedding rows, activation anomalies); the trigger
//! search and its coverage; stages that were skipped or failed and why; tests with too few samples; coverage per
//! suite; provenance (tool, models, digests, seed).
//!
//! The output never exceeds [`MAX_BYTES`]. Every long list is cut to a limit with an explicit note (“showing 20
//! of 413 …; everything is in report.json”); when the whole document is still too big the limits shrink step by
//! step, and as a last resort the text is cut with a final note. Model text is shown in `<pre>` blocks or code
//! spans with invisible and bidirectional-control characters made visible (a right-to-left override in a trigger
//! must not reorder what the reviewer reads).

use std::fmt::Write as _;

use crate::record::*;
use crate::render::common::*;
use crate::text::{html_escape, md_code, md_code_cell, md_inline, md_message, md_message_cell, truncate_chars, visible};

/// Hard cap on report.md, in bytes (GitHub comments allow 65 536 characters).
pub const MAX_BYTES: usize = 60_000;

/// How many items each section shows before it says “showing N of M”.
#[derive(Debug, Clone, Copy)]
struct Limits {
    tests: usize,
    cases: usize,
    text_chars: usize,
    findings: usize,
    evidence: usize,
    layers: usize,
    moved_rows: usize,
    search: usize,
    insufficient: usize,
}

impl Limits {
    const START: Limits = Limits {
        tests: 40,
        cases: 8,
        text_chars: 1200,
        findings: 50,
        evidence: 8,
        layers: 48,
        moved_rows: 10,
        search: 15,
        insufficient: 30,
    };
    const FLOOR: Limits =
        Limits { tests: 5, cases: 1, text_chars: 160, findings: 5, evidence: 3, layers: 6, moved_rows: 3, search: 3, insufficient: 5 };

    fn shrink(self) -> Limits {
        let h = |x: usize, floor: usize| (x / 2).max(floor);
        let f = Limits::FLOOR;
        Limits {
            tests: h(self.tests, f.tests),
            cases: h(self.cases, f.cases),
            text_chars: h(self.text_chars, f.text_chars),
            findings: h(self.findings, f.findings),
            evidence: h(self.evidence, f.evidence),
            layers: h(self.layers, f.layers),
            moved_rows: h(self.moved_rows, f.moved_rows),
            search: h(self.search, f.search),
            insufficient: h(self.insufficient, f.insufficient),
        }
    }
}

/// Render report.md (at most [`MAX_BYTES`] bytes).
pub fn render(r: &RunRecord) -> String {
    let mut limits = Limits::START;
    for _ in 0..8 {
        let s = render_with(r, limits);
        if s.len() <= MAX_BYTES {
            return s;
        }
        limits = limits.shrink();
    }
    hard_cut(render_with(r, limits))
}

/// `render` as bytes, for the renderer table.
pub fn render_bytes(r: &RunRecord) -> Vec<u8> {
    render(r).into_bytes()
}

fn hard_cut(s: String) -> String {
    const NOTE: &str = "\n\n---\n_report.md was cut here to stay under 60 000 bytes; the complete results are in report.json._\n";
    // Room for the note and for the closing tags added below.
    let mut end = MAX_BYTES - NOTE.len() - "</pre></table>".len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    // Cut at the last line break so no table row or tag is left half-written.
    let cut = s[..end].rfind('\n').unwrap_or(end);
    let mut out = s[..cut].to_string();
    // A cut inside a <table>/<pre> block would swallow the rest of the page; close what is open.
    for (open, close) in [("<pre>", "</pre>"), ("<table>", "</table>")] {
        if out.matches(open).count() > out.matches(close).count() {
            out.push_str(close);
        }
    }
    out.push_str(NOTE);
    out
}

fn render_with(r: &RunRecord, lim: Limits) -> String {
    let mut o = String::with_capacity(16 * 1024);
    verdict(&mut o, r, lim);
    what_diverged(&mut o, r, lim);
    drift(&mut o, r, lim);
    side_by_side(&mut o, r, lim);
    audit(&mut o, r, lim);
    inside(&mut o, r, lim);
    trigger_search(&mut o, r, lim);
    stages(&mut o, r);
    not_evaluated(&mut o, r, lim);
    coverage(&mut o, r);
    provenance(&mut o, r);
    o
}

// ---------------------------------------------------------------------------------------------------------------
// Pieces
// ---------------------------------------------------------------------------------------------------------------

/// `n thing` / `n things`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn showing(o: &mut String, shown: usize, total: usize, what: &str) {
    if shown < total {
        let _ = writeln!(o, "\n_Showing {shown} of {total} {what}; everything is in report.json._");
    }
}

/// A table's header row and its separator.
fn table_head(o: &mut String, columns: &[&str]) {
    let _ = writeln!(o, "| {} |", columns.join(" | "));
    o.push('|');
    for _ in columns {
        o.push_str("---|");
    }
    o.push('\n');
}

/// A table row; record text is escaped for a table cell.
fn table_row(o: &mut String, cells: impl IntoIterator<Item = Cell>) {
    let cells: Vec<String> = cells
        .into_iter()
        .map(|c| match c {
            Cell::Num(s) => s,
            Cell::Word(w) => w.to_string(),
            Cell::Text(s) => md_inline(&s),
            Cell::Code(s) | Cell::Mono(s) => md_code_cell(&s),
        })
        .collect();
    let _ = writeln!(o, "| {} |", cells.join(" | "));
}

// ---------------------------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------------------------

fn decision_banner(d: Decision) -> &'static str {
    match d {
        Decision::Pass => "✅ PASS",
        Decision::Warn => "⚠️ WARN",
        Decision::Fail => "❌ FAIL",
        Decision::NothingEvaluated => "⛔ NOTHING EVALUATED",
    }
}

fn model_line(m: &ModelRef) -> String {
    let mut s = md_code(&m.spec);
    if let Some(a) = &m.adapter {
        let _ = write!(s, " + adapter {}", md_code(&a.spec));
    }
    s
}

fn verdict(o: &mut String, r: &RunRecord, lim: Limits) {
    let v = &r.verdict;
    let _ = writeln!(o, "# trapdoor: {}\n", decision_banner(v.decision));
    let _ = writeln!(
        o,
        "Candidate {} vs baseline {} · policy {} v{} · seed {} · {}/{}\n",
        model_line(&r.candidate),
        model_line(&r.baseline),
        md_code(&r.policy.name),
        md_inline(&r.policy.version),
        r.settings.seed,
        md_inline(&r.settings.device),
        md_inline(&r.settings.dtype),
    );
    match v.decision {
        Decision::Pass => o.push_str("The candidate may be promoted under this policy. A pass is not proof that no backdoor exists: see *Coverage* for what was checked.\n\n"),
        Decision::Warn => o.push_str("No fail rule fired, but the policy asks a reviewer to look at the reasons below.\n\n"),
        Decision::Fail => o.push_str("The candidate must not be promoted under this policy.\n\n"),
        Decision::NothingEvaluated => o.push_str("Nothing could be evaluated, so no decision was made: see the reasons and *Not evaluated* below.\n\n"),
    }
    if v.reasons.is_empty() {
        o.push_str("No policy rule fired.\n\n");
    } else {
        o.push_str("## Why\n\n");
        for reason in &v.reasons {
            let mark = match reason.decision {
                Decision::Fail => "❌",
                Decision::Warn => "⚠️",
                Decision::NothingEvaluated => "⛔",
                Decision::Pass => "ℹ️",
            };
            let _ = write!(
                o,
                "- {mark} **{}** · {} · {}: {}",
                reason.decision.as_str(),
                reason.severity.as_str(),
                md_code(&reason.rule),
                md_message(reason.message.trim_end_matches('.'))
            );
            if !reason.evidence.is_empty() {
                let shown: Vec<String> =
                    reason.evidence.iter().take(lim.evidence).map(|e| md_code(&evidence_label(e))).collect();
                let _ = write!(o, ". Evidence: {}", shown.join(", "));
                if reason.evidence.len() > lim.evidence {
                    let _ = write!(o, " and {} more", reason.evidence.len() - lim.evidence);
                }
                o.push('.');
            }
            o.push('\n');
        }
        o.push('\n');
    }
    let s = &v.summary;
    let _ = write!(
        o,
        "**{}**: {} evaluated, {} significant, {} with too few samples.",
        plural(s.tests as usize, "test", "tests"), s.evaluated, s.significant, s.insufficient
    );
    o.push_str(&findings_summary(s));
    o.push_str("\n\n");
}

fn evidence_label(e: &Evidence) -> String {
    let kind = match e.kind {
        EvidenceKind::Test => "test",
        EvidenceKind::Finding => "finding",
        EvidenceKind::Case => "case",
        EvidenceKind::Stage => "stage",
        EvidenceKind::WeightDelta => "weights",
        EvidenceKind::Activation => "activations",
        EvidenceKind::TriggerSearch => "trigger-search",
        EvidenceKind::Metric => "metric",
    };
    format!("{kind}:{}", e.id)
}

fn what_diverged(o: &mut String, r: &RunRecord, lim: Limits) {
    let mut sig: Vec<&TestResult> = r.tests.iter().filter(|t| t.status == TestStatus::Significant).collect();
    o.push_str("## What diverged\n\n");
    if sig.is_empty() {
        o.push_str("No test was significant after Benjamini–Hochberg correction.\n\n");
        return;
    }
    let cited = cited_tests(r);
    sig.sort_by(|a, b| {
        let ca = !cited.contains(a.id.as_str());
        let cb = !cited.contains(b.id.as_str());
        let qa = a.q.map(|x| x.0).unwrap_or(1.0);
        let qb = b.q.map(|x| x.0).unwrap_or(1.0);
        let ea = a.effect.map(|x| x.0.abs()).unwrap_or(0.0);
        let eb = b.effect.map(|x| x.0.abs()).unwrap_or(0.0);
        ca.cmp(&cb).then(qa.total_cmp(&qb)).then(eb.total_cmp(&ea)).then_with(|| a.id.cmp(&b.id))
    });
    let ci_level = sig.iter().find_map(|t| t.ci.as_ref().map(|c| c.level.0)).unwrap_or(0.95);
    let _ = writeln!(
        o,
        "Significant tests (q ≤ {}): those behind the verdict first (marked ⚑), then the rest, most significant first. Effect = mean paired difference in metric units with its {}% bootstrap interval; r = rank-biserial correlation.\n",
        setting(r.settings.statistics.fdr.0),
        setting(ci_level * 100.0)
    );
    table_head(o, &[["suite", "probe", "trigger", "metric"].as_slice(), &TEST_STAT_COLUMNS].concat());
    for t in sig.iter().take(lim.tests) {
        // The ⚑ is plain text, so escaping it with the suite name leaves it as it is.
        let mark = if cited.contains(t.id.as_str()) { "⚑ " } else { "" };
        let lead = [
            Cell::Text(format!("{mark}{}", t.suite)),
            Cell::Text(t.probe.clone()),
            trigger_cell(&t.trigger),
            Cell::Code(t.metric.clone()),
        ];
        table_row(o, lead.into_iter().chain(test_stat_cells(t)));
    }
    showing(o, sig.len().min(lim.tests), sig.len(), "significant tests");
    let notes: Vec<&&TestResult> = sig.iter().take(lim.tests).filter(|t| t.note.is_some()).collect();
    if !notes.is_empty() {
        o.push('\n');
        for t in notes.iter().take(lim.cases) {
            let _ = writeln!(o, "- {}: {}", md_code(&t.id), md_inline(&truncate_chars(t.note.as_deref().unwrap_or(""), 400)));
        }
    }
    o.push('\n');
}

/// Descriptive estimates (drift on benign prompts): how far the candidate moved, whatever the trigger tests say.
fn drift(o: &mut String, r: &RunRecord, lim: Limits) {
    let est: Vec<&TestResult> = r.tests.iter().filter(|t| t.status == TestStatus::Descriptive).collect();
    if est.is_empty() {
        return;
    }
    o.push_str("## Drift on benign prompts\n\nHow far the candidate moved from the baseline without any trigger (mean over prompts, bootstrap interval).\n\n");
    table_head(o, &["suite", "probe", "metric", "estimate [CI]", "n"]);
    for t in est.iter().take(lim.tests) {
        table_row(
            o,
            [
                Cell::Text(t.suite.clone()),
                Cell::Text(t.probe.clone()),
                Cell::Code(t.metric.clone()),
                Cell::Num(effect_with_ci(t)),
                Cell::Num(t.n.to_string()),
            ],
        );
    }
    showing(o, est.len().min(lim.tests), est.len(), "estimates");
    o.push('\n');
}

fn pre(text: &str, max_chars: usize) -> String {
    format!("<pre>{}</pre>", html_escape(&visible(&truncate_chars(text, max_chars))))
}

fn output_cell(out: Option<&ModelOutput>, max_chars: usize) -> String {
    match out {
        None => "<i>no output</i>".into(),
        Some(m) => {
            let mut s = pre(&m.text, max_chars);
            let hits = detector_labels(m);
            if !hits.is_empty() {
                let _ = write!(s, "detectors: {}", html_escape(&visible(&hits.join(", "))));
            }
            s
        }
    }
}

fn side_by_side(o: &mut String, r: &RunRecord, lim: Limits) {
    let (cases, total) = top_triggered(r, lim.cases);
    if cases.is_empty() {
        return;
    }
    o.push_str("## Side by side\n\n");
    o.push_str("Triggered cases, those of the triggers behind the verdict first, each where the trigger pushed the two models' next-token distributions furthest apart (mean Jensen–Shannon divergence with the trigger minus without it), with the same prompt without the trigger for comparison.\n\n");
    for c in &cases {
        let Variant::Triggered { trigger_text, position, .. } = &c.variant else { continue };
        let _ = writeln!(
            o,
            "### Trigger {} ({}) · {} / {} · case {}\n",
            md_code(trigger_text),
            position.as_str(),
            md_inline(&c.suite),
            md_inline(&c.probe),
            md_code(&c.id)
        );
        if let Some(d) = &c.divergence {
            let _ = writeln!(o, "{}.\n", divergence_summary(r, c, d));
        }
        let clean = c.clean_case.as_deref().and_then(|id| r.case(id));
        o.push_str("<table>\n<tr><th></th><th>candidate</th><th>baseline</th></tr>\n");
        // The same prompt without the trigger (when recorded), then the triggered case.
        for (label, case) in clean.map(|k| ("clean prompt", k)).into_iter().chain([("with trigger", *c)]) {
            let _ = writeln!(
                o,
                "<tr><td>{label}:{}</td><td>{}</td><td>{}</td></tr>",
                pre(&case.prompt, lim.text_chars / 2),
                output_cell(case.candidate.as_ref(), lim.text_chars),
                output_cell(case.baseline.as_ref(), lim.text_chars)
            );
        }
        o.push_str("</table>\n\n");
    }
    showing(o, cases.len(), total, "triggered cases");
    o.push('\n');
}

fn audit(o: &mut String, r: &RunRecord, lim: Limits) {
    let f = &r.audit.findings;
    if f.is_empty() {
        return;
    }
    o.push_str("## Audit findings\n\n");
    table_head(o, &FINDING_COLUMNS);
    for x in f.iter().take(lim.findings) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            x.severity.as_str(),
            md_code_cell(&x.rule),
            md_code_cell(&x.file),
            md_message_cell(&truncate_chars(&x.message, 400))
        );
    }
    showing(o, f.len().min(lim.findings), f.len(), "findings");
    o.push('\n');
}

fn inside(o: &mut String, r: &RunRecord, lim: Limits) {
    let (w, a) = (&r.inside.weight_delta, &r.inside.activations);
    if w.is_none() && a.is_none() {
        return;
    }
    o.push_str("## Inside the model\n\n");
    if let Some(w) = w {
        o.push_str("### Weight delta\n\n");
        if let Some(s) = &w.summary {
            let _ = writeln!(o, "{}\n", md_message(s));
        }
        if w.identical {
            o.push_str("All compared weights are **bit-identical** to the baseline's: any behavioural difference comes from elsewhere (tokenizer, chat template, configuration).\n\n");
        }
        flags(o, &w.flags);
        heatmap(o, &w.rows, lim);
        if !w.moved_rows.is_empty() {
            o.push_str("Embedding rows that moved most:\n\n");
            table_head(o, &MOVED_ROW_COLUMNS);
            for m in w.moved_rows.iter().take(lim.moved_rows) {
                table_row(o, moved_row(m));
            }
            showing(o, w.moved_rows.len().min(lim.moved_rows), w.moved_rows.len(), "moved rows");
            o.push('\n');
        }
    }
    if let Some(a) = a {
        o.push_str("### Activations under triggers\n\n");
        if let Some(s) = &a.summary {
            let _ = writeln!(o, "{}\n", md_message(s));
        }
        flags(o, &a.flags);
        if !a.layers.is_empty() {
            table_head(o, &LAYER_COLUMNS);
            for l in a.layers.iter().take(lim.layers) {
                table_row(o, layer_row(l));
            }
            showing(o, a.layers.len().min(lim.layers), a.layers.len(), "layers");
            o.push('\n');
        }
        if !a.top_tokens.is_empty() {
            let toks: Vec<String> = a
                .top_tokens
                .iter()
                .take(lim.moved_rows)
                .map(|t| format!("{} ({})", md_code(&t.token), num(t.score.0)))
                .collect();
            let _ = writeln!(o, "Input tokens that drive the divergence: {}.\n", toks.join(", "));
        }
    }
}

/// What the look inside flagged, one item a line.
fn flags(o: &mut String, flags: &[InsideFlag]) {
    if flags.is_empty() {
        return;
    }
    for fl in flags {
        let _ = writeln!(o, "- ⚑ {} at {}: {}", md_code(&fl.id), md_message(&fl.location), md_message(&fl.message));
    }
    o.push('\n');
}

/// Layer × module table of relative Frobenius norms (⚑ = flagged), then tensors outside the layers.
fn heatmap(o: &mut String, rows: &[DeltaRow], lim: Limits) {
    let DeltaGrid { modules, cells, outside } = DeltaGrid::of(rows);
    if !cells.is_empty() {
        o.push_str("Relative Frobenius norm of the delta per layer and module (‖ΔW‖/‖W‖; ⚑ = flagged, top-k energy in brackets where flagged):\n\n| layer |");
        for m in &modules {
            let _ = write!(o, " {} |", md_inline(m));
        }
        o.push_str("\n|---|");
        for _ in &modules {
            o.push_str("---|");
        }
        o.push('\n');
        for (layer, by_module) in cells.iter().take(lim.layers) {
            let _ = write!(o, "| {layer} |");
            for m in &modules {
                match by_module.get(m) {
                    None => o.push_str(" · |"),
                    Some(row) if row.flagged => {
                        let _ = write!(o, " **⚑ {}** ({}) |", num(row.rel_frobenius.0), num(row.topk_energy.0));
                    }
                    Some(row) => {
                        let _ = write!(o, " {} |", num(row.rel_frobenius.0));
                    }
                }
            }
            o.push('\n');
        }
        showing(o, cells.len().min(lim.layers), cells.len(), "layers");
        o.push('\n');
    }
    if !outside.is_empty() {
        table_head(o, &TENSOR_COLUMNS);
        for row in outside.iter().take(lim.layers) {
            table_row(o, tensor_row(row));
        }
        showing(o, outside.len().min(lim.layers), outside.len(), "tensors");
        o.push('\n');
    }
}

fn trigger_search(o: &mut String, r: &RunRecord, lim: Limits) {
    let Some(t) = &r.trigger_search else { return };
    o.push_str("## Trigger search\n\n");
    if t.triggers.is_empty() {
        o.push_str("No trigger was recovered.\n\n");
    } else {
        o.push_str("Recovered triggers, verified on held-out prompts (ASR = attack success rate):\n\n");
        table_head(o, &RECOVERED_COLUMNS);
        for x in t.triggers.iter().take(lim.search) {
            table_row(o, recovered_row(x, 80));
        }
        showing(o, t.triggers.len().min(lim.search), t.triggers.len(), "recovered triggers");
        o.push('\n');
    }
    if !t.anomalies.is_empty() {
        table_head(o, &ANOMALY_COLUMNS);
        for a in t.anomalies.iter().take(lim.search) {
            table_row(o, anomaly_row(a, 80));
        }
        showing(o, t.anomalies.len().min(lim.search), t.anomalies.len(), "targets");
        o.push('\n');
    }
    let c = &t.coverage;
    let _ = writeln!(o, "**Coverage:** {} {}\n", md_inline(&c.statement), search_coverage(c));
    if !c.not_searched.is_empty() {
        o.push_str("Not searched:\n\n");
        for n in &c.not_searched {
            let _ = writeln!(o, "- {}", md_inline(n));
        }
        o.push('\n');
    }
}

fn stages(o: &mut String, r: &RunRecord) {
    let not_ran: Vec<(&str, &StageStatus)> =
        r.stages.iter().into_iter().filter(|(_, s)| !matches!(s, StageStatus::Ran { .. })).collect();
    if not_ran.is_empty() {
        return;
    }
    o.push_str("## Stages skipped or failed\n\n");
    table_head(o, &["stage", "status", "why"]);
    for (name, s) in not_ran {
        let why = match s {
            StageStatus::Skipped { reason } => reason.as_str(),
            StageStatus::Error { message } => message.as_str(),
            StageStatus::Ran { .. } => "",
        };
        let _ = writeln!(o, "| {} | {} | {} |", name, s.name(), md_message_cell(&truncate_chars(why, 400)));
    }
    o.push('\n');
}

fn not_evaluated(o: &mut String, r: &RunRecord, lim: Limits) {
    let missing = NotEvaluated::of(r);
    if missing.is_empty() {
        return;
    }
    let NotEvaluated { insufficient, case_errors, probe_errors } = missing;
    o.push_str("## Not evaluated\n\n");
    for p in &probe_errors {
        let _ = writeln!(
            o,
            "- probe {} / {}: {}",
            md_inline(&p.suite),
            md_inline(&p.probe),
            md_message(&truncate_chars(p.error.as_deref().unwrap_or(""), 300))
        );
    }
    if !case_errors.is_empty() {
        let _ = writeln!(
            o,
            "- {} failed to evaluate; the first: case {}: {}",
            plural(case_errors.len(), "case", "cases"),
            md_code(&case_errors[0].id),
            md_message(&truncate_chars(case_errors[0].error.as_deref().unwrap_or(""), 300))
        );
    }
    if !insufficient.is_empty() {
        let _ = writeln!(
            o,
            "\n{} fewer than {} pairs and were **not evaluated** (they count neither for nor against the candidate):\n",
            plural(insufficient.len(), "test had", "tests had"),
            r.settings.statistics.min_pairs
        );
        table_head(o, &INSUFFICIENT_COLUMNS);
        for t in insufficient.iter().take(lim.insufficient) {
            table_row(o, insufficient_row(t));
        }
        showing(o, insufficient.len().min(lim.insufficient), insufficient.len(), "tests with too few samples");
    }
    o.push('\n');
}

fn coverage(o: &mut String, r: &RunRecord) {
    o.push_str("## Coverage\n\n");
    if r.suites.is_empty() {
        o.push_str("No probe suite was run.\n\n");
    } else {
        table_head(o, &SUITE_COLUMNS);
        for s in &r.suites {
            table_row(o, suite_row(r, s));
        }
        o.push('\n');
    }
    o.push_str("Known triggers are only caught when they (or something that fires the same backdoor) are in a suite; ");
    match &r.stages.trigger_search {
        StageStatus::Ran { .. } => o.push_str("the trigger search looked for unknown ones within the coverage stated above.\n\n"),
        _ => o.push_str("**the trigger search for unknown triggers did not run** (see *Stages*).\n\n"),
    }
}

fn provenance(o: &mut String, r: &RunRecord) {
    o.push_str("## Provenance\n\n");
    let t = &r.tool;
    let _ = writeln!(
        o,
        "- {} {}{}",
        md_inline(&t.name),
        md_inline(&t.version),
        t.git_hash.as_deref().map(|h| format!(" (git {})", md_code(short(h)))).unwrap_or_default()
    );
    for (role, m) in [("candidate", &r.candidate), ("baseline", &r.baseline)] {
        let kind = match m.kind {
            ModelKind::Folder => "folder",
            ModelKind::Gguf => "GGUF",
            ModelKind::Hub => "hub",
            ModelKind::Snapshot => "baseline snapshot",
        };
        let _ = write!(o, "- {role}: {} ({kind}", md_code(&m.spec));
        if let Some(a) = &m.architecture {
            let _ = write!(o, ", {}", md_inline(a));
        }
        if let Some(p) = m.params {
            let _ = write!(o, ", {p} parameters");
        }
        if let Some(rev) = &m.revision {
            let _ = write!(o, ", revision {}", md_code(short(rev)));
        }
        let _ = write!(o, ", {}", plural(m.files.len(), "file", "files"));
        if let Some(d) = &m.root_digest {
            let _ = write!(o, ", root digest {}", md_code(d));
        }
        o.push(')');
        if let Some(a) = &m.adapter {
            let _ = write!(o, "; adapter {}", md_code(&a.spec));
            if let Some(d) = &a.root_digest {
                let _ = write!(o, " (root digest {})", md_code(d));
            }
        }
        o.push('\n');
    }
    for s in &r.suites {
        let _ = writeln!(o, "- suite {} v{}: {} (sha256 {})", md_inline(&s.name), md_inline(&s.version), md_code(&s.path), md_code(short(&s.sha256)));
    }
    let _ = writeln!(
        o,
        "- policy {} v{}: {} (sha256 {})",
        md_inline(&r.policy.name),
        md_inline(&r.policy.version),
        md_code(&r.policy.source),
        md_code(short(&r.policy.sha256))
    );
    let _ = writeln!(o, "- {}", statistics_settings(r, md_inline));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_three_significant_digits() {
        assert_eq!(num(0.0123456), "0.0123");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.5), "0.500");
        assert_eq!(num(-0.25), "-0.250");
        assert_eq!(num(123456.0), "1.23e5");
        assert_eq!(num(0.00001234), "1.23e-5");
        assert_eq!(num(f64::INFINITY), "∞");
        assert_eq!(pval(0.0312), "0.031");
        assert_eq!(pval(0.00001234), "1.2e-5");
    }

    #[test]
    fn hard_cut_closes_open_blocks() {
        let s = format!("<table>\n<pre>{}", "x\n".repeat(40_000));
        let cut = hard_cut(s);
        assert!(cut.len() <= MAX_BYTES);
        assert!(cut.contains("</pre></table>"));
        assert!(cut.ends_with("report.json._\n"));
    }
}
