#!/usr/bin/env bash
# Runs what scripts/gpu-build.sh gathered in .gpu/, on the CUDA machine, from the directory
# that holds .gpu/:
#   bash .gpu/run.sh
# The suite on CUDA, ab_ops with the mode on and off, ab_generate and llama_generate,
# policy_gradient and the training benchmarks (attention forward and backward, a training
# step of the Llama-style model), the benchmarks (plain and fused backend, matmul, attention, the Llama-style model) and the
# reference timings (reference_torch.py). Results go under $OUT (default ./gpu-out):
# report.md (a summary with every text output), tests.log, ab_ops.txt, the benchmarks' JSON,
# plots.tar and reference.json. The script exits non-zero when a test fails, when ab_ops
# finds a routed op that moves with its batch, when ab_generate or llama_generate finds a
# sequence whose tokens or logits change with its batch under BatchInvariant, or when
# policy_gradient finds a training log-probability that differs from generation's.
# BI_GPU_PARTS selects a subset of: suite ab generate train bench fused matmul attention llm
# reference, and two parts that only run when named: collective (bench_collective) and
# profile (Nsight Compute on our bf16 matmul, our pipelined kernel and cuBLAS's, at 4096^3 and at
# decode, profile-*.txt)
# (e.g. BI_GPU_PARTS="matmul reference" for the matmul tables).
set -u
OUT=$(realpath -m "${OUT:-gpu-out}") # absolute: the script changes directory below
mkdir -p "$OUT"
PARTS=" ${BI_GPU_PARTS:-suite ab generate train bench fused matmul attention llm reference} " # a subset runs faster
part() { [[ "$PARTS" == *" $1 "* ]]; }
TMP=$(mktemp -d) # logs whose content goes into report.md, so that $OUT holds one copy of each
cd .gpu
for f in *.gz; do gunzip -f "$f"; done
chmod +x suite ab_* bench* llama_generate policy_gradient 2>/dev/null

device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
tests_rc=skipped; ab_rc=skipped; gen_rc=skipped; train_rc=skipped; llm_rc=skipped; bench_rc=skipped; fused_rc=skipped; matmul_rc=skipped; attn_rc=skipped
if part suite; then
    # BI_SUITE_FILTER: run only the tests whose names contain it (e.g. attention).
    BI_TEST_BACKEND=cuda ./suite ${BI_SUITE_FILTER:-} --nocapture >"$OUT/tests.log" 2>&1
    tests_rc=$?
fi
if part ab; then
    ./ab_ops --cuda >"$OUT/ab_ops.txt" 2>&1
    ab_rc=$?
    BURN_BATCH_INVARIANT=0 ./ab_ops --cuda >"$TMP/ab_ops_mode_off.txt" 2>&1
fi
if part generate; then
    ./ab_generate --cuda >"$TMP/ab_generate.txt" 2>&1
    gen_rc=$?
    timeout 300 ./llama_generate --cuda >>"$TMP/ab_generate.txt" 2>&1
    [ $? != 0 ] && gen_rc=1
fi
if part train; then
    # Training whose forward is the inference forward: the policy-gradient example (plain
    # and fused), attention forward and backward, a training step of the Llama-style model.
    timeout 300 ./policy_gradient --cuda >"$TMP/train.txt" 2>&1
    train_rc=$?
    timeout 300 ./policy_gradient --cuda --fused --model small >>"$TMP/train.txt" 2>&1
    [ $? != 0 ] && train_rc=1
    timeout 300 ./bench_attention --cuda --phase train --json "$OUT/attention_train.json" >>"$TMP/train.txt" 2>&1
    # torch's SDPA forward and backward on the same shape, in the same call, for the peer column.
    if [ -f reference_torch.py ]; then
        OUT="$TMP" PYTHONUNBUFFERED=1 timeout 120 python3 reference_torch.py --only attention >>"$TMP/train.txt" 2>&1
        cp "$TMP/reference.json" "$OUT/attention_train_reference.json" 2>/dev/null
    fi
    timeout 420 ./bench_llm --cuda --phase train --layers 2 --json "$OUT/llm_train.json" >>"$TMP/train.txt" 2>&1
fi
if part bench; then
    ./bench --cuda --json "$OUT/bench.json" >"$TMP/bench.txt" 2>&1
    bench_rc=$?
fi
if part fused; then
    # Burn's fused backend: its own kernels against BatchInvariant<Fusion<..>>, and the A/B
    # table on it (BI_TEST_FUSION=fused narrows the suite to the fused form).
    timeout 300 ./bench --cuda --fused --json "$OUT/bench_fused.json" >"$TMP/bench_fused.txt" 2>&1
    fused_rc=$?
    timeout 240 ./ab_ops --cuda --fused >"$TMP/ab_ops_fused.txt" 2>&1
    [ $? != 0 ] && fused_rc=1
fi
if part matmul; then
    timeout 420 ./bench_matmul --cuda ${BI_MATMUL_FLAGS:-} --json "$OUT/bench_matmul.json" >"$TMP/bench_matmul.txt" 2>&1
    matmul_rc=$?
fi
if part attention; then
    timeout 300 ./bench_attention --cuda --json "$OUT/attention.json" >"$TMP/bench_attention.txt" 2>&1
    attn_rc=$?
fi
if part llm; then
    # The whole model: Burn's default and BatchInvariant, plain and fused, then the torch
    # peers on the same model (reference_torch.py --only llm).
    timeout 420 ./bench_llm --cuda --breakdown --json "$OUT/llm.json" >"$TMP/bench_llm.txt" 2>&1
    llm_rc=$?
    timeout 420 ./bench_llm --cuda --fused --json "$OUT/llm_fused.json" >>"$TMP/bench_llm.txt" 2>&1
    [ $? != 0 ] && llm_rc=1
    if [ -f reference_torch.py ]; then
        OUT="$TMP" PYTHONUNBUFFERED=1 timeout 300 python3 reference_torch.py --only llm >>"$TMP/bench_llm.txt" 2>&1
        cp "$TMP/reference.json" "$OUT/llm_reference.json" 2>/dev/null
    fi
fi
if part collective; then
    # The rank-order all-reduce against burn-collective's, peers sharing the device.
    timeout 300 ./bench_collective --cuda --json "$OUT/collective.json" >"$TMP/collective.txt" 2>&1
fi
if part profile; then
    # Where the matmul's cycles go: one warm call of ours (bench_matmul --profile) and one of
    # cuBLAS's, 4096 x 4096 x 4096 and 1024 x 4096 x 14336 in bf16, every Nsight Compute section.
    # bench_matmul --profile makes three calls per shape, N = 4096 first, then 14336.
    timeout 240 ncu --set full -k regex:matmul --launch-skip 1 --launch-count 1 \
        ./bench_matmul --cuda --profile --dtype bf16 --m 4096 >"$OUT/profile-ours-4096.txt" 2>&1
    timeout 240 ncu --set full -k regex:matmul --launch-skip 4 --launch-count 1 \
        ./bench_matmul --cuda --profile --dtype bf16 --m 1024 >"$OUT/profile-ours-1024.txt" 2>&1
    # The pipelined kernel (routed for decode), its 128x128 tiling with the rhs by TMA at
    # 4096^3: the bits check is the first launch; the third, a warm one, is profiled.
    timeout 240 ncu --set full -k regex:pipelined --launch-skip 2 --launch-count 1 \
        ./bench_matmul --cuda --tilings-only --pipelined-only --m 4096 --pipe pipe-128x128-tma:2,2:4,8:64,3:0:tma \
        >"$OUT/profile-pipelined-4096.txt" 2>&1
    timeout 240 ncu --set full -k regex:'gemm|nvjet|sm90|cutlass' --launch-skip 1 --launch-count 3 \
        python3 -c 'import torch
for m, k, n in [(4096, 4096, 4096), (1024, 4096, 14336)]:
    a = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(k, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        a @ b
torch.cuda.synchronize()' >"$OUT/profile-cublas.txt" 2>&1
    # Decode: ours (its second, warm call) and cuBLAS's at M = 1 and 64, K = N = 4096, the
    # sections that show the memory pipeline and who issues.
    decode_sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy
        --section SchedulerStats --section WarpStateStats --section LaunchStats"
    for m in 1 64; do
        timeout 120 ncu $decode_sections -k regex:matmul --launch-skip 1 --launch-count 1 \
            ./bench_matmul --cuda --profile --dtype bf16 --m $m >"$OUT/profile-ours-decode-m$m.txt" 2>&1
    done
    # The two torch.randn calls of each M are skipped by name; the two products of each are kept.
    timeout 120 ncu $decode_sections -k regex:'gemm|gemv|nvjet|sm90|cutlass' \
        python3 -c 'import torch
for m in (1, 64):
    a = torch.randn(m, 4096, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        a @ b
torch.cuda.synchronize()' >"$OUT/profile-cublas-decode.txt" 2>&1
fi
reference_rc=skipped
if [ -f reference_torch.py ] && part reference; then
    # Prints one JSON line per measurement (kept for report.md) and writes $OUT/reference.json.
    OUT="$OUT" PYTHONUNBUFFERED=1 python3 reference_torch.py >"$TMP/reference.txt" 2>&1
    reference_rc=$?
fi

{
    echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "device: $device"
    echo "suite exit: $tests_rc; ab_ops exit: $ab_rc; bench exit: $bench_rc; fused exit: $fused_rc; bench_matmul exit: $matmul_rc; bench_attention exit: $attn_rc; bench_llm exit: $llm_rc; ab_generate/llama_generate exit: $gen_rc; policy_gradient exit: $train_rc; reference exit: $reference_rc"
    echo; echo "## tests"; grep -E '^test |test result|panicked|assert' "$OUT/tests.log" | head -80
    echo; echo "## ab_ops (mode on)"; cat "$OUT/ab_ops.txt" 2>/dev/null
    echo; echo "## ab_ops (BURN_BATCH_INVARIANT=0)"; cat "$TMP/ab_ops_mode_off.txt" 2>/dev/null
    echo; echo "## ab_generate"; cat "$TMP/ab_generate.txt" 2>/dev/null
    echo; echo "## policy_gradient, bench_attention --phase train, bench_llm --phase train"; cat "$TMP/train.txt" 2>/dev/null
    echo; echo "## bench"; cat "$TMP/bench.txt" 2>/dev/null
    echo; echo "## bench --fused"; cat "$TMP/bench_fused.txt" 2>/dev/null
    echo; echo "## ab_ops --fused"; cat "$TMP/ab_ops_fused.txt" 2>/dev/null
    echo; echo "## bench_matmul"; cat "$TMP/bench_matmul.txt" 2>/dev/null
    echo; echo "## bench_attention"; cat "$TMP/bench_attention.txt" 2>/dev/null
    echo; echo "## bench_llm (plain, fused) and reference_torch.py --only llm"; cat "$TMP/bench_llm.txt" 2>/dev/null
    echo; echo "## bench_collective"; cat "$TMP/collective.txt" 2>/dev/null
    echo; echo "## reference_torch.py"; cat "$TMP/reference.txt" 2>/dev/null
} >"$OUT/report.md"
# The plots (attention.svg, bench_matmul.<dtype>.svg) go into one archive, plots.tar.
if ls "$OUT"/*.svg >/dev/null 2>&1; then
    (cd "$OUT" && tar -cf plots.tar ./*.svg && rm -f ./*.svg)
fi
cat "$OUT/report.md"
[ "$tests_rc" != 0 ] && [ "$tests_rc" != skipped ] && exit 1
[ "$ab_rc" != 0 ] && [ "$ab_rc" != skipped ] && exit 1
[ "$gen_rc" != 0 ] && [ "$gen_rc" != skipped ] && exit 1
[ "$train_rc" != 0 ] && [ "$train_rc" != skipped ] && exit 1
[ "$fused_rc" != 0 ] && [ "$fused_rc" != skipped ] && exit 1
exit 0
