//! `scan`: the gate end to end, from two model specifications to a verdict and its reports.
//!
//! The order matters and is the product's promise:
//!
//! 1. **Suites and policy first.** Every suite is loaded and validated (and two suites with one name refused)
//!    before any model file is read, so a typo costs nothing.
//! 2. **Vocabularies.** The two vocabulary sizes are read from the configs (no weights): models with different
//!    vocabularies cannot be compared token by token, which is an error, not a verdict.
//! 3. **Stage 0, the audit** ([`crate::audit::stage0`]) of the candidate (with its adapter) against the baseline,
//!    with the lock file when given. A finding at or above `policy.stages.audit.stop_on` stops the scan before any
//!    weights load; the verdict then comes from the policy's finding rules.
//! 4. **Load** both models on one device and dtype. A token → id map that differs between them is either an audit
//!    finding (the probes stage is then skipped, saying why) or, if the audit did not report it, an error.
//! 5. **Probes.** Cases are expanded with the run seed. Each distinct prompt is generated once per model (a clean
//!    prompt shared by many triggers runs once), greedily, in length-sorted batches. Then both models are run,
//!    teacher-forced, over prompt + continuation for both continuations, in batches with right padding and an
//!    attention mask; per position the Jensen–Shannon divergence, both KLs and top-1 agreement of the two next-token
//!    distributions give each case's [`DivergenceTrace`]s. Declared targets are scored the same way (the sum of the
//!    target tokens' log-probabilities after the prompt), and the probe's detectors read both continuations.
//! 6. **Inside** (weight delta, activations on clean/triggered pairs) and **trigger search**, when the policy
//!    enables them.
//! 7. [`conclude`] derives metrics, runs the paired tests, evaluates the policy and canonicalises the record;
//!    [`trapdoor_reports::write_reports`] writes every report atomically. Timings and peak memory go to
//!    `timing.json`, never into the record, so the same inputs and seed give a byte-identical `report.json`.
//!
//! Prompts are encoded and continuations decoded with the **baseline's** tokenizer (and its chat template): the
//! two models then see identical token ids, which teacher-forced comparison needs, and the trusted side defines
//! what the text means. Their equality with the candidate's is what step 4 checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use trapdoor_probes::{shipped, Case, Suite, SuiteError};
use trapdoor_reports::record::{
    self as rec, AdapterRef, AuditSection, CaseResult, Decision, DetectorHit, Divergence, DivergenceTrace, FileRef,
    ModelKind, ModelOutput, ModelRef, PerToken, Real, RunRecord, Settings, StageStatus, StopReason, SuiteRef,
    TargetScore, TriggerInfo,
};

pub mod inside;
mod snapshot;

pub use snapshot::{open_snapshot, run_scan_snapshot};

use super::policy::{conclude, LoadedPolicy};
use crate::audit::{self, AuditOptions, LockFile, ModelFiles};
use crate::chat_template::{self, RenderContext};
use crate::runtime::decoder::{ForwardOptions, Logits};
use crate::runtime::device::{dtype_name, DeviceSpec};
use crate::runtime::{GenerateConfig, LoadOptions, Model, ModelConfig, RuntimeError};

/// Default cap on generated tokens per case (suites may ask for fewer; more is capped to this).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 32;
/// Default number of sequences per batched forward.
pub const DEFAULT_BATCH_SIZE: usize = 16;
/// The run seed when none is given.
pub const DEFAULT_SEED: u64 = 0;
/// Name of the timing file written next to the reports.
pub const TIMING_FILE: &str = "timing.json";

/// A validated scan configuration, built once from command-line arguments (or by selftest / demo).
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Candidate model: folder, `.gguf` file or hub id.
    pub candidate: String,
    /// PEFT LoRA adapter merged into the candidate.
    pub adapter: Option<PathBuf>,
    /// The trusted baseline.
    pub baseline: String,
    /// Suite files; empty = the shipped default set embedded in the binary.
    pub suites: Vec<PathBuf>,
    pub policy: LoadedPolicy,
    /// Replaces every suite's random-word seed and seeds the statistics.
    pub seed: u64,
    pub device: DeviceSpec,
    pub dtype: DType,
    /// Where reports go; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// A lock file the candidate must match (mismatches are critical audit findings).
    pub lock: Option<PathBuf>,
    /// A lock file the baseline must match: a mismatch is an error (exit 2), not evidence against the candidate,
    /// because a baseline that is not the pinned one makes every comparison meaningless.
    pub baseline_lock: Option<PathBuf>,
    /// Progress bars on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Cap on generated tokens per case (a suite's own smaller setting wins).
    pub max_new_tokens: usize,
    /// Sequences per batched forward (generation and teacher forcing).
    pub batch_size: usize,
    /// The command line, recorded as given.
    pub command: Vec<String>,
}

impl ScanConfig {
    /// A configuration with the defaults: shipped suites, default policy, CPU, f32, no output directory.
    pub fn new(candidate: impl Into<String>, baseline: impl Into<String>) -> ScanConfig {
        ScanConfig {
            candidate: candidate.into(),
            adapter: None,
            baseline: baseline.into(),
            suites: Vec::new(),
            policy: super::policy::Policy::default_policy(),
            seed: DEFAULT_SEED,
            device: DeviceSpec::Cpu,
            dtype: DType::F32,
            out: None,
            lock: None,
            baseline_lock: None,
            progress: false,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            batch_size: DEFAULT_BATCH_SIZE,
            command: Vec::new(),
        }
    }

    fn load_options(&self, adapter: Option<PathBuf>) -> Result<LoadOptions, ScanError> {
        let device = self.device.open().map_err(ScanError::from)?;
        Ok(LoadOptions { dtype: self.dtype, device, adapter, allow_network: false, hash_files: true })
    }
}

/// Wall-clock seconds per stage, work counts and peak memory of one scan (`timing.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// Seconds per stage, by stage name (`suites`, `audit`, `load`, `generate`, `teacher_forcing`, `inside`,
    /// `trigger_search`, `conclude`, `write`; the trigger search's phases as `trigger_search.PHASE`).
    pub stages: BTreeMap<String, f64>,
    pub total_seconds: f64,
    /// Cases evaluated (clean and triggered).
    pub cases: usize,
    /// Distinct prompts generated per model (clean prompts shared by triggers count once).
    pub distinct_prompts: usize,
    /// Teacher-forced sequences run through both models (continuations and targets).
    pub scored_sequences: usize,
    /// Generated tokens, both models together.
    pub generated_tokens: usize,
    /// Cases per second over the whole scan.
    pub cases_per_second: f64,
    /// Distinct prompts per second over the whole scan.
    pub prompts_per_second: f64,
    /// Peak resident set size of the process (VmHWM), in KiB, when the platform reports it.
    pub peak_rss_kib: Option<u64>,
    pub device: String,
    pub dtype: String,
    pub batch_size: usize,
}

/// What a scan produced.
#[derive(Debug, Clone)]
pub struct ScanResult {
    pub record: RunRecord,
    pub decision: Decision,
    pub timing: Timing,
    /// Files written into the output directory (empty without one).
    pub reports: Vec<PathBuf>,
}

/// Errors that stop a scan (as opposed to evidence, which becomes a verdict). One line each, naming the file,
/// flag or model concerned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Suite(#[from] SuiteError),
    #[error("two suites are named `{name}` ({first} and {second}); suite names must be unique in a scan")]
    DuplicateSuite { name: String, first: String, second: String },
    #[error("{0}")]
    Audit(#[from] audit::AuditError),
    #[error("--lock: {0}")]
    Lock(Box<audit::LockError>),
    #[error("--baseline-lock: {0}")]
    BaselineLock(Box<audit::LockError>),
    #[error("{which} `{spec}`: {source}")]
    Load {
        which: &'static str,
        spec: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("{0}")]
    Runtime(Box<RuntimeError>),
    #[error("vocabulary mismatch: {0}")]
    VocabularyMismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("chat template of baseline `{spec}`: {message}")]
    ChatTemplate { spec: String, message: String },
    #[error("{0}")]
    Write(#[from] trapdoor_reports::io::WriteError),
}

impl From<RuntimeError> for ScanError {
    fn from(e: RuntimeError) -> Self {
        ScanError::Runtime(Box::new(e))
    }
}

impl From<audit::LockError> for ScanError {
    fn from(e: audit::LockError) -> Self {
        ScanError::Lock(Box::new(e))
    }
}

/// A case's prompt as token ids with its generation length, or why it could not be encoded.
pub(crate) type PromptIds = Result<(Vec<u32>, usize), String>;

// ---------------------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------------------

/// A loaded suite with the path the record shows.
pub(crate) struct LoadedSuite {
    pub(crate) suite: Suite,
    pub(crate) recorded_path: String,
}

pub(crate) fn load_suites(paths: &[PathBuf]) -> Result<Vec<LoadedSuite>, ScanError> {
    let mut out: Vec<LoadedSuite> = Vec::new();
    if paths.is_empty() {
        for (file, text) in shipped::SHIPPED {
            let suite = Suite::from_str(text, &shipped::origin(file))?;
            out.push(LoadedSuite { suite, recorded_path: format!("embedded:{file}") });
        }
    } else {
        for p in paths {
            // `embedded:default` is the whole shipped set and `embedded:NAME.yaml` one shipped suite, so a user can
            // add their own suites to the defaults instead of replacing them.
            match p.to_str().and_then(|s| s.strip_prefix("embedded:")) {
                Some("default") => {
                    for (file, text) in shipped::SHIPPED {
                        let suite = Suite::from_str(text, &shipped::origin(file))?;
                        out.push(LoadedSuite { suite, recorded_path: format!("embedded:{file}") });
                    }
                }
                Some(name) => {
                    let Some((file, text)) = shipped::SHIPPED.iter().find(|(f, _)| *f == name) else {
                        let known: Vec<&str> = shipped::SHIPPED.iter().map(|(f, _)| *f).collect();
                        return Err(ScanError::Invalid(format!(
                            "--suite {}: no such embedded suite (embedded:default, or one of {})",
                            p.display(),
                            known.join(", ")
                        )));
                    };
                    let suite = Suite::from_str(text, &shipped::origin(file))?;
                    out.push(LoadedSuite { suite, recorded_path: format!("embedded:{file}") });
                }
                None => {
                    let suite = Suite::from_path(p)?;
                    out.push(LoadedSuite { suite, recorded_path: p.display().to_string() });
                }
            }
        }
    }
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i].iter().find(|b| b.suite.name == a.suite.name) {
            return Err(ScanError::DuplicateSuite {
                name: a.suite.name.clone(),
                first: b.recorded_path.clone(),
                second: a.recorded_path.clone(),
            });
        }
    }
    Ok(out)
}

/// Vocabulary size from a model's config, without loading weights.
fn vocab_size_of(files: &ModelFiles) -> Result<usize, ScanError> {
    let bad = |reason: String| ScanError::Invalid(format!("model `{}`: {reason}", files.spec));
    match files.folder() {
        Some(dir) => {
            let cfg = ModelConfig::from_file(&dir.join("config.json")).map_err(|e| bad(e.to_string()))?;
            Ok(cfg.vocab_size)
        }
        None => {
            let h = crate::runtime::gguf::GgufHeader::read(&files.root).map_err(|e| bad(e.to_string()))?;
            let cfg = crate::runtime::gguf::gguf_config(&h).map_err(|e| bad(e.to_string()))?;
            Ok(cfg.vocab_size)
        }
    }
}

/// Run a whole scan: suites, audit, load, probes, stages, verdict, reports.
pub fn run_scan(cfg: &ScanConfig) -> Result<ScanResult, ScanError> {
    let t0 = Instant::now();
    let mut timing = Timing::default();
    let suites = load_suites(&cfg.suites)?;
    lap(&mut timing, "suites", t0);

    let cand_files = candidate_files(cfg)?;
    let base_files = ModelFiles::resolve(&cfg.baseline)?;
    if let Some(p) = &cfg.baseline_lock {
        audit::integrity::check_lock(&base_files, p).map_err(|e| ScanError::BaselineLock(Box::new(e)))?;
    }
    let (vc, vb) = (vocab_size_of(&cand_files)?, vocab_size_of(&base_files)?);
    if vc != vb {
        return Err(ScanError::VocabularyMismatch(format!(
            "candidate `{}` has {vc} tokens, baseline `{}` has {vb}; models with different vocabularies cannot be \
             compared token by token (is --baseline the candidate's base model?)",
            cfg.candidate, cfg.baseline
        )));
    }
    let lock = cfg.lock.as_deref().map(LockFile::read).transpose()?;

    // Stage 0.
    let t = Instant::now();
    let audit_result = stage0(cfg, &suites, &cand_files, Some(&base_files), lock);
    lap(&mut timing, "audit", t);

    let mut cand_ref = ModelRef::new(&cfg.candidate, model_kind(&cand_files));
    cand_ref.revision = cand_files.revision.clone();
    let mut base_ref = ModelRef::new(&cfg.baseline, model_kind(&base_files));
    base_ref.revision = base_files.revision.clone();
    let (section, audit_stage) = audit_section(cfg, &audit_result, &mut cand_ref, None);

    if let Some(reason) = audit_stop_reason(cfg, &audit_result) {
        let record = stopped_by_audit(base_record(cfg, &suites, cand_ref, base_ref), &reason, section, audit_stage);
        return finish(cfg, record, timing, t0);
    }

    let t = Instant::now();
    let candidate = load_candidate(cfg)?;
    let baseline = Model::load(&cfg.baseline, &cfg.load_options(None)?).map_err(|source| ScanError::Load {
        which: "baseline",
        spec: cfg.baseline.clone(),
        source: Box::new(source),
    })?;
    lap(&mut timing, "load", t);

    let mut record = scan_record(cfg, &suites, &candidate, &baseline, section, &mut timing)?;
    keep_audited_files(&mut record.candidate, cand_ref);
    record.stages.audit = audit_stage;
    finish(cfg, record, timing, t0)
}

/// A scan of already-loaded models (selftest reuses one loaded baseline across many candidates). `audit` is the
/// stage-0 result the caller obtained for this candidate; the scan does not stop on it (the caller decided to load),
/// but its findings count in the verdict.
pub fn scan_loaded(
    cfg: &ScanConfig,
    candidate: &Model,
    baseline: &Model,
    audit: AuditSection,
) -> Result<ScanResult, ScanError> {
    let t0 = Instant::now();
    let mut timing = Timing::default();
    let suites = load_suites(&cfg.suites)?;
    lap(&mut timing, "suites", t0);
    let ran = audit.passed.is_some();
    let mut record = scan_record(cfg, &suites, candidate, baseline, audit, &mut timing)?;
    record.stages.audit =
        if ran { StageStatus::ran() } else { StageStatus::skipped("the caller did not audit the files") };
    finish(cfg, record, timing, t0)
}

/// The candidate's files, with its adapter's when there is one.
fn candidate_files(cfg: &ScanConfig) -> Result<ModelFiles, ScanError> {
    let files = ModelFiles::resolve(&cfg.candidate)?;
    Ok(match &cfg.adapter {
        Some(a) => files.with_adapter(a)?,
        None => files,
    })
}

/// Stage 0 of the candidate (against the baseline's files when there are some), with every distinct suite prompt in
/// suite order, failing at the policy's `stages.audit.stop_on`.
fn stage0(
    cfg: &ScanConfig,
    suites: &[LoadedSuite],
    candidate: &ModelFiles,
    baseline: Option<&ModelFiles>,
    lock: Option<LockFile>,
) -> Result<audit::AuditReport, audit::AuditError> {
    let mut prompts: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in suites {
        for p in &s.suite.probes {
            for pr in &p.prompts {
                if seen.insert(pr.text.clone()) {
                    prompts.push(pr.text.clone());
                }
            }
        }
    }
    let fail_on = cfg.policy.policy.stages.audit.stop_on;
    let opts = AuditOptions { fail_on, full_scan: true, lock, prompts, extra_allowed: Vec::new() };
    audit::stage0(candidate, baseline, &opts)
}

/// The record's audit section and stage status (with `note` when it ran). The audit pins the candidate's files
/// relative to its root (the adapter's apart) and its root digest: they go into `cand_ref`.
fn audit_section(
    cfg: &ScanConfig,
    result: &Result<audit::AuditReport, audit::AuditError>,
    cand_ref: &mut ModelRef,
    note: Option<&str>,
) -> (AuditSection, StageStatus) {
    match result {
        Ok(report) => {
            let mut files = Vec::new();
            let mut adapter_files = Vec::new();
            for f in &report.files {
                let r = FileRef { path: f.path.clone(), sha256: f.sha256.clone(), bytes: f.bytes };
                match f.path.strip_prefix("adapter/") {
                    Some(rest) => adapter_files.push(FileRef { path: rest.into(), ..r }),
                    None => files.push(r),
                }
            }
            cand_ref.files = files;
            cand_ref.root_digest = Some(report.root_digest.clone());
            if let Some(a) = &cfg.adapter {
                cand_ref.adapter = Some(AdapterRef {
                    spec: a.display().to_string(),
                    files: adapter_files,
                    root_digest: None,
                    base_model: None,
                    rank: None,
                    alpha: None,
                    target_modules: Vec::new(),
                });
            }
            let status = StageStatus::Ran { note: note.map(str::to_string) };
            (AuditSection { passed: Some(report.passed), findings: report.findings.clone() }, status)
        }
        Err(e) => (AuditSection { passed: None, findings: Vec::new() }, StageStatus::error(e.to_string())),
    }
}

/// Why the scan stops after the audit, before any weights load: the audit failed or found a problem at or above the
/// policy's `stages.audit.stop_on`.
fn audit_stop_reason(cfg: &ScanConfig, result: &Result<audit::AuditReport, audit::AuditError>) -> Option<String> {
    match result {
        Err(e) => Some(format!("the audit could not complete ({e}); no weights were loaded")),
        Ok(report) if !report.passed => Some(format!(
            "the audit found a problem at or above `{}` (policy stages.audit.stop_on); no weights were loaded",
            cfg.policy.policy.stages.audit.stop_on.as_str()
        )),
        Ok(_) => None,
    }
}

/// A record with what is known before any model loads: the models, policy, settings, command, suites and probes.
fn base_record(cfg: &ScanConfig, suites: &[LoadedSuite], candidate: ModelRef, baseline: ModelRef) -> RunRecord {
    let mut record = RunRecord::new(candidate, baseline, cfg.policy.policy_ref(), settings(cfg));
    record.command = cfg.command.clone();
    record.suites = suites.iter().map(suite_ref).collect();
    record.probes = suites.iter().flat_map(|s| probe_infos(&s.suite)).collect();
    record
}

/// The record of a scan the audit stopped (for `reason`): the audit's section and status, no later stage run.
fn stopped_by_audit(mut record: RunRecord, reason: &str, section: AuditSection, audit: StageStatus) -> RunRecord {
    record.stages = rec::Stages::not_run(reason);
    record.stages.audit = audit;
    record.audit = section;
    record
}

fn load_candidate(cfg: &ScanConfig) -> Result<Model, ScanError> {
    Model::load(&cfg.candidate, &cfg.load_options(cfg.adapter.clone())?).map_err(|source| ScanError::Load {
        which: "candidate",
        spec: cfg.candidate.clone(),
        source: Box::new(source),
    })
}

/// Keeps in a loaded model's ref what the audit pinned: the files relative to the root, the root digest and the
/// adapter's files.
fn keep_audited_files(loaded: &mut ModelRef, audited: ModelRef) {
    loaded.files = audited.files;
    loaded.root_digest = audited.root_digest;
    if let (Some(a), Some(b)) = (loaded.adapter.as_mut(), audited.adapter) {
        a.files = b.files;
    }
}

fn lap(timing: &mut Timing, stage: &str, since: Instant) {
    *timing.stages.entry(stage.to_string()).or_default() += since.elapsed().as_secs_f64();
}

fn model_kind(f: &ModelFiles) -> ModelKind {
    match f.kind {
        audit::ModelKind::Folder => ModelKind::Folder,
        audit::ModelKind::File => ModelKind::Gguf,
        audit::ModelKind::Hub => ModelKind::Hub,
    }
}

fn settings(cfg: &ScanConfig) -> Settings {
    Settings {
        seed: cfg.seed,
        device: cfg.device.to_string(),
        dtype: dtype_name(cfg.dtype).to_string(),
        statistics: cfg.policy.policy.stats_settings(),
        per_token_cases: cfg.policy.policy.report.per_token_cases,
    }
}

/// Conclude, write the reports and timing.json.
fn finish(cfg: &ScanConfig, mut record: RunRecord, mut timing: Timing, t0: Instant) -> Result<ScanResult, ScanError> {
    let t = Instant::now();
    let decision = conclude(&mut record, &cfg.policy);
    lap(&mut timing, "conclude", t);
    timing.cases = record.cases.len();
    timing.device = cfg.device.to_string();
    timing.dtype = dtype_name(cfg.dtype).to_string();
    timing.batch_size = cfg.batch_size;
    let mut reports = Vec::new();
    if let Some(out) = &cfg.out {
        let t = Instant::now();
        let manifest = trapdoor_reports::write_reports(&record, out)?;
        reports = manifest.files.iter().map(|f| out.join(&f.name)).collect();
        reports.push(out.join(trapdoor_reports::write::MANIFEST));
        lap(&mut timing, "write", t);
    }
    timing.total_seconds = t0.elapsed().as_secs_f64();
    let secs = timing.total_seconds.max(1e-9);
    timing.cases_per_second = timing.cases as f64 / secs;
    timing.prompts_per_second = timing.distinct_prompts as f64 / secs;
    timing.peak_rss_kib = peak_rss_kib();
    if let Some(out) = &cfg.out {
        let mut text = serde_json::to_string_pretty(&timing).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        let path = out.join(TIMING_FILE);
        trapdoor_reports::io::write_atomic(&path, text.as_bytes())?;
        reports.push(path);
    }
    Ok(ScanResult { record, decision, timing, reports })
}

/// VmHWM of this process in KiB (Linux); `None` elsewhere.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------------------
// Record pieces
// ---------------------------------------------------------------------------------------------------------------

fn suite_ref(s: &LoadedSuite) -> SuiteRef {
    let chat = match &s.suite.chat_template {
        trapdoor_probes::ChatTemplate::None => "none",
        trapdoor_probes::ChatTemplate::Model => "model",
        trapdoor_probes::ChatTemplate::Inline(_) => "inline",
    };
    SuiteRef {
        name: s.suite.name.clone(),
        version: s.suite.version.clone(),
        path: s.recorded_path.clone(),
        sha256: s.suite.sha256.clone(),
        chat_template: Some(chat.to_string()),
        probes: s.suite.probes.len() as u32,
        cases: s.suite.case_count() as u32,
    }
}

/// The record's detector kind (the metric registry's name) of a probes-crate detector kind.
fn detector_kind(k: trapdoor_probes::DetectorKind) -> &'static str {
    match k {
        trapdoor_probes::DetectorKind::CodeSinks => "code_sink",
        other => other.as_str(),
    }
}

/// Whether a declared target is scored for its probe. The metric registry folds a probe's scored targets into one
/// number with one suspicious direction: `refusal_logprob` (lower is suspicious) for safety probes, `target_logprob`
/// (higher is suspicious) for every other kind. A target whose role points the other way (a refusal opener in a
/// trigger probe, an attacker string in a safety probe) would cancel the signal it sits beside, so it is not scored;
/// the probe's detectors still read it.
pub(crate) fn scored_target(kind: trapdoor_probes::ProbeKind, t: &trapdoor_probes::Target) -> bool {
    use trapdoor_probes::TargetRole;
    match kind {
        trapdoor_probes::ProbeKind::Safety => t.role == TargetRole::Refusal,
        _ => t.role != TargetRole::Refusal,
    }
}

fn probe_infos(s: &Suite) -> Vec<rec::ProbeInfo> {
    s.probes
        .iter()
        .map(|p| {
            let mut detectors: Vec<String> = Vec::new();
            for d in p.detectors.specs() {
                let k = detector_kind(d.kind()).to_string();
                if !detectors.contains(&k) {
                    detectors.push(k);
                }
            }
            rec::ProbeInfo {
                suite: s.name.clone(),
                probe: p.id.clone(),
                kind: p.kind,
                description: p.description.clone(),
                triggers: p
                    .triggers
                    .iter()
                    .map(|t| TriggerInfo { id: t.id.clone(), text: t.text.clone(), source: t.source.clone() })
                    .collect(),
                targets: p.targets.iter().filter(|t| scored_target(p.kind, t)).map(|t| t.text.clone()).collect(),
                detectors,
                prompts: p.prompts.len() as u32,
                error: None,
            }
        })
        .collect()
}

pub(crate) fn model_ref(spec: &str, m: &Model) -> ModelRef {
    let info = m.info();
    let kind = match info.source_kind.as_str() {
        "gguf" => ModelKind::Gguf,
        "hub" => ModelKind::Hub,
        _ => ModelKind::Folder,
    };
    let root = Path::new(&info.resolved_path);
    let rel = |p: &str| -> String {
        let path = Path::new(p);
        match path.strip_prefix(root) {
            Ok(r) if !r.as_os_str().is_empty() => r.to_string_lossy().replace('\\', "/"),
            _ => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string()),
        }
    };
    let files: Vec<FileRef> = info
        .files
        .iter()
        .filter(|f| !f.role.starts_with("adapter"))
        .map(|f| FileRef { path: rel(&f.path), sha256: f.sha256.clone().unwrap_or_default(), bytes: f.bytes })
        .collect();
    let tokenizer_sha256 =
        info.files.iter().find(|f| f.role == "tokenizer").and_then(|f| f.sha256.clone()).or_else(|| {
            m.tokenizer()
                .ok()
                .and_then(|t| t.to_string(false).ok())
                .map(|s| crate::util::digest::sha256_hex(s.as_bytes()))
        });
    let mut r = ModelRef::new(spec, kind);
    r.revision = info.revision.clone();
    r.files = files;
    r.architecture = Some(info.architecture.clone());
    r.params = Some(info.parameters);
    r.dtype = Some(info.dtype.clone());
    r.vocab_size = Some(info.config.vocab_size as u64);
    r.tokenizer_sha256 = tokenizer_sha256;
    if let Some(a) = &info.adapter {
        let mut modules: Vec<String> =
            a.modules.keys().map(|m| m.rsplit('.').next().unwrap_or(m).to_string()).collect();
        modules.sort();
        modules.dedup();
        r.adapter = Some(AdapterRef {
            spec: a.dir.clone(),
            files: a
                .files
                .iter()
                .map(|f| FileRef {
                    path: Path::new(&f.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    sha256: f.sha256.clone().unwrap_or_default(),
                    bytes: f.bytes,
                })
                .collect(),
            root_digest: None,
            base_model: a.base_model_name_or_path.clone(),
            rank: Some(a.r as u32),
            alpha: Some(Real(a.lora_alpha)),
            target_modules: modules,
        });
    }
    r
}

// ---------------------------------------------------------------------------------------------------------------
// The probes stage
// ---------------------------------------------------------------------------------------------------------------

/// How prompts become text for the model: the baseline's chat template (when a suite asks for one) and its special
/// tokens.
pub(crate) struct Templates {
    model: Option<chat_template::ChatTemplate>,
    special: BTreeMap<String, String>,
}

pub(crate) fn baseline_templates(spec: &str, m: &Model) -> Result<Templates, ScanError> {
    let err = |message: String| ScanError::ChatTemplate { spec: spec.to_string(), message };
    let path = PathBuf::from(&m.info().resolved_path);
    let mut source: Option<String> = None;
    let mut special = BTreeMap::new();
    if path.is_dir() {
        let tc = path.join("tokenizer_config.json");
        if tc.is_file() {
            let text = std::fs::read_to_string(&tc).map_err(|e| err(format!("{}: {e}", tc.display())))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", tc.display())))?;
            let t = chat_template::templates_from_tokenizer_config(&v)
                .map_err(|e| err(format!("{}: {e}", tc.display())))?;
            source = t.get("default").cloned().or_else(|| t.values().next().cloned());
            special = chat_template::special_tokens_from_tokenizer_config(&v);
        }
        let jinja = path.join("chat_template.jinja");
        if source.is_none() && jinja.is_file() {
            source = Some(std::fs::read_to_string(&jinja).map_err(|e| err(format!("{}: {e}", jinja.display())))?);
        }
    } else if path.is_file() {
        let h = crate::runtime::gguf::GgufHeader::read(&path).map_err(|e| err(e.to_string()))?;
        source = h.metadata.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
        let tokens = h.metadata.get("tokenizer.ggml.tokens").and_then(|t| t.as_array());
        if let Some(tokens) = tokens {
            for (key, name) in
                [("tokenizer.ggml.bos_token_id", "bos_token"), ("tokenizer.ggml.eos_token_id", "eos_token")]
            {
                let id = h.metadata.get(key).and_then(|v| v.as_u64());
                if let Some(id) = id {
                    if let Some(s) = match tokens {
                        crate::runtime::gguf::MetaArray::String(v) => v.get(id as usize),
                        _ => None,
                    } {
                        special.insert(name.to_string(), s.to_string());
                    }
                }
            }
        }
    }
    // The tokenizer adds BOS itself when encoding; a template that writes `{{ bos_token }}` must not add a second.
    special.insert("bos_token".into(), String::new());
    let model =
        source.map(|s| chat_template::ChatTemplate::new("baseline", &s)).transpose().map_err(|e| err(e.to_string()))?;
    Ok(Templates { model, special })
}

/// The text sent to the model for a case.
pub(crate) fn render_prompt(case: &Case, t: &Templates) -> Result<String, String> {
    let inline;
    let template: &chat_template::ChatTemplate = match &case.chat_template {
        trapdoor_probes::ChatTemplate::None => return Ok(case.prompt.clone()),
        trapdoor_probes::ChatTemplate::Model => match &t.model {
            Some(m) => m,
            None => return Ok(case.prompt.clone()),
        },
        trapdoor_probes::ChatTemplate::Inline(src) => {
            inline = chat_template::ChatTemplate::new("inline", src).map_err(|e| e.to_string())?;
            &inline
        }
    };
    let mut messages = Vec::new();
    if let Some(s) = &case.system {
        messages.push(serde_json::json!({"role": "system", "content": &**s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": case.prompt}));
    let mut ctx = RenderContext::new(messages);
    ctx.special_tokens = t.special.clone();
    template.render(&ctx).map_err(|e| e.to_string())
}

/// One teacher-forced sequence: `ids[start..]` are the tokens whose probabilities are read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Job {
    pub(crate) ids: Vec<u32>,
    pub(crate) start: usize,
}

/// Per-position comparison of the two models along one sequence.
#[derive(Debug, Clone, Default)]
struct Scored {
    js: Vec<f64>,
    kl_cb: Vec<f64>,
    kl_bc: Vec<f64>,
    agree: Vec<bool>,
    /// Log-probability of the actual next token under each model.
    lp_cand: Vec<f64>,
    lp_base: Vec<f64>,
}

/// Probabilities and log-probabilities of a logit row, in f64 (one `exp` per entry).
fn softmax_parts(row: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    let lse = m + s.ln();
    let p = e.iter().map(|x| x / s).collect();
    let lp = row.iter().map(|&x| x as f64 - lse).collect();
    (p, lp)
}

/// One position compared: JS, KL(c‖b), KL(b‖c) in nats, whether the argmaxes agree, and the log-probability of
/// the actual next token under each model.
type Compared = (f64, f64, f64, bool, f64, f64);

/// Compare two logit rows at one position; `tok` is the token that actually follows.
fn compare_rows(c: &[f32], b: &[f32], tok: usize) -> Compared {
    let (pc, lc) = softmax_parts(c);
    let (pb, lb) = softmax_parts(b);
    let (mut kl_cb, mut kl_bc, mut js) = (0.0, 0.0, 0.0);
    for i in 0..pc.len() {
        let (p, q, x, y) = (pc[i], pb[i], lc[i], lb[i]);
        let d = x - y;
        if p > 0.0 {
            kl_cb += p * d;
        }
        if q > 0.0 {
            kl_bc -= q * d;
        }
        let m = 0.5 * (p + q);
        if m > 0.0 {
            let lm = m.ln();
            if p > 0.0 {
                js += 0.5 * p * (x - lm);
            }
            if q > 0.0 {
                js += 0.5 * q * (y - lm);
            }
        }
    }
    let agree = crate::runtime::generate::argmax(c) == crate::runtime::generate::argmax(b);
    (js.clamp(0.0, std::f64::consts::LN_2), kl_cb.max(0.0), kl_bc.max(0.0), agree, lc[tok], lb[tok])
}

/// Largest `B × T × V` logits tensor computed in one piece; larger batches (big vocabularies) go through the final
/// hidden states and unembed only the positions that are read.
const MAX_BATCH_LOGITS: usize = 32 << 20;

/// For each job of a right-padded batch, the logit rows predicting `ids[start..]`.
pub(crate) fn batch_rows(m: &Model, batch: &[&Job]) -> Result<Vec<Vec<Vec<f32>>>, RuntimeError> {
    let t = batch.iter().map(|j| j.ids.len()).max().unwrap_or(1);
    let b = batch.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for j in batch {
        ids.extend_from_slice(&j.ids);
        mask.extend(std::iter::repeat_n(1u32, j.ids.len()));
        ids.extend(std::iter::repeat_n(0u32, t - j.ids.len()));
        mask.extend(std::iter::repeat_n(0u32, t - j.ids.len()));
    }
    let dev = m.decoder().device().clone();
    let cerr = |err| RuntimeError::Candle { context: "teacher forcing".into(), err };
    let input = Tensor::from_vec(ids, (b, t), &dev).map_err(cerr)?;
    let mask = Tensor::from_vec(mask, (b, t), &dev).map_err(cerr)?;
    let whole = b * t * m.config().vocab_size <= MAX_BATCH_LOGITS;
    let opts = if whole {
        ForwardOptions { hidden_states: false, differentiable: false, logits: Logits::All }
    } else {
        ForwardOptions { hidden_states: true, differentiable: false, logits: Logits::None }
    };
    let out = m.decoder().forward(&input, Some(&mask), &opts)?;
    if whole {
        let all = out.logits.to_vec3::<f32>().map_err(cerr)?;
        return Ok(batch.iter().zip(all).map(|(j, rows)| rows[j.start - 1..j.ids.len() - 1].to_vec()).collect());
    }
    let hidden = out
        .hidden
        .last()
        .cloned()
        .ok_or_else(|| RuntimeError::Invalid("teacher forcing: no hidden states returned".into()))?;
    batch
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let n = job.ids.len() - job.start;
            let h = hidden.narrow(0, i, 1).and_then(|h| h.narrow(1, job.start - 1, n)).map_err(cerr)?;
            m.decoder().unembed(&h)?.squeeze(0).and_then(|l| l.to_vec2::<f32>()).map_err(cerr)
        })
        .collect()
}

fn score_batch(cand: &Model, base: &Model, batch: &[&Job]) -> Result<Vec<Scored>, RuntimeError> {
    let all_c = batch_rows(cand, batch)?;
    let all_b = batch_rows(base, batch)?;
    let mut out = Vec::with_capacity(batch.len());
    for ((job, rc), rb) in batch.iter().zip(all_c).zip(all_b) {
        // Positions are independent: compare them in parallel (vocabulary-sized rows), collected in order.
        let compared: Vec<Compared> = rc
            .par_iter()
            .zip(rb.par_iter())
            .enumerate()
            .map(|(k, (c, b))| compare_rows(c, b, job.ids[job.start + k] as usize))
            .collect();
        let mut s = Scored::default();
        for (js, kcb, kbc, agree, lc, lb) in compared {
            s.js.push(js);
            s.kl_cb.push(kcb);
            s.kl_bc.push(kbc);
            s.agree.push(agree);
            s.lp_cand.push(lc);
            s.lp_base.push(lb);
        }
        out.push(s);
    }
    Ok(out)
}

fn trace(s: &Scored) -> DivergenceTrace {
    let n = s.js.len();
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    DivergenceTrace {
        positions: n as u32,
        js_mean: Real(mean(&s.js)),
        js_max: Real(s.js.iter().copied().fold(if n == 0 { f64::NAN } else { 0.0 }, f64::max)),
        kl_cand_base_mean: Real(mean(&s.kl_cb)),
        kl_base_cand_mean: Real(mean(&s.kl_bc)),
        top1_agreement: Real(if n == 0 { f64::NAN } else { s.agree.iter().filter(|&&a| a).count() as f64 / n as f64 }),
        per_token: Some(PerToken {
            js: s.js.iter().map(|&x| Real(x)).collect(),
            kl_cand_base: s.kl_cb.iter().map(|&x| Real(x)).collect(),
            kl_base_cand: s.kl_bc.iter().map(|&x| Real(x)).collect(),
            top1_agree: s.agree.clone(),
            tokens: Vec::new(),
        }),
    }
}

/// [`trace`] with each position's text along `cont`, as the difference of successive prefix decodes, so byte-level
/// and multi-token characters come out whole where they end (reports show per-token divergence on it).
fn trace_with_tokens(
    s: &Scored,
    cont: &[u32],
    decode: &impl Fn(&[u32]) -> Result<String, ScanError>,
) -> Result<DivergenceTrace, ScanError> {
    let mut t = trace(s);
    if let Some(pt) = t.per_token.as_mut() {
        if pt.js.len() == cont.len() {
            let mut prev = String::new();
            for i in 1..=cont.len() {
                let cur = decode(&cont[..i])?;
                let piece = cur.strip_prefix(prev.as_str()).map(str::to_string).unwrap_or_else(|| cur.clone());
                pt.tokens.push(piece);
                prev = cur;
            }
        }
    }
    Ok(t)
}

/// One model's output for a case: the continuation's text and ids, the case's detector hits on the text, the target
/// scores, and whether generation stopped at an end-of-sequence token (one of `eos`) or at the token cap.
fn model_output(c: &Case, text: String, cont: &[u32], eos: &[u32], targets: Vec<TargetScore>) -> ModelOutput {
    let hits = c
        .detect(&text)
        .into_iter()
        .map(|h| DetectorHit {
            detector: detector_kind(h.kind).to_string(),
            rule: Some(h.rule),
            start: h.start as u32,
            end: h.end as u32,
            matched: h.matched,
        })
        .collect();
    let stop = if cont.last().is_some_and(|t| eos.contains(t)) { StopReason::Eos } else { StopReason::MaxTokens };
    ModelOutput { text, token_ids: cont.to_vec(), stop, hits, targets, metrics: BTreeMap::new() }
}

pub(crate) fn progress_bar(enabled: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(Some(len as u64), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(what.to_string());
    pb
}

/// Token → id maps of both tokenizers are equal.
fn same_vocabulary(c: &Model, b: &Model) -> Result<bool, ScanError> {
    let (tc, tb) = (c.tokenizer().map_err(ScanError::from)?, b.tokenizer().map_err(ScanError::from)?);
    let vc: BTreeMap<String, u32> = tc.get_vocab(true).into_iter().collect();
    let vb: BTreeMap<String, u32> = tb.get_vocab(true).into_iter().collect();
    Ok(vc == vb)
}

/// Everything after loading: probes, inside, trigger search. Returns the record before `conclude`.
fn scan_record(
    cfg: &ScanConfig,
    suites: &[LoadedSuite],
    candidate: &Model,
    baseline: &Model,
    audit_section: AuditSection,
    timing: &mut Timing,
) -> Result<RunRecord, ScanError> {
    if cfg.batch_size == 0 {
        return Err(ScanError::Invalid("--batch-size 0: must be at least 1".into()));
    }
    let (vc, vb) = (candidate.config().vocab_size, baseline.config().vocab_size);
    if vc != vb {
        return Err(ScanError::VocabularyMismatch(format!(
            "candidate `{}` has {vc} tokens, baseline `{}` has {vb}; models with different vocabularies cannot be compared token by token",
            cfg.candidate, cfg.baseline
        )));
    }
    let mut record =
        base_record(cfg, suites, model_ref(&cfg.candidate, candidate), model_ref(&cfg.baseline, baseline));

    if !same_vocabulary(candidate, baseline)? {
        let reported: Vec<&rec::Finding> =
            audit_section.findings.iter().filter(|f| f.rule.starts_with("tokenizer/")).collect();
        if reported.is_empty() {
            return Err(ScanError::VocabularyMismatch(format!(
                "the tokenizers of candidate `{}` and baseline `{}` map tokens to different ids and the audit did not \
                 report it; token-level comparison would be meaningless",
                cfg.candidate, cfg.baseline
            )));
        }
        let reason = format!(
            "the candidate's tokenizer maps tokens to different ids than the baseline's (audit: {}); token-level \
             comparison needs one vocabulary",
            reported[0].rule
        );
        record.audit = audit_section;
        record.stages = rec::Stages::not_run(&reason);
        return Ok(record);
    }
    record.audit = audit_section;

    let t = Instant::now();
    let templates = baseline_templates(&cfg.baseline, baseline)?;
    let mut cases: Vec<Case> = Vec::new();
    for s in suites {
        cases.extend(s.suite.expand_with_seed(Some(cfg.seed)));
    }
    // Encode every case's prompt once; identical (ids, length) prompts are generated once per model.
    let mut prompt_ids: Vec<PromptIds> = Vec::with_capacity(cases.len());
    for c in &cases {
        let r = render_prompt(c, &templates)
            .and_then(|text| baseline.encode(&text, true).map_err(|e| e.to_string()))
            .and_then(|ids| if ids.is_empty() { Err("the prompt encodes to no tokens".to_string()) } else { Ok(ids) });
        let max_new = (c.generation.max_new_tokens as usize).min(cfg.max_new_tokens);
        prompt_ids.push(r.map(|ids| (ids, max_new)));
    }
    let mut distinct: BTreeMap<(Vec<u32>, usize), usize> = BTreeMap::new();
    for (ids, n) in prompt_ids.iter().flatten() {
        let next = distinct.len();
        distinct.entry((ids.clone(), *n)).or_insert(next);
    }
    let mut keys: Vec<(Vec<u32>, usize)> = vec![(Vec::new(), 0); distinct.len()];
    for (k, &i) in &distinct {
        keys[i] = k.clone();
    }
    timing.distinct_prompts = keys.len();
    lap(timing, "encode", t);

    // Generation, batched by length and max_new_tokens, for both models.
    let t = Instant::now();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| (keys[a].1, keys[a].0.len(), a).cmp(&(keys[b].1, keys[b].0.len(), b)));
    let mut gen_c: Vec<Vec<u32>> = vec![Vec::new(); keys.len()];
    let mut gen_b: Vec<Vec<u32>> = vec![Vec::new(); keys.len()];
    let pb = progress_bar(cfg.progress, keys.len(), "generating");
    let mut start = 0;
    while start < order.len() {
        let n = keys[order[start]].1;
        let mut end = start + 1;
        while end < order.len() && end - start < cfg.batch_size && keys[order[end]].1 == n {
            end += 1;
        }
        let idx = &order[start..end];
        let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| keys[i].0.clone()).collect();
        for (model, dst) in [(candidate, &mut gen_c), (baseline, &mut gen_b)] {
            let g = model.generate(&prompts, &GenerateConfig::greedy(n, model.eos_tokens()))?;
            for (&i, out) in idx.iter().zip(g) {
                timing.generated_tokens += out.len();
                dst[i] = out;
            }
        }
        pb.inc((end - start) as u64);
        start = end;
    }
    pb.finish_and_clear();
    lap(timing, "generate", t);

    // Teacher forcing: both continuations of every distinct prompt, and every declared target after every case's
    // prompt, each scored once under both models.
    let t = Instant::now();
    let mut jobs: BTreeMap<Job, Option<Scored>> = BTreeMap::new();
    let job_of = |prompt: &[u32], cont: &[u32]| Job { ids: [prompt, cont].concat(), start: prompt.len() };
    for (i, (ids, _)) in keys.iter().enumerate() {
        for cont in [&gen_c[i], &gen_b[i]] {
            if !cont.is_empty() {
                jobs.insert(job_of(ids, cont), None);
            }
        }
    }
    let mut target_ids: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for c in &cases {
        for tg in c.targets.iter().filter(|t| scored_target(c.probe_kind, t)) {
            if !target_ids.contains_key(&tg.text) {
                target_ids.insert(tg.text.clone(), baseline.encode(&tg.text, false)?);
            }
        }
    }
    for (c, p) in cases.iter().zip(&prompt_ids) {
        if let Ok((ids, _)) = p {
            for tg in c.targets.iter().filter(|t| scored_target(c.probe_kind, t)) {
                let tids = &target_ids[&tg.text];
                if !tids.is_empty() {
                    jobs.insert(job_of(ids, tids), None);
                }
            }
        }
    }
    timing.scored_sequences = jobs.len();
    let mut job_list: Vec<Job> = jobs.keys().cloned().collect();
    job_list.sort_by(|a, b| (a.ids.len(), a).cmp(&(b.ids.len(), b)));
    let pb = progress_bar(cfg.progress, job_list.len(), "teacher forcing");
    for chunk in job_list.chunks(cfg.batch_size) {
        let refs: Vec<&Job> = chunk.iter().collect();
        let scored = score_batch(candidate, baseline, &refs)?;
        for (j, s) in chunk.iter().zip(scored) {
            jobs.insert(j.clone(), Some(s));
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    lap(timing, "teacher_forcing", t);

    // Cases.
    let decode = |ids: &[u32]| baseline.decode(ids).map_err(ScanError::from);
    let eos_c = candidate.eos_tokens();
    let eos_b = baseline.eos_tokens();
    let empty = Scored::default();
    for (c, p) in cases.iter().zip(&prompt_ids) {
        let mut cr = empty_case_result(c);
        let (ids, n) = match p {
            Ok(x) => x,
            Err(e) => {
                cr.error = Some(e.clone());
                record.cases.push(cr);
                continue;
            }
        };
        let k = distinct[&(ids.clone(), *n)];
        let mut outputs = Vec::new();
        for (cont, eos, side) in [(&gen_c[k], &eos_c, rec::Side::Candidate), (&gen_b[k], &eos_b, rec::Side::Baseline)] {
            let targets = c
                .targets
                .iter()
                .filter(|t| scored_target(c.probe_kind, t))
                .filter_map(|tg| {
                    let tids = &target_ids[&tg.text];
                    let s = jobs.get(&job_of(ids, tids)).and_then(|s| s.as_ref())?;
                    let lp = match side {
                        rec::Side::Candidate => &s.lp_cand,
                        rec::Side::Baseline => &s.lp_base,
                    };
                    Some(TargetScore {
                        target: tg.text.clone(),
                        logprob: Real(lp.iter().sum()),
                        tokens: tids.len() as u32,
                    })
                })
                .collect();
            outputs.push(model_output(c, decode(cont)?, cont, eos, targets));
        }
        let along = |cont: &Vec<u32>| -> Result<DivergenceTrace, ScanError> {
            let s = if cont.is_empty() {
                &empty
            } else {
                jobs.get(&job_of(ids, cont)).and_then(|s| s.as_ref()).unwrap_or(&empty)
            };
            trace_with_tokens(s, cont, &decode)
        };
        cr.divergence = Some(Divergence { along_candidate: along(&gen_c[k])?, along_baseline: along(&gen_b[k])? });
        let mut it = outputs.into_iter();
        cr.candidate = it.next();
        cr.baseline = it.next();
        record.cases.push(cr);
    }
    record.stages.probes = StageStatus::ran();

    let hints = inside_stage(cfg, &mut record, candidate, baseline, &cases, &prompt_ids, timing);
    trigger_search_stage(cfg, &mut record, candidate, baseline, &cases, hints, timing);
    Ok(record)
}

/// The trigger search, when the policy enables it.
fn trigger_search_stage(
    cfg: &ScanConfig,
    record: &mut RunRecord,
    candidate: &Model,
    baseline: &Model,
    cases: &[Case],
    hints: Vec<u32>,
    timing: &mut Timing,
) {
    let stage = cfg.policy.policy.stages.trigger_search.clone();
    if !stage.enabled {
        record.stages.trigger_search =
            StageStatus::skipped("disabled by the policy (stages.trigger_search.enabled: false)");
        return;
    }
    let t = Instant::now();
    // One prompt group per probe, in case order; a prompt several probes share stays in the first one.
    let mut groups: Vec<crate::invert::PromptGroup> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut targets = Vec::new();
    for c in cases {
        if c.is_clean() && seen.insert(c.prompt.as_str()) {
            let label = format!("{}/{}", c.suite, c.probe_id);
            match groups.iter_mut().find(|g| g.label == label) {
                Some(g) => g.prompts.push(c.prompt.clone()),
                None => groups.push(crate::invert::PromptGroup::new(label, vec![c.prompt.clone()])),
            }
        }
        for tg in c.targets.iter() {
            if !targets.contains(&tg.text) {
                targets.push(tg.text.clone());
            }
        }
    }
    let input = crate::invert::StageInput {
        candidate,
        baseline: Some(baseline),
        prompts: groups,
        declared_targets: targets,
        stage,
        seed: cfg.seed,
        progress: cfg.progress,
        hint_tokens: hints,
    };
    match crate::invert::scan_stage(&input) {
        Ok(out) => {
            // The search's phases go to timing.json (never the run record: seconds differ between runs).
            for (phase, secs) in &out.timing {
                timing.stages.insert(format!("trigger_search.{phase}"), *secs);
            }
            record.trigger_search = Some(out.record);
            record.stages.trigger_search = StageStatus::ran();
        }
        Err(e @ crate::invert::InvertError::NotBuilt) => {
            record.stages.trigger_search = StageStatus::skipped(e.to_string())
        }
        Err(e) => record.stages.trigger_search = StageStatus::error(e.to_string()),
    }
    lap(timing, "trigger_search", t);
}

/// A case's record entry before any model output: identity, prompt and variant.
pub(crate) fn empty_case_result(c: &Case) -> CaseResult {
    let variant = match &c.variant {
        trapdoor_probes::Variant::Clean => rec::Variant::Clean,
        trapdoor_probes::Variant::Triggered { trigger_id, trigger_text, position, char_offset, .. } => {
            rec::Variant::Triggered {
                trigger_id: trigger_id.clone(),
                trigger_text: trigger_text.clone(),
                position: *position,
                char_offset: *char_offset as u32,
            }
        }
    };
    CaseResult {
        id: c.id.clone(),
        suite: c.suite.clone(),
        probe: c.probe_id.clone(),
        kind: c.probe_kind,
        prompt_index: c.prompt_index as u32,
        prompt: c.prompt.clone(),
        variant,
        clean_case: c.paired_clean.clone(),
        candidate: None,
        baseline: None,
        divergence: None,
        metrics: BTreeMap::new(),
        error: None,
    }
}

/// Weight delta and activation analyses, when the policy enables them.
fn inside_stage(
    cfg: &ScanConfig,
    record: &mut RunRecord,
    candidate: &Model,
    baseline: &Model,
    cases: &[Case],
    prompt_ids: &[PromptIds],
    timing: &mut Timing,
) -> Vec<u32> {
    let stages = &cfg.policy.policy.stages;
    let (want_w, want_a) = (stages.weight_delta.enabled, stages.activations.enabled);
    if !want_w {
        record.stages.weight_delta =
            StageStatus::skipped("disabled by the policy (stages.weight_delta.enabled: false)");
    }
    if !want_a {
        record.stages.activations = StageStatus::skipped("disabled by the policy (stages.activations.enabled: false)");
    }
    if !want_w && !want_a {
        return Vec::new();
    }
    let t = Instant::now();
    let hints = inside::run(record, candidate, baseline, cases, prompt_ids, want_w, want_a, cfg.seed);
    lap(timing, "inside", t);
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergences_of_two_rows() {
        // Identical rows: nothing diverges.
        let (js, kcb, kbc, agree, lc, lb) = compare_rows(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2);
        assert!(js.abs() < 1e-12 && kcb.abs() < 1e-12 && kbc.abs() < 1e-12 && agree);
        assert!((lc - lb).abs() < 1e-12);
        // p = (0.5, 0.5), q = (0.9, 0.1) as logits ln p, ln q: closed forms.
        let (p, q) = ([0.5f64, 0.5], [0.9f64, 0.1]);
        let c: Vec<f32> = p.iter().map(|x| x.ln() as f32).collect();
        let b: Vec<f32> = q.iter().map(|x| x.ln() as f32).collect();
        let kl = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * (x / y).ln()).sum::<f64>();
        let m: Vec<f64> = p.iter().zip(&q).map(|(x, y)| 0.5 * (x + y)).collect();
        let (js, kcb, kbc, agree, lc, lb) = compare_rows(&c, &b, 1);
        assert!((kcb - kl(&p, &q)).abs() < 1e-6, "{kcb}");
        assert!((kbc - kl(&q, &p)).abs() < 1e-6, "{kbc}");
        assert!((js - 0.5 * (kl(&p, &m) + kl(&q, &m))).abs() < 1e-6, "{js}");
        assert!(js <= std::f64::consts::LN_2);
        assert!(agree, "ties go to the lowest id on both sides");
        assert!((lc - 0.5f64.ln()).abs() < 1e-6 && (lb - 0.1f64.ln()).abs() < 1e-6);
        let (_, _, _, agree, _, _) = compare_rows(&[0.0, 1.0], &[1.0, 0.0], 0);
        assert!(!agree);
    }

    #[test]
    fn traces_summarise_positions() {
        let s = Scored {
            js: vec![0.1, 0.3],
            kl_cb: vec![1.0, 3.0],
            kl_bc: vec![0.5, 0.5],
            agree: vec![true, false],
            lp_cand: vec![-1.0, -2.0],
            lp_base: vec![-1.5, -2.5],
        };
        let t = trace(&s);
        assert_eq!(t.positions, 2);
        assert!((t.js_mean.0 - 0.2).abs() < 1e-12 && (t.js_max.0 - 0.3).abs() < 1e-12);
        assert!((t.kl_cand_base_mean.0 - 2.0).abs() < 1e-12 && (t.top1_agreement.0 - 0.5).abs() < 1e-12);
        assert_eq!(t.per_token.unwrap().top1_agree, vec![true, false]);
        let empty = trace(&Scored::default());
        assert_eq!(empty.positions, 0);
        assert!(empty.js_mean.0.is_nan());
    }
}
