"""Hugging Face ESM-2 (``EsmForMaskedLM``) <-> :class:`~lcplm.models.sparse_transformer.SparseGenomeLM`.

ESM-2's 33 token rows become our rows 0..32 (the ids are the same). Our own rows are
initialised from ESM-2's: ``<sep>`` (37, between the proteins of a genome) copies ``<eos>``,
which ends a protein in ESM-2; the graph tokens and the padding rows are zero. The output
bias of those rows is zero. ESM-1b style models (learned absolute positions, an embedding
LayerNorm) are refused: the genome model has rotary positions only.

Reading: ``lcplm.models.io.from_pretrained(HF_DIR)`` (``model_type: esm``) calls
:func:`from_esm`. Writing: :func:`save_esm` (``lcplm export CKPT DIR --format hf-esm``) keeps rows
0..32 (our extra rows have no ESM-2 id and are dropped) and writes no contact-head training
(its regression weights are zero), so ESM-2 -> ours -> ESM-2 is exact for every weight ESM-2's
masked LM uses, and ours -> ESM-2 -> ours is exact except the rows ESM-2 lacks (rebuilt as above).
On one protein both compute the same logits; Hugging Face's ESM has no protein-pair attention mask.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models.io import error_line, write_model_directory
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


def from_esm(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str, **overrides: Any) -> tuple[SparseTransformerConfig, dict[str, torch.Tensor]]:
    """Our ``(SparseTransformerConfig, state dict)`` from an ESM-2 directory's config.json and
    weights (the reader of ``model_type: esm`` in :func:`lcplm.models.io.read_pretrained`)."""
    name = overrides.pop("name", "sparse_transformer")
    if name != "sparse_transformer":
        raise UserError(f"{where}: ESM-2 weights convert to 'sparse_transformer' models, not {name!r}")
    fields = {f.name for f in dataclasses.fields(SparseTransformerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"{where}: {unknown[0]!r} is not a setting of 'sparse_transformer' models")
    try:
        cfg = config_from_hf(config, **overrides)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}/config.json: not an ESM-2 config ({error_line(e)})") from None
    try:
        return cfg, convert_state_dict(state, cfg)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def config_to_hf(cfg: SparseTransformerConfig) -> dict:
    """transformers' ``EsmConfig`` (as config.json) of a genome model."""
    if cfg.rotary_base != 10000.0:
        raise UserError(f"model.rotary_base is {cfg.rotary_base}; Hugging Face's ESM has it fixed at 10000")
    return {
        "architectures": ["EsmForMaskedLM"],
        "model_type": "esm",
        "vocab_size": ESM_VOCAB,
        "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,  # ours drops out the residual branches, as this does
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026,  # unused with rotary positions (ESM-2's value)
        "position_embedding_type": "rotary",
        "layer_norm_eps": cfg.layer_norm_eps,
        "emb_layer_norm_before": False,
        "token_dropout": cfg.token_dropout,
        "mask_token_id": tokenizer.MASK,
        "pad_token_id": tokenizer.PAD,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "is_folding_model": False,
        "torch_dtype": "float32",
    }


def to_hf_state_dict(state: Mapping[str, torch.Tensor], cfg: SparseTransformerConfig) -> dict[str, torch.Tensor]:
    """Our state dict in ``EsmForMaskedLM``'s names (rows 0..32; the inverse of :func:`convert_state_dict`)."""
    head_dim = cfg.hidden // cfg.heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = {"esm.embeddings.word_embeddings.weight": state["embed.weight"][:ESM_VOCAB]}
    for i in range(cfg.num_layers):
        p, o = _LAYER.format(i=i), f"layers.{i}."
        out[p + "attention.LayerNorm.weight"] = state[o + "attn_norm.weight"]
        out[p + "attention.LayerNorm.bias"] = state[o + "attn_norm.bias"]
        for part in ("weight", "bias"):
            for n, chunk in zip(("query", "key", "value"), state[o + f"qkv.{part}"].chunk(3)):
                out[p + f"attention.self.{n}.{part}"] = chunk
            out[p + f"attention.output.dense.{part}"] = state[o + f"out.{part}"]
            out[p + f"LayerNorm.{part}"] = state[o + f"ffn_norm.{part}"]
            out[p + f"intermediate.dense.{part}"] = state[o + f"fc1.{part}"]
            out[p + f"output.dense.{part}"] = state[o + f"fc2.{part}"]
        out[p + "attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    for part in ("weight", "bias"):
        out[f"esm.encoder.emb_layer_norm_after.{part}"] = state[f"final_norm.{part}"]
        out[f"lm_head.dense.{part}"] = state[f"head_dense.{part}"]
        out[f"lm_head.layer_norm.{part}"] = state[f"head_norm.{part}"]
    if not cfg.tie_embeddings:
        out["lm_head.decoder.weight"] = state["decoder.weight"][:ESM_VOCAB]
    out["lm_head.bias"] = state["head_bias"][:ESM_VOCAB]
    # ESM's contact head (logistic regression over all heads' attention maps): lcplm trains none
    out["esm.contact_head.regression.weight"] = torch.zeros(1, cfg.num_layers * cfg.heads)
    out["esm.contact_head.regression.bias"] = torch.zeros(1)
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_esm(model: SparseGenomeLM, out_dir: str | Path) -> Path:
    """Write ``model`` as a Hugging Face ESM-2 directory (``EsmForMaskedLM``, no remote code)."""
    if not isinstance(model, SparseGenomeLM):
        raise UserError(f"only 'sparse_transformer' models export to ESM-2's layout, not {type(model).__name__}")
    state = to_hf_state_dict(model.state_dict(), model.cfg)
    return write_model_directory(out_dir, config_to_hf(model.cfg), state)
