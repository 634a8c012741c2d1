"""``lcplm convert``: LC-PLM / ESM-2 releases to and from lcplm model directories.

    lcplm convert from-lcplm LCPLM_DIR OUT_DIR   LC-PLM (HF layout) -> lcplm BiMamba-S model directory
    lcplm convert to-lcplm SRC OUT_DIR           lcplm BiMamba-S -> LC-PLM (HF layout)
    lcplm convert from-esm ESM_DIR OUT_DIR       ESM-2 (HF) -> lcplm ESM-2 (--model esm2, the default)
                                                 or genome transformer (--model sparse_transformer)
    lcplm convert to-esm SRC OUT_DIR             lcplm esm2 / genome transformer -> ESM-2 (HF layout)

Shortcuts of ``lcplm export`` (same reader, same writers) with the options of each conversion.
An lcplm model directory is what ``run.init_from``, ``lcplm embed`` and the evaluations read
(:func:`lcplm.models.io.from_pretrained`), as they read a run's ``.ckpt``. The earlier names
(``lcplm-to-ours``, ``ours-to-lcplm``, ``esm-to-esm2``, ``esm-to-genome``, ``ours-to-esm``) were
dropped, not aliased: argparse answers one with the four above.
"""

from __future__ import annotations

import argparse

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import convert, io
from lcplm.models.export import describe

ESM_TARGETS = ("esm2", "sparse_transformer")


def from_lcplm(ns: argparse.Namespace) -> int:
    model = io.from_pretrained(ns.src, name="bimamba", vocab_size=ns.vocab_size, scan_backend=ns.scan_backend)
    io.save_pretrained(model, ns.out)
    print(f"wrote {ns.out}: BiMamba-S d_model {model.cfg.d_model}, {model.cfg.n_layer} layers, {describe(model)}")
    return 0


def to_lcplm(ns: argparse.Namespace) -> int:
    from lcplm.models.bimamba import BiMambaLM

    model = io.from_pretrained(ns.src)
    if not isinstance(model, BiMambaLM):
        raise UserError(f"{ns.src}: model.name is {model.cfg.name!r}; only BiMamba-S ('bimamba') exports to LC-PLM's layout")
    convert.save_lcplm(
        model, ns.out, vocab_size=ns.vocab_size, prefix=ns.prefix, duplicate_tied=ns.duplicate_tied, safetensors=not ns.bin
    )
    print(f"wrote {ns.out} in LC-PLM's layout: {describe(model)}")
    return 0


def from_esm(ns: argparse.Namespace) -> int:
    model = io.from_pretrained(ns.src, name=ns.model, attention_backend=ns.attention_backend)
    io.save_pretrained(model, ns.out)
    print(f"wrote {ns.out}: {model.cfg.name}, {model.cfg.num_layers} layers, hidden {model.cfg.hidden}, {describe(model)}")
    return 0


def to_esm(ns: argparse.Namespace) -> int:
    from lcplm.models.convert_esm import save_hf_directory

    model = io.from_pretrained(ns.src)
    save_hf_directory(model, ns.out)
    print(f"wrote {ns.out} in ESM-2's layout (EsmForMaskedLM, tokenizer files): {describe(model)}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm convert", description="LC-PLM / ESM-2 releases to and from lcplm model directories."
    )
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("from-lcplm", help="LC-PLM Hugging Face directory -> lcplm model directory")
    a.add_argument("src", help="directory with config.json and model.safetensors / pytorch_model.bin")
    a.add_argument("out", help="output model directory (usable as run.init_from)")
    a.add_argument("--vocab-size", type=int, default=tokenizer.PADDED_VOCAB_SIZE,
                   help="embedding rows to keep (default %(default)s; LC-PLM has 128, ids >= 38 are unused)")
    a.add_argument("--scan-backend", default="auto", help="model.scan_backend stored in the model's config")
    a.set_defaults(func=from_lcplm)
    b = sub.add_parser("to-lcplm", help="lcplm BiMamba-S (checkpoint or directory) -> LC-PLM Hugging Face directory")
    b.add_argument("src", help="lcplm checkpoint or model directory (e.g. runs/tiny/checkpoints/last.ckpt)")
    b.add_argument("out", help="output directory (config.json + model.safetensors + modeling code)")
    b.add_argument("--vocab-size", type=int, default=convert.LCPLM_VOCAB, help="embedding rows (default %(default)s)")
    b.add_argument("--prefix", default=convert.LCPLM_PREFIX,
                   help="backbone key prefix (default %(default)r: LcPlmForMaskedLM, with its modeling code; "
                        "'backbone.' for LcPlm, without)")
    b.add_argument("--duplicate-tied", action="store_true",
                   help="also write mamba_rev's tied in/out projections (by default stored once, as released)")
    b.add_argument("--bin", action="store_true", help="write pytorch_model.bin instead of model.safetensors")
    b.set_defaults(func=to_lcplm)
    c = sub.add_parser("from-esm", help="ESM-2 Hugging Face directory -> lcplm ESM-2 or genome transformer model directory")
    c.add_argument("src", help="directory with config.json and model.safetensors / pytorch_model.bin")
    c.add_argument("out", help="output model directory (use it as run.init_from)")
    c.add_argument("--model", default="esm2", choices=ESM_TARGETS,
                   help="model.name of the result: esm2 (default; ESM-2 as an lcplm model) or sparse_transformer "
                        "(the genome transformer, same weights)")
    c.add_argument("--attention-backend", default="auto", choices=["auto", "kernel", "flex", "dense", "reference"],
                   help="model.attention_backend stored in the model's config")
    c.set_defaults(func=from_esm)
    d = sub.add_parser("to-esm", help="lcplm esm2 / genome transformer -> ESM-2 Hugging Face directory")
    d.add_argument("src", help="lcplm checkpoint or model directory (e.g. runs/tiny_esm2/checkpoints/last.ckpt)")
    d.add_argument("out", help="output directory (config.json, model.safetensors, tokenizer files)")
    d.set_defaults(func=to_esm)
    ns = p.parse_args(argv)
    return ns.func(ns)
