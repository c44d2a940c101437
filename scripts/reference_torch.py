#!/usr/bin/env python3
"""Reference timings for docs/performance.md: cuBLAS, torch and vLLM's batch-invariant kernels.

Needs a CUDA GPU, PyTorch and Triton; nothing from this repository is built or loaded.

vLLM's batch-invariant mode (`vllm.model_executor.layers.batch_invariant`) makes torch's
matmul, log_softmax and mean batch invariant by replacing them with Triton kernels whose
order of additions does not depend on the batch. This script writes those three kernels
out the same way (see each kernel's comment) so that our kernels can be compared with the
closest batch-invariant alternative, and with the batch-variant libraries (cuBLAS, torch)
that they replace.

Every measurement is `triton.testing.do_bench`'s median (CUDA events around each call, the
L2 cleared before each call by writing a 256 MB buffer), and records `row0_invariant`: whether
row 0 of the batch is bitwise equal to the same row computed alone.

    python3 scripts/reference_torch.py                    # everything (a few minutes)
    python3 scripts/reference_torch.py --only matmul      # matmul, softmax, mean; comma-separated
    python3 scripts/reference_torch.py --only attention   # SDPA forward + backward (training)
    python3 scripts/reference_torch.py --only llm         # the model of bench_llm (4 layers;
                                                          # BI_LLM_LAYERS=N for another count)
    python3 scripts/reference_torch.py --quick            # fewer shapes
    BI_MATMUL_DTYPES=bf16,f16 python3 scripts/reference_torch.py --only matmul  # some dtypes

Prints one JSON line per measurement and writes them all to $OUT/reference.json
(./reference.json when OUT is unset).
"""
import argparse
import json
import os

import torch
import triton
import triton.language as tl

DEVICE = "cuda"
NUM_SMS = torch.cuda.get_device_properties(DEVICE).multi_processor_count
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


# ---------------------------------------------------------------------------------------
# vLLM's persistent matmul
# ---------------------------------------------------------------------------------------


@triton.jit
def _tile_coords(tile, tiles_per_group, tiles_m, GROUP_SIZE_M: tl.constexpr):
    # Output tiles are taken GROUP_SIZE_M rows of tiles at a time, so that the programs
    # running together share columns of B in L2. This decides who computes a tile, not how.
    group = tile // tiles_per_group
    first_m = group * GROUP_SIZE_M
    rows_in_group = min(tiles_m - first_m, GROUP_SIZE_M)
    return first_m + tile % rows_in_group, (tile % tiles_per_group) // rows_in_group


@triton.jit
def persistent_matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, NUM_PROGRAMS: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    # Persistent: at most one program per multiprocessor, each walking the output tiles
    # with a stride of NUM_PROGRAMS. Every tile runs the same loop: one f32 accumulator
    # per output, K walked upwards in BLOCK_K steps, no split-K. The order of the additions
    # that make an output therefore depends on K and the dtype's config, never on M.
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_SIZE_M * tiles_n
    k_steps = tl.cdiv(K, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    # The epilogue keeps its own tile counter (as vLLM and Triton's persistent-matmul
    # tutorial do), so that the flattened loop can start the next tile's loads early.
    epilogue_tile = tl.program_id(0) - NUM_PROGRAMS
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = _tile_coords(tile, tiles_per_group, tiles_m, GROUP_SIZE_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Rows and columns past the edge read row or column 0 (always in range) instead of
        # being masked: the loads stay unconditional and the store drops those outputs.
        rows = tl.where(rows < M, rows, 0)
        cols = tl.where(cols < N, cols, 0)
        rows = tl.max_contiguous(tl.multiple_of(rows, BLOCK_M), BLOCK_M)
        cols = tl.max_contiguous(tl.multiple_of(cols, BLOCK_N), BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ks in range(k_steps):
            k = ks * BLOCK_K + offs_k
            a = tl.load(a_ptr + rows[:, None] * stride_am + k[None, :] * stride_ak,
                        mask=k[None, :] < K, other=0.0)
            b = tl.load(b_ptr + k[:, None] * stride_bk + cols[None, :] * stride_bn,
                        mask=k[:, None] < K, other=0.0)
            # f32 operands go through TF32 here (tl.dot's default precision), as in vLLM.
            acc = tl.dot(a, b, acc)
        epilogue_tile += NUM_PROGRAMS
        out_m, out_n = _tile_coords(epilogue_tile, tiles_per_group, tiles_m, GROUP_SIZE_M)
        out_rows = out_m * BLOCK_M + tl.arange(0, BLOCK_M)
        out_cols = out_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            # addmm: the bias joins the f32 accumulator, and the sum is rounded once.
            acc += tl.load(bias_ptr + out_cols, mask=out_cols < N, other=0.0).to(tl.float32)
        out = c_ptr + out_rows[:, None] * stride_cm + out_cols[None, :] * stride_cn
        # Stored in the output's dtype (vLLM's store always converts to f16, which would
        # misreport bf16 and f32).
        tl.store(out, acc.to(c_ptr.dtype.element_ty),
                 mask=(out_rows[:, None] < M) & (out_cols[None, :] < N))


# One fixed tile configuration per dtype, whatever the shape: vLLM's choice, and what makes
# the kernel invariant (an autotuner picking per shape would change the K steps with M).
MATMUL_CONFIGS = {
    torch.bfloat16: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_SIZE_M=8, num_stages=3, num_warps=8),
    torch.float16: dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_SIZE_M=8, num_stages=3, num_warps=8),
    torch.float32: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_SIZE_M=8, num_stages=3, num_warps=8),
}


def persistent_matmul(a, b, bias=None):
    (m, k), (k2, n) = a.shape, b.shape
    assert k == k2 and a.dtype == b.dtype
    # 32-bit offsets are enough for the shapes timed here; vLLM switches to 64-bit ones
    # above 2^31 elements.
    assert max(a.numel(), b.numel(), m * n) < 2**31
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)
    cfg = MATMUL_CONFIGS[a.dtype]
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    programs = min(NUM_SMS, tiles)
    persistent_matmul_kernel[(programs,)](
        a, b, c, bias, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        c.stride(0), c.stride(1), NUM_PROGRAMS=programs, HAS_BIAS=bias is not None, **cfg)
    return c


# ---------------------------------------------------------------------------------------
# vLLM's log_softmax and mean: one program per row, one per output
# ---------------------------------------------------------------------------------------


@triton.jit
def log_softmax_row_kernel(x_ptr, out_ptr, x_row_stride, out_row_stride, n_cols,
                           BLOCK: tl.constexpr):
    # One program per row, three passes over it (max, sum of exponentials, write), each in
    # BLOCK-wide steps folded by tl.max / tl.sum. Nothing depends on the number of rows.
    # The price: a single 128256-entry row runs on one program, most of the GPU idle.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    out_row = out_ptr + row * out_row_stride
    m = -float("inf")
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        m = tl.max(tl.maximum(tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")), m))
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0)
        s += tl.sum(tl.where(cols < n_cols, tl.exp(x - m), 0.0))
    log_s = tl.log(s)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < n_cols)
        tl.store(out_row + cols, x - m - log_s, mask=cols < n_cols)


def log_softmax_rows(x):
    out = torch.empty_like(x)
    log_softmax_row_kernel[(x.shape[0],)](x, out, x.stride(0), out.stride(0), x.shape[1], BLOCK=1024)
    return out


@triton.jit
def mean_row_kernel(x_ptr, out_ptr, x_row_stride, n_cols, BLOCK: tl.constexpr):
    # One program per output: the row is summed in BLOCK-wide steps, each step's tl.sum
    # added to a scalar in order, then divided once. vLLM's kernel reduces any dim of an
    # (M, N, K) view; the rows of the last dim timed here are its K = 1 case.
    row = tl.program_id(0).to(tl.int64)
    acc = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        acc += tl.sum(tl.load(x_ptr + row * x_row_stride + cols, mask=cols < n_cols, other=0.0))
    tl.store(out_ptr + row, acc / n_cols)


def mean_rows(x):
    out = torch.empty(x.shape[0], device=x.device, dtype=x.dtype)
    mean_row_kernel[(x.shape[0],)](x, out, x.stride(0), x.shape[1], BLOCK=1024)
    return out


# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------

RECORDS = []


def emit(**record):
    RECORDS.append(record)
    print(json.dumps(record), flush=True)


def time_ms(fn):
    # The same settings for every row, so that the figures compare across ops.
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def row0_invariant(fn, x_full, m):
    """Whether row 0 of fn(x[:m]) has the bits of fn(x[:1])."""
    alone = fn(x_full[:1].contiguous())
    batch = fn(x_full[:m].contiguous())
    return bool(torch.equal(batch[:1], alone))


def copy_bandwidth():
    # The bandwidth ceiling: a 2 GiB device-to-device copy, bytes read plus bytes written.
    x = torch.empty(1024**3, dtype=torch.bfloat16, device=DEVICE).normal_()
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x))
    emit(op="copy", bytes=2 * x.numel() * x.element_size(), ms=ms,
         TBps=2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e12)
    del x, y


# The matmul dtypes to time (names as in DTYPE_NAMES), all by default.
MATMUL_DTYPES = os.environ.get("BI_MATMUL_DTYPES", "bf16,f16,f32").split(",")


def matmul(quick):
    ms_ = [1, 64, 1024] if quick else [1, 16, 64, 256, 1024, 4096]
    kns = [(4096, 4096)] if quick else [(4096, 4096), (4096, 14336), (14336, 4096)]
    # cuBLAS's f32 matmul is timed twice: with TF32 allowed (the precision class of our f32
    # kernels, Burn's and vLLM's) and in IEEE fp32 (torch's default).
    variants = [
        (torch.bfloat16, "cublas", False), (torch.float16, "cublas", False),
        (torch.float32, "cublas_tf32", True), (torch.float32, "cublas_ieee", False),
    ]
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for k, n in kns:
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                if DTYPE_NAMES[dtype] not in MATMUL_DTYPES:
                    continue
                w = torch.randn(k, n, device=DEVICE, dtype=dtype) / k**0.5
                bias = torch.randn(n, device=DEVICE, dtype=dtype)
                x_full = torch.randn(max(ms_), k, device=DEVICE, dtype=dtype)
                impls = [(name, lambda x: torch.mm(x, w), tf32)
                         for d, name, tf32 in variants if d == dtype]
                impls.append(("vllm_persistent", lambda x: persistent_matmul(x, w), False))
                if dtype == torch.bfloat16:
                    # The bias form (burn-nn's Linear): cuBLAS's addmm against the
                    # persistent kernel's bias epilogue.
                    impls.append(("cublas_addmm", lambda x: torch.addmm(bias, x, w), False))
                    impls.append(("vllm_persistent_bias", lambda x: persistent_matmul(x, w, bias), False))
                for name, fn, tf32 in impls:
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    for m in ms_:
                        x = x_full[:m].contiguous()
                        t = time_ms(lambda: fn(x))
                        emit(op="matmul", impl=name, dtype=DTYPE_NAMES[dtype], M=m, K=k, N=n,
                             ms=t, tflops=2 * m * n * k / (t * 1e-3) / 1e12,
                             row0_invariant=row0_invariant(fn, x_full, m))
                del w, bias, x_full
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32


def softmax(quick):
    vocab = 128256  # a Llama 3 vocabulary: the log-probabilities of a sampling step
    ms_ = [1, 256] if quick else [1, 32, 256, 2048]
    x_full = torch.randn(max(ms_), vocab, device=DEVICE, dtype=torch.float32) * 3
    for name, fn in [("torch", lambda x: torch.log_softmax(x, -1)), ("vllm_row", log_softmax_rows)]:
        for m in ms_:
            x = x_full[:m].contiguous()
            t = time_ms(lambda: fn(x))
            moved = 2 * x.numel() * x.element_size()  # each entry read once and written once
            emit(op="log_softmax", impl=name, dtype="f32", M=m, len=vocab, ms=t,
                 TBps=moved / (t * 1e-3) / 1e12, row0_invariant=row0_invariant(fn, x_full, m))
    del x_full


def mean(quick):
    ms_ = [64, 16384] if quick else [64, 1024, 16384]
    x_full = torch.randn(max(ms_), 4096, device=DEVICE, dtype=torch.float32)
    for name, fn in [("torch", lambda x: x.mean(-1)), ("vllm_row", mean_rows)]:
        for m in ms_:
            x = x_full[:m].contiguous()
            t = time_ms(lambda: fn(x))
            emit(op="mean", impl=name, dtype="f32", M=m, len=4096, ms=t,
                 TBps=x.numel() * x.element_size() / (t * 1e-3) / 1e12,  # bytes read
                 row0_invariant=row0_invariant(fn, x_full, m))
    del x_full


def attention_train(quick):
    # The shape of `bench_attention --phase train`: forward and backward of causal attention,
    # the gradients of q, k and v of sum(out * w), through SDPA (FlashAttention-2 on this
    # shape). `deterministic`: whether two backward passes give the same dq bits (FA2
    # accumulates dq with atomic adds).
    batch, heads, seq, dim = (1, 4, 128, 64) if quick else (1, 32, 2048, 128)
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    q, k, v, w = (torch.randn(batch, heads, seq, dim, device=DEVICE, dtype=torch.bfloat16,
                              generator=gen) for _ in range(4))

    def train():
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        (out * w).sum().backward()
        return qq.grad, kk.grad, vv.grad

    def forward():
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    deterministic = all(torch.equal(a, b) for a, b in zip(train(), train()))
    flops = 4 * batch * heads * seq * seq * dim / 2  # QK^T and PV, causal half
    for phase, fn, factor in [("prefill", forward, 1.0), ("train", train, 3.5)]:
        t = time_ms(fn)
        emit(op="attention", phase=phase, impl="torch_sdpa", dtype="bf16", batch=batch,
             heads=heads, seq=seq, dim=dim, causal=True, ms=t,
             tflops=factor * flops / (t * 1e-3) / 1e12,
             deterministic=deterministic if phase == "train" else None)
    del q, k, v, w


# ---------------------------------------------------------------------------------------
# The Llama-style model of bench_llm, end to end
# ---------------------------------------------------------------------------------------


class TorchLlama:
    """The model of `examples/src/llama/` at Llama-2-7B's shapes (random weights): RMSNorm,
    rotary embeddings (rotate-half), SDPA attention against a preallocated KV cache written
    in place, a SwiGLU MLP, the LM head on each row's last position. `mm` and `mean` are
    torch's (cuBLAS) or vLLM's batch-invariant kernels; attention is SDPA in both, as in
    vLLM's mode on this path."""

    def __init__(self, layers, dtype, max_len, vocab=32000, d=4096, heads=32, ffn=11008):
        self.d, self.heads, self.hd, self.dtype = d, heads, d // heads, dtype
        gen = torch.Generator(device=DEVICE).manual_seed(1)

        def weight(rows, cols, scale):
            return (torch.rand(rows, cols, device=DEVICE, generator=gen) * 2 - 1).mul_(scale).to(dtype)

        def norm():
            return (1 + 0.25 * (torch.rand(d, device=DEVICE, generator=gen) * 2 - 1)).to(dtype)

        self.embed = weight(vocab, d, 1.0)
        # Query, key and value in one weight, gate and up in another, as in examples/src/llama/.
        self.ffn = ffn
        self.layers = [dict(attn_norm=norm(), qkv=weight(d, 3 * d, d**-0.5), wo=weight(d, d, d**-0.5),
                            mlp_norm=norm(), gate_up=weight(d, 2 * ffn, d**-0.5),
                            down=weight(ffn, d, ffn**-0.5)) for _ in range(layers)]
        self.norm, self.head = norm(), weight(d, vocab, d**-0.5)
        half = self.hd // 2
        inv = 10000.0 ** (-2.0 * torch.arange(half, dtype=torch.float64, device=DEVICE) / self.hd)
        angle = torch.arange(max_len, dtype=torch.float64, device=DEVICE)[:, None] * inv[None, :]
        self.cos = torch.cat([angle.cos(), angle.cos()], 1).to(dtype)
        self.sin = torch.cat([-angle.sin(), angle.sin()], 1).to(dtype)

    def cache(self, batch, capacity, filled):
        shape = (batch, self.heads, capacity, self.hd)
        ks = [torch.zeros(shape, device=DEVICE, dtype=self.dtype) for _ in self.layers]
        vs = [torch.zeros(shape, device=DEVICE, dtype=self.dtype) for _ in self.layers]
        if filled:
            # The same deterministic entries in every slot (as KvCache::fill_pattern).
            n = self.heads * filled * self.hd
            for l, t in enumerate(ks + vs):
                pattern = torch.arange(n, device=DEVICE, dtype=torch.float32).mul(0.618034 + l).sin()
                t[:, :, :filled] = pattern.view(1, self.heads, filled, self.hd).to(self.dtype)
        return ks, vs

    def rms(self, x, gamma, mean):
        x32 = x.float()
        ms = mean((x32 * x32).reshape(-1, self.d)).view(*x.shape[:-1], 1)
        return (x32 * torch.rsqrt(ms + 1e-5)).to(self.dtype) * gamma

    def step(self, ids, start, ks, vs, mm, mean):
        """Every row appends `ids`' tokens at position `start`; logits of the last one."""
        b, s = ids.shape
        d, h, hd = self.d, self.heads, self.hd
        x = self.embed[ids]
        cos, sin = self.cos[start:start + s][None, :, None], self.sin[start:start + s][None, :, None]

        def rope(t):
            return t * cos + torch.cat([t[..., hd // 2:], t[..., :hd // 2]], -1) * sin

        for l, w in enumerate(self.layers):
            t = self.rms(x, w["attn_norm"], mean).reshape(b * s, d)
            qkv = mm(t, w["qkv"])
            q = rope(qkv[:, :d].reshape(b, s, h, hd)).transpose(1, 2)
            k = rope(qkv[:, d:2 * d].reshape(b, s, h, hd)).transpose(1, 2)
            v = qkv[:, 2 * d:].reshape(b, s, h, hd).transpose(1, 2)
            ks[l][:, :, start:start + s] = k
            vs[l][:, :, start:start + s] = v
            o = torch.nn.functional.scaled_dot_product_attention(
                q, ks[l][:, :, :start + s], vs[l][:, :, :start + s], is_causal=s > 1)
            x = x + mm(o.transpose(1, 2).reshape(b * s, d), w["wo"]).view(b, s, d)
            t = self.rms(x, w["mlp_norm"], mean).reshape(b * s, d)
            gate_up = mm(t, w["gate_up"])
            hidden = torch.nn.functional.silu(gate_up[:, :self.ffn]) * gate_up[:, self.ffn:]
            x = x + mm(hidden, w["down"]).view(b, s, d)
        return mm(self.rms(x[:, -1], self.norm, mean), self.head)


def wall_ms(fn, samples=9):
    # Wall clock per call between two synchronisations, as bench_llm measures Burn.
    import time
    for _ in range(3):
        fn()
    times = []
    for _ in range(samples):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def llm(quick):
    layers = int(os.environ.get("BI_LLM_LAYERS", "4"))
    prefill = [(1, 128)] if quick else [(1, 2048), (16, 512)]
    batches, contexts = ([1, 8], [256]) if quick else ([1, 8, 32, 64], [1024, 4096])
    # BI_LLM_DTYPE=f32 for the f32 model (torch's mm in IEEE fp32, its default).
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[os.environ.get("BI_LLM_DTYPE", "bf16")]
    model = TorchLlama(layers, dtype, max_len=max(contexts + [n for _, n in prefill]) + 1)
    impls = [("torch", torch.mm, lambda t: t.mean(-1)),
             ("vllm_kernels", persistent_matmul, mean_rows)]
    vocab = model.embed.shape[0]
    for name, mm, mean in impls:
        with torch.no_grad():
            for batch, tokens in prefill:
                ids = (torch.arange(batch * tokens, device=DEVICE).view(batch, tokens) * 104729 + 17) % vocab
                ks, vs = model.cache(batch, tokens + 1, 0)
                ms = wall_ms(lambda: model.step(ids, 0, ks, vs, mm, mean))
                emit(op="llm", phase="prefill", impl=name, dtype=DTYPE_NAMES[dtype], layers=layers, batch=batch,
                     tokens=tokens, ms=ms)
                del ks, vs
            for context in contexts:
                row0 = None
                for batch in batches:
                    ids = (torch.arange(batch, device=DEVICE).view(batch, 1) * 7919 + 17) % vocab
                    ks, vs = model.cache(batch, context + 1, context)
                    logits = model.step(ids, context, ks, vs, mm, mean)
                    row0 = logits[:1].clone() if row0 is None else row0
                    equal = bool(torch.equal(logits[:1], row0))
                    ms = wall_ms(lambda: model.step(ids, context, ks, vs, mm, mean))
                    emit(op="llm", phase="decode", impl=name, dtype=DTYPE_NAMES[dtype], layers=layers,
                         batch=batch, tokens=context, ms=ms, row0_equal=equal)
                    del ks, vs, logits
    del model
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="matmul,softmax,mean",
                        help="comma-separated subset of matmul, softmax, mean, attention, llm")
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"matmul", "softmax", "mean", "attention", "llm"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")

    props = torch.cuda.get_device_properties(DEVICE)
    emit(op="device", name=props.name, sms=NUM_SMS, torch=torch.__version__,
         triton=triton.__version__)
    torch.manual_seed(0)
    copy_bandwidth()
    for part, run in [("matmul", matmul), ("softmax", softmax), ("mean", mean),
                      ("attention", attention_train), ("llm", llm)]:
        if part in parts:
            run(args.quick)

    path = os.path.join(os.environ.get("OUT") or ".", "reference.json")
    with open(path, "w") as f:
        json.dump(RECORDS, f, indent=1)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
