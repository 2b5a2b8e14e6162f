//! `trapdoor invert --candidate MODEL [--adapter DIR] --baseline MODEL [--target TEXT]... [--budget-seconds N]
//! [--seed N] [--no-weight-hints] [--json] [--lock FILE] [--baseline-lock FILE]`: the trigger search on its own
//! (target inversion, soft search, GCG, held-out verification, anomaly index), seeded like `scan`'s by the tokens
//! the weight view ranks as likely trigger tokens. Prints tables by default, the run record's `trigger_search`
//! section with `--json`. Exits 0 whatever it finds (the gate decides); errors exit 2.

use std::path::PathBuf;

use anyhow::Context;
use trapdoor::gate::policy::TriggerSearchStage;
use trapdoor::invert::{prompts::DEFAULT_PROMPTS, search, PromptGroup, SearchParams};
use trapdoor::runtime::{device::DeviceSpec, parse_dtype, LoadOptions, Model};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Candidate model: a local Hugging Face folder, a .gguf file, or a hub id org/name[@revision].
    #[arg(long, value_name = "MODEL")]
    candidate: String,
    /// PEFT LoRA adapter folder merged into the candidate.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Trusted baseline model (the contrast of every search and of the verification).
    #[arg(long, value_name = "MODEL")]
    baseline: String,
    /// A target string to search for (repeatable); inverted targets fill up to --max-targets.
    #[arg(long = "target", value_name = "TEXT")]
    targets: Vec<String>,
    /// Wall-clock safety cap in seconds (steps are the primary budget).
    #[arg(long, default_value_t = 300, value_name = "N")]
    budget_seconds: u64,
    /// Adam steps per target and restart.
    #[arg(long, default_value_t = 200, value_name = "N")]
    max_steps: u32,
    /// Seeded restarts of the soft search per target.
    #[arg(long, default_value_t = 2, value_name = "N")]
    restarts: u32,
    /// Targets searched (declared first, then inverted).
    #[arg(long, default_value_t = 8, value_name = "N")]
    max_targets: u32,
    /// GCG steps per target (default: 50 on small models, 10 above 50M parameters).
    #[arg(long, value_name = "N")]
    gcg_steps: Option<u32>,
    /// Trigger length in tokens.
    #[arg(long, default_value_t = 4, value_name = "K")]
    trigger_len: usize,
    /// Clean prompts, one per line (repeatable: each file is a prompt group the search can bind a domain-conditional
    /// trigger to; default: built-in story openers and everyday requests).
    #[arg(long, value_name = "FILE")]
    prompts: Vec<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not start divergence inversions from the tokens the weight view ranks as likely trigger tokens (by
    /// default the candidate's weights are compared with the baseline's first and the ranked tokens seed one
    /// extra inversion per prompt set).
    #[arg(long)]
    no_weight_hints: bool,
    /// Print the `trigger_search` section of the run record as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write seconds and steps per phase as JSON to this file.
    #[arg(long, value_name = "FILE")]
    timing: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// A lock file (`trapdoor lock`) the candidate, with its adapter, must match. Checked before anything is loaded.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// A lock file the baseline must match. Checked before anything is loaded.
    #[arg(long, value_name = "FILE")]
    baseline_lock: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    super::threads::apply_default();
    if args.budget_seconds == 0 || args.max_steps == 0 || args.max_targets == 0 || args.trigger_len == 0 {
        anyhow::bail!("--budget-seconds, --max-steps, --max-targets and --trigger-len must be at least 1");
    }
    if args.trigger_len > 32 {
        anyhow::bail!("--trigger-len {}: at most 32", args.trigger_len);
    }
    let mut groups: Vec<PromptGroup> = Vec::new();
    for p in &args.prompts {
        let lines: Vec<String> = std::fs::read_to_string(p)
            .with_context(|| format!("--prompts {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        groups.push(PromptGroup::new(p.display().to_string(), lines));
    }
    if groups.is_empty() {
        groups.push(PromptGroup::new(
            "built-in prompts",
            DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
        ));
    }
    let total: usize = groups.iter().map(|g| g.prompts.len()).sum();
    if total < 4 {
        anyhow::bail!("--prompts: {total} non-empty lines in all, at least 4 are needed (train and held-out)");
    }
    let dtype = parse_dtype(&args.dtype)?;
    let device = DeviceSpec::parse(&args.device)?.open()?;
    let opts = LoadOptions {
        dtype,
        device,
        adapter: None,
        allow_network: false,
        hash_files: false,
    };
    let cand_opts = LoadOptions {
        adapter: args.adapter.clone(),
        ..opts.clone()
    };
    // Both models are verified before either is loaded.
    if let Some(lock) = &args.lock {
        super::lock::verify("--lock", &args.candidate, args.adapter.as_deref(), lock)?;
    }
    if let Some(lock) = &args.baseline_lock {
        super::lock::verify("--baseline-lock", &args.baseline, None, lock)?;
    }
    let cand = Model::load(&args.candidate, &cand_opts).with_context(|| format!("--candidate {}", args.candidate))?;
    let base = Model::load(&args.baseline, &opts).with_context(|| format!("--baseline {}", args.baseline))?;
    let stage = TriggerSearchStage {
        enabled: true,
        budget_seconds: args.budget_seconds,
        max_steps: args.max_steps,
        restarts: args.restarts,
        max_targets: args.max_targets,
        gcg_steps: args.gcg_steps,
    };
    let mut params = SearchParams::from_stage(&stage, cand.decoder().parameter_count());
    params.trigger_len = args.trigger_len;
    if !args.no_weight_hints {
        let diff = trapdoor::gate::scan::inside::weight_diff(&cand, &base).context("weight view for the search's hints")?;
        let ranked = trapdoor::inside::rank_trigger_tokens(
            Some(&diff),
            None,
            cand.tokenizer().ok(),
            &trapdoor::inside::TokenRankParams::default(),
        );
        params.hint_tokens = ranked.into_iter().map(|c| c.id).collect();
    }
    let out = search(&cand, Some(&base), &groups, &args.targets, &params, args.seed, true)?;
    if let Some(path) = &args.timing {
        let j = serde_json::json!({ "seconds": out.timing, "steps": out.steps });
        trapdoor_reports::io::write_atomic(path, serde_json::to_string_pretty(&j)?.as_bytes())
            .with_context(|| format!("--timing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out.record)?);
        return Ok(Outcome::Done);
    }
    let r = &out.record;
    let fmt = |x: f64| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "-".into()
        }
    };
    println!("targets");
    println!(
        "  {:<9} {:>8} {:>10} {:>10} {:>8}  text",
        "source", "Q gap", "loss cand", "loss base", "anomaly"
    );
    for (i, t) in out.targets.iter().enumerate() {
        let an = r.anomalies.get(i);
        println!(
            "  {:<9} {:>8} {:>10} {:>10} {:>8}{} {:?}",
            t.source,
            t.q_contrast.map(fmt).unwrap_or_else(|| "-".into()),
            fmt(t.soft_loss_candidate),
            t.soft_loss_baseline.map(fmt).unwrap_or_else(|| "-".into()),
            an.map(|a| fmt(a.index.0)).unwrap_or_else(|| "-".into()),
            if an.is_some_and(|a| a.flagged) { "!" } else { " " },
            t.text
        );
    }
    println!("\nrecovered triggers (held-out ASR)");
    println!(
        "  {:>6} {:>6} {:>8} {:<11}  trigger → target",
        "cand", "base", "no trig", "position"
    );
    for t in &r.triggers {
        println!(
            "  {:>6} {:>6} {:>8} {:<11}  {:?} {:?} → {:?}",
            fmt(t.asr_candidate.0),
            fmt(t.asr_baseline.0),
            fmt(t.asr_candidate_without_trigger.0),
            t.position.as_str(),
            t.text,
            t.token_ids,
            t.target
        );
    }
    println!("\ncoverage: {}", r.coverage.statement);
    for n in &r.coverage.not_searched {
        println!("  not searched: {n}");
    }
    Ok(Outcome::Done)
}
