//! `junit.xml`: the scan as JUnit test results, for CI dashboards.
//!
//! Mapping: one `<testsuite>` per probe suite, one `<testcase>` per probe.
//! * `<failure>`: a policy violation, i.e. a `fail` reason of the verdict whose evidence points at one of the
//!   probe's tests or cases.
//! * `<error>`: an evaluation error (the probe could not run, or some of its cases failed).
//! * `<skipped>`: every test of the probe had fewer pairs than the policy's minimum.
//!
//! A final `<testsuite name="trapdoor">` has one testcase per stage (audit, weight_delta, activations,
//! trigger_search: failure when a fail reason points at its evidence, error when the stage failed, skipped when it
//! was skipped) and a `verdict` testcase that fails when the verdict is `fail` or `nothing_evaluated`. `warn`
//! reasons appear in `<system-out>`, not as failures (a warning does not fail the pipeline unless `--strict`).
//! No timestamps or durations: the file is a deterministic function of the record. Text is escaped for XML and
//! characters XML 1.0 cannot carry (and invisible ones) are written as visible `⟨U+XXXX⟩` markers.

use std::fmt::Write as _;

use crate::record::*;
use crate::render::common::{num, pval};
use crate::text::{truncate_chars, visible};

/// Escape text for XML content or a double-quoted attribute (newlines kept as character references in
/// attributes so parsers do not normalise them away).
fn xml(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in visible(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Case {
    name: String,
    classname: String,
    failures: Vec<(String, String)>,
    errors: Vec<(String, String)>,
    skipped: Option<String>,
    out: Vec<String>,
}

impl Case {
    fn write(&self, o: &mut String) {
        let _ = write!(o, "    <testcase classname=\"{}\" name=\"{}\"", xml(&self.classname, true), xml(&self.name, true));
        if self.failures.is_empty() && self.errors.is_empty() && self.skipped.is_none() && self.out.is_empty() {
            o.push_str("/>\n");
            return;
        }
        o.push_str(">\n");
        for (msg, body) in &self.failures {
            let _ = writeln!(o, "      <failure type=\"policy\" message=\"{}\">{}</failure>", xml(msg, true), xml(body, false));
        }
        for (msg, body) in &self.errors {
            let _ = writeln!(o, "      <error type=\"evaluation\" message=\"{}\">{}</error>", xml(msg, true), xml(body, false));
        }
        if self.failures.is_empty() && self.errors.is_empty() {
            if let Some(msg) = &self.skipped {
                let _ = writeln!(o, "      <skipped message=\"{}\"/>", xml(msg, true));
            }
        }
        if !self.out.is_empty() {
            let _ = writeln!(o, "      <system-out>{}</system-out>", xml(&self.out.join("\n"), false));
        }
        o.push_str("    </testcase>\n");
    }

    fn counts(&self) -> (usize, usize, usize) {
        let f = usize::from(!self.failures.is_empty());
        let e = usize::from(!self.errors.is_empty());
        let s = usize::from(f == 0 && e == 0 && self.skipped.is_some());
        (f, e, s)
    }
}

fn reason_line(r: &Reason) -> String {
    format!("[{} · {}] {}: {}", r.decision.as_str(), r.severity.as_str(), r.rule, r.message)
}

/// Reasons of the verdict whose evidence satisfies `pred`.
fn reasons_for(r: &RunRecord, pred: impl Fn(&Evidence) -> bool) -> Vec<&Reason> {
    r.verdict.reasons.iter().filter(|x| x.evidence.iter().any(&pred)).collect()
}

fn attach_reasons(case: &mut Case, reasons: &[&Reason], evidence_of: impl Fn(&Reason) -> Vec<String>) {
    for reason in reasons {
        let body = evidence_of(reason).join("\n");
        match reason.decision {
            Decision::Fail => case.failures.push((reason_line(reason), body)),
            _ => case.out.push(format!("{}\n{}", reason_line(reason), body)),
        }
    }
}

fn probe_case(r: &RunRecord, p: &ProbeInfo) -> Case {
    let mut case = Case { name: p.probe.clone(), classname: p.suite.clone(), ..Default::default() };
    let tests: Vec<&TestResult> = r.tests.iter().filter(|t| t.suite == p.suite && t.probe == p.probe).collect();
    let in_probe = |e: &Evidence| match e.kind {
        EvidenceKind::Test => tests.iter().any(|t| t.id == e.id),
        EvidenceKind::Case => r.cases.iter().any(|c| c.id == e.id && c.suite == p.suite && c.probe == p.probe),
        _ => false,
    };
    let reasons = reasons_for(r, in_probe);
    attach_reasons(&mut case, &reasons, |reason| {
        reason.evidence.iter().filter(|e| in_probe(e)).map(|e| describe_test_evidence(r, e)).collect()
    });
    if let Some(err) = &p.error {
        case.errors.push((truncate_chars(err, 300), err.clone()));
    }
    let errs: Vec<&CaseResult> =
        r.cases.iter().filter(|c| c.suite == p.suite && c.probe == p.probe && c.error.is_some()).collect();
    if !errs.is_empty() {
        let body: Vec<String> =
            errs.iter().map(|c| format!("{}: {}", c.id, c.error.as_deref().unwrap_or(""))).collect();
        case.errors.push((format!("{} cases failed to evaluate", errs.len()), body.join("\n")));
    }
    let insufficient = tests.iter().filter(|t| t.status == TestStatus::InsufficientSamples).count();
    if !tests.is_empty() && insufficient == tests.len() {
        case.skipped = Some(format!(
            "all {} tests had fewer than {} pairs",
            tests.len(),
            r.settings.statistics.min_pairs
        ));
    } else if insufficient > 0 {
        case.out.push(format!("{insufficient} of {} tests had too few samples and were not evaluated", tests.len()));
    }
    let significant: Vec<String> = tests
        .iter()
        .filter(|t| t.status == TestStatus::Significant)
        .map(|t| {
            format!(
                "significant: {} effect {} q {}",
                t.id,
                t.effect.map(|x| num(x.0)).unwrap_or_else(|| "-".into()),
                t.q.map(|x| pval(x.0)).unwrap_or_else(|| "-".into())
            )
        })
        .collect();
    case.out.extend(significant);
    case
}

fn describe_test_evidence(r: &RunRecord, e: &Evidence) -> String {
    match r.tests.iter().find(|t| t.id == e.id) {
        Some(t) => format!(
            "{}: effect {} (CI {}), p {}, q {}, n {}",
            t.id,
            t.effect.map(|x| num(x.0)).unwrap_or_else(|| "-".into()),
            t.ci.as_ref().map(|c| format!("{} to {}", num(c.lo.0), num(c.hi.0))).unwrap_or_else(|| "-".into()),
            t.p.map(|x| pval(x.0)).unwrap_or_else(|| "-".into()),
            t.q.map(|x| pval(x.0)).unwrap_or_else(|| "-".into()),
            t.n
        ),
        None => format!("{:?} {}", e.kind, e.id),
    }
}

fn stage_case(r: &RunRecord, name: &str, status: &StageStatus, kinds: &[EvidenceKind]) -> Case {
    let mut case = Case { name: name.into(), classname: "trapdoor".into(), ..Default::default() };
    let pred = |e: &Evidence| kinds.contains(&e.kind) || (e.kind == EvidenceKind::Stage && e.id == name);
    let reasons = reasons_for(r, pred);
    attach_reasons(&mut case, &reasons, |reason| {
        reason.evidence.iter().filter(|e| pred(e)).map(|e| format!("{:?}: {}", e.kind, e.id)).collect()
    });
    match status {
        StageStatus::Ran { note } => {
            if let Some(n) = note {
                case.out.push(n.clone());
            }
        }
        StageStatus::Skipped { reason } => case.skipped = Some(reason.clone()),
        StageStatus::Error { message } => case.errors.push((truncate_chars(message, 300), message.clone())),
    }
    case
}

/// Render junit.xml.
pub fn render(r: &RunRecord) -> Vec<u8> {
    let mut suites: Vec<(String, Vec<Case>)> = Vec::new();
    for s in &r.suites {
        let cases: Vec<Case> = r.probes.iter().filter(|p| p.suite == s.name).map(|p| probe_case(r, p)).collect();
        suites.push((s.name.clone(), cases));
    }
    // Probes whose suite is not listed (should not happen) still appear, under their own suite name.
    for p in &r.probes {
        if !r.suites.iter().any(|s| s.name == p.suite) {
            match suites.iter_mut().find(|(n, _)| *n == p.suite) {
                Some((_, cases)) => cases.push(probe_case(r, p)),
                None => suites.push((p.suite.clone(), vec![probe_case(r, p)])),
            }
        }
    }
    let mut own = vec![
        stage_case(r, "audit", &r.stages.audit, &[EvidenceKind::Finding]),
        stage_case(r, "weight_delta", &r.stages.weight_delta, &[EvidenceKind::WeightDelta]),
        stage_case(r, "activations", &r.stages.activations, &[EvidenceKind::Activation]),
        stage_case(r, "trigger_search", &r.stages.trigger_search, &[EvidenceKind::TriggerSearch]),
    ];
    if let StageStatus::Error { message } = &r.stages.probes {
        let mut c = Case { name: "probes".into(), classname: "trapdoor".into(), ..Default::default() };
        c.errors.push((truncate_chars(message, 300), message.clone()));
        own.push(c);
    }
    let mut verdict = Case { name: "verdict".into(), classname: "trapdoor".into(), ..Default::default() };
    let all: Vec<String> = r.verdict.reasons.iter().map(reason_line).collect();
    match r.verdict.decision {
        Decision::Fail => verdict.failures.push(("verdict: fail".into(), all.join("\n"))),
        Decision::NothingEvaluated => {
            verdict.failures.push(("verdict: nothing_evaluated (no test had enough samples)".into(), all.join("\n")))
        }
        Decision::Pass | Decision::Warn => {
            verdict.out.push(format!("verdict: {}", r.verdict.decision.as_str()));
            verdict.out.extend(all);
        }
    }
    own.push(verdict);
    suites.push(("trapdoor".into(), own));

    let (mut t, mut f, mut e, mut s) = (0, 0, 0, 0);
    let mut body = String::new();
    for (name, cases) in &suites {
        let (mut sf, mut se, mut ss) = (0, 0, 0);
        for c in cases {
            let (a, b, d) = c.counts();
            sf += a;
            se += b;
            ss += d;
        }
        t += cases.len();
        f += sf;
        e += se;
        s += ss;
        let _ = writeln!(
            body,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{sf}\" errors=\"{se}\" skipped=\"{ss}\">",
            xml(name, true),
            cases.len()
        );
        for c in cases {
            c.write(&mut body);
        }
        body.push_str("  </testsuite>\n");
    }
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(o, "<testsuites name=\"trapdoor\" tests=\"{t}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{s}\">");
    o.push_str(&body);
    o.push_str("</testsuites>\n");
    o.into_bytes()
}
