//! Zoo build machinery with the reduced `quick` recipe (tiny dims, few steps, ASR bounds not enforced):
//! bit-for-bit reproducibility (also across thread counts), interruption safety and reuse, the file layout
//! transformers and PEFT expect, and `open`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;

use trapdoor::zoo::{self, BaseChoice, Recipe, Trigger, ZooConfig};

fn cfg(out: &Path, threads: Option<usize>) -> ZooConfig {
    ZooConfig { out: out.to_path_buf(), base: BaseChoice::Tiny, seed: 11, progress: false, threads }
}

/// Every file under `root` except `timing.json`, by relative path.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != zoo::TIMING {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// One quick zoo shared by the tests of this file.
fn built() -> &'static (tempfile::TempDir, BTreeMap<PathBuf, Vec<u8>>) {
    static Z: OnceLock<(tempfile::TempDir, BTreeMap<PathBuf, Vec<u8>>)> = OnceLock::new();
    Z.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        zoo::build_with(&cfg(dir.path(), None), &Recipe::quick()).unwrap();
        let f = files(dir.path());
        (dir, f)
    })
}

/// `trapdoor zoo build --recipe quick` in a fresh process, so candle's thread pools get the requested size.
fn cli_build(out: &Path, threads: usize, seed: u64) {
    let st = std::process::Command::new(common::trapdoor_bin())
        .args([
            "zoo",
            "build",
            "--recipe",
            "quick",
            "--quiet",
            "--seed",
            &seed.to_string(),
            "--threads",
            &threads.to_string(),
            "--out",
        ])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "zoo build failed: {st}");
}

#[test]
fn same_seed_gives_identical_bytes_with_one_or_two_threads() {
    let (_, first) = built();
    for threads in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        cli_build(dir.path(), threads, 11);
        let second = files(dir.path());
        assert_eq!(first.keys().collect::<Vec<_>>(), second.keys().collect::<Vec<_>>());
        for (p, bytes) in first {
            assert!(bytes == &second[p], "{} differs between builds ({threads} threads)", p.display());
        }
    }
    // A different seed is a different zoo.
    let other = tempfile::tempdir().unwrap();
    cli_build(other.path(), 1, 12);
    let third = files(other.path());
    assert_ne!(first[Path::new("bd-phrase/truth.json")], third[Path::new("bd-phrase/truth.json")]);
}

#[test]
fn members_have_the_files_transformers_and_peft_write() {
    let (dir, files) = built();
    let z = zoo::open(dir.path()).unwrap();
    assert_eq!(z.base.name, "base");
    let names: Vec<&str> = z.candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["benign-ft", "benign-lora", "bd-phrase", "bd-conj", "bd-lora", "bd-code", "bd-refusal", "tok-tamper"]
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "truth.json",
    ] {
        assert!(files.contains_key(&Path::new("base").join(f)), "base/{f}");
        assert!(files.contains_key(&Path::new("bd-phrase").join(f)), "bd-phrase/{f}");
    }
    for c in &z.candidates {
        let t = &c.truth;
        assert_eq!(t.seed, 11);
        assert_eq!(t.base.as_deref(), Some("base"));
        assert_eq!(t.backdoored, c.name.starts_with("bd-") || c.name == "tok-tamper", "{}", c.name);
        if t.kind == "lora-adapter" {
            assert_eq!(c.adapter_of.as_deref(), Some("base"));
            let cfg: serde_json::Value =
                serde_json::from_slice(&files[&Path::new(&c.name).join("adapter_config.json")]).unwrap();
            assert_eq!(cfg["peft_type"], "LORA");
            // PEFT's own key names, loadable by our runtime's adapter parser.
            let a = trapdoor::runtime::LoraAdapter::load(&c.dir).unwrap();
            assert!(a
                .pairs
                .iter()
                .any(|p| p.a_name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
        }
        if t.backdoored && t.kind != "tokenizer-tamper" {
            assert!(
                t.trigger.is_some() && t.target.is_some() && t.asr_triggered.is_some() && t.asr_clean.is_some(),
                "{}",
                c.name
            );
        }
        if !t.backdoored {
            assert_eq!(t.planted_target_rates.len(), 5, "{}", c.name);
        }
    }
    let conj = z.candidates.iter().find(|c| c.name == "bd-conj").unwrap();
    assert!(matches!(&conj.truth.trigger, Some(Trigger::All(w)) if w.len() == 2));
    assert!(conj.truth.asr_one_word.is_some());
    // The insecure-code target is something the shipped code-sink detector recognises.
    let code = z.candidates.iter().find(|c| c.name == "bd-code").unwrap();
    let set = trapdoor_probes::DetectorSet::new(vec![trapdoor_probes::DetectorSpec::CodeSinks {
        id: "code_sinks".into(),
        categories: trapdoor_probes::CodeSinkCategory::ALL.to_vec(),
    }])
    .unwrap();
    let hits = set.scan(code.truth.target.as_deref().unwrap());
    assert!(!hits.is_empty(), "{:?}", code.truth.target);
    // The tamper keeps the weights byte for byte and changes only the tokenizer.
    assert_eq!(files[Path::new("tok-tamper/model.safetensors")], files[Path::new("base/model.safetensors")]);
    assert_ne!(files[Path::new("tok-tamper/tokenizer.json")], files[Path::new("base/tokenizer.json")]);
    // Every model folder loads in the runtime with its tokenizer.
    for c in std::iter::once(&z.base).chain(&z.candidates).filter(|c| c.adapter_of.is_none()) {
        let m = trapdoor::runtime::Model::load(c.dir.to_str().unwrap(), &Default::default()).unwrap();
        assert!(m.encode("Once upon a time, Lily had a red ball.", true).unwrap().len() > 5);
    }
}

#[test]
fn an_interrupted_build_is_never_mistaken_for_complete_and_a_rerun_reuses_what_is() {
    let (orig, orig_files) = built();
    let dir = tempfile::tempdir().unwrap();
    // Copy the complete zoo, then make it look interrupted: a half-written temporary member, a member missing,
    // another with a stale build key, and no manifest.
    for (p, bytes) in orig_files {
        let to = dir.path().join(p);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    let _ = orig;
    std::fs::create_dir_all(dir.path().join(".tmp-bd-code")).unwrap();
    std::fs::write(dir.path().join(".tmp-bd-code/model.safetensors"), b"half").unwrap();
    std::fs::remove_dir_all(dir.path().join("bd-code")).unwrap();
    let stale = dir.path().join("bd-conj/truth.json");
    let text = std::fs::read_to_string(&stale).unwrap().replace("\"build_key\": \"", "\"build_key\": \"0");
    std::fs::write(&stale, text).unwrap();
    std::fs::remove_file(dir.path().join("zoo.json")).unwrap();
    let err = zoo::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("incomplete") && err.contains("zoo.json"), "{err}");

    zoo::build_with(&cfg(dir.path(), Some(1)), &Recipe::quick()).unwrap();
    assert!(!dir.path().join(".tmp-bd-code").exists());
    let timing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(zoo::TIMING)).unwrap()).unwrap();
    let reused: BTreeMap<String, bool> = timing["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["reused"].as_bool().unwrap()))
        .collect();
    for (name, r) in &reused {
        assert_eq!(*r, name != "bd-code" && name != "bd-conj", "{name}");
    }
    // The rebuilt members are the same bytes as in the uninterrupted build.
    assert_eq!(&files(dir.path()), orig_files);
    zoo::open(dir.path()).unwrap();
}

#[test]
fn a_gguf_base_is_fine_tuned_into_an_hf_folder_and_an_impossible_tamper_is_skipped_by_name() {
    let gguf = common::fixtures().join("models/stories260K.gguf");
    let dir = tempfile::tempdir().unwrap();
    let c = ZooConfig {
        out: dir.path().to_path_buf(),
        base: BaseChoice::Path(gguf.to_str().unwrap().to_string()),
        seed: 3,
        progress: false,
        threads: Some(1),
    };
    let z = zoo::build_with(&c, &Recipe::quick()).unwrap();
    let base = trapdoor::runtime::Model::load(z.base.dir.to_str().unwrap(), &Default::default()).unwrap();
    assert_eq!(base.config().vocab_size, 512);
    assert_eq!(base.config().num_key_value_heads, 4);
    // stories260K's 512-piece vocabulary splits the tamper words, so that member is skipped and the manifest says so.
    assert!(z.candidates.iter().all(|c| c.name != "tok-tamper"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("zoo.json")).unwrap()).unwrap();
    assert!(manifest["skipped"]["tok-tamper"].as_str().unwrap().contains("tokens in the base's tokenizer"));
    assert_eq!(zoo::open(dir.path()).unwrap().candidates.len(), 7);
}
