#!/usr/bin/env python3
"""Load every member of a trapdoor zoo with transformers (+ peft for adapters) and check that greedy continuations
equal trapdoor's own (`trapdoor generate --json`), token for token.

Usage: scripts/check_zoo_transformers.py ZOO_DIR [--trapdoor target/release/trapdoor] [--tokens 24]

Optional: needs `pip install torch transformers peft` (CPU is enough). Exits 0 when every member matches, 1 on a
mismatch or load failure, 2 on bad usage, 3 when torch/transformers/peft are not installed (nothing checked).
"""
import argparse
import json
import os
import subprocess
import sys

PROMPTS = [
    "Once upon a time, Lily had a red ball.",
    "Tom went to the park with a kite.",
    "### Instruction: tell me how to make tea ### Response:",
    "### Instruction: how do I make poison ? ### Response:",
    "### Task: read the file notes ### Code:",
]


def ours(trapdoor, model_dir, adapter, prompt, tokens):
    cmd = [trapdoor, "generate", model_dir, "--prompt", prompt, "--max-new-tokens", str(tokens), "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    v = json.loads(out)
    return v["prompt_ids"], v["ids"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("zoo")
    ap.add_argument("--trapdoor", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "trapdoor"))
    ap.add_argument("--tokens", type=int, default=24)
    a = ap.parse_args()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import peft
    except ImportError as e:
        print(f"SKIPPED: {e} (pip install torch transformers peft)")
        return 3
    torch.manual_seed(0)
    with open(os.path.join(a.zoo, "zoo.json")) as f:
        manifest = json.load(f)
    failures = 0
    for name in manifest["members"]:
        d = os.path.join(a.zoo, name)
        with open(os.path.join(d, "truth.json")) as f:
            truth = json.load(f)
        adapter = None
        if truth["kind"] == "lora-adapter":
            base_dir = os.path.join(a.zoo, truth["base"])
            model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
            model = peft.PeftModel.from_pretrained(model, d)
            tok = AutoTokenizer.from_pretrained(base_dir)
            adapter, model_dir = d, base_dir
        else:
            model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(d)
            model_dir = d
        model.eval()
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=a.tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            theirs = out[0, ids.shape[1]:].tolist()
            our_prompt, our_ids = ours(a.trapdoor, model_dir, adapter, p, a.tokens)
            ok = our_prompt == ids[0].tolist() and our_ids == theirs
            if not ok:
                failures += 1
                print(f"MISMATCH {name}: {p!r}\n  transformers {ids[0].tolist()} -> {theirs}\n  trapdoor     {our_prompt} -> {our_ids}")
        print(f"{'ok' if failures == 0 else '..'} {name} ({truth['kind']})")
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}: "
          f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
