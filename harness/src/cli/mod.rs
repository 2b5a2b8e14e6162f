//! Command-line definitions. One module per subcommand, each with an `Args` struct and a `run` function.

use clap::{Parser, Subcommand};

use crate::Outcome;

mod audit;
mod baseline;
mod demo;
mod diff;
mod forward;
mod generate;
mod inspect;
mod invert;
mod lock;
mod model_args;
mod scan;
mod selftest;
mod suite;
mod threads;
mod zoo;

/// Gate open-weight language models against triggered backdoors before promotion.
#[derive(Parser)]
#[command(name = "trapdoor", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, parameter count, dtype and file digests of a model.
    Inspect(inspect::Args),
    /// Generate a continuation of a prompt.
    Generate(generate::Args),
    /// Run a forward pass on token ids from a safetensors file; write logits and hidden states.
    Forward(forward::Args),
    /// Audit a model's files before loading: formats, pickles, integrity, tokenizer/config/chat-template diffs.
    Audit(audit::Args),
    /// Print a lock file pinning every file of a model by sha256.
    Lock(lock::Args),
    /// Probe-suite commands.
    #[command(subcommand)]
    Suite(suite::Command),
    /// Compare a candidate with its baseline on probe suites and decide whether it may be promoted.
    Scan(scan::Args),
    /// Search for unknown triggers (soft trigger search, discretisation, target inversion).
    Invert(invert::Args),
    /// Weight delta between candidate and baseline, localised to layers and modules.
    Diff(diff::Args),
    /// Planted-backdoor zoo commands.
    #[command(subcommand)]
    Zoo(zoo::Command),
    /// Scan every zoo candidate against its base and report detection rates.
    Selftest(selftest::Args),
    /// Build (or reuse) the default zoo and scan one benign and one backdoored candidate.
    Demo(demo::Args),
    /// Baseline snapshot commands.
    #[command(subcommand)]
    Baseline(baseline::Command),
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Lock(a) => lock::run(a),
        Command::Suite(c) => suite::run(c),
        Command::Scan(a) => scan::run(a),
        Command::Invert(a) => invert::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Zoo(c) => zoo::run(c),
        Command::Selftest(a) => selftest::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Baseline(c) => baseline::run(c),
    }
}
