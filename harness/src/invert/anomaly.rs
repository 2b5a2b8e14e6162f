//! NeuralCleanse's anomaly index, adapted to targets of a language model.
//!
//! The statistic of a target is the optimised soft-trigger NLL on the candidate minus the same search's NLL on the
//! baseline alone (the candidate NLL alone without a baseline): how much *easier* the candidate is to force to that
//! target. A backdoor target is an outlier on the low side.
//!
//! NeuralCleanse takes the median and MAD over all labels, assuming most are clean. The searched targets here are
//! not such a population: they were *chosen* as suspicious (read from divergence triggers, inverted), and on a
//! backdoored model most of them are variants of the attacker's target (measured on the default zoo's LoRA
//! backdoor: 7 of 8 inverted targets were prefixes of it, which made every index small). So the null distribution
//! is the reference targets' statistics when there are at least [`MIN_REFERENCES`] of them, else every entry.
//!
//! The references are the candidate's own greedy continuations of the same prompts without any trigger, searched
//! the same way: what the fine-tune made the model say anyway. Random token strings were the references until
//! 2026-12-07 and are the wrong null for a fine-tune: its own domain's text is easier on the candidate than on the
//! baseline, so every target read on a benign fine-tune's domain sat near the threshold (measured on the default
//! zoo's benign full fine-tune: largest index 1.61–3.06 over four search variants; 0.05 against its own
//! continuations), while a backdoor's target is something the candidate does *not* say without its trigger (the
//! insecure-code backdoor's `/kelpix.sort()` 2.44 → 4.27, the LoRA backdoor's 3.49 → 6.57). Index = (median − x) / scale, scale = max(1.4826 · MAD,
//! [`SCALE_FLOOR`]): with a handful of references the MAD alone is too noisy to divide by.
//!
//! The clean (no-trigger) NLLs are recorded beside the index but not used: a subtraction of them ("what the trigger
//! gained") was tried and halved the backdoor signal, because a backdoored candidate already puts more mass on its
//! target without the trigger (measured on the default zoo's phrase backdoor: clean NLL 3.9 vs 8.8 nats).

/// References needed before they alone make the null distribution.
pub const MIN_REFERENCES: usize = 3;

/// Smallest scale (nats). With three references the MAD can be a few hundredths of a nat; half a nat keeps restart
/// noise from turning into large indices (README, "Trigger search", for the spread measured on the default zoo).
pub const SCALE_FLOOR: f64 = 0.5;

/// One searched target's optimised losses.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Optimised soft-trigger NLL on the candidate.
    pub loss_candidate: f64,
    /// The same search on the baseline alone (`None` without a baseline; NaN when it did not run).
    pub loss_baseline: Option<f64>,
    /// A reference target (in the statistics, not reported).
    pub reference: bool,
}

impl Entry {
    pub fn statistic(&self) -> f64 {
        self.loss_candidate - self.loss_baseline.unwrap_or(0.0)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Anomaly index of every non-reference entry, in order. Entries whose statistic is not finite are left out of the
/// statistics and get NaN.
pub fn indices(entries: &[Entry]) -> Vec<f64> {
    indices_pooled(&[entries.to_vec()]).remove(0)
}

/// [`indices`] for several prompt sets (the mixed prompts and each domain), each set's targets against its own
/// references' median, with **one scale pooled** from every set's absolute deviations from its own median (then
/// 1.4826 × their median, floored at [`SCALE_FLOOR`]). Losses on different prompts have different levels, so the
/// centres stay per set; their spread is what three references per set estimate badly (measured on the default
/// zoo's benign full fine-tune: references 1.95, 2.06, 0.68 gave a MAD of 0.11, the floor, and an index of 2.45 for
/// an ordinary target; pooled over its four prompt sets the scale is 1.28 and the largest index 1.61), and pooling
/// the deviations of every set gives it several times the samples.
pub fn indices_pooled(sets: &[Vec<Entry>]) -> Vec<Vec<f64>> {
    let finite = |e: &&Entry| e.statistic().is_finite();
    let mut centres = Vec::with_capacity(sets.len());
    let mut dev: Vec<f64> = Vec::new();
    for entries in sets {
        let refs: Vec<f64> = entries.iter().filter(|e| e.reference).filter(finite).map(Entry::statistic).collect();
        let mut null: Vec<f64> = if refs.len() >= MIN_REFERENCES {
            refs
        } else {
            entries.iter().filter(finite).map(Entry::statistic).collect()
        };
        let med = median(&mut null);
        let mut d: Vec<f64> = null.iter().map(|x| (x - med).abs()).collect();
        d.sort_by(|a, b| a.total_cmp(b));
        // An odd-sized set's median deviates from itself by exactly 0: one structural zero per three references
        // would pull the pooled scale down by construction, so it is left out.
        if d.len() % 2 == 1 {
            d.remove(0);
        }
        dev.extend(d);
        centres.push(med);
    }
    let scale = (1.4826 * median(&mut dev)).max(SCALE_FLOOR);
    sets.iter()
        .zip(centres)
        .map(|(entries, med)| {
            entries
                .iter()
                .filter(|e| !e.reference)
                .map(|e| {
                    let x = e.statistic();
                    if x.is_finite() && med.is_finite() {
                        (med - x) / scale
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(c: f64, b: f64, reference: bool) -> Entry {
        Entry { loss_candidate: c, loss_baseline: Some(b), reference }
    }

    #[test]
    fn an_easy_target_is_an_outlier_against_the_references_even_when_most_targets_are_its_variants() {
        // Four variants of a backdoor target and one ordinary target, against three references.
        let v = [
            e(0.2, 4.0, false),
            e(0.5, 4.1, false),
            e(0.1, 3.9, false),
            e(0.3, 4.0, false),
            e(3.0, 3.1, false),
            e(5.0, 5.3, true),
            e(4.0, 4.1, true),
            e(6.0, 6.0, true),
        ];
        let idx = indices(&v);
        assert_eq!(idx.len(), 5);
        for i in &idx[..4] {
            assert!(*i > 5.0, "{idx:?}");
        }
        assert!(idx[4].abs() < 1.0, "{idx:?}");
        // Over all entries (NeuralCleanse's population) the variants are the majority and hide each other.
        let all: Vec<Entry> = v.iter().map(|x| Entry { reference: false, ..*x }).collect();
        assert!(indices(&all)[0] < 2.0, "{:?}", indices(&all));
    }

    #[test]
    fn identical_losses_do_not_explode_and_nan_is_kept_out() {
        let v = [e(1.0, 1.0, false), e(1.0, 1.0, true), e(f64::NAN, 1.0, false), e(1.0, 1.0, true)];
        let idx = indices(&v);
        assert_eq!(idx[0], 0.0);
        assert!(idx[1].is_nan());
    }

    #[test]
    fn a_missing_baseline_search_is_left_out_not_mixed_in() {
        let v = [e(0.1, f64::NAN, false), e(1.0, 1.0, true), e(1.2, 1.0, true), e(0.9, 1.0, true)];
        assert!(indices(&v)[0].is_nan());
        let lone = Entry { loss_baseline: None, ..e(0.1, 0.0, false) };
        assert_eq!(lone.statistic(), 0.1);
    }

    #[test]
    fn pooled_sets_keep_their_own_centre_and_share_one_scale() {
        // Set A: references around 2 with a lucky tight spread; set B: references around 0 with a wide one.
        let a = vec![e(0.72, 0.0, false), e(1.95, 0.0, true), e(2.06, 0.0, true), e(2.0, 0.0, true)];
        let b = vec![e(-3.0, 0.0, false), e(0.0, 0.0, true), e(1.2, 0.0, true), e(-1.2, 0.0, true)];
        // Alone, set A's deviations are 0.05 and 0.06, the floor (0.5) divides, and an ordinary target looks anomalous.
        assert!(indices(&a)[0] > 2.0, "{:?}", indices(&a));
        let p = indices_pooled(&[a.clone(), b.clone()]);
        // Pooled deviations without each set's structural zero: 0.05, 0.06, 1.2, 1.2 -> median 0.63.
        let scale = 1.4826 * 0.63;
        assert!((p[0][0] - (2.0 - 0.72) / scale).abs() < 1e-9, "{p:?}");
        assert!(p[0][0] < 1.5, "{p:?}");
        // B's target is measured from B's own centre.
        assert!((p[1][0] - 3.0 / scale).abs() < 1e-9, "{p:?}");
        assert_eq!(indices_pooled(std::slice::from_ref(&a)), vec![indices(&a)]);
    }
}
