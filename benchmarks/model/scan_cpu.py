"""Selective scan on CPU (issue 3): the native and chunked scans vs the sequential reference.

    .venv/bin/python benchmarks/model/scan_cpu.py [--threads 2] [--repeats 3]
    .venv/bin/python benchmarks/model/scan_cpu.py --mamba-style        # + mamba-ssm-style reference
    .venv/bin/python benchmarks/model/scan_cpu.py memory [--lengths 4000 16000 32000 61000]

``scan`` (default): fwd and fwd+bwd time of the fused C scan (``native``,
``lcplm_kernels.selective_scan.cpu``, the CPU default), the pure-PyTorch
``selective_scan_chunked`` (the fallback without a C compiler) and ``selective_scan_ref``, at
the issue's shape (batch 4, d_inner 256, d_state 16, L 4096, fp32, z, D, delta_bias,
softplus) and at a small-state shape (one sequence through a d_model-64 layer: batch 1,
d_inner 128); best of ``--repeats`` alternating runs, the ratios, and each fast scan's max
errors against the reference (output and every gradient).
``--mamba-style`` adds mamba-ssm's way of writing the reference (index a precomputed
(B, D, L, N) tensor at every step; its autograd backward is quadratic in L) at L 1024.

``memory``: forward + backward of one sequence of L residues through a 2-layer d_model-64
BiMamba-S (``--backend``, default auto: native on CPU), one subprocess per L so each peak RSS
is clean; prints time, peak RSS, the growth
over the smallest L and the bytes per residue of that growth (linear memory: constant).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lcplm_kernels.selective_scan import cpu as cpu_scan
from lcplm_kernels.selective_scan import selective_scan_chunked, selective_scan_cpu, selective_scan_ref

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def inputs(batch: int, dim: int, nstate: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = [
        torch.randn(batch, dim, length, generator=g),  # u
        0.5 * torch.rand(batch, dim, length, generator=g),  # delta
        -0.5 * torch.rand(dim, nstate, generator=g),  # A
        torch.randn(batch, nstate, length, generator=g),  # B
        torch.randn(batch, nstate, length, generator=g),  # C
        torch.randn(dim, generator=g),  # D
        torch.randn(batch, dim, length, generator=g),  # z
        0.5 * torch.rand(dim, generator=g),  # delta_bias
    ]
    return [x.requires_grad_() for x in t]


def mamba_style_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """The sequential scan written as mamba-ssm's reference is: precompute exp(delta A) and
    delta B u as (B, D, L, N) tensors and index them at every step. Autograd's backward of
    each index allocates a full-size gradient, so the backward is quadratic in L."""
    delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    inp = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = decay[:, :, i] * h + inp[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2) + D[:, None] * u
    return y * F.silu(z)


def run_once(fn, args, gout) -> tuple[list[float], torch.Tensor, list[torch.Tensor]]:
    """[fwd wall, fwd+bwd wall, fwd cpu, fwd+bwd cpu] seconds, output, gradients."""
    for a in args:
        a.grad = None
    u, delta, A, B, C, D, z, db = args
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(u, delta, A, B, C, D, z=z, delta_bias=db, delta_softplus=True)
    w1, c1 = time.perf_counter(), time.process_time()
    out.backward(gout)
    w2, c2 = time.perf_counter(), time.process_time()
    return [w1 - w0, w2 - w0, c1 - c0, c2 - c0], out.detach(), [a.grad.clone() for a in args]


def native_scan(*args, **kw):
    return selective_scan_cpu(*args, **kw)


def candidates() -> list[tuple[str, object]]:
    out = [("chunked", selective_scan_chunked)]
    if cpu_scan.available():
        out.append(("native", native_scan))
    else:
        print(f"  (native scan unavailable: {cpu_scan.unavailable_reason()})")
    return out


def compare(name: str, shape: tuple[int, int, int, int], repeats: int, ref_fn=selective_scan_ref, ref_name="reference") -> None:
    batch, dim, nstate, length = shape
    args = inputs(batch, dim, nstate, length)
    gout = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1))
    fast = candidates()
    for _, fn in fast:
        run_once(fn, args, gout)  # warm-up: allocator, thread pools, the native build
    sides = [(ref_name, ref_fn)] + fast
    best = {label: [float("inf")] * 4 for label, _ in sides}
    res = {}
    for _ in range(repeats):  # alternate, so load changes hit every side alike
        for label, fn in sides:
            times, out, grads = run_once(fn, args, gout)
            best[label] = [min(a, b) for a, b in zip(best[label], times)]
            res[label] = (out, grads)
    r = best[ref_name]
    print(f"\n{name}: batch {batch}, d_inner {dim}, d_state {nstate}, L {length}, fp32 (best of {repeats})")
    print(f"  {'':<12} {'fwd s':>9} {'fwd+bwd s':>10}   {'fwd cpu s':>10} {'fwd+bwd cpu s':>14}")
    for label, _ in sides:
        c = best[label]
        print(f"  {label:<12} {c[0]:>9.4f} {c[1]:>10.4f}   {c[2]:>10.4f} {c[3]:>14.4f}")
    for label, _ in fast:
        c = best[label]
        print(
            f"  ratio {label:<7}{r[0] / c[0]:>8.1f}x {r[1] / c[1]:>9.1f}x   {r[2] / c[2]:>9.1f}x {r[3] / c[3]:>13.1f}x"
            f"   ({ref_name} / {label}; wall clock, then process CPU time)"
        )
    orf, gr = res[ref_name]
    for label, _ in fast:
        oc, gc = res[label]
        errs = [f"out {(oc - orf).abs().max().item():.1e}"]
        for n, a, b in zip(("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"), gc, gr):
            errs.append(f"{n} {(a - b).abs().max().item():.1e} (of {b.abs().max().item():.1e})")
        print(f"  max |{label} - {ref_name}|: " + ", ".join(errs))


def scan_main(ns: argparse.Namespace) -> None:
    torch.set_num_threads(ns.threads)
    print(header())
    print(f"native scan: {cpu_scan.library_info()}")
    compare("issue 3 shape", (4, 256, 16, ns.length), ns.repeats)
    compare("small state (one sequence, d_model 64 layer)", (1, 128, 16, 8192), ns.repeats)
    if ns.mamba_style:
        compare("vs mamba-style reference", (4, 256, 16, 1024), 1, mamba_style_ref, "mamba-style")


def memory_child(length: int, threads: int, backend: str) -> None:
    torch.set_num_threads(threads)
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

    torch.manual_seed(0)
    model = BiMambaLM(BiMambaConfig(d_model=64, n_layer=2, scan_backend=backend))
    ids = torch.randint(4, 29, (1, length))
    model(ids[:, :64]).sum().backward()  # warm-up at a tiny length
    model.zero_grad()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[0], ids[0]).backward()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"L": length, "seconds": dt, "cpu_seconds": cpu, "peak_mib": peak / 1024, "base_mib": base / 1024}))


def memory_main(ns: argparse.Namespace) -> None:
    torch.set_num_threads(ns.threads)  # the children run with it; the header reports it
    print(header())
    print(f"\nforward + backward, one sequence, BiMamba-S d_model 64, 2 layers (scan backend {ns.backend}), one process per L")
    rows = []
    for length in ns.lengths:
        cmd = [sys.executable, __file__, "memory-child", str(length), "--threads", str(ns.threads), "--backend", ns.backend]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"  {'L':>7} {'time s':>8} {'cpu s':>8} {'peak RSS MiB':>13} {'growth MiB':>11} {'bytes/residue':>14}")
    first = rows[0]
    for r in rows:
        growth = r["peak_mib"] - first["peak_mib"]
        per = growth * 2**20 / (r["L"] - first["L"]) if r["L"] != first["L"] else float("nan")
        print(f"  {r['L']:>7} {r['seconds']:>8.2f} {r['cpu_seconds']:>8.2f} {r['peak_mib']:>13.1f} {growth:>11.1f} {per:>14.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="scan", choices=["scan", "memory", "memory-child"])
    p.add_argument("child_length", nargs="?", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--mamba-style", action="store_true", help="also time mamba-ssm's reference formulation at L 1024")
    p.add_argument("--backend", default="auto", help="memory mode: model.scan_backend (auto, native, chunked)")
    p.add_argument("--lengths", type=int, nargs="+", default=[4000, 16000, 32000, 61000])
    ns = p.parse_args()
    if ns.mode == "memory-child":
        memory_child(ns.child_length, ns.threads, ns.backend)
    elif ns.mode == "memory":
        memory_main(ns)
    else:
        scan_main(ns)


if __name__ == "__main__":
    main()
