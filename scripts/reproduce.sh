#!/usr/bin/env bash
# The README's main job: on a fresh Debian machine, install what is missing (Fashion-MNIST and
# WordNet from Debian's packages), build advlens in release mode, and run every experiment of the
# paper on the embedded Fashion-MNIST default. Extra arguments go to `advlens reproduce`
# (e.g. --profile quick, --out DIR). The report lands in runs/default/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
ADVLENS_SKIP_CUDA_TOOLS=1 bash scripts/install-deps.sh
cargo build --release --quiet
exec ./target/release/advlens reproduce "$@"
