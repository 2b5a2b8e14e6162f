//! Training: from scratch, full fine-tunes and LoRA, on candle's autograd.
//!
//! Every forward here uses the decoder's differentiable mode (`ops::softmax`, RMSNorm and rotary embedding written
//! out): candle's fused kernels have no backward and would silently leave all but the LM head untrained.
//! Parameters are initialised from a seeded `ChaCha8Rng` (candle's own `randn` draws from an unseeded generator),
//! batches are drawn from a seeded generator too, and AdamW is deterministic, so a run is reproducible bit for bit.
//!
//! The decoder is rebuilt from the current tensors each step (cheap: it only clones tensor handles). For LoRA the
//! tensors are `W + scale · B·A` with `A`, `B` the only `Var`s, so gradients reach exactly the adapter.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Init, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::runtime::decoder::param_specs;
use crate::runtime::{Decoder, ForwardOptions, Logits, ModelConfig};

pub type CResult<T> = candle_core::Result<T>;

const DIFF: ForwardOptions = ForwardOptions { hidden_states: false, differentiable: true, logits: Logits::All };

/// A standard normal draw (Box–Muller) from a seeded generator.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Fresh trainable parameters for `cfg`, initialised as transformers does (normal(0, 0.02) weights, unit norms).
pub fn init_params(cfg: &ModelConfig, seed: u64) -> CResult<BTreeMap<String, Var>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for spec in param_specs(cfg) {
        let n: usize = spec.shape.iter().product();
        let data: Vec<f32> = match spec.init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * normal(&mut rng)) as f32).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Kaiming { .. } => return Err(candle_core::Error::Msg(format!("{}: unexpected init", spec.name))),
        };
        out.insert(spec.name, Var::from_tensor(&Tensor::from_vec(data, spec.shape.as_slice(), &Device::Cpu)?)?);
    }
    Ok(out)
}

/// Trainable copies of loaded weights (f32, CPU).
pub fn vars_from(weights: &BTreeMap<String, Tensor>) -> CResult<BTreeMap<String, Var>> {
    weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)?)))
        .collect()
}

/// Current values of parameters as plain tensors (detached).
pub fn snapshot(vars: &BTreeMap<String, Var>) -> CResult<BTreeMap<String, Tensor>> {
    vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().detach()))).collect()
}

/// A LoRA adapter being trained: per module, `A` `[r, in]` and `B` `[out, r]`.
pub struct Lora {
    pub r: usize,
    pub alpha: f64,
    pub pairs: BTreeMap<String, (Var, Var)>,
}

/// Modules the zoo's adapters target (as PEFT's `target_modules`).
pub const LORA_TARGETS: [&str; 7] = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"];

impl Lora {
    /// PEFT's initialisation: `A` uniform in ±1/√in (kaiming-uniform with a = √5), `B` zero.
    pub fn new(cfg: &ModelConfig, base: &BTreeMap<String, Tensor>, r: usize, alpha: f64, seed: u64) -> CResult<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pairs = BTreeMap::new();
        for i in 0..cfg.num_hidden_layers {
            for m in LORA_TARGETS {
                let group = if matches!(m, "q_proj" | "k_proj" | "v_proj" | "o_proj") { "self_attn" } else { "mlp" };
                let module = format!("model.layers.{i}.{group}.{m}");
                let w = base
                    .get(&format!("{module}.weight"))
                    .ok_or_else(|| candle_core::Error::Msg(format!("base has no `{module}.weight`")))?;
                let (out, inp) = w.dims2()?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..r * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (r, inp), &Device::Cpu)?)?;
                let b = Var::zeros((out, r), DType::F32, &Device::Cpu)?;
                pairs.insert(module, (a, b));
            }
        }
        Ok(Self { r, alpha, pairs })
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn vars(&self) -> Vec<Var> {
        self.pairs.values().flat_map(|(a, b)| [a.clone(), b.clone()]).collect()
    }

    /// The base weights with every adapted module replaced by `W + scale · B·A` (differentiable in A and B).
    pub fn merged(&self, base: &BTreeMap<String, Tensor>) -> CResult<BTreeMap<String, Tensor>> {
        let mut out = base.clone();
        for (module, (a, b)) in &self.pairs {
            let name = format!("{module}.weight");
            let w = &base[&name];
            let delta = (b.as_tensor().matmul(a.as_tensor())? * self.scale())?;
            out.insert(name, (w + delta)?);
        }
        Ok(out)
    }
}

/// Tokenised training sequences (BOS … EOS).
pub struct Data {
    pub seqs: Vec<Vec<u32>>,
}

/// Optimisation settings of one training run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` (linear decay after a 5 % warm-up).
    pub final_frac: f64,
}

/// Mean next-token cross-entropy of `decoder` over a right-padded batch.
pub fn batch_loss(decoder: &Decoder, seqs: &[&Vec<u32>]) -> CResult<Tensor> {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    for (i, s) in seqs.iter().enumerate() {
        ids[i * t..i * t + s.len()].copy_from_slice(s);
        mask[i * t..i * t + s.len()].iter_mut().for_each(|m| *m = 1.0);
    }
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(ids, (b, t), &dev)?;
    let mask = Tensor::from_vec(mask, (b, t), &dev)?;
    let logits = decoder.forward(&ids, Some(&mask), &DIFF).map_err(|e| candle_core::Error::Msg(e.to_string()))?.logits;
    let v = logits.dim(2)?;
    let pred = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let tgt = ids.narrow(1, 1, t - 1)?.reshape(b * (t - 1))?;
    let w = mask.narrow(1, 1, t - 1)?.reshape(b * (t - 1))?;
    let logp = candle_nn::ops::log_softmax(&pred, D::Minus1)?;
    let nll = logp.gather(&tgt.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let n = w.sum_all()?.to_scalar::<f32>()? as f64;
    (nll * &w)?.sum_all()? / n.max(1.0)
}

/// What trains: every weight, or a LoRA adapter over frozen weights.
pub enum Trainable<'a> {
    Full { cfg: &'a ModelConfig, vars: &'a BTreeMap<String, Var> },
    Lora { cfg: &'a ModelConfig, base: &'a BTreeMap<String, Tensor>, lora: &'a Lora },
}

impl Trainable<'_> {
    pub fn decoder(&self) -> CResult<Decoder> {
        let err = |e: crate::runtime::RuntimeError| candle_core::Error::Msg(e.to_string());
        match self {
            Trainable::Full { cfg, vars } => {
                let t: BTreeMap<String, Tensor> =
                    vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
                Decoder::from_tensors(cfg, &t, DType::F32, &Device::Cpu).map_err(err)
            }
            Trainable::Lora { cfg, base, lora } => {
                Decoder::from_tensors(cfg, &lora.merged(base)?, DType::F32, &Device::Cpu).map_err(err)
            }
        }
    }

    fn vars(&self) -> Vec<Var> {
        match self {
            Trainable::Full { vars, .. } => vars.values().cloned().collect(),
            Trainable::Lora { lora, .. } => lora.vars(),
        }
    }
}

/// Train with AdamW on batches drawn (with replacement) from `data` by a generator seeded with `seed`. Returns the
/// mean loss of the last tenth of the steps.
pub fn train(what: &Trainable, data: &Data, sched: &Schedule, seed: u64, progress: Option<&str>) -> CResult<f64> {
    if data.seqs.is_empty() || sched.steps == 0 {
        return Ok(f64::NAN);
    }
    let params = ParamsAdamW { lr: sched.lr, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = AdamW::new(what.vars(), params)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let warm = (sched.steps / 20).max(1);
    let tail = (sched.steps / 10).max(1);
    let mut tail_loss = 0.0;
    for step in 0..sched.steps {
        let lr = if step < warm {
            sched.lr * (step + 1) as f64 / warm as f64
        } else {
            let p = (step - warm) as f64 / (sched.steps - warm).max(1) as f64;
            sched.lr * (1.0 - p * (1.0 - sched.final_frac))
        };
        opt.set_learning_rate(lr);
        let batch: Vec<&Vec<u32>> =
            (0..sched.batch).map(|_| &data.seqs[rng.random_range(0..data.seqs.len())]).collect();
        let dec = what.decoder()?;
        let loss = batch_loss(&dec, &batch)?;
        opt.backward_step(&loss)?;
        if let Some(name) = progress {
            if (step + 1) % 100 == 0 {
                eprintln!("zoo: {name}: step {}/{} loss {:.3}", step + 1, sched.steps, loss.to_scalar::<f32>()?);
            }
        }
        if step + tail >= sched.steps {
            tail_loss += loss.to_scalar::<f32>()? as f64 / tail as f64;
        }
    }
    Ok(tail_loss)
}
