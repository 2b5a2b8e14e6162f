//! Zoo training: every trainable tensor receives a gradient (full fine-tune and LoRA), training lowers the loss,
//! and the generated tokenizer round-trips the corpus.

use std::collections::BTreeMap;

use candle_core::Tensor;
use trapdoor::zoo::corpus::{Gen, Plan};
use trapdoor::zoo::train::{self, Data, Lora, Schedule, Trainable};
use trapdoor::zoo::{tiny_config, vocab, Recipe};

fn setup() -> (trapdoor::runtime::ModelConfig, tokenizers::Tokenizer, Data) {
    let plan = Plan::draw(7);
    let mut gen = Gen::new(7, 1);
    let exs: Vec<_> = (0..64).map(|_| gen.any()).collect();
    let mut texts: Vec<String> = exs.iter().map(|e| e.text()).collect();
    texts.extend(trapdoor::zoo::corpus::vocabulary_seed_text());
    texts.extend(plan.strings());
    let v = vocab::vocabulary(texts.iter().map(String::as_str));
    let tok: tokenizers::Tokenizer = vocab::tokenizer_json(&v).to_string().parse().unwrap();
    let cfg = tiny_config(v.len() + 3, &Recipe::quick()).unwrap();
    let seqs = exs
        .iter()
        .map(|e| {
            let mut ids = tok.encode(e.text(), true).unwrap().get_ids().to_vec();
            assert!(!ids.contains(&0), "no <unk> in {}", e.text());
            assert_eq!(tok.decode(&ids, true).unwrap(), e.text());
            ids.push(2);
            ids
        })
        .collect();
    (cfg, tok, Data { seqs })
}

fn grad_sum(grads: &candle_core::backprop::GradStore, t: &Tensor) -> f32 {
    grads.get(t).map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).unwrap_or(0.0)
}

#[test]
fn every_weight_of_a_full_fine_tune_gets_a_gradient_and_training_lowers_the_loss() {
    let (cfg, _tok, data) = setup();
    let vars = train::init_params(&cfg, 1).unwrap();
    assert_eq!(vars.len(), trapdoor::runtime::decoder::param_specs(&cfg).len());
    let what = Trainable::Full { cfg: &cfg, vars: &vars };
    let batch: Vec<&Vec<u32>> = data.seqs.iter().take(8).collect();
    let before = train::batch_loss(&what.decoder().unwrap(), &batch).unwrap();
    let grads = before.backward().unwrap();
    let missing: Vec<&String> = vars
        .iter()
        .filter(|(_, v)| grad_sum(&grads, v.as_tensor()).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        .map(|(k, _)| k)
        .collect();
    assert!(missing.is_empty(), "no gradient for {missing:?}");

    let sched = Schedule { steps: 40, batch: 8, lr: 3e-3, final_frac: 0.5 };
    train::train(&what, &data, &sched, 3, None).unwrap();
    let after = train::batch_loss(&what.decoder().unwrap(), &batch).unwrap();
    let (b, a) = (before.to_scalar::<f32>().unwrap(), after.to_scalar::<f32>().unwrap());
    assert!(a < b - 0.5, "loss {b} -> {a}");
}

#[test]
fn every_lora_matrix_gets_a_gradient_and_base_weights_stay_frozen() {
    let (cfg, _tok, data) = setup();
    let base: BTreeMap<String, Tensor> = train::snapshot(&train::init_params(&cfg, 2).unwrap()).unwrap();
    let lora = Lora::new(&cfg, &base, 4, 8.0, 5).unwrap();
    assert_eq!(lora.pairs.len(), cfg.num_hidden_layers * train::LORA_TARGETS.len());
    let what = Trainable::Lora { cfg: &cfg, base: &base, lora: &lora };
    // B starts at zero (PEFT's init), so A's gradient is zero until B moves: take two steps first.
    let sched = Schedule { steps: 2, batch: 8, lr: 1e-2, final_frac: 1.0 };
    train::train(&what, &data, &sched, 3, None).unwrap();
    let batch: Vec<&Vec<u32>> = data.seqs.iter().take(8).collect();
    let loss = train::batch_loss(&what.decoder().unwrap(), &batch).unwrap();
    let grads = loss.backward().unwrap();
    for (m, (a, b)) in &lora.pairs {
        assert!(grad_sum(&grads, a.as_tensor()) > 0.0, "{m}: lora_A has no gradient");
        assert!(grad_sum(&grads, b.as_tensor()) > 0.0, "{m}: lora_B has no gradient");
    }
    // Only the adapter trains: the merged model differs from the base exactly in the adapted modules.
    let merged = lora.merged(&base).unwrap();
    for (name, w) in &base {
        let d = (&merged[name] - w).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let adapted = lora.pairs.keys().any(|m| name == &format!("{m}.weight"));
        assert_eq!(d > 0.0, adapted, "{name}: delta {d}");
    }
}
