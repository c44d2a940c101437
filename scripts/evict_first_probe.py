"""Why the row mean over 16384 x 4096 f32 stops near 87% of the copy bandwidth under
`triton.testing.do_bench`: its cache clear (a 256 MB fill) leaves the L2 full of modified
lines, which the timed kernel writes back as its reads evict them.

The probe times a Triton row mean (rows of 4096, the seed's shape) beside the copy anchor of
`anchors_torch.py`, in one process: three load policies (default,
`eviction_policy="evict_first"`, `cache_modifier=".cg"`), then 1, 2 or 4 rows per program
on 8 or 16 warps, and torch's own mean; each under do_bench's dirty flush and again with a
clean L2 (a flush that reads instead of writing). If no variant passes 90% of the copy under
the dirty flush while they pass it with a clean L2, the gap is the flush's write-back, not
the kernels (`docs/performance.md`, session 18).

Run on the GPU machine: python3 scripts/evict_first_probe.py
(`--once`: one launch of the default variant, for a profiler.)
"""
import json

import torch
import triton
import triton.language as tl


@triton.jit
def row_mean(x_ptr, out_ptr, N: tl.constexpr, ROWS: tl.constexpr, POLICY: tl.constexpr):
    offs = tl.arange(0, N)
    for r in tl.static_range(ROWS):
        row = tl.program_id(0) * ROWS + r
        ptrs = x_ptr + row * N + offs
        if POLICY == 1:
            x = tl.load(ptrs, eviction_policy="evict_first")
        elif POLICY == 2:
            x = tl.load(ptrs, cache_modifier=".cg")
        else:
            x = tl.load(ptrs)
        tl.store(out_ptr + row, tl.sum(x, axis=0) / N)


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_clean(fn, reps=50):
    """Median device time with a clean L2 before each call: the flush reads 256 MB (sum)
    instead of writing it, so no modified line is left for the call to write back."""
    buf = torch.ones(64 * 1024**2, device="cuda", dtype=torch.float32)
    fn()
    times = []
    for _ in range(reps):
        buf.sum()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def once():
    m, n = 16384, 4096
    x = torch.randn(m, n, device="cuda", dtype=torch.float32)
    out = torch.empty(m, device="cuda", dtype=torch.float32)
    for _ in range(3):
        row_mean[(m,)](x, out, n, 1, 0, num_warps=4)
    torch.cuda.synchronize()


def main():
    dev = "cuda"
    print("device", torch.cuda.get_device_properties(dev).name, flush=True)
    x = torch.empty(1024**3, dtype=torch.bfloat16, device=dev).normal_()
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    copy = 2 * x.numel() * 2 / (t * 1e-3) / 1e12
    print(f"copy bandwidth {copy:.2f} TB/s", flush=True)
    del x, y

    m, n = 16384, 4096
    x = torch.randn(m, n, device=dev, dtype=torch.float32)
    out = torch.empty(m, device=dev, dtype=torch.float32)
    want = x.mean(-1)
    variants = [("default", 0, 1, 4), ("evict_first", 1, 1, 4), ("cg", 2, 1, 4)]
    variants += [("default", 0, rows, warps) for rows in (1, 2, 4) for warps in (8, 16)]
    for name, policy, rows, warps in variants:
        def call():
            row_mean[(m // rows,)](x, out, n, rows, policy, num_warps=warps)
        call()
        assert torch.allclose(out, want, atol=1e-5), name
        for flush, timer in [("dirty (do_bench)", bench), ("clean", bench_clean)]:
            t = timer(call)
            tbps = m * n * 4 / (t * 1e-3) / 1e12
            row = dict(load=name, rows_per_program=rows, warps=warps, flush=flush, M=m, N=n,
                       ms=t, read_TBps=tbps, of_copy=tbps / copy)
            print(json.dumps(row), flush=True)
    for flush, timer in [("dirty (do_bench)", bench), ("clean", bench_clean)]:
        t = timer(lambda: torch.mean(x, -1))
        tbps = m * n * 4 / (t * 1e-3) / 1e12
        print(json.dumps(dict(load="torch.mean", flush=flush, ms=t, read_TBps=tbps,
                              of_copy=tbps / copy)), flush=True)


if __name__ == "__main__":
    import sys

    once() if "--once" in sys.argv else main()
