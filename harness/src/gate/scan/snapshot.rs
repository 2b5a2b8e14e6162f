//! A scan against a recorded baseline snapshot (`scan --baseline-snapshot DIR`, issue 7) instead of a live baseline.
//!
//! The snapshot must have been recorded for exactly the scan's suites, seed and generation cap, in the scan's dtype,
//! and the candidate's tokenizer must map tokens to the same ids as the recorded baseline's; anything else is
//! refused before weights load (exit 2). Then only the candidate runs: it generates greedily from the snapshot's
//! prompt ids (the baseline's rendering and encoding, as a live scan uses) in the live scan's batches, and is
//! teacher-forced along the baseline's recorded continuations and over the declared targets.
//!
//! What is measured differently from a live scan, and said so in the record:
//! - divergences **along the baseline's continuations** are estimated from the baseline's recorded top tokens plus
//!   remaining mass (see [`crate::snapshot::topk`]): never above the full-vocabulary value, JS at most
//!   `ln 2 (p_rest + q_rest) / 2` below it per position (the worst case of the run is in the probes stage's note);
//! - divergences **along the candidate's continuations** need the baseline's distributions along text it never
//!   produced: not computed (the trace has no positions, so pair metrics come from the baseline's continuations);
//! - the audit runs on the candidate's files alone (no tokenizer / config / chat-template diff against the
//!   baseline's files; the vocabulary is compared with the snapshot's instead);
//! - weight delta, activations and the trigger search's baseline contrast need the baseline's weights: skipped with
//!   the reason (pass `--baseline` too to compute everything live, checked against the snapshot).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use trapdoor_probes::Case;
use trapdoor_reports::record::{
    self as rec, Divergence, FileRef, ModelKind, ModelRef, RunRecord, StageStatus, TargetScore,
};

use super::{
    audit_section, audit_stop_reason, base_record, candidate_files, empty_case_result, finish, keep_audited_files,
    lap, load_candidate, load_suites, model_kind, model_output, model_ref, scored_target, stage0, stopped_by_audit,
    trace, trace_with_tokens, vocab_size_of, Job, ScanConfig, ScanError, ScanResult, Scored, Timing,
};
use crate::audit::LockFile;
use crate::runtime::device::dtype_name;
use crate::runtime::Model;
use crate::snapshot::format::{Manifest, Snapshot, SnapshotError};
use crate::snapshot::record::{generate_all, rows_of, verify_suites, vocab_sha256};
use crate::snapshot::topk;

fn snap_err(dir: &Path) -> impl Fn(SnapshotError) -> ScanError + '_ {
    move |e| ScanError::Invalid(format!("--baseline-snapshot {}: {e}", dir.display()))
}

/// Read a snapshot and check it against the scan's suites, seed, generation cap and dtype. Errors are refusals.
pub fn open_snapshot(cfg: &ScanConfig, dir: &Path) -> Result<Snapshot, ScanError> {
    let err = snap_err(dir);
    let snap = Snapshot::read(dir).map_err(&err)?;
    let suites = load_suites(&cfg.suites)?;
    verify_suites(&snap.manifest, &suites, cfg.seed).map_err(&err)?;
    let m = &snap.manifest;
    if m.max_new_tokens != cfg.max_new_tokens as u64 {
        return Err(err(SnapshotError::Mismatch(format!(
            "--max-new-tokens {}: the snapshot was recorded with {}",
            cfg.max_new_tokens, m.max_new_tokens
        ))));
    }
    if m.dtype != dtype_name(cfg.dtype) {
        return Err(err(SnapshotError::Mismatch(format!(
            "--dtype {}: the snapshot was recorded in {}",
            dtype_name(cfg.dtype),
            m.dtype
        ))));
    }
    Ok(snap)
}

fn baseline_ref(dir: &Path, m: &Manifest) -> ModelRef {
    let mut r = ModelRef::new(dir.display().to_string(), ModelKind::Snapshot);
    r.files = m
        .model
        .files
        .iter()
        .map(|f| FileRef { path: f.path.clone(), sha256: f.sha256.clone(), bytes: f.bytes })
        .collect();
    r.architecture = Some(m.model.architecture.clone());
    r.dtype = Some(m.dtype.clone());
    r.vocab_size = Some(m.model.vocab_size);
    r.tokenizer_sha256 = m.model.tokenizer_sha256.clone();
    r
}

const NEEDS_WEIGHTS: &str =
    "needs the baseline's weights; this scan used a baseline snapshot (pass --baseline as well to compute it)";

/// Run a whole scan against a snapshot: suites, snapshot checks, audit of the candidate, load, probes, verdict,
/// reports.
pub fn run_scan_snapshot(cfg: &ScanConfig, dir: &Path) -> Result<ScanResult, ScanError> {
    let t0 = Instant::now();
    let mut timing = Timing::default();
    let suites = load_suites(&cfg.suites)?;
    lap(&mut timing, "suites", t0);
    let t = Instant::now();
    let snap = open_snapshot(cfg, dir)?;
    lap(&mut timing, "snapshot", t);
    let m = &snap.manifest;

    let cand_files = candidate_files(cfg)?;
    let vc = vocab_size_of(&cand_files)?;
    if vc as u64 != m.model.vocab_size {
        return Err(ScanError::VocabularyMismatch(format!(
            "candidate `{}` has {vc} tokens, the snapshot's baseline `{}` has {}; models with different vocabularies \
             cannot be compared token by token",
            cfg.candidate, m.model.spec, m.model.vocab_size
        )));
    }
    let lock = cfg.lock.as_deref().map(LockFile::read).transpose()?;

    // Stage 0, on the candidate's files alone.
    let t = Instant::now();
    let audit_result = stage0(cfg, &suites, &cand_files, None, lock);
    lap(&mut timing, "audit", t);
    let mut cand_ref = ModelRef::new(&cfg.candidate, model_kind(&cand_files));
    cand_ref.revision = cand_files.revision.clone();
    let audit_note = "on the candidate's files only: the baseline is a snapshot, so no tokenizer / config / \
                      chat-template diff against its files (its vocabulary is compared with the snapshot's)";
    let (section, audit_stage) = audit_section(cfg, &audit_result, &mut cand_ref, Some(audit_note));
    let mut record = base_record(cfg, &suites, cand_ref.clone(), baseline_ref(dir, m));
    if let Some(reason) = audit_stop_reason(cfg, &audit_result) {
        return finish(cfg, stopped_by_audit(record, &reason, section, audit_stage), timing, t0);
    }

    let t = Instant::now();
    let candidate = load_candidate(cfg)?;
    lap(&mut timing, "load", t);
    let vocab = vocab_sha256(&candidate).map_err(snap_err(dir))?;
    if vocab != m.model.vocab_sha256 {
        return Err(ScanError::VocabularyMismatch(format!(
            "the tokenizer of candidate `{}` maps tokens to other ids than the snapshot's baseline (vocabulary sha256 \
             {vocab} vs {}); token-level comparison with --baseline-snapshot {} needs one vocabulary",
            cfg.candidate,
            m.model.vocab_sha256,
            dir.display()
        )));
    }
    let mut full = model_ref(&cfg.candidate, &candidate);
    keep_audited_files(&mut full, cand_ref);
    record.candidate = full;
    record.audit = section;
    record.stages = rec::Stages::not_run("not run");
    record.stages.audit = audit_stage;
    probes(cfg, dir, &snap, &candidate, &suites, &mut record, &mut timing)?;
    let stages = &cfg.policy.policy.stages;
    record.stages.weight_delta = if stages.weight_delta.enabled {
        StageStatus::skipped(format!("the weight delta {NEEDS_WEIGHTS}"))
    } else {
        StageStatus::skipped("disabled by the policy (stages.weight_delta.enabled: false)")
    };
    record.stages.activations = if stages.activations.enabled {
        StageStatus::skipped(format!("the activation comparison {NEEDS_WEIGHTS}"))
    } else {
        StageStatus::skipped("disabled by the policy (stages.activations.enabled: false)")
    };
    record.stages.trigger_search = if stages.trigger_search.enabled {
        StageStatus::skipped(format!("the trigger search's baseline contrast {NEEDS_WEIGHTS}"))
    } else {
        StageStatus::skipped("disabled by the policy (stages.trigger_search.enabled: false)")
    };
    finish(cfg, record, timing, t0)
}

/// The probes stage against the snapshot.
fn probes(
    cfg: &ScanConfig,
    dir: &Path,
    snap: &Snapshot,
    candidate: &Model,
    suites: &[super::LoadedSuite],
    record: &mut RunRecord,
    timing: &mut Timing,
) -> Result<(), ScanError> {
    let err = snap_err(dir);
    let m = &snap.manifest;
    let data = &snap.data;
    let mut cases: Vec<Case> = Vec::new();
    for s in suites {
        cases.extend(s.suite.expand_with_seed(Some(cfg.seed)));
    }
    let keys: Vec<(Vec<u32>, usize)> =
        data.prompts.iter().map(|p| (p.ids.clone(), p.max_new_tokens as usize)).collect();
    timing.distinct_prompts = keys.len();

    let t = Instant::now();
    let gen_c = generate_all(candidate, &keys, cfg.batch_size, cfg.progress).map_err(&err)?;
    timing.generated_tokens = gen_c.iter().map(Vec::len).sum();
    lap(timing, "generate", t);

    let t = Instant::now();
    let job_of = |prompt: &[u32], cont: &[u32]| Job { ids: [prompt, cont].concat(), start: prompt.len() };
    let mut jobs: BTreeSet<Job> = BTreeSet::new();
    for p in &data.prompts {
        if !p.continuation.is_empty() {
            jobs.insert(job_of(&p.ids, &p.continuation));
        }
    }
    for (pi, tids) in data.targets.keys() {
        jobs.insert(job_of(&data.prompts[*pi as usize].ids, tids));
    }
    timing.scored_sequences = jobs.len();
    let jobs: Vec<Job> = jobs.into_iter().collect();
    // Along each recorded baseline continuation: the candidate's full distribution against the recorded top tokens
    // (with the JS bound of each position); for every job the candidate's summed log-probability of its tokens.
    let along_job: BTreeMap<Job, usize> = data
        .prompts
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.continuation.is_empty())
        .map(|(i, p)| (job_of(&p.ids, &p.continuation), i))
        .collect();
    let rows = rows_of(candidate, &jobs, cfg.batch_size, cfg.progress, |j, r| {
        let scored = along_job.get(j).map(|&i| {
            let p = &data.prompts[i];
            let mut s = Scored::default();
            let mut bound = 0.0f64;
            for ((row, q), &tok) in r.iter().zip(&p.dists).zip(&p.continuation) {
                let (pc, lc) = topk::probs(row);
                let l = topk::lumped(&pc, &lc, q);
                bound = bound.max(l.js_bound);
                s.js.push(l.js);
                s.kl_cb.push(l.kl_cb);
                s.kl_bc.push(l.kl_bc);
                s.agree.push(crate::runtime::generate::argmax(row) == q.ids[0]);
                s.lp_cand.push(lc[tok as usize]);
                let lb = q.ids.iter().position(|&i| i == tok).map_or(f64::NAN, |j| (q.probs[j] as f64).ln());
                s.lp_base.push(lb);
            }
            (s, bound)
        });
        let lp: f64 = r.iter().zip(&j.ids[j.start..]).map(|(row, &t)| topk::probs(row).1[t as usize]).sum();
        (scored, lp)
    })
    .map_err(&err)?;
    lap(timing, "teacher_forcing", t);
    let mut bound_max = 0.0f64;
    let mut along_base: Vec<Scored> = vec![Scored::default(); data.prompts.len()];
    for (j, &i) in &along_job {
        if let Some((s, b)) = rows.get(j).and_then(|r| r.0.clone()) {
            bound_max = bound_max.max(b);
            along_base[i] = s;
        }
    }
    let target_lp = |pi: u32, tids: &Vec<u32>| -> Option<(f64, f64)> {
        let base = *data.targets.get(&(pi, tids.clone()))?;
        let cand = rows.get(&job_of(&data.prompts[pi as usize].ids, tids))?.1;
        Some((cand, base))
    };

    let decode = |ids: &[u32]| candidate.decode(ids).map_err(ScanError::from);
    let eos_c = candidate.eos_tokens();
    let eos_b = m.model.eos_tokens.clone();
    let empty = Scored::default();
    for (c, &pi) in cases.iter().zip(&data.case_prompt) {
        let mut cr = empty_case_result(c);
        if pi < 0 {
            cr.error =
                Some(m.case_errors.get(&c.id).cloned().unwrap_or_else(|| "the prompt could not be encoded".into()));
            record.cases.push(cr);
            continue;
        }
        let k = pi as usize;
        let base_cont = &data.prompts[k].continuation;
        let mut outputs = Vec::new();
        for (cont, eos, side) in [(&gen_c[k], &eos_c, rec::Side::Candidate), (base_cont, &eos_b, rec::Side::Baseline)] {
            let targets = c
                .targets
                .iter()
                .filter(|t| scored_target(c.probe_kind, t))
                .filter_map(|tg| {
                    let tids = m.target_tokens.get(&tg.text)?;
                    let (lc, lb) = target_lp(pi as u32, tids)?;
                    let lp = match side {
                        rec::Side::Candidate => lc,
                        rec::Side::Baseline => lb,
                    };
                    Some(TargetScore { target: tg.text.clone(), logprob: rec::Real(lp), tokens: tids.len() as u32 })
                })
                .collect();
            outputs.push(model_output(c, decode(cont)?, cont, eos, targets));
        }
        let along = trace_with_tokens(&along_base[k], base_cont, &decode)?;
        cr.divergence = Some(Divergence { along_candidate: trace(&empty), along_baseline: along });
        let mut it = outputs.into_iter();
        cr.candidate = it.next();
        cr.baseline = it.next();
        record.cases.push(cr);
    }
    record.stages.probes = StageStatus::Ran {
        note: Some(format!(
            "against baseline snapshot {} (data sha256 {}): divergences along the baseline's recorded continuations \
             only, estimated from its top {} tokens per position plus the remaining mass (never above the \
             full-vocabulary value; JS at most {:.2e} nats below it at the worst position of this run); along the \
             candidate's continuations not computed: that needs the live baseline",
            dir.display(),
            m.data.sha256,
            m.top_k,
            bound_max
        )),
    };
    Ok(())
}
