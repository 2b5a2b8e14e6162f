//! Top-k compression of next-token distributions and divergences estimated from it.
//!
//! The snapshot keeps, per position, the baseline's `k` most probable tokens and the mass of the rest. At scan time
//! the candidate's full distribution `p` is compared with it by **lumping**: both distributions are coarse-grained
//! to the same `k + 1` outcomes (the baseline's top-k tokens, and "any other token"), and JS / KL are computed on
//! those. Coarse-graining never increases an f-divergence (data processing inequality), so the estimate is never
//! above the full-vocabulary value. For Jensen–Shannon the shortfall is also bounded above: every token contributes
//! at most `ln 2 · (p_i + q_i) / 2`, so
//!
//! `0 ≤ JS_full − JS_lumped ≤ ln 2 · (p_rest + q_rest) / 2`,
//!
//! where `p_rest` and `q_rest` are the two models' mass outside the top k — known exactly at scan time. KL has no
//! such bound (a token the baseline gives almost nothing can carry any amount); its error is measured instead
//! ([`measure_rows`], `trapdoor baseline measure`).

/// The most probable entries of a logit row (logit descending, ties to the lower id, so `ids[0]` is the runtime's
/// greedy argmax): as few as leave at most `rest_target` of the mass outside (at least one), and never more than
/// `k`; with their probabilities and the remaining mass (summed directly over the other entries, not as `1 − Σ top`,
/// so a tiny rest is not lost to cancellation). `rest_target = 0` keeps exactly `k`.
pub fn top_k(row: &[f32], k: usize, rest_target: f64) -> super::TopK {
    let k = k.min(row.len());
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        let (x, y) = (row[*a as usize], row[*b as usize]);
        y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b))
    };
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    let (head, tail) = order.split_at_mut(k);
    head.sort_by(cmp);
    let (p, _) = probs(row);
    let mut rest: f64 = tail.iter().map(|&i| p[i as usize]).sum();
    let mut m = head.len();
    while m > 1 && rest + p[head[m - 1] as usize] <= rest_target {
        m -= 1;
        rest += p[head[m] as usize];
    }
    super::TopK {
        ids: head[..m].to_vec(),
        probs: head[..m].iter().map(|&i| p[i as usize] as f32).collect(),
        rest: rest.clamp(0.0, 1.0) as f32,
    }
}

/// Probabilities and log-probabilities of a logit row in f64 (as the scan computes them).
pub fn probs(row: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    let lse = m + s.ln();
    (e.iter().map(|x| x / s).collect(), row.iter().map(|&x| x as f64 - lse).collect())
}

/// Divergences of one position estimated from the lumped distributions, with the JS error bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lumped {
    /// JS(p, q) in nats on the `k + 1` lumped outcomes.
    pub js: f64,
    /// KL(candidate ‖ baseline) on the lumped outcomes.
    pub kl_cb: f64,
    /// KL(baseline ‖ candidate) on the lumped outcomes.
    pub kl_bc: f64,
    /// `ln 2 · (p_rest + q_rest) / 2`: the full JS lies in `[js, js + js_bound]`.
    pub js_bound: f64,
}

/// Compare the candidate's full distribution (`p` probabilities, `lp` log-probabilities) with the baseline's top-k
/// row. The candidate's rest is summed over the tokens the baseline did not keep (not `1 − Σ`, whose rounding
/// residue would be mass where there is none), and kept tokens use the candidate's log-probabilities, so a
/// probability that underflows to 0 still has its finite logarithm (as the live scan computes).
pub fn lumped(p: &[f64], lp: &[f64], q: &super::TopK) -> Lumped {
    let mut kept = vec![false; p.len()];
    let mut terms: Vec<(f64, f64, f64, f64)> = Vec::with_capacity(q.ids.len() + 1);
    for (&id, &qi) in q.ids.iter().zip(&q.probs) {
        let i = id as usize;
        if i < p.len() && !kept[i] {
            kept[i] = true;
            let qi = qi as f64;
            terms.push((p[i], qi, lp[i], qi.ln()));
        }
    }
    let p_rest: f64 = p.iter().zip(&kept).filter(|(_, &k)| !k).map(|(x, _)| x).sum();
    let q_rest = q.rest as f64;
    terms.push((p_rest, q_rest, p_rest.ln(), q_rest.ln()));
    let d = divergences_log(&terms);
    Lumped { js: d.0, kl_cb: d.1, kl_bc: d.2, js_bound: std::f64::consts::LN_2 * (p_rest + q_rest) / 2.0 }
}

/// JS, KL(p‖q), KL(q‖p) over outcomes given as `(p, q, ln p, ln q)`, with the live scan's conventions: a term
/// whose weight is 0 contributes nothing, JS clamped to `[0, ln 2]`, KLs to ≥ 0.
pub fn divergences_log(terms: &[(f64, f64, f64, f64)]) -> (f64, f64, f64) {
    let (mut js, mut kl_pq, mut kl_qp) = (0.0, 0.0, 0.0);
    for &(p, q, lp, lq) in terms {
        let m = 0.5 * (p + q);
        if p > 0.0 {
            kl_pq += p * (lp - lq);
        }
        if q > 0.0 {
            kl_qp += q * (lq - lp);
        }
        if m > 0.0 {
            let lm = m.ln();
            if p > 0.0 {
                js += 0.5 * p * (lp - lm);
            }
            if q > 0.0 {
                js += 0.5 * q * (lq - lm);
            }
        }
    }
    (js.clamp(0.0, std::f64::consts::LN_2), kl_pq.max(0.0), kl_qp.max(0.0))
}

/// The alternative estimate that spreads the baseline's rest mass uniformly over the tokens it did not keep
/// (measured against lumping by `trapdoor baseline measure`; not a bound either way).
pub fn uniform_tail(p: &[f64], q: &super::TopK) -> (f64, f64, f64) {
    let v = p.len();
    let mut kept = vec![false; v];
    let mut pairs: Vec<(f64, f64)> = Vec::with_capacity(v);
    for (&id, &qi) in q.ids.iter().zip(&q.probs) {
        if let Some(k) = kept.get_mut(id as usize) {
            *k = true;
            pairs.push((p[id as usize], qi as f64));
        }
    }
    let others = v.saturating_sub(q.ids.len()).max(1);
    let each = q.rest as f64 / others as f64;
    for (i, &pi) in p.iter().enumerate() {
        if !kept[i] {
            pairs.push((pi, each));
        }
    }
    divergences(&pairs)
}

/// JS, KL(p‖q), KL(q‖p) over paired outcome probabilities, with the scan's conventions (0·ln 0 = 0, JS clamped to
/// `[0, ln 2]`, KLs to ≥ 0). A KL whose support fails (p > 0 where q = 0) is infinite.
pub fn divergences(pairs: &[(f64, f64)]) -> (f64, f64, f64) {
    let (mut js, mut kl_pq, mut kl_qp) = (0.0, 0.0, 0.0);
    for &(p, q) in pairs {
        let m = 0.5 * (p + q);
        if p > 0.0 {
            kl_pq += if q > 0.0 { p * (p.ln() - q.ln()) } else { f64::INFINITY };
            js += 0.5 * p * (p.ln() - m.ln());
        }
        if q > 0.0 {
            kl_qp += if p > 0.0 { q * (q.ln() - p.ln()) } else { f64::INFINITY };
            js += 0.5 * q * (q.ln() - m.ln());
        }
    }
    (js.clamp(0.0, std::f64::consts::LN_2), kl_pq.max(0.0), kl_qp.max(0.0))
}

/// Largest and mean absolute errors of the lumped estimate against the full-vocabulary values, over positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ErrorStats {
    pub positions: usize,
    pub js_max_abs: f64,
    pub js_mean_abs: f64,
    pub kl_cb_max_abs: f64,
    pub kl_bc_max_abs: f64,
    /// Largest JS bound `ln 2 (p_rest + q_rest) / 2` seen.
    pub js_bound_max: f64,
    /// Largest baseline rest mass seen.
    pub rest_max: f64,
    /// Tokens kept, summed over positions (the snapshot's size is about 8 bytes per kept token).
    pub kept_sum: usize,
    /// Largest error of a sequence's mean JS (what a case's `js_mean` reports), over sequences.
    pub seq_js_mean_max_abs: f64,
    /// The same errors for the uniform-tail estimate ([`uniform_tail`]), for comparison.
    pub uniform_js_max_abs: f64,
    pub uniform_kl_cb_max_abs: f64,
    pub uniform_kl_bc_max_abs: f64,
}

impl ErrorStats {
    fn add(&mut self, full: (f64, f64, f64), est: &Lumped, rest: f64) {
        let n = self.positions as f64;
        let e = (full.0 - est.js).abs();
        self.js_mean_abs = (self.js_mean_abs * n + e) / (n + 1.0);
        self.positions += 1;
        self.js_max_abs = self.js_max_abs.max(e);
        self.kl_cb_max_abs = self.kl_cb_max_abs.max((full.1 - est.kl_cb).abs());
        self.kl_bc_max_abs = self.kl_bc_max_abs.max((full.2 - est.kl_bc).abs());
        self.js_bound_max = self.js_bound_max.max(est.js_bound);
        self.rest_max = self.rest_max.max(rest);
    }
}

/// For each `k`, the lumped estimate's error over aligned candidate / baseline logit rows (one row per position).
/// Sequence means (what the traces report) have errors no larger than the worst position's.
/// `cand` and `base` are one sequence's rows.
pub fn measure_rows(cand: &[Vec<f32>], base: &[Vec<f32>], ks: &[usize], rest_target: f64, stats: &mut [ErrorStats]) {
    let mut seq_err = vec![0.0f64; ks.len()];
    for (c, b) in cand.iter().zip(base) {
        let (pc, lc) = probs(c);
        let (pb, lb) = probs(b);
        let terms: Vec<(f64, f64, f64, f64)> = (0..pc.len()).map(|i| (pc[i], pb[i], lc[i], lb[i])).collect();
        let full = divergences_log(&terms);
        for (k, s) in ks.iter().zip(stats.iter_mut()) {
            let q = top_k(b, *k, rest_target);
            s.kept_sum += q.ids.len();
            let est = lumped(&pc, &lc, &q);
            s.add(full, &est, q.rest as f64);
            let u = uniform_tail(&pc, &q);
            s.uniform_js_max_abs = s.uniform_js_max_abs.max((full.0 - u.0).abs());
            s.uniform_kl_cb_max_abs = s.uniform_kl_cb_max_abs.max((full.1 - u.1).abs());
            s.uniform_kl_bc_max_abs = s.uniform_kl_bc_max_abs.max((full.2 - u.2).abs());
            seq_err[ks.iter().position(|x| x == k).unwrap_or(0)] += full.0 - est.js;
        }
    }
    if !cand.is_empty() {
        for (s, e) in stats.iter_mut().zip(seq_err) {
            s.seq_js_mean_max_abs = s.seq_js_mean_max_abs.max(e.abs() / cand.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_like_argmax_and_keeps_the_rest() {
        let row = [0.5f32, 2.0, 2.0, -1.0, 1.0];
        let t = top_k(&row, 3, 0.0);
        assert_eq!(t.ids, vec![1, 2, 4], "ties go to the lower id, as greedy argmax does");
        assert_eq!(t.ids[0], crate::runtime::generate::argmax(&row));
        let (p, _) = probs(&row);
        assert!((t.rest as f64 - (p[0] + p[3])).abs() < 1e-7);
        let s: f64 = t.probs.iter().map(|&x| x as f64).sum::<f64>() + t.rest as f64;
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&row, 10, 0.0).ids.len(), 5);
        // A rest target keeps only as many as needed, and at least the argmax.
        let peaked = [10.0f32, 0.0, 0.0, 0.0];
        let t = top_k(&peaked, 4, 1e-3);
        assert_eq!(t.ids, vec![0]);
        assert!(t.rest > 0.0 && t.rest <= 1e-3);
        assert_eq!(top_k(&peaked, 4, 1.0).ids, vec![0]);
        let t = top_k(&row, 5, 0.2);
        assert!(t.rest <= 0.2 && t.ids.len() < 5 && t.ids.len() > 1);
    }

    #[test]
    fn lumped_js_is_within_its_bound_of_the_full_value() {
        // Deterministic pseudo-random rows over a 200-token vocabulary.
        let mut x = 12345u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f64 / (1u64 << 31) as f64) as f32 * 8.0 - 4.0
        };
        for _ in 0..20 {
            let c: Vec<f32> = (0..200).map(|_| next()).collect();
            let b: Vec<f32> = c.iter().map(|v| v + 0.7 * next()).collect();
            let (pc, lc) = probs(&c);
            let (pb, lb) = probs(&b);
            let full = divergences(&pc.iter().copied().zip(pb.iter().copied()).collect::<Vec<_>>());
            let terms: Vec<(f64, f64, f64, f64)> = (0..pc.len()).map(|i| (pc[i], pb[i], lc[i], lb[i])).collect();
            let full_log = divergences_log(&terms);
            assert!((full.0 - full_log.0).abs() < 1e-9 && (full.1 - full_log.1).abs() < 1e-9);
            for k in [1, 8, 64, 200] {
                let est = lumped(&pc, &lc, &top_k(&b, k, 0.0));
                assert!(est.js <= full.0 + 1e-6, "lumping never increases JS: {} > {}", est.js, full.0);
                assert!(full.0 - est.js <= est.js_bound + 1e-6, "k={k}: {} > bound {}", full.0 - est.js, est.js_bound);
                assert!(est.kl_cb <= full.1 + 1e-6 && est.kl_bc <= full.2 + 1e-6);
                if k == 200 {
                    assert!((full.0 - est.js).abs() < 1e-6 && (full.1 - est.kl_cb).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn measured_errors_shrink_with_k() {
        let c: Vec<Vec<f32>> = (0..5).map(|r| (0..100).map(|i| ((i * 7 + r) % 13) as f32 * 0.3).collect()).collect();
        let b: Vec<Vec<f32>> = (0..5).map(|r| (0..100).map(|i| ((i * 5 + r) % 11) as f32 * 0.3).collect()).collect();
        let ks = [4, 32, 100];
        let mut s = vec![ErrorStats::default(); 3];
        measure_rows(&c, &b, &ks, 0.0, &mut s);
        assert_eq!(s[0].positions, 5);
        assert!(s[0].js_max_abs >= s[1].js_max_abs && s[1].js_max_abs >= s[2].js_max_abs);
        assert!(s[2].js_max_abs < 1e-6 && s[2].rest_max < 1e-6);
    }
}
