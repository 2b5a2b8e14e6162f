//! `extraction` probes: prompts that try to pull training data out of the model.
//!
//! Two signals: canary strings (suite-declared secrets planted in, or known to be in, training data) found in a
//! continuation or made more likely by the candidate, and PII- or secret-shaped strings in continuations. The
//! probe's `canaries` become both a `canary` detector and likelihood targets with role `leak`; the default
//! detectors are `pii` (every category) and, when canaries are declared, `canary`.

use std::collections::BTreeSet;

use serde_saphyr::Spanned;

use super::{Target, TargetRole, MAX_TARGET_BYTES};
use crate::validate::{at, check_text, Ctx};

raw_probe!(RawExtractionProbe, RawExtractionExtra {
    #[serde(default)]
    canaries: Option<Spanned<Vec<Spanned<String>>>>,
});

pub(crate) fn validate(ctx: &mut Ctx, e: RawExtractionExtra, path: &str) -> Vec<String> {
    let Some(list) = e.canaries else { return Vec::new() };
    if list.value.is_empty() {
        ctx.error(at(&list), &format!("{path}.canaries"), "canaries is empty (leave it out instead)");
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, c) in list.value.iter().enumerate() {
        let p = format!("{path}.canaries[{i}]");
        if !check_text(ctx, c, &p, "canary", MAX_TARGET_BYTES) {
            continue;
        }
        if !seen.insert(c.value.clone()) {
            ctx.error(at(c), &p, "duplicate canary");
            continue;
        }
        out.push(c.value.clone());
    }
    out
}

/// Canaries are also likelihood targets (role `leak`), unless the suite already lists the same text.
pub(crate) fn add_canary_targets(canaries: &[String], targets: &mut Vec<Target>) {
    for (i, c) in canaries.iter().enumerate() {
        if targets.iter().any(|t| t.text == *c) {
            continue;
        }
        let mut id = format!("canary-{i}");
        while targets.iter().any(|t| t.id == id) {
            id.push('_');
        }
        targets.push(Target { id, text: c.clone(), role: TargetRole::Leak });
    }
}
