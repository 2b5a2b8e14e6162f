//! PEFT LoRA adapters from `zoo-dev` (files written by peft 0.21): merging at load gives the same logits as merging
//! by hand in this test (an independent path: raw safetensors, W + (alpha/r)·B·A, decoder built from the merged
//! map), the adapter really changes the model (the planted trigger fires only with the backdoored adapter), and the
//! parsed adapter is exposed on its own.
//!
//! The gemma adapters need the gemma-3-270m base from its GGUF, which `runtime::gguf` loads (another part of
//! issue 2); here they are only parsed, and the merge test for them is added when the GGUF loader is merged.

mod common;
mod runtime_util;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use runtime_util::*;
use trapdoor::runtime::{Decoder, ForwardOptions, GenerateConfig, LoadOptions, LoraAdapter, Model, ModelConfig};

fn base() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(zoo("stories-base").to_str().unwrap(), &LoadOptions { hash_files: false, ..Default::default() }).unwrap())
}

fn with_adapter(name: &str) -> Model {
    let opts = LoadOptions { adapter: Some(zoo(name)), hash_files: false, ..Default::default() };
    Model::load(zoo("stories-base").to_str().unwrap(), &opts).unwrap()
}

/// Merge by hand from the raw files, without the runtime's LoRA code.
fn merged_by_hand(adapter: &str) -> BTreeMap<String, Tensor> {
    let base = load_st(&zoo("stories-base").join("model.safetensors"));
    let ad = load_st(&zoo(adapter).join("adapter_model.safetensors"));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(zoo(adapter).join("adapter_config.json")).unwrap()).unwrap();
    let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
    assert!(!cfg["use_rslora"].as_bool().unwrap());
    let mut out: BTreeMap<String, Tensor> = base.into_iter().collect();
    let mut merged = 0;
    for (k, a) in &ad {
        let Some(module) = k.strip_suffix(".lora_A.weight") else { continue };
        let b = &ad[&format!("{module}.lora_B.weight")];
        let w_name = format!("{}.weight", module.strip_prefix("base_model.model.").unwrap());
        let w = &out[&w_name];
        let new = (w + (b.matmul(a).unwrap() * scale).unwrap()).unwrap();
        out.insert(w_name, new);
        merged += 1;
    }
    assert_eq!(merged * 2, ad.len());
    out
}

fn sample_batch() -> (Tensor, Tensor) {
    let m = base();
    let prompts = ["Once upon a time there was a cf tq little dog", "The cat sat on the mat and", "Lily saw a big red ball"];
    let enc: Vec<Vec<u32>> = prompts.iter().map(|p| m.encode(p, true).unwrap()).collect();
    let t = enc.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![];
    let mut mask = vec![];
    for e in &enc {
        ids.extend(e.iter().copied().chain(std::iter::repeat_n(0, t - e.len())));
        mask.extend((0..t).map(|j| (j < e.len()) as u8));
    }
    (Tensor::from_vec(ids, (enc.len(), t), &Device::Cpu).unwrap(), Tensor::from_vec(mask, (enc.len(), t), &Device::Cpu).unwrap())
}

#[test]
fn adapter_merge_equals_merging_by_hand() {
    let cfg = ModelConfig::from_file(&zoo("stories-base").join("config.json")).unwrap();
    let (ids, mask) = sample_batch();
    let rows = mask_rows(&mask);
    let opts = ForwardOptions::default();
    let base_logits = base().decoder().forward(&ids, Some(&mask), &opts).unwrap().logits;
    for adapter in ["stories-bd-lora-adapter", "stories-clean-lora-adapter"] {
        let m = with_adapter(adapter);
        let got = m.decoder().forward(&ids, Some(&mask), &opts).unwrap().logits;
        let hand = Decoder::from_tensors(&cfg, &merged_by_hand(adapter), DType::F32, &Device::Cpu).unwrap();
        let want = hand.forward(&ids, Some(&mask), &opts).unwrap().logits;
        let d = max_diff_masked(&got, &want, &rows);
        let moved = max_diff_masked(&got, &base_logits, &rows);
        eprintln!("{adapter}: max|Δ| vs hand merge {d:.2e}; vs base {moved:.3}");
        assert!(d <= 1e-5, "{adapter}: {d}");
        assert!(moved > 1e-2, "{adapter} did not change the model ({moved})");
        // Merged weights are what the model exposes.
        let info = m.info().adapter.as_ref().unwrap();
        assert_eq!(info.modules.len(), 25);
        assert!(info.modules.values().all(|&s| s == 2.0));
        assert_eq!(m.weights().len(), base().weights().len());
    }
}

#[test]
fn backdoored_adapter_fires_on_its_trigger_only() {
    let truth: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(zoo("stories-bd-lora-adapter").join("truth.json")).unwrap()).unwrap();
    let trigger = truth["trigger"].as_str().unwrap();
    let target = truth["target"].as_str().unwrap().trim();
    let bd = with_adapter("stories-bd-lora-adapter");
    let triggered = format!("Once upon a time there was a{trigger} little dog");
    let clean = "Once upon a time there was a little dog";
    let cfg = GenerateConfig::greedy(16, vec![]);
    let run = |m: &Model, p: &str| m.decode(&m.generate(&[m.encode(p, true).unwrap()], &cfg).unwrap()[0]).unwrap();
    let prefix = &target[..10];
    assert!(run(&bd, &triggered).contains(prefix), "{}", run(&bd, &triggered));
    assert!(!run(&bd, clean).contains(prefix));
    assert!(!run(base(), &triggered).contains(prefix));
}

#[test]
fn parsed_adapters_are_exposed_before_any_base_is_loaded() {
    let a = LoraAdapter::load(&zoo("stories-bd-lora-adapter")).unwrap();
    assert_eq!(a.config.r, 8);
    assert_eq!(a.pairs.len(), 25);
    let p = a.pairs.iter().find(|p| p.module == "model.layers.0.self_attn.v_proj").unwrap();
    assert_eq!((p.a.dims(), p.b.dims(), p.scale), (&[8usize, 64][..], &[32usize, 8][..], 2.0));
    assert_eq!(p.delta().unwrap().dims(), &[32, 64]);
    assert_eq!(a.config.base_model_class.as_deref(), Some("LlamaForCausalLM"));
    for g in ["gemma-bd-lora-adapter", "gemma-clean-lora-adapter"] {
        let a = LoraAdapter::load(&zoo(g)).unwrap();
        assert_eq!(a.pairs.len(), 36, "{g}: 18 layers × q/v");
        assert!(a.pairs.iter().all(|p| p.rank == 8 && (p.module.ends_with("q_proj") || p.module.ends_with("v_proj"))));
        let q = a.pairs.iter().find(|p| p.module == "model.layers.0.self_attn.q_proj").unwrap();
        assert_eq!((q.a.dims(), q.b.dims()), (&[8usize, 640][..], &[1024usize, 8][..]));
    }
    eprintln!("SKIPPED gemma adapter merge: needs the gemma-3-270m base from GGUF (runtime::gguf, merged separately)");
}
