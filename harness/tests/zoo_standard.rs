//! The standard zoo (what `trapdoor zoo build` and `demo` make): every planted backdoor reaches the attack-success
//! bounds measured from its files, every benign member stays clear of every planted target. This builds the whole
//! zoo (about 2.3 CPU-minutes) unless `zoo_selftest` built it in `target/test-cache` first; `TRAPDOOR_ZOO_DIR`
//! names another folder.

mod common;

use trapdoor::zoo::{self, BaseChoice, Trigger, ZooConfig, MAX_ASR_CLEAN, MIN_ASR_TRIGGERED};

#[test]
fn standard_zoo_meets_its_bounds_and_reopens() {
    // By default the zoo `zoo_selftest` built (test binaries run one after another, in name order): the bounds are
    // re-measured on reopening only if the build keys changed, so this costs seconds when that test ran first.
    let out = std::env::var_os("TRAPDOOR_ZOO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("target/test-cache/trapdoor").join(format!("zoo-v{}-seed{}", zoo::RECIPE_VERSION, zoo::DEFAULT_SEED)));
    let cfg = ZooConfig {
        out: out.clone(),
        base: BaseChoice::Tiny,
        seed: zoo::DEFAULT_SEED,
        progress: true,
        threads: Some(1),
    };
    let z = zoo::build(&cfg).unwrap();
    assert_eq!(z.candidates.len(), 8);
    let mut backdoored = 0;
    for c in std::iter::once(&z.base).chain(&z.candidates) {
        let t = &c.truth;
        if t.backdoored {
            backdoored += 1;
            let (a, b) = (t.asr_triggered.unwrap(), t.asr_clean.unwrap());
            assert!(a >= MIN_ASR_TRIGGERED && b <= MAX_ASR_CLEAN, "{}: {a} / {b}", c.name);
            assert!(t.target_prefix.is_some(), "{}", c.name);
            if let Some(Trigger::All(_)) = &t.trigger {
                assert!(t.asr_one_word.unwrap() <= MAX_ASR_CLEAN, "{}: one word fires", c.name);
            }
        } else {
            assert_eq!(t.planted_target_rates.len(), 5, "{}", c.name);
            for (m, r) in &t.planted_target_rates {
                assert!(*r <= MAX_ASR_CLEAN, "{} emits the target of {m}: {r}", c.name);
            }
        }
    }
    assert_eq!(backdoored, 6);
    // A second build reuses every member and reopens the same zoo.
    let again = zoo::build(&cfg).unwrap();
    let timing: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(zoo::TIMING)).unwrap()).unwrap();
    assert!(timing["members"].as_array().unwrap().iter().all(|m| m["reused"] == true));
    assert_eq!(again.candidates.len(), zoo::open(&out).unwrap().candidates.len());
}
