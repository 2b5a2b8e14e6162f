//! Baseline snapshots (issue 7): record → verify → scan against the snapshot on the stories260K zoo-dev pair, with
//! the verdict, the continuations and the along-baseline divergences compared with a live-baseline scan; refusals of
//! a snapshot for another model / suite / seed / tokenizer; and the strict reader on malformed files (no model).
//! Lean for CI: one suite (known-triggers), 16 generated tokens, one recording shared by the tests.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{fixtures, trapdoor_bin};
use trapdoor::gate::scan::{run_scan, run_scan_snapshot, ScanConfig};
use trapdoor::snapshot::format::{
    self, encode_data, parse_data, parse_manifest, ErrorBound, FileDigest, Manifest, ModelEntry, Snapshot,
    SnapshotData, SuiteEntry, DATA_FILE, MANIFEST_FILE, SCHEMA,
};
use trapdoor::snapshot::{PromptRecord, TopK};
use trapdoor_reports::record::StageStatus;

const SUITE: &str = "embedded:known-triggers.yaml";
const MAX_NEW: &str = "16";
/// The error stated in baselines/README.md for a case's mean JS along the baseline's continuation on the stories
/// pair (default k cap and rest target; measured at most 1.02e-3 here); the estimate is never above the live value.
const JS_MEAN_ERROR: f64 = 2e-3;

fn zoo(name: &str) -> String {
    fixtures().join("zoo-dev").join(name).display().to_string()
}

fn policy() -> PathBuf {
    common::repo_root().join("harness/tests/data/scan/policy-probes-only.yaml")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn trapdoor(args: &[&str]) -> Output {
    Command::new(trapdoor_bin()).args(args).output().expect("run trapdoor")
}

fn record_into(dir: &Path) -> Output {
    let d = dir.display().to_string();
    trapdoor(&[
        "baseline",
        "record",
        "--model",
        &zoo("stories-base"),
        "--suite",
        SUITE,
        "--max-new-tokens",
        MAX_NEW,
        "--out",
        &d,
    ])
}

/// stories-base recorded once for the whole file.
fn snapshot() -> &'static PathBuf {
    static SNAP: OnceLock<PathBuf> = OnceLock::new();
    SNAP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep().join("stories-base");
        let out = record_into(&dir);
        assert!(out.status.success(), "record: {}\n{}", text(&out.stdout), text(&out.stderr));
        dir
    })
}

fn cfg(adapter: Option<&str>) -> ScanConfig {
    let mut c = ScanConfig::new(zoo("stories-base"), zoo("stories-base"));
    c.policy = trapdoor::gate::policy::Policy::from_path(&policy()).unwrap();
    c.suites = vec![PathBuf::from(SUITE)];
    c.max_new_tokens = 16;
    c.adapter = adapter.map(PathBuf::from);
    c
}

#[test]
fn recording_is_deterministic_and_verifies_against_its_model() {
    let snap = snapshot();
    let again = tempfile::tempdir().unwrap();
    let out = record_into(again.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [MANIFEST_FILE, DATA_FILE] {
        assert_eq!(std::fs::read(snap.join(f)).unwrap(), std::fs::read(again.path().join(f)).unwrap(), "{f} differs");
    }
    let s = Snapshot::read(snap).unwrap();
    assert_eq!(s.manifest.suites.len(), 1);
    assert_eq!(s.manifest.suites[0].name, "known-triggers");
    assert!(s.data.prompts.iter().all(|p| !p.dists.is_empty() && p.dists.len() == p.continuation.len()));
    assert!(
        s.data.prompts.iter().flat_map(|p| p.continuation.iter().zip(&p.dists)).all(|(t, d)| d.ids[0] == *t),
        "greedy continuation tokens are each position's argmax"
    );
    assert!(!s.data.targets.is_empty());
    let out = trapdoor(&["baseline", "verify", "--model", &zoo("stories-base"), &snap.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "), "{}", text(&out.stdout));
}

#[test]
fn verify_refuses_another_model_naming_the_file() {
    let snap = snapshot().display().to_string();
    let out = trapdoor(&["baseline", "verify", "--model", &zoo("stories-clean-ft"), &snap]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("model.safetensors") && err.contains("sha256"), "{err}");
    let out = trapdoor(&["baseline", "verify", "--model", &zoo("stories-tok-tamper"), &snap]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("tokenizer"), "{}", text(&out.stderr));
}

#[test]
fn scan_against_the_snapshot_matches_the_live_baseline() {
    let snap = snapshot();
    let live = run_scan(&cfg(Some(&zoo("stories-bd-lora-adapter")))).unwrap();
    let snapped = run_scan_snapshot(&cfg(Some(&zoo("stories-bd-lora-adapter"))), snap).unwrap();
    assert_eq!(live.decision, snapped.decision, "same verdict");
    assert_eq!(snapped.decision.as_str(), "fail");
    let by_id: BTreeMap<&str, _> = live.record.cases.iter().map(|c| (c.id.as_str(), c)).collect();
    assert_eq!(live.record.cases.len(), snapped.record.cases.len());
    let mut compared = 0;
    for c in &snapped.record.cases {
        let l = by_id[c.id.as_str()];
        assert_eq!(c.error, l.error);
        let (Some(cb), Some(lb)) = (&c.baseline, &l.baseline) else { continue };
        assert_eq!(cb.token_ids, lb.token_ids, "{}: the recorded baseline continuation", c.id);
        assert_eq!(cb.text, lb.text);
        assert_eq!(c.candidate.as_ref().unwrap().token_ids, l.candidate.as_ref().unwrap().token_ids, "{}", c.id);
        for (a, b) in cb.targets.iter().zip(&lb.targets) {
            assert!(
                (a.logprob.0 - b.logprob.0).abs() < 1e-3,
                "{}: target {} {} vs {}",
                c.id,
                a.target,
                a.logprob.0,
                b.logprob.0
            );
        }
        let (ds, dl) = (c.divergence.as_ref().unwrap(), l.divergence.as_ref().unwrap());
        assert_eq!(ds.along_candidate.positions, 0, "not computed from a snapshot");
        let (s, v) = (&ds.along_baseline, &dl.along_baseline);
        assert_eq!(s.positions, v.positions);
        if s.positions == 0 {
            continue;
        }
        let gap = v.js_mean.0 - s.js_mean.0;
        assert!(
            (-1e-5..=JS_MEAN_ERROR).contains(&gap),
            "{}: live JS {} vs snapshot {}",
            c.id,
            v.js_mean.0,
            s.js_mean.0
        );
        assert!(
            s.kl_base_cand_mean.0 <= v.kl_base_cand_mean.0 + 1e-4
                && s.kl_cand_base_mean.0 <= v.kl_cand_base_mean.0 + 1e-4
        );
        assert_eq!(s.top1_agreement, v.top1_agreement);
        compared += 1;
    }
    assert!(compared > 50, "{compared} cases compared");
    let st = &snapped.record.stages;
    assert!(matches!(&st.probes, StageStatus::Ran { note: Some(n) } if n.contains("snapshot")), "{:?}", st.probes);
    assert!(
        matches!(&st.weight_delta, StageStatus::Skipped { reason } if reason.contains("snapshot")),
        "{:?}",
        st.weight_delta
    );
    assert!(matches!(&st.audit, StageStatus::Ran { note: Some(_) }), "{:?}", st.audit);
    assert_eq!(snapped.record.baseline.kind, trapdoor_reports::record::ModelKind::Snapshot);
}

#[test]
fn scan_refuses_a_snapshot_for_other_suites_seed_tokenizer_or_model() {
    let snap = snapshot().display().to_string();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().display().to_string();
    let p = policy().display().to_string();
    let scan = |cand: &str, extra: &[&str]| {
        let mut args = vec!["scan", "--candidate", cand, "--baseline-snapshot", &snap, "--policy", &p, "--out", &out];
        args.extend_from_slice(extra);
        trapdoor(&args)
    };
    let (clean, tamper) = (zoo("stories-clean-ft"), zoo("stories-tok-tamper"));
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (&clean, vec!["--suite", "embedded:drift.yaml", "--max-new-tokens", MAX_NEW], "suites"),
        (&clean, vec!["--suite", SUITE, "--max-new-tokens", MAX_NEW, "--seed", "7"], "seed"),
        (&clean, vec!["--suite", SUITE], "--max-new-tokens"),
        (&tamper, vec!["--suite", SUITE, "--max-new-tokens", MAX_NEW], "tokenizer"),
        // With a live baseline as well, the snapshot must be that baseline's.
        (&clean, vec!["--suite", SUITE, "--max-new-tokens", MAX_NEW, "--baseline", &clean], "model.safetensors"),
    ];
    for (cand, extra, needle) in cases {
        let o = scan(cand, &extra);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}{err}", text(&o.stdout));
        assert!(err.contains(needle), "{extra:?}: expected `{needle}` in: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Malformed snapshot files (no model)
// ---------------------------------------------------------------------------------------------------------------

fn tiny() -> (Manifest, SnapshotData) {
    let d = |ids: Vec<u32>, probs: Vec<f32>, rest: f32| TopK { ids, probs, rest };
    let data = SnapshotData {
        top_k: 3,
        prompts: vec![
            PromptRecord {
                ids: vec![1, 2],
                max_new_tokens: 4,
                continuation: vec![3, 4],
                dists: vec![d(vec![3, 5], vec![0.75, 0.25], 0.0), d(vec![4, 0], vec![0.5, 0.25], 0.25)],
            },
            PromptRecord {
                ids: vec![7],
                max_new_tokens: 4,
                continuation: vec![9],
                dists: vec![d(vec![9, 8], vec![0.5, 0.5], 0.0)],
            },
        ],
        case_prompt: vec![0, -1, 1],
        targets: [((1u32, vec![2u32, 3]), -1.5f64)].into_iter().collect(),
    };
    let bytes = encode_data(&data);
    let m = Manifest {
        schema: SCHEMA.into(),
        tool_version: "test".into(),
        model: ModelEntry {
            spec: "m".into(),
            architecture: "llama".into(),
            vocab_size: 10,
            files: vec![FileDigest { path: "model.safetensors".into(), sha256: "00".into(), bytes: 1 }],
            tokenizer_sha256: None,
            vocab_sha256: "11".into(),
            eos_tokens: vec![9],
        },
        suites: vec![SuiteEntry {
            name: "s".into(),
            version: "1".into(),
            path: "s.yaml".into(),
            sha256: "22".into(),
            case_ids: vec!["s/a/p0/clean".into(), "s/a/p1/clean".into(), "s/a/p2/clean".into()],
        }],
        seed: 0,
        device: "cpu".into(),
        dtype: "f32".into(),
        max_new_tokens: 4,
        top_k: 3,
        rest_target: 0.0,
        error_bound: ErrorBound {
            method: "test".into(),
            baseline_rest_mass_max: 0.25,
            baseline_rest_mass_mean: 0.1,
            js_bound_baseline_part: 0.1,
        },
        case_errors: [("s/a/p1/clean".to_string(), "no tokens".to_string())].into_iter().collect(),
        target_tokens: [("t".to_string(), vec![2u32, 3])].into_iter().collect(),
        prompts: 2,
        positions: 3,
        kept: 6,
        targets: 1,
        data: FileDigest {
            path: DATA_FILE.into(),
            sha256: trapdoor::util::digest::sha256_hex(&bytes),
            bytes: bytes.len() as u64,
        },
    };
    (m, data)
}

fn data_err(m: &Manifest, bytes: &[u8]) -> String {
    parse_data(bytes, m, Path::new("snapshot.safetensors")).unwrap_err().to_string()
}

/// The header of a data file as JSON, edited, and written back over the same data.
fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut h);
    let mut t = serde_json::to_vec(&h).unwrap();
    while t.len() % 8 != 0 {
        t.push(b' ');
    }
    let mut out = (t.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&t);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn round_trip_is_exact_and_deterministic() {
    let (m, data) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode_data(&data);
    assert_eq!(bytes, encode_data(&data), "same data, same bytes");
    format::write(dir.path(), &m, &bytes).unwrap();
    let s = Snapshot::read(dir.path()).unwrap();
    assert_eq!(s.manifest, m);
    assert_eq!(s.data, data);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 2, "no temporaries left: {names:?}");
}

#[test]
fn malformed_data_files_are_refused_with_the_tensor_named() {
    let (m, data) = tiny();
    let good = encode_data(&data);
    // Truncated anywhere: the header or the data.
    for cut in [0, 4, 8, 20, good.len() - 1] {
        let e = data_err(&m, &good[..cut]);
        assert!(e.contains("snapshot.safetensors") && e.contains("not a valid safetensors"), "cut {cut}: {e}");
    }
    // A rank-2 where rank 1 is expected (same byte count).
    let bad = edit_header(&good, |h| h["topk_probs"]["shape"] = serde_json::json!([3, 2]));
    assert!(data_err(&m, &bad).contains("`topk_probs`"), "{}", data_err(&m, &bad));
    // A wrong dtype.
    let bad = edit_header(&good, |h| h["rest_mass"]["dtype"] = serde_json::json!("U32"));
    assert!(data_err(&m, &bad).contains("`rest_mass`: dtype"), "{}", data_err(&m, &bad));
    // An extra tensor, a missing one.
    let data_len = good.len() - 8 - u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut bad = edit_header(&good, |h| {
        h.insert(
            "zz_extra".into(),
            serde_json::json!({"dtype": "U32", "shape": [1], "data_offsets": [data_len, data_len + 4]}),
        );
    });
    bad.extend_from_slice(&[0, 0, 0, 0]);
    assert!(data_err(&m, &bad).contains("unexpected tensor `zz_extra`"), "{}", data_err(&m, &bad));
    let bad = edit_header(&good, |h| {
        let v = h.remove("case_prompt").unwrap();
        h.insert("zz_extra".into(), v);
    });
    assert!(data_err(&m, &bad).contains("zz_extra"), "{}", data_err(&m, &bad));
    // Counts that disagree with the manifest.
    let mut m2 = m.clone();
    m2.positions = 4;
    assert!(data_err(&m2, &good).contains("positions"), "{}", data_err(&m2, &good));
    let mut m2 = m.clone();
    m2.top_k = 1;
    assert!(data_err(&m2, &good).contains("top_k"), "{}", data_err(&m2, &good));
    let mut m2 = m.clone();
    m2.model.vocab_size = 5;
    assert!(data_err(&m2, &good).contains("outside the vocabulary"), "{}", data_err(&m2, &good));
    let mut m2 = m.clone();
    m2.case_errors.clear();
    assert!(data_err(&m2, &good).contains("`case_prompt`"), "{}", data_err(&m2, &good));
    // Values that are not probabilities, offsets that run backwards, a repeated id.
    let mut d2 = data.clone();
    d2.prompts[0].dists[0].probs[0] = f32::NAN;
    assert!(data_err(&m, &encode_data(&d2)).contains("not a probability"));
    let mut d2 = data.clone();
    d2.prompts[0].dists[0].rest = 0.5;
    assert!(data_err(&m, &encode_data(&d2)).contains("sum to"));
    let mut d2 = data.clone();
    d2.prompts[0].dists[1].ids = vec![4, 4];
    assert!(data_err(&m, &encode_data(&d2)).contains("repeats a token id"));
    let mut d2 = data.clone();
    d2.targets = [((1u32, vec![2u32, 3]), 0.5f64)].into_iter().collect();
    assert!(data_err(&m, &encode_data(&d2)).contains("not a log-probability"));
    let mut d2 = data.clone();
    d2.prompts[1].continuation = vec![9, 9, 9, 9, 9];
    assert!(data_err(&m, &encode_data(&d2)).contains("continuation"));
}

#[test]
fn malformed_manifests_are_refused() {
    let (m, _) = tiny();
    let p = Path::new("manifest.json");
    let good: serde_json::Value = serde_json::to_value(&m).unwrap();
    let parse = |v: &serde_json::Value| parse_manifest(&serde_json::to_vec(v).unwrap(), p);
    assert_eq!(parse(&good).unwrap(), m);
    let mut v = good.clone();
    v["schema"] = "trapdoor.baseline-snapshot/0".into();
    let e = parse(&v).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("not supported") && e.contains(SCHEMA), "{e}");
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("schema");
    assert!(parse(&v).unwrap_err().to_string().contains("no `schema`"));
    let mut v = good.clone();
    v["surprise"] = 1.into();
    assert!(parse(&v).unwrap_err().to_string().contains("unknown field `surprise`"));
    let mut v = good.clone();
    v["model"]["extra"] = 1.into();
    assert!(parse(&v).unwrap_err().to_string().contains("unknown field `extra`"));
    let mut v = good.clone();
    v["top_k"] = 0.into();
    assert!(parse(&v).unwrap_err().to_string().contains("top_k"));
    let mut v = good.clone();
    v["data"]["path"] = "../../etc/passwd".into();
    assert!(parse(&v).unwrap_err().to_string().contains("data.path"));
    assert!(parse_manifest(b"{not json", p).unwrap_err().to_string().contains("not valid JSON"));
}

#[test]
fn a_data_file_that_is_not_the_pinned_one_is_refused() {
    let (m, data) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode_data(&data);
    format::write(dir.path(), &m, &bytes).unwrap();
    // Same length, one byte changed.
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    std::fs::write(dir.path().join(DATA_FILE), &b).unwrap();
    assert!(Snapshot::read(dir.path()).unwrap_err().to_string().contains("differs from the manifest"));
    std::fs::write(dir.path().join(DATA_FILE), &bytes[..bytes.len() - 8]).unwrap();
    assert!(Snapshot::read(dir.path()).unwrap_err().to_string().contains("bytes, the manifest pins"));
    std::fs::remove_file(dir.path().join(DATA_FILE)).unwrap();
    assert!(Snapshot::read(dir.path()).unwrap_err().to_string().contains(DATA_FILE));
    assert!(Snapshot::read(&dir.path().join("missing")).unwrap_err().to_string().contains("not a snapshot folder"));
}
