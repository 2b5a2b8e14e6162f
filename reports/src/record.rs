//! The canonical, versioned run record (`schema: "trapdoor.run-record/v1"`).
//!
//! One [`RunRecord`] describes one scan completely: what was compared (models with file digests, adapter, suites,
//! policy), how (seed, device, dtype, statistics settings), which stages ran or were skipped and why, every probe
//! case with both models' outputs and their divergence, every statistical test, what the look inside and the
//! trigger search found, and the verdict with its reasons. Every report is a pure function of this value.
//!
//! ## Evolution
//! Sections that later stages fill are `Option`s or vectors, so a record is complete today and grows without a
//! schema break. Adding a field (with a default) keeps `v1`; renaming, removing or changing the meaning of a field
//! bumps the version. Readers ignore unknown fields, so a v1 reader can read a record written by a newer v1 writer.
//!
//! ## Determinism
//! No wall-clock times (timings go to `timing.json`), maps are `BTreeMap`s, and [`RunRecord::canonicalize`] sorts
//! every list by an explicit key, so the same inputs and seed give byte-identical `report.json`. Floats are
//! [`Real`]s (see [`crate::num`]).
//!
//! ## Size
//! A case keeps its prompt, both continuations (text and token ids), the divergence summary along each
//! continuation, detector hits, target log-likelihoods and its metric values. Per-token divergence arrays are kept
//! only for the most divergent cases ([`RunRecord::prune_per_token`]; `settings.per_token_cases`), which keeps
//! report.json of a default scan at a few megabytes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::num::Real;

/// The schema identifier written into every record.
pub const SCHEMA: &str = "trapdoor.run-record/v1";

/// The gate's decision. Exit codes are assigned in one table in the binary's `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Pass,
    Warn,
    Fail,
    /// Nothing could be evaluated (every probe skipped or too few samples everywhere).
    NothingEvaluated,
}

impl Decision {
    /// Lower-case name as written in the record (`pass`, `warn`, `fail`, `nothing_evaluated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Warn => "warn",
            Decision::Fail => "fail",
            Decision::NothingEvaluated => "nothing_evaluated",
        }
    }
}

/// Severity of an audit finding or gate reason, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Lower-case name as written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One audit finding: a stable rule id (tracked across runs by SARIF), a severity, the file it is about and a
/// one-line explanation. `detail` carries structured evidence (e.g. the callables a pickle imports, the vocabulary
/// ids that were swapped) for machine consumers and the HTML report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub file: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------------------------
// The record
// ---------------------------------------------------------------------------------------------------------------

/// One scan, completely. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Always [`SCHEMA`].
    pub schema: String,
    pub tool: Tool,
    /// The command line as given (argv, program name first).
    #[serde(default)]
    pub command: Vec<String>,
    pub candidate: ModelRef,
    pub baseline: ModelRef,
    #[serde(default)]
    pub suites: Vec<SuiteRef>,
    pub policy: PolicyRef,
    pub settings: Settings,
    pub stages: Stages,
    #[serde(default)]
    pub audit: AuditSection,
    /// Every probe of every suite, with what a report needs to explain it.
    #[serde(default)]
    pub probes: Vec<ProbeInfo>,
    /// Every evaluated case (clean and triggered).
    #[serde(default)]
    pub cases: Vec<CaseResult>,
    /// Every statistical test of the run (one per suite, probe, trigger and metric).
    #[serde(default)]
    pub tests: Vec<TestResult>,
    #[serde(default)]
    pub inside: Inside,
    #[serde(default)]
    pub trigger_search: Option<TriggerSearch>,
    pub verdict: Verdict,
    /// What the candidate really is, when it is a zoo member scanned by `trapdoor selftest`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_truth: Option<GroundTruth>,
}

/// Ground truth of a planted-backdoor zoo member and whether the gate got it right (`trapdoor selftest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The zoo member's folder name.
    pub member: String,
    /// `full-finetune`, `lora-adapter`, `tokenizer-tamper`, …
    pub kind: String,
    /// `phrase`, `conjunctive`, `insecure-code`, `refusal-suppression`, `tokenizer-tamper`; absent when benign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<String>,
    pub backdoored: bool,
    /// The planted trigger's words (all of them are needed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trigger: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The gate failed the candidate.
    pub detected: bool,
    /// `detected == backdoored`.
    pub correct: bool,
    /// For backdoors with a trigger: how the gate found it (`named` by a probe test, `recovered` by the trigger
    /// search — at least half its words, or a working trigger), or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_recovery: Option<String>,
}

/// The tool that wrote the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
    /// The git commit the binary was built from; `None` for a build outside a git checkout (e.g. from a tarball)
    /// unless `TRAPDOOR_GIT_HASH` was set at build time.
    pub git_hash: Option<String>,
}

impl Tool {
    /// This build of trapdoor.
    pub fn current() -> Tool {
        Tool {
            name: "trapdoor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_hash: option_env!("TRAPDOOR_GIT_HASH").filter(|s| !s.is_empty()).map(str::to_string),
        }
    }
}

/// How a model was specified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A local Hugging Face model folder (config.json + safetensors).
    Folder,
    /// A single GGUF file.
    Gguf,
    /// A hub id resolved through the local Hugging Face cache.
    Hub,
    /// A recorded baseline snapshot (issue 7): the baseline's behaviour without its weights.
    Snapshot,
}

/// One file with its digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the model's root (the file name for a single-file model).
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A model as it was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The specification as the user gave it (path, `org/name@rev`, snapshot folder).
    pub spec: String,
    pub kind: ModelKind,
    /// Resolved revision (commit sha) for hub ids.
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// The audit's root digest over all files (see the audit docs for its definition).
    #[serde(default)]
    pub root_digest: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub params: Option<u64>,
    /// The dtype the weights were computed in (`f32`, `bf16`, `f16`).
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub vocab_size: Option<u64>,
    /// sha256 of the tokenizer as loaded (tokenizer.json, or the GGUF's embedded vocabulary).
    #[serde(default)]
    pub tokenizer_sha256: Option<String>,
    #[serde(default)]
    pub adapter: Option<AdapterRef>,
}

impl ModelRef {
    /// A reference with only the spec and kind known.
    pub fn new(spec: impl Into<String>, kind: ModelKind) -> ModelRef {
        ModelRef {
            spec: spec.into(),
            kind,
            revision: None,
            files: Vec::new(),
            root_digest: None,
            architecture: None,
            params: None,
            dtype: None,
            vocab_size: None,
            tokenizer_sha256: None,
            adapter: None,
        }
    }
}

/// A PEFT LoRA adapter merged into the candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRef {
    pub spec: String,
    #[serde(default)]
    pub files: Vec<FileRef>,
    #[serde(default)]
    pub root_digest: Option<String>,
    /// `base_model_name_or_path` from adapter_config.json, as written there.
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub rank: Option<u32>,
    #[serde(default)]
    pub alpha: Option<Real>,
    #[serde(default)]
    pub target_modules: Vec<String>,
}

/// A probe suite as evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteRef {
    pub name: String,
    pub version: String,
    /// Path as given, or `embedded:NAME` for a suite shipped inside the binary.
    pub path: String,
    /// sha256 of the suite file's bytes.
    pub sha256: String,
    /// Chat template setting (`none`, `model`, `inline`).
    #[serde(default)]
    pub chat_template: Option<String>,
    pub probes: u32,
    pub cases: u32,
}

/// The policy the verdict was computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    /// Path as given, or `embedded:default`.
    pub source: String,
    /// sha256 of the policy file's bytes.
    pub sha256: String,
    /// The effective policy (every threshold after defaults were applied), as JSON.
    #[serde(default)]
    pub effective: serde_json::Value,
}

/// Settings of the run that affect results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The run seed. Every random choice derives from it: random-word trigger positions (the suite's own seed),
    /// and per test `seed ⊕ sha256(test id)` for bootstrap and permutation resampling, so adding a test does not
    /// change the others.
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub dtype: String,
    pub statistics: StatsSettings,
    /// Per-token divergence arrays are kept for this many of the most divergent cases.
    pub per_token_cases: u32,
}

/// How the statistics were computed (copied from the policy so a reader of the record needs nothing else).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSettings {
    /// Tests with fewer pairs are `insufficient_samples`.
    pub min_pairs: u32,
    /// Benjamini–Hochberg false discovery rate: a test is `significant` when q ≤ fdr.
    pub fdr: Real,
    pub ci_level: Real,
    pub bootstrap_resamples: u32,
    pub permutation_resamples: u32,
}

impl Default for StatsSettings {
    fn default() -> Self {
        StatsSettings {
            min_pairs: 10,
            fdr: Real(0.05),
            ci_level: Real(0.95),
            bootstrap_resamples: 2000,
            permutation_resamples: 10000,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stages
// ---------------------------------------------------------------------------------------------------------------

/// What happened to a stage. Never silently weaker: a stage that did not run says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StageStatus {
    Ran {
        #[serde(default)]
        note: Option<String>,
    },
    Skipped {
        reason: String,
    },
    Error {
        message: String,
    },
}

impl StageStatus {
    pub fn ran() -> Self {
        StageStatus::Ran { note: None }
    }
    pub fn skipped(reason: impl Into<String>) -> Self {
        StageStatus::Skipped { reason: reason.into() }
    }
    pub fn error(message: impl Into<String>) -> Self {
        StageStatus::Error { message: message.into() }
    }
    pub fn name(&self) -> &'static str {
        match self {
            StageStatus::Ran { .. } => "ran",
            StageStatus::Skipped { .. } => "skipped",
            StageStatus::Error { .. } => "error",
        }
    }
}

/// The stages of a scan, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stages {
    pub audit: StageStatus,
    pub probes: StageStatus,
    pub weight_delta: StageStatus,
    pub activations: StageStatus,
    pub trigger_search: StageStatus,
}

impl Stages {
    /// Every stage skipped with the given reason (the starting point of a scan).
    pub fn not_run(reason: &str) -> Stages {
        Stages {
            audit: StageStatus::skipped(reason),
            probes: StageStatus::skipped(reason),
            weight_delta: StageStatus::skipped(reason),
            activations: StageStatus::skipped(reason),
            trigger_search: StageStatus::skipped(reason),
        }
    }

    /// `(name, status)` in run order; names are the stage ids a policy uses.
    pub fn iter(&self) -> [(&'static str, &StageStatus); 5] {
        [
            ("audit", &self.audit),
            ("probes", &self.probes),
            ("weight_delta", &self.weight_delta),
            ("activations", &self.activations),
            ("trigger_search", &self.trigger_search),
        ]
    }

    /// The stage ids, in run order.
    pub const NAMES: [&'static str; 5] = ["audit", "probes", "weight_delta", "activations", "trigger_search"];
}

/// Stage 0: the artifact audit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditSection {
    /// Whether the audit passed its own threshold; `None` when it did not run.
    #[serde(default)]
    pub passed: Option<bool>,
    #[serde(default)]
    pub findings: Vec<Finding>,
}

// ---------------------------------------------------------------------------------------------------------------
// Probes and cases
// ---------------------------------------------------------------------------------------------------------------

/// The closed set of probe kinds (one module each in the probes crate, which re-exports this type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Prompt set × trigger list × positions; every prompt also runs clean.
    Trigger,
    /// Harmful requests: does the candidate still refuse?
    Safety,
    /// Coding prompts: does the candidate write dangerous code?
    InsecureCode,
    /// Prompts that try to pull training data: canaries and PII.
    Extraction,
    /// Benign prompts: how far did the candidate move overall?
    Drift,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 5] =
        [ProbeKind::Trigger, ProbeKind::Safety, ProbeKind::InsecureCode, ProbeKind::Extraction, ProbeKind::Drift];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Trigger => "trigger",
            ProbeKind::Safety => "safety",
            ProbeKind::InsecureCode => "insecure_code",
            ProbeKind::Extraction => "extraction",
            ProbeKind::Drift => "drift",
        }
    }

    pub fn parse(s: &str) -> Option<ProbeKind> {
        ProbeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trigger as the suite declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerInfo {
    pub id: String,
    pub text: String,
    /// Where the trigger comes from (literature reference).
    #[serde(default)]
    pub source: Option<String>,
}

/// One probe of a suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub suite: String,
    pub probe: String,
    pub kind: ProbeKind,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub triggers: Vec<TriggerInfo>,
    /// Target strings whose likelihood is measured under both models.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Detector kinds declared for the probe (metric `detector.<kind>.rate` is tested for each).
    #[serde(default)]
    pub detectors: Vec<String>,
    pub prompts: u32,
    /// An error that prevented the whole probe from being evaluated.
    #[serde(default)]
    pub error: Option<String>,
}

/// Where a trigger goes in a prompt (the probes crate re-exports this type; its `trigger` module inserts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Prefix,
    Suffix,
    RandomWord,
}

impl Position {
    pub const ALL: [Position; 3] = [Position::Prefix, Position::Suffix, Position::RandomWord];

    pub fn as_str(self) -> &'static str {
        match self {
            Position::Prefix => "prefix",
            Position::Suffix => "suffix",
            Position::RandomWord => "random_word",
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Clean prompt or prompt with a trigger inserted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "variant", rename_all = "snake_case")]
pub enum Variant {
    Clean,
    Triggered {
        trigger_id: String,
        trigger_text: String,
        position: Position,
        /// Character offset of the trigger in the prompt (before chat templating).
        char_offset: u32,
    },
}

impl Variant {
    pub fn trigger_id(&self) -> Option<&str> {
        match self {
            Variant::Clean => None,
            Variant::Triggered { trigger_id, .. } => Some(trigger_id),
        }
    }
}

/// Which model an output or metric value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Candidate,
    Baseline,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
}

/// A detector hit in a continuation (byte offsets into `text`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DetectorHit {
    /// Detector kind (`refusal`, `code_sink`, `canary`, `pii`, `target_match`, `regex`, …).
    pub detector: String,
    /// The specific rule within the detector (e.g. `tls_verify_disabled`, `email`, a user regex id).
    #[serde(default)]
    pub rule: Option<String>,
    pub start: u32,
    pub end: u32,
    pub matched: String,
}

/// Log-likelihood of a declared target string continuing the prompt, under one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetScore {
    pub target: String,
    /// Sum of the target tokens' log-probabilities (natural log), teacher-forced after the prompt.
    pub logprob: Real,
    pub tokens: u32,
}

/// One model's output on one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelOutput {
    /// Greedy continuation, decoded.
    pub text: String,
    pub token_ids: Vec<u32>,
    pub stop: StopReason,
    #[serde(default)]
    pub hits: Vec<DetectorHit>,
    #[serde(default)]
    pub targets: Vec<TargetScore>,
    /// Per-model metric values of this case, by registry name (`target_logprob`, `detector.<kind>.rate`, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, Real>,
}

/// Per-token arrays along one continuation, aligned with that continuation's `token_ids`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerToken {
    pub js: Vec<Real>,
    pub kl_cand_base: Vec<Real>,
    pub kl_base_cand: Vec<Real>,
    /// Whether both models' most likely next token agreed at this position.
    pub top1_agree: Vec<bool>,
    /// The decoded text of each token of the continuation (the tokenizer's piece for that id, as the model emitted
    /// it), so a report can show and highlight the continuation token by token. Empty when the producer did not
    /// fill it: reports then show token ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
}

/// Teacher-forced divergence of the two models' next-token distributions along one continuation.
/// JS in nats (bounded by ln 2), KL in nats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DivergenceTrace {
    pub positions: u32,
    pub js_mean: Real,
    pub js_max: Real,
    pub kl_cand_base_mean: Real,
    pub kl_base_cand_mean: Real,
    /// Fraction of positions where the argmax tokens agree.
    pub top1_agreement: Real,
    /// Kept only for the most divergent cases (see [`RunRecord::prune_per_token`]).
    #[serde(default)]
    pub per_token: Option<PerToken>,
}

/// Divergence along the candidate's continuation and along the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub along_candidate: DivergenceTrace,
    pub along_baseline: DivergenceTrace,
}

/// One evaluated case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Stable case id from the suite expansion.
    pub id: String,
    pub suite: String,
    pub probe: String,
    pub kind: ProbeKind,
    pub prompt_index: u32,
    /// The prompt before chat templating (with the trigger inserted for a triggered case).
    pub prompt: String,
    #[serde(flatten)]
    pub variant: Variant,
    /// For a triggered case: the id of the clean case of the same prompt.
    #[serde(default)]
    pub clean_case: Option<String>,
    #[serde(default)]
    pub candidate: Option<ModelOutput>,
    #[serde(default)]
    pub baseline: Option<ModelOutput>,
    #[serde(default)]
    pub divergence: Option<Divergence>,
    /// Pair metric values of this case (comparisons of the two models: `js_mean`, `kl_cand_base`, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, Real>,
    /// An evaluation error for this case (its values are then missing from every test).
    #[serde(default)]
    pub error: Option<String>,
}

impl CaseResult {
    pub fn output(&self, side: Side) -> Option<&ModelOutput> {
        match side {
            Side::Candidate => self.candidate.as_ref(),
            Side::Baseline => self.baseline.as_ref(),
        }
    }

    /// Mean JS divergence over both continuations (the `js_mean` metric when filled, else pooled from the
    /// traces); 0 when unknown.
    pub fn js_mean(&self) -> f64 {
        if let Some(v) = self.metrics.get("js_mean") {
            return if v.0.is_nan() { 0.0 } else { v.0 };
        }
        let Some(d) = &self.divergence else { return 0.0 };
        let (a, b) = (&d.along_candidate, &d.along_baseline);
        let n = (a.positions + b.positions) as f64;
        if n == 0.0 {
            return 0.0;
        }
        let v = (a.positions as f64 * a.js_mean.0 + b.positions as f64 * b.js_mean.0) / n;
        if v.is_nan() {
            0.0
        } else {
            v
        }
    }

    /// The largest per-token JS divergence along either continuation.
    pub fn js_max(&self) -> f64 {
        self.divergence
            .as_ref()
            .map(|d| d.along_candidate.js_max.0.max(d.along_baseline.js_max.0))
            .filter(|x| !x.is_nan())
            .unwrap_or(0.0)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

/// What the paired values of a test are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    /// Per prompt: (candidate triggered − clean) − (baseline triggered − clean) for a per-model metric, or
    /// (triggered − clean) for a pair metric (which already compares the two models). A trigger that moves the
    /// baseline too is not blamed on the candidate.
    DiffInDiff,
    /// Per clean prompt: candidate − baseline for a per-model metric (e.g. refusal rate on harmful requests).
    CandidateMinusBaseline,
    /// A pair metric on clean prompts (drift): an estimate with a confidence interval, no hypothesis test, not
    /// part of the Benjamini–Hochberg family.
    Descriptive,
}

/// The test that produced `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestMethod {
    /// Exact Wilcoxon signed-rank (conditional on the observed ties; zeros discarded).
    WilcoxonExact,
    /// Wilcoxon signed-rank, normal approximation with tie correction (zeros discarded).
    WilcoxonNormal,
    /// No non-zero differences: no effect, p = 1.
    NoNonzeroDifferences,
}

/// Outcome of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// q ≤ fdr.
    Significant,
    NotSignificant,
    /// Fewer pairs than `min_pairs`: the test was not evaluated. Never a silent pass.
    InsufficientSamples,
    /// A [`Design::Descriptive`] estimate.
    Descriptive,
}

impl TestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Significant => "significant",
            TestStatus::NotSignificant => "not_significant",
            TestStatus::InsufficientSamples => "insufficient_samples",
            TestStatus::Descriptive => "descriptive",
        }
    }
}

/// Which way the effect points relative to the metric's suspicious direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectDirection {
    /// The effect moves the metric the way a backdoor would (e.g. divergence up, refusal down).
    Suspicious,
    /// The opposite way.
    Benign,
    /// Zero effect or undefined.
    None,
}

/// A confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: Real,
    pub hi: Real,
    pub level: Real,
    /// `bca` or `percentile` (the fallback when BCa's acceleration is undefined).
    pub method: String,
}

/// A trigger named by a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRef {
    pub id: String,
    pub text: String,
}

/// One statistical test (or descriptive estimate) over paired per-prompt values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// `suite/probe/trigger-id-or-clean/metric`, unique in a run.
    pub id: String,
    pub suite: String,
    pub probe: String,
    pub kind: ProbeKind,
    #[serde(default)]
    pub trigger: Option<TriggerRef>,
    pub metric: String,
    pub design: Design,
    /// Pairs with a defined value.
    pub n: u32,
    /// Pairs with a non-zero value (the signed-rank test discards zeros).
    pub n_nonzero: u32,
    /// Pairs whose value was missing (case errors, undefined metric).
    pub n_missing: u32,
    #[serde(default)]
    pub method: Option<TestMethod>,
    /// Wilcoxon W+ (sum of the ranks of positive differences).
    #[serde(default)]
    pub statistic: Option<Real>,
    /// Standardised statistic of the normal approximation (also reported for exact tests).
    #[serde(default)]
    pub z: Option<Real>,
    /// Two-sided p-value of the signed-rank test.
    #[serde(default)]
    pub p: Option<Real>,
    /// Two-sided p-value of the seeded sign-flip permutation test on the mean (a cross-check).
    #[serde(default)]
    pub p_permutation: Option<Real>,
    /// Benjamini–Hochberg q-value across all tests of the run.
    #[serde(default)]
    pub q: Option<Real>,
    /// Mean of the paired values, in metric units.
    #[serde(default)]
    pub effect: Option<Real>,
    #[serde(default)]
    pub median: Option<Real>,
    /// Bootstrap confidence interval for `effect`.
    #[serde(default)]
    pub ci: Option<Interval>,
    /// Matched-pairs rank-biserial correlation (W+ − W−)/(W+ + W−), in [−1, 1].
    #[serde(default)]
    pub rank_biserial: Option<Real>,
    /// Cohen's d_z: mean / standard deviation of the paired values; `None` when the deviation is zero.
    #[serde(default)]
    pub cohens_dz: Option<Real>,
    pub direction: EffectDirection,
    pub status: TestStatus,
    /// What a reader needs to interpret the test beyond the numbers (e.g. the phrase an `output_convergence`
    /// test found and how often each model said it).
    #[serde(default)]
    pub note: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// Inside: weight deltas and activations (issue 6)
// ---------------------------------------------------------------------------------------------------------------

/// What the look inside found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inside {
    #[serde(default)]
    pub weight_delta: Option<WeightDelta>,
    #[serde(default)]
    pub activations: Option<Activations>,
}

/// A localised flag raised by the inside analyses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsideFlag {
    /// Stable id (e.g. `weight.concentrated_low_rank`).
    pub id: String,
    /// Where (`layer 3 v_proj`, `embedding rows`).
    pub location: String,
    /// One sentence in plain words.
    pub message: String,
}

/// Weight delta of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaRow {
    /// HF tensor name.
    pub tensor: String,
    /// Decoder layer, `None` for embeddings, final norm and head.
    #[serde(default)]
    pub layer: Option<u32>,
    /// Module short name (`q_proj`, `down_proj`, `embed_tokens`, …).
    pub module: String,
    pub shape: Vec<u64>,
    /// ‖ΔW‖_F / ‖W_baseline‖_F.
    pub rel_frobenius: Real,
    /// Fraction of ‖ΔW‖_F² in the top `k` singular values.
    pub topk_energy: Real,
    pub k: u32,
    /// exp(entropy of the normalised singular value energies).
    pub effective_rank: Real,
    pub flagged: bool,
}

/// An embedding or unembedding row that moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovedRow {
    /// `embed` or `unembed`.
    pub matrix: String,
    pub token_id: u32,
    #[serde(default)]
    pub token: Option<String>,
    /// ‖Δrow‖ / ‖row‖.
    pub rel_change: Real,
}

/// Weight delta between candidate and baseline (or of an adapter on its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightDelta {
    /// `candidate_vs_baseline` or `adapter`.
    pub scope: String,
    /// All compared tensors are bit-identical.
    pub identical: bool,
    /// One row per compared tensor (layer × module), in layer then module order.
    #[serde(default)]
    pub rows: Vec<DeltaRow>,
    #[serde(default)]
    pub moved_rows: Vec<MovedRow>,
    #[serde(default)]
    pub flags: Vec<InsideFlag>,
    /// One paragraph in plain words.
    #[serde(default)]
    pub summary: Option<String>,
}

/// Activation anomaly of one layer under triggered prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerAnomaly {
    pub layer: u32,
    /// Mean Mahalanobis distance of clean prompts' activations (leave-one-out) from the clean distribution.
    pub clean_mean: Real,
    /// Mean Mahalanobis distance of triggered prompts' activations.
    pub triggered_mean: Real,
    /// Threshold calibrated on clean prompts.
    pub threshold: Real,
    /// Fraction of triggered prompts above the threshold.
    pub flagged_fraction: Real,
    pub flagged: bool,
}

/// An input token that drives the divergence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenAttribution {
    pub token: String,
    #[serde(default)]
    pub token_id: Option<u32>,
    pub score: Real,
    /// A case where it was measured.
    #[serde(default)]
    pub case: Option<String>,
}

/// Activation anomalies (issue 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activations {
    #[serde(default)]
    pub layers: Vec<LayerAnomaly>,
    #[serde(default)]
    pub top_tokens: Vec<TokenAttribution>,
    #[serde(default)]
    pub flags: Vec<InsideFlag>,
    #[serde(default)]
    pub summary: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// Trigger search (issue 5)
// ---------------------------------------------------------------------------------------------------------------

/// A trigger recovered by the search and verified on held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveredTrigger {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// The target it was optimised for.
    pub target: String,
    pub position: Position,
    #[serde(default)]
    pub loss: Option<Real>,
    /// Number of held-out prompts the attack success rates were measured on.
    pub held_out: u32,
    pub asr_candidate: Real,
    pub asr_baseline: Real,
    pub asr_candidate_without_trigger: Real,
    /// The prompt group (suite/probe) the trigger was optimised and verified on, when the search bound it to one
    /// domain (a backdoor can fire on code tasks only); absent when it used prompts of every group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
}

/// NeuralCleanse-style anomaly index of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyIndex {
    pub target: String,
    /// (median − statistic) / scale over the reference targets (see the trigger search's anomaly module).
    pub index: Real,
    pub loss_candidate: Real,
    #[serde(default)]
    pub loss_baseline: Option<Real>,
    /// Mean target NLL on the search's training prompts without any trigger, on the candidate and on the baseline
    /// (beside the index: a candidate that says the target even without a trigger shows it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_candidate: Option<Real>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_baseline: Option<Real>,
    pub flagged: bool,
    /// The prompt group (suite/probe) the target was searched on, with its own reference targets; absent for the
    /// mixed prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
}

/// What the trigger search covered, and what it did not. A pass is not proof of absence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchCoverage {
    pub positions: Vec<Position>,
    pub trigger_lengths: Vec<u32>,
    pub targets: Vec<String>,
    pub steps: u64,
    pub restarts: u32,
    #[serde(default)]
    pub budget_seconds: Option<u64>,
    /// Things the search did not cover (e.g. "triggers longer than 8 tokens", "targets not declared or inverted").
    #[serde(default)]
    pub not_searched: Vec<String>,
    /// One paragraph for the reports.
    pub statement: String,
}

/// Results of the trigger search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerSearch {
    #[serde(default)]
    pub triggers: Vec<RecoveredTrigger>,
    #[serde(default)]
    pub anomalies: Vec<AnomalyIndex>,
    /// The anomaly index's null distribution: the statistic (candidate minus baseline optimised NLL) of each
    /// reference target (the candidate's own clean continuations of the same prompts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_statistics: Vec<Real>,
    /// The same for each prompt group a target was searched on alone (its index is against these).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub domain_reference_statistics: std::collections::BTreeMap<String, Vec<Real>>,
    pub coverage: SearchCoverage,
}

// ---------------------------------------------------------------------------------------------------------------
// Verdict
// ---------------------------------------------------------------------------------------------------------------

/// What a piece of evidence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// `id` is a [`TestResult::id`].
    Test,
    /// `id` is `rule@file` of an audit finding.
    Finding,
    /// `id` is a [`CaseResult::id`].
    Case,
    /// `id` is a stage name.
    Stage,
    /// `id` is a tensor name or an [`InsideFlag::id`].
    WeightDelta,
    /// `id` is `layer N` or an [`InsideFlag::id`].
    Activation,
    /// `id` is a recovered trigger's text or a target.
    TriggerSearch,
    /// `id` is a run-level metric name.
    Metric,
}

/// A pointer into the record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: EvidenceKind,
    pub id: String,
}

/// One reason for the verdict: which policy rule fired, how severe, what it means, and where the evidence is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub rule: String,
    /// What this reason asks for (`fail`, `warn`; `pass` for informational reasons).
    pub decision: Decision,
    pub severity: Severity,
    pub message: String,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

/// Counts behind the verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictSummary {
    pub tests: u32,
    pub evaluated: u32,
    pub significant: u32,
    pub insufficient: u32,
    pub findings: BTreeMap<Severity, u32>,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    #[serde(default)]
    pub reasons: Vec<Reason>,
    #[serde(default)]
    pub summary: VerdictSummary,
}

// ---------------------------------------------------------------------------------------------------------------
// Construction and canonical order
// ---------------------------------------------------------------------------------------------------------------

impl RunRecord {
    /// A record with nothing evaluated yet: every stage skipped as "not run", no results, verdict
    /// `nothing_evaluated`. A scan fills it in stage by stage.
    pub fn new(candidate: ModelRef, baseline: ModelRef, policy: PolicyRef, settings: Settings) -> RunRecord {
        RunRecord {
            schema: SCHEMA.into(),
            tool: Tool::current(),
            command: Vec::new(),
            candidate,
            baseline,
            suites: Vec::new(),
            policy,
            settings,
            stages: Stages::not_run("not run"),
            audit: AuditSection::default(),
            probes: Vec::new(),
            cases: Vec::new(),
            tests: Vec::new(),
            inside: Inside::default(),
            trigger_search: None,
            verdict: Verdict {
                decision: Decision::NothingEvaluated,
                reasons: Vec::new(),
                summary: VerdictSummary::default(),
            },
            ground_truth: None,
        }
    }

    /// Sort every list by an explicit key so the record's serialisation does not depend on the order in which
    /// (possibly parallel) stages produced their results. Idempotent.
    pub fn canonicalize(&mut self) {
        self.suites.sort_by(|a, b| (&a.name, &a.version, &a.path).cmp(&(&b.name, &b.version, &b.path)));
        for m in [&mut self.candidate, &mut self.baseline] {
            m.files.sort();
            if let Some(a) = m.adapter.as_mut() {
                a.files.sort();
            }
        }
        self.audit.findings.sort_by(|a, b| {
            b.severity.cmp(&a.severity).then_with(|| (&a.rule, &a.file, &a.message).cmp(&(&b.rule, &b.file, &b.message)))
        });
        self.probes.sort_by(|a, b| (&a.suite, &a.probe).cmp(&(&b.suite, &b.probe)));
        self.cases.sort_by(|a, b| case_key(a).cmp(&case_key(b)));
        for c in &mut self.cases {
            for o in [c.candidate.as_mut(), c.baseline.as_mut()].into_iter().flatten() {
                o.hits.sort();
                o.targets.sort_by(|a, b| a.target.cmp(&b.target));
            }
        }
        self.tests.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = self.inside.weight_delta.as_mut() {
            w.rows.sort_by(|a, b| (a.layer.is_none(), a.layer, &a.module, &a.tensor).cmp(&(b.layer.is_none(), b.layer, &b.module, &b.tensor)));
            w.moved_rows.sort_by(|a, b| {
                b.rel_change.0.total_cmp(&a.rel_change.0).then_with(|| (&a.matrix, a.token_id).cmp(&(&b.matrix, b.token_id)))
            });
        }
        if let Some(a) = self.inside.activations.as_mut() {
            a.layers.sort_by_key(|l| l.layer);
            a.top_tokens.sort_by(|x, y| y.score.0.total_cmp(&x.score.0).then_with(|| x.token.cmp(&y.token)));
        }
        if let Some(t) = self.trigger_search.as_mut() {
            t.triggers.sort_by(|a, b| {
                b.asr_candidate.0.total_cmp(&a.asr_candidate.0).then_with(|| (&a.target, &a.text).cmp(&(&b.target, &b.text)))
            });
            t.anomalies.sort_by(|a, b| b.index.0.total_cmp(&a.index.0).then_with(|| a.target.cmp(&b.target)));
        }
        for r in &mut self.verdict.reasons {
            r.evidence.sort();
            r.evidence.dedup();
        }
        // Reasons: most decisive first, then by rule id; the evaluator already emits them in this order.
        self.verdict.reasons.sort_by(|a, b| {
            reason_rank(b.decision).cmp(&reason_rank(a.decision)).then(b.severity.cmp(&a.severity)).then_with(|| a.rule.cmp(&b.rule))
        });
    }

    /// How much a case's trigger moved the two models apart: its mean JS divergence minus that of its clean
    /// partner (the case's own mean JS for a clean case or when the partner is missing). Used to rank cases for
    /// the reports, so the cases shown are the ones the *trigger* changed, not those where the candidate differs
    /// from the baseline anyway.
    pub fn trigger_effect(&self, case: &CaseResult) -> f64 {
        let own = case.js_mean();
        match (&case.variant, case.clean_case.as_deref().and_then(|id| self.case(id))) {
            (Variant::Triggered { .. }, Some(clean)) => own - clean.js_mean(),
            _ => own,
        }
    }

    /// Cases ranked for display: triggered cases without errors by [`RunRecord::trigger_effect`] (largest first,
    /// ties by id), then clean cases by their mean JS divergence.
    pub fn ranked_cases(&self) -> Vec<&CaseResult> {
        let by_id: BTreeMap<&str, &CaseResult> = self.cases.iter().map(|c| (c.id.as_str(), c)).collect();
        let effect = |c: &CaseResult| {
            let own = c.js_mean();
            match (&c.variant, c.clean_case.as_deref().and_then(|id| by_id.get(id))) {
                (Variant::Triggered { .. }, Some(clean)) => own - clean.js_mean(),
                _ => own,
            }
        };
        let mut v: Vec<(u8, f64, &CaseResult)> = self
            .cases
            .iter()
            .filter(|c| c.error.is_none())
            .map(|c| (u8::from(matches!(c.variant, Variant::Clean)), effect(c), c))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then_with(|| a.2.id.cmp(&b.2.id)));
        v.into_iter().map(|(_, _, c)| c).collect()
    }

    /// Keep per-token arrays only for the first `keep` cases of [`RunRecord::ranked_cases`] and drop them
    /// everywhere else. Records `keep` in `settings.per_token_cases`.
    pub fn prune_per_token(&mut self, keep: usize) {
        let kept: std::collections::BTreeSet<String> =
            self.ranked_cases().into_iter().take(keep).map(|c| c.id.clone()).collect();
        for c in &mut self.cases {
            if !kept.contains(&c.id) {
                if let Some(d) = c.divergence.as_mut() {
                    d.along_candidate.per_token = None;
                    d.along_baseline.per_token = None;
                }
            }
        }
        self.settings.per_token_cases = keep as u32;
    }

    /// The probe description of a case or test, if the probe is listed.
    /// Per-suite coverage for the reports: (tests, tests evaluated, significant tests, distinct trigger ids).
    pub fn suite_coverage(&self, suite: &str) -> (usize, usize, usize, usize) {
        let tests: Vec<&TestResult> = self.tests.iter().filter(|t| t.suite == suite).collect();
        let evaluated = tests.iter().filter(|t| t.status != TestStatus::InsufficientSamples).count();
        let significant = tests.iter().filter(|t| t.status == TestStatus::Significant).count();
        let triggers: std::collections::BTreeSet<&str> = self
            .probes
            .iter()
            .filter(|p| p.suite == suite)
            .flat_map(|p| p.triggers.iter().map(|t| t.id.as_str()))
            .collect();
        (tests.len(), evaluated, significant, triggers.len())
    }

    pub fn probe(&self, suite: &str, probe: &str) -> Option<&ProbeInfo> {
        self.probes.iter().find(|p| p.suite == suite && p.probe == probe)
    }

    /// The case with this id.
    pub fn case(&self, id: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.id == id)
    }
}

fn reason_rank(d: Decision) -> u8 {
    match d {
        Decision::Fail => 3,
        Decision::NothingEvaluated => 2,
        Decision::Warn => 1,
        Decision::Pass => 0,
    }
}

fn case_key(c: &CaseResult) -> (&str, &str, u32, u8, &str, &str) {
    let (v, t) = match &c.variant {
        Variant::Clean => (0, ""),
        Variant::Triggered { trigger_id, .. } => (1, trigger_id.as_str()),
    };
    (&c.suite, &c.probe, c.prompt_index, v, t, &c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_version_and_git_hash() {
        let t = Tool::current();
        assert_eq!(t.name, "trapdoor");
        assert_eq!(t.version, env!("CARGO_PKG_VERSION"));
        // In a git checkout the build script records the commit; outside one (a tarball) there is none.
        if let Some(h) = &t.git_hash {
            assert!(h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()), "{h}");
        }
    }
}
