//! Model configuration, parsed from `config.json` the way real files write it.
//!
//! One [`ModelConfig`] describes every decoder family the runtime supports (llama, mistral, qwen2, qwen3, gemma3).
//! The family only decides *defaults and switches* (biases, q/k norm, norm style, activation, sliding layers, rope
//! per layer); the decoder itself is one implementation driven by these switches, so a new family is a new parser
//! arm here, not a new model file.
//!
//! Real configs come in two rope dialects: the older `rope_theta` + `rope_scaling` (+ gemma's `rope_local_base_freq`)
//! and transformers 5's `rope_parameters` (flat for most families, keyed by layer type for gemma3). Both are accepted.
//! Anything the runtime cannot honour exactly (an unknown architecture, an unsupported rope type, logit soft-capping
//! on a family we do not implement it for) is rejected by name rather than approximated: a gate that silently runs a
//! slightly different model would compare the wrong thing.

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Errors while reading or interpreting a model configuration. Every message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: unsupported architecture `{name}` (supported: llama, mistral, qwen2, qwen3, gemma3_text)")]
    UnknownArchitecture { path: PathBuf, name: String },
    #[error("{path}: field `{field}` is missing")]
    Missing { path: PathBuf, field: String },
    #[error("{path}: field `{field}` is invalid: {reason}")]
    Invalid { path: PathBuf, field: String, reason: String },
}

/// The decoder families the runtime implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Architecture {
    /// Parse a `model_type` (preferred) or an `architectures[0]` class name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" | "LlamaForCausalLM" => Self::Llama,
            "mistral" | "MistralForCausalLM" => Self::Mistral,
            "qwen2" | "Qwen2ForCausalLM" => Self::Qwen2,
            "qwen3" | "Qwen3ForCausalLM" => Self::Qwen3,
            "gemma3_text" | "Gemma3ForCausalLM" => Self::Gemma3,
            _ => return None,
        })
    }

    /// The `model_type` transformers writes for this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3_text",
        }
    }

    /// The transformers class name for `architectures`.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU-gated MLP (llama, mistral, qwen).
    Silu,
    /// tanh-approximated GELU (`gelu_pytorch_tanh`, gemma).
    GeluTanh,
}

/// How RMSNorm applies its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormStyle {
    /// `x * w` (llama and most families).
    Weight,
    /// `x * (1 + w)`, computed in f32 (gemma).
    OnePlusWeight,
}

/// Rotary-embedding frequency scaling.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain `theta^(-2i/d)` frequencies.
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3's piecewise scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// Rotary embedding of one layer type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Inverse frequencies for a head of `head_dim` (rotate-half convention, `head_dim / 2` values), following
    /// transformers' `ROPE_INIT_FUNCTIONS` exactly so parity holds at every position.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let half = head_dim / 2;
        let base: Vec<f64> = (0..half).map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64)).collect();
        match &self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_freq_wavelen {
                            f / factor
                        } else if wavelen < high_freq_wavelen {
                            f
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Which tokens a layer attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttentionKind {
    /// Causal attention over the whole prefix.
    Full,
    /// Causal attention over the last `window` positions, the current one included (key j is visible from query i
    /// when `i - window < j <= i`, as transformers' sliding-window mask).
    Sliding { window: usize },
}

/// Per-layer settings that differ between layers (gemma3 interleaves sliding and full layers with two rope bases).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerSpec {
    pub attention: AttentionKind,
    pub rope: Rope,
}

/// Everything the decoder needs to know about a model, whatever file it came from (config.json or GGUF metadata).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (qwen2; llama/mistral with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (llama's `attention_bias` covers o_proj too; qwen2's does not exist).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// RMSNorm on each head's q and k before rope (qwen3, gemma3).
    pub qk_norm: bool,
    pub norm_style: NormStyle,
    /// Gemma's four norms per layer (pre/post attention, pre/post feed-forward).
    pub sandwich_norms: bool,
    /// Multiplier applied to token embeddings (gemma: sqrt(hidden_size), rounded to the model dtype).
    pub embedding_scale: Option<f64>,
    /// Attention scores are multiplied by this (default `head_dim^-0.5`; gemma: `query_pre_attn_scalar^-0.5`).
    pub attention_scale: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub layers: Vec<LayerSpec>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// A typed view of a JSON object that produces errors naming the file and field.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), field: field.to_string(), reason: reason.into() }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {v}"))),
        }
    }

    fn usize(&self, field: &str) -> Result<usize, ConfigError> {
        self.usize_opt(field)?
            .ok_or_else(|| ConfigError::Missing { path: self.path.to_path_buf(), field: field.to_string() })
    }

    fn positive(&self, field: &str) -> Result<usize, ConfigError> {
        let n = self.usize(field)?;
        if n == 0 {
            return Err(self.err(field, "must be positive"));
        }
        Ok(n)
    }

    fn f64_opt(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a finite number, found {v}"))),
        }
    }

    fn bool_opt(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(field, format!("expected true/false, found {v}"))),
        }
    }

    fn str_opt(&self, field: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(field, format!("expected a string, found {v}"))),
        }
    }

    /// Token ids may be written as one integer or a list (`eos_token_id: [1, 106]`).
    fn token_ids(&self, field: &str) -> Result<Vec<u32>, ConfigError> {
        let one = |v: &Value| {
            v.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32).ok_or_else(|| self.err(field, format!("expected a token id, found {v}")))
        };
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

impl ModelConfig {
    /// Read and interpret a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|source| ConfigError::Json { path: path.to_path_buf(), source })?;
        Self::from_json(&value, path)
    }

    /// Interpret an already-parsed `config.json`; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ConfigError> {
        let map = value.as_object().ok_or_else(|| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "(root)".into(),
            reason: "expected a JSON object".into(),
        })?;
        let f = Fields { path, map };

        let model_type = f.str_opt("model_type")?;
        let class = map.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(|v| v.as_str());
        let name = model_type.or(class).ok_or_else(|| ConfigError::Missing { path: path.to_path_buf(), field: "model_type".into() })?;
        let architecture = Architecture::from_name(name)
            .ok_or_else(|| ConfigError::UnknownArchitecture { path: path.to_path_buf(), name: name.to_string() })?;
        // A class name that disagrees with model_type means someone edited one of them: refuse rather than guess.
        if let (Some(mt), Some(cls)) = (model_type, class) {
            match Architecture::from_name(cls) {
                Some(a) if a == architecture => {}
                _ => {
                    return Err(ConfigError::UnknownArchitecture {
                        path: path.to_path_buf(),
                        name: format!("{cls} (model_type `{mt}`)"),
                    })
                }
            }
        }

        let hidden_size = f.positive("hidden_size")?;
        let num_attention_heads = f.positive("num_attention_heads")?;
        let num_key_value_heads = f.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.err("head_dim", "absent and hidden_size is not divisible by num_attention_heads"));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err("head_dim", format!("{head_dim} must be positive and even for rotary embeddings")));
        }
        let num_hidden_layers = f.positive("num_hidden_layers")?;
        let is_gemma = architecture == Architecture::Gemma3;

        let rms_norm_eps = f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
        let activation_name = f.str_opt("hidden_activation")?.or(f.str_opt("hidden_act")?).unwrap_or(if is_gemma {
            "gelu_pytorch_tanh"
        } else {
            "silu"
        });
        let activation = match activation_name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluTanh,
            other => return Err(f.err("hidden_act", format!("unsupported activation `{other}`"))),
        };

        let attention_bias = f.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            // Qwen2 always has q/k/v bias and never an o_proj bias; its config has no attention_bias field.
            Architecture::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };

        let layers = parse_layers(&f, architecture, num_hidden_layers)?;

        let query_pre_attn_scalar = f.f64_opt("query_pre_attn_scalar")?;
        let attention_scale = match (is_gemma, query_pre_attn_scalar) {
            (true, Some(s)) if s > 0.0 => s.powf(-0.5),
            (true, Some(_)) => return Err(f.err("query_pre_attn_scalar", "must be positive")),
            _ => (head_dim as f64).powf(-0.5),
        };
        let attn_logit_softcapping = f.f64_opt("attn_logit_softcapping")?;
        let final_logit_softcapping = f.f64_opt("final_logit_softcapping")?;

        let bos = f.token_ids("bos_token_id")?;
        let pad = f.token_ids("pad_token_id")?;
        let cfg = ModelConfig {
            architecture,
            vocab_size: f.positive("vocab_size")?,
            hidden_size,
            intermediate_size: f.positive("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(is_gemma),
            qkv_bias,
            o_bias,
            mlp_bias: f.bool_opt("mlp_bias")?.unwrap_or(false),
            activation,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            norm_style: if is_gemma { NormStyle::OnePlusWeight } else { NormStyle::Weight },
            sandwich_norms: is_gemma,
            // transformers keeps the scale as a tensor in the model dtype: round it like f32 does.
            embedding_scale: is_gemma.then(|| (hidden_size as f64).sqrt() as f32 as f64),
            attention_scale,
            attn_logit_softcapping,
            final_logit_softcapping,
            layers,
            bos_token_id: bos.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: pad.first().copied(),
        };
        cfg.validate().map_err(|(field, reason)| f.err(field, reason))?;
        Ok(cfg)
    }

    /// Internal consistency checks shared by every source (config.json and GGUF metadata).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.layers.len() != self.num_hidden_layers {
            return Err(("layer_types", format!("{} entries for {} layers", self.layers.len(), self.num_hidden_layers)));
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(("num_key_value_heads", "must divide num_attention_heads".into()));
        }
        for (field, v) in [("attn_logit_softcapping", self.attn_logit_softcapping), ("final_logit_softcapping", self.final_logit_softcapping)] {
            if matches!(v, Some(c) if c <= 0.0) {
                return Err((field, "must be positive".into()));
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            if let AttentionKind::Sliding { window: 0 } = l.attention {
                return Err(("sliding_window", format!("layer {i}: window must be positive")));
            }
            // NaN is not positive either.
            if l.rope.theta.is_nan() || l.rope.theta <= 0.0 {
                return Err(("rope_theta", format!("layer {i}: must be positive")));
            }
        }
        Ok(())
    }

    /// Number of query heads per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Serialise back to a `config.json` that transformers loads (used when the zoo writes models and when a GGUF is
    /// exported as an HF folder). Written in transformers 5's `rope_parameters` dialect.
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architectures".into(), Value::from(vec![self.architecture.class_name()]));
        m.insert("model_type".into(), self.architecture.model_type().into());
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("hidden_size".into(), self.hidden_size.into());
        m.insert("intermediate_size".into(), self.intermediate_size.into());
        m.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        m.insert("num_attention_heads".into(), self.num_attention_heads.into());
        m.insert("num_key_value_heads".into(), self.num_key_value_heads.into());
        m.insert("head_dim".into(), self.head_dim.into());
        m.insert("rms_norm_eps".into(), self.rms_norm_eps.into());
        m.insert("max_position_embeddings".into(), self.max_position_embeddings.into());
        m.insert("tie_word_embeddings".into(), self.tie_word_embeddings.into());
        m.insert("torch_dtype".into(), "float32".into());
        let act = match self.activation {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        };
        if self.architecture == Architecture::Gemma3 {
            m.insert("hidden_activation".into(), act.into());
            m.insert("query_pre_attn_scalar".into(), (self.attention_scale.powi(-2)).round().into());
        } else {
            m.insert("hidden_act".into(), act.into());
        }
        if matches!(self.architecture, Architecture::Llama | Architecture::Mistral | Architecture::Qwen3 | Architecture::Gemma3) {
            m.insert("attention_bias".into(), self.qkv_bias.into());
        }
        if self.architecture == Architecture::Llama {
            m.insert("mlp_bias".into(), self.mlp_bias.into());
        }
        m.insert("attn_logit_softcapping".into(), self.attn_logit_softcapping.into());
        m.insert("final_logit_softcapping".into(), self.final_logit_softcapping.into());
        let rope_json = |r: &Rope| {
            let mut p = Map::new();
            p.insert("rope_theta".into(), r.theta.into());
            match &r.scaling {
                RopeScaling::None => {
                    p.insert("rope_type".into(), "default".into());
                }
                RopeScaling::Linear { factor } => {
                    p.insert("rope_type".into(), "linear".into());
                    p.insert("factor".into(), (*factor).into());
                }
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                    p.insert("rope_type".into(), "llama3".into());
                    p.insert("factor".into(), (*factor).into());
                    p.insert("low_freq_factor".into(), (*low_freq_factor).into());
                    p.insert("high_freq_factor".into(), (*high_freq_factor).into());
                    p.insert("original_max_position_embeddings".into(), (*original_max_position_embeddings).into());
                }
            }
            Value::Object(p)
        };
        let window = self.layers.iter().find_map(|l| match l.attention {
            AttentionKind::Sliding { window } => Some(window),
            AttentionKind::Full => None,
        });
        m.insert("sliding_window".into(), window.into());
        if self.architecture == Architecture::Gemma3 {
            let types: Vec<Value> = self
                .layers
                .iter()
                .map(|l| match l.attention {
                    AttentionKind::Full => "full_attention".into(),
                    AttentionKind::Sliding { .. } => "sliding_attention".into(),
                })
                .collect();
            m.insert("layer_types".into(), Value::Array(types));
            let mut rp = Map::new();
            if let Some(l) = self.layers.iter().find(|l| l.attention == AttentionKind::Full) {
                rp.insert("full_attention".into(), rope_json(&l.rope));
            }
            if let Some(l) = self.layers.iter().find(|l| l.attention != AttentionKind::Full) {
                rp.insert("sliding_attention".into(), rope_json(&l.rope));
            }
            m.insert("rope_parameters".into(), Value::Object(rp));
        } else {
            m.insert("rope_parameters".into(), rope_json(&self.layers[0].rope));
            if self.architecture == Architecture::Qwen2 || self.architecture == Architecture::Qwen3 {
                m.insert("use_sliding_window".into(), window.is_some().into());
            }
        }
        m.insert("bos_token_id".into(), self.bos_token_id.into());
        m.insert(
            "eos_token_id".into(),
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => (*one).into(),
                many => many.to_vec().into(),
            },
        );
        m.insert("pad_token_id".into(), self.pad_token_id.into());
        Value::Object(m)
    }
}

/// Parse one rope parameter object (either a `rope_parameters` entry or the legacy `rope_scaling` + `theta`).
fn parse_rope(f: &Fields, field: &str, obj: Option<&Map<String, Value>>, theta: Option<f64>) -> Result<Rope, ConfigError> {
    let get_f = |k: &str| -> Result<Option<f64>, ConfigError> {
        match obj.and_then(|o| o.get(k)).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| f.err(&format!("{field}.{k}"), format!("expected a number, found {v}"))),
        }
    };
    let theta = get_f("rope_theta")?.or(theta).ok_or_else(|| ConfigError::Missing { path: f.path.to_path_buf(), field: format!("{field}.rope_theta") })?;
    let rope_type = obj
        .and_then(|o| o.get("rope_type").or_else(|| o.get("type")))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let need = |k: &str| -> Result<f64, ConfigError> {
        get_f(k)?.ok_or_else(|| ConfigError::Missing { path: f.path.to_path_buf(), field: format!("{field}.{k}") })
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => return Err(f.err(&format!("{field}.rope_type"), format!("unsupported rope type `{other}`"))),
    };
    if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = &scaling {
        if high_freq_factor <= low_freq_factor {
            return Err(f.err(&format!("{field}.high_freq_factor"), "must exceed low_freq_factor"));
        }
    }
    Ok(Rope { theta, scaling })
}

/// Work out attention kind and rope for every layer from whichever dialect the file uses.
fn parse_layers(f: &Fields, arch: Architecture, n_layers: usize) -> Result<Vec<LayerSpec>, ConfigError> {
    let sliding_window = f.usize_opt("sliding_window")?;
    let rope_params = f.get("rope_parameters").map(|v| v.as_object().ok_or_else(|| f.err("rope_parameters", "expected an object"))).transpose()?;
    let legacy_scaling = f.get("rope_scaling").map(|v| v.as_object().ok_or_else(|| f.err("rope_scaling", "expected an object"))).transpose()?;
    let legacy_theta = f.f64_opt("rope_theta")?;

    // Layer types: explicit list (transformers ≥ 4.5x), else gemma's pattern, else every layer the same.
    let explicit: Option<Vec<bool>> = match f.get("layer_types") {
        None => None,
        Some(Value::Array(items)) => {
            if items.len() != n_layers {
                return Err(f.err("layer_types", format!("{} entries for {} layers", items.len(), n_layers)));
            }
            Some(
                items
                    .iter()
                    .map(|v| match v.as_str() {
                        Some("full_attention") => Ok(false),
                        Some("sliding_attention") => Ok(true),
                        _ => Err(f.err("layer_types", format!("unsupported layer type {v}"))),
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(v) => return Err(f.err("layer_types", format!("expected a list, found {v}"))),
    };
    let sliding: Vec<bool> = match arch {
        Arch::Gemma3 => match explicit {
            Some(e) => e,
            None => {
                let pattern = f.usize_opt("sliding_window_pattern")?.or(f.usize_opt("_sliding_window_pattern")?).unwrap_or(6);
                if pattern == 0 {
                    return Err(f.err("sliding_window_pattern", "must be positive"));
                }
                (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
            }
        },
        Arch::Mistral => vec![sliding_window.is_some(); n_layers],
        Arch::Qwen2 | Arch::Qwen3 => {
            let use_sw = f.bool_opt("use_sliding_window")?.unwrap_or(false);
            match explicit {
                Some(e) if use_sw => e,
                _ if use_sw => {
                    // Qwen: layers from max_window_layers on use the sliding window.
                    let mwl = f.usize_opt("max_window_layers")?.unwrap_or(n_layers);
                    (0..n_layers).map(|i| i >= mwl).collect()
                }
                _ => vec![false; n_layers],
            }
        }
        Arch::Llama => match explicit {
            Some(e) => e,
            None => vec![false; n_layers],
        },
    };
    if sliding.iter().any(|&s| s) && sliding_window.is_none() {
        return Err(ConfigError::Missing { path: f.path.to_path_buf(), field: "sliding_window".into() });
    }

    // Rope per layer type.
    let (full_rope, sliding_rope) = match (arch, rope_params) {
        (Arch::Gemma3, Some(rp)) if rp.contains_key("full_attention") || rp.contains_key("sliding_attention") => {
            let sub = |k: &str| -> Result<Rope, ConfigError> {
                let o = rp.get(k).and_then(|v| v.as_object()).ok_or_else(|| ConfigError::Missing { path: f.path.to_path_buf(), field: format!("rope_parameters.{k}") })?;
                parse_rope(f, &format!("rope_parameters.{k}"), Some(o), None)
            };
            let full = sub("full_attention")?;
            let slide = if sliding.iter().any(|&s| s) { sub("sliding_attention")? } else { full.clone() };
            (full, slide)
        }
        (_, Some(rp)) => {
            let r = parse_rope(f, "rope_parameters", Some(rp), legacy_theta)?;
            let local = match f.f64_opt("rope_local_base_freq")? {
                Some(t) => Rope { theta: t, scaling: RopeScaling::None },
                None => r.clone(),
            };
            let other = if arch == Arch::Gemma3 { local } else { r.clone() };
            (r, other)
        }
        (_, None) => {
            let theta = legacy_theta.unwrap_or(if arch == Arch::Gemma3 { 1_000_000.0 } else { 10_000.0 });
            let full = parse_rope(f, "rope_scaling", legacy_scaling, Some(theta))?;
            let slide = if arch == Arch::Gemma3 {
                // Gemma 3's local layers use their own base and no scaling.
                Rope { theta: f.f64_opt("rope_local_base_freq")?.unwrap_or(10_000.0), scaling: RopeScaling::None }
            } else {
                full.clone()
            };
            (full, slide)
        }
    };

    Ok(sliding
        .into_iter()
        .map(|s| match s {
            true => LayerSpec { attention: AttentionKind::Sliding { window: sliding_window.unwrap_or(0) }, rope: sliding_rope.clone() },
            false => LayerSpec { attention: AttentionKind::Full, rope: full_rope.clone() },
        })
        .collect())
}

use Architecture as Arch;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig, ConfigError> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn base() -> Value {
        json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "rope_theta": 10000.0})
    }

    #[test]
    fn legacy_and_new_rope_dialects_agree() {
        let mut new = base();
        new.as_object_mut().unwrap().remove("rope_theta");
        new["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut old = base();
        old["rope_theta"] = json!(500000.0);
        old["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        assert_eq!(parse(new).unwrap(), parse(old).unwrap());
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut v = base();
        v["model_type"] = json!("falcon");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("falcon") && e.contains("config.json"), "{e}");
    }

    #[test]
    fn mismatched_class_and_model_type_is_refused() {
        let mut v = base();
        v["architectures"] = json!(["GPTNeoXForCausalLM"]);
        assert!(parse(v).unwrap_err().to_string().contains("GPTNeoXForCausalLM"));
    }

    #[test]
    fn missing_and_wrong_typed_fields_are_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(v).unwrap_err().to_string().contains("hidden_size"));
        let mut v = base();
        v["num_attention_heads"] = json!("four");
        assert!(parse(v).unwrap_err().to_string().contains("num_attention_heads"));
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(parse(v).unwrap_err().to_string().contains("num_key_value_heads"));
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(parse(v).unwrap_err().to_string().contains("yarn"));
    }

    #[test]
    fn gemma_legacy_layout_uses_pattern_and_two_bases() {
        let v = json!({"model_type": "gemma3_text", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
            "sliding_window_pattern": 6, "query_pre_attn_scalar": 256});
        let c = parse(v).unwrap();
        assert_eq!(c.layers[5].attention, AttentionKind::Full);
        assert_eq!(c.layers[0].attention, AttentionKind::Sliding { window: 512 });
        assert_eq!(c.layers[5].rope.theta, 1_000_000.0);
        assert_eq!(c.layers[0].rope.theta, 10_000.0);
        assert!((c.attention_scale - 1.0 / 16.0).abs() < 1e-12);
        assert!(c.tie_word_embeddings && c.qk_norm && c.sandwich_norms);
    }

    #[test]
    fn hf_json_round_trips() {
        for v in [base(), json!({"model_type": "gemma3_text", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "layer_types": ["sliding_attention","sliding_attention","sliding_attention","full_attention"],
            "sliding_window": 8, "query_pre_attn_scalar": 32,
            "rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}})] {
            let c = parse(v).unwrap();
            let again = parse(c.to_hf_json()).unwrap();
            assert_eq!(c, again);
        }
    }
}
