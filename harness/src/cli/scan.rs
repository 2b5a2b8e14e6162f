//! `trapdoor scan --candidate MODEL [--adapter DIR] (--baseline MODEL | --baseline-snapshot DIR) [--suite FILE]...
//! [--policy FILE] --out DIR [--seed N] [--device D] [--dtype T] [--strict] [--lock FILE] [--max-new-tokens N]`:
//! compare a candidate with its baseline and decide whether it may be promoted. Exit 0 pass (and warn unless
//! `--strict`), 1 fail, 2 error, 3 nothing evaluated.

use std::path::PathBuf;

use anyhow::Context;
use trapdoor::gate::policy::Policy;
use trapdoor::gate::scan::{
    open_snapshot, run_scan, run_scan_snapshot, ScanConfig, DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED,
};
use trapdoor::runtime::device::DeviceSpec;
use trapdoor::runtime::{parse_dtype, LoadOptions, Model};
use trapdoor::snapshot::record::verify_model;

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// The candidate: a model folder, a .gguf file, or a hub id `org/name[@revision]` in the local cache.
    #[arg(long, value_name = "MODEL")]
    pub candidate: String,
    /// A PEFT LoRA adapter folder merged into the candidate.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// The trusted baseline (normally the candidate's base model).
    #[arg(long, value_name = "MODEL", required_unless_present = "baseline_snapshot")]
    pub baseline: Option<String>,
    /// A baseline snapshot (`trapdoor baseline record`) to compare against instead of loading the baseline; with
    /// `--baseline` as well, the snapshot is checked against that model and everything is computed live.
    #[arg(long, value_name = "DIR")]
    pub baseline_snapshot: Option<PathBuf>,
    /// A probe-suite file; repeatable. Without it the shipped default set (embedded in the binary) runs;
    /// `embedded:default` names that set (to add suites to it) and `embedded:NAME.yaml` one shipped suite.
    #[arg(long = "suite", value_name = "FILE")]
    pub suites: Vec<PathBuf>,
    /// A policy file. Without it the default policy (embedded) decides.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Directory for the reports (report.json, report.md, samples.csv, junit.xml, …) and timing.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Run seed: random-word trigger positions and the statistics' resampling.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Exit 1 on `warn` as well as on `fail`.
    #[arg(long)]
    pub strict: bool,
    /// A lock file (`trapdoor lock`) the candidate must match; mismatches are critical audit findings.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// A lock file the baseline must match, checked before anything loads; a mismatch is an error (exit 2).
    #[arg(long, value_name = "FILE", requires = "baseline")]
    pub baseline_lock: Option<PathBuf>,
    /// Most tokens generated per case (a suite asking for fewer gets fewer).
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Sequences per batched forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

impl Args {
    /// Validate every flag (before any file is read) into a scan configuration.
    pub fn resolve(&self) -> anyhow::Result<ScanConfig> {
        anyhow::ensure!(
            (1..=trapdoor_probes::kinds::MAX_NEW_TOKENS as usize).contains(&self.max_new_tokens),
            "--max-new-tokens {}: must be between 1 and {}",
            self.max_new_tokens,
            trapdoor_probes::kinds::MAX_NEW_TOKENS
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.batch_size),
            "--batch-size {}: must be between 1 and 1024",
            self.batch_size
        );
        let device = DeviceSpec::parse(&self.device)?;
        let dtype = parse_dtype(&self.dtype)?;
        let policy = match &self.policy {
            Some(p) => Policy::from_path(p).context("--policy")?,
            None => Policy::default_policy(),
        };
        anyhow::ensure!(
            !self.out.is_file(),
            "--out {}: is a file; expected a directory (created if missing)",
            self.out.display()
        );
        let mut cfg = ScanConfig::new(&self.candidate, self.baseline.clone().unwrap_or_default());
        cfg.adapter = self.adapter.clone();
        cfg.suites = self.suites.clone();
        cfg.policy = policy;
        cfg.seed = self.seed;
        cfg.device = device;
        cfg.dtype = dtype;
        cfg.out = Some(self.out.clone());
        cfg.lock = self.lock.clone();
        cfg.baseline_lock = self.baseline_lock.clone();
        cfg.progress = true;
        cfg.max_new_tokens = self.max_new_tokens;
        cfg.batch_size = self.batch_size;
        cfg.command = std::env::args().collect();
        Ok(cfg)
    }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    super::threads::apply_default();
    let cfg = args.resolve()?;
    let result = match (&args.baseline, &args.baseline_snapshot) {
        (None, Some(dir)) => run_scan_snapshot(&cfg, dir)?,
        (Some(base), Some(dir)) => {
            // Both: the snapshot must be this baseline's (same files, suites, seed, settings); the scan is live.
            let snap = open_snapshot(&cfg, dir)?;
            let opts = LoadOptions {
                dtype: cfg.dtype,
                device: cfg.device.open()?,
                adapter: None,
                allow_network: false,
                hash_files: true,
            };
            let model = Model::load(base, &opts).with_context(|| format!("--baseline {base}"))?;
            verify_model(&snap.manifest, base, &model)
                .with_context(|| format!("--baseline-snapshot {} refused", dir.display()))?;
            drop(model);
            run_scan(&cfg)?
        }
        _ => run_scan(&cfg)?,
    };
    let v = &result.record.verdict;
    println!("verdict: {}", result.decision.as_str());
    for r in v.reasons.iter().filter(|r| r.decision != trapdoor_reports::record::Decision::Pass).take(10) {
        println!("  {} [{}] {}", r.decision.as_str(), r.rule, r.message);
    }
    println!(
        "{} cases, {} tests ({} significant, {} with too few samples)",
        result.record.cases.len(),
        v.summary.tests,
        v.summary.significant,
        v.summary.insufficient
    );
    for p in &result.reports {
        println!("report: {}", p.display());
    }
    Ok(Outcome::Gate { decision: result.decision, strict: args.strict })
}
