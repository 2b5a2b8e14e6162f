#!/usr/bin/env bash
# Benchmark of a full default `trapdoor scan` (every shipped suite, default policy) on the stories260K pair and, when
# the GGUF is present, on the gemma-3-270m pair (base vs its benign LoRA). Prints, per pair, the scan's own
# timing.json figures: wall seconds per stage, distinct prompts per second, cases per second and peak resident memory
# (VmHWM). Quote them with the machine and whether it was shared.
#
#   benches/scan.sh [stories|gemma|all] [extra scan flags...]     (default: all)
#
# Needs a release build (`cargo build --release -p trapdoor`) and ../shared/fixtures; gemma needs
# scripts/fetch-gemma.sh. Results land in target/bench-scan/<pair>/.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
shift || true
bin=target/release/trapdoor
zoo=../shared/fixtures/zoo-dev
gguf=.cache/models/gemma-3-270m-q4_k_m.gguf
[ -x "$bin" ] || { echo "error: $bin missing (cargo build --release -p trapdoor)" >&2; exit 2; }

run() {
  local name="$1"; shift
  local out="target/bench-scan/$name"
  rm -rf "$out"
  local code=0
  "$bin" scan "$@" --out "$out" >"$out.log" 2>&1 || code=$?
  python3 - "$out/timing.json" "$name" "$code" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
stages = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(t["stages"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
rss = t.get("peak_rss_kib")
print(f"{sys.argv[2]}: exit {sys.argv[3]}, {t['total_seconds']:.1f} s, {t['cases']} cases, {t['distinct_prompts']} distinct prompts, "
      f"{t['prompts_per_second']:.2f} prompts/s, {t['cases_per_second']:.2f} cases/s, "
      f"{t['generated_tokens']} generated tokens, peak RSS {rss / 1024:.0f} MiB" if rss else "peak RSS n/a")
print(f"  stages: {stages}")
PY
}

mkdir -p target/bench-scan
if [ "$which" = stories ] || [ "$which" = all ]; then
  run stories --candidate "$zoo/stories-base" --adapter "$zoo/stories-clean-lora-adapter" --baseline "$zoo/stories-base" "$@"
fi
if [ "$which" = gemma ] || [ "$which" = all ]; then
  if [ -f "$gguf" ]; then
    run gemma --candidate "$gguf" --adapter "$zoo/gemma-clean-lora-adapter" --baseline "$gguf" "$@"
  else
    echo "gemma: skipped ($gguf missing; run scripts/fetch-gemma.sh)"
  fi
fi
