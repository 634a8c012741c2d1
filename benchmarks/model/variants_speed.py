"""Masked-marginal scoring speed: one pass per mutated position, batched (``lcplm score-variants``),
against a naive loop with one unbatched pass per mutant, side by side in one process.

    .venv/bin/python benchmarks/model/variants_speed.py [--naive-mutants 150] [--repeats 2] [--threads 1]

Assay: the shared BLAT_ECOLX_Stiffler_2015 (4,996 single mutants at 263 of 286 positions; a
synthetic saturation scan of a random 286-residue protein without ``LCPLM_DATA_DIR``). Models:
the tiny BiMamba-S of ``make pretrain`` and an ESM-2 8M-shaped genome transformer (6 layers,
hidden 320, 20 heads), both at random initialisation (speed does not depend on the weights).

Rows, all on the same CPU threads:
- **batched** (ours): one row per distinct mutated position, rows batched under ``--max-tokens``,
  over the whole assay;
- **per position**: one row per distinct position, one row per forward pass (no batching);
- **naive**: one forward pass per mutant (its site masked), over the first ``--naive-mutants``
  mutants; its rate (mutants/s) is constant per mutant, so a subset measures it.
Each scorer runs ``--repeats`` times, interleaved; the best time counts. Ratio = mutants/s over
the naive loop's. The naive and per-position scores are checked against the batched ones (max
|difference| printed). On CPU a transformer gains little from batching (one row already keeps a
core busy), so its gain is the one pass per position; BiMamba-S's small layers gain from both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lcplm.data import tokenizer as tok
from lcplm.data.dms import DMSAssay, Substitution, read_dms
from lcplm.eval import variants as V

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def load_assay() -> tuple[DMSAssay, str]:
    data = Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data"))
    path = data / "fitness" / "BLAT_ECOLX_Stiffler_2015.csv"
    if path.is_file():
        return read_dms(path), "BLAT_ECOLX_Stiffler_2015 (shared data)"
    rng = np.random.default_rng(0)
    aas = "ACDEFGHIKLMNPQRSTVWY"
    wt = "".join(rng.choice(list(aas), 286))
    subs = [(Substitution(wt[i], i, a),) for i in range(286) for a in aas if a != wt[i]]
    assay = DMSAssay("synthetic", Path("synthetic"), wt, 1, [f"{s[0].wt}{s[0].index + 1}{s[0].mt}" for s in subs],
                     subs, rng.normal(size=len(subs)), None)
    return assay, "synthetic saturation scan, 286 residues (no LCPLM_DATA_DIR)"


def build_models() -> dict[str, torch.nn.Module]:
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
    from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

    torch.manual_seed(0)
    return {
        "BiMamba-S tiny (make pretrain)": BiMambaLM(BiMambaConfig(d_model=64, n_layer=2)).eval(),
        "ESM-2 8M shape (genome transformer)": SparseGenomeLM(SparseTransformerConfig(
            num_layers=6, hidden=320, heads=20, ffn=1280, attention_backend="auto")).eval(),
    }


@torch.inference_mode()
def naive_scores(model, wild_type: str, substitutions) -> np.ndarray:
    """A straightforward loop over the table: per mutant (per site of a multi-mutant) one
    unbatched forward pass with that site masked."""
    ids = tok.encode(wild_type)
    out = np.zeros(len(substitutions))
    for n, subs in enumerate(substitutions):
        for s in subs:
            x = ids.clone()
            x[1 + s.index] = tok.MASK
            lp = torch.log_softmax(model(x[None], lengths=torch.tensor([len(x)]))[0, 1 + s.index, :V.ESM_VOCAB], -1)
            out[n] += float(lp[tok.TOKEN_TO_ID[s.mt]] - lp[tok.TOKEN_TO_ID[s.wt]])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--naive-mutants", type=int, default=150, help="mutants the naive loop scores (its rate is per mutant)")
    p.add_argument("--max-tokens", type=int, default=16384, help="token budget per batch of the batched scorer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each scorer is reported")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    print(header())
    assay, what = load_assay()
    n_sub = min(ns.naive_mutants, len(assay))
    subset = assay.substitutions[:n_sub]
    print(f"assay: {what}: {len(assay)} mutants at {len(assay.sites)} positions; naive loop on the first {n_sub}")
    print("\n| model | scorer | mutants | forward rows | seconds | mutants/s | ratio vs naive |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, model in build_models().items():
        V.score_substitutions(model, assay.wild_type, subset[:5], max_tokens=ns.max_tokens)  # warm-up (kernel build, allocator)
        best: dict[str, float] = {}
        for _ in range(ns.repeats):  # interleaved, best of each: load from other processes hits all three alike
            fast = V.score_substitutions(model, assay.wild_type, assay.substitutions, max_tokens=ns.max_tokens)
            one = V.score_substitutions(model, assay.wild_type, assay.substitutions,
                                        max_tokens=len(assay.wild_type) + 2)  # a budget of one row: no batching
            t0 = time.perf_counter()
            naive = naive_scores(model, assay.wild_type, subset)
            t_naive = time.perf_counter() - t0
            for key, sec in (("fast", fast.seconds), ("one", one.seconds), ("naive", t_naive)):
                best[key] = min(best.get(key, float("inf")), sec)
        rate_naive = n_sub / best["naive"]
        diff = max(np.abs(naive - fast.scores[:n_sub]).max(), np.abs(one.scores - fast.scores).max())
        for label, key, n, rows in (("batched positions (ours)", "fast", len(assay), fast.forward_rows),
                                    ("one pass per position", "one", len(assay), one.forward_rows),
                                    ("naive: one pass per mutant", "naive", n_sub, n_sub)):
            rate = n / best[key]
            print(f"| {name} | {label} | {n} | {rows} | {best[key]:.2f} | {rate:.0f} | {rate / rate_naive:.1f}x |")
        print(f"| {name} | max abs score difference naive/per-position vs batched | | | | {diff:.1e} | |")

if __name__ == "__main__":
    main()
