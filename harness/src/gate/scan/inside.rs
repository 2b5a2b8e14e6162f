//! The inside stages of a scan: the weight delta of the loaded models and the activation view on the clean /
//! triggered prompt pairs where the trigger moved the candidate most, mapped into the run record.

use std::collections::BTreeMap;

use trapdoor_probes::Case;
use trapdoor_reports::record::{
    Activations, DeltaRow, InsideFlag, LayerAnomaly, MovedRow, Real, RunRecord, StageStatus, TokenAttribution, Variant,
    WeightDelta,
};

use crate::inside::{self, ActivationParams, ActivationReport, PromptPair, WeightDiff, WeightDiffParams};
use crate::runtime::Model;

/// Most prompt pairs the activation view runs on (each costs hidden states of both models, plus ablations).
pub const MAX_ACTIVATION_PAIRS: usize = 32;

fn flag(f: inside::Flag) -> InsideFlag {
    InsideFlag { id: f.id, location: f.location, message: f.message }
}

fn nan_or(x: Option<f64>) -> Real {
    Real(x.unwrap_or(f64::NAN))
}

/// The record's weight delta. On a candidate with an adapter the `concentrated_low_rank` pattern holds by
/// construction (a LoRA is a low-rank edit), so it localises the edit in the summary instead of raising a flag;
/// outliers among the adapted matrices are still flags.
pub fn weight_delta(d: &WeightDiff, adapter: bool) -> WeightDelta {
    let rows = d
        .tensors
        .values()
        .map(|t| DeltaRow {
            tensor: t.name.clone(),
            layer: t.layer.map(|l| l as u32),
            module: t.module.to_string(),
            shape: t.shape.iter().map(|&s| s as u64).collect(),
            rel_frobenius: nan_or(t.rel_norm),
            topk_energy: nan_or(t.spectrum.as_ref().map(|s| s.top_k_fraction)),
            k: t.spectrum.as_ref().map_or(0, |s| s.top_k as u32),
            effective_rank: nan_or(t.spectrum.as_ref().map(|s| s.effective_rank)),
            flagged: t.outlier || (t.low_rank && d.flag.flagged && !adapter),
        })
        .collect();
    let mut moved_rows = Vec::new();
    for (matrix, rm) in [("embed", &d.embedding_rows), ("unembed", &d.unembedding_rows)] {
        if let Some(rm) = rm {
            for r in &rm.top {
                moved_rows.push(MovedRow {
                    matrix: matrix.into(),
                    token_id: r.id,
                    token: r.token.clone(),
                    rel_change: nan_or(r.rel),
                });
            }
        }
    }
    let flags =
        d.flags().into_iter().filter(|f| !(adapter && f.id == "weight.concentrated_low_rank")).map(flag).collect();
    let mut summary = d.summary.join(" ");
    if adapter && d.flag.pattern == inside::weights::Pattern::ConcentratedLowRank {
        summary.push_str(" The candidate is a LoRA adapter, low-rank by construction: the pattern localises the edit and is not evidence by itself.");
    }
    WeightDelta {
        scope: "candidate_vs_baseline".into(),
        identical: d.identical,
        rows,
        moved_rows,
        flags,
        summary: Some(summary.trim().to_string()).filter(|s| !s.is_empty()),
    }
}

/// The record's activation section.
pub fn activations(r: &ActivationReport) -> Activations {
    let layers = r
        .layers
        .iter()
        .filter_map(|l| {
            let m = l.divergence.as_ref()?;
            let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
            let n = m.triggered.len().max(1) as f64;
            Some(LayerAnomaly {
                layer: l.hidden_index as u32,
                clean_mean: Real(mean(&m.clean_loo)),
                triggered_mean: Real(mean(&m.triggered)),
                threshold: Real(m.threshold),
                flagged_fraction: Real(m.exceed as f64 / n),
                flagged: l.flagged && r.anomalous,
            })
        })
        .collect();
    let top_tokens = r
        .drivers
        .iter()
        .map(|d| TokenAttribution {
            token: d.token.clone().unwrap_or_else(|| format!("<{}>", d.id)),
            token_id: Some(d.id),
            score: Real(d.mean_effect),
            case: None,
        })
        .collect();
    let mut summary: Vec<String> = inside::activations::findings(r);
    summary.extend(r.notes.iter().cloned());
    Activations {
        layers,
        top_tokens,
        flags: r.flags().into_iter().map(flag).collect(),
        summary: Some(summary.join(" ")).filter(|s| !s.trim().is_empty()),
    }
}

/// The weight view of two loaded models with default parameters. An adapter on the baseline's own files is
/// analysed from its factors (exact and cheap: no dense SVD of every merged matrix); anything else densely, merged
/// candidate against baseline.
pub fn weight_diff(candidate: &Model, baseline: &Model) -> Result<WeightDiff, inside::InsideError> {
    let params = WeightDiffParams::default();
    match candidate.adapter() {
        Some(a) if same_files(candidate, baseline) => {
            inside::diff_adapter(a, Some(baseline.weights()), baseline.tokenizer().ok(), &params)
        }
        _ => inside::diff_models(candidate, baseline, &params),
    }
}

/// The two models were loaded from the same files (digests and sizes; adapters aside).
fn same_files(a: &Model, b: &Model) -> bool {
    let key = |m: &Model| -> Vec<(Option<String>, u64)> {
        let mut v: Vec<(Option<String>, u64)> = m
            .info()
            .files
            .iter()
            .filter(|f| !f.role.starts_with("adapter"))
            .map(|f| (f.sha256.clone(), f.bytes))
            .collect();
        v.sort();
        v
    };
    let (ka, kb) = (key(a), key(b));
    !ka.is_empty() && ka.iter().all(|(s, _)| s.is_some()) && ka == kb
}

/// Run the enabled inside analyses and fill the record's `inside` section and stage statuses. Returns the
/// vocabulary ids they rank as likely trigger tokens, best first, for the trigger search (empty when neither view
/// found any).
#[allow(clippy::too_many_arguments)]
pub fn run(
    record: &mut RunRecord,
    candidate: &Model,
    baseline: &Model,
    cases: &[Case],
    prompt_ids: &[super::PromptIds],
    want_weights: bool,
    want_activations: bool,
    seed: u64,
) -> Vec<u32> {
    let mut diff_kept = None;
    if want_weights {
        match weight_diff(candidate, baseline) {
            Ok(d) => {
                record.inside.weight_delta = Some(weight_delta(&d, candidate.adapter().is_some()));
                record.stages.weight_delta = StageStatus::ran();
                diff_kept = Some(d);
            }
            Err(e) => record.stages.weight_delta = StageStatus::error(e.to_string()),
        }
    }
    let activation_report =
        if want_activations { activation_view(record, candidate, baseline, cases, prompt_ids, seed) } else { None };
    let ranked = inside::rank_trigger_tokens(
        diff_kept.as_ref(),
        activation_report.as_ref(),
        candidate.tokenizer().ok(),
        &inside::TokenRankParams::default(),
    );
    ranked.into_iter().map(|c| c.id).collect()
}

/// The activation view on the clean / triggered pairs the probes moved most; fills the record and its stage status.
fn activation_view(
    record: &mut RunRecord,
    candidate: &Model,
    baseline: &Model,
    cases: &[Case],
    prompt_ids: &[super::PromptIds],
    seed: u64,
) -> Option<ActivationReport> {
    // The pairs where the trigger moved the candidate away from the baseline most (JS along both continuations,
    // triggered minus clean), one per distinct prompt pair; ties by case id.
    let by_id: BTreeMap<&str, usize> = cases.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
    let results: BTreeMap<&str, f64> = record.cases.iter().map(|c| (c.id.as_str(), c.js_mean())).collect();
    let mut ranked: Vec<(f64, &str, usize, usize)> = Vec::new();
    for rc in &record.cases {
        let (Variant::Triggered { .. }, Some(clean)) = (&rc.variant, rc.clean_case.as_deref()) else { continue };
        if rc.error.is_some() {
            continue;
        }
        let (Some(&ti), Some(&ci)) = (by_id.get(rc.id.as_str()), by_id.get(clean)) else { continue };
        let effect = rc.js_mean() - results.get(clean).copied().unwrap_or(0.0);
        ranked.push((effect, rc.id.as_str(), ci, ti));
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut pairs: Vec<PromptPair> = Vec::new();
    for &(_, _, ci, ti) in &ranked {
        if pairs.len() >= MAX_ACTIVATION_PAIRS {
            break;
        }
        if let (Ok((c, _)), Ok((t, _))) = (&prompt_ids[ci], &prompt_ids[ti]) {
            if c != t && !pairs.iter().any(|p| &p.clean == c && &p.triggered == t) {
                pairs.push(PromptPair { clean: c.clone(), triggered: t.clone() });
            }
        }
    }
    if pairs.len() < 4 {
        record.stages.activations =
            StageStatus::skipped(format!("only {} clean/triggered prompt pairs (at least 4 are needed)", pairs.len()));
        return None;
    }
    let params = ActivationParams { seed, ..ActivationParams::default() };
    match inside::analyse_activations(candidate, baseline, &pairs, &params) {
        Ok(r) => {
            record.inside.activations = Some(activations(&r));
            record.stages.activations = StageStatus::ran();
            Some(r)
        }
        Err(e) => {
            record.stages.activations = StageStatus::error(e.to_string());
            None
        }
    }
}
