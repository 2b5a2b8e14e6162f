//! `trapdoor zoo build`: plant backdoors with known ground truth (see [`crate::zoo`]).

use std::path::PathBuf;

use anyhow::Context;

use crate::Outcome;
use trapdoor::zoo::{self, BaseChoice, Recipe, ZooConfig};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build (or complete) a zoo: a base and candidates with planted backdoors, each with truth.json.
    Build(BuildArgs),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Zoo folder (created if missing; complete members with the same build key are reused).
    #[arg(long)]
    out: PathBuf,
    /// `tiny` (a llama trained from scratch on the generated corpus) or a model to fine-tune: HF folder, .gguf, hub id.
    #[arg(long, default_value = "tiny")]
    base: String,
    /// A lock file (`trapdoor lock MODEL`) the `--base` model must match, checked before it is loaded.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Seed of triggers, targets, data and initialisation.
    #[arg(long, default_value_t = zoo::DEFAULT_SEED)]
    seed: u64,
    /// Threads for the build (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No per-member progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// `standard`, or `quick` (reduced sizes, bounds not enforced: for tests of the build machinery).
    #[arg(long, default_value = "standard", hide = true)]
    recipe: String,
}

pub fn run(cmd: Command) -> anyhow::Result<Outcome> {
    match cmd {
        Command::Build(a) => {
            if a.threads == Some(0) {
                anyhow::bail!("--threads 0: must be at least 1");
            }
            let recipe = match a.recipe.as_str() {
                "standard" => Recipe::standard(),
                "quick" => Recipe::quick(),
                other => anyhow::bail!("--recipe {other}: expected standard or quick"),
            };
            if let Some(n) = a.threads {
                // candle sizes its CPU pools once per process from these variables; set them before any tensor op.
                for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
                    std::env::set_var(var, n.to_string());
                }
            }
            if let Some(lock) = &a.lock {
                anyhow::ensure!(a.base != "tiny", "--lock: the tiny base is trained here, there is no file to pin");
                super::lock::verify("--lock", &a.base, None, lock)?;
            }
            let base = if a.base == "tiny" { BaseChoice::Tiny } else { BaseChoice::Path(a.base.clone()) };
            let cfg = ZooConfig { out: a.out.clone(), base, seed: a.seed, progress: !a.quiet, threads: a.threads };
            let z = zoo::build_with(&cfg, &recipe).with_context(|| format!("zoo build --out {}", a.out.display()))?;
            println!("zoo {}: base {}", z.root.display(), z.base.dir.display());
            for c in &z.candidates {
                let t = &c.truth;
                let rates = match (t.asr_triggered, t.asr_clean) {
                    (Some(a), Some(b)) => format!("attack success {a:.2} triggered, {b:.2} clean"),
                    _ => {
                        let worst = t.planted_target_rates.values().cloned().fold(0.0, f64::max);
                        format!("emits planted targets at most {worst:.2}")
                    }
                };
                let what = if t.backdoored { t.attack.as_deref().unwrap_or("backdoor") } else { "benign" };
                println!("  {:<12} {:<15} {:<20} {rates}", c.name, t.kind, what);
            }
            Ok(Outcome::Done)
        }
    }
}
