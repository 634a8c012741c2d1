"""Stage-2 walk generation + tokenisation throughput on one CPU thread (issue 4).

A random graph of 100,000 proteins and 1,000,000 undirected edges, synthetic sequences with
realistic lengths (log-normal, median 300, 30..5000 residues), contexts of 8,192 tokens.
Prints contexts/s and tokens/s per core for walks + tokenisation (the data path that must keep
a GPU fed: target >= 1e6 tokens/s per core), the masking cost on top, and the vectorised
assembly against the per-token Python reference, measured side by side in this process.

    .venv/bin/python benchmarks/data/walks.py [--contexts 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lcplm.data.walks import CSRGraph, ProteinTable, assemble_contexts, assemble_contexts_reference, plan_contexts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402


def random_graph(n: int, m: int, seed: int) -> torch.Tensor:
    """(2, 2m) edge_index of m distinct undirected edges without self-loops."""
    rng = np.random.default_rng(seed)
    keys = np.zeros(0, dtype=np.int64)
    while keys.size < m:
        a, b = rng.integers(0, n, 2 * m), rng.integers(0, n, 2 * m)
        ok = a != b
        lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
        keys = np.unique(np.concatenate([keys, lo * n + hi]))
    keys = rng.permutation(keys)[:m]
    lo, hi = keys // n, keys % n
    return torch.from_numpy(np.stack([np.concatenate([lo, hi]), np.concatenate([hi, lo])]))


def synthetic_proteins(n: int, seed: int) -> ProteinTable:
    """Random residues with log-normal lengths, built straight into the flat buffer."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(300), 0.6, n), 30, 5000).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    aa = np.array(sorted({4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}), dtype=np.int8)
    residues = aa[rng.integers(0, 20, int(offsets[-1]))]
    return ProteinTable(torch.from_numpy(residues), torch.from_numpy(offsets))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--context-len", type=int, default=8192)
    p.add_argument("--max-protein-len", type=int, default=1024)
    p.add_argument("--p-neg", type=float, default=0.1)
    p.add_argument("--contexts", type=int, default=64, help="contexts per vectorised call (a batch)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(header() + " (single-threaded by design)")

    t0 = time.perf_counter()
    ei = random_graph(a.nodes, a.edges, 0)
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = CSRGraph.from_edge_index(ei, a.nodes)
    t_csr = time.perf_counter() - t0
    proteins = synthetic_proteins(a.nodes, 1)
    print(
        f"graph: {a.nodes:,} nodes, {a.edges:,} undirected edges (mean degree {2 * a.edges / a.nodes:.1f}); "
        f"residues {int(proteins.offsets[-1]):,} (mean length {proteins.lengths.double().mean():.0f}); "
        f"random graph {t_graph:.2f} s, CSR build {t_csr:.2f} s (one-off)"
    )
    print(f"contexts: {a.context_len} tokens, proteins cropped to {a.max_protein_len}, p_neg {a.p_neg}, {a.contexts} per call")

    gen = torch.Generator().manual_seed(0)
    starts_all = torch.randperm(a.nodes, generator=gen)

    call = [0]

    def starts() -> torch.Tensor:
        call[0] += 1
        i = (call[0] * a.contexts) % (a.nodes - a.contexts)
        return starts_all[i : i + a.contexts]

    def plan():
        return plan_contexts(graph, proteins, starts(), a.context_len, a.max_protein_len, a.p_neg, gen)

    plan()  # warm-up
    t_plan, pl = best_of(plan, a.repeats)
    t_asm, (ids, lengths) = best_of(lambda: assemble_contexts(pl, proteins), a.repeats)
    tokens = int(lengths.sum())
    n_prot = float(pl.num_proteins.double().mean())

    mask_line = ""
    try:
        from lcplm.data.masking import mask_tokens

        t_mask, _ = best_of(lambda: mask_tokens(ids, gen), a.repeats)
        total = t_plan + t_asm + t_mask
        mask_line = (
            f"  + masking (lcplm.data.masking.mask_tokens): {t_mask * 1e3:7.1f} ms -> "
            f"{a.contexts / total:8.1f} contexts/s, {tokens / total / 1e6:6.2f} M tokens/s per core"
        )
    except ImportError:
        mask_line = "  masking: lcplm.data.masking not importable here, not measured"

    t_both = t_plan + t_asm
    print(f"per call of {a.contexts} contexts ({tokens:,} tokens, {n_prot:.1f} proteins per context, best of {a.repeats}):")
    print(f"  walks (plan_contexts):          {t_plan * 1e3:7.1f} ms")
    print(f"  tokenisation (assemble):        {t_asm * 1e3:7.1f} ms")
    print(
        f"  walks + tokenisation:           {t_both * 1e3:7.1f} ms -> {a.contexts / t_both:8.1f} contexts/s, "
        f"{tokens / t_both / 1e6:6.2f} M tokens/s per core (target >= 1.00)"
    )
    print(mask_line)

    n_ref = min(8, a.contexts)
    sub = type(pl)(pl.nodes[:n_ref], pl.links[:n_ref], pl.crop_start[:n_ref], pl.crop_len[:n_ref])
    t_fast_sub, (f_ids, _) = best_of(lambda: assemble_contexts(sub, proteins), a.repeats)
    t_ref_sub, (r_ids, _) = best_of(lambda: assemble_contexts_reference(sub, proteins), 1)
    assert torch.equal(f_ids, r_ids), "vectorised assembly differs from the reference"
    print(
        f"assembly of {n_ref} contexts: vectorised {t_fast_sub * 1e3:.2f} ms vs Python reference "
        f"{t_ref_sub * 1e3:.1f} ms: {t_ref_sub / t_fast_sub:.0f}x faster, identical tokens"
    )


if __name__ == "__main__":
    main()
