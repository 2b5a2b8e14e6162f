//! `trapdoor forward MODEL [--adapter DIR] --input IN.safetensors --out OUT.safetensors`.
//!
//! IN holds `input_ids` `[B, T]` (i64; i32/u32 accepted) and optionally `attention_mask` `[B, T]` of 0/1 (all ones
//! when absent; other tensors are ignored). OUT gets `logits` `[B, T, V]` f32 and `hidden.0` … `hidden.L`
//! `[B, T, D]` f32 — the layout of transformers' `hidden_states` (embedding output first, final norm's output
//! last) — written atomically.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Tensor};
use trapdoor::runtime::{ForwardOptions, Model};

use super::model_args::ModelArgs;
use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// safetensors file with `input_ids` [B,T] and `attention_mask` [B,T] (integers).
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Where to write `logits` and `hidden.N` (f32 safetensors).
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
}

/// An integer matrix: its values row-major and its shape `(B, T)`.
type IntMatrix = (Vec<i64>, (usize, usize));

/// Read one integer matrix from the input file.
fn int_matrix(st: &safetensors::SafeTensors, path: &Path, name: &str) -> anyhow::Result<Option<IntMatrix>> {
    let view = match st.tensor(name) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    let shape = view.shape();
    let [b, t] = *shape else { bail!("{}: tensor `{name}`: expected shape [B, T], found {shape:?}", path.display()) };
    let data = view.data();
    let vals: Vec<i64> = match view.dtype() {
        safetensors::Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        safetensors::Dtype::I32 => data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        safetensors::Dtype::U32 => data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        other => bail!("{}: tensor `{name}`: dtype {other:?}, expected I64", path.display()),
    };
    Ok(Some((vals, (b, t))))
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let opts = args.model.resolve(false)?;
    let inp = &args.input;
    let bytes = std::fs::read(inp).with_context(|| format!("{}: cannot read", inp.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: invalid safetensors file: {e}", inp.display()))?;
    let (ids, (b, t)) = int_matrix(&st, inp, "input_ids")?.ok_or_else(|| anyhow!("{}: tensor `input_ids` is missing", inp.display()))?;
    if b == 0 || t == 0 {
        bail!("{}: tensor `input_ids`: empty shape [{b}, {t}]", inp.display());
    }
    let mask = match int_matrix(&st, inp, "attention_mask")? {
        None => None,
        Some((m, shape)) => {
            if shape != (b, t) {
                bail!("{}: tensor `attention_mask`: shape [{}, {}] differs from input_ids [{b}, {t}]", inp.display(), shape.0, shape.1);
            }
            if let Some(pos) = m.iter().position(|&x| x != 0 && x != 1) {
                bail!("{}: tensor `attention_mask`: value {} at [{}, {}], expected 0 or 1", inp.display(), m[pos], pos / t, pos % t);
            }
            Some(m)
        }
    };
    let model = Model::load(&args.model.model, &opts)?;
    let vocab = model.config().vocab_size as i64;
    if let Some(pos) = ids.iter().position(|&x| x < 0 || x >= vocab) {
        bail!("{}: tensor `input_ids`: id {} at [{}, {}] is outside the vocabulary (size {vocab})", inp.display(), ids[pos], pos / t, pos % t);
    }
    let device = model.decoder().device().clone();
    let ids = Tensor::from_vec(ids.into_iter().map(|x| x as u32).collect::<Vec<u32>>(), (b, t), &device)?;
    let mask = mask.map(|m| Tensor::from_vec(m.into_iter().map(|x| x as u8).collect::<Vec<u8>>(), (b, t), &device)).transpose()?;
    let out = model.decoder().forward(&ids, mask.as_ref(), &ForwardOptions { hidden_states: true, differentiable: false, ..Default::default() })?;

    let mut tensors: Vec<(String, Tensor)> = vec![("logits".into(), out.logits.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)];
    for (i, h) in out.hidden.iter().enumerate() {
        tensors.push((format!("hidden.{i}"), h.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?));
    }
    // One metadata key only: safetensors writes metadata from a HashMap, and output bytes must be deterministic.
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| anyhow!("{}: cannot serialise outputs: {e}", args.out.display()))?;
    trapdoor_reports::io::write_atomic(&args.out, &data)?;
    eprintln!(
        "wrote {}: logits [{b}, {t}, {}] and hidden.0..hidden.{} [{b}, {t}, {}]",
        args.out.display(),
        model.config().vocab_size,
        out.hidden.len().saturating_sub(1),
        model.config().hidden_size
    );
    Ok(Outcome::Done)
}
