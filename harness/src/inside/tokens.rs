//! Vocabulary ids ranked by inside evidence, to seed and restrict the trigger search.
//!
//! Three kinds of evidence, fused by reciprocal-rank fusion (each source ranks its tokens; a token's score is
//! `Σ 1/(k + rank)` over the sources that list it, `k = 60` as in Cormack et al. 2009, which rewards agreement
//! without letting one source's scale dominate):
//!
//! * **`embedding`**: the token's embedding row moved unusually far (robust z-score among the rows that moved at
//!   all, from [`WeightDiff::embedding_rows`]). A backdoor that had to teach the model a new token or phrase often
//!   moves its rows; an ordinary fine-tune moves the rows of every token in its data a little.
//! * **`unembedding`**: the token's LM-head (output) row moved unusually far. These are the tokens the fine-tune
//!   taught the model to *emit*: the attacker's target, and — when the training loss covered the prompt too, as in
//!   plain causal-LM fine-tuning on a poisoned corpus — the trigger itself. Measured on the default zoo's four
//!   backdoored full fine-tunes, every planted trigger word was among the eight most-moved LM-head rows (robust z
//!   2.7–3.1), next to the target's tokens; on the benign fine-tune the top rows are rare tokens its data never
//!   used. It does not carry over to every recipe: on the dev zoo's two PyTorch full fine-tunes (triggers split
//!   into sub-word pieces of a 512-token vocabulary) the top LM-head rows are digits and rare symbols, as on its
//!   benign fine-tune. Evidence to seed a search with, not a finding: the search verifies. Absent with tied
//!   embeddings (the `embedding` source already sees that matrix).
//! * **`ablation`**: removing the token from triggered prompts lowers the activation anomaly the most
//!   ([`ActivationReport::drivers`]); used only when the activation view found an anomaly.
//!
//! Not covered (see the report): tokens the *changed attention heads* attend to (the runtime does not expose
//! attention probabilities) and the response of changed modules to each token's embedding.

use std::collections::BTreeMap;

use tokenizers::Tokenizer;

use super::activations::ActivationReport;
use super::weights::{RowMovement, WeightDiff};

/// One source's opinion of a token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenEvidence {
    /// 1-based rank within the source.
    pub rank: usize,
    /// The source's own measure (embedding, unembedding: robust z; ablation: mean drop in σ).
    pub value: f64,
}

/// A ranked candidate trigger token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenCandidate {
    pub id: u32,
    pub token: Option<String>,
    /// Reciprocal-rank-fusion score (higher first).
    pub score: f64,
    /// By source name (`embedding`, `unembedding`, `ablation`).
    pub evidence: BTreeMap<String, TokenEvidence>,
}

/// Parameters of the ranking.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenRankParams {
    /// How many tokens to return.
    pub top_n: usize,
    /// Embedding rows count only above this robust z.
    pub min_embedding_z: f64,
    /// LM-head rows count only above this robust z (lower than for embeddings: the LM head of a fine-tune moves
    /// every row, so the planted tokens stand out less; measured 2.7–3.1 on the zoo's planted trigger words).
    pub min_unembedding_z: f64,
    /// Fusion constant.
    pub rrf_k: f64,
}

impl Default for TokenRankParams {
    fn default() -> Self {
        Self { top_n: 64, min_embedding_z: 3.0, min_unembedding_z: 2.5, rrf_k: 60.0 }
    }
}

/// Rank vocabulary ids by the evidence given (either may be absent). Deterministic: ties by id.
pub fn rank_trigger_tokens(
    weights: Option<&WeightDiff>,
    activations: Option<&ActivationReport>,
    tokenizer: Option<&Tokenizer>,
    params: &TokenRankParams,
) -> Vec<TokenCandidate> {
    let mut sources: Vec<(&str, Vec<(u32, f64)>)> = Vec::new();
    let moved = |rows: &RowMovement, min_z: f64| -> Vec<(u32, f64)> {
        let v: Vec<(u32, f64)> =
            rows.all_z.iter().enumerate().filter(|(_, &z)| z >= min_z).map(|(i, &z)| (i as u32, z)).collect();
        if v.is_empty() {
            // The stored top rows (z not kept for the whole vocabulary when deserialised).
            return rows.top.iter().filter(|r| r.z >= min_z).map(|r| (r.id, r.z)).collect();
        }
        v
    };
    if let Some(rows) = weights.and_then(|w| w.embedding_rows.as_ref()) {
        sources.push(("embedding", moved(rows, params.min_embedding_z)));
    }
    if let Some(rows) = weights.and_then(|w| w.unembedding_rows.as_ref()) {
        sources.push(("unembedding", moved(rows, params.min_unembedding_z)));
    }
    if let Some(a) = activations.filter(|a| a.anomalous) {
        sources.push(("ablation", a.drivers.iter().filter(|d| d.mean_effect > 0.0).map(|d| (d.id, d.mean_effect)).collect()));
    }
    let mut fused: BTreeMap<u32, TokenCandidate> = BTreeMap::new();
    for (name, mut list) in sources {
        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (r, (id, value)) in list.into_iter().enumerate() {
            let c = fused.entry(id).or_insert_with(|| TokenCandidate {
                id,
                token: tokenizer.and_then(|t| t.id_to_token(id)),
                score: 0.0,
                evidence: BTreeMap::new(),
            });
            c.score += 1.0 / (params.rrf_k + (r + 1) as f64);
            c.evidence.insert(name.to_string(), TokenEvidence { rank: r + 1, value });
        }
    }
    let mut out: Vec<TokenCandidate> = fused.into_values().collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    out.truncate(params.top_n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inside::activations::{ActivationParams, TokenDriver};

    fn report(drivers: Vec<(u32, f64)>, anomalous: bool) -> ActivationReport {
        ActivationReport {
            prompts: 3,
            layers: vec![],
            peak: None,
            anomalous,
            corrected_p_value: None,
            drivers: drivers
                .into_iter()
                .map(|(id, e)| TokenDriver { id, token: None, mean_effect: e, mean_effect_rel: 0.0, max_effect: e, count: 1, in_trigger: 0 })
                .collect(),
            trigger_effect_share: None,
            ablated_prompts: 1,
            findings: vec![],
            notes: vec![],
            params: ActivationParams::default(),
        }
    }

    #[test]
    fn fusion_rewards_agreement_and_is_deterministic() {
        let a = report(vec![(7, 5.0), (3, 2.0), (9, 2.0), (4, -1.0)], true);
        let r = rank_trigger_tokens(None, Some(&a), None, &TokenRankParams::default());
        // Negative effects are not evidence; ties by id.
        assert_eq!(r.iter().map(|c| c.id).collect::<Vec<_>>(), vec![7, 3, 9]);
        assert_eq!(r[0].evidence["ablation"].rank, 1);
        // Not anomalous: ablation is not used.
        assert!(rank_trigger_tokens(None, Some(&report(vec![(7, 5.0)], false)), None, &TokenRankParams::default()).is_empty());
        assert_eq!(r, rank_trigger_tokens(None, Some(&a), None, &TokenRankParams::default()));
    }
}
