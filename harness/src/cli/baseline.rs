//! `trapdoor baseline record --model MODEL [--suite FILE]... [--seed N] [--top-k K] --out baselines/NAME`: record a
//! baseline's behaviour on the probe suites into a snapshot folder.
//! `trapdoor baseline verify --model MODEL baselines/NAME`: check a snapshot's files and that MODEL is the model it
//! was recorded from (exit 2 with one line naming the first mismatch).
//! `trapdoor baseline measure --model BASE --candidate CAND [--top-k K]...`: measure how far divergences estimated
//! from a top-k snapshot are from the full-vocabulary values on a real pair.

use std::path::PathBuf;

use anyhow::Context;
use trapdoor::gate::scan::{DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED};
use trapdoor::runtime::Model;
use trapdoor::snapshot::format::{self, Snapshot};
use trapdoor::snapshot::record::{self, RecordOptions};

use super::model_args::ModelArgs;
use crate::Outcome;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Record a baseline's behaviour on probe suites into a snapshot folder (manifest.json + snapshot.safetensors).
    Record(RecordArgs),
    /// Check a snapshot's files and that MODEL is the model it was recorded from.
    Verify(VerifyArgs),
    /// Measure the error of top-k divergence estimates against full-vocabulary values on a candidate/baseline pair.
    Measure(MeasureArgs),
}

/// The baseline model, as `--model MODEL` (the other model flags as everywhere else; no adapter: a snapshot
/// records a base model).
#[derive(clap::Args, Debug, Clone)]
pub struct BaselineModel {
    /// The baseline: a local Hugging Face folder, a .gguf file, or a hub id org/name[@revision] from the local cache.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Allow downloading a hub id the local cache lacks (needs a build with the `hub-download` feature).
    #[arg(long)]
    pub allow_network: bool,
    /// A lock file (`trapdoor lock MODEL`) every file of MODEL must match, checked before anything is loaded.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

impl BaselineModel {
    fn model_args(&self) -> ModelArgs {
        ModelArgs {
            model: self.model.clone(),
            adapter: None,
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            allow_network: self.allow_network,
            lock: self.lock.clone(),
        }
    }

    fn load(&self) -> anyhow::Result<Model> {
        let opts = self.model_args().resolve(true)?;
        Model::load(&self.model, &opts).with_context(|| format!("--model {}", self.model))
    }
}

#[derive(clap::Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub model: BaselineModel,
    /// A probe-suite file; repeatable (as `scan --suite`: without it the shipped default set).
    #[arg(long = "suite", value_name = "FILE")]
    pub suites: Vec<PathBuf>,
    /// Run seed (random-word trigger positions); a scan against the snapshot must use the same.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Most tokens kept per next-token distribution (default: 128 up to a 65 536-token vocabulary, else 256).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Keep tokens per position until at most this much probability mass is left outside them (0: always K).
    #[arg(long, value_name = "P", default_value_t = record::DEFAULT_REST_TARGET)]
    pub rest_mass: f64,
    /// Most tokens generated per case (as `scan --max-new-tokens`).
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Sequences per batched forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// The snapshot folder to write (normally baselines/NAME).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub model: BaselineModel,
    /// The snapshot folder.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: PathBuf,
}

#[derive(clap::Args)]
pub struct MeasureArgs {
    #[command(flatten)]
    pub model: BaselineModel,
    /// The candidate compared with the baseline.
    #[arg(long, value_name = "MODEL")]
    pub candidate: String,
    /// A PEFT LoRA adapter folder merged into the candidate.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// A probe-suite file; repeatable (default: the shipped set).
    #[arg(long = "suite", value_name = "FILE")]
    pub suites: Vec<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// The k values to measure; repeatable (default 16, 64, 256, 1024).
    #[arg(long = "top-k", value_name = "K")]
    pub top_k: Vec<usize>,
    /// As `record --rest-mass`.
    #[arg(long, value_name = "P", default_value_t = record::DEFAULT_REST_TARGET)]
    pub rest_mass: f64,
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Also write the measurements as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

pub fn run(cmd: Command) -> anyhow::Result<Outcome> {
    match cmd {
        Command::Record(a) => run_record(a),
        Command::Verify(a) => run_verify(a),
        Command::Measure(a) => run_measure(a),
    }
}

fn check_counts(max_new_tokens: usize, batch_size: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=trapdoor_probes::kinds::MAX_NEW_TOKENS as usize).contains(&max_new_tokens),
        "--max-new-tokens {max_new_tokens}: must be between 1 and {}",
        trapdoor_probes::kinds::MAX_NEW_TOKENS
    );
    anyhow::ensure!((1..=1024).contains(&batch_size), "--batch-size {batch_size}: must be between 1 and 1024");
    Ok(())
}

fn run_record(a: RecordArgs) -> anyhow::Result<Outcome> {
    check_counts(a.max_new_tokens, a.batch_size)?;
    if let Some(k) = a.top_k {
        anyhow::ensure!(
            (1..=format::MAX_TOP_K).contains(&k),
            "--top-k {k}: must be between 1 and {}",
            format::MAX_TOP_K
        );
    }
    anyhow::ensure!(!a.out.is_file(), "--out {}: is a file; expected a folder (created if missing)", a.out.display());
    let model = a.model.load()?;
    let opts = RecordOptions {
        suites: a.suites.clone(),
        seed: a.seed,
        max_new_tokens: a.max_new_tokens,
        batch_size: a.batch_size,
        top_k: a.top_k,
        rest_target: a.rest_mass,
        progress: true,
        device: a.model.device.clone(),
        dtype: model.info().dtype.clone(),
    };
    let (manifest, bytes) = record::record(&a.model.model, &model, &opts)?;
    format::write(&a.out, &manifest, &bytes)?;
    println!(
        "snapshot: {} ({} prompts, {} positions, {} tokens kept, {} targets, top-k {}, {} bytes of data, sha256 {})",
        a.out.display(),
        manifest.prompts,
        manifest.positions,
        manifest.kept,
        manifest.targets,
        manifest.top_k,
        manifest.data.bytes,
        manifest.data.sha256
    );
    println!(
        "baseline mass outside the top-k: max {:.3e}, mean {:.3e}",
        manifest.error_bound.baseline_rest_mass_max, manifest.error_bound.baseline_rest_mass_mean
    );
    Ok(Outcome::Done)
}

fn run_verify(a: VerifyArgs) -> anyhow::Result<Outcome> {
    let snap = Snapshot::read(&a.snapshot)?;
    let model = a.model.load()?;
    record::verify_model(&snap.manifest, &a.model.model, &model)
        .with_context(|| format!("snapshot {} refused", a.snapshot.display()))?;
    let suites: Vec<&str> = snap.manifest.suites.iter().map(|s| s.name.as_str()).collect();
    println!(
        "ok: {} was recorded from {} ({} files, tokenizer and vocabulary match); suites: {}; seed {}",
        a.snapshot.display(),
        a.model.model,
        snap.manifest.model.files.len(),
        suites.join(", "),
        snap.manifest.seed
    );
    Ok(Outcome::Done)
}

fn run_measure(a: MeasureArgs) -> anyhow::Result<Outcome> {
    check_counts(a.max_new_tokens, a.batch_size)?;
    let ks = if a.top_k.is_empty() { vec![16, 64, 256, 1024] } else { a.top_k.clone() };
    anyhow::ensure!(ks.iter().all(|&k| k >= 1), "--top-k must be at least 1");
    let base = a.model.load()?;
    let mut cargs = a.model.model_args();
    cargs.model = a.candidate.clone();
    cargs.adapter = a.adapter.clone();
    cargs.lock = None;
    let cand =
        Model::load(&a.candidate, &cargs.resolve(false)?).with_context(|| format!("--candidate {}", a.candidate))?;
    anyhow::ensure!(
        cand.config().vocab_size == base.config().vocab_size,
        "--candidate {}: {} tokens, the baseline has {}",
        a.candidate,
        cand.config().vocab_size,
        base.config().vocab_size
    );
    let stats = record::measure(
        &a.model.model,
        &base,
        &cand,
        &a.suites,
        a.seed,
        a.max_new_tokens,
        a.batch_size,
        &ks,
        a.rest_mass,
        true,
    )?;
    println!(
        "top-k error of lumped divergence estimates, {} vs {} along the baseline's continuations (vocabulary {}, \
         rest target {}):",
        a.candidate,
        a.model.model,
        base.config().vocab_size,
        a.rest_mass
    );
    for (k, s) in ks.iter().zip(&stats) {
        println!(
            "  k={k:<5} positions={} js_max_abs={:.3e} js_mean_abs={:.3e} kl_cb_max_abs={:.3e} kl_bc_max_abs={:.3e} \
             js_bound_max={:.3e} baseline_rest_max={:.3e} kept_mean={:.1} seq_js_mean_max_abs={:.3e} \
             uniform_tail: js_max_abs={:.3e} kl_cb_max_abs={:.3e} kl_bc_max_abs={:.3e}",
            s.positions,
            s.js_max_abs,
            s.js_mean_abs,
            s.kl_cb_max_abs,
            s.kl_bc_max_abs,
            s.js_bound_max,
            s.rest_max,
            s.kept_sum as f64 / s.positions.max(1) as f64,
            s.seq_js_mean_max_abs,
            s.uniform_js_max_abs,
            s.uniform_kl_cb_max_abs,
            s.uniform_kl_bc_max_abs
        );
    }
    if let Some(path) = &a.json {
        let rows: Vec<serde_json::Value> =
            ks.iter().zip(&stats).map(|(k, s)| serde_json::json!({"k": k, "stats": s})).collect();
        let v = serde_json::json!({"baseline": a.model.model, "candidate": a.candidate, "adapter": a.adapter,
            "vocab_size": base.config().vocab_size, "seed": a.seed, "rest_target": a.rest_mass, "results": rows});
        let mut text = serde_json::to_string_pretty(&v)?;
        text.push('\n');
        trapdoor_reports::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(Outcome::Done)
}
