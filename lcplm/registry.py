"""The registries of named kinds that a config picks by ``name``: model kinds, data sources, tasks.

Each maps a name to ``"module:Attribute"``, imported only when a config names it. They live in
the bottom layer, beside :mod:`lcplm.config`, so that a config's ``model.name``, ``data.name`` and
``task.name`` can be validated without the config module importing the layers that implement
them (``lcplm.models`` imports ``lcplm.config`` to validate a model file's config). Each layer
reads its own registry from here: :data:`lcplm.models.MODELS`, :data:`lcplm.tasks.TASKS`. Adding a
kind is one line here plus its class, which carries every other fact about it.
"""

from __future__ import annotations

# model.name -> the nn.Module class; its config dataclass is the class's ``config_class``
MODELS: dict[str, str] = {
    "bimamba": "lcplm.models.bimamba:BiMambaLM",
    "sparse_transformer": "lcplm.models.sparse_transformer:SparseGenomeLM",
    "esm2": "lcplm.models.esm2:ESM2LM",
}

# data.name -> the config dataclass of its LightningDataModule
DATA_SOURCES: dict[str, str] = {
    "fasta": "lcplm.data.datamodules.fasta:FastaDataConfig",
    "ppi_walks": "lcplm.data.datamodules.ppi_walks:PPIWalkDataConfig",
    "genome": "lcplm.data.datamodules.genome:GenomeDataConfig",
}

# task.name -> the LightningModule that trains the model
TASKS: dict[str, str] = {
    "mlm": "lcplm.tasks.mlm:MLMTask",  # masked LM: stage 1, stage 2 (graph contexts) and genomes
}
