"""Baselines evaluated on the same splits as the language models.

* ``composition``: amino-acid composition (20 frequencies) and dipeptide composition (400
  frequencies of adjacent standard-residue pairs), a classic alignment-free feature set;
* ``random_init``: the checkpoint's architecture at random initialisation (same size, same
  embedding code path), which separates what pretraining learned from what the architecture
  and the probe give for free; built by :func:`lcplm.embed.random_encoder`;
* ESM-2: list a Hugging Face ESM-2 directory among the checkpoints (``esm2=HF_DIR``; read by
  :func:`lcplm.models.io.from_pretrained`, or converted once with ``lcplm convert from-esm
  HF_DIR OUT_DIR``); it is then embedded like any lcplm model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lcplm.data import tokenizer as tok

_AA_INDEX = np.full(tok.PADDED_VOCAB_SIZE, -1, dtype=np.int64)
for _k, _aa in enumerate(tok.STANDARD_AMINO_ACIDS):
    _AA_INDEX[tok.TOKEN_TO_ID[_aa]] = _k
N_COMPOSITION_FEATURES = 20 + 400


def composition_features(sequences: Sequence[str], names: Sequence[str] | None = None) -> torch.Tensor:
    """(N, 420) float32: amino-acid then dipeptide frequencies of each sequence.

    Only the 20 standard residues count (X, B, Z, U, O, gaps and unknown characters are
    skipped, and a dipeptide needs two adjacent standard residues). A sequence without any
    standard residue has all-zero features.
    """
    names = list(names) if names is not None else [f"#{i}" for i in range(len(sequences))]
    out = np.zeros((len(sequences), N_COMPOSITION_FEATURES), np.float32)
    for i, (seq, name) in enumerate(zip(sequences, names)):
        k = _AA_INDEX[tok.encode_residues(seq, record=name)]
        std = k >= 0
        if std.any():
            out[i, :20] = np.bincount(k[std], minlength=20) / std.sum()
        pair = std[:-1] & std[1:]
        if pair.any():
            out[i, 20:] = np.bincount(k[:-1][pair] * 20 + k[1:][pair], minlength=400) / pair.sum()
    return torch.from_numpy(out)
