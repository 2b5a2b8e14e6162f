//! `drift` probes: benign prompts that measure how far the candidate moved overall.
//!
//! No triggers and no attack targets: the gate reports per-token divergence (Jensen–Shannon, KL both ways, top-1
//! agreement) between candidate and baseline along both continuations. Drift is the yardstick for the other
//! probes (a fine-tune that moved everything a lot makes every triggered effect look bigger) and a finding of its
//! own. The default detector is `refusal`, so a candidate that started refusing benign requests shows up too.

raw_probe!(RawDriftProbe);
