"""Generators of valid and malformed inputs, each deciding its own expected outcome.

The oracles never call lcplm: each generator builds the data first (records, residues, CDS,
edges, config values), renders it with harmless variations (line wrapping, CRLF, blank lines,
case, compression, comments, headers), optionally breaks it in one known way, and computes
from what it built what a correct reader must return, or which record, line or key the
one-line error must name. The rules the oracles encode are the documented ones: the residue
rules of ``lcplm.data.tokenizer``, the edge rule of ``lcplm.data.edge_lists``, the GenBank
translation rules and the ViralEmbed header rule of ``lcplm.data.genomes``.
"""

from __future__ import annotations

import gzip
import io
import math
import random
import re
from collections import Counter

from fuzz_harness import Case, fuzz_format

# ----------------------------------------------------------------------------- shared pieces

ALPHABET = "LAGVSERTIDPKQNFYMHWCXBUZO"  # ESM-2's residue letters
UNK = "0123456789Jj"  # <unk> characters (plus '*' inside a sequence)
GAPS = "-."
SPACES_IN_LINE = " \t"
INVALID = (
    [bytes([b]) for b in range(0x00, 0x09)]
    + [bytes([b]) for b in range(0x0E, 0x20)]
    + [b"\x7f", b"\x85", b"\xa0", b"\xff", b"\xc3\xa9"]
    + [bytes([c]) for c in b"!\"#$%&'()+,/:;<=>?@[\\]^_`{|}~"]
)
SAFE_DESC = "abcdefghij KLMNOP 0123456789 =;:,/|()[]-_." + "éü中"


def compress(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """The bytes as plain text, gzip or BGZF (small blocks, so records straddle blocks)."""
    kind = rng.choice(["plain", "plain", "gzip", "bgzf"])
    if kind == "gzip":
        return gzip.compress(data, mtime=0), kind
    if kind == "bgzf":
        from Bio import bgzf

        class Kept(io.BytesIO):
            def close(self) -> None:  # BgzfWriter closes its file object; keep the bytes readable
                pass

        buf = Kept()
        w = bgzf.BgzfWriter(fileobj=buf, mode="wb")
        step = rng.choice([97, 500, 4096])
        for i in range(0, len(data), step):
            w.write(data[i : i + step])
            w.flush()
        w.close()  # writes the end-of-file block
        return buf.getvalue(), kind
    return data, kind


def residues(rng: random.Random, n: int) -> str:
    """n residue characters: mostly letters, some <unk> characters and gaps; at least one letter."""
    out = []
    for _ in range(n):
        r = rng.random()
        c = rng.choice(ALPHABET) if r < 0.9 else rng.choice(UNK + "*") if r < 0.96 else rng.choice(GAPS)
        out.append(c.lower() if rng.random() < 0.1 else c)
    if not any(c.isalpha() for c in out):
        out[rng.randrange(n)] = rng.choice(ALPHABET)
    if rng.random() < 0.2:
        out.append("*")  # a stop codon
    return "".join(out)


def token_count(seq: str) -> tuple[int, int]:
    """(tokens, <unk> tokens) of a whitespace-free sequence under the residue rules."""
    body = seq[:-1] if seq.endswith("*") else seq
    return len(body), sum(c in UNK or c == "*" for c in body)


def wrap(rng: random.Random, seq: str) -> list[str]:
    """Sequence lines, with harmless spaces and tabs sprinkled in."""
    width = rng.choice([len(seq) or 1, 60, 80, rng.randint(1, 70)])
    lines = [seq[i : i + width] for i in range(0, len(seq), width)] or [""]
    if rng.random() < 0.2:
        lines = ["".join(c + (rng.choice(SPACES_IN_LINE) if rng.random() < 0.05 else "") for c in line) for line in lines]
    return lines


class Lines:
    """Text built line by line, remembering each line's 1-based number."""

    def __init__(self, rng: random.Random, crlf: bool | None = None):
        self.rng = rng
        self.lines: list[bytes] = []
        self.newline = b"\r\n" if (crlf if crlf is not None else rng.random() < 0.2) else b"\n"

    def add(self, line: str | bytes) -> int:
        self.lines.append(line.encode() if isinstance(line, str) else line)
        return len(self.lines)

    def blanks(self, p: float = 0.15) -> None:
        while self.rng.random() < p:
            self.add(self.rng.choice(["", " ", "\t"]))

    def bytes(self) -> bytes:
        return b"".join(line + self.newline for line in self.lines)


# ----------------------------------------------------------------------------- FASTA


def _fasta_read(path: str, opts: dict):
    from lcplm.data.fasta import FastaCounts, FastaIndex, iter_fasta
    from lcplm.data.tokenizer import encode_residues

    out = []
    reader = "index" if opts["reader"] == "both" and opts.get("delivery") == "pipe" else opts["reader"]
    if reader in ("stream", "both"):
        counts = FastaCounts()
        recs = [(r.id, r.description, r.sequence, len(encode_residues(r.sequence, r.id))) for r in iter_fasta(path, counts)]
        out.append((recs, counts.unk, counts.unk_records))
    if reader in ("index", "both"):
        idx = FastaIndex(path)
        recs = []
        for i in range(len(idx)):
            r = idx[i]
            if len(encode_residues(r.sequence, r.id)) != int(idx.lengths[i]) or idx.ids[i] != r.id:
                return ("index length or id disagrees with its record", i)
            recs.append((r.id, r.description, r.sequence, int(idx.lengths[i])))
        out.append((recs, idx.counts.unk, idx.counts.unk_records))
    if len(out) == 2 and out[0] != out[1]:
        return ("streaming and index disagree", out)
    return out[0]


_STATS = re.compile(r": ([\d,]+) records, ([\d,]+) residues(?:; ([\d,]+) characters read as <unk> .* in ([\d,]+) records)?")


def _fasta_parse_stats(stdout: str):
    m = _STATS.search(stdout.splitlines()[0])
    return tuple(int((g or "0").replace(",", "")) for g in m.groups())


def _fasta_cli_view(expect):
    recs, unk, unk_records = expect
    return (len(recs), sum(r[3] for r in recs), unk, unk_records)


def fasta_records(rng: random.Random) -> list[tuple[str, str, str]]:
    """(id, description, sequence) records with varied ids, descriptions and lengths."""
    n = rng.choice([1, 2, 3, 5, 8, 20])
    out = []
    for i in range(n):
        rid = rng.choice([f"r{i}", f"sp|P{i:05d}|X_{i}", f"4932.Y{i}C", f"g{i}_{rng.randrange(99)}"])
        desc = "".join(rng.choice(SAFE_DESC) for _ in range(rng.choice([0, 0, 5, 30]))).strip()
        length = rng.choice([1, 2, 3, 10, 60, 61, 150, rng.randint(1, 700)])
        out.append((rid, desc, residues(rng, length)))
    return out


def render_fasta(rng: random.Random, records, lines: Lines | None = None) -> tuple[Lines, list[dict]]:
    """FASTA text; per record its header line number and sequence line numbers."""
    lines = lines or Lines(rng)
    where = []
    lines.blanks()
    for rid, desc, seq in records:
        h = lines.add(f">{rid}" + (f" {desc}" if desc else ""))
        seq_lines = [lines.add(chunk) for chunk in wrap(rng, seq)] if seq else []
        where.append({"header": h, "seq": seq_lines})
        lines.blanks()
    return lines, where


@fuzz_format(
    "fasta",
    read=_fasta_read,
    cli=lambda path, opts: ["data", "stats", path],
    cli_view=_fasta_cli_view,
    parse_cli=_fasta_parse_stats,
)
def fasta_case(rng: random.Random) -> Case:
    records = fasta_records(rng)
    opts = {"reader": rng.choice(["stream", "index", "both"])}
    defect = rng.choice(["none"] * 5 + ["invalid", "no_sequence", "no_letter", "no_id", "before_header", "empty", "cut"])
    note = f"{len(records)} records, defect {defect}"
    error = None
    if defect == "no_sequence":
        k = rng.randrange(len(records))
        records[k] = (records[k][0], records[k][1], rng.choice(["", "*"]))
    elif defect == "no_letter":
        k = rng.randrange(len(records))
        records[k] = (records[k][0], records[k][1], "".join(rng.choice("0123456789-.*") for _ in range(rng.randint(1, 9))) + "1")
    lines, where = render_fasta(rng, records)
    if defect in ("no_sequence", "no_letter"):
        rid, h = records[k][0], where[k]["header"]
        error = (f"record {rid!r} (line {h})", "has no sequence" if defect == "no_sequence" else "no amino-acid letter")
    elif defect == "invalid":
        k = rng.randrange(len(records))
        ln = rng.choice(where[k]["seq"])
        line = lines.lines[ln - 1]
        pos = rng.randint(1, len(line)) if line else 0
        if not line:
            pos = 0
        bad = rng.choice(INVALID)
        if pos == 0 and bad == b">":
            bad = b"@"
        lines.lines[ln - 1] = line[:pos] + bad + line[pos:]
        error = (f"record {records[k][0]!r}, line {ln}", "is not a residue")
        note += f" ({bad!r} in record {k})"
    elif defect == "no_id":
        k = rng.randrange(len(records))
        h = where[k]["header"]
        lines.lines[h - 1] = rng.choice([b">", b">  ", b">\t"])
        error = (f"line {h}: header line has no id",)
    elif defect == "before_header":
        stray = Lines(rng, crlf=lines.newline == b"\r\n")
        stray.blanks(0.3)
        ln = stray.add(rng.choice(ALPHABET) * rng.randint(1, 30))
        lines.lines = stray.lines + lines.lines
        error = (f"line {ln}: sequence data before the first '>'",)
    data = lines.bytes()
    if defect == "empty":
        data = rng.choice([b"", b"\n", b"  \n\n", b"\r\n"])
        error = ("empty file",)
    data, kind = compress(rng, data)
    if defect == "cut":
        if kind == "plain":
            data, kind = gzip.compress(lines.bytes(), mtime=0), "gzip"
        data = data[: rng.randint(2, len(data) - 1)]
        error = ("corrupt or truncated",)
    if error is None:
        expect_recs = []
        unk_total = unk_records = 0
        for rid, desc, seq in records:
            tokens, unk = token_count(seq)
            expect_recs.append((rid, desc, seq, tokens))
            unk_total += unk
            unk_records += unk > 0
        return Case({"in.fa" + (".gz" if kind != "plain" else ""): data}, (expect_recs, unk_total, unk_records),
                    options=opts, note=note + f", {kind}")
    return Case({"in.fa" + (".gz" if kind != "plain" else ""): data}, error=error, options=opts, note=note + f", {kind}")


# ----------------------------------------------------------------------------- id<TAB>sequence tables


def _seqtable_read(path: str, opts: dict):
    from lcplm.data.ppi_graph import read_sequence_table

    t = read_sequence_table(path)
    return dict(t), t.unk, t.unk_records


@fuzz_format("seqtable", read=_seqtable_read)
def seqtable_case(rng: random.Random) -> Case:
    records = list({rid: (rid, "", seq) for rid, _, seq in fasta_records(rng)}.values())  # ids unique
    as_fasta = rng.random() < 0.4
    defect = rng.choice(["none"] * 4 + ["fields", "invalid", "duplicate"])
    error = None
    if as_fasta:
        if defect == "fields":
            defect = "none"
        if defect == "duplicate" and len(records) > 1:
            records.append((records[0][0], "", residues(rng, 5)))
        lines, where = render_fasta(rng, records)
        if defect == "duplicate" and len(records) > 1:
            error = (f":{where[-1]['header']}: duplicate sequence id {records[0][0]!r}",)
        elif defect == "invalid":
            k = rng.randrange(len(records))
            ln = rng.choice(where[k]["seq"])
            lines.lines[ln - 1] += rng.choice([b"\x1c", b"@", b"\xa0"])
            error = (f"record {records[k][0]!r}, line {ln}", "is not a residue")
        name = "seqs.fa"
    else:
        lines = Lines(rng)
        rows = []
        if rng.random() < 0.3:
            lines.add("# id\tsequence")
        for rid, _, seq in records:
            lines.blanks(0.1)
            rows.append(lines.add(rid + rng.choice(["\t", " ", "  "]) + seq))
        if defect == "fields":
            k = rng.randrange(len(rows))
            lines.lines[rows[k] - 1] += rng.choice([b"\textra", b" X"])
            error = (f":{rows[k]}: expected 'id<TAB>sequence' (2 fields), got 3",)
        elif defect == "invalid":
            k = rng.randrange(len(rows))
            lines.lines[rows[k] - 1] += rng.choice([b"\x1c", b"@", b"\xa0", b"\x85"])
            error = (f":{rows[k]}: record {records[k][0]!r}", "is not a residue")
        elif defect == "duplicate" and len(records) > 1:
            ln = lines.add(f"{records[0][0]}\tMKV")
            error = (f":{ln}: duplicate sequence id {records[0][0]!r}",)
        name = "seqs.tsv"
    data, kind = compress(rng, lines.bytes())
    name += ".gz" if kind != "plain" else ""
    note = f"{len(records)} sequences as {'FASTA' if as_fasta else 'table'}, defect {defect}, {kind}"
    if error is not None:
        return Case({name: data}, error=error, note=note)
    table = {rid: seq for rid, _, seq in records}
    unk = [token_count(seq)[1] for seq in table.values()]
    return Case({name: data}, (table, sum(unk), sum(u > 0 for u in unk)), note=note)


# ----------------------------------------------------------------------------- edge lists

MODES = ("activation", "binding", "catalysis", "expression", "inhibition", "ptmod", "reaction")
ACTION_HEADER = "item_id_a\titem_id_b\tmode\taction\tis_directional\ta_is_acting\tscore"


def _edges_read(path: str, opts: dict):
    from lcplm.data.edge_lists import read_edges

    e = read_edges(path, opts["format"], opts["min_score"], opts["modes"])
    return e.pair_set(), e.n_lines, e.n_rejected, int((e.src == e.dst).sum())


def _edges_cli(path: str, opts: dict) -> list[str]:
    argv = ["data", "stats", "--format", opts["format"], path]
    if opts["min_score"] is not None:
        argv += ["--min-score", repr(float(opts["min_score"]))]
    if opts["modes"] is not None:
        argv += ["--modes", ",".join(opts["modes"])]
    return argv


_EDGE_STATS = re.compile(r": ([\d,]+) lines, [\d,]+ edges \(([\d,]+) undirected pairs, ([\d,]+) self-loops\); ([\d,]+) failed")


def _edges_parse(stdout: str):
    m = _EDGE_STATS.search(stdout.splitlines()[0])
    lines, pairs, loops, rejected = (int(g.replace(",", "")) for g in m.groups())
    return lines, pairs, rejected, loops


def _edges_view(expect):
    pairs, n_lines, n_rejected, loops = expect
    return n_lines, len(pairs), n_rejected, loops


def _ids(rng: random.Random) -> list[str]:
    n = rng.choice([2, 3, 6, 20])
    style = rng.choice(["P{}", "9606.ENSP{:011d}", "Y{}C", "sp|Q{}|X"])
    return [style.format(i) for i in range(n)]


def _score_text(rng: random.Random, fmt: str) -> tuple[str, float]:
    if fmt != "pairs":
        v = rng.randint(0, 999)
        return str(v), float(v)
    text = rng.choice(["0", "1", "1.0", "0.0", f"{rng.random():.3f}", "0.5", "0.49", "1e-1", "2", "-1", "inf", "700"])
    return text, float(text)


def edge_lines(rng: random.Random, fmt: str, opts: dict, defect: str):
    """(Lines, expected observation or None, error fragments or None, note)."""
    ids = _ids(rng)
    lines = Lines(rng)
    thr = opts["min_score"] if opts["min_score"] is not None else (0.5 if fmt == "pairs" else 700.0)
    wanted = set(opts["modes"]) if opts["modes"] is not None else set(MODES)
    sep = "\t" if fmt == "string_actions" else rng.choice(["\t", " ", "  "])
    n_cols = 3
    has_header = False
    if fmt == "string" and defect != "no_header":
        extra = rng.choice([[], ["neighborhood", "fusion"]])
        n_cols = 3 + len(extra)
        lines.add(" ".join(["protein1", "protein2", *extra, "combined_score"]))
        has_header = True
    elif fmt == "string_actions" and defect != "no_header":
        lines.add(ACTION_HEADER)
        has_header = True
    elif fmt == "pairs" and rng.random() < 0.3:
        lines.add(sep.join(["protein1", "protein2", "label"]))
        has_header = True
    rows: dict[int, list[str]] = {}  # line number -> fields of each data line
    pairs, n_lines, n_rejected, loops = set(), 0, 0, 0
    for _ in range(rng.choice([1, 2, 5, 30])):
        if rng.random() < 0.1:
            lines.add("# a comment " + rng.choice(["", "1 2 3"]))
        lines.blanks(0.05)
        a = rng.choice(ids)
        b = a if rng.random() < 0.1 else rng.choice(ids)
        score_text, score = _score_text(rng, fmt)
        mode = rng.choice(MODES)
        if fmt == "pairs":
            if rng.random() < 0.3:
                row, score = [a, b], None
            else:
                row = [a, b, score_text]
        elif fmt == "string":
            row = [a, b] + [str(rng.randint(0, 999)) for _ in range(n_cols - 3)] + [score_text]
        else:
            row = [a, b, mode, rng.choice(["", "activation", "inhibition"]), rng.choice("tf"), rng.choice("tf"), score_text]
        rows[lines.add(sep.join(row))] = row
        n_lines += 1
        if (score is None or score >= thr) and (fmt != "string_actions" or mode in wanted):
            if a != b:
                pairs.add(frozenset((a, b)))
            else:
                loops += 1
        else:
            n_rejected += 1
    numbers = sorted(rows)

    def rewrite(ln: int, row: list[str]) -> None:
        lines.lines[ln - 1] = sep.join(row).encode()

    error = None
    # pairs: a first data line whose third column is not a number is a header, not an error
    candidates = numbers if (fmt != "pairs" or has_header) else numbers[1:]
    if defect == "fields":
        ln = rng.choice(numbers)
        row = rows[ln]
        rewrite(ln, row[:1] if rng.random() < 0.5 else row + ["x", "y"])
        error = ({"pairs": f":{ln}: expected 'id1 id2 [label or score]'", "string": f":{ln}: expected {n_cols} fields",
                  "string_actions": f":{ln}: expected 7 tab-separated fields"}[fmt],)
    elif defect in ("not_a_number", "nan") and candidates:
        ln = rng.choice(candidates)
        row = rows[ln] + ([""] if len(rows[ln]) == 2 else [])
        row[-1] = "high" if defect == "not_a_number" else rng.choice(["nan", "NaN"])
        rewrite(ln, row)
        what = {"pairs": "label or score", "string": "combined_score", "string_actions": "score"}[fmt]
        error = (f":{ln}: {what} 'high' is not a number",) if defect == "not_a_number" else (f":{ln}: {what} is NaN",)
    elif defect == "unknown_mode" and fmt == "string_actions":
        ln = rng.choice(numbers)
        row = list(rows[ln])
        row[2] = rng.choice(["bonding", "Binding", "", "phosphorylation"])
        rewrite(ln, row)
        error = (f":{ln}: unknown mode {row[2]!r}",)
    elif defect == "no_header" and fmt in ("string", "string_actions"):
        error = (f":{numbers[0]}: expected STRING's",)
    elif defect == "empty_id" and fmt == "string_actions":
        ln = numbers[0]
        row = list(rows[ln])
        row[rng.randrange(2)] = ""
        rewrite(ln, row)
        error = (f":{ln}: empty protein id",)
    elif defect == "comments_only":
        lines = Lines(rng)
        lines.add("# nothing here")
        error = ({"pairs": "edge list has no data lines", "string": "links file is empty",
                  "string_actions": "actions file is empty"}[fmt],)
    elif defect == "empty":
        lines = Lines(rng)
        error = ("empty file",)
    expect = None if error else (pairs, n_lines, n_rejected, loops)
    return lines, expect, error, f"{fmt}, {n_lines} lines, threshold {thr}, modes {opts['modes']}, defect {defect}"


def _edge_options(rng: random.Random, fmt: str) -> dict:
    scores = [None, None, 0.0, 0.3, 0.5, 1.0, 700.0] if fmt == "pairs" else [None, None, 0.0, 400.0, 700.0, 900.0]
    modes = None
    if fmt == "string_actions" and rng.random() < 0.5:
        modes = sorted(rng.sample(MODES, rng.randint(1, 3)))
    return {"format": fmt, "min_score": rng.choice(scores), "modes": modes}


@fuzz_format("edges", read=_edges_read, cli=_edges_cli, cli_view=_edges_view, parse_cli=_edges_parse)
def edges_case(rng: random.Random) -> Case:
    fmt = rng.choice(["pairs", "string", "string_actions"])
    opts = _edge_options(rng, fmt)
    defect = rng.choice(["none"] * 5 + ["fields", "not_a_number", "nan", "unknown_mode", "no_header", "empty_id",
                                        "comments_only", "empty", "bad_option"])
    if defect == "bad_option":
        if fmt == "string_actions":
            opts["modes"] = ["binding", rng.choice(["bind", "Binding", "post-translational"])]
            error = ("unknown mode",)
        else:
            opts["modes"] = ["binding"]
            error = ("only applies to edge_format string_actions",)
        lines, *_ = edge_lines(rng, fmt, {**opts, "modes": None}, "none")
        return Case({"edges.txt": lines.bytes()}, error=error, options=opts, names_input=False, options_error=True,
                    note=f"{fmt}, bad option")
    lines, expect, error, note = edge_lines(rng, fmt, opts, defect)
    data, kind = compress(rng, lines.bytes()) if defect != "empty" else (b"", "plain")
    name = "edges.txt" + (".gz" if kind != "plain" else "")
    return Case({name: data}, expect, error, opts, note + f", {kind}")


def _actions_read(path: str, opts: dict):
    from lcplm.data.edge_lists import MODES as READER_MODES, read_string_actions

    t = read_string_actions(path, opts["modes"], opts["min_score"])
    assert tuple(READER_MODES) == MODES
    got = {}
    for (a, b), row, score in zip(t.pair_ids(), t.labels.tolist(), t.scores.tolist()):
        got[(a, b)] = (frozenset(m for m, on in zip(MODES, row) if on), score)
    return got, t.n_lines, t.n_self_loops


@fuzz_format("actions_table", read=_actions_read)
def actions_table_case(rng: random.Random) -> Case:
    ids = _ids(rng)
    modes = sorted(rng.sample(MODES, rng.randint(1, 7))) if rng.random() < 0.5 else None
    min_score = rng.choice([0.0, 0.0, 300.0, 700.0])
    wanted = set(modes) if modes else set(MODES)
    lines = Lines(rng)
    lines.add(ACTION_HEADER)
    expect: dict = {}
    n_lines = loops = 0
    rows = []
    for _ in range(rng.choice([1, 3, 10, 40])):
        a = rng.choice(ids)
        b = a if rng.random() < 0.08 else rng.choice(ids)
        mode, score = rng.choice(MODES), rng.randint(0, 999)
        rows.append(lines.add("\t".join([a, b, mode, "", rng.choice("tf"), rng.choice("tf"), str(score)])))
        n_lines += 1
        if score >= min_score and mode in wanted:
            if a == b:
                loops += 1
                continue
            key = tuple(sorted((a, b)))
            got_modes, best = expect.get(key, (frozenset(), -math.inf))
            expect[key] = (got_modes | {mode}, max(best, float(score)))
    defect = rng.choice(["none"] * 4 + ["unknown_mode", "fields"])
    opts = {"modes": modes, "min_score": min_score}
    note = f"{n_lines} action lines, modes {modes}, min_score {min_score}, defect {defect}"
    if defect == "unknown_mode":
        ln = rng.choice(rows)
        row = lines.lines[ln - 1].decode().split("\t")
        row[2] = "bonding"
        lines.lines[ln - 1] = "\t".join(row).encode()
        return Case({"actions.tsv": lines.bytes()}, error=(f":{ln}: unknown mode 'bonding'",), options=opts, note=note)
    if defect == "fields":
        ln = rng.choice(rows)
        lines.lines[ln - 1] += b"\textra"
        return Case({"actions.tsv": lines.bytes()}, error=(f":{ln}: expected 7 tab-separated fields",), options=opts, note=note)
    data, kind = compress(rng, lines.bytes())
    return Case({"actions.tsv" + (".gz" if kind != "plain" else ""): data}, (expect, n_lines, loops), options=opts, note=note)


# ----------------------------------------------------------------------------- GenBank

BASES = "TCAG"
CODE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"  # NCBI tables 1 and 11
STARTS = ("TTG", "CTG", "ATT", "ATC", "ATA", "ATG", "GTG")  # table 11's start codons
STOPS = ("TAA", "TAG", "TGA")
SENSE = [a + b + c for a in BASES for b in BASES for c in BASES if a + b + c not in STOPS]
NOT_START = [c for c in SENSE if c not in STARTS]


def codon_aa(codon: str) -> str:
    i = {b: k for k, b in enumerate(BASES)}
    return CODE[16 * i[codon[0]] + 4 * i[codon[1]] + i[codon[2]]]


def translate(dna: str) -> str:
    return "".join(codon_aa(dna[i : i + 3]) for i in range(0, len(dna) - len(dna) % 3, 3))


def revcomp(dna: str) -> str:
    return dna[::-1].translate(str.maketrans("ACGT", "TGCA"))


def _cds(rng: random.Random, kind: str) -> tuple[str, dict, object]:
    """(coding strand DNA, qualifiers, expected: protein str, ('skip', reason), or ('partial', protein))."""
    body = [rng.choice(SENSE) for _ in range(rng.randint(0, 12))]
    start, stop = rng.choice(STARTS), rng.choice(STOPS)
    if kind == "complete":
        return start + "".join(body) + stop, {}, "M" + "".join(codon_aa(c) for c in body)
    if kind == "bad_length":
        return start + "".join(body) + stop + rng.choice(["A", "CG"]), {}, ("skip", "length not a multiple of 3")
    if kind == "bad_start":
        return rng.choice(NOT_START) + "".join(body) + stop, {}, ("skip", "no start codon")
    if kind == "no_stop":
        return start + "".join(body) + rng.choice(SENSE), {}, ("skip", "no stop codon")
    if kind == "inner_stop":
        k = rng.randint(0, len(body))
        return start + "".join(body[:k]) + rng.choice(STOPS) + "".join(body[k:]) + stop, {}, ("skip", "internal stop codon")
    if kind == "pseudo":
        return start + "".join(body) + stop, {"pseudo": None}, ("skip", "pseudo without /translation")
    if kind == "partial":
        dna = "".join(rng.choice("ACGT") for _ in range(rng.randint(1, 40)))
        cs = rng.randint(1, 3)
        protein = translate(dna[cs - 1 :])
        protein = protein[:-1] if protein.endswith("*") else protein
        quals = {"codon_start": str(cs)}
        if not any(c.isalpha() for c in protein):
            return dna, quals, ("skip", "partial CDS without a sense codon")
        return dna, quals, ("partial", protein)
    # kind == "translation": any DNA, the protein is given
    protein = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 80))) + rng.choice(["", "*"])
    dna = "".join(rng.choice("ACGT") for _ in range(rng.randint(3, 30)))
    return dna, {"translation": protein}, protein[:-1] if protein.endswith("*") else protein


def _qualifier_lines(key: str, value) -> list[str]:
    pad = " " * 21
    if value is None:
        return [f"{pad}/{key}"]
    if key == "codon_start":
        return [f"{pad}/{key}={value}"]
    text = f'/{key}="{value}"'
    return [pad + text[i : i + 58] for i in range(0, len(text), 58)]


def render_genbank(rng: random.Random, records: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """GenBank text; per record (start offset, ORIGIN offset, end offset after '//\\n')."""
    out, spans = [], []
    pos = 0
    for rec in records:
        seq = rec["seq"]
        lines = [
            f"LOCUS       {rec['id']:<16} {rec.get('locus_len', len(seq)):>11} bp    DNA     linear   PHG 01-JAN-2020",
            "DEFINITION  fuzz genome.",
            f"ACCESSION   {rec['id']}",
            f"VERSION     {rec['id']}",
            "FEATURES             Location/Qualifiers",
            f"     source          1..{len(seq)}",
        ]
        for cds in rec["cds"]:
            lines.append(f"     CDS             {cds['location']}")
            for key, value in cds["quals"].items():
                lines += _qualifier_lines(key, value)
        head = "\n".join(lines) + "\n"
        origin = ["ORIGIN"]
        for i in range(0, len(seq), 60):
            chunk = seq[i : i + 60].lower()
            origin.append(f"{i + 1:>9} " + " ".join(chunk[j : j + 10] for j in range(0, len(chunk), 10)))
        text = head + "\n".join(origin) + "\n//\n"
        spans.append((pos, pos + len(head), pos + len(text)))
        out.append(text)
        pos += len(text)
    return "".join(out), spans


def _genbank_read(path: str, opts: dict):
    from lcplm.data.genomes import GenomeReadSummary, read_genbank

    summary = GenomeReadSummary()
    genomes = read_genbank(path, summary)
    return [(g.genome_id, [(p.protein_id, p.sequence, p.partial) for p in g.proteins]) for g in genomes], dict(summary.skipped)


_GENOME_LINE = re.compile(r"genomes: ([\d,]+) from .*? \(([\d,]+) proteins(?:; (\d+) from partial CDS \(flagged\))?"
                          r"(?:; (\d+) CDS skipped: ([^;)]*))?")


def _genome_parse(stdout: str):
    m = _GENOME_LINE.search(stdout.splitlines()[0])
    g, p, partial, _, reasons = m.groups()
    skipped = {}
    for item in (reasons or "").split(", ") if reasons else []:
        n, why = item.split(" ", 1)
        skipped[why] = int(n)
    return int(g.replace(",", "")), int(p.replace(",", "")), int(partial or 0), skipped


def _genbank_view(expect):
    genomes, skipped = expect
    proteins = [p for _, ps in genomes for p in ps]
    return len(genomes), len(proteins), sum(p[2] for p in proteins), skipped


@fuzz_format(
    "genbank",
    read=_genbank_read,
    cli=lambda path, opts: ["data", "stats", "--format", "genbank", path],
    cli_view=_genbank_view,
    parse_cli=_genome_parse,
)
def genbank_case(rng: random.Random) -> Case:
    kinds = ["complete"] * 4 + ["translation"] * 3 + ["partial", "bad_length", "bad_start", "no_stop", "inner_stop", "pseudo"]
    records, expected, skipped = [], [], Counter()
    for r in range(rng.choice([1, 1, 2, 3])):
        gid = f"G{r}X{rng.randrange(1000)}"
        seq, cds, proteins = "", [], []
        for n in range(1, rng.randint(1, 6) + 1):
            kind = rng.choice(kinds)
            coding, quals, want = _cds(rng, kind)
            filler = "".join(rng.choice("ACGT") for _ in range(rng.randint(0, 15)))
            minus = rng.random() < 0.4
            a = len(seq) + len(filler) + 1
            seq += filler + (revcomp(coding) if minus else coding)
            b = len(seq)
            partial = kind == "partial" or (kind == "translation" and rng.random() < 0.2)
            loc = f"{a}..{b}"
            if partial:
                loc = rng.choice([f"<{a}..{b}", f"{a}..>{b}"])
            location = f"complement({loc})" if minus else loc
            tag = f"{gid}_L{n}" if rng.random() < 0.8 else None
            if tag:
                quals = {"locus_tag": tag, **quals}
            if rng.random() < 0.3:
                quals["product"] = rng.choice(["hypothetical protein", "DNA polymerase, family A", "tail fiber (gp37)"])
            cds.append({"location": location, "quals": quals, "pid": tag or f"{gid}_CDS_{n:04d}", "kind": kind})
            if isinstance(want, tuple) and want[0] == "skip":
                skipped[want[1]] += 1
            else:
                protein = want[1] if isinstance(want, tuple) else want
                proteins.append((cds[-1]["pid"], protein.upper(), partial))
        seq += "".join(rng.choice("ACGT") for _ in range(rng.randint(0, 20)))
        records.append({"id": gid, "seq": seq, "cds": cds})
        expected.append((gid, proteins))
    defect = rng.choice(["none"] * 4 + ["cut", "locus_len", "beyond", "bad_translation", "empty"])
    note = f"{len(records)} records, {sum(len(r['cds']) for r in records)} CDS, defect {defect}"
    broken: tuple[int, tuple] | None = None  # (record, fragments): the defect's error, raised while reading that record
    k = rng.randrange(len(records))
    if defect == "locus_len":
        records[k]["locus_len"] = len(records[k]["seq"]) + rng.randint(1, 50)
        broken = (k, (f"record {records[k]['id']!r} is truncated or damaged",))
    elif defect == "beyond":
        c = rng.choice(records[k]["cds"])
        end = len(records[k]["seq"]) + rng.randint(1, 30)
        c["location"] = f"complement(1..{end})" if rng.random() < 0.5 else f"1..{end}"
        broken = (k, (f"record {records[k]['id']!r}, CDS ", "beyond the record's"))
    elif defect == "bad_translation":
        c = rng.choice(records[k]["cds"])
        c["quals"]["translation"] = "MK" + rng.choice("@!%&#$^") + "V"
        c["quals"].pop("pseudo", None)
        broken = (k, ("is not a residue",))
    text, spans = render_genbank(rng, records)
    data = text.encode()
    if defect == "cut":
        boundaries = {end for _, _, end in spans}
        cut = rng.randint(1, len(data) - 1)
        while cut in boundaries or cut + 1 in boundaries:
            cut = rng.randint(1, len(data) - 1)
        k = next(i for i, (start, _, end) in enumerate(spans) if start <= cut < end)
        data = data[:cut]
        in_sequence = cut > spans[k][1] + len("ORIGIN\n")
        broken = (k, (f"record {records[k]['id']!r}",) if in_sequence else ())
        note += f" at byte {cut} (record {k}, {'sequence' if in_sequence else 'header or features'})"
    error = None
    if defect == "empty":
        data, error = b"", ("empty file",)
    else:
        for i, (gid, proteins) in enumerate(expected):  # the first problem in file order
            if broken is not None and broken[0] == i:
                error = broken[1]
                break
            if not proteins:
                error = (f"record {gid!r} has no CDS with a protein",)
                break
    data, kind = compress(rng, data) if data else (data, "plain")
    name = "genome.gbk" + (".gz" if kind != "plain" else "")
    if error is not None:
        return Case({name: data}, error=error, note=note + f", {kind}")
    return Case({name: data}, (expected, dict(skipped)), note=note + f", {kind}")


# ----------------------------------------------------------------------------- ViralEmbed


def _viralembed_read(path: str, opts: dict):
    from lcplm.data.genomes import read_viralembed

    return [(g.genome_id, [(p.protein_id, p.sequence) for p in g.proteins]) for g in read_viralembed(path)]


def _viralembed_view(expect):
    return len(expect), sum(len(ps) for _, ps in expect), 0, {}


def _suffix_split(tokens: list[str], total: int):
    """The oracle's own reading of 'NAME_L1_..._Ln': the shortest all-numeric suffix summing to total."""
    s = 0
    for k in range(1, len(tokens)):
        t = tokens[-k]
        if not t.isdigit() or int(t) == 0:
            return None
        s += int(t)
        if s == total:
            return "_".join(tokens[:-k]), [int(x) for x in tokens[-k:]]
        if s > total:
            return None
    return None


@fuzz_format(
    "viralembed",
    read=_viralembed_read,
    cli=lambda path, opts: ["data", "stats", "--format", "viralembed", path],
    cli_view=_viralembed_view,
    parse_cli=_genome_parse,
)
def viralembed_case(rng: random.Random) -> Case:
    records, expected = [], []
    defect = rng.choice(["none"] * 4 + ["sum", "token", "no_sequence"])
    broken = rng.randrange(4)
    error = None
    for g in range(rng.randint(1, 4)):
        prots = [residues(rng, rng.randint(1, 40)).rstrip("*").replace("*", "X") for _ in range(rng.randint(1, 6))]
        lengths = [len(p) for p in prots]
        style = rng.choice(["prots", "species"])
        if style == "prots":
            name = f"ENA_AB{rng.randrange(10**6):06d}_1_{rng.randrange(9999)}_to_ENA_{g}"
        else:
            name = rng.choice([f"Some.virus{g}", f"Phage.{g}.{rng.randrange(99)}", f"Sewage.virus-{g}{rng.randrange(99)}",
                               f"Virus{g}_{rng.randrange(1, 99)}"])
        header_lengths = list(lengths)
        if defect == "sum" and g == broken:
            header_lengths[rng.randrange(len(header_lengths))] += rng.randint(1, 5)
        tail = "_".join(map(str, header_lengths))
        if defect == "token" and g == broken:
            tail += "_x"
            style = "prots"
        header = f"{name}_prots_{tail}_" if style == "prots" else f"{name}_{tail}" + rng.choice(["", "_"])
        seq = "".join(prots) + rng.choice(["", "*"])
        if defect == "no_sequence" and g == broken:
            seq = ""
        records.append((header, "", seq))
        total = sum(lengths)
        if seq == "":
            error = error or (f"record {header!r}", "has no sequence")
            continue
        if style == "prots":
            ok = (name, header_lengths) if sum(header_lengths) == total and "_x" not in tail else None
        else:
            ok = _suffix_split(header.rstrip("_").split("_"), total)
        if ok is None:
            error = error or (f"record {header!r} (#{g + 1})",)
            continue
        gid, ls = ok
        bounds = [0]
        for n in ls:
            bounds.append(bounds[-1] + n)
        body = "".join(prots).upper()
        expected.append((gid, [(f"{gid}_p{k + 1}", body[bounds[k] : bounds[k + 1]]) for k in range(len(ls))]))
    lines, _ = render_fasta(rng, records)
    data, kind = compress(rng, lines.bytes())
    name = "genomes.faa" + (".gz" if kind != "plain" else "")
    note = f"{len(records)} genomes, defect {defect}, {kind}"
    if error is not None:
        return Case({name: data}, error=error, note=note)
    return Case({name: data}, expected, note=note)


# ----------------------------------------------------------------------------- experiment configs


def _config_read(path: str, opts: dict):
    from lcplm.config import load_config

    cfg = load_config(path)
    return cfg.data.name, {k: getattr(cfg.data, k) for k in opts["keys"]}


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


@fuzz_format(
    "config",
    read=_config_read,
    cli=lambda path, opts: ["pretrain", path] if opts.get("invalid") else None,
    pipes=False,  # lcplm.config reads a config from a regular file only
    warmup=lambda: [__import__(m) for m in ("lcplm.train.run", "lcplm.data.datamodules.fasta",
                                            "lcplm.data.datamodules.ppi_walks", "lcplm.data.datamodules.genome")],
)
def config_case(rng: random.Random) -> Case:
    name = rng.choice(["fasta", "ppi_walks", "genome"])
    if name == "fasta":
        values = {"path": "x.fa", "val_fraction": rng.choice([0.0, 0.1]), "max_length": rng.choice([64, 1024]),
                  "pack": rng.choice([True, False]), "mask_prob": 0.15}
        values["max_tokens"] = values["max_length"] * rng.choice([1, 4])
        bad = [("max_length", 2, "data.max_length must be >= 3"), ("mask_prob", 0.0, "data.mask_prob must be in (0, 1]"),
               ("val_fraction", 1.0, "data.val_fraction must be in [0, 1)")]
    elif name == "ppi_walks":
        fmt = rng.choice(["pairs", "string", "string_actions"])
        values = {"edges": "e.tsv", "sequences": "s.tsv", "edge_format": fmt,
                  "min_score": rng.choice([None, 0.5, 700.0]), "context_len": 256, "max_protein_len": 100,
                  "batch_size": rng.choice([1, 4]), "p_neg": rng.choice([0.0, 0.2])}
        if fmt == "string_actions":
            values["modes"] = rng.choice([None, ["binding"], ["activation", "ptmod"]])
        bad = [("p_neg", 1.5, "data.p_neg must be in [0, 1]"), ("batch_size", 0, "data.batch_size must be >= 1"),
               ("edge_format", "csv", "data.edge_format must be one of"),
               ("modes", ["bind"], "unknown mode" if fmt == "string_actions" else "data.modes only applies")]
    else:
        values = {"genbank": ["a.gbk"], "viralembed": rng.choice([[], ["v.faa"]]), "max_tokens": rng.choice([512, 2048]),
                  "batch_size": rng.choice([1, 2])}
        bad = []
    defect = rng.choice(["none"] * 3 + ["unknown_key", "wrong_type", "bad_value", "yaml", "bad_name"])
    if defect == "bad_value" and not bad:
        defect = "unknown_key"
    invalid = defect != "none"
    error, names_input = None, True
    data_name = name
    if defect == "unknown_key":
        key = rng.choice(["bogus_key", "min_scor", "edge_formats"])
        values[key] = 1
        error = (key,)
    elif defect == "wrong_type":
        key = rng.choice([k for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)])
        values[key] = "many"
        error = (key,)
    elif defect == "bad_value":
        key, value, message = rng.choice(bad)
        values[key] = value
        error, names_input = (message,), False  # the dataclass check names the key, not the file
    elif defect == "bad_name":
        data_name = rng.choice(["fastq", "ppi", "genomes"])
        error = ("'data.name' must be one of",)
    lines = ["# fuzz experiment", "data:", f"  name: {data_name}"] + [f"  {k}: {_yaml(v)}" for k, v in values.items()]
    lines += ["run:", f"  name: fuzz{rng.randrange(100)}", f"  seed: {rng.randrange(10)}"]
    text = "\n".join(lines) + "\n"
    if defect == "yaml":
        text = text.replace("data:", rng.choice(["data: [", "data:\n  - x\n  y: {"]), 1)
        error = ("not valid YAML",)
    opts = {"keys": sorted(values), "invalid": invalid}
    note = f"data.name {data_name}, defect {defect}"
    if error is not None:
        return Case({"exp.yaml": text.encode()}, error=error, options=opts, names_input=names_input, note=note)
    return Case({"exp.yaml": text.encode()}, (name, values), options=opts, note=note)


# ----------------------------------------------------------------------------- DMS tables (ProteinGym)

AA20 = "ACDEFGHIKLMNPQRSTVWY"
DMS_DEFECTS = ["none"] * 6 + ["wt_letter", "past_end", "unknown_aa", "malformed", "score", "bin", "sequence",
                              "fields", "no_score_column", "header_only", "empty"]


def _dms_read(path: str, opts: dict):
    from lcplm.data.dms import read_dms

    a = read_dms(path)
    bins = None if a.score_bins is None else a.score_bins.tolist()
    return a.wild_type, a.mutants, [round(float(x), 6) for x in a.scores], bins


@fuzz_format("dms", read=_dms_read)
def dms_case(rng: random.Random) -> Case:
    """A ProteinGym table whose wild type is recovered from row 1 (always valid); at most one
    later row carries the defect, so the oracle knows the wild type and the failing line."""
    wt = "".join(rng.choice(AA20) for _ in range(rng.randint(5, 60)))
    with_bins = rng.random() < 0.5
    defect = rng.choice(DMS_DEFECTS)
    n_rows = rng.randint(2, 12)
    bad_row = rng.randrange(1, n_rows)
    rows, mutants, scores, bins = [], [], [], []
    error: tuple[str, ...] | None = None
    for r in range(n_rows):
        positions = sorted(rng.sample(range(len(wt)), rng.randint(1, min(3, len(wt)))))
        subs = [(wt[i], i + 1, rng.choice([a for a in AA20 if a != wt[i]])) for i in positions]
        text = ":".join(f"{a}{p}{b}" for a, p, b in subs)
        seq = list(wt)
        for a, p, b in subs:
            seq[p - 1] = b
        score = f"{rng.uniform(-5, 5):.4f}"
        b = str(rng.randint(0, 1))
        fields = [text, "".join(seq), score] + ([b] if with_bins else [])
        if r == bad_row and defect in ("wt_letter", "past_end", "unknown_aa", "malformed", "score", "bin", "sequence", "fields"):
            line = r + 2
            error = (f"line {line}",)
            if defect == "wt_letter":
                a, p, m = subs[0]
                wrong = rng.choice([x for x in AA20 if x not in (a, m)])
                fields[0] = ":".join([f"{wrong}{p}{m}"] + [f"{x}{y}{z}" for x, y, z in subs[1:]])
            elif defect == "past_end":
                fields[0] = f"A{len(wt) + rng.randint(1, 50)}C"
            elif defect == "unknown_aa":
                a, p, m = subs[0]
                fields[0] = f"{a}{p}{rng.choice('BJOUXZ')}"
            elif defect == "malformed":
                fields[0] = rng.choice([f"{subs[0][0]}{subs[0][1]}", "24", "A-C", "A24C::D3E", f"{subs[0][0]}{subs[0][1]}{subs[0][2]}:"])
            elif defect == "score":
                fields[2] = rng.choice(["", "nan", "abc", "inf", "1.2.3"])
            elif defect == "bin":
                if not with_bins:
                    error = None
                else:
                    fields[3] = rng.choice(["2", "-1", "0.5", "yes", ""])
            elif defect == "sequence":
                s = list(fields[1])
                i = rng.randrange(len(s))
                s[i] = rng.choice([x for x in AA20 if x != s[i]])
                fields[1] = "".join(s)
            elif defect == "fields":
                fields = fields + ["extra"] if rng.random() < 0.5 else fields[:-1]
        rows.append(fields)
        if error is None:
            mutants.append(text)
            scores.append(round(float(score), 6))
            bins.append(int(b))
    header = ["mutant", "mutated_sequence", "DMS_score"] + (["DMS_score_bin"] if with_bins else [])
    if defect == "no_score_column":
        header[2] = rng.choice(["score", "DMS", "dms_score"])
        error = ("no 'DMS_score' column",)
    text = ",".join(header) + "\n" + "".join(",".join(f) + "\n" for f in rows)
    if defect == "header_only":
        text = ",".join(header) + "\n"
        error = ("no variants",)
    if defect == "empty":
        text = ""
        error = ("empty",)
    data = text.encode()
    if rng.random() < 0.15 and data:
        data = b"\xef\xbb\xbf" + data  # a byte-order mark, as spreadsheet exports write
    data, kind = compress(rng, data) if data else (data, "plain")
    name = "assay.csv" + (".gz" if kind != "plain" else "")
    note = f"{n_rows} rows, defect {defect} (row {bad_row + 2}), bins {with_bins}, {kind}"
    if error is not None:
        return Case({name: data}, error=error, note=note)
    return Case({name: data}, (wt, mutants, scores, bins if with_bins else None), note=note)
