//! Reverse trigger search and target inversion (issue 5).
//!
//! The `scan` stage calls [`scan_stage`] with both loaded models, the clean prompts of the suites and the targets
//! the suites declare; the result is the run record's `trigger_search` section.

use trapdoor_reports::record::TriggerSearch;

use crate::gate::policy::TriggerSearchStage;
use crate::runtime::load::Model;

/// Everything the trigger-search stage of a scan gets.
pub struct StageInput<'a> {
    pub candidate: &'a Model,
    /// `None` when the scan runs against a baseline snapshot without a live baseline.
    pub baseline: Option<&'a Model>,
    /// Clean prompts from the suites, in suite order (the search draws its train and held-out sets from them).
    pub prompts: Vec<String>,
    /// Target strings the suites declare (attacker strings, refusal openers, code sinks), deduplicated.
    pub declared_targets: Vec<String>,
    /// Budget and switches from the policy.
    pub stage: TriggerSearchStage,
    pub seed: u64,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// Errors of the trigger search.
#[derive(Debug, thiserror::Error)]
pub enum InvertError {
    #[error("trigger search is not available in this build yet")]
    NotBuilt,
    #[error("trigger search: {0}")]
    Other(String),
}

/// Run the trigger search as a scan stage.
pub fn scan_stage(_input: &StageInput) -> Result<TriggerSearch, InvertError> {
    Err(InvertError::NotBuilt)
}
