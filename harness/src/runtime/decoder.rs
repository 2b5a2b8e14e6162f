//! The decoder: one transformer implementation for every supported family, driven by [`ModelConfig`].
//!
//! Pipeline of a forward pass:
//!
//! 1. **Embedding**: `embed_tokens[ids]`, times the family's embedding scale (gemma: √d rounded to the model dtype,
//!    as transformers keeps it). This is `hidden.0`. [`Decoder::forward_embeds`] starts here with vectors the caller
//!    made (soft triggers), so gradients can flow back to them.
//! 2. **Positions and masks** are worked out on the host from the attention mask: position ids are
//!    `cumsum(mask) - 1` clamped at 0 (right *and* left padding give every real token the position it would have
//!    alone), keys that are padding are masked, causality and sliding windows are applied on positions. A query
//!    always sees itself, so padded rows never produce an all-masked softmax (NaN that would leak through `0 · NaN`).
//! 3. **Layers**: pre-norm attention and MLP with residuals; gemma's four norms per layer ("sandwich"); q/k norm
//!    per head (qwen3, gemma3); rotary embeddings (rotate-half convention, one frequency table per rope kind, so
//!    gemma's sliding and full layers use their own bases); grouped-query attention without materialising repeated
//!    keys (queries are regrouped per key/value head instead); scores, mask and softmax in f32 as transformers does.
//! 4. **Head**: the final norm (its output is `hidden.L`, as transformers reports `hidden_states`), the LM head (or
//!    the tied embedding), optional final logit soft-capping; logits come back in f32 for every position.
//!
//! Two execution modes: `differentiable: true` uses only ops with a backward in candle (`ops::softmax`, RMSNorm
//! written out, rotary embedding written out), so gradients reach the input embeddings and every weight `Var`;
//! `false` uses candle's fused kernels (which silently cut the graph) for speed.
//!
//! Weights are addressed by their Hugging Face names (`model.layers.3.self_attn.q_proj.weight`). [`param_specs`] is
//! the single list of what a configuration needs; the loader validates files against it, a `VarMap` builds a
//! trainable model from it, and [`Decoder::weights`] hands every tensor back under the same names.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::config::{Activation, AttentionKind, ModelConfig, NormStyle, Rope};
use super::{Result, RuntimeError};

/// What a forward pass should return besides logits, and how it may compute them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Return `hidden.0 … hidden.L` (embedding output, each layer's output, the final norm's output).
    pub hidden_states: bool,
    /// Use only ops with a backward pass so gradients flow to weights and input embeddings.
    pub differentiable: bool,
    /// Which positions get logits. The unembedding is the largest matmul of a big-vocabulary model (gemma: 262144
    /// rows), so callers that only need the final hidden states or a few positions skip it and call
    /// [`Decoder::unembed`] on what they need.
    pub logits: Logits,
}

/// Positions for which [`Decoder::forward`] computes logits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[B, T, V]`.
    #[default]
    All,
    /// The last position only: `[B, 1, V]`.
    Last,
    /// None: `logits` is an empty `[B, 0, V]` tensor; use `hidden` and [`Decoder::unembed`].
    None,
}

/// Result of a forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[B, T, V]` f32, every position (or `[B, 1, V]` from the internal last-position path used by generation).
    pub logits: Tensor,
    /// `L + 1` tensors of `[B, T, D]` f32 when [`ForwardOptions::hidden_states`] was set, else empty.
    pub hidden: Vec<Tensor>,
}

/// One weight the decoder needs: HF name, shape, and how a fresh (trainable) model initialises it.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Every tensor a configuration needs, by HF name, in a deterministic order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    // transformers initialises linear and embedding weights with N(0, initializer_range=0.02), biases with 0 and
    // RMSNorm weights so that the effective multiplier is 1.
    let normal = Init::Randn { mean: 0.0, stdev: 0.02 };
    let norm_init = match cfg.norm_style {
        NormStyle::Weight => Init::Const(1.0),
        NormStyle::OnePlusWeight => Init::Const(0.0),
    };
    let d = cfg.hidden_size;
    let hd = cfg.head_dim;
    let q_out = cfg.num_attention_heads * hd;
    let kv_out = cfg.num_key_value_heads * hd;
    let ff = cfg.intermediate_size;
    let mut specs = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| specs.push(ParamSpec { name, shape, init });
    push("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d], normal);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (m, out, inp, bias) in [
            ("q_proj", q_out, d, cfg.qkv_bias),
            ("k_proj", kv_out, d, cfg.qkv_bias),
            ("v_proj", kv_out, d, cfg.qkv_bias),
            ("o_proj", d, q_out, cfg.o_bias),
        ] {
            push(format!("{p}.self_attn.{m}.weight"), vec![out, inp], normal);
            if bias {
                push(format!("{p}.self_attn.{m}.bias"), vec![out], Init::Const(0.0));
            }
        }
        if cfg.qk_norm {
            push(format!("{p}.self_attn.q_norm.weight"), vec![hd], norm_init);
            push(format!("{p}.self_attn.k_norm.weight"), vec![hd], norm_init);
        }
        for (m, out, inp) in [("gate_proj", ff, d), ("up_proj", ff, d), ("down_proj", d, ff)] {
            push(format!("{p}.mlp.{m}.weight"), vec![out, inp], normal);
            if cfg.mlp_bias {
                push(format!("{p}.mlp.{m}.bias"), vec![out], Init::Const(0.0));
            }
        }
        push(format!("{p}.input_layernorm.weight"), vec![d], norm_init);
        push(format!("{p}.post_attention_layernorm.weight"), vec![d], norm_init);
        if cfg.sandwich_norms {
            push(format!("{p}.pre_feedforward_layernorm.weight"), vec![d], norm_init);
            push(format!("{p}.post_feedforward_layernorm.weight"), vec![d], norm_init);
        }
    }
    push("model.norm.weight".into(), vec![d], norm_init);
    if !cfg.tie_word_embeddings {
        push("lm_head.weight".into(), vec![cfg.vocab_size, d], normal);
    }
    specs
}

#[derive(Debug, Clone)]
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().expect("linear input has a last dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, inp))?.matmul(&self.w.t()?)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.w.dim(0)?;
        y.reshape(out)
    }
}

#[derive(Debug, Clone)]
struct Norm {
    w: Tensor,
    eps: f64,
    style: NormStyle,
}

impl Norm {
    /// RMSNorm over the last dimension. Llama style normalises in f32, casts back, then multiplies by `w` in the
    /// model dtype; gemma style multiplies by `1 + w` in f32 and casts at the end (both exactly as transformers).
    fn forward(&self, x: &Tensor, diff: bool) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        match self.style {
            NormStyle::Weight => {
                if !diff && dtype == DType::F32 {
                    return candle_nn::ops::rms_norm(&xf.contiguous()?, &self.w, self.eps as f32);
                }
                let n = normalise(&xf, self.eps)?.to_dtype(dtype)?;
                n.broadcast_mul(&self.w)
            }
            NormStyle::OnePlusWeight => {
                let scale = (self.w.to_dtype(DType::F32)? + 1.0)?;
                let y = if diff {
                    normalise(&xf, self.eps)?.broadcast_mul(&scale)?
                } else {
                    candle_nn::ops::rms_norm(&xf.contiguous()?, &scale, self.eps as f32)?
                };
                y.to_dtype(dtype)
            }
        }
    }
}

/// `x / sqrt(mean(x²) + eps)` written with differentiable ops.
fn normalise(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = self.gate.forward(x)?;
        let g = match self.act {
            Activation::Silu => g.silu()?,
            Activation::GeluTanh => g.gelu()?,
        };
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_norm: Norm,
    post_attn_norm: Norm,
    /// Gemma: `pre_feedforward_layernorm`, `post_feedforward_layernorm`.
    sandwich: Option<(Norm, Norm)>,
    /// Index into the decoder's distinct rope kinds / mask kinds.
    rope_idx: usize,
    mask_idx: usize,
}

/// Rotary tables for one forward: `[B, T, head_dim/2]`.
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

/// Cached keys and values of every layer, plus what the mask needs to know about each cached key.
///
/// Made by [`Decoder::new_cache`] and advanced by [`Decoder::forward_with_cache`]; rows never change order.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per row: is the key at this index a real token?
    key_valid: Vec<Vec<bool>>,
    /// Per row: position id of the key at this index.
    key_pos: Vec<Vec<usize>>,
}

impl KvCache {
    /// Number of cached positions (padding included).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of rows, or 0 before the first step.
    pub fn batch(&self) -> usize {
        self.key_valid.len()
    }
}

/// The decoder. Immutable after construction; share it across threads with `Arc`.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: ModelConfig,
    embed: Tensor,
    lm_head: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    ropes: Vec<Rope>,
    masks: Vec<AttentionKind>,
    weights: BTreeMap<String, Tensor>,
    dtype: DType,
    device: Device,
}

/// Validated token ids on the host: `(B, T)` and the rows.
type HostIds = ((usize, usize), Vec<Vec<u32>>);

fn cerr(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> RuntimeError {
    let context = context.into();
    move |err| RuntimeError::Candle { context, err }
}

impl Decoder {
    /// Build from a `VarBuilder` whose names are HF names (`model.embed_tokens.weight`, …) at its root. Over a
    /// `VarMap` this creates a trainable model initialised like transformers does; over loaded tensors it checks
    /// each tensor's shape.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let mut weights = BTreeMap::new();
        for spec in param_specs(cfg) {
            let t = vb
                .get_with_hints(spec.shape.as_slice(), &spec.name, spec.init)
                .map_err(|err| RuntimeError::Tensor { path: "(weights)".into(), tensor: spec.name.clone(), reason: one_line(&err) })?;
            weights.insert(spec.name, t);
        }
        Self::assemble(cfg.clone(), weights, vb.dtype(), vb.device().clone())
    }

    /// Build from tensors by HF name. Tensors are converted to `dtype` and moved to `device`; extra tensors are
    /// ignored, a missing or mis-shaped one is an error naming it.
    pub fn from_tensors(cfg: &ModelConfig, tensors: &BTreeMap<String, Tensor>, dtype: DType, device: &Device) -> Result<Self> {
        let mut weights = BTreeMap::new();
        for spec in param_specs(cfg) {
            let t = tensors.get(&spec.name).ok_or_else(|| RuntimeError::Tensor {
                path: "(weights)".into(),
                tensor: spec.name.clone(),
                reason: "missing".into(),
            })?;
            if t.dims() != spec.shape.as_slice() {
                return Err(RuntimeError::Tensor {
                    path: "(weights)".into(),
                    tensor: spec.name.clone(),
                    reason: format!("shape {:?}, expected {:?}", t.dims(), spec.shape),
                });
            }
            let t = t.to_device(device).and_then(|t| t.to_dtype(dtype)).map_err(cerr(format!("tensor `{}`", spec.name)))?;
            weights.insert(spec.name, t);
        }
        Self::assemble(cfg.clone(), weights, dtype, device.clone())
    }

    fn assemble(cfg: ModelConfig, weights: BTreeMap<String, Tensor>, dtype: DType, device: Device) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(RuntimeError::Invalid(format!("dtype {dtype:?} is not supported (f32, bf16, f16)")));
        }
        let w = |name: String| weights.get(&name).cloned().expect("param_specs and assemble agree");
        let wo = |name: String| weights.get(&name).cloned();
        let norm = |name: String| Norm { w: w(name), eps: cfg.rms_norm_eps, style: cfg.norm_style };
        let mut ropes: Vec<Rope> = Vec::new();
        let mut masks: Vec<AttentionKind> = Vec::new();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, spec) in cfg.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let lin = |m: &str| Linear { w: w(format!("{p}.{m}.weight")), b: wo(format!("{p}.{m}.bias")) };
            let rope_idx = match ropes.iter().position(|r| r == &spec.rope) {
                Some(j) => j,
                None => {
                    ropes.push(spec.rope.clone());
                    ropes.len() - 1
                }
            };
            let mask_idx = match masks.iter().position(|m| m == &spec.attention) {
                Some(j) => j,
                None => {
                    masks.push(spec.attention);
                    masks.len() - 1
                }
            };
            layers.push(Layer {
                attn: Attention {
                    q: lin("self_attn.q_proj"),
                    k: lin("self_attn.k_proj"),
                    v: lin("self_attn.v_proj"),
                    o: lin("self_attn.o_proj"),
                    q_norm: cfg.qk_norm.then(|| norm(format!("{p}.self_attn.q_norm.weight"))),
                    k_norm: cfg.qk_norm.then(|| norm(format!("{p}.self_attn.k_norm.weight"))),
                    n_heads: cfg.num_attention_heads,
                    n_kv: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                    scale: cfg.attention_scale,
                    softcap: cfg.attn_logit_softcapping,
                },
                mlp: Mlp { gate: lin("mlp.gate_proj"), up: lin("mlp.up_proj"), down: lin("mlp.down_proj"), act: cfg.activation },
                input_norm: norm(format!("{p}.input_layernorm.weight")),
                post_attn_norm: norm(format!("{p}.post_attention_layernorm.weight")),
                sandwich: cfg.sandwich_norms.then(|| {
                    (norm(format!("{p}.pre_feedforward_layernorm.weight")), norm(format!("{p}.post_feedforward_layernorm.weight")))
                }),
                rope_idx,
                mask_idx,
            });
        }
        let embed = w("model.embed_tokens.weight".into());
        let lm_head = if cfg.tie_word_embeddings { embed.clone() } else { w("lm_head.weight".into()) };
        Ok(Self { norm: norm("model.norm.weight".into()), embed, lm_head, layers, ropes, masks, cfg, weights, dtype, device })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every weight by HF name, in the model dtype and on the model device (tied: `lm_head.weight` is absent).
    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.weights
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn parameter_count(&self) -> u64 {
        self.weights.values().map(|t| t.elem_count() as u64).sum()
    }

    /// The raw `[V, D]` embedding rows (unscaled).
    pub fn embedding_matrix(&self) -> &Tensor {
        &self.embed
    }

    /// Multiplier applied to embedding rows to form `hidden.0` (1.0 unless gemma), rounded to the model dtype.
    pub fn embedding_scale(&self) -> f64 {
        match self.cfg.embedding_scale {
            None => 1.0,
            Some(s) => match self.dtype {
                DType::BF16 => half::bf16::from_f64(s).to_f64(),
                DType::F16 => half::f16::from_f64(s).to_f64(),
                _ => s as f32 as f64,
            },
        }
    }

    /// `hidden.0` for token ids `[B, T]` (u32): the scaled embedding rows, in the model dtype.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        self.embed_unchecked(input_ids).map_err(cerr("embedding"))
    }

    fn embed_unchecked(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let flat = input_ids.flatten_all()?;
        let e = self.embed.index_select(&flat, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        let s = self.embedding_scale();
        if s == 1.0 {
            Ok(e)
        } else {
            e.affine(s, 0.0)
        }
    }

    /// Validate `[B, T]` u32 ids against the vocabulary; returns `(B, T)` and the ids on the host.
    fn check_ids(&self, input_ids: &Tensor) -> Result<HostIds> {
        let (b, t) = input_ids
            .dims2()
            .map_err(|_| RuntimeError::Invalid(format!("input_ids: expected shape [B, T], found {:?}", input_ids.dims())))?;
        if b == 0 || t == 0 {
            return Err(RuntimeError::Invalid(format!("input_ids: empty shape [{b}, {t}]")));
        }
        if input_ids.dtype() != DType::U32 {
            return Err(RuntimeError::Invalid(format!("input_ids: expected u32, found {:?}", input_ids.dtype())));
        }
        let rows = input_ids.to_vec2::<u32>().map_err(cerr("input_ids"))?;
        for (i, row) in rows.iter().enumerate() {
            if let Some((j, id)) = row.iter().enumerate().find(|(_, &id)| id as usize >= self.cfg.vocab_size) {
                return Err(RuntimeError::Invalid(format!(
                    "input_ids[{i}][{j}] = {id} is outside the vocabulary (size {})",
                    self.cfg.vocab_size
                )));
            }
        }
        Ok(((b, t), rows))
    }

    /// Read an attention mask `[B, T]` of 0/1 (any numeric dtype) into host booleans; `None` means all ones.
    fn mask_rows(&self, mask: Option<&Tensor>, b: usize, t: usize) -> Result<Vec<Vec<bool>>> {
        let Some(m) = mask else { return Ok(vec![vec![true; t]; b]) };
        if m.dims() != [b, t] {
            return Err(RuntimeError::Invalid(format!("attention_mask: shape {:?} does not match input [{b}, {t}]", m.dims())));
        }
        let v = m.to_dtype(DType::F64).and_then(|m| m.to_vec2::<f64>()).map_err(cerr("attention_mask"))?;
        v.into_iter()
            .enumerate()
            .map(|(i, row)| {
                row.into_iter()
                    .enumerate()
                    .map(|(j, x)| match x {
                        0.0 => Ok(false),
                        1.0 => Ok(true),
                        x => Err(RuntimeError::Invalid(format!("attention_mask[{i}][{j}] = {x}: expected 0 or 1"))),
                    })
                    .collect()
            })
            .collect()
    }

    /// Logits (and optionally hidden states) for every position of `[B, T]` u32 token ids.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, opts: &ForwardOptions) -> Result<ForwardOutput> {
        let ((b, t), _) = self.check_ids(input_ids)?;
        let valid = self.mask_rows(attention_mask, b, t)?;
        let x = self.embed_unchecked(input_ids).map_err(cerr("embedding"))?;
        self.run(x, &valid, None, opts, false).map_err(cerr("forward"))
    }

    /// Like [`forward`](Self::forward) but from `[B, T, D]` input embeddings, already scaled like `hidden.0`.
    /// With `differentiable: true`, gradients flow back to `embeds`.
    pub fn forward_embeds(&self, embeds: &Tensor, attention_mask: Option<&Tensor>, opts: &ForwardOptions) -> Result<ForwardOutput> {
        let (b, t, d) = embeds
            .dims3()
            .map_err(|_| RuntimeError::Invalid(format!("embeds: expected shape [B, T, D], found {:?}", embeds.dims())))?;
        if d != self.cfg.hidden_size || b == 0 || t == 0 {
            return Err(RuntimeError::Invalid(format!("embeds: shape [{b}, {t}, {d}], expected D = {}", self.cfg.hidden_size)));
        }
        let valid = self.mask_rows(attention_mask, b, t)?;
        let x = embeds.to_device(&self.device).and_then(|x| x.to_dtype(self.dtype)).map_err(cerr("embeds"))?;
        self.run(x, &valid, None, opts, false).map_err(cerr("forward"))
    }

    /// A fresh, empty KV cache for [`forward_with_cache`](Self::forward_with_cache).
    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: vec![None; self.layers.len()], key_valid: vec![], key_pos: vec![] }
    }

    /// Incremental forward: the new tokens attend to everything in `cache` and are appended to it. Positions
    /// continue per row from the number of real tokens already cached. Returns logits for the new positions only.
    pub fn forward_with_cache(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let ((b, t), _) = self.check_ids(input_ids)?;
        if cache.batch() != 0 && cache.batch() != b {
            return Err(RuntimeError::Invalid(format!("input_ids: batch {b} does not match the cache's {}", cache.batch())));
        }
        let valid = self.mask_rows(attention_mask, b, t)?;
        let x = self.embed_unchecked(input_ids).map_err(cerr("embedding"))?;
        self.run(x, &valid, Some(cache), opts, false).map_err(cerr("forward"))
    }

    /// Generation's step: like `forward_with_cache` but computing logits for the last position only.
    pub(crate) fn step_last(&self, input_ids: &Tensor, valid: &[Vec<bool>], cache: &mut KvCache) -> Result<Tensor> {
        let x = self.embed_unchecked(input_ids).map_err(cerr("embedding"))?;
        let out = self.run(x, valid, Some(cache), &ForwardOptions::default(), true).map_err(cerr("generation step"))?;
        Ok(out.logits)
    }

    /// The forward pass proper. `x` is `[B, T, D]` in the model dtype; `valid[b][t]` says which new positions are
    /// real tokens.
    fn run(
        &self,
        x: Tensor,
        valid: &[Vec<bool>],
        mut cache: Option<&mut KvCache>,
        opts: &ForwardOptions,
        last_only: bool,
    ) -> candle_core::Result<ForwardOutput> {
        let (b, t, _) = x.dims3()?;
        let diff = opts.differentiable;

        // Keys seen by the new queries: cached ones, then the new ones.
        let empty = KvCache { layers: vec![], key_valid: vec![vec![]; b], key_pos: vec![vec![]; b] };
        let (past_valid, past_pos) = match cache.as_deref() {
            Some(c) if c.batch() == b => (&c.key_valid, &c.key_pos),
            _ => (&empty.key_valid, &empty.key_pos),
        };
        let past = past_valid.first().map_or(0, Vec::len);
        let mut key_valid: Vec<Vec<bool>> = Vec::with_capacity(b);
        let mut key_pos: Vec<Vec<usize>> = Vec::with_capacity(b);
        for row in 0..b {
            let mut kv = past_valid[row].clone();
            let mut kp = past_pos[row].clone();
            let mut seen = kv.iter().filter(|&&v| v).count();
            for &v in &valid[row] {
                if v {
                    seen += 1;
                }
                kv.push(v);
                kp.push(seen.saturating_sub(1));
            }
            key_valid.push(kv);
            key_pos.push(kp);
        }
        let tk = past + t;

        // Rotary tables per distinct rope kind, `[B, T, hd/2]`.
        let half = self.cfg.head_dim / 2;
        let tables: Vec<RopeTables> = self
            .ropes
            .iter()
            .map(|rope| {
                let inv = rope.inv_freq(self.cfg.head_dim);
                let mut cos = Vec::with_capacity(b * t * half);
                let mut sin = Vec::with_capacity(b * t * half);
                for row in key_pos.iter() {
                    for &p in &row[past..] {
                        for f in &inv {
                            let a = p as f64 * f;
                            cos.push(a.cos() as f32);
                            sin.push(a.sin() as f32);
                        }
                    }
                }
                let cos = Tensor::from_vec(cos, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
                let sin = Tensor::from_vec(sin, (b, t, half), &self.device)?.to_dtype(self.dtype)?;
                Ok(RopeTables { cos, sin })
            })
            .collect::<candle_core::Result<_>>()?;

        // Additive masks `[B, 1, T, Tk]` (f32) per distinct attention kind.
        let masks: Vec<Tensor> = self
            .masks
            .iter()
            .map(|kind| {
                let mut m = vec![0f32; b * t * tk];
                for row in 0..b {
                    for q in 0..t {
                        let qi = past + q;
                        let qp = key_pos[row][qi];
                        for k in 0..tk {
                            let ok = k == qi
                                || (key_valid[row][k]
                                    && k <= qi
                                    && match kind {
                                        AttentionKind::Full => true,
                                        AttentionKind::Sliding { window } => qp.saturating_sub(key_pos[row][k]) < *window,
                                    });
                            if !ok {
                                m[(row * t + q) * tk + k] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                Tensor::from_vec(m, (b, 1, t, tk), &self.device)
            })
            .collect::<candle_core::Result<_>>()?;

        let mut hidden = Vec::new();
        let keep_hidden = opts.hidden_states;
        if keep_hidden {
            hidden.push(x.to_dtype(DType::F32)?);
        }
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = self.layer_forward(layer, &x, &tables[layer.rope_idx], &masks[layer.mask_idx], layer_cache, diff)?;
            if keep_hidden && i + 1 < self.layers.len() {
                hidden.push(x.to_dtype(DType::F32)?);
            }
        }
        let x = self.norm.forward(&x, diff)?;
        if keep_hidden {
            hidden.push(x.to_dtype(DType::F32)?);
        }
        let selection = if last_only { Logits::Last } else { opts.logits };
        let logits = match selection {
            Logits::All => self.unembed_inner(&x)?,
            Logits::Last => self.unembed_inner(&x.narrow(1, t - 1, 1)?)?,
            Logits::None => Tensor::zeros((b, 0, self.cfg.vocab_size), DType::F32, &self.device)?,
        };
        if let Some(c) = cache {
            c.key_valid = key_valid;
            c.key_pos = key_pos;
        }
        Ok(ForwardOutput { logits, hidden })
    }

    /// Logits `[B, T, V]` f32 for final hidden states `[B, T, D]` (the output of the final norm, `hidden.L`):
    /// the unembedding plus final soft-capping, exactly as [`forward`](Self::forward) applies them. Differentiable.
    pub fn unembed(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden.to_dtype(self.dtype).map_err(cerr("unembed"))?;
        self.unembed_inner(&h).map_err(cerr("unembed"))
    }

    fn unembed_inner(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (bb, tt, d) = x.dims3()?;
        let logits = x.reshape((bb * tt, d))?.matmul(&self.lm_head.t()?)?.reshape((bb, tt, self.cfg.vocab_size))?;
        let mut logits = logits.to_dtype(DType::F32)?;
        if let Some(c) = self.cfg.final_logit_softcapping {
            logits = ((logits / c)?.tanh()? * c)?;
        }
        Ok(logits)
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: &RopeTables,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        diff: bool,
    ) -> candle_core::Result<Tensor> {
        let h = layer.input_norm.forward(x, diff)?;
        let h = self.attention(&layer.attn, &h, rope, mask, cache, diff)?;
        match &layer.sandwich {
            Some((pre_ff, post_ff)) => {
                let h = layer.post_attn_norm.forward(&h, diff)?;
                let x = (x + h)?;
                let h = pre_ff.forward(&x, diff)?;
                let h = layer.mlp.forward(&h)?;
                let h = post_ff.forward(&h, diff)?;
                x + h
            }
            None => {
                let x = (x + h)?;
                let h = layer.post_attn_norm.forward(&x, diff)?;
                let h = layer.mlp.forward(&h)?;
                x + h
            }
        }
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        rope: &RopeTables,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        diff: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = a.head_dim;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
        let mut q = heads(a.q.forward(x)?, a.n_heads)?;
        let mut k = heads(a.k.forward(x)?, a.n_kv)?;
        let v = heads(a.v.forward(x)?, a.n_kv)?;
        if let Some(n) = &a.q_norm {
            q = n.forward(&q, diff)?;
        }
        if let Some(n) = &a.k_norm {
            k = n.forward(&k, diff)?;
        }
        let q = apply_rope(&q, rope, diff)?;
        let k = apply_rope(&k, rope, diff)?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let tk = k.dim(2)?;
        let groups = a.n_heads / a.n_kv;
        // Grouped-query attention: query head h uses key/value head h / groups (transformers' repeat_kv), so the
        // queries of one key/value head can be stacked along the time axis instead of repeating keys.
        let qg = q.reshape((b, a.n_kv, groups * t, hd))?;
        let scores = qg.matmul(&k.t()?)?.reshape((b, a.n_heads, t, tk))?;
        let mut scores = (scores.to_dtype(DType::F32)? * a.scale)?;
        if let Some(c) = a.softcap {
            scores = ((scores / c)?.tanh()? * c)?;
        }
        let scores = scores.broadcast_add(mask)?;
        let probs = if diff { candle_nn::ops::softmax(&scores, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(&scores)? };
        let probs = probs.to_dtype(x.dtype())?.reshape((b, a.n_kv, groups * t, tk))?;
        let out = probs.matmul(&v.contiguous()?)?.reshape((b, a.n_heads, t, hd))?;
        let out = out.transpose(1, 2)?.reshape((b, t, a.n_heads * hd))?;
        a.o.forward(&out)
    }
}

/// Rotary embedding, rotate-half convention. `x` is `[B, H, T, hd]`; tables are `[B, T, hd/2]`.
fn apply_rope(x: &Tensor, rope: &RopeTables, diff: bool) -> candle_core::Result<Tensor> {
    if !diff {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, &rope.cos, &rope.sin);
    }
    let cos = Tensor::cat(&[&rope.cos, &rope.cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[&rope.sin, &rope.sin], D::Minus1)?.unsqueeze(1)?;
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?
}

/// candle errors may span lines (backtraces); the CLI contract is one line.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").trim().to_string()
}
