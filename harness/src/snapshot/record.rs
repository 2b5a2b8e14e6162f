//! Recording a snapshot from a loaded baseline, and checking a snapshot against a model.
//!
//! Recording runs exactly the baseline half of a scan's probes stage: the suites are expanded with the seed, each
//! case's prompt is rendered with the baseline's chat template and encoded with its tokenizer, every distinct
//! `(prompt ids, generation cap)` is generated greedily once in the scan's length-sorted batches, and the baseline is
//! teacher-forced over prompt + its own continuation (keeping the top-k of each next-token distribution) and over
//! prompt + every declared target it scores (keeping the summed log-probability).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use trapdoor_probes::Case;

use super::format::{
    ErrorBound, FileDigest, Manifest, ModelEntry, PromptRecord, SnapshotData, SnapshotError, SuiteEntry,
};
use super::topk;
use crate::gate::scan::{self, Job, LoadedSuite, PromptIds};
use crate::runtime::{GenerateConfig, Model};

/// What `record` needs besides the model.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Suite files; empty = the shipped default set (as `scan`).
    pub suites: Vec<PathBuf>,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// `None`: [`default_top_k`] of the vocabulary size.
    pub top_k: Option<usize>,
    /// Keep tokens per position until at most this mass is left (see [`topk::top_k`]).
    pub rest_target: f64,
    pub progress: bool,
    /// Recorded in the manifest (`cpu`, `cuda:0`, …) and the compute dtype name.
    pub device: String,
    pub dtype: String,
}

/// The default rest target: tokens are kept until at most this much of the baseline's mass is left outside.
pub const DEFAULT_REST_TARGET: f64 = 1e-4;

/// The default cap on kept tokens `k`: see `baselines/README.md` for the measurements behind it.
pub fn default_top_k(vocab_size: usize) -> usize {
    if vocab_size <= 65_536 {
        128
    } else {
        256
    }
}

/// The suites expanded and their prompts encoded, as the scan does it.
pub(crate) struct Prepared {
    pub(crate) suites: Vec<LoadedSuite>,
    pub cases: Vec<Case>,
    pub prompt_ids: Vec<PromptIds>,
    /// Distinct `(prompt ids, generation cap)` in first-seen order.
    pub keys: Vec<(Vec<u32>, usize)>,
    pub index: BTreeMap<(Vec<u32>, usize), usize>,
}

fn scan_err(e: scan::ScanError) -> SnapshotError {
    SnapshotError::Invalid(e.to_string())
}

fn rt_err(e: crate::runtime::RuntimeError) -> SnapshotError {
    SnapshotError::Invalid(e.to_string())
}

/// Load and expand the suites, render and encode every prompt with `model` (the baseline), deduplicate.
pub(crate) fn prepare(
    spec: &str,
    model: &Model,
    suites: &[PathBuf],
    seed: u64,
    cap: usize,
) -> Result<Prepared, SnapshotError> {
    let suites = scan::load_suites(suites).map_err(scan_err)?;
    let templates = scan::baseline_templates(spec, model).map_err(scan_err)?;
    let mut cases: Vec<Case> = Vec::new();
    for s in &suites {
        cases.extend(s.suite.expand_with_seed(Some(seed)));
    }
    let mut prompt_ids: Vec<PromptIds> = Vec::with_capacity(cases.len());
    for c in &cases {
        let r = scan::render_prompt(c, &templates)
            .and_then(|text| model.encode(&text, true).map_err(|e| e.to_string()))
            .and_then(|ids| if ids.is_empty() { Err("the prompt encodes to no tokens".to_string()) } else { Ok(ids) });
        let max_new = (c.generation.max_new_tokens as usize).min(cap);
        prompt_ids.push(r.map(|ids| (ids, max_new)));
    }
    let mut index: BTreeMap<(Vec<u32>, usize), usize> = BTreeMap::new();
    for (ids, n) in prompt_ids.iter().flatten() {
        let next = index.len();
        index.entry((ids.clone(), *n)).or_insert(next);
    }
    let mut keys: Vec<(Vec<u32>, usize)> = vec![(Vec::new(), 0); index.len()];
    for (k, &i) in &index {
        keys[i] = k.clone();
    }
    Ok(Prepared { suites, cases, prompt_ids, keys, index })
}

/// Greedy continuations of every distinct prompt, in the scan's batches (same batch composition, same numbers).
pub(crate) fn generate_all(
    model: &Model,
    keys: &[(Vec<u32>, usize)],
    batch: usize,
    progress: bool,
) -> Result<Vec<Vec<u32>>, SnapshotError> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| (keys[a].1, keys[a].0.len(), a).cmp(&(keys[b].1, keys[b].0.len(), b)));
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); keys.len()];
    let pb = scan::progress_bar(progress, keys.len(), "generating");
    let mut start = 0;
    while start < order.len() {
        let n = keys[order[start]].1;
        let mut end = start + 1;
        while end < order.len() && end - start < batch && keys[order[end]].1 == n {
            end += 1;
        }
        let idx = &order[start..end];
        let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| keys[i].0.clone()).collect();
        let g = model.generate(&prompts, &GenerateConfig::greedy(n, model.eos_tokens())).map_err(rt_err)?;
        for (&i, o) in idx.iter().zip(g) {
            out[i] = o;
        }
        pb.inc((end - start) as u64);
        start = end;
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Every job's logit rows (predicting `ids[start..]`), batched by length as the scan batches, reduced by `f` as
/// soon as its batch is computed: a large vocabulary's rows of a whole suite would not fit in memory.
pub(crate) fn rows_of<T>(
    model: &Model,
    jobs: &[Job],
    batch: usize,
    progress: bool,
    f: impl Fn(&Job, &[Vec<f32>]) -> T,
) -> Result<BTreeMap<Job, T>, SnapshotError> {
    let mut list: Vec<Job> = jobs.to_vec();
    list.sort_by(|a, b| (a.ids.len(), a).cmp(&(b.ids.len(), b)));
    list.dedup();
    let mut out = BTreeMap::new();
    let pb = scan::progress_bar(progress, list.len(), "teacher forcing");
    for chunk in list.chunks(batch) {
        let refs: Vec<&Job> = chunk.iter().collect();
        let rows = scan::batch_rows(model, &refs).map_err(rt_err)?;
        for (j, r) in chunk.iter().zip(rows) {
            out.insert(j.clone(), f(j, &r));
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// sha256 of a tokenizer's token → id map (sorted `token\tid\n` lines).
pub fn vocab_sha256(model: &Model) -> Result<String, SnapshotError> {
    let tok = model.tokenizer().map_err(rt_err)?;
    let vocab: BTreeMap<String, u32> = tok.get_vocab(true).into_iter().collect();
    let mut text = String::new();
    for (t, id) in &vocab {
        text.push_str(t);
        text.push('\t');
        text.push_str(&id.to_string());
        text.push('\n');
    }
    Ok(crate::util::digest::sha256_hex(text.as_bytes()))
}

/// What identifies a loaded model in a manifest.
pub fn model_entry(spec: &str, model: &Model) -> Result<ModelEntry, SnapshotError> {
    let r = scan::model_ref(spec, model);
    let mut files: Vec<FileDigest> =
        r.files.iter().map(|f| FileDigest { path: f.path.clone(), sha256: f.sha256.clone(), bytes: f.bytes }).collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if files.iter().any(|f| f.sha256.is_empty()) {
        return Err(SnapshotError::Invalid(format!("model `{spec}`: file digests were not computed")));
    }
    Ok(ModelEntry {
        spec: spec.to_string(),
        architecture: model.info().architecture.clone(),
        vocab_size: model.config().vocab_size as u64,
        files,
        tokenizer_sha256: r.tokenizer_sha256,
        vocab_sha256: vocab_sha256(model)?,
        eos_tokens: model.eos_tokens(),
    })
}

/// Record a snapshot of `model` (loaded with file hashing on). Returns the manifest and the data file's bytes.
pub fn record(spec: &str, model: &Model, o: &RecordOptions) -> Result<(Manifest, Vec<u8>), SnapshotError> {
    if o.batch_size == 0 || o.max_new_tokens == 0 {
        return Err(SnapshotError::Invalid("batch size and max new tokens must be at least 1".into()));
    }
    let vocab = model.config().vocab_size;
    let k = o.top_k.unwrap_or_else(|| default_top_k(vocab)).min(vocab);
    if !(o.rest_target.is_finite() && (0.0..=1.0).contains(&o.rest_target)) {
        return Err(SnapshotError::Invalid(format!("--rest-mass {}: must be between 0 and 1", o.rest_target)));
    }
    if k == 0 || k > super::format::MAX_TOP_K {
        return Err(SnapshotError::Invalid(format!("--top-k {k}: must be between 1 and {}", super::format::MAX_TOP_K)));
    }
    let model_entry = model_entry(spec, model)?;
    let prep = prepare(spec, model, &o.suites, o.seed, o.max_new_tokens)?;
    let conts = generate_all(model, &prep.keys, o.batch_size, o.progress)?;

    let job_of = |prompt: &[u32], cont: &[u32]| Job { ids: [prompt, cont].concat(), start: prompt.len() };
    let mut jobs: BTreeSet<Job> = BTreeSet::new();
    for (i, (ids, _)) in prep.keys.iter().enumerate() {
        if !conts[i].is_empty() {
            jobs.insert(job_of(ids, &conts[i]));
        }
    }
    let mut target_ids: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut target_jobs: BTreeSet<(u32, Vec<u32>)> = BTreeSet::new();
    for (c, p) in prep.cases.iter().zip(&prep.prompt_ids) {
        let Ok((ids, n)) = p else { continue };
        let pi = prep.index[&(ids.clone(), *n)] as u32;
        for tg in c.targets.iter().filter(|t| scan::scored_target(c.probe_kind, t)) {
            if !target_ids.contains_key(&tg.text) {
                target_ids.insert(tg.text.clone(), model.encode(&tg.text, false).map_err(rt_err)?);
            }
            let tids = &target_ids[&tg.text];
            if !tids.is_empty() {
                jobs.insert(job_of(ids, tids));
                target_jobs.insert((pi, tids.clone()));
            }
        }
    }
    let jobs: Vec<Job> = jobs.into_iter().collect();
    let cont_jobs: BTreeSet<Job> =
        prep.keys.iter().zip(&conts).filter(|(_, c)| !c.is_empty()).map(|((ids, _), c)| job_of(ids, c)).collect();
    // Per job: the top tokens along a continuation, and the summed log-probability of the job's own tokens.
    let rows = rows_of(model, &jobs, o.batch_size, o.progress, |j, r| {
        let dists = cont_jobs.contains(j).then(|| r.iter().map(|row| topk::top_k(row, k, o.rest_target)).collect());
        let lp: f64 = r.iter().zip(&j.ids[j.start..]).map(|(row, &t)| topk::probs(row).1[t as usize]).sum();
        (dists, lp)
    })?;

    let mut case_errors = BTreeMap::new();
    let mut case_prompt = Vec::with_capacity(prep.cases.len());
    for (c, p) in prep.cases.iter().zip(&prep.prompt_ids) {
        match p {
            Ok((ids, n)) => case_prompt.push(prep.index[&(ids.clone(), *n)] as i64),
            Err(e) => {
                case_prompt.push(-1);
                case_errors.insert(c.id.clone(), e.clone());
            }
        }
    }
    let mut data =
        SnapshotData { top_k: k, prompts: Vec::with_capacity(prep.keys.len()), case_prompt, targets: BTreeMap::new() };
    for (i, (ids, n)) in prep.keys.iter().enumerate() {
        let dists =
            if conts[i].is_empty() { Vec::new() } else { rows[&job_of(ids, &conts[i])].0.clone().unwrap_or_default() };
        data.prompts.push(PromptRecord {
            ids: ids.clone(),
            max_new_tokens: *n as u32,
            continuation: conts[i].clone(),
            dists,
        });
    }
    for (pi, tids) in &target_jobs {
        let lp = rows[&job_of(&prep.keys[*pi as usize].0, tids)].1;
        data.targets.insert((*pi, tids.clone()), lp);
    }

    let rests: Vec<f64> = data.prompts.iter().flat_map(|p| p.dists.iter().map(|d| d.rest as f64)).collect();
    let rest_max = rests.iter().copied().fold(0.0, f64::max);
    let rest_mean = if rests.is_empty() { 0.0 } else { rests.iter().sum::<f64>() / rests.len() as f64 };
    let mut suites = Vec::new();
    for s in &prep.suites {
        let case_ids = prep.cases.iter().filter(|c| c.suite == s.suite.name).map(|c| c.id.clone()).collect();
        suites.push(SuiteEntry {
            name: s.suite.name.clone(),
            version: s.suite.version.clone(),
            path: s.recorded_path.clone(),
            sha256: s.suite.sha256.clone(),
            case_ids,
        });
    }
    let bytes = super::format::encode_data(&data);
    let manifest = Manifest {
        schema: super::format::SCHEMA.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        model: model_entry,
        suites,
        seed: o.seed,
        device: o.device.clone(),
        dtype: o.dtype.clone(),
        max_new_tokens: o.max_new_tokens as u64,
        top_k: k as u64,
        rest_target: o.rest_target,
        case_errors,
        target_tokens: target_ids,
        error_bound: ErrorBound {
            method: "JS and KL from the candidate's full distribution and the baseline's top-k lumped into k+1 \
                     outcomes (top-k tokens, rest): never above the full value; JS below it by at most \
                     ln2*(p_rest+q_rest)/2 per position"
                .to_string(),
            baseline_rest_mass_max: rest_max,
            baseline_rest_mass_mean: rest_mean,
            js_bound_baseline_part: std::f64::consts::LN_2 / 2.0 * rest_max,
        },
        prompts: data.prompts.len() as u64,
        positions: data.positions() as u64,
        kept: data.prompts.iter().flat_map(|p| p.dists.iter()).map(|d| d.ids.len() as u64).sum(),
        targets: data.targets.len() as u64,
        data: FileDigest {
            path: super::format::DATA_FILE.to_string(),
            sha256: crate::util::digest::sha256_hex(&bytes),
            bytes: bytes.len() as u64,
        },
    };
    Ok((manifest, bytes))
}

/// The top-k estimate's error against the full-vocabulary divergences of `cand` and `base` along the baseline's
/// greedy continuations of the suites' prompts, for each `k` (what `trapdoor baseline measure` prints).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    spec: &str,
    base: &Model,
    cand: &Model,
    suites: &[PathBuf],
    seed: u64,
    cap: usize,
    batch: usize,
    ks: &[usize],
    rest_target: f64,
    progress: bool,
) -> Result<Vec<topk::ErrorStats>, SnapshotError> {
    let prep = prepare(spec, base, suites, seed, cap)?;
    let conts = generate_all(base, &prep.keys, batch, progress)?;
    let jobs: Vec<Job> = prep
        .keys
        .iter()
        .zip(&conts)
        .filter(|(_, c)| !c.is_empty())
        .map(|((ids, _), c)| Job { ids: [ids.as_slice(), c].concat(), start: ids.len() })
        .collect();
    let mut stats = vec![topk::ErrorStats::default(); ks.len()];
    let mut list = jobs;
    list.sort_by(|a, b| (a.ids.len(), a).cmp(&(b.ids.len(), b)));
    list.dedup();
    let pb = scan::progress_bar(progress, list.len(), "teacher forcing");
    for chunk in list.chunks(batch) {
        let refs: Vec<&Job> = chunk.iter().collect();
        let rb = scan::batch_rows(base, &refs).map_err(rt_err)?;
        let rc = scan::batch_rows(cand, &refs).map_err(rt_err)?;
        for (c, b) in rc.iter().zip(&rb) {
            topk::measure_rows(c, b, ks, rest_target, &mut stats);
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(stats)
}

/// Check that `model` is the model the snapshot was recorded from: same files (by sha256), same tokenizer, same
/// vocabulary. The error names the first mismatch.
pub fn verify_model(m: &Manifest, spec: &str, model: &Model) -> Result<(), SnapshotError> {
    let got = model_entry(spec, model)?;
    let want = &m.model;
    if got.vocab_size != want.vocab_size {
        return Err(SnapshotError::Mismatch(format!(
            "model `{spec}` has {} tokens, the snapshot was recorded from a model with {}",
            got.vocab_size, want.vocab_size
        )));
    }
    if got.vocab_sha256 != want.vocab_sha256 {
        return Err(SnapshotError::Mismatch(format!(
            "model `{spec}`: its tokenizer maps tokens to other ids than the snapshot's (vocabulary sha256 {} vs {})",
            got.vocab_sha256, want.vocab_sha256
        )));
    }
    if got.tokenizer_sha256 != want.tokenizer_sha256 {
        return Err(SnapshotError::Mismatch(format!(
            "model `{spec}`: tokenizer sha256 {} differs from the snapshot's {}",
            got.tokenizer_sha256.as_deref().unwrap_or("(none)"),
            want.tokenizer_sha256.as_deref().unwrap_or("(none)")
        )));
    }
    for w in &want.files {
        match got.files.iter().find(|f| f.path == w.path) {
            None => {
                return Err(SnapshotError::Mismatch(format!(
                    "model `{spec}` has no file `{}` (the snapshot's model has it)",
                    w.path
                )))
            }
            Some(f) if f.sha256 != w.sha256 => {
                return Err(SnapshotError::Mismatch(format!(
                    "model `{spec}`: `{}` has sha256 {}, the snapshot was recorded from {}",
                    w.path, f.sha256, w.sha256
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = got.files.iter().find(|f| !want.files.iter().any(|w| w.path == f.path)) {
        return Err(SnapshotError::Mismatch(format!(
            "model `{spec}` has file `{}` that the snapshot's model did not",
            extra.path
        )));
    }
    Ok(())
}

/// Check that the suites a scan runs (loaded and expanded with `seed`) are exactly those the snapshot recorded.
pub(crate) fn verify_suites(m: &Manifest, suites: &[LoadedSuite], seed: u64) -> Result<(), SnapshotError> {
    if seed != m.seed {
        return Err(SnapshotError::Mismatch(format!(
            "--seed {seed}: the snapshot was recorded with seed {} (random-word trigger positions differ)",
            m.seed
        )));
    }
    let names: Vec<&str> = suites.iter().map(|s| s.suite.name.as_str()).collect();
    let want: Vec<&str> = m.suites.iter().map(|s| s.name.as_str()).collect();
    if names != want {
        return Err(SnapshotError::Mismatch(format!(
            "the scan's suites [{}] are not the snapshot's [{}]",
            names.join(", "),
            want.join(", ")
        )));
    }
    for (s, w) in suites.iter().zip(&m.suites) {
        if s.suite.sha256 != w.sha256 {
            return Err(SnapshotError::Mismatch(format!(
                "suite `{}` ({}): sha256 {} differs from the snapshot's {}",
                w.name, s.recorded_path, s.suite.sha256, w.sha256
            )));
        }
        let ids: Vec<String> = s.suite.expand_with_seed(Some(seed)).into_iter().map(|c| c.id).collect();
        if ids != w.case_ids {
            return Err(SnapshotError::Mismatch(format!(
                "suite `{}`: its expanded case ids differ from the snapshot's",
                w.name
            )));
        }
    }
    Ok(())
}
