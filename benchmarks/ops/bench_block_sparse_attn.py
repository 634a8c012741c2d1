"""PPI-guided block-sparse attention (issue 5): one run, one table per device.

Measured side by side in this process (the compared implementations share inputs and the
machine's load):
- layout build time: a 61,440-token window of real phage proteins (``genomes/
  pharokka_meta_phages.gbk``, ~300 proteins, genome-order window w=2), a synthetic genome of
  61,440 tokens / 300 proteins with the same pair source, and the dense extreme;
- GPU (when CUDA is present): our Triton kernel vs dense SDPA (FlashAttention backend, no
  mask: it computes every tile) vs FlexAttention with the identical BlockMask (built from our
  layout) vs the block-wise reference, forward and forward+backward, bf16, at L in {8k, 16k,
  32k, 61,440}, head dim 64 and 128, random tile densities {1, .5, .25, .1, .05, .02} and
  the real genome layout. TFLOP/s count computed tiles only (4*bm*bn*D per tile and head
  forward, 2.5x that backward); dense SDPA counts all L^2. The two H100 targets are printed
  as ratios: ours/Flex speed at density <= 0.1 (target >= 1.3) and ours/FA2 TFLOP/s at
  density >= 0.1 (target >= 0.85);
- CPU: the block-wise reference vs dense SDPA with a boolean mask (fwd, fwd+bwd), and the
  time and peak memory of a 61,440-token forward+backward through the reference (measured in
  a child process so that its peak RSS is its own). CPU rows use one torch thread and this
  process's CPU time, which other processes on a shared machine do not inflate.
Before any timing, each backend is checked against the fp32 reference on a small case; a
failing check stops the run instead of printing speedups of a wrong kernel.

    .venv/bin/python benchmarks/ops/bench_block_sparse_attn.py [--device auto|cpu|cuda] [--quick]
        [--only layout|attention|memory] [--block 128] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lcplm_kernels.block_sparse_attn import (
    block_sparse_attn,
    build_layout,
    dense_allowed,
    dense_token_mask,
    naive_block_sparse_attn,
    window_allowed,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data"))
GENOME_TOKENS = 61_440
DENSITIES = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02)


# ----------------------------------------------------------------------------- inputs


def real_genome_pid(n_tokens: int) -> tuple[torch.Tensor, str] | None:
    """(1, n_tokens) pid from the shared phage GenBank's CDS translations, in file order."""
    gbk = SHARED / "genomes" / "pharokka_meta_phages.gbk"
    if not gbk.is_file():
        return None
    from Bio import SeqIO

    lengths = []
    for rec in SeqIO.parse(str(gbk), "genbank"):
        for f in rec.features:
            if f.type == "CDS" and "translation" in f.qualifiers:
                lengths.append(len(f.qualifiers["translation"][0].rstrip("*")))
    lengths = torch.tensor(lengths)
    keep = int((torch.cumsum(lengths, 0) < n_tokens).sum()) + 1
    lengths = lengths[:keep].clone()
    lengths[-1] -= int(lengths.sum()) - n_tokens  # crop the last protein to the window
    pid = torch.repeat_interleave(torch.arange(keep), lengths)[None]
    return pid, f"real phage proteins ({keep} proteins, first genomes of {gbk.name})"


def synthetic_genome_pid(n_tokens: int, n_proteins: int, seed: int = 0) -> torch.Tensor:
    """(1, n_tokens): proteins of log-normal lengths (median ~170 aa) in order."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.exp(torch.randn(n_proteins, generator=gen) * 0.6)
    lengths = (raw / raw.sum() * n_tokens).long().clamp(min=1)
    lengths[-1] += n_tokens - int(lengths.sum())
    return torch.repeat_interleave(torch.arange(n_proteins), lengths)[None]


def genome_case(n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    real = real_genome_pid(n_tokens)
    if real is None:
        pid, name = synthetic_genome_pid(n_tokens, 300), "synthetic genome (shared data absent)"
    else:
        pid, name = real
    n = int(pid.max()) + 1
    return pid, window_allowed(n, 2), f"{name}, window w=2"


def random_density_case(n_tokens: int, block: int, density: float, seed: int = 0):
    """Each block its own 'protein'; allowed tiles drawn with the given density (diagonal kept)."""
    n_blocks = -(-n_tokens // block)
    pid = (torch.arange(n_tokens) // block)[None]
    gen = torch.Generator().manual_seed(seed)
    allowed = (torch.rand(n_blocks, n_blocks, generator=gen) < density) | torch.eye(n_blocks, dtype=torch.bool)
    return pid, allowed


# ----------------------------------------------------------------------------- timing


def cpu_time(fn, repeat: int) -> float:
    """Median CPU time (ms) of this process for fn over repeat runs after one warm-up.

    CPU rows run with one torch thread and count this process's CPU time, not wall time:
    on a shared machine other processes' load then slows both sides alike without adding
    their waiting time to either.
    """
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return 1e3 * statistics.median(times)


def gpu_time(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=50)


def fwd_and_fwdbwd(attn, q, k, v, dout, timer):
    def fwd():
        with torch.no_grad():
            attn(q, k, v)

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        attn(q, k, v).backward(dout)

    return timer(fwd), timer(fwd_bwd)


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# ----------------------------------------------------------------------------- sections


def bench_layout_build(device: str, repeat: int) -> None:
    clock = time.perf_counter if device == "cuda" else time.process_time
    what = "wall time" if device == "cuda" else "CPU time, 1 thread"
    print(f"\n## Layout build ({device}, {what}), 64 x 64 tiles: min / median of {repeat} builds")
    pid, allowed, name = genome_case(GENOME_TOKENS)
    syn = synthetic_genome_pid(GENOME_TOKENS, 300)
    cases = [
        (name, pid, allowed),
        ("synthetic 61,440 tokens / 300 proteins, window w=2", syn, window_allowed(300, 2)),
        ("synthetic 61,440 tokens / 300 proteins, dense", syn, dense_allowed(300)),
    ]
    for label, p, a in cases:
        p, a = p.to(device), a.to(device)
        build_layout(p, a)
        times = []
        for _ in range(repeat):
            if device == "cuda":
                torch.cuda.synchronize()
            t = clock()
            layout = build_layout(p, a)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(1e3 * (clock() - t))
        print(
            f"{label}: L={p.shape[1]}, {a.shape[0]} proteins, density {layout.density:.4f} "
            f"({layout.num_tiles} tiles, {layout.num_full_tiles} full): "
            f"{min(times):.2f} / {statistics.median(times):.2f} ms"
        )


def check_cpu_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    pid = synthetic_genome_pid(1000, 9)
    allowed = window_allowed(9, 1)
    q, k, v = (torch.randn(1, 2, 1000, 32, generator=gen) for _ in range(3))
    got = block_sparse_attn(q, k, v, build_layout(pid, allowed))
    want = naive_block_sparse_attn(q, k, v, pid, allowed)
    if not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
        sys.exit("block-wise reference disagrees with the dense reference: fix it before benchmarking")


def bench_cpu(lengths, head_dim: int, heads: int, repeat: int) -> None:
    check_cpu_reference()
    print(
        f"\n## CPU: block-wise reference vs dense SDPA with a boolean mask "
        f"(fp32, B=1, H={heads}, D={head_dim}, 64 x 64 tiles; CPU ms, 1 thread, median of {repeat})"
    )
    print("| L | layout | density | reference fwd ms | SDPA+mask fwd ms | fwd speedup | reference fwd+bwd ms | SDPA+mask fwd+bwd ms | fwd+bwd speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for L in lengths:
        pid_g, allowed_g, _ = genome_case(L)
        cases = [(f"density {d}", *random_density_case(L, 64, d)) for d in (1.0, 0.25, 0.05)]
        cases.append(("genome w=2", pid_g, allowed_g))
        for label, pid, allowed in cases:
            layout = build_layout(pid, allowed)
            q, k, v, dout = (torch.randn(1, heads, L, head_dim, generator=gen) for _ in range(4))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            mask = dense_token_mask(pid, allowed)[:, None]
            ours = fwd_and_fwdbwd(lambda a, b, c: block_sparse_attn(a, b, c, layout), q, k, v, dout, lambda f: cpu_time(f, repeat))
            sdpa = fwd_and_fwdbwd(
                lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask), q, k, v, dout, lambda f: cpu_time(f, repeat)
            )
            print(
                f"| {L} | {label} | {layout.density:.3f} | {ours[0]:.1f} | {sdpa[0]:.1f} | {sdpa[0] / ours[0]:.2f}x "
                f"| {ours[1]:.1f} | {sdpa[1]:.1f} | {sdpa[1] / ours[1]:.2f}x |"
            )


def memory_child(heads: int, head_dim: int) -> None:
    """Run in a child process: 61,440-token fwd+bwd through the block-wise reference."""
    torch.set_num_threads(1)

    def rss_kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    pid, allowed, name = genome_case(GENOME_TOKENS)
    layout = build_layout(pid, allowed)
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, heads, GENOME_TOKENS, head_dim, generator=gen) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    before = rss_kb("VmRSS")
    t, w = time.process_time(), time.perf_counter()
    out = block_sparse_attn(q, k, v, layout)
    t_fwd = time.process_time() - t
    out.backward(dout)
    t_all, wall = time.process_time() - t, time.perf_counter() - w
    print(json.dumps({
        "layout": name, "density": layout.density, "tiles": layout.num_tiles,
        "fwd_s": t_fwd, "fwd_bwd_s": t_all, "wall_s": wall, "rss_before_mb": before / 1024,
        "peak_mb": rss_kb("VmHWM") / 1024,
        "dense_scores_gb": GENOME_TOKENS**2 * heads * 4 / 1e9,
    }))


def bench_cpu_memory(heads: int, head_dim: int) -> None:
    cmd = [sys.executable, __file__, "--memory-child", "--heads", str(heads), "--head-dim", str(head_dim)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        print(f"\n61,440-token memory run failed:\n{res.stderr[-2000:]}")
        return
    r = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"\n## CPU: 61,440-token forward+backward through the block-wise reference (fp32, B=1, H={heads}, D={head_dim})\n"
        f"{r['layout']}: density {r['density']:.4f} ({r['tiles']} tiles); CPU time (1 thread): forward "
        f"{r['fwd_s']:.2f} s, forward+backward {r['fwd_bwd_s']:.2f} s (wall {r['wall_s']:.2f} s); peak RSS {r['peak_mb']:.0f} MB "
        f"({r['peak_mb'] - r['rss_before_mb']:.0f} MB above the process with its inputs); "
        f"dense fp32 scores alone would take {r['dense_scores_gb']:.1f} GB"
    )


def flex_block_mask(layout, L: int):
    """A FlexAttention BlockMask with exactly our layout's partial and full tiles."""
    from torch.nn.attention.flex_attention import BlockMask

    B, nq, nk = layout.batch_size, layout.num_q_blocks, layout.num_k_blocks
    dev = layout.device

    def dense_indices(ptr, idx):
        ptr = ptr.long()
        counts = ptr[1:] - ptr[:-1]
        rows = torch.repeat_interleave(torch.arange(B * nq, device=dev), counts)
        pos = torch.arange(idx.numel(), device=dev) - ptr[rows]
        mat = torch.zeros(B * nq, nk, dtype=torch.int32, device=dev)
        mat[rows, pos] = idx
        return counts.to(torch.int32).view(B, 1, nq), mat.view(B, 1, nq, nk)

    kv_num, kv_idx = dense_indices(layout.q_ptr, layout.q_idx)
    full_num, full_idx = dense_indices(layout.q_full_ptr, layout.q_full_idx)
    kpid, kallowed = layout.kernel_pid, layout.kernel_allowed

    def mask_mod(b, h, q_idx, kv_idx):
        return kallowed[b, kpid[b, q_idx], kpid[b, kv_idx]] != 0

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=(layout.block_m, layout.block_n), mask_mod=mask_mod, seq_lengths=(L, L)
    )


def check_gpu_kernel() -> None:
    gen = torch.Generator().manual_seed(0)
    pid = synthetic_genome_pid(4096, 30).cuda()
    allowed = window_allowed(30, 2, device="cuda")
    layout = build_layout(pid, allowed)
    q, k, v = (torch.randn(1, 4, 4096, 64, generator=gen).cuda().to(torch.bfloat16) for _ in range(3))
    got = block_sparse_attn(q, k, v, layout).float()
    want = block_sparse_attn(q.float(), k.float(), v.float(), layout, backend="reference")
    same = block_sparse_attn(q, k, v, layout, backend="reference").float()
    err, err_torch = (got - want).abs().max().item(), (same - want).abs().max().item()
    if not err <= 2 * err_torch + 1e-6:
        sys.exit(f"Triton kernel error {err:.3g} > 2 x PyTorch bf16 error {err_torch:.3g}: fix it before benchmarking")


def bench_gpu(lengths, head_dims, block: int, with_reference: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    check_gpu_kernel()
    flex = torch.compile(flex_attention, dynamic=False)
    dtype = torch.bfloat16
    print(
        f"\n## GPU ({torch.cuda.get_device_name()}): bf16, B=1, H*D=1024, {block} x {block} tiles; "
        "ms and TFLOP/s (computed tiles) via triton.testing.do_bench"
    )
    print("| L | D | layout | density | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | vs Flex (fwd, fwd+bwd) | TFLOP/s vs FA2 (fwd, fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for L in lengths:
        pid_g, allowed_g, _ = genome_case(L)
        layouts = [(f"random {d}", *random_density_case(L, block, d)) for d in DENSITIES]
        layouts.append(("genome w=2", pid_g, allowed_g))
        for D in head_dims:
            H = 1024 // D
            gen = torch.Generator().manual_seed(0)
            q, k, v, dout = (torch.randn(1, H, L, D, generator=gen).to("cuda", dtype) for _ in range(4))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            dense_flops = 4.0 * H * L * L * D

            def sdpa(a, b, c):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(a, b, c)

            fa2 = fwd_and_fwdbwd(sdpa, q, k, v, dout, gpu_time)
            fa2_tf = (tflops(dense_flops, fa2[0]), tflops(3.5 * dense_flops, fa2[1]))
            print(f"| {L} | {D} | (dense) | 1.000 | SDPA FlashAttention | {fa2[0]:.2f} | {fa2_tf[0]:.1f} | {fa2[1]:.2f} | {fa2_tf[1]:.1f} | | |")
            for label, pid, allowed in layouts:
                layout = build_layout(pid.cuda(), allowed.cuda(), block, block)
                flops = 4.0 * H * layout.num_tiles * block * block * D
                rows = {}
                rows["ours (Triton)"] = fwd_and_fwdbwd(lambda a, b, c: block_sparse_attn(a, b, c, layout), q, k, v, dout, gpu_time)
                try:
                    bm = flex_block_mask(layout, L)
                    rows["FlexAttention"] = fwd_and_fwdbwd(lambda a, b, c: flex(a, b, c, block_mask=bm), q, k, v, dout, gpu_time)
                except Exception as e:  # a Flex failure is a result to report, not a reason to stop
                    print(f"| {L} | {D} | {label} | {layout.density:.3f} | FlexAttention | failed: {type(e).__name__}: {str(e)[:80]} | | | | | |")
                # the reference's Python loop runs ~one chunk per 4M scores: keep it to small cases
                if with_reference and layout.num_tiles * block * block * H <= (1 << 31):
                    rows["block-wise reference"] = fwd_and_fwdbwd(
                        lambda a, b, c: block_sparse_attn(a, b, c, layout, backend="reference"), q, k, v, dout, gpu_time
                    )
                flex_ms = rows.get("FlexAttention")
                for impl, (f_ms, fb_ms) in rows.items():
                    tf = (tflops(flops, f_ms), tflops(3.5 * flops, fb_ms))
                    vs_flex = vs_fa2 = ""
                    if impl == "ours (Triton)":
                        if flex_ms:
                            vs_flex = f"{flex_ms[0] / f_ms:.2f}x, {flex_ms[1] / fb_ms:.2f}x"
                        vs_fa2 = f"{tf[0] / fa2_tf[0]:.2f}, {tf[1] / fa2_tf[1]:.2f}"
                    print(
                        f"| {L} | {D} | {label} | {layout.density:.3f} | {impl} | {f_ms:.2f} | {tf[0]:.1f} "
                        f"| {fb_ms:.2f} | {tf[1]:.1f} | {vs_flex} | {vs_fa2} |"
                    )
            del q, k, v, dout
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--quick", action="store_true", help="fewer sizes (CPU: L=2048, 4096; GPU: 8k, 16k)")
    ap.add_argument("--block", type=int, default=128, help="GPU tile size for ours and Flex (the layout default is 64)")
    ap.add_argument("--no-reference", action="store_true", help="GPU: skip the block-wise reference rows")
    ap.add_argument("--heads", type=int, default=2, help="CPU: heads")
    ap.add_argument("--head-dim", type=int, default=64, help="CPU: head dim")
    ap.add_argument("--only", choices=("layout", "attention", "memory"), help="run one section")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.heads, args.head_dim)
        return 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        torch.set_num_threads(1)
    print("# Block-sparse attention benchmark (benchmarks/ops/bench_block_sparse_attn.py)")
    print(header(device))
    if args.only in (None, "layout"):
        bench_layout_build("cpu", repeat=20)
        if device == "cuda":
            bench_layout_build("cuda", repeat=20)
    if args.only in (None, "attention"):
        if device == "cuda":
            lengths = (8192, 16384) if args.quick else (8192, 16384, 32768, GENOME_TOKENS)
            bench_gpu(lengths, (64, 128), args.block, not args.no_reference)
        else:
            bench_cpu((2048, 4096) if args.quick else (2048, 4096, 8192), args.head_dim, args.heads, repeat=3)
    if args.only in (None, "memory"):
        bench_cpu_memory(args.heads, args.head_dim)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
