#!/usr/bin/env bash
# The README's example command: the A/B table of row 0 alone vs inside batches, on the GPU
# with `--cuda`, else on wgpu (lavapipe without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo run --release -p burn-batch-invariant-examples --bin ab_ops -- "$@"
