"""The trainer's view of model files: reading a run's Lightning ``.ckpt`` and ``run.init_from``.

Model files have one home, :mod:`lcplm.models.io` (below this layer, so models never import
train): ``read_checkpoint`` reads a ``.ckpt`` with ``weights_only=True`` (one UserError line
for a missing, empty, truncated or unsafe file) and ``load_weights`` loads the weights of any
model file (a model directory, a ``.ckpt``, LC-PLM's or ESM-2's release) into the model the
experiment built.
"""

from __future__ import annotations

from lcplm.models.io import load_weights, read_checkpoint

__all__ = ["load_weights", "read_checkpoint"]
