//! PEFT LoRA adapters: parse `adapter_config.json` + `adapter_model.safetensors`, check them against a base, merge.
//!
//! What PEFT writes: `adapter_config.json` (r, lora_alpha, target_modules, use_rslora, fan_in_fan_out,
//! rank_pattern/alpha_pattern, layers_to_transform, modules_to_save, …) and tensors named
//! `base_model.model.<module>.lora_A.weight` `[r, in]` / `.lora_B.weight` `[out, r]` for linear layers,
//! `.lora_embedding_A` `[r, vocab]` / `.lora_embedding_B` `[dim, r]` for embeddings, and full copies of
//! `modules_to_save` as `base_model.model.<module>.weight`.
//!
//! Merging follows PEFT's `merge()`: `W += scale · B·A` (embeddings: `W += scale · (B·A)ᵀ`), with
//! `scale = alpha / r` or `alpha / √r` under rsLoRA, `r` and `alpha` overridden per module by the first matching
//! `rank_pattern` / `alpha_pattern` key (PEFT's `get_pattern_key`: `(.*\.)?(key)$`). PEFT forces `fan_in_fan_out`
//! off for `nn.Linear` (every module of our families) and so do we, with a warning recorded.
//!
//! What we refuse, by name, rather than merge something PEFT would compute differently: DoRA, LoRA biases, bias
//! modes other than "none", activated LoRA (invocation tokens), QALoRA, parameter targeting, layer replication,
//! trainable tokens, other LoRA variants; tensors for modules the config does not target (PEFT would silently drop
//! them — a mismatch worth a human look); A without B; ranks that disagree with the config; shapes that do not fit
//! the base; modules the base lacks; LoRA on the LM head or embeddings of a model with tied embeddings. PEFT's
//! `auto_mapping` names PEFT's base class (not remote code) and is only reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use regex::Regex;
use serde_json::{Map, Value};

use super::decoder::one_line;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Errors reading or applying an adapter; each names the file and the field or tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: field `{field}`: {reason}")]
    Field { path: PathBuf, field: String, reason: String },
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor { path: PathBuf, tensor: String, reason: String },
}

/// Which modules an adapter targets.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum TargetModules {
    /// Names matched exactly or as a dotted suffix (`q_proj` matches `model.layers.0.self_attn.q_proj`).
    List(Vec<String>),
    /// A regular expression that must match the whole module name.
    Regex(String),
    /// PEFT's `all-linear`: every linear layer except the output head.
    AllLinear,
}

/// The parsed `adapter_config.json` (fields we honour; unknown fields are tolerated).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: TargetModules,
    pub exclude_modules: Option<TargetModules>,
    pub use_rslora: bool,
    /// As written in the file; PEFT (and we) treat it as false for `nn.Linear`.
    pub fan_in_fan_out: bool,
    /// Ordered as in the file: the first matching key wins.
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub layers_pattern: Vec<String>,
    pub modules_to_save: Vec<String>,
    pub base_model_name_or_path: Option<String>,
    /// `auto_mapping.base_model_class`: PEFT's record of the base class (informational).
    pub base_model_class: Option<String>,
    pub peft_version: Option<String>,
    /// Things PEFT would warn about.
    pub warnings: Vec<String>,
    #[serde(skip)]
    compiled: Compiled,
}

#[derive(Debug, Clone, Default)]
struct Compiled {
    target: Option<Regex>,
    exclude: Option<Regex>,
    rank: Vec<(Regex, usize)>,
    alpha: Vec<(Regex, f64)>,
    layer_re: Vec<Regex>,
}

/// Whether a pair adapts a linear layer or an embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    Linear,
    Embedding,
}

/// One adapted module: `delta = scale · B·A` (transposed for embeddings).
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// HF module name, e.g. `model.layers.0.self_attn.q_proj` (its weight is `<module>.weight`).
    pub module: String,
    pub kind: PairKind,
    /// `[r, in]` (embedding: `[r, vocab]`), f32 on the CPU.
    pub a: Tensor,
    /// `[out, r]` (embedding: `[dim, r]`), f32 on the CPU.
    pub b: Tensor,
    pub rank: usize,
    pub alpha: f64,
    pub scale: f64,
    /// Tensor names in the adapter file.
    pub a_name: String,
    pub b_name: String,
}

impl LoraPair {
    /// `[out, in]` f32 weight delta on the CPU (embedding: `[vocab, dim]`).
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        let ba = self.b.matmul(&self.a)?;
        let ba = match self.kind {
            PairKind::Linear => ba,
            PairKind::Embedding => ba.t()?.contiguous()?,
        };
        ba.affine(self.scale, 0.0)
    }

    /// HF name of the weight this pair modifies.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.module)
    }
}

/// A parsed, self-consistent adapter, not yet checked against any base.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub dir: PathBuf,
    pub config: LoraConfig,
    /// Sorted by module name.
    pub pairs: Vec<LoraPair>,
    /// `modules_to_save` replacements: HF tensor name → full tensor (f32, CPU).
    pub saved_modules: BTreeMap<String, Tensor>,
}

const PREFIX: &str = "base_model.model.";
const LINEAR_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn field_err(path: &Path, field: &str, reason: impl Into<String>) -> LoraError {
    LoraError::Field { path: path.to_path_buf(), field: field.into(), reason: reason.into() }
}

fn full_match(pattern: &str, path: &Path, field: &str) -> Result<Regex, LoraError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| field_err(path, field, format!("regular expression `{pattern}` is not supported: {}", one_line(&e))))
}

impl LoraConfig {
    /// Parse `adapter_config.json` text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, LoraError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| LoraError::File { path: path.to_path_buf(), reason: format!("not valid JSON: {e}") })?;
        let m = v.as_object().ok_or_else(|| field_err(path, "(root)", "expected a JSON object"))?;
        let get = |k: &str| m.get(k).filter(|v| !v.is_null());
        let truthy = |k: &str| match get(k) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };

        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            Some(other) => return Err(field_err(path, "peft_type", format!("`{other}` is not supported (only LORA)"))),
            None => return Err(field_err(path, "peft_type", "missing (expected \"LORA\")")),
        }
        for (k, why) in [
            ("use_dora", "DoRA adapters are not supported (their magnitude vector changes the merge)"),
            ("lora_bias", "LoRA biases are not supported"),
            ("alora_invocation_tokens", "activated LoRA applies only after invocation tokens; merging would change it"),
            ("use_qalora", "QALoRA pools inputs before A; merging would change it"),
            ("target_parameters", "LoRA on raw parameters is not supported"),
            ("layer_replication", "layer replication is not supported"),
            ("trainable_token_indices", "trainable tokens are not supported"),
            ("use_bdlora", "this LoRA variant is not supported"),
            ("arrow_config", "Arrow routing is not supported"),
            ("kasa_config", "KaSA is not supported"),
            ("monteclora_config", "MonteCLoRA is not supported"),
            ("velora_config", "VeLoRA is not supported"),
        ] {
            if truthy(k) {
                return Err(field_err(path, k, why));
            }
        }
        match get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(other) => return Err(field_err(path, "bias", format!("`{other}` is not supported (only \"none\")"))),
        }

        let r = get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0 && r <= 1 << 20)
            .ok_or_else(|| field_err(path, "r", "expected a positive integer"))? as usize;
        let lora_alpha = match get("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(v) => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| field_err(path, "lora_alpha", format!("expected a number, found {v}")))?,
        };
        let bool_field = |k: &str| -> Result<bool, LoraError> {
            match get(k) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(field_err(path, k, format!("expected true/false, found {v}"))),
            }
        };
        let use_rslora = bool_field("use_rslora")?;
        let fan_in_fan_out = bool_field("fan_in_fan_out")?;

        let modules = |k: &str| -> Result<Option<TargetModules>, LoraError> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) if s == "all-linear" => Ok(Some(TargetModules::AllLinear)),
                Some(Value::String(s)) => Ok(Some(TargetModules::Regex(s.clone()))),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string).ok_or_else(|| field_err(path, k, format!("expected module names, found {x}"))))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|mut l| {
                        l.sort();
                        l.dedup();
                        Some(TargetModules::List(l))
                    }),
                Some(v) => Err(field_err(path, k, format!("expected a list or a regular expression, found {v}"))),
            }
        };
        let mut warnings = Vec::new();
        let target_modules = match modules("target_modules")? {
            Some(t) => t,
            None => {
                // PEFT fills in its per-architecture default (q_proj, v_proj for every family we support).
                warnings.push("target_modules is null: using PEFT's default [q_proj, v_proj]".into());
                TargetModules::List(vec!["q_proj".into(), "v_proj".into()])
            }
        };
        let exclude_modules = modules("exclude_modules")?;
        if fan_in_fan_out {
            warnings.push("fan_in_fan_out is true but every target is nn.Linear: PEFT sets it to false, and so do we".into());
        }

        let pattern_map = |k: &str| -> Result<Vec<(String, f64)>, LoraError> {
            match get(k) {
                None => Ok(vec![]),
                Some(Value::Object(o)) => o
                    .iter()
                    .map(|(key, v)| {
                        v.as_f64().filter(|x| x.is_finite()).map(|x| (key.clone(), x)).ok_or_else(|| field_err(path, &format!("{k}.{key}"), format!("expected a number, found {v}")))
                    })
                    .collect(),
                Some(v) => Err(field_err(path, k, format!("expected an object, found {v}"))),
            }
        };
        let rank_pattern: Vec<(String, usize)> = pattern_map("rank_pattern")?
            .into_iter()
            .map(|(k, x)| {
                if x >= 1.0 && x.fract() == 0.0 && x <= (1u64 << 20) as f64 {
                    Ok((k, x as usize))
                } else {
                    Err(field_err(path, &format!("rank_pattern.{k}"), format!("expected a positive integer, found {x}")))
                }
            })
            .collect::<Result<_, _>>()?;
        let alpha_pattern = pattern_map("alpha_pattern")?;

        let layers_to_transform = match get("layers_to_transform") {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(|| field_err(path, "layers_to_transform", format!("expected layer indices, found {x}"))))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(v) => Some(vec![v.as_u64().ok_or_else(|| field_err(path, "layers_to_transform", format!("expected an index or a list, found {v}")))? as usize]),
        };
        let layers_pattern = match get("layers_pattern") {
            None => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| field_err(path, "layers_pattern", format!("expected names, found {x}"))))
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(field_err(path, "layers_pattern", format!("expected a string or a list, found {v}"))),
        };
        let modules_to_save = match get("modules_to_save") {
            None => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| field_err(path, "modules_to_save", format!("expected module names, found {x}"))))
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(field_err(path, "modules_to_save", format!("expected a list, found {v}"))),
        };
        let str_of = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);

        let mut compiled = Compiled::default();
        if let TargetModules::Regex(p) = &target_modules {
            compiled.target = Some(full_match(p, path, "target_modules")?);
        }
        if let Some(TargetModules::Regex(p)) = &exclude_modules {
            compiled.exclude = Some(full_match(p, path, "exclude_modules")?);
        }
        let pattern_re = |field: &str, key: &str| {
            Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                .map_err(|e| field_err(path, &format!("{field}.{key}"), format!("regular expression not supported: {}", one_line(&e))))
        };
        for (k, x) in &rank_pattern {
            compiled.rank.push((pattern_re("rank_pattern", k)?, *x));
        }
        for (k, x) in &alpha_pattern {
            compiled.alpha.push((pattern_re("alpha_pattern", k)?, *x));
        }
        compiled.layer_re = if layers_pattern.is_empty() {
            vec![Regex::new(r"^.*\.[^.]*\.(\d+)\.").expect("static regex")]
        } else {
            layers_pattern
                .iter()
                .map(|p| {
                    Regex::new(&format!(r"^.*\.{p}\.(\d+)\."))
                        .map_err(|e| field_err(path, "layers_pattern", format!("`{p}`: {}", one_line(&e))))
                })
                .collect::<Result<_, _>>()?
        };

        Ok(Self {
            r,
            lora_alpha,
            target_modules,
            exclude_modules,
            use_rslora,
            fan_in_fan_out,
            rank_pattern,
            alpha_pattern,
            layers_to_transform,
            layers_pattern,
            modules_to_save,
            base_model_name_or_path: get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string),
            base_model_class: get("auto_mapping").and_then(Value::as_object).and_then(|o| str_of(o, "base_model_class")),
            peft_version: get("peft_version").and_then(Value::as_str).map(str::to_string),
            warnings,
            compiled,
        })
    }

    /// Does PEFT wrap `module` (an HF module name) with a LoRA layer? Mirrors `check_target_module_exists`.
    pub fn targets(&self, module: &str) -> bool {
        let suffix_of = |list: &[String]| list.iter().any(|t| module == t || module.ends_with(&format!(".{t}")));
        match (&self.exclude_modules, &self.compiled.exclude) {
            (Some(TargetModules::List(l)), _) if suffix_of(l) => return false,
            (Some(TargetModules::Regex(_)), Some(re)) if re.is_match(module) => return false,
            _ => {}
        }
        match &self.target_modules {
            TargetModules::Regex(_) => self.compiled.target.as_ref().is_some_and(|re| re.is_match(module)),
            TargetModules::AllLinear => LINEAR_MODULES.iter().any(|m| module.ends_with(&format!(".{m}"))),
            TargetModules::List(l) => {
                if l.iter().any(|t| t == module) {
                    return true;
                }
                if !suffix_of(l) {
                    return false;
                }
                match &self.layers_to_transform {
                    None => true,
                    Some(layers) => {
                        let idx = self.compiled.layer_re.iter().find_map(|re| re.captures(module).and_then(|c| c[1].parse::<usize>().ok()));
                        idx.is_some_and(|i| layers.contains(&i))
                    }
                }
            }
        }
    }

    /// `(rank, alpha)` for a module after `rank_pattern` / `alpha_pattern`.
    pub fn rank_alpha(&self, module: &str) -> (usize, f64) {
        let r = self.compiled.rank.iter().find(|(re, _)| re.is_match(module)).map_or(self.r, |(_, r)| *r);
        let a = self.compiled.alpha.iter().find(|(re, _)| re.is_match(module)).map_or(self.lora_alpha, |(_, a)| *a);
        (r, a)
    }

    /// PEFT's scaling for a module.
    pub fn scale(&self, module: &str) -> f64 {
        let (r, a) = self.rank_alpha(module);
        if self.use_rslora {
            a / (r as f64).sqrt()
        } else {
            a / r as f64
        }
    }

    fn saves(&self, module: &str) -> bool {
        self.modules_to_save.iter().any(|m| module == m || module.ends_with(&format!(".{m}")))
    }
}

impl LoraAdapter {
    /// Read an adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self, LoraError> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !dir.is_dir() {
            return Err(LoraError::File { path: dir.to_path_buf(), reason: "adapter folder does not exist".into() });
        }
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| LoraError::File { path: cfg_path.clone(), reason: format!("cannot read: {e}") })?;
        let config = LoraConfig::parse(&text, &cfg_path)?;
        let w_path = dir.join(WEIGHTS_FILE);
        if !w_path.is_file() {
            let why = if dir.join("adapter_model.bin").exists() {
                "missing (adapter_model.bin is a pickle; trapdoor never loads pickles)"
            } else {
                "missing"
            };
            return Err(LoraError::File { path: w_path, reason: why.into() });
        }
        let bytes = std::fs::read(&w_path).map_err(|e| LoraError::File { path: w_path.clone(), reason: format!("cannot read: {e}") })?;
        Self::from_parts(dir, config, &bytes, &w_path)
    }

    /// Build from a parsed config and the bytes of `adapter_model.safetensors` (`w_path` for messages).
    pub fn from_parts(dir: &Path, config: LoraConfig, bytes: &[u8], w_path: &Path) -> Result<Self, LoraError> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| LoraError::File { path: w_path.to_path_buf(), reason: format!("invalid safetensors file: {}", one_line(&e)) })?;
        let terr = |tensor: &str, reason: String| LoraError::Tensor { path: w_path.to_path_buf(), tensor: tensor.to_string(), reason };
        // Per module: its kind and the A and B halves seen so far, each with its tensor name.
        type Half = Option<(String, Tensor)>;
        let mut halves: BTreeMap<String, (PairKind, Half, Half)> = BTreeMap::new();
        let mut saved_modules = BTreeMap::new();
        let mut names = st.names();
        names.sort();
        if names.is_empty() {
            return Err(LoraError::File { path: w_path.to_path_buf(), reason: "holds no tensors".into() });
        }
        for name in names {
            let view = st.tensor(name).map_err(|e| terr(name, one_line(&e)))?;
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F64 => DType::F64,
                other => return Err(terr(name, format!("dtype {other:?} is not supported"))),
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| terr(name, one_line(&e)))?;
            let sum = t.sum_all().and_then(|s| s.to_scalar::<f32>()).map_err(|e| terr(name, one_line(&e)))?;
            if !sum.is_finite() {
                return Err(terr(name, "contains NaN or infinite values".into()));
            }
            let rest = name
                .strip_prefix(PREFIX)
                .ok_or_else(|| terr(name, format!("does not start with `{PREFIX}` (not a PEFT LoRA tensor)")))?;
            let (module, kind, is_a) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, PairKind::Linear, true)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, PairKind::Linear, false)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
                (m, PairKind::Embedding, true)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_B") {
                (m, PairKind::Embedding, false)
            } else if rest.ends_with(".lora_magnitude_vector") || rest.contains(".lora_magnitude_vector.") {
                return Err(terr(name, "DoRA magnitude vector: DoRA adapters are not supported".into()));
            } else if rest.ends_with(".lora_A.bias") || rest.ends_with(".lora_B.bias") {
                return Err(terr(name, "LoRA bias tensors are not supported".into()));
            } else {
                let module = rest.rsplit_once('.').map_or(rest, |(m, _)| m);
                if config.saves(module) {
                    saved_modules.insert(rest.to_string(), t);
                    continue;
                }
                return Err(terr(name, "is neither a LoRA A/B tensor nor part of modules_to_save".into()));
            };
            if module.is_empty() {
                return Err(terr(name, "names no module".into()));
            }
            if t.rank() != 2 {
                return Err(terr(name, format!("expected a matrix, found shape {:?}", t.dims())));
            }
            let entry = halves.entry(module.to_string()).or_insert((kind, None, None));
            if entry.0 != kind {
                return Err(terr(name, "mixes linear and embedding LoRA tensors for one module".into()));
            }
            let slot = if is_a { &mut entry.1 } else { &mut entry.2 };
            *slot = Some((name.to_string(), t));
        }

        let mut pairs = Vec::new();
        for (module, (kind, a, b)) in halves {
            let (a_name, a) = a.ok_or_else(|| {
                terr(&b.as_ref().map(|x| x.0.clone()).unwrap_or_default(), "has no matching A tensor".into())
            })?;
            let (b_name, b) = b.ok_or_else(|| terr(&a_name, "has no matching B tensor".into()))?;
            if !config.targets(&module) {
                return Err(terr(
                    &a_name,
                    format!("module `{module}` is not targeted by target_modules in {CONFIG_FILE} (PEFT would silently ignore it)"),
                ));
            }
            let (rank, alpha) = config.rank_alpha(&module);
            let (ar, _) = a.dims2().map_err(|e| terr(&a_name, one_line(&e)))?;
            let (_, br) = b.dims2().map_err(|e| terr(&b_name, one_line(&e)))?;
            if ar != rank {
                return Err(terr(&a_name, format!("rank {ar} (shape {:?}), but {CONFIG_FILE} gives r = {rank}", a.dims())));
            }
            if br != rank {
                return Err(terr(&b_name, format!("rank {br} (shape {:?}), but {CONFIG_FILE} gives r = {rank}", b.dims())));
            }
            let scale = config.scale(&module);
            pairs.push(LoraPair { module, kind, a, b, rank, alpha, scale, a_name, b_name });
        }
        if pairs.is_empty() && saved_modules.is_empty() {
            return Err(LoraError::File { path: w_path.to_path_buf(), reason: "holds no LoRA tensors".into() });
        }
        Ok(Self { dir: dir.to_path_buf(), config, pairs, saved_modules })
    }

    fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Check that every pair and saved module fits a base given as HF tensor name → shape.
    pub fn check_against(&self, base: &BTreeMap<String, Vec<usize>>, tied_embeddings: bool) -> Result<(), LoraError> {
        let path = self.weights_path();
        let terr = |tensor: &str, reason: String| LoraError::Tensor { path: path.clone(), tensor: tensor.to_string(), reason };
        for p in &self.pairs {
            let is_head = p.module == "lm_head" || p.module.ends_with(".lm_head") || p.module.ends_with("embed_tokens");
            if tied_embeddings && is_head {
                return Err(terr(&p.a_name, "LoRA on the LM head or embeddings of a model with tied embeddings is not supported".into()));
            }
            let w = p.weight_name();
            let Some(shape) = base.get(&w) else {
                return Err(terr(&p.a_name, format!("module `{}` does not exist in the base model (adapter for another base?)", p.module)));
            };
            let (out, inp) = match (p.kind, shape.as_slice()) {
                (PairKind::Linear, [o, i]) => (*o, *i),
                (PairKind::Embedding, [v, d]) => (*d, *v),
                _ => return Err(terr(&p.a_name, format!("base tensor `{w}` has shape {shape:?}, not a matrix"))),
            };
            let a = p.a.dims();
            let b = p.b.dims();
            if a[1] != inp {
                return Err(terr(&p.a_name, format!("shape {a:?} does not fit base `{w}` {shape:?} (adapter for another base?)")));
            }
            if b[0] != out {
                return Err(terr(&p.b_name, format!("shape {b:?} does not fit base `{w}` {shape:?} (adapter for another base?)")));
            }
        }
        for (name, t) in &self.saved_modules {
            let full = format!("{PREFIX}{name}");
            match base.get(name) {
                None => return Err(terr(&full, format!("modules_to_save replaces `{name}`, which the base model does not have"))),
                Some(s) if s.as_slice() != t.dims() => {
                    return Err(terr(&full, format!("shape {:?} does not fit base `{name}` {s:?}", t.dims())))
                }
                Some(_) => {}
            }
            if tied_embeddings && (name.ends_with("embed_tokens.weight") || name.starts_with("lm_head")) {
                return Err(terr(&full, "replacing the embeddings or LM head of a model with tied embeddings is not supported".into()));
            }
        }
        Ok(())
    }

    /// Merge into base tensors (checked first). Each weight is merged in f32 and converted back to its dtype.
    pub fn merge_into(&self, weights: &mut BTreeMap<String, Tensor>, tied_embeddings: bool) -> Result<(), LoraError> {
        let shapes = weights.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        self.check_against(&shapes, tied_embeddings)?;
        let path = self.weights_path();
        let terr = |tensor: &str, e: candle_core::Error| LoraError::Tensor { path: path.clone(), tensor: tensor.to_string(), reason: one_line(&e) };
        for p in &self.pairs {
            let name = p.weight_name();
            let w = &weights[&name];
            let merged = p
                .delta()
                .and_then(|d| d.to_device(w.device()))
                .and_then(|d| w.to_dtype(DType::F32)?.add(&d))
                .and_then(|m| m.to_dtype(w.dtype()))
                .map_err(|e| terr(&p.a_name, e))?;
            weights.insert(name, merged);
        }
        for (name, t) in &self.saved_modules {
            let w = &weights[name];
            let replaced = t.to_dtype(w.dtype()).and_then(|t| t.to_device(w.device())).map_err(|e| terr(name, e))?;
            weights.insert(name.clone(), replaced);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<LoraConfig, LoraError> {
        LoraConfig::parse(&v.to_string(), Path::new("adapter_config.json"))
    }

    fn base() -> Value {
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none",
               "use_dora": false, "auto_mapping": {"base_model_class": "LlamaForCausalLM", "parent_library": "x"}})
    }

    #[test]
    fn targets_follow_peft_rules() {
        let c = cfg(base()).unwrap();
        assert!(c.targets("model.layers.0.self_attn.q_proj"));
        assert!(!c.targets("model.layers.0.self_attn.k_proj"));
        assert!(!c.targets("model.layers.0.self_attn.xq_proj"));
        assert_eq!(c.base_model_class.as_deref(), Some("LlamaForCausalLM"));
        let mut v = base();
        v["layers_to_transform"] = json!([1]);
        let c = cfg(v).unwrap();
        assert!(!c.targets("model.layers.0.self_attn.q_proj"));
        assert!(c.targets("model.layers.1.self_attn.q_proj"));
        let mut v = base();
        v["target_modules"] = json!(r".*\.layers\.[01]\.self_attn\.(q|k)_proj");
        let c = cfg(v).unwrap();
        assert!(c.targets("model.layers.1.self_attn.k_proj"));
        assert!(!c.targets("model.layers.2.self_attn.k_proj"));
        let mut v = base();
        v["target_modules"] = json!("all-linear");
        v["exclude_modules"] = json!(["down_proj"]);
        let c = cfg(v).unwrap();
        assert!(c.targets("model.layers.3.mlp.up_proj") && !c.targets("model.layers.3.mlp.down_proj") && !c.targets("lm_head"));
    }

    #[test]
    fn scaling_rank_and_alpha_patterns() {
        let mut v = base();
        v["rank_pattern"] = json!({"layers.1.self_attn.q_proj": 4});
        v["alpha_pattern"] = json!({"v_proj": 32});
        let c = cfg(v).unwrap();
        assert_eq!(c.rank_alpha("model.layers.1.self_attn.q_proj"), (4, 16.0));
        assert_eq!(c.scale("model.layers.1.self_attn.q_proj"), 4.0);
        assert_eq!(c.scale("model.layers.0.self_attn.q_proj"), 2.0);
        assert_eq!(c.scale("model.layers.0.self_attn.v_proj"), 4.0);
        let mut v = base();
        v["use_rslora"] = json!(true);
        assert!((cfg(v).unwrap().scale("model.layers.0.self_attn.q_proj") - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn unsupported_configs_are_refused_by_field() {
        for (k, val) in [
            ("use_dora", json!(true)),
            ("bias", json!("all")),
            ("peft_type", json!("IA3")),
            ("r", json!(0)),
            ("r", json!("eight")),
            ("lora_alpha", json!("x")),
            ("target_modules", json!(42)),
            ("target_modules", json!("(unclosed")),
            ("alora_invocation_tokens", json!([1, 2])),
            ("layers_to_transform", json!("first")),
            ("rank_pattern", json!({"q_proj": 0})),
        ] {
            let mut v = base();
            v[k] = val;
            let e = cfg(v).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains("adapter_config.json"), "{k}: {e}");
        }
        assert!(LoraConfig::parse("{not json", Path::new("a.json")).unwrap_err().to_string().contains("a.json"));
        assert!(LoraConfig::parse("[]", Path::new("a.json")).is_err());
    }

    #[test]
    fn fan_in_fan_out_is_a_warning() {
        let mut v = base();
        v["fan_in_fan_out"] = json!(true);
        let c = cfg(v).unwrap();
        assert!(c.warnings.iter().any(|w| w.contains("fan_in_fan_out")));
    }

    fn adapter_bytes(tensors: &[(&str, Tensor)]) -> Vec<u8> {
        safetensors::serialize(tensors.iter().map(|(n, t)| (*n, t)), None).unwrap()
    }

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn build(cfg_json: Value, tensors: &[(&str, Tensor)]) -> Result<LoraAdapter, LoraError> {
        let c = cfg(cfg_json).unwrap();
        LoraAdapter::from_parts(Path::new("ad"), c, &adapter_bytes(tensors), Path::new("ad/adapter_model.safetensors"))
    }

    #[test]
    fn embedding_pairs_and_saved_modules_merge_like_peft() {
        let mut v = base();
        v["r"] = json!(1);
        v["lora_alpha"] = json!(2);
        v["target_modules"] = json!(["embed_tokens", "q_proj"]);
        v["modules_to_save"] = json!(["lm_head"]);
        // vocab 3, dim 2: A [1, 3], B [2, 1]; delta = 2 · (B·A)ᵀ = [[2,4],[4,8],[6,12]].
        let a = build(
            v,
            &[
                ("base_model.model.model.embed_tokens.lora_embedding_A", t(vec![1.0, 2.0, 3.0], &[1, 3])),
                ("base_model.model.model.embed_tokens.lora_embedding_B", t(vec![1.0, 2.0], &[2, 1])),
                ("base_model.model.lm_head.weight", t(vec![9.0; 6], &[3, 2])),
            ],
        )
        .unwrap();
        assert_eq!(a.pairs.len(), 1);
        assert_eq!(a.pairs[0].kind, PairKind::Embedding);
        let mut w: BTreeMap<String, Tensor> = BTreeMap::from([
            ("model.embed_tokens.weight".to_string(), t(vec![0.0; 6], &[3, 2])),
            ("lm_head.weight".to_string(), t(vec![0.0; 6], &[3, 2])),
        ]);
        a.merge_into(&mut w, false).unwrap();
        assert_eq!(w["model.embed_tokens.weight"].to_vec2::<f32>().unwrap(), vec![vec![2.0, 4.0], vec![4.0, 8.0], vec![6.0, 12.0]]);
        assert_eq!(w["lm_head.weight"].to_vec2::<f32>().unwrap(), vec![vec![9.0; 2]; 3]);
        // Tied embeddings: refused rather than merged into the shared matrix.
        let e = a.merge_into(&mut w, true).unwrap_err().to_string();
        assert!(e.contains("tied"), "{e}");
    }

    #[test]
    fn malformed_adapter_tensors_are_refused_by_name() {
        let a8 = || t(vec![0.0; 8 * 4], &[8, 4]);
        let b8 = || t(vec![0.0; 4 * 8], &[4, 8]);
        let cases: Vec<(Vec<(&str, Tensor)>, &str)> = vec![
            (vec![("model.layers.0.self_attn.q_proj.lora_A.weight", a8())], "does not start with"),
            (vec![("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", t(vec![1.0; 4], &[4]))], "DoRA"),
            (vec![("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", t(vec![1.0; 4], &[4]))], "bias"),
            (vec![("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", a8())], "no matching B"),
            (
                vec![
                    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", t(vec![f32::NAN; 32], &[8, 4])),
                    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", b8()),
                ],
                "NaN",
            ),
            (
                vec![
                    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", t(vec![0.0; 16], &[4, 4])),
                    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", b8()),
                ],
                "r = 8",
            ),
            (vec![("base_model.model.model.layers.0.mlp.weird.weight", t(vec![0.0; 4], &[4]))], "modules_to_save"),
        ];
        for (tensors, needle) in cases {
            let e = build(base(), &tensors).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(tensors[0].0), "{needle}: {e}");
        }
        let e = LoraAdapter::from_parts(Path::new("ad"), cfg(base()).unwrap(), b"garbage", Path::new("ad/w.safetensors")).unwrap_err();
        assert!(e.to_string().contains("ad/w.safetensors"), "{e}");
        // A module the base lacks, and a shape that does not fit.
        let a = build(
            base(),
            &[
                ("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", a8()),
                ("base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight", b8()),
            ],
        )
        .unwrap();
        let shapes = BTreeMap::from([("model.layers.0.self_attn.q_proj.weight".to_string(), vec![4, 4])]);
        assert!(a.check_against(&shapes, false).unwrap_err().to_string().contains("layers.9.self_attn.q_proj.lora_A.weight"));
        let shapes = BTreeMap::from([("model.layers.9.self_attn.q_proj.weight".to_string(), vec![4, 5])]);
        assert!(a.check_against(&shapes, false).unwrap_err().to_string().contains("[4, 5]"));
    }
}

