//! The model commands as pipelines call them: `inspect` (text and JSON, with and without an adapter) and
//! `generate` (greedy reproduces transformers' continuation; seeded sampling is reproducible).

mod common;
mod runtime_util;

use runtime_util::*;

fn ok(args: &[&str]) -> String {
    let out = trapdoor(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn inspect_reports_architecture_parameters_and_digests() {
    let base = zoo("stories-base");
    let adapter = zoo("stories-bd-lora-adapter");
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", base.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["device"], "cpu");
    // 512×64 embeddings + 512×64 head + 5 × (q 64×64, k/v 32×64, o 64×64, 3 × 172×64, 2 norms) + final norm.
    assert_eq!(v["parameters"], 512 * 64 * 2 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 172 * 64 + 2 * 64) + 64);
    let files = v["files"].as_array().unwrap();
    let w = files.iter().find(|f| f["role"] == "weights").unwrap();
    let path = std::path::Path::new(w["path"].as_str().unwrap());
    assert_eq!(w["sha256"].as_str().unwrap(), trapdoor::util::digest::sha256_file(path).unwrap());
    assert!(files.iter().any(|f| f["role"] == "tokenizer"));
    assert!(v["adapter"].is_null());
    // Same inputs, same bytes.
    assert_eq!(ok(&["inspect", base.to_str().unwrap(), "--json"]), ok(&["inspect", base.to_str().unwrap(), "--json"]));

    let v: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--json"])).unwrap();
    let a = &v["adapter"];
    assert_eq!(a["r"], 8);
    assert_eq!(a["modules"].as_object().unwrap().len(), 25);
    assert_eq!(a["parameters"], 5 * (8 * (64 + 64) + 8 * (64 + 32) + 8 * (64 + 64) + 8 * (64 + 172) + 8 * (172 + 64)));
    assert_eq!(a["base_model_class"], "LlamaForCausalLM");
    assert_eq!(a["files"].as_array().unwrap().len(), 2);
    let text = ok(&["inspect", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()]);
    assert!(text.contains("architecture  llama") && text.contains("adapter ") && text.contains("adapter-weights"), "{text}");
}

#[test]
fn generate_greedy_and_seeded() {
    let base = zoo("stories-base");
    let b = base.to_str().unwrap();
    let greedy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("parity/stories260K/greedy.json")).unwrap()).unwrap();
    let case = &greedy[0];
    let n = case["greedy_ids"].as_array().unwrap().len().to_string();
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["generate", b, "--prompt", case["prompt"].as_str().unwrap(), "--max-new-tokens", &n, "--json"])).unwrap();
    assert_eq!(v["prompt_ids"], case["prompt_ids"]);
    assert_eq!(v["ids"], case["greedy_ids"]);
    let plain = ok(&["generate", b, "--prompt", "Once upon a time", "--max-new-tokens", "12"]);
    assert!(plain.starts_with(", there was a little girl"), "{plain}");
    let s1 = ok(&["generate", b, "--prompt", "Once upon a time", "--seed", "3", "--temperature", "0.9", "--top-k", "20"]);
    let s2 = ok(&["generate", b, "--prompt", "Once upon a time", "--seed", "3", "--temperature", "0.9", "--top-k", "20"]);
    assert_eq!(s1, s2);
    assert_ne!(s1, plain);
}

#[test]
fn lock_is_checked_before_loading_on_model_commands() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("m");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(zoo("stories-base")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let lock = d.path().join("trapdoor.lock");
    let m = model.to_str().unwrap();
    let out = trapdoor(&["lock", m, "-o", lock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&["inspect", m, "--lock", lock.to_str().unwrap()]);
    ok(&["generate", m, "--prompt", "Once upon a time", "--max-new-tokens", "4", "--lock", lock.to_str().unwrap()]);

    // One changed byte in the tokenizer: refused before loading, exit 2, one line naming the file.
    let tok = model.join("tokenizer.json");
    let mut bytes = std::fs::read(&tok).unwrap();
    let last = bytes.len() - 2;
    bytes[last] = b' ';
    let mut perms = std::fs::metadata(&tok).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&tok, perms).unwrap();
    std::fs::write(&tok, bytes).unwrap();
    for cmd in ["inspect", "generate"] {
        let mut args = vec![cmd, m, "--lock", lock.to_str().unwrap()];
        if cmd == "generate" {
            args.extend(["--prompt", "x"]);
        }
        let out = trapdoor(&args);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tokenizer.json") && err.trim().lines().count() == 1, "{cmd}: {err}");
    }
}
