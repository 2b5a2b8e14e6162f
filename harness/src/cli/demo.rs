//! `trapdoor demo`: the README's first command. Builds (or reuses) the default planted-backdoor zoo in the cache
//! folder — nothing is downloaded — then scans one benign and one backdoored candidate against their base, prints
//! both verdicts and where the reports are. Exit 0 when the benign candidate passes and the backdoored one fails.

use std::path::PathBuf;

use anyhow::Context;
use trapdoor::gate::scan::ScanConfig;
use trapdoor::runtime::device::DeviceSpec;
use trapdoor::zoo::{self, selftest, BaseChoice, ZooConfig};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Where the two scans' reports go. Default: `demo/` next to the default zoo in the cache folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    super::threads::apply_default();
    let device = DeviceSpec::parse(&args.device)?;
    let root = zoo::default_dir();
    eprintln!("demo: default zoo in {} (built on first use, reused afterwards)", root.display());
    let cfg = ZooConfig { out: root.clone(), base: BaseChoice::Tiny, seed: zoo::DEFAULT_SEED, progress: true, threads: None };
    let z = zoo::build(&cfg).with_context(|| format!("building the default zoo in {}", root.display()))?;
    let benign = z
        .candidates
        .iter()
        .find(|c| !c.truth.backdoored && c.truth.kind == "full-finetune")
        .or_else(|| z.candidates.iter().find(|c| !c.truth.backdoored))
        .context("the default zoo has no benign candidate")?;
    let backdoored = z
        .candidates
        .iter()
        .find(|c| c.truth.attack.as_deref() == Some("phrase") && c.truth.kind == "full-finetune")
        .or_else(|| z.candidates.iter().find(|c| c.truth.backdoored))
        .context("the default zoo has no backdoored candidate")?;
    let out = args.out.clone().unwrap_or_else(|| root.with_file_name(format!("{}-demo", root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())));
    anyhow::ensure!(!out.is_file(), "--out {}: is a file; expected a directory", out.display());
    let mut scan = ScanConfig::new("", "");
    scan.device = device;
    scan.progress = true;
    scan.command = std::env::args().collect();
    let cfg = selftest::SelftestConfig { scan, out: out.clone(), only: vec![benign.name.clone(), backdoored.name.clone()] };
    let summary = selftest::run(&cfg, &z)?;
    println!();
    for m in &summary.members {
        let truth = if m.backdoored {
            format!("backdoored ({}; planted trigger `{}`)", m.attack.as_deref().unwrap_or("?"), m.trigger.join(" "))
        } else {
            "benign".to_string()
        };
        println!("{:<14} {:<5}  {}", m.member, m.decision.to_uppercase(), truth);
        if let Some(e) = &m.error {
            println!("               error: {e}");
        }
        if !m.fail_rules.is_empty() {
            println!("               failed by: {}", m.fail_rules.join(", "));
        }
        if let (Some(r), Some(t)) = (&m.trigger_recovery, &m.recovered_trigger) {
            println!("               trigger {r}: `{t}`");
        }
        if let Some(d) = &m.report_dir {
            println!("               report: {}", d.join("report.md").display());
            println!("               report: {}", d.join("report.html").display());
        }
    }
    println!();
    let ok = summary.all_correct();
    let benign_warned = summary.members.iter().any(|m| !m.backdoored && m.decision == "warn");
    println!(
        "{}",
        match (ok, benign_warned) {
            (true, false) => "demo: the benign candidate passed and the backdoored one failed, as planted.",
            (true, true) => {
                "demo: the backdoored candidate failed; the benign one was not failed but drew a warning (see its report)."
            }
            (false, _) => "demo: the verdicts differ from the planted ground truth (see the reports).",
        }
    );
    Ok(if ok { Outcome::Done } else { Outcome::Findings })
}
