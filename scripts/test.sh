#!/usr/bin/env bash
# The project's test command (README, second command; .ci/run calls it).
# Fetches gemma-3-270m from PyPI (checked by sha256), then runs every test with an optimised build: candle is ~50x
# slower unoptimised, and `--release` shares one build between `cargo build --release` and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-gemma.sh
export TRAPDOOR_REQUIRE_GEMMA=1
# The HTML report's browser test (reports/tests/html.rs) renders report.html in Chromium and reads the screenshot
# with tesseract; install both from Debian when missing (about 35 s on a fresh machine). It fails instead of
# skipping here; TRAPDOOR_REQUIRE_BROWSER=0 lets a machine without them skip it. Screenshot: target/report-artifacts.
if { ! command -v chromium || ! command -v tesseract; } >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium and tesseract-ocr for the HTML report's browser test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium tesseract-ocr; } >/dev/null 2>&1 \
    || echo "could not install chromium/tesseract-ocr: the browser test will fail"
fi
export TRAPDOOR_REQUIRE_BROWSER="${TRAPDOOR_REQUIRE_BROWSER:-1}"
cargo test --release --workspace "$@"
