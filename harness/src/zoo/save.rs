//! Writing models the way transformers and PEFT write them: `model.safetensors` (F32, HF names, `format: pt`
//! metadata), `config.json`, `generation_config.json`, and PEFT's `adapter_config.json` +
//! `adapter_model.safetensors` with `base_model.model.` key names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use safetensors::tensor::TensorView;
use serde_json::{json, Value};

use super::ZooError;

/// Serialise tensors (converted to f32) as safetensors with PyTorch's metadata. Tensor order in the file is the
/// safetensors crate's (dtype, then name), so the bytes depend only on names and values.
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>, ZooError> {
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| ZooError::Candle { context: format!("tensor `{name}`"), reason: e.to_string() })?;
        raw.push((name.clone(), t.dims().to_vec(), bytemuck::cast_slice(&v).to_vec()));
    }
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, shape, bytes)| {
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| ZooError::Invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into_iter().collect();
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| ZooError::Invalid(format!("safetensors: {e}")))
}

pub fn write(path: &Path, bytes: &[u8]) -> Result<(), ZooError> {
    trapdoor_reports::io::write_atomic(path, bytes)
        .map_err(|e| ZooError::Io { path: path.to_path_buf(), reason: e.source.to_string() })
}

pub fn write_json(path: &Path, v: &Value) -> Result<(), ZooError> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| ZooError::Invalid(format!("{}: {e}", path.display())))?;
    s.push('\n');
    write(path, s.as_bytes())
}

/// `generation_config.json`: greedy by default, the model's BOS/EOS.
pub fn generation_config(bos: Option<u32>, eos: &[u32]) -> Value {
    let eos: Value = match eos {
        [] => Value::Null,
        [one] => (*one).into(),
        many => many.to_vec().into(),
    };
    json!({"bos_token_id": bos, "eos_token_id": eos, "do_sample": false})
}

/// PEFT's `adapter_config.json` for a LoRA of rank `r` on `targets` (the field set PEFT 0.21 writes).
pub fn adapter_config(r: usize, alpha: f64, targets: &[&str], base_class: &str) -> Value {
    json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "auto_mapping": {"base_model_class": base_class, "parent_library": "transformers.models.llama.modeling_llama"},
        "base_model_name_or_path": null,
        "bias": "none",
        "corda_config": null,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_bias": false,
        "lora_dropout": 0.0,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "qalora_group_size": 16,
        "r": r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": null,
        "trainable_token_indices": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false
    })
}

/// PEFT tensor names for a module's pair: `base_model.model.<module>.lora_A.weight` / `lora_B`.
pub fn adapter_tensors(pairs: &BTreeMap<String, (Tensor, Tensor)>) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (module, (a, b)) in pairs {
        out.insert(format!("base_model.model.{module}.lora_A.weight"), a.clone());
        out.insert(format!("base_model.model.{module}.lora_B.weight"), b.clone());
    }
    out
}
