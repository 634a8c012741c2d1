"""LightningDataModules, one module per data source, picked by ``data.name``.

Each class takes ``(cfg, seed)`` and yields batches as dicts of tensors: ``labels``
(``[B, L]``, -100 where not a target) plus the model's keyword inputs (``input_ids`` and
``lengths`` for padded batches, ``cu_seqlens`` for packed ones, ``pid``/``allowed`` for genomes).
"""

from __future__ import annotations

import importlib
from typing import Any

DATAMODULES: dict[str, str] = {
    "fasta": "lcplm.data.datamodules.fasta:FastaDataModule",
    "ppi_walks": "lcplm.data.datamodules.ppi_walks:PPIWalkDataModule",
    "genome": "lcplm.data.datamodules.genome:GenomeDataModule",
}


def build_datamodule(cfg: Any, seed: int = 0):
    module, _, cls = DATAMODULES[cfg.name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, seed=seed)
