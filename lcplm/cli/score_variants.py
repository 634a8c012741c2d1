"""``lcplm score-variants --checkpoint C --dms CSV|DIR [...] --out DIR``: zero-shot variant effects of
ProteinGym DMS tables (the scores, windows and outputs are described in :mod:`lcplm.eval.variants`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from lcplm.data.dms import find_assays, read_dms, read_wild_type_fasta
from lcplm.embed import resolve_device
from lcplm.errors import UserError
from lcplm.eval import variants as V


def _window_arg(text: str) -> Optional[int | str]:
    if text in ("auto", "none"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a number of tokens, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lcplm score-variants",
                                description="Zero-shot variant-effect scores of DMS tables (ProteinGym format) with a masked LM.")
    p.add_argument("--checkpoint", required=True,
                   help="lcplm .ckpt (also from `lcplm convert`), a released LC-PLM directory, or a Hugging Face ESM-2 directory")
    p.add_argument("--dms", action="append", required=True, metavar="CSV|DIR",
                   help="ProteinGym DMS table, or a folder of them (repeatable)")
    p.add_argument("--out", required=True, help="output folder: <assay>.scores.csv, <assay>.json, summary.md/json")
    p.add_argument("--method", choices=V.METHODS, default="masked-marginal", help="ESM-1v score (default masked-marginal)")
    p.add_argument("--wild-type", metavar="FASTA",
                   help="one-record FASTA the positions refer to (default: recovered from mutated_sequence); one assay only")
    p.add_argument("--offset", type=int, default=1,
                   help="the table's number for the wild type's first residue (default 1: 1-based positions)")
    p.add_argument("--window", type=_window_arg, default="auto",
                   help="tokens a model sees around each site: auto (1024 for transformers, whole proteins for BiMamba-S), none, or N")
    p.add_argument("--max-tokens", type=int, default=16384, help="token budget per batch, B x L (default 16384)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--half", action="store_true", help="bf16 autocast on CUDA (log-probabilities in fp32)")
    p.add_argument("--random-init", type=int, metavar="SEED",
                   help="score with the checkpoint's architecture at random initialisation (the no-pretraining baseline)")
    p.add_argument("--label", help="model name in the outputs (default: the run name or file stem)")
    g = p.add_argument_group("genome context (genome transformers)")
    g.add_argument("--genome", metavar="GENBANK|FASTA", help="score the protein inside its genome window")
    g.add_argument("--protein", help="the assay's protein id in --genome (GenBank locus_tag / protein_id, or FASTA id)")
    g.add_argument("--genome-rule", default="file", help="FASTA genomes: file | prodigal | regex:PATTERN (default file)")
    g.add_argument("--pair-source", default="dense", choices=V.STATIC_PAIR_SOURCES, help="which proteins attend to each other")
    g.add_argument("--genome-max-tokens", type=int, default=61000, help="genome window size in tokens (default 61000)")
    r = p.add_argument_group("published reference")
    r.add_argument("--reference", metavar="CSV", help="ProteinGym-style table: DMS_id plus one Spearman column per model")
    r.add_argument("--reference-model", metavar="COLUMN", help="the column to print beside ours, e.g. 'ESM2 (650M)'")
    p.add_argument("--progress", action="store_true", help="a progress bar per assay")
    return p


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    if ns.max_tokens < 3:
        raise UserError(f"--max-tokens must be >= 3, got {ns.max_tokens}")
    if bool(ns.reference) != bool(ns.reference_model):
        raise UserError("--reference and --reference-model go together")
    if bool(ns.genome) != bool(ns.protein):
        raise UserError("--genome and --protein go together (which protein of the genome the assay mutates)")
    paths = find_assays(ns.dms)
    if ns.wild_type and len(paths) > 1:
        raise UserError(f"--wild-type names one sequence but {len(paths)} assays were given; score them one at a time")
    wt = read_wild_type_fasta(ns.wild_type) if ns.wild_type else None
    assays = [read_dms(p, wt, ns.offset) for p in paths]  # every table is checked before any model work
    genomes = V.read_genomes(ns.genome, ns.genome_rule) if ns.genome else None
    if genomes is not None and len(assays) > 1:
        raise UserError(f"--genome places one protein but {len(assays)} assays were given; score them one at a time")
    device = resolve_device(ns.device)
    sm = V.load_scoring_model(ns.checkpoint, ns.random_init, ns.label)
    if genomes is not None and not sm.takes_genome_context:
        raise UserError(f"--genome needs a genome transformer (sparse_transformer); {ns.checkpoint} is a {sm.kind!r} model")
    V.resolve_window(ns.window, sm)
    options = {"method": ns.method, "window": ns.window, "max_tokens": ns.max_tokens, "device": str(device),
               "half": ns.half, "offset": ns.offset, "wild_type": ns.wild_type, "random_init": ns.random_init,
               "genome": ns.genome, "protein": ns.protein, "pair_source": ns.pair_source if ns.genome else None}
    results = []
    for assay in assays:
        ctx = (V.genome_context(genomes, ns.protein, assay.wild_type, ns.genome_max_tokens, ns.pair_source, ns.genome)
               if genomes is not None else None)
        r = V.score_assay(sm, assay, ns.method, context=ctx, window=ns.window, max_tokens=ns.max_tokens,
                          device=device, half=ns.half, progress=ns.progress)
        print(f"{assay.name}: {len(assay)} mutants at {len(assay.sites)} sites, {ns.method}: "
              + ", ".join(f"{m} {V.format_metric(r.metrics[m])}" for m in V.METRIC_ORDER if m in r.metrics)
              + f" ({r.result.seconds:.1f} s, {r.mutants_per_second:.0f} mutants/s, {r.result.forward_rows} sequences)")
        if ns.reference:
            ref = V.read_reference(ns.reference, ns.reference_model, assay.name)
            ours = r.metrics["spearman"]
            if ref is None:
                print(f"{assay.name}: no row in {ns.reference}")
            else:
                r.reference = {"table": ns.reference, "model": ns.reference_model, "spearman": ref,
                               "difference": ours - ref}
                print(f"{assay.name}: Spearman ours {ours:.4f}  ProteinGym {ns.reference_model} {ref:.3f}  "
                      f"difference {ours - ref:+.4f}")
        results.append(r)
    V.write_outputs(ns.out, results, sm, options)
    print(f"wrote {Path(ns.out) / 'summary.md'} and per-assay .json / .scores.csv")
    return 0
