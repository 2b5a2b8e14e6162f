//! What report.md and report.html show alike, built once so the two cannot drift apart: number formatting, the
//! names of designs and directions, which tests and cases the reports lead with, the sentences that summarise a
//! divergence, a search's coverage and the audit findings, and the tables both show (their columns, and each row as
//! [`Cell`]s). Each renderer only decides how a cell is escaped and laid out; its own sections (the HTML plots, the
//! Markdown size limits) stay in its module.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::record::*;
use crate::text::truncate_chars;

// ---------------------------------------------------------------------------------------------------------------
// Numbers and names
// ---------------------------------------------------------------------------------------------------------------

/// Three significant digits; scientific notation for very small or large magnitudes.
pub(crate) fn num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "∞".into() } else { "−∞".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{x:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

/// A setting such as a level or rate: as short as possible (`0.05`, `95`).
pub(crate) fn setting(x: f64) -> String {
    let s = format!("{x}");
    if s.len() > 8 {
        num(x)
    } else {
        s
    }
}

/// p- and q-values: three decimals, scientific below 0.001.
pub(crate) fn pval(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x < 1e-3 {
        format!("{x:.1e}")
    } else {
        format!("{x:.3}")
    }
}

/// [`num`], or `—` for an undefined value.
pub(crate) fn opt_num(x: &Option<Real>) -> String {
    x.map(|v| num(v.0)).unwrap_or_else(|| "—".into())
}

/// [`pval`], or `—` for an undefined value.
pub(crate) fn opt_p(x: &Option<Real>) -> String {
    x.map(|v| pval(v.0)).unwrap_or_else(|| "—".into())
}

/// A test's effect with its interval: `0.123 [0.100, 0.150]`.
pub(crate) fn effect_with_ci(t: &TestResult) -> String {
    let mut s = opt_num(&t.effect);
    if let Some(ci) = &t.ci {
        let _ = write!(s, " [{}, {}]", num(ci.lo.0), num(ci.hi.0));
    }
    s
}

pub(crate) fn design_name(d: Design) -> &'static str {
    match d {
        Design::DiffInDiff => "diff-in-diff",
        Design::CandidateMinusBaseline => "cand − base",
        Design::Descriptive => "estimate",
    }
}

pub(crate) fn direction_name(d: EffectDirection) -> &'static str {
    match d {
        EffectDirection::Suspicious => "suspicious",
        EffectDirection::Benign => "benign",
        EffectDirection::None => "none",
    }
}

/// The `flagged` column.
pub(crate) fn flag_word(flagged: bool) -> &'static str {
    if flagged {
        "⚑ yes"
    } else {
        "no"
    }
}

// ---------------------------------------------------------------------------------------------------------------
// What the reports lead with
// ---------------------------------------------------------------------------------------------------------------

/// Ids of tests that a fail or warn reason cites: the evidence behind the verdict.
pub(crate) fn cited_tests(r: &RunRecord) -> BTreeSet<&str> {
    r.verdict
        .reasons
        .iter()
        .filter(|x| matches!(x.decision, Decision::Fail | Decision::Warn))
        .flat_map(|x| x.evidence.iter())
        .filter(|e| e.kind == EvidenceKind::Test)
        .map(|e| e.id.as_str())
        .collect()
}

/// The triggered cases the trigger moved most ([`RunRecord::ranked_cases`]), those of triggers named by the
/// verdict's tests first, at most two per (suite, probe, trigger) so one trigger does not crowd out the others;
/// only cases the trigger actually moved apart. Also returns how many triggered cases were evaluated.
pub(crate) fn top_triggered(r: &RunRecord, n: usize) -> (Vec<&CaseResult>, usize) {
    let total = r.cases.iter().filter(|c| matches!(c.variant, Variant::Triggered { .. }) && c.error.is_none()).count();
    // Triggers named by the verdict's tests come first: they are what the reviewer has to look at.
    let cited: BTreeSet<(&str, &str, &str)> = {
        let ids = cited_tests(r);
        r.tests
            .iter()
            .filter(|t| ids.contains(t.id.as_str()))
            .filter_map(|t| Some((t.suite.as_str(), t.probe.as_str(), t.trigger.as_ref()?.id.as_str())))
            .collect()
    };
    fn key(c: &CaseResult) -> (&str, &str, &str) {
        (c.suite.as_str(), c.probe.as_str(), c.variant.trigger_id().unwrap_or(""))
    }
    let ranked = r.ranked_cases();
    let ordered =
        ranked.iter().filter(|c| cited.contains(&key(c))).chain(ranked.iter().filter(|c| !cited.contains(&key(c))));
    let mut per: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    let mut out = Vec::new();
    for c in ordered.copied() {
        if out.len() == n {
            break;
        }
        if matches!(c.variant, Variant::Clean) || r.trigger_effect(c) <= 0.0 {
            continue;
        }
        let k = per.entry(key(c)).or_default();
        if *k < 2 {
            *k += 1;
            out.push(c);
        }
    }
    (out, total)
}

/// What could not be evaluated: tests with too few pairs, cases and probes that failed.
pub(crate) struct NotEvaluated<'a> {
    pub insufficient: Vec<&'a TestResult>,
    pub case_errors: Vec<&'a CaseResult>,
    pub probe_errors: Vec<&'a ProbeInfo>,
}

impl<'a> NotEvaluated<'a> {
    pub fn of(r: &'a RunRecord) -> Self {
        NotEvaluated {
            insufficient: r.tests.iter().filter(|t| t.status == TestStatus::InsufficientSamples).collect(),
            case_errors: r.cases.iter().filter(|c| c.error.is_some()).collect(),
            probe_errors: r.probes.iter().filter(|p| p.error.is_some()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.insufficient.is_empty() && self.case_errors.is_empty() && self.probe_errors.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sentences (numbers and our own words only: nothing from the record that would need escaping)
// ---------------------------------------------------------------------------------------------------------------

/// A case's divergence with and without the trigger, along both outputs (no final full stop).
pub(crate) fn divergence_summary(r: &RunRecord, c: &CaseResult, d: &Divergence) -> String {
    format!(
        "JS mean {} with the trigger vs {} without · JS max {} · along the candidate's output {}, along the baseline's {} · top-1 agreement {}",
        num(c.js_mean()),
        num(c.js_mean() - r.trigger_effect(c)),
        num(c.js_max()),
        num(d.along_candidate.js_mean.0),
        num(d.along_baseline.js_mean.0),
        num(d.along_candidate.top1_agreement.0)
    )
}

/// What a trigger search covered, after its own statement: positions, lengths, targets, steps, restarts, budget.
pub(crate) fn search_coverage(c: &SearchCoverage) -> String {
    let positions: Vec<&str> = c.positions.iter().map(|p| p.as_str()).collect();
    let lengths: Vec<String> = c.trigger_lengths.iter().map(u32::to_string).collect();
    format!(
        "Positions: {}; trigger lengths (tokens): {}; {} targets; {} optimisation steps, {} restarts{}.",
        if positions.is_empty() { "none".into() } else { positions.join(", ") },
        if lengths.is_empty() { "none".into() } else { lengths.join(", ") },
        c.targets.len(),
        c.steps,
        c.restarts,
        c.budget_seconds.map(|s| format!(", budget {s} s")).unwrap_or_default()
    )
}

/// ` Audit findings: 1 high, 2 medium.` (most severe first), or nothing when there are none.
pub(crate) fn findings_summary(s: &VerdictSummary) -> String {
    if s.findings.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = s.findings.iter().rev().map(|(sev, n)| format!("{n} {}", sev.as_str())).collect();
    format!(" Audit findings: {}.", parts.join(", "))
}

/// The statistics settings of the provenance list; `text` escapes record text for the report.
pub(crate) fn statistics_settings(r: &RunRecord, text: impl Fn(&str) -> String) -> String {
    let st = &r.settings.statistics;
    format!(
        "seed {}, device {}, dtype {}; Wilcoxon signed-rank tests, Benjamini–Hochberg at {}, {} bootstrap and {} permutation resamples, at least {} pairs per test",
        r.settings.seed,
        text(&r.settings.device),
        text(&r.settings.dtype),
        setting(st.fdr.0),
        st.bootstrap_resamples,
        st.permutation_resamples,
        st.min_pairs
    )
}

/// Detectors that hit a model output (`detector` or `detector/rule`), consecutive repeats merged.
pub(crate) fn detector_labels(m: &ModelOutput) -> Vec<String> {
    let mut hits: Vec<String> = m
        .hits
        .iter()
        .map(|h| match &h.rule {
            Some(rule) => format!("{}/{}", h.detector, rule),
            None => h.detector.clone(),
        })
        .collect();
    hits.dedup();
    hits
}

// ---------------------------------------------------------------------------------------------------------------
// Tables both reports show
// ---------------------------------------------------------------------------------------------------------------

/// One cell of a table; the renderer escapes and lays it out (Markdown table cell, HTML `<td>`).
pub(crate) enum Cell {
    /// A number or count we formatted: shown as is (right-aligned in HTML).
    Num(String),
    /// A word of ours (a position, a design, `⚑ yes`): shown as is.
    Word(&'static str),
    /// Record text, as prose.
    Text(String),
    /// Record text, as code.
    Code(String),
    /// Record text in a monospaced column (token ids).
    Mono(String),
}

impl Cell {
    fn num(x: f64) -> Cell {
        Cell::Num(num(x))
    }

    fn count(n: impl ToString) -> Cell {
        Cell::Num(n.to_string())
    }
}

/// The trigger a test is about, or `clean`.
pub(crate) fn trigger_cell(t: &Option<TriggerRef>) -> Cell {
    match t {
        Some(t) => Cell::Code(t.text.clone()),
        None => Cell::Word("clean"),
    }
}

/// A test's statistics: design, effect [CI], q, n, r, direction (the columns of [`TEST_STAT_COLUMNS`]).
pub(crate) fn test_stat_cells(t: &TestResult) -> [Cell; 6] {
    [
        Cell::Word(design_name(t.design)),
        Cell::Num(effect_with_ci(t)),
        Cell::Num(opt_p(&t.q)),
        Cell::count(t.n),
        Cell::Num(opt_num(&t.rank_biserial)),
        Cell::Word(direction_name(t.direction)),
    ]
}

pub(crate) const TEST_STAT_COLUMNS: [&str; 6] = ["design", "effect [CI]", "q", "n", "r", "direction"];

pub(crate) const RECOVERED_COLUMNS: [&str; 8] = [
    "trigger",
    "token ids",
    "target",
    "position",
    "ASR candidate",
    "ASR baseline",
    "ASR candidate without trigger",
    "held-out prompts",
];

/// A trigger the search recovered; the target is cut to `target_chars` characters.
pub(crate) fn recovered_row(x: &RecoveredTrigger, target_chars: usize) -> [Cell; 8] {
    let ids: Vec<String> = x.token_ids.iter().map(u32::to_string).collect();
    [
        Cell::Code(x.text.clone()),
        Cell::Mono(ids.join(" ")),
        Cell::Code(truncate_chars(&x.target, target_chars)),
        Cell::Word(x.position.as_str()),
        Cell::num(x.asr_candidate.0),
        Cell::num(x.asr_baseline.0),
        Cell::num(x.asr_candidate_without_trigger.0),
        Cell::count(x.held_out),
    ]
}

pub(crate) const ANOMALY_COLUMNS: [&str; 5] =
    ["target", "anomaly index", "loss on candidate", "loss on baseline", "flagged"];

/// A target's anomaly index; the target is cut to `target_chars` characters.
pub(crate) fn anomaly_row(a: &AnomalyIndex, target_chars: usize) -> [Cell; 5] {
    [
        Cell::Code(truncate_chars(&a.target, target_chars)),
        Cell::num(a.index.0),
        Cell::num(a.loss_candidate.0),
        Cell::Num(opt_num(&a.loss_baseline)),
        Cell::Word(flag_word(a.flagged)),
    ]
}

pub(crate) const LAYER_COLUMNS: [&str; 6] =
    ["layer", "clean mean", "triggered mean", "threshold", "triggered above", "flagged"];

/// A layer's activation anomaly.
pub(crate) fn layer_row(l: &LayerAnomaly) -> [Cell; 6] {
    [
        Cell::count(l.layer),
        Cell::num(l.clean_mean.0),
        Cell::num(l.triggered_mean.0),
        Cell::num(l.threshold.0),
        Cell::num(l.flagged_fraction.0),
        Cell::Word(flag_word(l.flagged)),
    ]
}

pub(crate) const TENSOR_COLUMNS: [&str; 5] = ["tensor", "‖ΔW‖/‖W‖", "top-k energy", "effective rank", "flagged"];

/// A weight-delta row of a tensor outside the decoder layers.
pub(crate) fn tensor_row(row: &DeltaRow) -> [Cell; 5] {
    [
        Cell::Code(row.tensor.clone()),
        Cell::num(row.rel_frobenius.0),
        Cell::num(row.topk_energy.0),
        Cell::num(row.effective_rank.0),
        Cell::Word(flag_word(row.flagged)),
    ]
}

pub(crate) const MOVED_ROW_COLUMNS: [&str; 4] = ["matrix", "token id", "token", "relative change"];

/// An embedding row that moved.
pub(crate) fn moved_row(m: &MovedRow) -> [Cell; 4] {
    [
        Cell::Text(m.matrix.clone()),
        Cell::count(m.token_id),
        m.token.as_ref().map(|t| Cell::Code(t.clone())).unwrap_or(Cell::Word("—")),
        Cell::num(m.rel_change.0),
    ]
}

pub(crate) const SUITE_COLUMNS: [&str; 7] =
    ["suite", "version", "probes", "cases", "triggers", "tests evaluated", "significant"];

/// A suite's coverage.
pub(crate) fn suite_row(r: &RunRecord, s: &SuiteRef) -> [Cell; 7] {
    let (n_tests, evaluated, significant, n_triggers) = r.suite_coverage(&s.name);
    [
        Cell::Text(s.name.clone()),
        Cell::Text(s.version.clone()),
        Cell::count(s.probes),
        Cell::count(s.cases),
        Cell::count(n_triggers),
        Cell::Num(format!("{evaluated} of {n_tests}")),
        Cell::count(significant),
    ]
}

pub(crate) const FINDING_COLUMNS: [&str; 4] = ["severity", "rule", "file", "finding"];

pub(crate) const INSUFFICIENT_COLUMNS: [&str; 3] = ["test", "pairs", "missing"];

/// A test with too few pairs.
pub(crate) fn insufficient_row(t: &TestResult) -> [Cell; 3] {
    [Cell::Code(t.id.clone()), Cell::count(t.n), Cell::count(t.n_missing)]
}

// ---------------------------------------------------------------------------------------------------------------
// The weight delta as a grid
// ---------------------------------------------------------------------------------------------------------------

/// Canonical order of a decoder layer's modules (others follow by name).
pub(crate) const MODULE_ORDER: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Weight-delta rows as a layer × module grid, and the rows of tensors outside the layers.
pub(crate) struct DeltaGrid<'a> {
    /// Module columns, in [`MODULE_ORDER`].
    pub modules: Vec<&'a str>,
    /// Layer → module → row.
    pub cells: BTreeMap<u32, BTreeMap<&'a str, &'a DeltaRow>>,
    pub outside: Vec<&'a DeltaRow>,
}

impl<'a> DeltaGrid<'a> {
    pub fn of(rows: &'a [DeltaRow]) -> Self {
        let mut modules: Vec<&str> = rows.iter().filter(|r| r.layer.is_some()).map(|r| r.module.as_str()).collect();
        modules.sort_by_key(|m| (MODULE_ORDER.iter().position(|x| x == m).unwrap_or(usize::MAX), *m));
        modules.dedup();
        let mut cells: BTreeMap<u32, BTreeMap<&str, &DeltaRow>> = BTreeMap::new();
        for row in rows {
            if let Some(l) = row.layer {
                cells.entry(l).or_default().insert(row.module.as_str(), row);
            }
        }
        let outside = rows.iter().filter(|r| r.layer.is_none()).collect();
        DeltaGrid { modules, cells, outside }
    }
}
