"""Edge lists: the one reader of protein-pair files, with one rule for what counts as an edge.

Three formats (``edge_format``), plain or gzip, from a path, pipe, FIFO or ``-``:

``pairs``           any whitespace-separated ``id1 id2 [score|label]`` lines. A first data line
                    whose third column is not a number is a header.
``string``          STRING ``protein.links`` (``protein1 protein2 combined_score``, space
                    separated, a header line; the ``detailed``/``full`` variants work too: the
                    ``combined_score`` column is found by name).
``string_actions``  STRING ``protein.actions``: tab-separated ``item_id_a item_id_b mode action
                    is_directional a_is_acting score`` with that header line (columns found by
                    name; ``action`` may be empty). ``mode`` is one of :data:`MODES`; any other
                    mode is an error naming the line.

**The edge rule** (every format, every caller: stage-2 graphs, the genome ``ppi`` pair source,
the STRING link-prediction task): *a line is an edge when it has no score column or its score
is >= min_score, and (``string_actions`` only) its mode is among ``modes`` when modes are
given.* ``min_score`` defaults to :func:`default_min_score`: 700 for STRING files (STRING's
"high confidence") and 0.5 for ``pairs`` (0/1 labels keep the 1s; probabilities keep p >= 0.5).
A score that is not a number, or NaN, is an error naming the line. Self-loops and repeated
pairs pass the rule; the graph builders count and drop them.

:func:`read_string_actions` reads an actions file as per-pair multi-label mode sets
(:class:`ActionTable`), for interaction-type prediction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lcplm.data.inputs import DECOMPRESSION_ERRORS, open_text_input
from lcplm.errors import UserError

EDGE_FORMATS = ("pairs", "string", "string_actions")
# STRING's interaction modes (protein.actions files), in the column order of ActionTable.labels.
MODES = ("activation", "binding", "catalysis", "expression", "inhibition", "ptmod", "reaction")
ACTION_COLUMNS = ("item_id_a", "item_id_b", "mode", "action", "is_directional", "a_is_acting", "score")
STRING_MIN_SCORE = 700.0
PAIRS_MIN_SCORE = 0.5


def default_min_score(edge_format: str) -> float:
    """The ``min_score`` used when a config leaves it ``null``."""
    return PAIRS_MIN_SCORE if edge_format == "pairs" else STRING_MIN_SCORE


def check_edge_options(
    edge_format: str, min_score: Optional[float], modes: Optional[Sequence[str]], key: Optional[str]
) -> None:
    """Reject an unknown format, a NaN threshold or an unknown mode, naming the config key
    (``key`` is the section, e.g. ``data`` or ``data.pair_source``; None: command-line flags)."""

    def name(option: str) -> str:
        return f"{key}.{option}" if key else "--" + {"edge_format": "format"}.get(option, option).replace("_", "-")

    if edge_format not in EDGE_FORMATS:
        raise UserError(f"{name('edge_format')} must be one of {list(EDGE_FORMATS)}, got {edge_format!r}")
    if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or math.isnan(min_score)):
        raise UserError(f"{name('min_score')} must be a number or null, got {min_score!r}")
    if modes is not None:
        if edge_format != "string_actions":
            raise UserError(f"{name('modes')} only applies to edge_format string_actions (got {edge_format!r})")
        if isinstance(modes, str) or not isinstance(modes, Sequence) or not modes:
            raise UserError(f"{name('modes')} must be a non-empty list of STRING modes or null, got {modes!r}")
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise UserError(f"{name('modes')}: unknown mode(s) {unknown}; STRING's modes are {list(MODES)}")


def table_lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of the non-blank lines not starting with '#'."""
    for lineno, line in _raw_lines(path, what):
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            yield lineno, parts


def _raw_lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, str]]:
    inp, text = open_text_input(path, what)
    with inp:
        try:
            yield from enumerate(text, 1)
        except DECOMPRESSION_ERRORS as e:  # truncated or corrupt .gz
            raise UserError(f"{inp.name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None


@dataclass
class EdgeList:
    """Pairs of protein ids that pass the edge rule, before they meet a sequence table."""

    path: str
    names: list[str]  # id of each index used in src/dst
    src: np.ndarray  # (E,) int64 index into names
    dst: np.ndarray  # (E,) int64
    n_lines: int = 0  # data lines read
    n_rejected: int = 0  # lines that failed the rule (score below min_score, mode not selected)
    min_score: float = 0.0  # the threshold applied

    def pair_set(self) -> set[frozenset[str]]:
        """Undirected pairs of distinct ids."""
        return {frozenset((self.names[a], self.names[b])) for a, b in zip(self.src.tolist(), self.dst.tolist()) if a != b}


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {what} {text!r} is not a number") from None
    if math.isnan(value):
        raise UserError(f"{where}: {what} is NaN")
    return value


class _Builder:
    def __init__(self, path: str, min_score: float):
        self.path, self.min_score = path, min_score
        self.index: dict[str, int] = {}
        self.src: list[int] = []
        self.dst: list[int] = []
        self.n_lines = self.n_rejected = 0

    def add(self, a: str, b: str, keep: bool) -> None:
        self.n_lines += 1
        if not keep:
            self.n_rejected += 1
            return
        self.src.append(self.index.setdefault(a, len(self.index)))
        self.dst.append(self.index.setdefault(b, len(self.index)))

    def done(self) -> EdgeList:
        if self.n_lines == 0:
            raise UserError(f"{self.path}: edge list has no data lines")
        return EdgeList(self.path, list(self.index), np.asarray(self.src, np.int64), np.asarray(self.dst, np.int64),
                        self.n_lines, self.n_rejected, self.min_score)


def read_edges(
    path: str | os.PathLike,
    edge_format: str = "pairs",
    min_score: Optional[float] = None,
    modes: Optional[Sequence[str]] = None,
) -> EdgeList:
    """The edges of a file under the edge rule (module docstring); ``min_score=None`` is the
    format's default. Malformed lines are errors naming the file and line."""
    check_edge_options(edge_format, min_score, modes, "read_edges")
    threshold = default_min_score(edge_format) if min_score is None else float(min_score)
    if edge_format == "pairs":
        return _read_pairs(path, threshold)
    if edge_format == "string":
        return _read_string_links(path, threshold)
    b = _Builder(str(path), threshold)
    wanted = set(modes) if modes is not None else None
    for where, a, c, mode, score in _action_lines(path):
        b.add(a, c, score >= threshold and (wanted is None or mode in wanted))
    return b.done()


def read_string_links(path: str | os.PathLike, min_score: float = STRING_MIN_SCORE) -> EdgeList:
    """Edges of a STRING ``protein.links`` file (``combined_score >= min_score``)."""
    return read_edges(path, "string", min_score)


def _read_pairs(path, threshold: float) -> EdgeList:
    b = _Builder(str(path), threshold)
    first = True
    for lineno, parts in table_lines(path, "edge list"):
        where = f"{path}:{lineno}"
        if len(parts) not in (2, 3):
            raise UserError(f"{where}: expected 'id1 id2 [label or score]', got {len(parts)} fields")
        if len(parts) == 3:
            try:
                float(parts[2])
            except ValueError:
                if first:  # a header line such as 'protein1 protein2 label'
                    first = False
                    continue
            score = _number(parts[2], "label or score", where)
            keep = score >= threshold
        else:
            keep = True
        first = False
        b.add(parts[0], parts[1], keep)
    return b.done()


def _read_string_links(path, threshold: float) -> EdgeList:
    b = _Builder(str(path), threshold)
    score_col = n_cols = None
    for lineno, parts in table_lines(path, "STRING links"):
        where = f"{path}:{lineno}"
        if score_col is None:
            if "combined_score" not in parts:
                raise UserError(
                    f"{where}: expected STRING's header line naming 'combined_score' "
                    f"(e.g. 'protein1 protein2 combined_score'), got {' '.join(parts)[:80]!r}"
                )
            score_col, n_cols = parts.index("combined_score"), len(parts)
            if score_col < 2:
                raise UserError(f"{where}: 'combined_score' must come after the two protein columns")
            continue
        if len(parts) != n_cols:
            raise UserError(f"{where}: expected {n_cols} fields like the header, got {len(parts)}")
        b.add(parts[0], parts[1], _number(parts[score_col], "combined_score", where) >= threshold)
    if score_col is None:
        raise UserError(f"{path}: links file is empty (no header line)")
    return b.done()


def _action_lines(path) -> Iterator[tuple[str, str, str, str, float]]:
    """(where, item_id_a, item_id_b, mode, score) of every data line of a protein.actions file."""
    cols: Optional[dict[str, int]] = None
    n_cols = 0
    for lineno, line in _raw_lines(path, "STRING actions"):
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        fields = line.split("\t")
        if cols is None:
            names = [f.strip() for f in fields]
            missing = [c for c in ("item_id_a", "item_id_b", "mode", "score") if c not in names]
            if missing:
                raise UserError(
                    f"{where}: expected STRING's tab-separated actions header "
                    f"({' '.join(ACTION_COLUMNS)}), got {line[:80]!r}"
                )
            cols = {c: names.index(c) for c in ("item_id_a", "item_id_b", "mode", "score")}
            n_cols = len(names)
            continue
        if len(fields) != n_cols:
            raise UserError(f"{where}: expected {n_cols} tab-separated fields like the header, got {len(fields)}")
        a, b, mode = fields[cols["item_id_a"]].strip(), fields[cols["item_id_b"]].strip(), fields[cols["mode"]].strip()
        if not a or not b:
            raise UserError(f"{where}: empty protein id")
        if mode not in MODES:
            raise UserError(f"{where}: unknown mode {mode!r}; STRING's modes are {list(MODES)}")
        yield where, a, b, mode, _number(fields[cols["score"]].strip(), "score", where)
    if cols is None:
        raise UserError(f"{path}: actions file is empty (no header line)")


@dataclass
class ActionTable:
    """Per-pair interaction modes from a STRING ``protein.actions`` file.

    ``ids``: protein ids, sorted. ``pairs``: (N, 2) int64 indices into ``ids`` with
    ``pairs[k, 0] < pairs[k, 1]`` (unordered pairs, sorted; direction is not kept).
    ``labels``: (N, 7) bool, ``labels[k, m]`` true when a line joins pair k with mode
    ``MODES[m]`` (either direction) and passes ``min_score`` (and the ``modes`` filter: columns
    of modes not selected are all false). ``scores``: (N,) the highest score of the pair's
    lines. Self-loops are dropped (``n_self_loops``).
    """

    path: str
    ids: list[str]
    pairs: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    modes: tuple[str, ...] = MODES
    n_lines: int = 0
    n_rejected: int = 0
    n_self_loops: int = 0
    mode_counts: dict[str, int] = field(default_factory=dict)  # pairs per mode

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def pair_ids(self) -> list[tuple[str, str]]:
        return [(self.ids[a], self.ids[b]) for a, b in self.pairs.tolist()]


def read_string_actions(
    path: str | os.PathLike, modes: Optional[Sequence[str]] = None, min_score: float = 0.0
) -> ActionTable:
    """Multi-label mode sets per protein pair (:class:`ActionTable`) from a ``protein.actions``
    file. ``modes``: keep only lines of these modes (None: all seven); ``min_score``: keep lines
    scored at least this (default 0: every line)."""
    check_edge_options("string_actions", min_score, modes, "read_string_actions")
    wanted = set(modes) if modes is not None else set(MODES)
    col = {m: i for i, m in enumerate(MODES)}
    by_pair: dict[tuple[str, str], list] = {}
    n_lines = n_rejected = n_loops = 0
    for _, a, b, mode, score in _action_lines(path):
        n_lines += 1
        if score < min_score or mode not in wanted:
            n_rejected += 1
            continue
        if a == b:
            n_loops += 1
            continue
        key = (a, b) if a < b else (b, a)
        entry = by_pair.setdefault(key, [np.zeros(len(MODES), bool), -math.inf])
        entry[0][col[mode]] = True
        entry[1] = max(entry[1], score)
    if n_lines == 0:
        raise UserError(f"{path}: actions file has no data lines")
    ids = sorted({p for key in by_pair for p in key})
    node = {p: i for i, p in enumerate(ids)}
    keys = sorted(by_pair)
    pairs = np.asarray([(node[a], node[b]) for a, b in keys], np.int64).reshape(-1, 2)
    labels = np.stack([by_pair[k][0] for k in keys]) if keys else np.zeros((0, len(MODES)), bool)
    scores = np.asarray([by_pair[k][1] for k in keys], np.float64)
    counts = {m: int(labels[:, i].sum()) for i, m in enumerate(MODES)}
    return ActionTable(str(path), ids, pairs, labels, scores, MODES, n_lines, n_rejected, n_loops, counts)
