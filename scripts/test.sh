#!/usr/bin/env bash
# The README's test command: sets up the CPU path (lavapipe) when there is no Vulkan
# driver, checks that every backend method is written, then runs the whole suite on wgpu.
# On a GPU machine, see docs/gpu-testing.md instead (BI_TEST_BACKEND=cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fetch --locked 2>/dev/null || cargo fetch
python3 scripts/passthrough.py --check
cargo test --release --workspace "$@"
