//! `trapdoor diff --candidate MODEL [--adapter DIR] --baseline MODEL [--json] [--top N] [--lock FILE]
//! [--baseline-lock FILE]`: the weight view alone.
//!
//! Forms:
//! * `--candidate C --baseline B`: dense delta of C's weights against B's.
//! * `--candidate C --adapter D [--baseline B]` (B defaults to C): when C's own weights equal B's, the adapter is
//!   analysed from its factors with B for relative norms; otherwise the adapter is merged into C and compared
//!   densely against B.
//! * `--adapter D` alone: the adapter's factors on their own, before any base is loaded.
//!
//! The command reports and exits 0 whatever it finds (the gate decides); errors exit 2.

use std::path::PathBuf;

use anyhow::Context;
use trapdoor::inside::linalg::SpectrumParams;
use trapdoor::inside::render;
use trapdoor::inside::weights::{diff_adapter, diff_candidate, DiffMode, FlagParams, WeightDiff, WeightDiffParams};
use trapdoor::runtime::{device::DeviceSpec, parse_dtype, LoadOptions, LoraAdapter, Model};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Candidate model: a local Hugging Face folder, a .gguf file, or a hub id org/name[@revision].
    #[arg(long, value_name = "MODEL")]
    candidate: Option<String>,
    /// PEFT LoRA adapter folder applied to the candidate (alone: analyse the adapter's factors on their own).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Trusted baseline model (defaults to the candidate when an adapter is given).
    #[arg(long, value_name = "MODEL")]
    baseline: Option<String>,
    /// Print the full result as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// How many tensors and moved vocabulary rows to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    top: usize,
    /// The k of "energy in the top-k singular values".
    #[arg(long, default_value_t = 16, value_name = "K")]
    top_k: usize,
    /// Seed of the randomised SVD sketches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the layer × module heatmap as SVG to this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Also write the layer × module table and findings as Markdown to this file.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype the models are loaded in: f32, bf16 or f16 (deltas are always taken in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Allow downloading a hub id the local cache lacks (needs a build with the `hub-download` feature).
    #[arg(long)]
    allow_network: bool,
    /// A lock file (`trapdoor lock`) the candidate, with its adapter, must match (with `--adapter` alone: a lock of
    /// the adapter folder). Checked before anything is loaded.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// A lock file the baseline must match (the candidate without its adapter when `--baseline` is omitted). Checked
    /// before anything is loaded.
    #[arg(long, value_name = "FILE")]
    baseline_lock: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.top_k == 0 {
        anyhow::bail!("--top-k 0: expected at least 1");
    }
    let params = WeightDiffParams {
        spectrum: SpectrumParams { top_k: args.top_k, seed: args.seed, ..Default::default() },
        flag: FlagParams::default(),
        top_rows: args.top.max(20),
    };
    let dtype = parse_dtype(&args.dtype)?;
    let device = DeviceSpec::parse(&args.device)?.open()?;
    let opts = LoadOptions { dtype, device, adapter: None, allow_network: args.allow_network, hash_files: false };
    check_locks(&args)?;
    let adapter = match &args.adapter {
        Some(dir) => Some(LoraAdapter::load(dir).with_context(|| format!("--adapter {}", dir.display()))?),
        None => None,
    };
    let (title, diff) = match (&args.candidate, &args.baseline, &adapter) {
        (None, None, Some(a)) => {
            let d = diff_adapter(a, None, None, &params)?;
            (format!("adapter {} (its own factors, no base loaded)", a.dir.display()), d)
        }
        (None, _, _) => anyhow::bail!("--candidate is required (or give --adapter alone to analyse an adapter on its own)"),
        (Some(_), None, None) => anyhow::bail!("--baseline is required unless --adapter is given (then the baseline defaults to the candidate)"),
        (Some(c), b, a) => {
            let cand = Model::load(c, &opts).with_context(|| format!("--candidate {c}"))?;
            let base_owned;
            let base = match b {
                Some(b) if b != c => {
                    base_owned = Model::load(b, &opts).with_context(|| format!("--baseline {b}"))?;
                    &base_owned
                }
                _ => &cand,
            };
            let d = diff_candidate(&cand, a.as_ref(), base, &params)?;
            let title = match (a, b) {
                (Some(a), _) => format!("{c} + adapter {} vs {}", a.dir.display(), b.as_deref().unwrap_or(c)),
                (None, Some(b)) => format!("{c} vs {b}"),
                (None, None) => unreachable!("handled above"),
            };
            (title, d)
        }
    };
    if let Some(p) = &args.svg {
        trapdoor_reports::io::write_atomic(p, render::heatmap_svg(&diff).as_bytes())?;
    }
    if let Some(p) = &args.markdown {
        trapdoor_reports::io::write_atomic(p, markdown(&title, &diff, args.top).as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        print!("{}", text(&title, &diff, args.top));
    }
    Ok(Outcome::Done)
}

/// `--lock` and `--baseline-lock`: every model this run would load is verified before any of them (the adapter
/// included) is read.
fn check_locks(args: &Args) -> anyhow::Result<()> {
    // (what --lock pins, what --baseline-lock pins), mirroring the forms in `run`.
    let (cand, adapter, base) = match (&args.candidate, &args.baseline, args.adapter.as_deref()) {
        (None, None, Some(a)) => {
            (a.to_str().with_context(|| format!("--adapter {}: path is not UTF-8", a.display()))?, None, None)
        }
        (Some(c), b, a) if b.is_some() || a.is_some() => (c.as_str(), a, Some(b.as_deref().unwrap_or(c))),
        _ => return Ok(()), // missing flags: `run` says which
    };
    if let Some(lock) = &args.lock {
        super::lock::verify("--lock", cand, adapter, lock)?;
    }
    if let Some(lock) = &args.baseline_lock {
        let base = base.context("--baseline-lock: --adapter alone loads no baseline")?;
        super::lock::verify("--baseline-lock", base, None, lock)?;
    }
    Ok(())
}

fn verdict(d: &WeightDiff) -> &'static str {
    use trapdoor::inside::weights::Pattern::*;
    match d.flag.pattern {
        Identical => "weights identical",
        ConcentratedLowRank => "FLAGGED: concentrated low-rank edit",
        LowRankOutliers => "FLAGGED: low-rank outliers in a diffuse change",
        Diffuse => "not flagged: diffuse change",
    }
}

fn tensor_rows(d: &WeightDiff, top: usize) -> Vec<[String; 8]> {
    d.ranking
        .iter()
        .take(top)
        .map(|n| {
            let t = &d.tensors[n];
            let s = t.spectrum.as_ref();
            [
                n.clone(),
                format!("{:?}", t.shape),
                t.rel_norm.map_or("—".into(), |r| format!("{r:.4}")),
                format!("{:.1}%", 100.0 * t.energy_share),
                s.map_or("—".into(), |s| format!("{:.1}% (k={})", 100.0 * s.top_k_fraction, s.top_k)),
                s.map_or("—".into(), |s| format!("{:.1}/{}{}", s.effective_rank, s.full_rank, if s.exact { "" } else { "~" })),
                s.map_or("—".into(), |s| format!("{:.2}", s.stable_rank)),
                if t.outlier { "outlier".into() } else if t.low_rank { "low-rank".into() } else { String::new() },
            ]
        })
        .collect()
}

const HEAD: [&str; 8] = ["tensor", "shape", "‖ΔW‖/‖W‖", "share", "top-k share", "eff. rank", "stable rank", "flag"];

fn text(title: &str, d: &WeightDiff, top: usize) -> String {
    let mut s = format!("trapdoor diff: {title}\n");
    s += &format!(
        "mode: {}; {} tensors compared, {} differ\n\n",
        if d.mode == DiffMode::AdapterFactors { "adapter factors" } else { "dense delta" },
        d.tensors_compared,
        d.tensors_changed
    );
    s += &format!("{}\n", verdict(d));
    for f in &d.summary {
        s += &format!("  - {f}\n");
    }
    s.push('\n');
    if !d.identical {
        s += &render::table_text(d);
        s.push('\n');
        let rows = tensor_rows(d, top);
        let mut w = HEAD.map(|h| h.chars().count());
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        s += &format!("largest changes (top {})\n", rows.len());
        let line = |cells: Vec<&str>| -> String {
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("  ").trim_end().to_string() + "\n"
        };
        s += &line(HEAD.to_vec());
        for r in &rows {
            s += &line(r.iter().map(String::as_str).collect());
        }
        for (label, rows) in [("embedding", &d.embedding_rows), ("LM head", &d.unembedding_rows)] {
            if let Some(r) = rows {
                if r.rows_changed == 0 {
                    continue;
                }
                s += &format!("\n{label} rows that moved most ({} of {} changed; median ‖Δ‖ {:.4})\n", r.rows_changed, r.rows, r.median_delta_norm);
                for m in r.top.iter().take(top) {
                    s += &format!(
                        "  {:>7}  {:<24} ‖Δ‖ {:.4}  rel {}  z {:.1}\n",
                        m.id,
                        m.token.as_deref().map_or("—".to_string(), |t| format!("{t:?}")),
                        m.delta_norm,
                        m.rel.map_or("—".into(), |r| format!("{r:.3}")),
                        m.z
                    );
                }
            }
        }
    }
    // The summary already says these in words.
    let notes: Vec<&String> = d.notes.iter().filter(|n| !n.starts_with("weights identical") && !n.starts_with("tokenizer vocabulary differs")).collect();
    if !notes.is_empty() {
        s += "\nnotes\n";
        for n in notes {
            s += &format!("  - {n}\n");
        }
    }
    s
}

fn markdown(title: &str, d: &WeightDiff, top: usize) -> String {
    let mut s = format!("## Weight delta: {title}\n\n**{}**\n\n", verdict(d));
    for f in &d.summary {
        s += &format!("- {f}\n");
    }
    s.push('\n');
    if !d.identical {
        s += &render::table_markdown(d);
        s += "\n| ";
        s += &HEAD.join(" | ");
        s += " |\n|";
        s += &"---|".repeat(HEAD.len());
        s.push('\n');
        for r in tensor_rows(d, top) {
            s += &format!("| `{}` | {} |\n", r[0], r[1..].join(" | "));
        }
    }
    if !d.notes.is_empty() {
        s += "\nNotes:\n\n";
        for n in &d.notes {
            s += &format!("- {n}\n");
        }
    }
    s
}
