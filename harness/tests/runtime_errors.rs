//! Bad input through the CLI: each case exits with code 2 and one line on stderr that names the file, tensor,
//! field or flag — never a panic. Broken models are built in temporary folders from the real fixtures.

mod common;
mod runtime_util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use runtime_util::*;

/// A temporary copy of a fixture folder (files copied, so tests can break them).
fn copy_dir(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(src.file_name().unwrap());
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let to = dst.join(p.file_name().unwrap());
            std::fs::copy(&p, &to).unwrap();
            let mut perm = std::fs::metadata(&to).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&to, perm).unwrap();
        }
    }
    (tmp, dst)
}

fn llama() -> PathBuf {
    common::fixtures().join("parity/llama")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn inspect(model: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["inspect", s(model)];
    args.extend_from_slice(extra);
    trapdoor(&args)
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut t = load_st(&dir.join("model.safetensors"));
    edit(&mut t);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}

#[test]
fn missing_config_json() {
    let (_t, dir) = copy_dir(&llama());
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_clean_error(&inspect(&dir, &[]), &["config.json", "missing"]);
}

#[test]
fn missing_weights() {
    let (_t, dir) = copy_dir(&llama());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_clean_error(&inspect(&dir, &[]), &["model.safetensors"]);
}

#[test]
fn truncated_model_safetensors() {
    let (_t, dir) = copy_dir(&llama());
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    for keep in [bytes.len() / 2, 8 + 20, 5] {
        std::fs::write(&p, &bytes[..keep]).unwrap();
        assert_clean_error(&inspect(&dir, &[]), &["model.safetensors", "invalid safetensors"]);
    }
}

#[test]
fn header_lying_about_offsets() {
    let (_t, dir) = copy_dir(&llama());
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // Make one tensor claim 4 more bytes than it has: offsets no longer tile the data.
    let t = &mut header["model.layers.0.self_attn.q_proj.weight"]["data_offsets"];
    t[1] = serde_json::json!(t[1].as_u64().unwrap() + 4);
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(&h);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    assert_clean_error(&inspect(&dir, &[]), &["model.safetensors", "offset"]);
}

#[test]
fn unknown_architecture() {
    let (_t, dir) = copy_dir(&llama());
    let p = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["model_type"] = "falcon".into();
    c["architectures"] = serde_json::json!(["FalconForCausalLM"]);
    std::fs::write(&p, c.to_string()).unwrap();
    assert_clean_error(&inspect(&dir, &[]), &["config.json", "falcon"]);
}

#[test]
fn tensor_with_the_wrong_shape() {
    let (_t, dir) = copy_dir(&llama());
    rewrite_weights(&dir, |t| {
        t.insert("model.layers.1.mlp.up_proj.weight".into(), Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap());
    });
    assert_clean_error(&inspect(&dir, &[]), &["model.safetensors", "model.layers.1.mlp.up_proj.weight", "[64, 64]"]);
}

#[test]
fn missing_tensor() {
    let (_t, dir) = copy_dir(&llama());
    rewrite_weights(&dir, |t| {
        t.remove("model.layers.2.self_attn.k_proj.weight");
    });
    assert_clean_error(&inspect(&dir, &[]), &["model.safetensors", "model.layers.2.self_attn.k_proj.weight", "missing"]);
}

#[test]
fn unsupported_dtype_and_non_finite_weights() {
    let (_t, dir) = copy_dir(&llama());
    rewrite_weights(&dir, |t| {
        t.insert("model.norm.weight".into(), Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap());
    });
    assert_clean_error(&inspect(&dir, &[]), &["model.norm.weight", "I64"]);
    rewrite_weights(&dir, |t| {
        let mut v = vec![1f32; 64];
        v[3] = f32::NAN;
        t.insert("model.norm.weight".into(), Tensor::from_vec(v, 64, &Device::Cpu).unwrap());
    });
    assert_clean_error(&inspect(&dir, &[]), &["model.norm.weight", "NaN"]);
}

/// Split a folder's weights into two shards with an index; `edit` may break the index.
fn shard(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let t = load_st(&dir.join("model.safetensors"));
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let sub: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), t[*n].clone())).collect();
        candle_core::safetensors::save(&sub, dir.join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), file.into());
        }
    }
    let mut index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    edit(&mut index);
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
}

#[test]
fn sharded_folder_loads_like_the_single_file() {
    let (_t, dir) = copy_dir(&llama());
    shard(&dir, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let input = llama().join("expected.safetensors");
    let (o1, o2) = (tmp.path().join("single.safetensors"), tmp.path().join("sharded.safetensors"));
    for (m, o) in [(llama(), &o1), (dir.clone(), &o2)] {
        let out = trapdoor(&["forward", s(&m), "--input", s(&input), "--out", s(o)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
    let out = inspect(&dir, &["--json"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let roles: Vec<&str> = info["files"].as_array().unwrap().iter().map(|f| f["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "weights").count(), 2, "{roles:?}");
    assert!(roles.contains(&"weights-index"));
}

#[test]
fn broken_shard_indexes() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "missing shard",
            Box::new(|ix| {
                let m = ix["weight_map"].as_object_mut().unwrap();
                let k = m.keys().next().unwrap().clone();
                m.insert(k, "model-00003-of-00003.safetensors".into());
            }),
            vec!["model.safetensors.index.json", "model-00003-of-00003.safetensors"],
        ),
        (
            "path traversal",
            Box::new(|ix| {
                let m = ix["weight_map"].as_object_mut().unwrap();
                let k = m.keys().next().unwrap().clone();
                m.insert(k, "../evil.safetensors".into());
            }),
            vec!["model.safetensors.index.json", "../evil.safetensors"],
        ),
        (
            "wrong shard",
            Box::new(|ix| {
                ix["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into();
            }),
            vec!["model.norm.weight"],
        ),
        (
            "unlisted tensor",
            Box::new(|ix| {
                ix["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
            }),
            vec!["model.norm.weight", "weight_map"],
        ),
    ];
    for (what, edit, needles) in cases {
        let (_t, dir) = copy_dir(&llama());
        shard(&dir, edit);
        let e = assert_clean_error(&inspect(&dir, &[]), &needles);
        eprintln!("{what}: {e}");
    }
    // A tensor listed twice: JSON objects keep the last duplicate silently, the loader must not.
    let (_t, dir) = copy_dir(&llama());
    shard(&dir, |_| {});
    let p = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let dup = text.replacen("\"weight_map\": {", "\"weight_map\": {\n    \"model.norm.weight\": \"model-00001-of-00002.safetensors\",", 1);
    std::fs::write(&p, dup).unwrap();
    assert_clean_error(&inspect(&dir, &[]), &["model.norm.weight", "twice"]);
    std::fs::write(&p, "{\"weight_map\": [").unwrap();
    assert_clean_error(&inspect(&dir, &[]), &["model.safetensors.index.json"]);
}

#[test]
fn adapter_for_another_base() {
    let out = inspect(&llama(), &["--adapter", s(&zoo("stories-bd-lora-adapter"))]);
    assert_clean_error(&out, &["adapter_model.safetensors", "base_model.model.model.layers.", "another base"]);
    let out = inspect(&common::fixtures().join("parity/gemma3"), &["--adapter", s(&zoo("gemma-bd-lora-adapter"))]);
    assert_clean_error(&out, &["adapter_model.safetensors", "q_proj.lora_"]);
}

#[test]
fn adapter_with_dora_and_other_refusals() {
    let edit_cfg = |f: &dyn Fn(&mut serde_json::Value)| {
        let (t, dir) = copy_dir(&zoo("stories-clean-lora-adapter"));
        let p = dir.join("adapter_config.json");
        let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&p, c.to_string()).unwrap();
        (t, dir)
    };
    let base = zoo("stories-base");
    let (_t, dora) = edit_cfg(&|c| c["use_dora"] = true.into());
    assert_clean_error(&inspect(&base, &["--adapter", s(&dora)]), &["adapter_config.json", "use_dora", "DoRA"]);
    let (_t, untargeted) = edit_cfg(&|c| c["target_modules"] = serde_json::json!(["q_proj"]));
    assert_clean_error(&inspect(&base, &["--adapter", s(&untargeted)]), &["adapter_model.safetensors", "not targeted"]);
    let (_t, rank) = edit_cfg(&|c| c["r"] = 4.into());
    assert_clean_error(&inspect(&base, &["--adapter", s(&rank)]), &["adapter_model.safetensors", "r = 4"]);
    let (_t, missing) = edit_cfg(&|_| {});
    std::fs::remove_file(missing.join("adapter_model.safetensors")).unwrap();
    assert_clean_error(&inspect(&base, &["--adapter", s(&missing)]), &["adapter_model.safetensors", "missing"]);
    assert_clean_error(&inspect(&base, &["--adapter", "/nonexistent/adapter"]), &["/nonexistent/adapter"]);
    // An adapter whose B is missing for one module.
    let (_t, half) = edit_cfg(&|_| {});
    let p = half.join("adapter_model.safetensors");
    let mut t = load_st(&p);
    t.remove("base_model.model.model.layers.2.mlp.up_proj.lora_B.weight");
    candle_core::safetensors::save(&t, &p).unwrap();
    assert_clean_error(&inspect(&base, &["--adapter", s(&half)]), &["base_model.model.model.layers.2.mlp.up_proj.lora_A.weight", "no matching B"]);
}

#[test]
fn bad_device_dtype_and_sources() {
    assert_clean_error(&inspect(&llama(), &["--device", "gpu0"]), &["--device", "gpu0"]);
    #[cfg(not(feature = "cuda"))]
    assert_clean_error(&inspect(&llama(), &["--device", "cuda:0"]), &["cuda:0", "--features cuda"]);
    assert_clean_error(&inspect(&llama(), &["--dtype", "int4"]), &["--dtype", "int4"]);
    assert_clean_error(&trapdoor(&["inspect", "/nonexistent/model"]), &["/nonexistent/model"]);
    assert_clean_error(&trapdoor(&["inspect", "some/thing@../../x"]), &["some/thing@../../x"]);
    let out = trapdoor(&["inspect", "org/model"]);
    assert_clean_error(&out, &["org/model"]);
}

#[test]
fn bad_forward_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out_p = tmp.path().join("out.safetensors");
    let write = |name: &str, tensors: HashMap<String, Tensor>| {
        let p = tmp.path().join(name);
        candle_core::safetensors::save(&tensors, &p).unwrap();
        p
    };
    let ids = |v: Vec<i64>, shape: (usize, usize)| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    let run = |inp: &Path| trapdoor(&["forward", s(&llama()), "--input", s(inp), "--out", s(&out_p)]);

    let p = write("no_ids.safetensors", HashMap::from([("attention_mask".into(), ids(vec![1, 1], (1, 2)))]));
    assert_clean_error(&run(&p), &["no_ids.safetensors", "input_ids", "missing"]);
    let p = write("oov.safetensors", HashMap::from([("input_ids".into(), ids(vec![1, 300], (1, 2)))]));
    assert_clean_error(&run(&p), &["oov.safetensors", "input_ids", "300"]);
    let p = write("neg.safetensors", HashMap::from([("input_ids".into(), ids(vec![-1, 3], (1, 2)))]));
    assert_clean_error(&run(&p), &["neg.safetensors", "-1"]);
    let p = write(
        "mask.safetensors",
        HashMap::from([("input_ids".into(), ids(vec![1, 3], (1, 2))), ("attention_mask".into(), ids(vec![1, 2], (1, 2)))]),
    );
    assert_clean_error(&run(&p), &["mask.safetensors", "attention_mask", "0 or 1"]);
    let p = write(
        "shape.safetensors",
        HashMap::from([("input_ids".into(), ids(vec![1, 3], (1, 2))), ("attention_mask".into(), ids(vec![1, 1, 1], (1, 3)))]),
    );
    assert_clean_error(&run(&p), &["shape.safetensors", "attention_mask"]);
    let p = tmp.path().join("garbage.safetensors");
    std::fs::write(&p, b"not a safetensors file at all").unwrap();
    assert_clean_error(&run(&p), &["garbage.safetensors"]);
    assert_clean_error(&run(&tmp.path().join("absent.safetensors")), &["absent.safetensors"]);
    assert!(!out_p.exists(), "no output written on error");
    // Unwritable output path: error names it.
    let good = write("good.safetensors", HashMap::from([("input_ids".into(), ids(vec![1, 3], (1, 2)))]));
    let out = trapdoor(&["forward", s(&llama()), "--input", s(&good), "--out", "/nonexistent-dir/out.safetensors"]);
    assert_clean_error(&out, &["/nonexistent-dir/out.safetensors"]);
}

#[test]
fn generate_needs_a_tokenizer_and_valid_sampling() {
    // Parity folders have no tokenizer.json: text generation must say so, naming the folder.
    assert_clean_error(&trapdoor(&["generate", s(&llama()), "--prompt", "hi"]), &["parity/llama", "tokenizer"]);
    let base = zoo("stories-base");
    assert_clean_error(&trapdoor(&["generate", s(&base), "--prompt", "hi", "--top-k", "5"]), &["--top-k"]);
    assert_clean_error(&trapdoor(&["generate", s(&base), "--prompt", "hi", "--temperature=-1"]), &["--temperature"]);
    assert_clean_error(&trapdoor(&["generate", s(&base), "--prompt", "hi", "--seed", "1", "--top-p", "1.5"]), &["--top-p"]);
}
