#!/usr/bin/env bash
# Benchmark `trapdoor zoo build` (standard recipe): wall and CPU time of the whole build and of each member.
# Usage: scripts/bench_zoo.sh [THREADS] [SEED]. Builds into a fresh temporary folder (nothing is reused), prints
# /usr/bin/time's summary and the per-member timing.json. Quote the machine and its load with any figure.
set -euo pipefail
threads="${1:-1}"
seed="${2:-0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/trapdoor"
[ -x "$bin" ] || cargo build --release -p trapdoor --manifest-path "$root/Cargo.toml"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), threads $threads, seed $seed"
start=$(date +%s.%N)
if command -v /usr/bin/time >/dev/null; then
  /usr/bin/time -f "wall %e s, user %U s, system %S s, max RSS %M KiB" "$bin" zoo build --out "$out/zoo" --seed "$seed" --threads "$threads" --quiet
else
  time "$bin" zoo build --out "$out/zoo" --seed "$seed" --threads "$threads" --quiet
fi
echo "elapsed $(echo "$(date +%s.%N) - $start" | bc) s"
cat "$out/zoo/timing.json"
