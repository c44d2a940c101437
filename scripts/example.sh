#!/usr/bin/env bash
# The README's example command: a small transformer generates for prompts alone and under
# batch compositions, Burn's default backend vs BatchInvariant; on the GPU with `--cuda`,
# else on wgpu (lavapipe without a GPU). The per-op table is `--bin ab_ops`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo run --release -p burn-batch-invariant-examples --bin ab_generate -- "$@"
