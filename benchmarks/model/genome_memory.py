"""Genome model memory (issue 6): forward+backward of the sparse genome transformer on one
61,000-token window of real phage proteins, per pair source, on this machine.

Each measurement runs in a fresh child process (so its peak RSS is its own): the peak is
VmHWM after resetting it (``/proc/self/clear_refs``) just before one forward+backward; the
child also reports the allowed token pairs (nnz). Rows:
- ``kernel`` backend (block-sparse operator; block-wise PyTorch on CPU, Triton on CUDA) at
  61,000 tokens for single_protein, window w=1 and window w=4;
- the same window at 15,250 tokens (a quarter): peak growth vs nnz growth vs L^2 growth;
- side by side at 8,192 tokens, window w=1: ``kernel`` vs ``dense`` (SDPA with an explicit
  L x L mask), the only other way to run this pattern in PyTorch.
Model: 2 layers, hidden 64, 4 heads, FFN 128 (the "tiny model" of the issue), fp32.

    .venv/bin/python benchmarks/model/genome_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time, torch
from lcplm.data.genomes import Genome, genome_windows, read_genbank
from lcplm.data.pair_sources import PairSourceConfig, build_pair_source
from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

tokens, source, width, backend, gbk, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
proteins = [p for g in read_genbank(gbk) for p in g.proteins]
w = genome_windows(Genome("concat", proteins), int(tokens))[0]
allowed = build_pair_source(PairSourceConfig(source, window=int(width))).allowed(w)
counts = torch.bincount(w.pid, minlength=len(w.proteins)).double()
nnz = int((counts[:, None] * counts[None, :])[allowed].sum())
torch.manual_seed(0)
model = SparseGenomeLM(SparseTransformerConfig(num_layers=2, hidden=64, heads=4, ffn=128, attention_backend=backend))
batch = dict(input_ids=w.input_ids[None], lengths=torch.tensor([len(w)]), pid=w.pid[None], allowed=allowed[None])

def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
rss0 = kb("VmRSS")
t = time.perf_counter()
model(**batch).float().mean().backward()
dt = time.perf_counter() - t
peak = kb("VmHWM")
print(json.dumps(dict(tokens=len(w), proteins=len(w.proteins), nnz=nnz, seconds=round(dt, 2),
                      peak_delta_mb=round((peak - rss0) / 1024, 1))))
"""


def run(tokens: int, source: str, width: int, backend: str, gbk: Path, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tokens), source, str(width), backend, str(gbk), str(threads)],
        capture_output=True, text=True, cwd=REPO,
    )
    if out.returncode != 0:
        raise SystemExit(f"child failed ({tokens} {source} {backend}):\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(source=source if source != "window" else f"window w={width}", backend=backend)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="skip the 61k window w=4 row")
    p.add_argument("--threads", type=int, default=2)
    ns = p.parse_args()
    data = Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data"))
    gbk = data / "genomes" / "pharokka_meta_phages.gbk"
    if not gbk.is_file():
        raise SystemExit(f"{gbk} not found (set LCPLM_DATA_DIR)")
    torch.set_num_threads(ns.threads)  # the children run with it; the header reports it
    print(header())
    rows = [
        run(61_000, "single_protein", 0, "kernel", gbk, ns.threads),
        run(61_000, "window", 1, "kernel", gbk, ns.threads),
    ]
    if not ns.quick:
        rows.append(run(61_000, "window", 4, "kernel", gbk, ns.threads))
    rows.append(run(15_250, "window", 1, "kernel", gbk, ns.threads))
    side = [run(8_192, "window", 1, "kernel", gbk, ns.threads), run(8_192, "window", 1, "dense", gbk, ns.threads)]
    print("\n| tokens | proteins | pair source | backend | allowed pairs (nnz) | nnz / L^2 | fwd+bwd s | peak RSS delta MB | MB per M nnz |")
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows + side:
        print(f"| {r['tokens']:,} | {r['proteins']} | {r['source']} | {r['backend']} | {r['nnz'] / 1e6:.1f}M | "
              f"{r['nnz'] / r['tokens'] ** 2:.4f} | {r['seconds']} | {r['peak_delta_mb']:,} | "
              f"{r['peak_delta_mb'] / (r['nnz'] / 1e6):.1f} |")
    big = next(r for r in rows if r["tokens"] > 60_000 and r["source"] == "window w=1")
    small = next(r for r in rows if r["tokens"] < 20_000)
    print(f"\nwindow w=1, {small['tokens']:,} -> {big['tokens']:,} tokens: peak x{big['peak_delta_mb'] / small['peak_delta_mb']:.2f}, "
          f"nnz x{big['nnz'] / small['nnz']:.2f}, L^2 x{(big['tokens'] / small['tokens']) ** 2:.2f}")
    k, d = side
    print(f"{k['tokens']:,} tokens, window w=1: dense/kernel peak memory x{d['peak_delta_mb'] / k['peak_delta_mb']:.2f}, "
          f"time x{d['seconds'] / k['seconds']:.2f}")
    print(f"one fp32 L x L score matrix at {big['tokens']:,} tokens: {big['tokens'] ** 2 * 4 / 2**30:.1f} GiB per head")


if __name__ == "__main__":
    main()
