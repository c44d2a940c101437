#!/usr/bin/env bash
# The README's test command: sets up the CPU path (lavapipe) when there is no Vulkan
# driver, checks that every backend method is written, runs the whole suite on wgpu, then
# the feature-flag example with the feature on.
# On a GPU machine, see docs/gpu-testing.md instead (BI_TEST_BACKEND=cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fetch --locked 2>/dev/null || cargo fetch
python3 scripts/passthrough.py --check
cargo test --release --workspace "$@"
# The adoption path: the downstream example with its one feature switched on must give
# row 0 the same bits in every batch (it exits 1 otherwise).
cargo run --release -p feature-flag-example --features batch-invariant
