"""Hugging Face ESM-2 (``EsmForMaskedLM``) <-> lcplm's ESM-2-architecture models.

Both :class:`~lcplm.models.esm2.ESM2LM` (``model.name: esm2``, one protein per row) and
:class:`~lcplm.models.sparse_transformer.SparseGenomeLM` (``sparse_transformer``, genome
windows) have the parameter names of :class:`~lcplm.models.sparse_transformer.ESM2StyleLM`,
so one mapping serves both::

    esm.embeddings.word_embeddings.weight               (33, d)  -> embed.weight (rows 0..32)
    esm.encoder.layer.{i}.attention.LayerNorm.*                  -> layers.{i}.attn_norm.*
    esm.encoder.layer.{i}.attention.self.{query,key,value}.*     -> layers.{i}.qkv.* (stacked q, k, v)
    esm.encoder.layer.{i}.attention.output.dense.*               -> layers.{i}.out.*
    esm.encoder.layer.{i}.LayerNorm.*                            -> layers.{i}.ffn_norm.*
    esm.encoder.layer.{i}.intermediate.dense.*                   -> layers.{i}.fc1.*
    esm.encoder.layer.{i}.output.dense.*                         -> layers.{i}.fc2.*
    esm.encoder.emb_layer_norm_after.*                           -> final_norm.*
    lm_head.dense.* / lm_head.layer_norm.*                       -> head_dense.* / head_norm.*
    lm_head.decoder.weight (tied unless tie_word_embeddings=false) -> decoder.weight
    lm_head.bias                                        (33,)    -> head_bias (rows 0..32)

Vocabulary: ESM-2's 33 token rows are our rows 0..32 (the ids are the same). ``esm2`` models
have exactly those 33 rows by default, so HF -> ours -> HF and ours -> HF -> ours are exact.
Tables with more rows (the genome model's 40) get lcplm's own rows on import: ``<sep>`` (37)
copies ``<eos>``, the graph tokens and padding rows are zero, their output bias zero; export
drops them. ESM-1b style models (learned absolute positions, an embedding LayerNorm) are
refused: these models have rotary positions only.

Export (:func:`save_hf_directory`) writes a directory that ``transformers.EsmForMaskedLM.
from_pretrained`` and ``AutoTokenizer`` read without remote code: ``config.json``,
``model.safetensors`` (the rotary ``inv_freq`` buffers Hugging Face stores; ESM's contact head,
which lcplm does not train, as zeros), and ESM-2's ``vocab.txt`` + tokenizer config, through
:func:`lcplm.models.io.write_model_directory` (``lcplm export SRC DIR --format hf-esm``, ``lcplm
convert to-esm``).

Import: :func:`lcplm.models.io.from_pretrained` reads a Hugging Face ESM-2 directory
(``model_type: esm``) through :func:`from_esm` (``name=esm2`` for the stage-1 model, the genome
transformer by default), so ``run.init_from``, ``lcplm embed`` and the evaluations take it as it
is; ``lcplm convert from-esm [--model esm2|sparse_transformer]`` writes it as an lcplm model directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Union

import torch

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models.esm2 import ESM2LM, ESM2Config
from lcplm.models.io import error_line, write_model_directory
from lcplm.models.sparse_transformer import ESM2StyleLM, SparseGenomeLM, SparseTransformerConfig

ESM_VOCAB = 33
HF_ROTARY_BASE = 10000.0  # transformers' EsmRotaryEmbedding has no base option
_LAYER = "esm.encoder.layer.{i}."
TARGETS = {"sparse_transformer": (SparseTransformerConfig, SparseGenomeLM), "esm2": (ESM2Config, ESM2LM)}
ESMConfig = Union[SparseTransformerConfig, ESM2Config]


# ----------------------------------------------------------------------------- Hugging Face -> ours


def config_from_hf(hf_config: Any, model: str = "sparse_transformer", **overrides: Any) -> ESMConfig:
    """Our config (``model``: sparse_transformer or esm2) from a transformers ``EsmConfig``
    (or its ``config.json`` as a dict)."""
    c = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    if model not in TARGETS:
        raise UserError(f"ESM conversion target must be one of {sorted(TARGETS)}, got {model!r}")
    if c.get("position_embedding_type", "absolute") != "rotary":
        raise UserError(
            f"ESM config has position_embedding_type={c.get('position_embedding_type')!r}: "
            "only ESM-2 (rotary) models convert"
        )
    if c.get("emb_layer_norm_before"):
        raise UserError("ESM config has emb_layer_norm_before=true (ESM-1b): only ESM-2 models convert")
    if c.get("vocab_size") != ESM_VOCAB:
        raise UserError(f"ESM config has vocab_size={c.get('vocab_size')}, expected ESM-2's {ESM_VOCAB}")
    if c.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"ESM config has hidden_act={c.get('hidden_act')!r}, expected 'gelu'")
    cfg_cls = TARGETS[model][0]
    cfg = cfg_cls(
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
    if esm_rows.dim() > 1 and vocab_size > tokenizer.SEP:
        out[tokenizer.SEP] = esm_rows[tokenizer.EOS]
    return out


def convert_state_dict(hf_state: Mapping[str, torch.Tensor], cfg: ESMConfig) -> dict[str, torch.Tensor]:
    """Map an ``EsmForMaskedLM`` state dict onto :class:`ESM2StyleLM`'s parameter names."""
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


def _build(hf_config: Any, state: Mapping[str, torch.Tensor], model: str, overrides: dict) -> ESM2StyleLM:
    cfg = config_from_hf(hf_config, model, **overrides)
    net = TARGETS[model][1](cfg)
    net.load_state_dict(convert_state_dict(state, cfg))
    return net.eval()


def from_hf_esm(hf_model: Any, model: str = "sparse_transformer", **overrides: Any) -> ESM2StyleLM:
    """Our ``model`` (sparse_transformer or esm2) with the weights of a transformers ``EsmForMaskedLM``."""
    return _build(hf_model.config, hf_model.state_dict(), model, overrides)


def from_esm(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str, **overrides: Any) -> tuple[ESMConfig, dict[str, torch.Tensor]]:
    """Our ``(config, state dict)`` from an ESM-2 directory's config.json and weights (the reader
    of ``model_type: esm`` in :func:`lcplm.models.io.read_pretrained`). ``name`` picks the target
    (``sparse_transformer`` by default, or ``esm2``); other overrides are config fields."""
    model = overrides.pop("name", "sparse_transformer")
    if model not in TARGETS:
        raise UserError(f"{where}: ESM-2 weights convert to {sorted(TARGETS)} models, not {model!r}")
    fields = {f.name for f in dataclasses.fields(TARGETS[model][0])}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"{where}: {unknown[0]!r} is not a setting of {model!r} models")
    try:
        cfg = config_from_hf(config, model, **overrides)
        return cfg, convert_state_dict(state, cfg)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}/config.json: not an ESM-2 config ({error_line(e)})") from None


# ----------------------------------------------------------------------------- ours -> Hugging Face


def _require_hf_expressible(cfg: ESMConfig) -> None:
    if cfg.rotary_base != HF_ROTARY_BASE:
        raise UserError(
            f"model.rotary_base is {cfg.rotary_base}: Hugging Face ESM-2 has rotary base {HF_ROTARY_BASE:g} only"
        )


def config_to_hf(cfg: ESMConfig) -> dict:
    """``config.json`` of ``EsmForMaskedLM`` for our model (transformers reads it without remote code)."""
    _require_hf_expressible(cfg)
    return {
        "architectures": ["EsmForMaskedLM"],
        "model_type": "esm",
        "vocab_size": ESM_VOCAB,
        "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.ffn,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026,  # ESM-2's value; rotary positions do not use it
        "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.layer_norm_eps,
        "position_embedding_type": "rotary",
        "emb_layer_norm_before": False,
        "token_dropout": cfg.token_dropout,
        "mask_token_id": tokenizer.MASK,
        "pad_token_id": tokenizer.PAD,
        "tie_word_embeddings": cfg.tie_embeddings,
        "is_folding_model": False,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg: ESMConfig) -> dict[str, torch.Tensor]:
    """Our state dict in ``EsmForMaskedLM``'s names (rows 0..32; the inverse of :func:`convert_state_dict`)."""
    _require_hf_expressible(cfg)

    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise UserError(f"lcplm checkpoint: missing weight {key!r} (not an ESM-2-architecture model?)")
        return state[key].detach().clone().contiguous()

    d, head_dim = cfg.hidden, cfg.hidden // cfg.heads
    inv_freq = 1.0 / (HF_ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    out: dict[str, torch.Tensor] = {"esm.embeddings.word_embeddings.weight": get("embed.weight")[:ESM_VOCAB].clone()}
    for i in range(cfg.num_layers):
        p, o = _LAYER.format(i=i), f"layers.{i}."
        out[p + "attention.LayerNorm.weight"] = get(o + "attn_norm.weight")
        out[p + "attention.LayerNorm.bias"] = get(o + "attn_norm.bias")
        for part in ("weight", "bias"):
            for n, t in zip(("query", "key", "value"), get(o + f"qkv.{part}").split(d)):
                out[p + f"attention.self.{n}.{part}"] = t.clone()
            out[p + f"attention.output.dense.{part}"] = get(o + f"out.{part}")
            out[p + f"LayerNorm.{part}"] = get(o + f"ffn_norm.{part}")
            out[p + f"intermediate.dense.{part}"] = get(o + f"fc1.{part}")
            out[p + f"output.dense.{part}"] = get(o + f"fc2.{part}")
        out[p + "attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    for part in ("weight", "bias"):
        out[f"esm.encoder.emb_layer_norm_after.{part}"] = get(f"final_norm.{part}")
        out[f"lm_head.dense.{part}"] = get(f"head_dense.{part}")
        out[f"lm_head.layer_norm.{part}"] = get(f"head_norm.{part}")
    # ESM's contact head (logistic regression over attention maps) is not trained by lcplm
    out["esm.contact_head.regression.weight"] = torch.zeros(1, cfg.num_layers * cfg.heads)
    out["esm.contact_head.regression.bias"] = torch.zeros(1)
    out["lm_head.decoder.weight"] = get("decoder.weight")[:ESM_VOCAB].clone()
    out["lm_head.bias"] = get("head_bias")[:ESM_VOCAB].clone()
    return out


def save_hf_directory(model: ESM2StyleLM, out_dir: str | Path) -> Path:
    """Write ``model`` as a Hugging Face ESM-2 directory (config, safetensors weights, tokenizer
    files); returns the directory."""
    if not isinstance(model, ESM2StyleLM):
        raise UserError(
            f"a {model.cfg.name!r} model; only 'esm2' and 'sparse_transformer' export to ESM-2's layout"
        )
    files = {
        "vocab.txt": "\n".join(tokenizer.ESM_TOKENS) + "\n",
        "tokenizer_config.json": json.dumps({"tokenizer_class": "EsmTokenizer", "model_max_length": 1024}, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(
            {"cls_token": "<cls>", "eos_token": "<eos>", "mask_token": "<mask>", "pad_token": "<pad>", "unk_token": "<unk>"},
            indent=2,
        ) + "\n",
    }
    state = state_dict_to_hf(model.state_dict(), model.cfg)
    return write_model_directory(out_dir, config_to_hf(model.cfg), state, files=files)
