"""Hugging Face ESM-2 (``EsmForMaskedLM``) -> :class:`~lcplm.models.sparse_transformer.SparseGenomeLM`.

ESM-2's 33 token rows become our rows 0..32 (the ids are the same). Our own rows are
initialised from ESM-2's: ``<sep>`` (37, between the proteins of a genome) copies ``<eos>``,
which ends a protein in ESM-2; the graph tokens and the padding rows are zero. The output
bias of those rows is zero. ESM-1b style models (learned absolute positions, an embedding
LayerNorm) are refused: the genome model has rotary positions only.

``python -m lcplm.models.convert_esm HF_DIR OUT.ckpt`` converts a local Hugging Face
directory (``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``) into an lcplm
checkpoint that ``run.init_from`` and :func:`lcplm.train.checkpoint.load_model` read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

ESM_VOCAB = 33
_LAYER = "esm.encoder.layer.{i}."


def config_from_hf(hf_config: Any, **overrides: Any) -> SparseTransformerConfig:
    """Our config from a transformers ``EsmConfig`` (or its ``config.json`` as a dict)."""
    c = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    if c.get("position_embedding_type", "absolute") != "rotary":
        raise UserError(
            f"ESM config has position_embedding_type={c.get('position_embedding_type')!r}: "
            "only ESM-2 (rotary) models convert to the genome transformer"
        )
    if c.get("emb_layer_norm_before"):
        raise UserError("ESM config has emb_layer_norm_before=true (ESM-1b): only ESM-2 models convert")
    if c.get("vocab_size") != ESM_VOCAB:
        raise UserError(f"ESM config has vocab_size={c.get('vocab_size')}, expected ESM-2's {ESM_VOCAB}")
    if c.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"ESM config has hidden_act={c.get('hidden_act')!r}, expected 'gelu'")
    cfg = SparseTransformerConfig(
        num_layers=int(c["num_hidden_layers"]),
        hidden=int(c["hidden_size"]),
        heads=int(c["num_attention_heads"]),
        ffn=int(c["intermediate_size"]),
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        token_dropout=bool(c.get("token_dropout", True)),
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-5)),
    )
    return dataclasses.replace(cfg, **overrides)


def _extend_rows(esm_rows: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(33, ...) -> (vocab_size, ...): ESM rows kept, <sep> from <eos>, other new rows zero."""
    out = esm_rows.new_zeros((vocab_size,) + tuple(esm_rows.shape[1:]))
    out[:ESM_VOCAB] = esm_rows
    if esm_rows.dim() > 1:
        out[tokenizer.SEP] = esm_rows[tokenizer.EOS]
    return out


def convert_state_dict(hf_state: Mapping[str, torch.Tensor], cfg: SparseTransformerConfig) -> dict[str, torch.Tensor]:
    """Map an ``EsmForMaskedLM`` state dict onto :class:`SparseGenomeLM`'s parameter names."""
    s = {k: v for k, v in hf_state.items()}

    def take(key: str) -> torch.Tensor:
        if key not in s:
            raise UserError(f"ESM state dict has no {key!r} (not an EsmForMaskedLM checkpoint?)")
        return s[key]

    emb = take("esm.embeddings.word_embeddings.weight")
    if emb.shape != (ESM_VOCAB, cfg.hidden):
        raise UserError(f"ESM embedding is {tuple(emb.shape)}, expected ({ESM_VOCAB}, {cfg.hidden})")
    out: dict[str, torch.Tensor] = {"embed.weight": _extend_rows(emb, cfg.vocab_size)}
    for i in range(cfg.num_layers):
        p = _LAYER.format(i=i)
        out[f"layers.{i}.attn_norm.weight"] = take(p + "attention.LayerNorm.weight")
        out[f"layers.{i}.attn_norm.bias"] = take(p + "attention.LayerNorm.bias")
        for part in ("weight", "bias"):
            out[f"layers.{i}.qkv.{part}"] = torch.cat(
                [take(p + f"attention.self.{n}.{part}") for n in ("query", "key", "value")]
            )
            out[f"layers.{i}.out.{part}"] = take(p + f"attention.output.dense.{part}")
            out[f"layers.{i}.ffn_norm.{part}"] = take(p + f"LayerNorm.{part}")
            out[f"layers.{i}.fc1.{part}"] = take(p + f"intermediate.dense.{part}")
            out[f"layers.{i}.fc2.{part}"] = take(p + f"output.dense.{part}")
    if _LAYER.format(i=cfg.num_layers) + "LayerNorm.weight" in s:
        raise UserError(f"ESM state dict has more than the configured {cfg.num_layers} layers")
    for part in ("weight", "bias"):
        out[f"final_norm.{part}"] = take(f"esm.encoder.emb_layer_norm_after.{part}")
        out[f"head_dense.{part}"] = take(f"lm_head.dense.{part}")
        out[f"head_norm.{part}"] = take(f"lm_head.layer_norm.{part}")
    decoder = s.get("lm_head.decoder.weight", emb if cfg.tie_embeddings else None)
    if decoder is None:
        raise UserError("ESM state dict has no 'lm_head.decoder.weight' and the config does not tie it")
    out["decoder.weight"] = out["embed.weight"] if cfg.tie_embeddings else _extend_rows(decoder, cfg.vocab_size)
    out["head_bias"] = _extend_rows(take("lm_head.bias"), cfg.vocab_size)
    return out


def from_hf_esm(hf_model: Any, **overrides: Any) -> SparseGenomeLM:
    """A :class:`SparseGenomeLM` with the weights of a transformers ``EsmForMaskedLM``."""
    cfg = config_from_hf(hf_model.config, **overrides)
    model = SparseGenomeLM(cfg)
    model.load_state_dict(convert_state_dict(hf_model.state_dict(), cfg))
    return model.eval()


def load_hf_directory(path: str | Path, **overrides: Any) -> SparseGenomeLM:
    """Convert a local Hugging Face ESM-2 directory (no transformers import, no download)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: no config.json (expected a Hugging Face ESM-2 model directory)")
    try:
        hf_cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{path}: neither model.safetensors nor pytorch_model.bin found")
    cfg = config_from_hf(hf_cfg, **overrides)
    model = SparseGenomeLM(cfg)
    model.load_state_dict(convert_state_dict(state, cfg))
    return model.eval()


def save_lcplm_checkpoint(model: SparseGenomeLM, path: str | Path) -> None:
    """Write ``model`` as an lcplm checkpoint (what ``run.init_from`` and ``load_model`` read)."""
    from lcplm.config import PretrainConfig, to_dict

    # data as a plain {"name": ...}: models never import the (Lightning) datamodules
    config = to_dict(PretrainConfig(model=model.cfg, data={"name": "genome"}))
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lcplm.models.convert_esm",
        description="Convert a local Hugging Face ESM-2 directory into an lcplm genome-transformer checkpoint.",
    )
    p.add_argument("hf_dir", help="directory with config.json and model.safetensors / pytorch_model.bin")
    p.add_argument("out", help="output .ckpt (use it as run.init_from)")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "reference", "dense"])
    ns = p.parse_args(argv)
    model = load_hf_directory(ns.hf_dir, attention_backend=ns.attention_backend)
    save_lcplm_checkpoint(model, ns.out)
    n = sum(t.numel() for t in model.parameters())
    print(f"wrote {ns.out}: {model.cfg.num_layers} layers, hidden {model.cfg.hidden}, {n / 1e6:.1f}M parameters")
    return 0


if __name__ == "__main__":
    from lcplm.errors import run_module_main

    run_module_main(main, "convert_esm")
