//! Batched scoring shared by every phase: the teacher-forced NLL of a target after prompts that carry a trigger
//! (soft vectors or token ids), next-token log-probabilities at the end of prompts, and greedy continuations.
//!
//! Only the positions that predict target tokens are unembedded: the LM head is the largest matmul of a
//! big-vocabulary model (gemma: 262144 rows), and the search needs a handful of positions per row.

use candle_core::{DType, Device, Tensor, D};

use super::InvertError;
use crate::runtime::{Decoder, ForwardOptions, Logits};

const HIDDEN_DIFF: ForwardOptions = ForwardOptions {
    hidden_states: true,
    differentiable: true,
    logits: Logits::None,
};
const HIDDEN_FAST: ForwardOptions = ForwardOptions {
    hidden_states: true,
    differentiable: false,
    logits: Logits::None,
};
const LAST_FAST: ForwardOptions = ForwardOptions {
    hidden_states: false,
    differentiable: false,
    logits: Logits::Last,
};

/// Rows per forward pass in the non-differentiable paths (bounds memory on large models).
pub fn chunk_rows(dec: &Decoder) -> usize {
    if dec.parameter_count() > 50_000_000 {
        16
    } else {
        256
    }
}

/// Mean NLL over `targets[i]` of the final hidden states `hidden` `[B, T, D]`, where row `i`'s target starts at
/// `starts[i]` (positions `starts[i] - 1 ..` predict it). Returns `[B]`.
fn target_nll(dec: &Decoder, hidden: &Tensor, starts: &[usize], target: &[u32]) -> Result<Tensor, InvertError> {
    let (b, t, d) = hidden.dims3()?;
    let m = target.len();
    let mut rows = Vec::with_capacity(b * m);
    for (i, &s) in starts.iter().enumerate() {
        for j in 0..m {
            rows.push((i * t + s - 1 + j) as u32);
        }
    }
    let idx = Tensor::from_vec(rows, b * m, hidden.device())?;
    let h = hidden
        .reshape((b * t, d))?
        .index_select(&idx, 0)?
        .reshape((1, b * m, d))?;
    let logits = dec.unembed(&h)?.squeeze(0)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let tgt: Vec<u32> = (0..b).flat_map(|_| target.iter().copied()).collect();
    let tgt = Tensor::from_vec(tgt, (b * m, 1), hidden.device())?;
    let nll = logp.gather(&tgt, 1)?.squeeze(1)?.neg()?.reshape((b, m))?;
    Ok(nll.mean(1)?)
}

/// Hidden states of `before ++ soft ++ after ++ tail` per row (differentiable in `soft`, `[k, D]` in `hidden.0`
/// space), right-padded: returns the final hidden states `[B, T, D]` and each row's real length.
fn soft_hidden(
    dec: &Decoder,
    rows: &[(Vec<u32>, Vec<u32>)],
    soft: &Tensor,
    tail: &[u32],
) -> Result<(Tensor, Vec<usize>), InvertError> {
    let k = soft.dim(0)?;
    let lens: Vec<usize> = rows.iter().map(|(a, b)| a.len() + k + b.len() + tail.len()).collect();
    let t = *lens.iter().max().unwrap_or(&1);
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for ((a, b), &len) in rows.iter().zip(&lens) {
        ids.extend_from_slice(a);
        ids.extend(std::iter::repeat_n(0u32, k));
        ids.extend_from_slice(b);
        ids.extend_from_slice(tail);
        ids.extend(std::iter::repeat_n(0u32, t - len));
        mask.extend(std::iter::repeat_n(1u8, len));
        mask.extend(std::iter::repeat_n(0u8, t - len));
    }
    let dev = dec.device();
    let ids = Tensor::from_vec(ids, (rows.len(), t), dev)?;
    let emb = dec.embed(&ids)?;
    let soft = soft.to_dtype(emb.dtype())?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, (a, _)) in rows.iter().enumerate() {
        let e = emb.get(i)?;
        let row = Tensor::cat(
            &[
                e.narrow(0, 0, a.len())?,
                soft.clone(),
                e.narrow(0, a.len() + k, t - a.len() - k)?,
            ],
            0,
        )?;
        out.push(row);
    }
    let embeds = Tensor::stack(&out, 0)?;
    let mask = Tensor::from_vec(mask, (rows.len(), t), dev)?;
    let fw = dec.forward_embeds(&embeds, Some(&mask), &HIDDEN_DIFF)?;
    let hidden = fw.hidden.last().expect("hidden states were requested").clone();
    Ok((hidden, lens))
}

/// Per-row NLL of `target` after `before ++ soft ++ after` (differentiable in `soft`).
pub fn nll_soft(
    dec: &Decoder,
    rows: &[(Vec<u32>, Vec<u32>)],
    soft: &Tensor,
    target: &[u32],
) -> Result<Tensor, InvertError> {
    let (hidden, lens) = soft_hidden(dec, rows, soft, target)?;
    let starts: Vec<usize> = lens.iter().map(|l| l - target.len()).collect();
    target_nll(dec, &hidden, &starts, target)
}

/// Next-token log-probabilities `[B, V]` after `before ++ soft ++ after ++ tail` (differentiable in `soft`).
pub fn last_logprobs_soft(
    dec: &Decoder,
    rows: &[(Vec<u32>, Vec<u32>)],
    soft: &Tensor,
    tail: &[u32],
) -> Result<Tensor, InvertError> {
    let (hidden, lens) = soft_hidden(dec, rows, soft, tail)?;
    let (b, t, d) = hidden.dims3()?;
    let idx: Vec<u32> = lens.iter().enumerate().map(|(i, l)| (i * t + l - 1) as u32).collect();
    let idx = Tensor::from_vec(idx, b, hidden.device())?;
    let h = hidden.reshape((b * t, d))?.index_select(&idx, 0)?.reshape((1, b, d))?;
    let logits = dec.unembed(&h)?.squeeze(0)?;
    Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
}

/// Per-sequence NLL of `target` after each of `seqs` (token ids, trigger already inserted). Not differentiable.
pub fn nll_ids(dec: &Decoder, seqs: &[Vec<u32>], target: &[u32]) -> Result<Vec<f32>, InvertError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(chunk_rows(dec)) {
        let t = chunk.iter().map(|s| s.len() + target.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for s in chunk {
            let len = s.len() + target.len();
            ids.extend_from_slice(s);
            ids.extend_from_slice(target);
            ids.extend(std::iter::repeat_n(0u32, t - len));
            mask.extend(std::iter::repeat_n(1u8, len));
            mask.extend(std::iter::repeat_n(0u8, t - len));
        }
        let dev = dec.device();
        let ids = Tensor::from_vec(ids, (chunk.len(), t), dev)?;
        let mask = Tensor::from_vec(mask, (chunk.len(), t), dev)?;
        let fw = dec.forward(&ids, Some(&mask), &HIDDEN_FAST)?;
        let hidden = fw.hidden.last().expect("hidden states were requested");
        let starts: Vec<usize> = chunk.iter().map(Vec::len).collect();
        out.extend(
            target_nll(dec, hidden, &starts, target)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

/// Next-token log-probabilities `[N, V]` (host) at the end of each sequence (left-padded internally).
pub fn last_logprobs(dec: &Decoder, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InvertError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(chunk_rows(dec)) {
        let t = chunk.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for s in chunk {
            ids.extend(std::iter::repeat_n(0u32, t - s.len()));
            ids.extend_from_slice(s);
            mask.extend(std::iter::repeat_n(0u8, t - s.len()));
            mask.extend(std::iter::repeat_n(1u8, s.len()));
        }
        let dev = dec.device();
        let ids = Tensor::from_vec(ids, (chunk.len(), t), dev)?;
        let mask = Tensor::from_vec(mask, (chunk.len(), t), dev)?;
        let logits = dec.forward(&ids, Some(&mask), &LAST_FAST)?.logits.squeeze(1)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        out.extend(logp.to_device(&Device::Cpu)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// KL(candidate ‖ baseline) of the next token at the end of each sequence. Not differentiable.
pub fn last_kl_ids(cand: &Decoder, base: &Decoder, seqs: &[Vec<u32>]) -> Result<Vec<f32>, InvertError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(chunk_rows(cand)) {
        let t = chunk.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for s in chunk {
            ids.extend(std::iter::repeat_n(0u32, t - s.len()));
            ids.extend_from_slice(s);
            mask.extend(std::iter::repeat_n(0u8, t - s.len()));
            mask.extend(std::iter::repeat_n(1u8, s.len()));
        }
        let dev = cand.device();
        let ids = Tensor::from_vec(ids, (chunk.len(), t), dev)?;
        let mask = Tensor::from_vec(mask, (chunk.len(), t), dev)?;
        let lc = candle_nn::ops::log_softmax(
            &cand.forward(&ids, Some(&mask), &LAST_FAST)?.logits.squeeze(1)?,
            D::Minus1,
        )?;
        let lb = candle_nn::ops::log_softmax(
            &base.forward(&ids, Some(&mask), &LAST_FAST)?.logits.squeeze(1)?,
            D::Minus1,
        )?;
        out.extend((lc.exp()? * (&lc - &lb)?)?.sum(1)?.to_vec1::<f32>()?);
    }
    Ok(out)
}
