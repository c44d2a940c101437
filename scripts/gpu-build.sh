#!/usr/bin/env bash
# Step 1 of the GPU check (docs/gpu-testing.md): builds the test suite, the A/B example and
# the benchmark here, release with CUDA, and gathers them, stripped and compressed, with
# the reference script and the runner in .gpu/ (git-ignored, under the 64 MiB that travels).
set -euo pipefail
cd "$(dirname "$0")/.."

# The workspace selection keeps one feature set for the suite and the binaries: building
# the examples package alone re-compiles burn and cubecl with other features.
cargo build --release --workspace --bins
suite=$(cargo test --release --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "suite":
        print(m["executable"])')
[ -n "$suite" ] || { echo "gpu-build: test executable not found" >&2; exit 1; }

rm -rf .gpu && mkdir -p .gpu
cp "$suite" .gpu/suite
bins="ab_ops ab_generate bench bench_matmul bench_attention"
for bin in $bins; do
    if [ -f "target/release/$bin" ]; then cp "target/release/$bin" .gpu/; fi
done
strip .gpu/*
gzip -9 .gpu/*
cp scripts/gpu-run.sh .gpu/run.sh
if [ -f ../shared/anchors/anchors_torch.py ]; then cp ../shared/anchors/anchors_torch.py .gpu/; fi
du -sh .gpu
