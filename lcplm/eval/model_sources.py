"""Where downstream features come from: trained checkpoints and the baselines (``composition``,
``random_init``; :mod:`lcplm.eval.baselines`), as :class:`ModelSource` s, and their features for a
task's proteins (:func:`features_for`: encoders through the embedding cache of
:func:`lcplm.embed.cached_mean_embeddings`, configured by :class:`EmbedSettings`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from lcplm.errors import UserError


@dataclass
class EmbedSettings:
    max_tokens: int = 16384  # token budget per batch (B x L, <cls>/<eos> included)
    max_length: Optional[int] = 1000  # residues per sequence; longer ones follow long_policy (null: no limit)
    long_policy: str = "crop"  # full (embed whole) | crop (first max_length residues) | error
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    half: bool = False  # bf16 autocast on CUDA
    cache_dir: Optional[str] = None  # embedding cache (default <$LCPLM_CACHE_DIR or .cache>/embeddings)
    progress: bool = False  # a progress bar per embedding pass


@dataclass
class ModelSource:
    """Where features come from: an encoder (checkpoint or random init) or a fixed featuriser."""

    label: str
    key: str  # identifies the weights for the embedding cache
    factory: Optional[Callable[[], nn.Module]] = None  # builds the encoder (None for featurisers)
    featurize: Optional[Callable[[list[str], list[str]], torch.Tensor]] = None  # (names, seqs) -> (N, D)
    description: str = ""


def _checkpoint_label(path: Path) -> str:
    # runs/<run name>/checkpoints/last.ckpt -> <run name>
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem


def build_sources(cfg: Any) -> list[ModelSource]:
    """Checkpoints first (in config order), then the baselines; random_init copies the first
    checkpoint's architecture. ``cfg``: a downstream config (``checkpoints``, ``baselines``,
    ``random_init_seed``)."""
    from lcplm.embed import file_digest, load_encoder, random_encoder

    sources: list[ModelSource] = []
    first_model_cfg = None
    for entry in cfg.checkpoints:
        label, sep, path_s = entry.partition("=")
        if not sep:
            label, path_s = "", entry
        path = Path(path_s).expanduser()
        if not path.exists():
            raise UserError(
                f"checkpoint {path} not found: run `make pretrain` first to create it, "
                "or set checkpoints=[...] (PATH or LABEL=PATH) in the config or on the command line"
            )
        _, model_cfg = load_encoder(path)  # validates the checkpoint now, not after an hour of other work
        first_model_cfg = first_model_cfg or model_cfg
        label = label or _checkpoint_label(path)
        digest = file_digest(path)
        sources.append(ModelSource(label, f"ckpt:{digest}", factory=lambda p=path: load_encoder(p)[0],
                                   description=f"{path} ({getattr(model_cfg, 'name', '?')})"))
    for name in cfg.baselines:
        if name == "composition":
            from lcplm.eval.baselines import composition_features

            sources.append(ModelSource("composition", "composition", featurize=lambda n, s: composition_features(s, n),
                                       description="amino-acid + dipeptide composition (420 features)"))
        elif name == "random_init":
            if first_model_cfg is None:
                raise UserError("baseline random_init needs a checkpoint to copy its architecture from (checkpoints is empty)")
            mcfg, seed = first_model_cfg, cfg.random_init_seed
            key = "random:" + json.dumps(dataclasses.asdict(mcfg), sort_keys=True, default=str) + f":{seed}"
            sources.append(ModelSource("random_init", key, factory=lambda: random_encoder(mcfg, seed),
                                       description=f"{getattr(mcfg, 'name', '?')} at random initialisation (seed {seed})"))
        else:
            raise UserError(f"unknown baseline {name!r} (choose from composition, random_init)")
    labels = [s.label for s in sources]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise UserError(f"two models are labelled {sorted(dup)[0]!r}: name them with LABEL=PATH")
    if not sources:
        raise UserError("nothing to evaluate: no checkpoints and no baselines")
    return sources


def features_for(source: ModelSource, names: list[str], sequences: list[str], e: EmbedSettings,
                 log: Callable[[str], None] = print) -> torch.Tensor:
    """(N, D) features of the proteins: the source's featuriser on the residues an encoder would
    see, or the encoder's mean embeddings through the on-disk cache."""
    from lcplm.embed import cached_mean_embeddings, crop_sequences

    if source.featurize is not None:
        # the same residues the encoders see, so a crop does not favour the baseline
        return source.featurize(names, crop_sequences(sequences, names, e.max_length, e.long_policy))
    return cached_mean_embeddings(source.key, source.factory, names, sequences, cache_dir=e.cache_dir,
                                  max_tokens=e.max_tokens, max_length=e.max_length, long_policy=e.long_policy,
                                  device=e.device, half=e.half, progress=e.progress, log=log)
