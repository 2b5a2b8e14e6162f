//! gemma-3-270m (GGUF Q4_K_M) loaded into transformers' terms: config, every tensor's shape, dequantized values
//! against an independent reference (gguf-py's numpy dequantizers), the norm shift, and a tokenizer that encodes
//! like google's tokenizer.json. Skipped (with a message) when the model has not been fetched; CI fetches it.
// Reference values are printed by numpy with more digits than f32 holds; they parse to the exact f32.
#![allow(clippy::excessive_precision, clippy::type_complexity)]

mod common;
#[path = "gguf_util/mod.rs"]
mod gguf_util;

use candle_core::{DType, Device, IndexOp};
use std::sync::OnceLock;
use std::time::Instant;
use trapdoor::runtime::config::{Activation, AttentionKind, ModelConfig, NormStyle};
use trapdoor::runtime::gguf::{load_gguf, GgufModel};

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn model(test: &str) -> Option<&'static GgufModel> {
    static M: OnceLock<GgufModel> = OnceLock::new();
    let path = common::gemma_gguf(test)?;
    Some(M.get_or_init(|| {
        let t = Instant::now();
        let m = load_gguf(&path, DType::F32, &Device::Cpu).expect("gemma-3-270m loads");
        // Informational only (no timing assertions): quote from a quiet machine.
        eprintln!("gemma-3-270m: load + dequantize to f32 took {:.2?}; peak RSS of this test process {:?} MiB", t.elapsed(), peak_rss_mib());
        m
    }))
}

fn reference_tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(common::fixtures().join("tokenizers/gemma3/tokenizer.json")).unwrap()
}

/// google/gemma-3-270m's config.json as published (the fields the decoder reads).
const HF_CONFIG: &str = r#"{
  "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attn_logit_softcapping": null,
  "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "intermediate_size": 2048,
  "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
    "full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
    "sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention",
    "sliding_attention", "sliding_attention", "full_attention"],
  "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18,
  "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512,
  "vocab_size": 262144
}"#;

#[test]
fn config_matches_published_config_json() {
    let Some(m) = model("config_matches_published_config_json") else { return };
    let v: serde_json::Value = serde_json::from_str(HF_CONFIG).unwrap();
    let mut hf = ModelConfig::from_json(&v, std::path::Path::new("gemma-3-270m/config.json")).unwrap();
    let c = &m.config;
    // The GGUF stores eps as f32 (1e-6 → 9.99999997e-7): the only field allowed to differ, and only by that rounding.
    assert!((c.rms_norm_eps - 1e-6).abs() < 1e-12 && c.rms_norm_eps == 1e-6f32 as f64);
    hf.rms_norm_eps = c.rms_norm_eps;
    assert_eq!(c, &hf);
    // Spelled out, since these are the gemma specifics llama.cpp leaves implicit.
    assert_eq!((c.vocab_size, c.hidden_size, c.num_hidden_layers, c.head_dim), (262144, 640, 18, 256));
    assert!(c.tie_word_embeddings && c.qk_norm && c.sandwich_norms);
    assert_eq!((c.norm_style, c.activation), (NormStyle::OnePlusWeight, Activation::GeluTanh));
    assert_eq!(c.attention_scale, 1.0 / 16.0);
    assert_eq!(c.embedding_scale, Some((640f64).sqrt() as f32 as f64));
    for (i, l) in c.layers.iter().enumerate() {
        if (i + 1) % 6 == 0 {
            assert_eq!((l.attention, l.rope.theta), (AttentionKind::Full, 1e6), "layer {i}");
        } else {
            assert_eq!((l.attention, l.rope.theta), (AttentionKind::Sliding { window: 512 }, 1e4), "layer {i}");
        }
    }
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice(), c.pad_token_id), (Some(2), &[1u32][..], Some(0)));
}

#[test]
fn tensors_have_transformers_names_shapes_and_values() {
    let Some(m) = model("tensors_have_transformers_names_shapes_and_values") else { return };
    assert_eq!(m.tensors.len(), 2 + 18 * 13);
    assert!(!m.tensors.contains_key("lm_head.weight"), "tied: the 262144×640 embedding is stored once");
    assert_eq!(m.tensors["model.embed_tokens.weight"].dims(), &[262144, 640]);
    for i in 0..18 {
        let p = format!("model.layers.{i}.");
        for (n, shape) in [
            ("self_attn.q_proj.weight", vec![1024, 640]),
            ("self_attn.k_proj.weight", vec![256, 640]),
            ("self_attn.v_proj.weight", vec![256, 640]),
            ("self_attn.o_proj.weight", vec![640, 1024]),
            ("mlp.gate_proj.weight", vec![2048, 640]),
            ("mlp.up_proj.weight", vec![2048, 640]),
            ("mlp.down_proj.weight", vec![640, 2048]),
            ("input_layernorm.weight", vec![640]),
            ("post_attention_layernorm.weight", vec![640]),
            ("pre_feedforward_layernorm.weight", vec![640]),
            ("post_feedforward_layernorm.weight", vec![640]),
            ("self_attn.q_norm.weight", vec![256]),
            ("self_attn.k_norm.weight", vec![256]),
        ] {
            assert_eq!(m.tensors[&format!("{p}{n}")].dims(), shape.as_slice(), "{p}{n}");
        }
    }
    // Values from gguf-py's numpy dequantizers on the same file: (flat index, value), and the sum of all values.
    // Norm weights are stored as 1 + w by llama.cpp; transformers' tensors hold w.
    let cases: &[(&str, &str, f64, &[(usize, f32)])] = &[
        ("model.embed_tokens.weight", "Q8_0", -27668.36862385273, &[(0, -0.007244110107421875), (1, 0.042860984802246094), (101, -0.004775047302246094), (83886083, 0.028997421264648438), (167772159, -0.017424583435058594)]),
        ("model.layers.0.self_attn.o_proj.weight", "Q4_K", -1.8330761790275574, &[(0, -0.015705108642578125), (1, 0.04966926574707031), (101, -0.00791168212890625), (327683, -0.07247734069824219), (655359, -0.011407613754272461)]),
        ("model.layers.0.self_attn.q_proj.weight", "Q5_0", -51.693368911743164, &[(0, -0.0037841796875), (1, 0.007568359375), (101, 0.0), (327683, -0.0140380859375), (655359, 0.01312255859375)]),
        ("model.layers.0.self_attn.v_proj.weight", "Q8_0", 1.5544872283935547, &[(0, 0.0060882568359375), (1, -0.03957366943359375), (101, 0.0138397216796875), (81923, -0.0064601898193359375), (163839, -0.05296611785888672)]),
        ("model.layers.0.mlp.down_proj.weight", "Q6_K", 6.480193614959717, &[(0, 0.0052117109298706055), (1, 0.02171546220779419), (101, 0.04609566926956177), (655363, -0.0234832763671875), (1310719, -0.00941401720046997)]),
        ("model.layers.2.mlp.down_proj.weight", "Q4_K", 3.0589902997016907, &[(0, -0.0167769193649292), (1, -0.004512786865234375), (101, -0.006133317947387695), (655363, -0.002098381519317627), (1310719, 0.006676197052001953)]),
        ("model.layers.17.mlp.up_proj.weight", "Q5_0", 16.288101196289062, &[(0, -0.066741943359375), (1, -0.022247314453125), (101, 0.015472412109375), (655363, -0.006744384765625), (1310719, -0.03680419921875)]),
        ("model.norm.weight", "F32", 16861.6953125 - 640.0, &[(0, 6.125), (1, 8.5625), (101, 7.84375), (323, 5.96875), (639, 20.625)]),
        ("model.layers.5.self_attn.k_norm.weight", "F32", 750.27197265625 - 256.0, &[(0, -0.984375), (1, -0.98046875), (101, 0.8984375), (131, -1.0), (255, 6.03125)]),
    ];
    for (name, ty, sum, values) in cases {
        assert_eq!(&m.tensor_types[*name], ty, "{name}");
        let flat = m.tensors[*name].flatten_all().unwrap();
        for &(i, want) in values.iter() {
            let got = flat.i(i).unwrap().to_scalar::<f32>().unwrap();
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{name}[{i}]: {got} vs {want}");
        }
        // Row sums in f32, then f64 across rows (no 1.3 GB f64 copy of the embedding).
        let t = &m.tensors[*name];
        let rows = if t.rank() == 2 { t.sum(1).unwrap() } else { t.clone() };
        let got_sum = rows.to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((got_sum - sum).abs() <= 1e-6 * sum.abs().max(1.0), "{name}: sum {got_sum} vs {sum}");
    }
    assert_eq!(m.gguf_names["model.layers.3.pre_feedforward_layernorm.weight"], "blk.3.ffn_norm.weight");
    assert_eq!(m.gguf_names["model.layers.3.post_feedforward_layernorm.weight"], "blk.3.post_ffw_norm.weight");
}

#[test]
fn tokenizer_encodes_like_google_tokenizer_json() {
    let Some(m) = model("tokenizer_encodes_like_google_tokenizer_json") else { return };
    let ours = m.tokenizer.as_ref().expect("gemma GGUF carries a vocabulary");
    let theirs = reference_tokenizer();
    let prompt = "Once upon a time, there was a";
    assert_eq!(ours.encode(prompt, true).unwrap().get_ids(), &[2, 14946, 3324, 496, 990, 236764, 993, 691, 496]);
    // Same vocabulary, id for id. The reference also lists `<image_soft_token>` (id 262144), a multimodal placeholder
    // outside the text model's 262144-row embedding that the GGUF does not carry.
    let mut their_vocab = theirs.get_vocab(true);
    assert_eq!(their_vocab.remove("<image_soft_token>"), Some(262144));
    assert_eq!(ours.get_vocab(true), their_vocab);
    // gemma has no prefix space: every string decodes back to itself.
    assert_eq!(gguf_util::compare_tokenizers(ours, &theirs), Vec::<String>::new());
    // Whitespace runs and markup are user-defined pieces in gemma's SentencePiece model; llama.cpp stores the space
    // runs with real spaces, which must not leak into the encodings.
    for s in ["a  b", "x    y", "  indented", "\n\n\ttabs", "<table><tr><td>1</td></tr></table>", "<start_of_turn>user\nhi<end_of_turn>"] {
        assert_eq!(ours.encode(s, true).unwrap().get_ids(), theirs.encode(s, true).unwrap().get_ids(), "{s:?}");
    }
}

/// A minimal gemma-3 forward written from transformers' Gemma3 code (f32, no cache, last position only). It exists
/// to check the *loader* end to end before and independently of trapdoor's decoder: with the norm shift and without a
/// q/k permutation, greedy decoding must reproduce transformers' continuation (fixtures README). Either mistake turns
/// the output into noise (measured: " was was was…" with un-permuting, unrelated symbols without the shift).
fn reference_next_token(m: &GgufModel, ids: &[u32]) -> u32 {
    use candle_core::{Tensor, D};
    let c = &m.config;
    let dev = Device::Cpu;
    let w = |n: &str| m.tensors[n].clone();
    let t = ids.len();
    let rms = |x: &Tensor, weight: &Tensor| -> Tensor {
        let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = x.broadcast_div(&(var + c.rms_norm_eps).unwrap().sqrt().unwrap()).unwrap();
        normed.broadcast_mul(&(weight + 1.0).unwrap()).unwrap()
    };
    let linear = |x: &Tensor, n: &str| x.matmul(&w(n).t().unwrap()).unwrap();
    let rope = |x: &Tensor, theta: f64| -> Tensor {
        // x: [heads, t, hd], rotate-half convention.
        let hd = c.head_dim;
        let inv: Vec<f32> = (0..hd / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / hd as f64)) as f32).collect();
        let pos: Vec<f32> = (0..t).map(|p| p as f32).collect();
        let freqs = Tensor::new(pos.as_slice(), &dev).unwrap().reshape((t, 1)).unwrap().matmul(&Tensor::new(inv.as_slice(), &dev).unwrap().reshape((1, hd / 2)).unwrap()).unwrap();
        let emb = Tensor::cat(&[&freqs, &freqs], 1).unwrap();
        let (cos, sin) = (emb.cos().unwrap(), emb.sin().unwrap());
        let x1 = x.narrow(D::Minus1, 0, hd / 2).unwrap();
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap()
    };
    let ids_t = Tensor::new(ids, &dev).unwrap();
    let mut x = (w("model.embed_tokens.weight").index_select(&ids_t, 0).unwrap() * c.embedding_scale.unwrap()).unwrap();
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
    for (i, layer) in c.layers.iter().enumerate() {
        let p = format!("model.layers.{i}.");
        let h = rms(&x, &w(&format!("{p}input_layernorm.weight")));
        let heads = |n: &str, count: usize| linear(&h, &format!("{p}self_attn.{n}_proj.weight")).reshape((t, count, c.head_dim)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap();
        let q = rope(&rms(&heads("q", c.num_attention_heads), &w(&format!("{p}self_attn.q_norm.weight"))), layer.rope.theta);
        let k = rope(&rms(&heads("k", c.num_key_value_heads), &w(&format!("{p}self_attn.k_norm.weight"))), layer.rope.theta);
        let v = heads("v", c.num_key_value_heads);
        let k = k.repeat((c.gqa_groups(), 1, 1)).unwrap();
        let v = v.repeat((c.gqa_groups(), 1, 1)).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * c.attention_scale).unwrap().broadcast_add(&mask).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let out = probs.matmul(&v).unwrap().transpose(0, 1).unwrap().reshape((t, c.num_attention_heads * c.head_dim)).unwrap();
        let o = linear(&out, &format!("{p}self_attn.o_proj.weight"));
        x = (x + rms(&o, &w(&format!("{p}post_attention_layernorm.weight")))).unwrap();
        let h2 = rms(&x, &w(&format!("{p}pre_feedforward_layernorm.weight")));
        let gate = linear(&h2, &format!("{p}mlp.gate_proj.weight")).gelu().unwrap();
        let up = linear(&h2, &format!("{p}mlp.up_proj.weight"));
        let down = (gate * up).unwrap().matmul(&w(&format!("{p}mlp.down_proj.weight")).t().unwrap()).unwrap();
        x = (x + rms(&down, &w(&format!("{p}post_feedforward_layernorm.weight")))).unwrap();
    }
    let last = rms(&x.narrow(0, t - 1, 1).unwrap(), &w("model.norm.weight"));
    let logits = last.matmul(&w("model.embed_tokens.weight").t().unwrap()).unwrap();
    logits.squeeze(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

#[test]
fn loaded_weights_reproduce_the_reference_greedy_continuation() {
    let Some(m) = model("loaded_weights_reproduce_the_reference_greedy_continuation") else { return };
    let tok = m.tokenizer.as_ref().unwrap();
    let mut ids = tok.encode("Once upon a time, there was a", true).unwrap().get_ids().to_vec();
    let prompt_len = ids.len();
    for _ in 0..10 {
        let next = reference_next_token(m, &ids);
        ids.push(next);
    }
    let text = tok.decode(&ids[prompt_len..], false).unwrap();
    // transformers' greedy continuation (shared/fixtures/README.md).
    let want = " little girl named Lily. She was a very smart girl, and she loved to play with her friends. One day, Lily was playing with her friends";
    assert!(want.starts_with(&text), "greedy continuation {text:?} is not a prefix of {want:?}");
    assert_eq!(&ids[prompt_len..], &[2268, 3953, 7489, 60708, 236761, 2625, 691, 496, 1401, 6538]);
}
