#!/usr/bin/env bash
# Step 2 of the GPU check, run on the GPU machine from the repository root:
#   bash .gpu/run.sh
# Runs the suite on CUDA, the A/B example with the mode on and off, the benchmark and the
# reference timings (anchors_torch.py), and writes everything plus report.md under $OUT
# (eight files at most: what the device tool brings back).
set -u
OUT=$(realpath -m "${OUT:-gpu-out}") # absolute: the script changes directory below
mkdir -p "$OUT"
cd .gpu
for f in *.gz; do gunzip -f "$f"; done
chmod +x suite ab_ops bench

device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
BI_TEST_BACKEND=cuda ./suite --nocapture >"$OUT/tests.log" 2>&1
tests_rc=$?
./ab_ops --cuda >"$OUT/ab_ops.txt" 2>&1
ab_rc=$?
BURN_BATCH_INVARIANT=0 ./ab_ops --cuda >"$OUT/ab_ops_mode_off.txt" 2>&1
./bench --cuda --json "$OUT/bench.json" >"$OUT/bench.txt" 2>&1
bench_rc=$?
anchors_rc=skipped
if [ -f anchors_torch.py ]; then
    PYTHONUNBUFFERED=1 python3 anchors_torch.py >"$OUT/anchors.txt" 2>&1
    anchors_rc=$?
fi

{
    echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "device: $device"
    echo "suite exit: $tests_rc; ab_ops exit: $ab_rc; bench exit: $bench_rc; anchors exit: $anchors_rc"
    echo; echo "## tests"; grep -E '^test |test result' "$OUT/tests.log"
    echo; echo "## ab_ops (mode on)"; cat "$OUT/ab_ops.txt"
    echo; echo "## ab_ops (BURN_BATCH_INVARIANT=0)"; cat "$OUT/ab_ops_mode_off.txt"
    echo; echo "## bench"; cat "$OUT/bench.txt"
    echo; echo "## anchors"; [ -f "$OUT/anchors.txt" ] && grep -v '^\s*$' "$OUT/anchors.txt" | tail -40
} >"$OUT/report.md"
cat "$OUT/report.md"
[ "$tests_rc" -eq 0 ] && [ "$ab_rc" -eq 0 ]
