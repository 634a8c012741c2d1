"""``lcplm genome SUBCOMMAND EXPERIMENT [ARGS...] [key=value ...]``: evaluations of the genome-scale
sparse-attention model. EXPERIMENT is a genome pretraining config (or a shipped one's name,
``tiny_base`` = ``experiments/genome/tiny_base.yaml``); what each evaluation measures is in its module:

    pair-scores     inter-protein attention mass per pair     :mod:`lcplm.eval.genome_pair_scores`
    probe           PHROG function-category probe             :mod:`lcplm.eval.genome_probe`
    taxonomy        genome embeddings -> taxonomy             :mod:`lcplm.eval.genome_taxonomy`
    ppi-detection   attention pair scores vs known PPIs       :mod:`lcplm.eval.genome_ppi_detection`
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from lcplm.config import PretrainConfig, find_experiment, load_config, split_file_and_overrides
from lcplm.errors import UserError


def _experiment(args: list[str]) -> tuple[str, PretrainConfig]:
    """The experiment as the user named it (for messages and default output folders) and its config."""
    experiment, overrides = split_file_and_overrides(args)
    if experiment is None:
        raise UserError("give an experiment file: EXPERIMENT.yaml [key=value ...]")
    return experiment, load_config(find_experiment(experiment, "genome"), overrides, schema=PretrainConfig)


def _out_dir(given: Optional[str], evaluation: str, experiment: str) -> Path:
    return Path(given) if given else Path("runs") / evaluation / Path(experiment).stem


def _comma_list(text: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def pair_scores(ns: argparse.Namespace) -> int:
    from lcplm.eval.genome_pair_scores import write_pair_scores

    experiment, cfg = _experiment(ns.args)
    n = write_pair_scores(cfg, ns.checkpoint, ns.source, Path(ns.out), where=experiment)
    print(f"wrote {n} protein-pair scores to {ns.out}")
    return 0


def probe(ns: argparse.Namespace) -> int:
    from lcplm.eval.genome_probe import markdown_table, run_probe

    experiment, cfg = _experiment(ns.args)
    out = _out_dir(ns.out, "genome_probe", experiment)
    rows = run_probe(cfg, ns.checkpoint, _comma_list(ns.sources) or [], out, ns.l2, where=experiment)
    print(markdown_table(rows), end="")
    print(f"wrote {out / 'genome_probe.json'} and {out / 'genome_probe.md'}")
    return 0


def taxonomy(ns: argparse.Namespace) -> int:
    from lcplm.data.genomes import check_unique_protein_ids
    from lcplm.data.taxonomy import vcontact_genomes
    from lcplm.eval.genome_probe import genome_config
    from lcplm.eval.genome_taxonomy import markdown_table, read_taxonomy, run_taxonomy

    if (ns.gene_to_genome is None) != (ns.proteins is None):
        raise UserError("--gene-to-genome and --proteins go together (vConTACT's protein FASTA and its genome map)")
    experiment, cfg = _experiment(ns.args)
    genome_config(cfg, experiment)
    table = read_taxonomy(ns.taxonomy, ns.format, ns.gene_to_genome, ns.proteins)
    genomes = None
    if ns.proteins is not None:
        genomes = vcontact_genomes(ns.proteins, ns.gene_to_genome)
        check_unique_protein_ids(genomes)
    out = _out_dir(ns.out, "genome_taxonomy", experiment)
    report = run_taxonomy(
        cfg, table, out, ns.checkpoint, _comma_list(ns.sources), _comma_list(ns.ranks), ns.folds, ns.l2,
        genomes=genomes, taxonomy_files=ns.taxonomy, where=experiment,
    )
    c = report["meta"]["coverage"]
    print(f"genomes with taxonomy labels: {c['labelled']} of {c['genomes']}; not in the table: {c['missing_from_table']}"
          + (f" (e.g. {', '.join(c['missing_examples'][:3])})" if c["missing_from_table"] else "")
          + f"; table entries naming no genome: {c['table_entries_without_genome']}")
    print(markdown_table(report["rows"], ns.folds), end="")
    print(f"wrote {out / 'genome_taxonomy.json'} and {out / 'genome_taxonomy.md'}")
    return 0


def ppi_detection(ns: argparse.Namespace) -> int:
    from lcplm.eval.genome_ppi_detection import markdown_table, run_ppi_detection

    experiment, cfg = _experiment(ns.args)
    out = _out_dir(ns.out, "genome_ppi_detection", experiment)
    report = run_ppi_detection(
        cfg, Path(ns.pairs), out, Path(ns.scores) if ns.scores else None, ns.checkpoint, ns.source,
        ns.top_k, ns.threshold, ns.min_score, where=experiment,
    )
    print(markdown_table(report["rows"][0]), end="")
    print(f"wrote {out / 'genome_ppi_detection.json'} and {out / 'genome_ppi_detection.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lcplm genome", description="Evaluations of the genome-scale sparse-attention model.")
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    experiment = {"nargs": "+", "metavar": "EXPERIMENT.yaml [key=value ...]"}

    s = sub.add_parser("pair-scores", help="inter-protein attention mass per pair (the scored source's first step)",
                       description="First pass of the scored pair source: protein-pair attention mass from a model.")
    s.add_argument("args", **experiment)
    s.add_argument("--checkpoint", default=None,
                   help="genome model: run checkpoint or model directory (default: the config's model at random init)")
    s.add_argument("--out", required=True, help="pair-score file to write (TSV)")
    s.add_argument("--source", default="dense", help="pair pattern of the scoring pass (default: %(default)s)")
    s.set_defaults(func=pair_scores)

    s = sub.add_parser("probe", help="PHROG function-category probe of in-context protein embeddings",
                       description="Genome-context evaluation: a linear probe of PHROG function categories.")
    s.add_argument("args", **experiment)
    s.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]CKPT",
                   help="model to probe (repeatable); default: the config's model at random init")
    s.add_argument("--sources", default="single_protein,dense,window",
                   help="comma-separated pair sources to embed with (default: %(default)s)")
    s.add_argument("--out", default=None, help="output directory (default: runs/genome_probe/<experiment name>)")
    s.add_argument("--l2", type=float, default=1e-2, help="L2 penalty of the logistic regression")
    s.set_defaults(func=probe)

    from lcplm.eval.genome_taxonomy import FORMATS as TAXONOMY_FORMATS

    s = sub.add_parser("taxonomy", help="genome embeddings -> taxonomy: weighted F1 per rank, cosine silhouette",
                       description="Genome embeddings -> taxonomy: ViralEmbed's genome-level evaluation.")
    s.add_argument("args", **experiment)
    s.add_argument("--taxonomy", action="append", required=True, metavar="FILE",
                   help="taxonomy table (repeatable): GenBank, 'genome<TAB>rank=label ...' TSV, or vConTACT reference CSV")
    s.add_argument("--format", default="auto", choices=TAXONOMY_FORMATS,
                   help="format of the taxonomy files (auto: .gb/.gbk/.gbff -> genbank, .csv -> vcontact, else tsv)")
    s.add_argument("--gene-to-genome", default=None, metavar="CSV",
                   help="vConTACT gene-to-genome CSV (protein_id,contig_id,...); with --proteins it defines the genomes")
    s.add_argument("--proteins", default=None, metavar="FASTA", help="protein FASTA grouped by --gene-to-genome")
    s.add_argument("--checkpoint", action="append", default=[], metavar="[LABEL=]CKPT",
                   help="model to evaluate (repeatable); default: the config's model at random init")
    s.add_argument("--sources", default=None, help="comma-separated pair sources (default: the config's data.pair_source.name)")
    s.add_argument("--ranks", default=None, help="comma-separated ranks (default: every rank in the table but taxid)")
    s.add_argument("--folds", type=int, default=5, help="stratified folds over genomes (default: %(default)s)")
    s.add_argument("--l2", type=float, default=1e-2, help="L2 penalty of the logistic regression")
    s.add_argument("--out", default=None, help="output directory (default: runs/genome_taxonomy/<experiment name>)")
    s.set_defaults(func=taxonomy)

    s = sub.add_parser("ppi-detection", help="attention pair scores against known PPIs: P/R/F1, AUPR",
                       description="Protein-protein interactions detected from attention: ViralEmbed's two-step pair "
                       "scores against known interacting pairs.")
    s.add_argument("args", **experiment)
    s.add_argument("--pairs", required=True, help="known interacting pairs: 'id1 id2 [score|label]' lines")
    s.add_argument("--min-score", type=float, default=1.0, help="keep a known pair when its third column is >= this")
    s.add_argument("--scores", default=None, help="pair-score file of 'lcplm genome pair-scores' (default: score here)")
    s.add_argument("--checkpoint", default=None, help="model to score with (default: the config's model at random init)")
    s.add_argument("--source", default="dense", help="pair pattern of the scoring pass (default: %(default)s)")
    rule = s.add_mutually_exclusive_group()
    rule.add_argument("--top-k", type=int, default=None, help="partners kept per protein (default: data.pair_source.top_k)")
    rule.add_argument("--threshold", type=float, default=None, help="predict pairs with score >= this instead of top-k")
    s.add_argument("--out", default=None, help="output directory (default: runs/genome_ppi_detection/<experiment name>)")
    s.set_defaults(func=ppi_detection)
    return p


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    return ns.func(ns)
