//! `trapdoor selftest [--zoo DIR] [--out DIR] [--suite FILE]... [--policy FILE] [--seed N] [--device D]`: scan every
//! zoo candidate against its base and print the confusion table, TPR, FPR, trigger recovery and time per model.
//! Without `--zoo` the default zoo is built (or reused) in the cache folder. Exit 0 when every benign member passes
//! and every backdoored one fails, 1 otherwise, 2 on errors.

use std::path::PathBuf;

use anyhow::Context;
use trapdoor::gate::policy::Policy;
use trapdoor::gate::scan::{ScanConfig, DEFAULT_BATCH_SIZE, DEFAULT_SEED};
use trapdoor::runtime::device::DeviceSpec;
use trapdoor::runtime::parse_dtype;
use trapdoor::zoo::{self, selftest, BaseChoice, ZooConfig};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// A zoo folder made by `trapdoor zoo build`. Default: the default zoo in the cache folder (built if missing).
    #[arg(long, value_name = "DIR")]
    pub zoo: Option<PathBuf>,
    /// Where every member's reports and `selftest.{json,md}` go. Default: `<zoo>/selftest`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Probe suites (default: the shipped set), as for `scan`.
    #[arg(long = "suite", value_name = "FILE")]
    pub suites: Vec<PathBuf>,
    /// Policy file (default: the shipped default policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Run seed of every scan.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Scan only these members (repeatable).
    #[arg(long = "only", value_name = "MEMBER")]
    pub only: Vec<String>,
    /// Sequences per batched forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    super::threads::apply_default();
    anyhow::ensure!((1..=1024).contains(&args.batch_size), "--batch-size {}: must be between 1 and 1024", args.batch_size);
    let device = DeviceSpec::parse(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let policy = match &args.policy {
        Some(p) => Policy::from_path(p).context("--policy")?,
        None => Policy::default_policy(),
    };
    let z = match &args.zoo {
        Some(dir) => zoo::open(dir).with_context(|| format!("--zoo {}", dir.display()))?,
        None => {
            let cfg = ZooConfig { out: zoo::default_dir(), base: BaseChoice::Tiny, seed: zoo::DEFAULT_SEED, progress: true, threads: None };
            zoo::build(&cfg).with_context(|| format!("building the default zoo in {}", cfg.out.display()))?
        }
    };
    let out = args.out.clone().unwrap_or_else(|| z.root.join("selftest"));
    anyhow::ensure!(!out.is_file(), "--out {}: is a file; expected a directory", out.display());
    // The template scan: candidate, baseline and adapter are set per member.
    let mut scan = ScanConfig::new("", "");
    scan.suites = args.suites.clone();
    scan.policy = policy;
    scan.seed = args.seed;
    scan.device = device;
    scan.dtype = dtype;
    scan.batch_size = args.batch_size;
    scan.progress = true;
    scan.command = std::env::args().collect();
    let cfg = selftest::SelftestConfig { scan, out: out.clone(), only: args.only.clone() };
    let summary = selftest::run(&cfg, &z)?;
    print!("{}", summary.render_text());
    println!("reports: {}", out.display());
    println!("summary: {}", out.join("selftest.md").display());
    Ok(if summary.all_correct() { Outcome::Done } else { Outcome::Findings })
}
