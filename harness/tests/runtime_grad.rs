//! Gradients: a decoder built over a `VarMap` (as the zoo trains it) with `differentiable: true` passes gradients
//! to every trainable tensor and to the input embeddings of `forward_embeds` (a soft trigger), for every family;
//! one embedding gradient and one weight gradient are checked against central finite differences.

mod common;
mod runtime_util;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use runtime_util::*;
use trapdoor::runtime::{Decoder, ForwardOptions, ModelConfig};

const DIFF: ForwardOptions = ForwardOptions { hidden_states: false, differentiable: true, logits: trapdoor::runtime::Logits::All };

/// Trainable decoder with the parity fixture's weights loaded into its vars.
fn trainable(dir: &std::path::Path) -> (Decoder, VarMap) {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let mut vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let dec = Decoder::new(&cfg, vb).unwrap();
    vm.load(dir.join("model.safetensors")).unwrap();
    (dec, vm)
}

/// Next-token cross-entropy over the real tokens of each row.
fn loss(dec: &Decoder, embeds: &Tensor, ids: &Tensor, mask: &Tensor) -> Tensor {
    let logits = dec.forward_embeds(embeds, Some(mask), &DIFF).unwrap().logits;
    let (b, t, v) = logits.dims3().unwrap();
    let pred = logits.narrow(1, 0, t - 1).unwrap().reshape((b * (t - 1), v)).unwrap();
    let tgt = ids.narrow(1, 1, t - 1).unwrap().reshape(b * (t - 1)).unwrap();
    let w = mask.narrow(1, 1, t - 1).unwrap().to_dtype(DType::F32).unwrap().reshape(b * (t - 1)).unwrap();
    let logp = candle_nn::ops::log_softmax(&pred, D::Minus1).unwrap();
    let nll = logp.gather(&tgt.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap();
    ((nll * &w).unwrap().sum_all().unwrap() / w.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn every_weight_and_the_input_embeddings_get_gradients_in_every_family() {
    let mut failures = Vec::new();
    for dir in parity_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (dec, vm) = trainable(&dir);
        let expected = load_st(&dir.join("expected.safetensors"));
        let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = expected["attention_mask"].clone();
        // The VarMap-built model is the same model as the loaded one.
        let out = dec.forward(&ids, Some(&mask), &DIFF).unwrap();
        let d = max_diff_masked(&out.logits, &expected["logits"], &mask_rows(&mask));
        assert!(d < 1e-4, "{name}: {d}");

        // A soft trigger added to the token embeddings: gradients must reach both it and the embedding matrix.
        let soft = Var::zeros(dec.embed(&ids).unwrap().dims(), DType::F32, &Device::Cpu).unwrap();
        let embeds = (dec.embed(&ids).unwrap() + soft.as_tensor()).unwrap();
        let l = loss(&dec, &embeds, &ids, &mask);
        let grads = l.backward().unwrap();
        let nonzero = |t: &Tensor| grads.get(t).map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).unwrap_or(0.0);
        // NaN counts as no gradient.
        if nonzero(soft.as_tensor()).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            failures.push(format!("{name}: input embeddings got no gradient"));
        }
        let vars = vm.data().lock().unwrap();
        assert_eq!(vars.len(), dec.weights().len(), "{name}: every weight is a var");
        for (n, v) in vars.iter() {
            let g = nonzero(v.as_tensor());
            if !(g > 0.0 && g.is_finite()) {
                failures.push(format!("{name}: `{n}` got gradient {g}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gradients_match_finite_differences() {
    for fam in ["gemma3", "llama"] {
        let dir = common::fixtures().join("parity").join(fam);
        let (dec, vm) = trainable(&dir);
        let expected = load_st(&dir.join("expected.safetensors"));
        let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = expected["attention_mask"].clone();
        let base = dec.embed(&ids).unwrap();
        let soft = Var::from_tensor(&base).unwrap();
        let grads = loss(&dec, soft.as_tensor(), &ids, &mask).backward().unwrap();

        // Input embedding: the coordinate with the largest gradient, so the finite difference is well above noise.
        let g = grads.get(soft.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (idx, &gi) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        let h = 1e-2f32;
        let flat = base.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at = |delta: f32| {
            let mut v = flat.clone();
            v[idx] += delta;
            scalar(&loss(&dec, &Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap(), &ids, &mask))
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        eprintln!("{fam}: embeds[{idx}] grad {gi:.6} vs finite difference {fd:.6}");
        assert!((fd - gi as f64).abs() <= 2e-2 * gi.abs() as f64 + 1e-5, "{fam}: {gi} vs {fd}");

        // One attention weight of layer 0: the coordinate with the largest gradient among q/k/v/o.
        let (name, var, gw) = ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .map(|m| {
                let name = format!("model.layers.0.self_attn.{m}.weight");
                let var = vm.data().lock().unwrap()[&name].clone();
                let gw = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (name, var, gw)
            })
            .max_by(|a, b| a.2.iter().map(|x| x.abs()).fold(0f32, f32::max).total_cmp(&b.2.iter().map(|x| x.abs()).fold(0f32, f32::max)))
            .unwrap();
        let w0 = var.as_tensor().copy().unwrap();
        let (wi, &gwi) = gw.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        let wflat = w0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at_w = |delta: f32| {
            let mut v = wflat.clone();
            v[wi] += delta;
            var.set(&Tensor::from_vec(v, w0.dims(), &Device::Cpu).unwrap()).unwrap();
            scalar(&loss(&dec, &base, &ids, &mask))
        };
        let fdw = (at_w(h) - at_w(-h)) / (2.0 * h as f64);
        var.set(&w0).unwrap();
        eprintln!("{fam}: {name}[{wi}] grad {gwi:.6} vs finite difference {fdw:.6}");
        assert!((fdw - gwi as f64).abs() <= 2e-2 * gwi.abs() as f64 + 1e-5, "{fam}: {gwi} vs {fdw}");
    }
}

#[test]
fn a_trainable_model_saves_with_hf_names_and_loads_back() {
    // What the zoo does: build from a VarMap (transformers-like init), save the vars and config.json, load the folder.
    for fam in ["gemma3", "qwen2", "llama3-rope-scaling"] {
        let cfg = ModelConfig::from_file(&common::fixtures().join("parity").join(fam).join("config.json")).unwrap();
        let vm = VarMap::new();
        let dec = Decoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        vm.save(tmp.path().join("model.safetensors")).unwrap();
        std::fs::write(tmp.path().join("config.json"), serde_json::to_string_pretty(&cfg.to_hf_json()).unwrap()).unwrap();
        let names: Vec<String> = load_st(&tmp.path().join("model.safetensors")).into_keys().collect();
        assert!(names.iter().all(|n| n.starts_with("model.") || n == "lm_head.weight"), "{names:?}");
        let loaded = trapdoor::runtime::Model::load(tmp.path().to_str().unwrap(), &Default::default()).unwrap();
        let ids = Tensor::from_vec((0..24u32).map(|i| i * 11 % 300).collect::<Vec<u32>>(), (2, 12), &Device::Cpu).unwrap();
        let a = dec.forward(&ids, None, &DIFF).unwrap().logits;
        let b = loaded.decoder().forward(&ids, None, &ForwardOptions::default()).unwrap().logits;
        assert!(max_diff_masked(&a, &b, &[vec![true; 12], vec![true; 12]]) < 1e-5, "{fam}");
    }
}
