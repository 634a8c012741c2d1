"""First pass of the ``scored`` pair source: protein-pair attention mass from a model.

``lcplm genome pair-scores EXPERIMENT.yaml --checkpoint CKPT --out FILE [--source dense]
[key=value ...]`` (:mod:`lcplm.cli.genome`; :func:`write_pair_scores` here)

Every window of the experiment's genomes (all of them, training and validation) is run
through the model with the ``--source`` pair pattern (default dense: every pair is
visible); in each layer and head the attention mass that the tokens of protein p pay to
protein r is summed blockwise (no L x L tensor), averaged over p's tokens, then over heads
and layers, and symmetrised (:meth:`SparseGenomeLM.protein_pair_attention`). The file holds
``protein_a <TAB> protein_b <TAB> score`` for every pair of proteins that share a window;
``pair_source: {name: scored, scores: FILE, top_k: K}`` then keeps each protein's top K.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import torch

from lcplm.config import PretrainConfig
from lcplm.data.datamodules.genome import GenomeDataConfig, load_genomes
from lcplm.data.genomes import Genome, GenomeWindow, genome_windows
from lcplm.data.pair_sources import PAIR_SOURCES, PairSource, build_pair_source
from lcplm.errors import UserError
from lcplm.files import atomic_open
from lcplm.eval.genome_probe import genome_config, load_models


@torch.no_grad()
def window_pair_attention(
    model: torch.nn.Module, genomes: Sequence[Genome], first_pass: PairSource, max_tokens: int, device: torch.device
) -> Iterator[tuple[GenomeWindow, torch.Tensor, torch.Tensor]]:
    """``(window, allowed, mass)`` per window of every genome: ``allowed`` (P, P) bool is the
    first pass's pattern, ``mass`` (P, P) fp32 the symmetrised attention mass under it."""
    for g in genomes:
        for w in genome_windows(g, max_tokens):
            allowed = first_pass.allowed(w)
            m = model.protein_pair_attention(
                w.input_ids[None].to(device),
                torch.tensor([len(w)], device=device),
                w.pid[None].to(device),
                allowed[None].to(device),
            )[0].cpu()
            yield w, allowed, m


def window_pair_scores(
    model: torch.nn.Module, genomes: Sequence[Genome], first_pass: PairSource, max_tokens: int, device: torch.device
) -> Iterator[tuple[str, str, float]]:
    """``(protein_a, protein_b, score)`` for each pair that shares a window and is allowed by
    the first pass, a before b in genome order."""
    for w, allowed, m in window_pair_attention(model, genomes, first_pass, max_tokens, device):
        ids = w.protein_ids
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                if allowed[i, j]:
                    yield ids[i], ids[j], float(m[i, j])


def first_pass_source(data: GenomeDataConfig, source: str, genomes: Sequence[Genome]) -> PairSource:
    """The pair pattern of the scoring pass: any source but ``scored`` (which needs these scores)."""
    if source not in PAIR_SOURCES or source == "scored":
        raise UserError(f"--source must be one of {[s for s in PAIR_SOURCES if s != 'scored']}, got {source!r}")
    return build_pair_source(dataclasses.replace(data.pair_source, name=source), genomes)


def write_pair_scores(cfg: PretrainConfig, checkpoint: str | None, source: str, out: Path, where: str = "config") -> int:
    """Write the pair-score file; returns the number of pairs written."""
    data = genome_config(cfg, where)
    genomes = load_genomes(data)
    first_pass = first_pass_source(data, source, genomes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    (_, model), = load_models(cfg, [checkpoint] if checkpoint else [], device)
    n = 0
    with atomic_open(out, "w") as fh:
        fh.write(f"# protein_a\tprotein_b\tscore (symmetrised attention mass; first pass '{source}', {where})\n")
        for a, b, score in window_pair_scores(model, genomes, first_pass, data.max_tokens, device):
            fh.write(f"{a}\t{b}\t{score:.6g}\n")
            n += 1
    return n
