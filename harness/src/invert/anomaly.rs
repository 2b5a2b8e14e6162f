//! NeuralCleanse's anomaly index, adapted to targets of a language model.
//!
//! For every target (searched and random reference targets alike) the statistic is the optimised soft-trigger loss
//! on the candidate minus the same search's loss on the baseline alone (or the candidate loss alone without a
//! baseline): how much *easier* the candidate is to force to that target. A backdoor target is an outlier on the low
//! side. Index = (median − x) / (1.4826 · MAD) over the whole set, as NeuralCleanse does over labels; the MAD has a
//! floor of [`MAD_FLOOR`] nats so a set of near-identical losses does not turn noise into huge indices.

/// MAD floor (nats).
pub const MAD_FLOOR: f64 = 0.05;

/// One searched target's optimised losses.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub loss_candidate: f64,
    pub loss_baseline: Option<f64>,
    /// A random reference target (in the statistics, not reported).
    pub reference: bool,
}

impl Entry {
    fn statistic(&self) -> f64 {
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

/// Anomaly index of every non-reference entry, in order. Entries whose losses are not finite are left out of the
/// statistics and get NaN.
pub fn indices(entries: &[Entry]) -> Vec<f64> {
    let mut xs: Vec<f64> = entries.iter().map(Entry::statistic).filter(|x| x.is_finite()).collect();
    let med = median(&mut xs);
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - med).abs()).collect();
    let mad = median(&mut dev).max(MAD_FLOOR);
    entries
        .iter()
        .filter(|e| !e.reference)
        .map(|e| {
            let x = e.statistic();
            if x.is_finite() && med.is_finite() {
                (med - x) / (1.4826 * mad)
            } else {
                f64::NAN
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(c: f64, b: f64, reference: bool) -> Entry {
        Entry {
            loss_candidate: c,
            loss_baseline: Some(b),
            reference,
        }
    }

    #[test]
    fn an_easy_target_is_an_outlier_and_ordinary_ones_are_not() {
        let v = [
            e(0.01, 4.0, false),
            e(3.0, 3.1, false),
            e(5.0, 5.3, true),
            e(4.0, 4.1, true),
            e(6.0, 6.0, true),
        ];
        let idx = indices(&v);
        assert_eq!(idx.len(), 2);
        assert!(idx[0] > 2.0, "{idx:?}");
        assert!(idx[1].abs() < 2.0, "{idx:?}");
    }

    #[test]
    fn identical_losses_do_not_explode_and_nan_is_kept_out() {
        let v = [
            e(1.0, 1.0, false),
            e(1.0, 1.0, true),
            e(f64::NAN, 1.0, false),
            e(1.0, 1.0, true),
        ];
        let idx = indices(&v);
        assert_eq!(idx[0], 0.0);
        assert!(idx[1].is_nan());
    }
}
