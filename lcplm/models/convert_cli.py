"""``lcplm convert``: move weights between LC-PLM / ESM-2 releases and lcplm checkpoints.

    lcplm convert lcplm-to-ours LCPLM_DIR OUT.ckpt      LC-PLM (HF layout) -> lcplm checkpoint
    lcplm convert ours-to-lcplm RUN.ckpt OUT_DIR        lcplm BiMamba-S -> LC-PLM (HF layout)
    lcplm convert esm-to-genome HF_DIR OUT.ckpt         ESM-2 -> genome transformer (convert_esm)
    lcplm convert esm-to-esm2 HF_DIR OUT.ckpt           ESM-2 -> lcplm ESM-2 (model.name esm2)
    lcplm convert ours-to-esm RUN.ckpt OUT_DIR          lcplm esm2 / genome transformer -> ESM-2 (HF layout)

An lcplm checkpoint is what ``run.init_from`` and ``lcplm.train.checkpoint.load_model`` read.
"""

from __future__ import annotations

import argparse

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import convert


def _n_params(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"


def lcplm_to_ours(ns: argparse.Namespace) -> int:
    model = convert.load_lcplm(ns.src, vocab_size=ns.vocab_size, scan_backend=ns.scan_backend)
    convert.save_checkpoint(model, ns.out)
    print(f"wrote {ns.out}: BiMamba-S d_model {model.cfg.d_model}, {model.cfg.n_layer} layers, {_n_params(model)}")
    return 0


def ours_to_lcplm(ns: argparse.Namespace) -> int:
    # the checkpoint contract lives with the trainer; imported here so lcplm.models stays below it
    from lcplm.models.bimamba import BiMambaLM
    from lcplm.train.checkpoint import load_model

    model, cfg = load_model(ns.src)
    if not isinstance(model, BiMambaLM):
        raise UserError(f"{ns.src}: model.name is {cfg.name!r}; only BiMamba-S ('bimamba') exports to LC-PLM's layout")
    target = convert.save_lcplm(
        model, ns.out, vocab_size=ns.vocab_size, prefix=ns.prefix, duplicate_tied=ns.duplicate_tied, safetensors=not ns.bin
    )
    print(f"wrote {ns.out}/config.json and {target.name}: {_n_params(model)}")
    return 0


def ours_to_esm(ns: argparse.Namespace) -> int:
    from lcplm.models.convert_esm import save_hf_directory
    from lcplm.models.sparse_transformer import ESM2StyleLM
    from lcplm.train.checkpoint import load_model

    model, cfg = load_model(ns.src)
    if not isinstance(model, ESM2StyleLM):
        raise UserError(f"{ns.src}: model.name is {cfg.name!r}; only 'esm2' and 'sparse_transformer' export to ESM-2's layout")
    target = save_hf_directory(model, ns.out)
    print(f"wrote {ns.out}/config.json and {target.name} (EsmForMaskedLM): {_n_params(model)}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("esm-to-genome", "esm-to-esm2"):
        from lcplm.models import convert_esm

        target = "sparse_transformer" if argv[0] == "esm-to-genome" else "esm2"
        return convert_esm.main(argv[1:], model=target, prog=f"lcplm convert {argv[0]}")
    p = argparse.ArgumentParser(
        prog="lcplm convert", description="Move weights between LC-PLM / ESM-2 releases and lcplm checkpoints."
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{lcplm-to-ours,ours-to-lcplm,esm-to-genome,esm-to-esm2,ours-to-esm}"
    )
    a = sub.add_parser("lcplm-to-ours", help="LC-PLM Hugging Face directory -> lcplm checkpoint")
    a.add_argument("src", help="directory with config.json and model.safetensors / pytorch_model.bin")
    a.add_argument("out", help="output .ckpt (usable as run.init_from)")
    a.add_argument("--vocab-size", type=int, default=tokenizer.PADDED_VOCAB_SIZE,
                   help="embedding rows to keep (default %(default)s; LC-PLM has 128, ids >= 38 are unused)")
    a.add_argument("--scan-backend", default="auto", help="model.scan_backend stored in the checkpoint")
    a.set_defaults(func=lcplm_to_ours)
    b = sub.add_parser("ours-to-lcplm", help="lcplm BiMamba-S checkpoint -> LC-PLM Hugging Face directory")
    b.add_argument("src", help="lcplm checkpoint (e.g. runs/tiny/checkpoints/last.ckpt)")
    b.add_argument("out", help="output directory (config.json + model.safetensors)")
    b.add_argument("--vocab-size", type=int, default=convert.LCPLM_VOCAB, help="embedding rows (default %(default)s)")
    b.add_argument("--prefix", default=convert.LCPLM_PREFIX,
                   help="backbone key prefix (default %(default)r: LcPlmForMaskedLM; 'backbone.' for LcPlm)")
    b.add_argument("--duplicate-tied", action="store_true",
                   help="also write mamba_rev's tied in/out projections (by default stored once, as released)")
    b.add_argument("--bin", action="store_true", help="write pytorch_model.bin instead of model.safetensors")
    b.set_defaults(func=ours_to_lcplm)
    sub.add_parser("esm-to-genome", help="ESM-2 Hugging Face directory -> genome transformer (see its --help)")
    sub.add_parser("esm-to-esm2", help="ESM-2 Hugging Face directory -> lcplm esm2 checkpoint (see its --help)")
    c = sub.add_parser("ours-to-esm", help="lcplm esm2 / genome-transformer checkpoint -> ESM-2 Hugging Face directory")
    c.add_argument("src", help="lcplm checkpoint (e.g. runs/tiny_esm2/checkpoints/last.ckpt)")
    c.add_argument("out", help="output directory (config.json, model.safetensors, tokenizer files)")
    c.set_defaults(func=ours_to_esm)
    ns = p.parse_args(argv)
    return ns.func(ns)
