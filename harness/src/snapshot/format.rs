//! The on-disk format of a baseline snapshot: a folder with `manifest.json` and `snapshot.safetensors`.
//!
//! The manifest says what was recorded (model file digests, tokenizer and vocabulary digests, suites with their
//! expanded case ids, seed, device, dtype, tool version, `top_k`, the error bound) and pins the data file by sha256.
//! The data file holds, per distinct prompt of the expanded suites, the baseline's greedy continuation and at every
//! position along it the top-k next-token probabilities with their ids and the remaining mass, plus the baseline's
//! log-likelihood of every declared target after every prompt that scores it.
//!
//! Both files are written deterministically (sorted keys, tensors in name order, no timestamps) and read as
//! untrusted input: the manifest is strict (`deny_unknown_fields`, schema checked first), the data file is checked
//! tensor by tensor (exact tensor set, dtypes, shapes consistent with each other and with the manifest, ids inside
//! the vocabulary, probabilities finite and in range) and against the manifest's digest. Errors are one line naming
//! the file and the tensor or field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's schema identifier; a reader refuses any other.
pub const SCHEMA: &str = "trapdoor.baseline-snapshot/1";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const DATA_FILE: &str = "snapshot.safetensors";
/// Largest data file read (a 270M model and the default suites need a few MiB).
pub const MAX_DATA_BYTES: u64 = 1 << 30;
/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Largest `top_k` accepted.
pub const MAX_TOP_K: usize = 4096;

/// Errors reading or writing a snapshot. One line each, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{0}")]
    Write(#[from] trapdoor_reports::io::WriteError),
    /// The snapshot does not belong to the model / suites / tokenizer it is used with.
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Invalid(String),
}

/// One model file, relative to the model's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The recorded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The model argument as given to `record` (informative; identity is the digests).
    pub spec: String,
    pub architecture: String,
    pub vocab_size: u64,
    /// The files the loader read (config, weights, tokenizer), sorted by path.
    pub files: Vec<FileDigest>,
    /// sha256 of the tokenizer file, or of the serialised tokenizer when it came from GGUF metadata.
    pub tokenizer_sha256: Option<String>,
    /// sha256 of the token → id map (sorted `token\tid` lines): what token-level comparison needs to be equal.
    pub vocab_sha256: String,
    /// Token ids that end a generation (a continuation ending in one stopped at EOS).
    pub eos_tokens: Vec<u32>,
}

/// One suite as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteEntry {
    pub name: String,
    pub version: String,
    /// `embedded:FILE` or the path given.
    pub path: String,
    pub sha256: String,
    /// Every case id the suite expanded to with the snapshot's seed, in expansion order.
    pub case_ids: Vec<String>,
}

/// How far divergences estimated from the snapshot can be from the full-vocabulary values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBound {
    /// How the estimate is formed and what bounds it, in words.
    pub method: String,
    /// Largest remaining mass (outside the top k) of the baseline over all recorded positions.
    pub baseline_rest_mass_max: f64,
    /// Mean remaining mass of the baseline over all recorded positions.
    pub baseline_rest_mass_mean: f64,
    /// The JS bound's baseline half at the worst position: `ln 2 / 2 × baseline_rest_mass_max` nats; the scan adds
    /// the candidate's half (`ln 2 / 2 × p_rest`) per position.
    pub js_bound_baseline_part: f64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub tool_version: String,
    pub model: ModelEntry,
    pub suites: Vec<SuiteEntry>,
    pub seed: u64,
    pub device: String,
    pub dtype: String,
    /// The cap on generated tokens the continuations were recorded with.
    pub max_new_tokens: u64,
    /// Most tokens kept per position.
    pub top_k: u64,
    /// Tokens are kept per position until at most this much mass is left outside (or `top_k` are kept).
    pub rest_target: f64,
    pub error_bound: ErrorBound,
    /// Cases whose prompt could not be rendered or encoded, with the reason (the scan reports them as such).
    pub case_errors: BTreeMap<String, String>,
    /// Every scored target's text and its token ids under the baseline's tokenizer.
    pub target_tokens: BTreeMap<String, Vec<u32>>,
    /// Distinct prompts, recorded positions and scored (prompt, target) pairs in the data file.
    pub prompts: u64,
    pub positions: u64,
    /// Tokens kept over all positions.
    pub kept: u64,
    pub targets: u64,
    /// The data file, pinned.
    pub data: FileDigest,
}

/// Everything the comparison needs from the baseline, in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotData {
    pub top_k: usize,
    pub prompts: Vec<PromptRecord>,
    /// For every case (all suites, in the manifest's `case_ids` order) the index of its distinct prompt, or -1 when
    /// its prompt could not be encoded (see the manifest's `case_errors`).
    pub case_prompt: Vec<i64>,
    /// `(prompt index, target token ids)` → the baseline's summed log-probability of the target after the prompt.
    pub targets: BTreeMap<(u32, Vec<u32>), f64>,
}

/// One distinct prompt: its token ids, generation cap, the baseline's greedy continuation and the baseline's
/// next-token distribution (top k + remaining mass) predicting each continuation token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptRecord {
    pub ids: Vec<u32>,
    pub max_new_tokens: u32,
    pub continuation: Vec<u32>,
    pub dists: Vec<TopK>,
}

/// A next-token distribution cut to its most probable tokens (by logit, ties to the lower id, so `ids[0]` is the
/// argmax the runtime's greedy decoding picks; at most `top_k`, fewer where the rest is already small) plus the mass
/// of all the others.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopK {
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
    pub rest: f32,
}

impl SnapshotData {
    /// Total positions over all continuations.
    pub fn positions(&self) -> usize {
        self.prompts.iter().map(|p| p.dists.len()).sum()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

enum Raw {
    U32(Vec<u32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Raw {
    fn dtype(&self) -> &'static str {
        match self {
            Raw::U32(_) => "U32",
            Raw::I64(_) => "I64",
            Raw::F32(_) => "F32",
            Raw::F64(_) => "F64",
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            Raw::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Raw::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Raw::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Raw::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

fn offsets<T>(parts: impl Iterator<Item = T>, len: impl Fn(&T) -> usize) -> Vec<i64> {
    let mut out = vec![0i64];
    let mut acc = 0i64;
    for p in parts {
        acc += len(&p) as i64;
        out.push(acc);
    }
    out
}

/// The data file's bytes. Deterministic: tensors in name order, header keys sorted, header padded with spaces to a
/// multiple of 8 bytes (as the safetensors reference writer does), little-endian data.
pub fn encode_data(d: &SnapshotData) -> Vec<u8> {
    let n = d.positions();
    let p = d.prompts.len();
    let mut tensors: BTreeMap<&str, (Raw, Vec<usize>)> = BTreeMap::new();
    let prompt_ids: Vec<u32> = d.prompts.iter().flat_map(|p| p.ids.iter().copied()).collect();
    let pl = prompt_ids.len();
    tensors.insert("prompt_ids", (Raw::U32(prompt_ids), vec![pl]));
    tensors.insert("prompt_offsets", (Raw::I64(offsets(d.prompts.iter(), |p| p.ids.len())), vec![p + 1]));
    tensors.insert("case_prompt", (Raw::I64(d.case_prompt.clone()), vec![d.case_prompt.len()]));
    tensors.insert("max_new_tokens", (Raw::U32(d.prompts.iter().map(|p| p.max_new_tokens).collect()), vec![p]));
    let cont: Vec<u32> = d.prompts.iter().flat_map(|p| p.continuation.iter().copied()).collect();
    let cl = cont.len();
    tensors.insert("continuation_ids", (Raw::U32(cont), vec![cl]));
    tensors
        .insert("continuation_offsets", (Raw::I64(offsets(d.prompts.iter(), |p| p.continuation.len())), vec![p + 1]));
    let dists = || d.prompts.iter().flat_map(|p| p.dists.iter());
    let kept: usize = dists().map(|t| t.ids.len()).sum();
    tensors.insert("topk_ids", (Raw::U32(dists().flat_map(|t| t.ids.iter().copied()).collect()), vec![kept]));
    tensors.insert("topk_probs", (Raw::F32(dists().flat_map(|t| t.probs.iter().copied()).collect()), vec![kept]));
    tensors.insert("topk_offsets", (Raw::I64(offsets(dists(), |t| t.ids.len())), vec![n + 1]));
    tensors.insert("rest_mass", (Raw::F32(dists().map(|t| t.rest).collect()), vec![n]));
    let t = d.targets.len();
    tensors.insert("target_prompt", (Raw::U32(d.targets.keys().map(|(i, _)| *i).collect()), vec![t]));
    let tids: Vec<u32> = d.targets.keys().flat_map(|(_, ids)| ids.iter().copied()).collect();
    let tl = tids.len();
    tensors.insert("target_ids", (Raw::U32(tids), vec![tl]));
    tensors.insert("target_offsets", (Raw::I64(offsets(d.targets.keys(), |(_, ids)| ids.len())), vec![t + 1]));
    tensors.insert("target_logprob", (Raw::F64(d.targets.values().copied().collect()), vec![t]));

    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), serde_json::Value::String(SCHEMA.into()));
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut data = Vec::new();
    for (name, (raw, shape)) in &tensors {
        let bytes = raw.bytes();
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": raw.dtype(), "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    // serde_json keeps insertion order (preserve_order): sort explicitly so the bytes never depend on it.
    let mut sorted: Vec<(String, serde_json::Value)> = header.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = serde_json::to_string(&serde_json::Map::from_iter(sorted)).unwrap_or_default().into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    out
}

/// The manifest's bytes: pretty JSON with a trailing newline (struct fields in declaration order).
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(m).unwrap_or_default();
    s.push('\n');
    s.into_bytes()
}

/// Write a snapshot into `dir` (created if missing): the data file first, then the manifest that pins it, each
/// atomically, so a reader never sees a manifest naming data that is not there.
pub fn write(dir: &Path, manifest: &Manifest, data_bytes: &[u8]) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| SnapshotError::Io { path: dir.to_path_buf(), message: format!("cannot create folder: {e}") })?;
    trapdoor_reports::io::write_atomic(&dir.join(DATA_FILE), data_bytes)?;
    trapdoor_reports::io::write_atomic(&dir.join(MANIFEST_FILE), &encode_manifest(manifest))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------------------------

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, SnapshotError> {
    let io = |message: String| SnapshotError::Io { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    if !meta.is_file() {
        return Err(io("not a file".into()));
    }
    if meta.len() > cap {
        return Err(io(format!("{} bytes, more than the {cap} a snapshot file may have", meta.len())));
    }
    std::fs::read(path).map_err(|e| io(e.to_string()))
}

/// Parse a manifest: the schema is checked before anything else, so a snapshot from another format version gets
/// that message rather than a field error; then every field strictly (unknown fields refused).
pub fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, SnapshotError> {
    let bad = |message: String| SnapshotError::Manifest { path: path.to_path_buf(), message };
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let schema = v.get("schema").ok_or_else(|| bad("no `schema` field; not a trapdoor baseline snapshot".into()))?;
    match schema.as_str() {
        Some(SCHEMA) => {}
        Some(other) => {
            return Err(bad(format!(
                "schema `{other}` is not supported (this trapdoor reads `{SCHEMA}`); re-record it"
            )))
        }
        None => return Err(bad("`schema` is not a string".into())),
    }
    let m: Manifest = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    if m.top_k == 0 || m.top_k as usize > MAX_TOP_K {
        return Err(bad(format!("top_k {} must be between 1 and {MAX_TOP_K}", m.top_k)));
    }
    if !(m.rest_target.is_finite() && (0.0..=1.0).contains(&m.rest_target)) {
        return Err(bad(format!("rest_target {} must be between 0 and 1", m.rest_target)));
    }
    if m.model.vocab_size == 0 || m.model.vocab_size > u32::MAX as u64 {
        return Err(bad(format!("model.vocab_size {} is out of range", m.model.vocab_size)));
    }
    if m.data.path != DATA_FILE {
        return Err(bad(format!("data.path `{}`: expected `{DATA_FILE}`", m.data.path)));
    }
    Ok(m)
}

/// The data file's tensors, in name order.
const TENSORS: [&str; 14] = [
    "case_prompt",
    "continuation_ids",
    "continuation_offsets",
    "max_new_tokens",
    "prompt_ids",
    "prompt_offsets",
    "rest_mass",
    "target_ids",
    "target_logprob",
    "target_offsets",
    "target_prompt",
    "topk_ids",
    "topk_offsets",
    "topk_probs",
];

/// Parse the data file against its manifest (top_k, vocabulary size, counts).
pub fn parse_data(bytes: &[u8], m: &Manifest, path: &Path) -> Result<SnapshotData, SnapshotError> {
    let bad = |message: String| SnapshotError::Data { path: path.to_path_buf(), message };
    let st =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    if let Some(extra) = names.iter().find(|n| !TENSORS.contains(&n.as_str())) {
        return Err(bad(format!("unexpected tensor `{extra}`")));
    }
    let get = |name: &str, dtype: safetensors::Dtype, rank: usize| {
        let t = st.tensor(name).map_err(|_| bad(format!("tensor `{name}` is missing")))?;
        if t.dtype() != dtype {
            return Err(bad(format!("tensor `{name}`: dtype {:?}, expected {dtype:?}", t.dtype())));
        }
        if t.shape().len() != rank {
            return Err(bad(format!("tensor `{name}`: shape {:?}, expected rank {rank}", t.shape())));
        }
        Ok((t.shape().to_vec(), t.data().to_vec()))
    };
    let u32s = |name: &str| -> Result<Vec<u32>, SnapshotError> {
        let (_, b) = get(name, safetensors::Dtype::U32, 1)?;
        Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let i64s = |name: &str| -> Result<Vec<i64>, SnapshotError> {
        let (_, b) = get(name, safetensors::Dtype::I64, 1)?;
        Ok(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    };
    let f32s =
        |b: &[u8]| -> Vec<f32> { b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() };
    // Offsets must start at 0, never decrease and end at the flat tensor's length.
    let spans = |name: &str, off: &[i64], total: usize, count: usize| -> Result<Vec<(usize, usize)>, SnapshotError> {
        if off.len() != count + 1 {
            return Err(bad(format!("tensor `{name}`: {} entries, expected {}", off.len(), count + 1)));
        }
        if off[0] != 0 || off.windows(2).any(|w| w[1] < w[0]) || *off.last().unwrap_or(&0) != total as i64 {
            return Err(bad(format!("tensor `{name}`: offsets must rise from 0 to {total}")));
        }
        Ok(off.windows(2).map(|w| (w[0] as usize, w[1] as usize)).collect())
    };
    let vocab = m.model.vocab_size;
    let check_ids = |name: &str, ids: &[u32]| -> Result<(), SnapshotError> {
        match ids.iter().find(|&&i| i as u64 >= vocab) {
            Some(i) => Err(bad(format!("tensor `{name}`: token id {i} outside the vocabulary ({vocab})"))),
            None => Ok(()),
        }
    };

    let k = m.top_k as usize;
    let max_new = u32s("max_new_tokens")?;
    let p = max_new.len();
    if p as u64 != m.prompts {
        return Err(bad(format!("tensor `max_new_tokens`: {p} prompts, the manifest says {}", m.prompts)));
    }
    let prompt_ids = u32s("prompt_ids")?;
    check_ids("prompt_ids", &prompt_ids)?;
    let pspans = spans("prompt_offsets", &i64s("prompt_offsets")?, prompt_ids.len(), p)?;
    let cont = u32s("continuation_ids")?;
    check_ids("continuation_ids", &cont)?;
    let n = cont.len();
    if n as u64 != m.positions {
        return Err(bad(format!("tensor `continuation_ids`: {n} positions, the manifest says {}", m.positions)));
    }
    let cspans = spans("continuation_offsets", &i64s("continuation_offsets")?, n, p)?;
    let topk_ids = u32s("topk_ids")?;
    check_ids("topk_ids", &topk_ids)?;
    if topk_ids.len() as u64 != m.kept {
        return Err(bad(format!("tensor `topk_ids`: {} entries, the manifest says {}", topk_ids.len(), m.kept)));
    }
    let (shape, b) = get("topk_probs", safetensors::Dtype::F32, 1)?;
    if shape != [topk_ids.len()] {
        return Err(bad(format!("tensor `topk_probs`: shape {shape:?}, expected [{}]", topk_ids.len())));
    }
    let topk_probs = f32s(&b);
    let kspans = spans("topk_offsets", &i64s("topk_offsets")?, topk_ids.len(), n)?;
    let (shape, b) = get("rest_mass", safetensors::Dtype::F32, 1)?;
    if shape != [n] {
        return Err(bad(format!("tensor `rest_mass`: shape {shape:?}, expected [{n}]")));
    }
    let rest = f32s(&b);
    let in_unit = |x: f32| x.is_finite() && (0.0..=1.0).contains(&x);
    if let Some(i) = topk_probs.iter().position(|&x| !in_unit(x)) {
        return Err(bad(format!("tensor `topk_probs`: entry {i} is {} (not a probability)", topk_probs[i])));
    }
    if let Some(i) = rest.iter().position(|&x| !in_unit(x)) {
        return Err(bad(format!("tensor `rest_mass`: entry {i} is {} (not a probability)", rest[i])));
    }
    for (i, &(a, b)) in kspans.iter().enumerate() {
        if b == a || b - a > k {
            return Err(bad(format!("tensor `topk_offsets`: position {i} keeps {} tokens (1 to top_k {k})", b - a)));
        }
        let mut sorted = topk_ids[a..b].to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad(format!("tensor `topk_ids`: position {i} repeats a token id")));
        }
        let total: f64 = topk_probs[a..b].iter().map(|&x| x as f64).sum::<f64>() + rest[i] as f64;
        if (total - 1.0).abs() > 1e-3 {
            return Err(bad(format!("position {i}: top-k probabilities and rest mass sum to {total}, not 1")));
        }
    }

    let mut prompts = Vec::with_capacity(p);
    for j in 0..p {
        let (a, b) = pspans[j];
        let (c0, c1) = cspans[j];
        if c1 - c0 > max_new[j] as usize {
            return Err(bad(format!("prompt {j}: continuation of {} tokens exceeds its cap {}", c1 - c0, max_new[j])));
        }
        if a == b {
            return Err(bad(format!("prompt {j}: no prompt tokens")));
        }
        let dists = (c0..c1)
            .map(|i| {
                let (a, b) = kspans[i];
                TopK { ids: topk_ids[a..b].to_vec(), probs: topk_probs[a..b].to_vec(), rest: rest[i] }
            })
            .collect();
        prompts.push(PromptRecord {
            ids: prompt_ids[a..b].to_vec(),
            max_new_tokens: max_new[j],
            continuation: cont[c0..c1].to_vec(),
            dists,
        });
    }

    let case_prompt = i64s("case_prompt")?;
    let case_ids: Vec<&String> = m.suites.iter().flat_map(|s| s.case_ids.iter()).collect();
    if case_prompt.len() != case_ids.len() {
        return Err(bad(format!(
            "tensor `case_prompt`: {} entries, the manifest lists {} case ids",
            case_prompt.len(),
            case_ids.len()
        )));
    }
    for (id, &ix) in case_ids.iter().zip(&case_prompt) {
        let failed = m.case_errors.contains_key(id.as_str());
        if (ix == -1) != failed || ix < -1 || ix >= p as i64 {
            return Err(bad(format!("tensor `case_prompt`: case `{id}` has prompt index {ix} of {p}")));
        }
    }
    let tp = u32s("target_prompt")?;
    let t = tp.len();
    if t as u64 != m.targets {
        return Err(bad(format!("tensor `target_prompt`: {t} targets, the manifest says {}", m.targets)));
    }
    let tids = u32s("target_ids")?;
    check_ids("target_ids", &tids)?;
    let tspans = spans("target_offsets", &i64s("target_offsets")?, tids.len(), t)?;
    let (shape, b) = get("target_logprob", safetensors::Dtype::F64, 1)?;
    if shape != [t] {
        return Err(bad(format!("tensor `target_logprob`: shape {shape:?}, expected [{t}]")));
    }
    let lps: Vec<f64> = b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
    let mut targets = BTreeMap::new();
    for i in 0..t {
        if tp[i] as usize >= p {
            return Err(bad(format!("tensor `target_prompt`: entry {i} names prompt {} of {p}", tp[i])));
        }
        if !(lps[i].is_finite() && lps[i] <= 0.0) {
            return Err(bad(format!("tensor `target_logprob`: entry {i} is {} (not a log-probability)", lps[i])));
        }
        let (a, b) = tspans[i];
        if a == b {
            return Err(bad(format!("target {i}: no tokens")));
        }
        if targets.insert((tp[i], tids[a..b].to_vec()), lps[i]).is_some() {
            return Err(bad(format!("target {i}: the same (prompt, target) pair appears twice")));
        }
    }
    Ok(SnapshotData { top_k: k, prompts, case_prompt, targets })
}

/// A snapshot read from a folder.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub data: SnapshotData,
}

impl Snapshot {
    /// Read and check `DIR/manifest.json` and `DIR/snapshot.safetensors` (its sha256 and size must match the
    /// manifest's before it is parsed).
    pub fn read(dir: &Path) -> Result<Snapshot, SnapshotError> {
        if !dir.is_dir() {
            return Err(SnapshotError::Io { path: dir.to_path_buf(), message: "not a snapshot folder".into() });
        }
        let mp = dir.join(MANIFEST_FILE);
        let manifest = parse_manifest(&read_capped(&mp, MAX_MANIFEST_BYTES)?, &mp)?;
        let dp = dir.join(DATA_FILE);
        let bytes = read_capped(&dp, MAX_DATA_BYTES)?;
        let bad = |message: String| SnapshotError::Data { path: dp.clone(), message };
        if bytes.len() as u64 != manifest.data.bytes {
            return Err(bad(format!("{} bytes, the manifest pins {}", bytes.len(), manifest.data.bytes)));
        }
        let sha = crate::util::digest::sha256_hex(&bytes);
        if sha != manifest.data.sha256 {
            return Err(bad(format!("sha256 {sha} differs from the manifest's {}", manifest.data.sha256)));
        }
        let data = parse_data(&bytes, &manifest, &dp)?;
        Ok(Snapshot { dir: dir.to_path_buf(), manifest, data })
    }
}
