//! `trapdoor lock MODEL > trapdoor.lock`: pin every file of a model by sha256 (see `trapdoor::audit::integrity`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use trapdoor::audit::integrity::{self, check_lock};
use trapdoor::audit::ModelFiles;

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// A model folder, a single file, or a hub id `org/name[@revision]` in the local cache (its commit is recorded).
    pub model: String,
    /// A PEFT adapter folder to pin with the model (its files appear under `adapter/`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Write the lock here (atomically) instead of to standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let model = super::audit::resolve_model(&args.model, args.adapter.as_ref())?;
    let lock = integrity::make_lock(&model)?;
    let text = lock.to_json();
    match &args.output {
        Some(p) => trapdoor_reports::io::write_atomic(p, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(Outcome::Done)
}

/// Verify MODEL (with its adapter, if any) against a lock file before anything is loaded. Every command that loads a
/// model takes this one path for its lock flags: `ModelArgs::resolve` (`inspect`, `generate`, `forward`) and `diff` /
/// `invert`, which check both models before loading either. `flag` names the flag in the error.
pub fn verify(flag: &str, model: &str, adapter: Option<&Path>, lock: &Path) -> anyhow::Result<()> {
    let mut files = ModelFiles::resolve(model).with_context(|| flag.to_string())?;
    if let Some(a) = adapter {
        files = files.with_adapter(a).with_context(|| flag.to_string())?;
    }
    check_lock(&files, lock).with_context(|| flag.to_string())?;
    Ok(())
}
