//! Flags shared by every command that loads a model (`inspect`, `generate`, `forward`, and later `scan`, …).

use std::path::PathBuf;

use trapdoor::runtime::{device::DeviceSpec, parse_dtype, LoadOptions};

/// `MODEL [--adapter DIR] [--device D] [--dtype T] [--allow-network]`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a local Hugging Face folder, a .gguf file, or a hub id org/name[@revision] from the local cache.
    pub model: String,
    /// PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged into MODEL.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Allow downloading a hub id the local cache lacks (needs a build with the `hub-download` feature).
    #[arg(long)]
    pub allow_network: bool,
    /// A lock file (`trapdoor lock MODEL`): every file of MODEL (and the adapter) must match it, checked before
    /// anything is loaded.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

impl ModelArgs {
    /// Validate the flags into load options; with `--lock`, verify the model's files against the lock first, so a
    /// changed file fails before any weights are read.
    pub fn resolve(&self, hash_files: bool) -> anyhow::Result<LoadOptions> {
        let dtype = parse_dtype(&self.dtype)?;
        let device = DeviceSpec::parse(&self.device)?.open()?;
        if let Some(lock) = &self.lock {
            super::lock::verify("--lock", &self.model, self.adapter.as_deref(), lock)?;
        }
        Ok(LoadOptions { dtype, device, adapter: self.adapter.clone(), allow_network: self.allow_network, hash_files })
    }
}
