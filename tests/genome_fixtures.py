"""Small genomes written by the tests: GenBank records with taxonomy and CDS translations,
and a genome experiment (1-layer random model) reading them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = REPO / "experiments" / "genome" / "tiny_base.yaml"
# a 1-layer model and short windows: every command below runs in a few seconds on one core
TINY_MODEL = ["model.num_layers=1", "model.hidden=32", "model.heads=2", "model.ffn=64", "data.max_tokens=256"]

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def write_genbank(
    path: Path,
    genomes: Sequence[tuple[str, Optional[str], Optional[str], Sequence[str]]],
    proteins_per_genome: int = 4,
    seed: int = 0,
) -> Path:
    """One record per ``(genome id, organism, taxon id, lineage)``; proteins ``<gid>_P<n>`` of
    30-60 random residues, in genome order."""
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    rng = random.Random(seed)
    records = []
    for gid, organism, taxid, lineage in genomes:
        length = 200 * proteins_per_genome
        rec = SeqRecord(Seq("A" * length), id=gid, name=gid, description=f"{gid} test genome")
        rec.annotations["molecule_type"] = "DNA"
        rec.annotations["organism"] = organism or "."
        rec.annotations["taxonomy"] = list(lineage)
        quals = {}
        if organism:
            quals["organism"] = [organism]
        if taxid:
            quals["db_xref"] = [f"taxon:{taxid}"]
        rec.features.append(SeqFeature(FeatureLocation(0, length), type="source", qualifiers=quals))
        for n in range(proteins_per_genome):
            seq = "M" + "".join(rng.choice(AMINO) for _ in range(rng.randint(30, 60)))
            rec.features.append(
                SeqFeature(
                    FeatureLocation(200 * n, 200 * n + 3 * len(seq) + 3, strand=1),
                    type="CDS",
                    qualifiers={"locus_tag": [f"{gid}_P{n + 1}"], "translation": [seq]},
                )
            )
        records.append(rec)
    write(records, str(path), "genbank")
    return path


def genome_args(gbk: Path) -> list[str]:
    """Experiment arguments for the CLI: tiny_base.yaml reading only ``gbk``."""
    return [str(TINY_BASE), *TINY_MODEL, f"data.genbank=[{gbk}]", "data.fasta=[]", "data.val_genomes=[]"]
