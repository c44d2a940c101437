#!/usr/bin/env bash
# Builds the test suite, the A/B, generation and training examples and the benchmarks in release (CUDA and wgpu are
# both compiled in; the runtime is chosen when they run) and gathers them, stripped and
# gzipped, with the runner (scripts/gpu-run.sh as run.sh) and scripts/reference_torch.py in
# .gpu/ (git-ignored). Copy .gpu/ to the CUDA machine (it needs no Rust toolchain) and run
# `bash .gpu/run.sh` from the directory that holds it (docs/gpu-testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# The workspace selection keeps one feature set for the suite and the binaries: building
# the examples package alone re-compiles burn and cubecl with other features.
cargo build --release --workspace --bins
suite=$(cargo test --release --workspace --test suite --no-run --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "suite":
        print(m["executable"])')
[ -n "$suite" ] || { echo "gpu-build: test executable not found" >&2; exit 1; }

rm -rf .gpu && mkdir -p .gpu
cp "$suite" .gpu/suite
bins="ab_ops ab_generate llama_generate policy_gradient bench bench_matmul bench_attention bench_llm bench_collective"
for bin in $bins; do
    if [ -f "target/release/$bin" ]; then cp "target/release/$bin" .gpu/; fi
done
strip .gpu/*
gzip -9 .gpu/*
cp scripts/gpu-run.sh .gpu/run.sh
cp scripts/reference_torch.py .gpu/
du -sh .gpu
