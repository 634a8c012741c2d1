"""Packing vs padding on real protein length distributions (issue 3).

For each real FASTA and token budget, one epoch of batches as the sampler builds them:
padded without bucketing (naive: shuffled, a batch grows while B * max_len fits), padded with
length bucketing (``pack: false``), and packed (``pack: true``). Prints the padding fraction
(tokens the model computes on that are padding), the budget fill, the batch count, and the
compute each strategy spends relative to packing. Then the data path's own cost, measured side
by side in this process: one epoch of FastaDataModule batches (read, tokenize, crop, mask,
collate) padded vs packed, and the batch-planning time at UniRef50-like scale.

    .venv/bin/python benchmarks/data/packing.py [--max-length 1024] [--budgets 4096 16384 65536]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lcplm.data.batching import compare_batching, plan_batches, token_lengths
from lcplm.data.cache import DEFAULT_PROTEOME
from lcplm.data.datamodules.fasta import FastaDataConfig, FastaDataModule
from lcplm.data.fasta import FastaIndex
from lcplm.data.prepare import package_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data"))


def data_sets() -> list[tuple[str, Path]]:
    out = [("default proteome (pyhmmer)", package_file("pyhmmer", "pyhmmer", f"tests/data/seqs/{DEFAULT_PROTEOME}"))]
    for name, rel in [
        ("D-SCRIPT yeast", "ppi/dscript/yeast.fasta"),
        ("D-SCRIPT E. coli", "ppi/dscript/ecoli.fasta"),
        ("ASTRAL SCOPe 2.07 40%", "homology/astral-scope-2.07-40.fa"),
    ]:
        if (SHARED / rel).is_file():
            out.append((name, SHARED / rel))
        else:
            print(f"(skipping {name}: {SHARED / rel} not present; set LCPLM_DATA_DIR)")
    return out


def epoch_time(path: Path, pack: bool, max_length: int, max_tokens: int, cache: str) -> tuple[float, int]:
    """Seconds for one training epoch of batches (num_workers=0) and the real tokens in it."""
    dm = FastaDataModule(FastaDataConfig(path=str(path), max_length=max_length, max_tokens=max_tokens,
                                         pack=pack, val_fraction=0.0, cache_dir=cache), seed=0)
    dm.setup()
    t0 = time.perf_counter()
    tokens = 0
    for batch in dm.train_dataloader():
        tokens += int(batch["lengths"].sum()) if "lengths" in batch else batch["input_ids"].shape[1]
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--budgets", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--bucket-size", type=int, default=4096)
    ap.add_argument("--plan-records", type=int, default=2_000_000, help="synthetic records for the planning timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(header(extra=f"numpy {np.__version__}"))
    print(f"max_length={args.max_length} tokens (incl. <cls>/<eos>), bucket_size={args.bucket_size}, seed 0, one epoch\n")
    cache = tempfile.mkdtemp(prefix="lcplm-bench-")
    sets = data_sets()
    print("| data set | records | median len | max_tokens | padding: naive | padding: bucketed | padding: packed "
          "| batches naive / bucketed / packed | budget fill bucketed / packed | compute naive / bucketed vs packed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, path in sets:
        lengths = np.asarray(FastaIndex(path, cache).lengths)
        for budget in args.budgets:
            st = compare_batching(lengths, budget, args.max_length, args.bucket_size)
            n, b, p = st["naive"], st["padded"], st["packed"]
            print(
                f"| {name} | {len(lengths):,} | {int(np.median(lengths))} | {budget:,} | {n.padding_fraction:.1%} "
                f"| {b.padding_fraction:.1%} | {p.padding_fraction:.1%} | {n.batches:,} / {b.batches:,} / {p.batches:,} "
                f"| {b.budget_fill:.1%} / {p.budget_fill:.1%} "
                f"| {n.tensor_tokens / p.tensor_tokens:.2f}x / {b.tensor_tokens / p.tensor_tokens:.3f}x |"
            )

    print("\nData path, one epoch, num_workers=0, 1 thread (read + tokenize + crop + mask + collate):")
    print("| data set | max_tokens | padded: s, tokens/s | packed: s, tokens/s | padded / packed time |")
    print("|---|---:|---:|---:|---:|")
    for name, path in sets[:2]:
        budget = 16384
        tp, kp = epoch_time(path, False, args.max_length, budget, cache)
        tk, kk = epoch_time(path, True, args.max_length, budget, cache)
        print(f"| {name} | {budget:,} | {tp:.2f} s, {kp / tp:,.0f} | {tk:.2f} s, {kk / tk:,.0f} | {tp / tk:.2f} |")

    rng = np.random.default_rng(0)
    synth = token_lengths(np.maximum(1, rng.lognormal(5.6, 0.6, args.plan_records).astype(np.int64)), args.max_length)
    for pack in (False, True):
        t0 = time.perf_counter()
        plan = plan_batches(synth, 65536, pack, 65536, np.random.default_rng(1))
        dt = time.perf_counter() - t0
        print(f"\nplanning one epoch of {args.plan_records:,} records ({'packed' if pack else 'padded, bucketed'}, "
              f"max_tokens 65536): {dt:.2f} s, {len(plan):,} batches ({dt / args.plan_records * 60e6:.0f} s per 60M records)")


if __name__ == "__main__":
    main()
