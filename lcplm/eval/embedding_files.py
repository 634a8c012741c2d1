"""The output folder of ``lcplm embed`` (:func:`lcplm.embed.embed_fasta`): written part by part as
embeddings are made, resumable, assembled into its final format at the end with bounded memory.

**Arrays.** For each representation layer k and each output: ``mean`` (N, D) (mean over residue
tokens), ``bos`` (N, D) (the ``<cls>`` token's state) and ``residues`` (T, D) (every residue's
state; record i's rows are ``offsets[i]:offsets[i + 1]`` of ``offsets`` (N + 1,)). The final
layer's arrays are named ``mean``, ``bos``, ``residues`` (what ``lcplm embed`` has always
written); another layer k's are ``mean_layer{k}``, ``bos_layer{k}``, ``residues_layer{k}``.

**Formats.** ``safetensors``: one ``embeddings.safetensors`` with every array and ``offsets``;
``npy``: one ``<name>.npy`` per array; ``hdf5``: ``embeddings.h5`` with one group per record,
named by its id (``%`` written ``%25`` and ``/`` written ``%2F``, since HDF5 names cannot hold a
``/``; the id itself is the group's ``id`` attribute), holding that record's ``mean`` (D,),
``bos`` (D,) and ``residues`` (L, D) datasets and the attributes ``index``, ``length``,
``embedded_length``. Every format has ``index.tsv`` (``index  id  length  embedded_length``
per record, in FASTA order) and ``meta.json``.

**While running.** ``DIR/.partial/`` holds ``run.json`` (the checkpoint digest, model config and
options: what the folder is being made with) and ``part-000000.safetensors``, ... : the arrays
of consecutive records, one part per chunk, each written atomically with its records (id,
length, embedded length) and a digest of their ids and sequences in its metadata. A killed run
leaves whole parts only; ``--resume`` checks ``run.json`` against the new run, skips the
records of the finished parts (checking them against the FASTA) and continues. The final files
are assembled from the parts one part at a time (so the whole data set is never in memory; the
disk holds the parts and the final files together until the parts are removed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lcplm.errors import UserError
from lcplm.files import atomic_open, atomic_write_bytes, atomic_write_text

FORMATS = ("safetensors", "npy", "hdf5")
PARTIAL = ".partial"
ARRAY_FILES = ("embeddings.safetensors", "embeddings.h5")  # plus <name>.npy
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def array_name(kind: str, layer: int, num_layers: int) -> str:
    """``mean`` / ``bos`` / ``residues`` for the final layer, ``<kind>_layer<k>`` for layer k."""
    return kind if layer == num_layers else f"{kind}_layer{layer}"


def hdf5_key(record_id: str) -> str:
    """The HDF5 group name of a record id: ``%`` -> ``%25``, ``/`` -> ``%2F``, ``.``/``..`` escaped."""
    key = record_id.replace("%", "%25").replace("/", "%2F")
    return key.replace(".", "%2E") if key in (".", "..") else key


def records_digest(records: list[tuple[str, str]]) -> str:
    """blake2b-128 of (id, sequence) pairs, in order: what a part was made from."""
    h = hashlib.blake2b(digest_size=16)
    for rid, seq in records:
        h.update(rid.encode() + b"\t" + seq.encode() + b"\n")
    return h.hexdigest()


def _first_difference(old: Any, new: Any, path: str = "") -> Optional[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            d = _first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    return None if old == new else f"{path}: was {old!r}, now {new!r}"


class EmbeddingFolder:
    """One ``lcplm embed`` output folder (see the module docstring). ``identity``: what the folder
    is made with (checkpoint digest, model config, options); a resume must match it."""

    def __init__(self, out: str | Path, fmt: str, identity: dict):
        if fmt not in FORMATS:
            raise UserError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
        if fmt == "hdf5":
            _h5py()  # before any embedding, not after it
        self.out, self.fmt = Path(out), fmt
        self.identity = json.loads(json.dumps(identity, default=str))  # as it reads back from JSON
        self.partial = self.out / PARTIAL

    # ------------------------------------------------------------------ start / resume

    def begin(self, resume: bool) -> Optional[list[Path]]:
        """Prepare the folder. Returns the finished parts to skip ([] for a fresh start), or None
        when ``resume`` finds the folder already complete with the same identity."""
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out}: exists and is not a directory")
        if resume:
            run = self.partial / "run.json"
            if run.is_file():
                self._check(json.loads(run.read_text()), "the interrupted run")
                return self.parts()
            meta = self.out / "meta.json"
            if meta.is_file():
                self._check(json.loads(meta.read_text()).get("resume_key"), "the finished output")
                return None
        if self.partial.exists():
            shutil.rmtree(self.partial)
        for stale in [*ARRAY_FILES, "index.tsv", "meta.json", *(p.name for p in self.out.glob("*.npy"))]:
            (self.out / stale).unlink(missing_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.partial / "run.json", json.dumps(self.identity, indent=2) + "\n")
        return []

    def _check(self, old: Any, what: str) -> None:
        diff = _first_difference(old, self.identity)
        if diff:
            raise UserError(f"{self.out}: cannot --resume, {what} used another model or options ({diff}); "
                            "leave out --resume to start over, or choose another --out")

    def parts(self) -> list[Path]:
        return sorted(self.partial.glob("part-*.safetensors"))

    @staticmethod
    def part_records(part: Path) -> tuple[list[tuple[str, int, int]], str]:
        """``([(id, length, embedded_length), ...], digest)`` of a finished part."""
        from safetensors import safe_open

        with safe_open(str(part), "pt") as f:
            meta = f.metadata()
        return [tuple(r) for r in json.loads(meta["records"])], meta["digest"]

    # ------------------------------------------------------------------ parts

    def write_part(self, k: int, arrays: dict[str, torch.Tensor], records: list[tuple[str, int, int]], digest: str) -> None:
        """Part ``k``: arrays of its records (rows in record order), atomically."""
        from safetensors.torch import save

        meta = {"records": json.dumps(records), "digest": digest}
        atomic_write_bytes(self.partial / f"part-{k:06d}.safetensors",
                           save({n: t.contiguous() for n, t in arrays.items()}, metadata=meta))

    # ------------------------------------------------------------------ final files

    def finish(self, meta: dict) -> Path:
        """Assemble the final arrays, ``index.tsv`` and ``meta.json`` from the parts (one part in
        memory at a time), then remove the parts."""
        from safetensors import safe_open

        parts = self.parts()
        if not parts:
            raise UserError(f"{self.out}: no embeddings were written")
        sizes = [(len(rs), sum(e for _, _, e in rs)) for rs in (self.part_records(p)[0] for p in parts)]
        n_rec, n_res = sum(n for n, _ in sizes), sum(t for _, t in sizes)
        with safe_open(str(parts[0]), "np") as f:
            names = list(f.keys())
            width = {n: f.get_slice(n).get_shape()[1] for n in names}
            dtypes = {n: f.get_tensor(n).dtype for n in names}  # one part's tensors: a chunk, not the data set
        if self.fmt == "hdf5":
            self._write_hdf5(parts, names, meta)
        else:
            def rows(name: str) -> Iterator[np.ndarray]:
                for p in parts:
                    with safe_open(str(p), "np") as f:
                        yield f.get_tensor(name)

            arrays = [(n, dtypes[n], [n_res if n.startswith("residues") else n_rec, width[n]], (lambda n=n: rows(n)))
                      for n in names]
            if any(n.startswith("residues") for n in names):
                arrays.append(("offsets", np.dtype(np.int64), [n_rec + 1], lambda: self._offsets(parts)))
            if self.fmt == "safetensors":
                _write_safetensors(self.out / "embeddings.safetensors", arrays)
            else:
                for name, dtype, shape, chunks in arrays:
                    _write_npy(self.out / f"{name}.npy", dtype, shape, chunks())
        with atomic_open(self.out / "index.tsv", "w") as f:
            f.write("index\tid\tlength\tembedded_length\n")
            i = 0
            for p in parts:
                for rid, length, embedded in self.part_records(p)[0]:
                    f.write(f"{i}\t{rid}\t{length}\t{embedded}\n")
                    i += 1
        atomic_write_text(self.out / "meta.json", json.dumps({**meta, "resume_key": self.identity}, indent=2,
                                                             default=str) + "\n")
        shutil.rmtree(self.partial)
        return self.out

    def _offsets(self, parts: list[Path]) -> Iterator[np.ndarray]:
        total = 0
        yield np.zeros(1, np.int64)
        for p in parts:
            ends = total + np.cumsum(np.asarray([e for _, _, e in self.part_records(p)[0]], np.int64))
            total = int(ends[-1]) if len(ends) else total
            yield ends

    def _write_hdf5(self, parts: list[Path], names: list[str], meta: dict) -> None:
        from safetensors import safe_open

        with atomic_open(self.out / "embeddings.h5", "w+b") as fh, _h5py().File(fh, "w") as h5:
            h5.attrs["meta"] = json.dumps(meta, default=str)
            index = 0
            for p in parts:
                with safe_open(str(p), "np") as f:
                    arrays = {n: f.get_tensor(n) for n in names}
                start = 0
                for row, (rid, length, embedded) in enumerate(self.part_records(p)[0]):
                    key = hdf5_key(rid)
                    if key in h5:
                        raise UserError(f"record ids {rid!r} and {h5[key].attrs['id']!r} share the HDF5 name {key!r}")
                    g = h5.create_group(key)
                    g.attrs.update({"id": rid, "index": index, "length": length, "embedded_length": embedded})
                    for n, a in arrays.items():
                        g.create_dataset(n, data=a[start:start + embedded] if n.startswith("residues") else a[row])
                    start += embedded
                    index += 1


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UserError("--format hdf5 needs h5py: pip install 'lcplm[hdf5]' (or pip install h5py)") from None
    return h5py


def _write_safetensors(path: Path, arrays: list) -> None:
    """A safetensors file written array by array from chunks (never one array in memory):
    ``arrays``: ``(name, dtype, shape, chunks())`` with chunks yielding C-ordered rows in order."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape, _ in arrays:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # pad so the data starts 8-byte aligned, as safetensors writes it
    with atomic_open(path, "wb", expected_bytes=8 + len(raw) + offset) as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, dtype, shape, chunks in arrays:
            written = 0
            for c in chunks():
                c = np.ascontiguousarray(c, dtype=dtype)
                f.write(memoryview(c).cast("B"))
                written += c.nbytes
            if written != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                raise RuntimeError(f"{path}: array {name!r} has {written} bytes, expected {shape}")


def _write_npy(path: Path, dtype, shape: list[int], chunks: Iterator[np.ndarray]) -> None:
    from numpy.lib import format as npy

    with atomic_open(path, "wb") as f:
        npy.write_array_header_2_0(f, {"descr": npy.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                                       "shape": tuple(shape)})
        for c in chunks:
            f.write(memoryview(np.ascontiguousarray(c, dtype=dtype)).cast("B"))


def read_embeddings(out_dir: str | Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """``(ids, arrays)`` of a finished ``lcplm embed`` folder, any format (the hdf5 groups stacked
    into the same arrays, with ``offsets``). Loads everything into memory."""
    out = Path(out_dir)
    index = out / "index.tsv"
    if not index.is_file():
        raise UserError(f"{out}: no index.tsv (not a finished `lcplm embed` output folder)")
    ids = [line.split("\t")[1] for line in index.read_text().splitlines()[1:] if line]
    if (out / "embeddings.safetensors").is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(out / "embeddings.safetensors"))
    elif (out / "embeddings.h5").is_file():
        with _h5py().File(out / "embeddings.h5", "r") as h5:
            groups = [h5[hdf5_key(i)] for i in ids]
            names = list(groups[0].keys()) if groups else []
            tensors = {}
            for n in names:
                rows = [torch.from_numpy(g[n][()]) for g in groups]
                tensors[n] = torch.cat(rows) if n.startswith("residues") else torch.stack(rows)
            if any(n.startswith("residues") for n in names):
                lengths = torch.tensor([int(g.attrs["embedded_length"]) for g in groups], dtype=torch.int64)
                tensors["offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    else:
        tensors = {p.stem: torch.from_numpy(np.load(p)) for p in sorted(out.glob("*.npy"))}
    if not tensors:
        raise UserError(f"{out}: no embedding arrays found")
    return ids, tensors
