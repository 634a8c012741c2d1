"""``lcplm data prepare-swissprot``: Swiss-Prot (January 2014) from Debian's ``metastudent-data``.

The package holds three BLAST v4 protein databases (``dataset_201401/{MFO,BPO,CCO}/goasp.fasta``,
one per Gene Ontology branch) whose records are titled ``ACCESSION|GO:nnnnnnn,GO:...``. A protein
annotated in several branches appears in several databases; this command merges them into one
FASTA of unique accessions and splits it into a training and a held-out set.

Stages (each one's output is written atomically and checked before it is reused, so running the
command again does only what is missing, and a run killed anywhere restarts cleanly):

1. download: ``apt-get download metastudent-data=VERSION`` into ``<dir>/``, checked against the
   SHA-256 apt's index gives for that version (or ``--deb PATH``: a copy you downloaded, checked
   against the digest of the version this was built with, :data:`KNOWN_DEBS`);
2. extract: the nine ``goasp.fasta.{pin,phr,psq}`` files from the .deb (an ``ar`` archive whose
   ``data.tar.xz`` holds them; read with the standard library) into ``<dir>/blastdb/``;
3. merge: read the databases (:mod:`lcplm.data.blastdb`); records with the same accession are one
   protein (their GO terms are united; a differing sequence under one accession keeps the first,
   in MFO, BPO, CCO order, and is counted as a conflict); write, sorted by accession:

   - ``swissprot.fasta``: ``>ACCESSION GO:...,GO:...`` then the sequence on one line;
   - ``train.fasta`` / ``heldout.fasta``: the split below (together: ``swissprot.fasta``);
   - ``split.tsv``: ``accession  length  length_bin  split`` for every protein;
   - ``manifest.json`` (last: its presence marks a finished run): counts, per-bin counts,
     parameters, timings and the SHA-256 of the .deb and of every output;
4. index: :class:`~lcplm.data.fasta.FastaIndex` of the three FASTA files.

Held-out set (fixed, length-stratified): proteins are binned by residue count at
:data:`LENGTH_BIN_EDGES`; in each bin the ``min(per_bin, floor(max_fraction * n_bin))`` proteins
with the smallest :func:`~lcplm.data.fasta.id_hash` of ``"swissprot-heldout:" + accession`` are held
out (salted, so the choice is independent of the training split's own validation hash). The choice
depends on the accessions alone (not file order, not machine), every length bin is represented, and
proteins longer than 2,048 and 4,096 residues are held out for length-extrapolation tests while
the training set keeps at least half of each bin. The split is by accession, not by sequence
identity: homologues of a held-out protein may be in the training set.

``<dir>`` is ``<cache>/data/swissprot`` (``$LCPLM_CACHE_DIR`` or ``./.cache``). Configs name the
files ``swissprot:all``, ``swissprot:train`` and ``swissprot:heldout``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from lcplm.data.blastdb import BlastProteinDb, record_id
from lcplm.data.cache import swissprot_dir
from lcplm.data.fasta import FastaIndex, id_hash
from lcplm.errors import UserError
from lcplm.files import atomic_open, atomic_write_text

PACKAGE = "metastudent-data"
# version -> SHA-256 of the .deb (Debian bookworm's metastudent-data_2.0.1-8_all.deb, 224,684,540 bytes)
KNOWN_DEBS = {"2.0.1-8": "020ed0c560a5ba96f39c434399b3ecf0fa790a4776c4aac24458f837969ae54b"}
DB_DIR = "usr/share/metastudent-data/dataset_201401"
ONTOLOGIES = ("MFO", "BPO", "CCO")  # molecular function, biological process, cellular component
DB_FILES = tuple(f"{o}/goasp.fasta{ext}" for o in ONTOLOGIES for ext in (".pin", ".phr", ".psq"))
LENGTH_BIN_EDGES = (128, 256, 512, 1024, 2048, 4096)  # residues; bins (0,128], ..., (4096, inf)
HELDOUT_PER_BIN = 1000
HELDOUT_MAX_FRACTION = 0.5
FORMAT_VERSION = 2  # bump when the outputs' content rules change: finished runs are then redone
# The held-out choice hashes a salted accession: unsalted, it would take exactly the proteins that
# data.val_fraction (lcplm.data.split, the same hash) picks for validation, leaving training none.
HELDOUT_SALT = "swissprot-heldout:"
OUTPUTS = {"all": "swissprot.fasta", "train": "train.fasta", "heldout": "heldout.fasta", "split": "split.tsv"}
_GO = re.compile(rb"GO:\d{7}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def length_bin_labels(edges: tuple[int, ...] = LENGTH_BIN_EDGES) -> list[str]:
    lows = (0,) + tuple(edges)
    return [f"{lo + 1}-{hi}" for lo, hi in zip(lows, edges)] + [f"{edges[-1] + 1}+"]


def length_bins(lengths: np.ndarray, edges: tuple[int, ...] = LENGTH_BIN_EDGES) -> np.ndarray:
    """Bin index of each length: bin b holds ``edges[b-1] < length <= edges[b]``."""
    return np.searchsorted(np.asarray(edges), np.asarray(lengths), side="left")


def heldout_mask(accessions: list[str], lengths: np.ndarray, per_bin: int = HELDOUT_PER_BIN,
                 max_fraction: float = HELDOUT_MAX_FRACTION) -> np.ndarray:
    """True for held-out proteins (the rule in the module docstring)."""
    if per_bin < 0 or not 0.0 <= max_fraction <= 1.0:
        raise UserError(f"need --heldout-per-bin >= 0 and --heldout-max-fraction in [0, 1], got {per_bin}, {max_fraction}")
    hashes = np.fromiter((id_hash(HELDOUT_SALT + a) for a in accessions), np.uint64, len(accessions))
    bins = length_bins(lengths)
    out = np.zeros(len(accessions), bool)
    for b in range(len(LENGTH_BIN_EDGES) + 1):
        members = np.flatnonzero(bins == b)
        k = min(per_bin, int(max_fraction * len(members)))
        if k:
            # ties in a 64-bit hash are broken by accession so the rule is total
            order = sorted(members.tolist(), key=lambda i: (int(hashes[i]), accessions[i]))
            out[order[:k]] = True
    return out


# ------------------------------------------------------------------------------- download


def apt_candidate(package: str = PACKAGE) -> tuple[str, str]:
    """``(version, sha256)`` of the package apt would install; one-line UserError when apt or the package is unavailable."""
    if shutil.which("apt-cache") is None or shutil.which("apt-get") is None:
        raise UserError(
            f"apt-get is not available here: prepare-swissprot downloads the Debian package {package!r} with apt "
            f"(on another machine: `apt-get download {package}`, then pass --deb PATH)"
        )
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True)
    fields = dict(re.findall(r"^(Version|SHA256): (\S+)$", r.stdout, flags=re.M))
    if r.returncode != 0 or "Version" not in fields or "SHA256" not in fields:
        raise UserError(
            f"apt knows no package {package!r} (run `apt-get update` first; it is in Debian bookworm main), "
            f"or download its .deb elsewhere and pass --deb PATH"
        )
    return fields["Version"], fields["SHA256"]


def apt_download(package: str, version: str, sha256: str, dest_dir: Path) -> Path:
    """Download the .deb with ``apt-get download`` into a scratch folder, check it, move it into ``dest_dir``."""
    scratch = dest_dir / f".download-{time.time_ns()}"
    scratch.mkdir(parents=True)
    try:
        # apt writes into its working directory; "_apt" may not be able to, which apt only warns about
        r = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=scratch, capture_output=True, text=True)
        debs = list(scratch.glob("*.deb"))
        if r.returncode != 0 or len(debs) != 1:
            last = (r.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise UserError(f"apt-get download {package}={version} failed: {last}")
        got = sha256_file(debs[0])
        if got != sha256:
            raise UserError(f"{debs[0].name}: SHA-256 {got} differs from apt's index ({sha256}): download damaged, try again")
        target = dest_dir / debs[0].name
        debs[0].replace(target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -------------------------------------------------------------------------------- extract


class _Window(io.RawIOBase):
    """Read-only view of ``size`` bytes of ``f`` from its current position (one ar member)."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        if n <= 0:
            return 0
        data = self.f.read(n)
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _ar_members(f: BinaryIO, where: Path) -> Iterator[tuple[str, int]]:
    """``(name, size)`` of each member of an ar archive, leaving ``f`` at the member's data."""
    if f.read(8) != b"!<arch>\n":
        raise UserError(f"{where}: not a Debian package (no ar archive header)")
    while True:
        head = f.read(60)
        if not head:
            return
        if len(head) != 60 or head[58:60] != b"`\n":
            raise UserError(f"{where}: truncated or corrupt ar archive")
        name = head[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(head[48:58].decode("ascii").strip() or 0)
        start = f.tell()
        yield name, size
        f.seek(start + size + (size & 1))


def extract_databases(deb: Path, dest: Path) -> dict[str, int]:
    """Extract :data:`DB_FILES` from the .deb's data archive into ``dest`` (replaced atomically);
    returns each file's size."""
    scratch = dest.parent / f".extract-{time.time_ns()}"
    scratch.mkdir(parents=True)
    wanted = {f"./{DB_DIR}/{rel}": rel for rel in DB_FILES}
    sizes: dict[str, int] = {}
    try:
        with open(deb, "rb") as f:
            for name, size in _ar_members(f, deb):
                if not name.startswith("data.tar"):
                    continue
                mode = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar.bz2": "r|bz2", "data.tar": "r|"}.get(name)
                if mode is None:
                    raise UserError(f"{deb}: data archive {name} is not readable here (xz, gz, bz2 or plain tar are)")
                try:
                    with tarfile.open(fileobj=io.BufferedReader(_Window(f, size), 1 << 20), mode=mode) as tar:
                        for member in tar:
                            key = member.name if member.name.startswith("./") else "./" + member.name
                            if key in wanted and member.isfile():
                                out = scratch / wanted[key]
                                out.parent.mkdir(parents=True, exist_ok=True)
                                with tar.extractfile(member) as src, open(out, "wb") as dst:
                                    shutil.copyfileobj(src, dst, 1 << 22)
                                sizes[wanted[key]] = member.size
                except (tarfile.TarError, EOFError, OSError) as e:
                    raise UserError(f"{deb}: corrupt data archive ({e})") from None
                break
        missing = [rel for rel in DB_FILES if rel not in sizes]
        if missing:
            raise UserError(f"{deb}: the package has no {DB_DIR}/{missing[0]} (not {PACKAGE}?)")
        if dest.exists():
            shutil.rmtree(dest)
        scratch.replace(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sizes


# ---------------------------------------------------------------------------------- merge


@dataclass
class _Protein:
    db: int  # which database the kept sequence comes from
    ordinal: int
    go: list[bytes]  # GO terms from every database naming this accession


def _accession(title_id: str, where: str) -> tuple[str, bytes]:
    acc, _, rest = title_id.partition("|")
    if not acc:
        raise UserError(f"{where}: record has no accession in its title {title_id[:60]!r}")
    return acc, rest.encode("ascii", "replace")


def merge_databases(dbs: list[BlastProteinDb], names: list[str], log=print) -> tuple[list[str], dict[str, _Protein], dict]:
    """Unique accessions (sorted) and where each one's sequence is (the first database naming it,
    in the given order); plus counts."""
    proteins: dict[str, _Protein] = {}
    stats = {"records": {}, "residues": {}, "merged_duplicates": 0, "conflicts": 0, "conflict_examples": []}
    for k, (db, name) in enumerate(zip(dbs, names)):
        t0 = time.time()
        for i in range(len(db)):
            rid, _ = record_id(db.deflines(i)[0])
            acc, go = _accession(rid, f"{db.phr} record {i}")
            p = proteins.get(acc)
            if p is None:
                proteins[acc] = _Protein(k, i, [go])
                continue
            p.go.append(go)
            if dbs[p.db].raw_sequence(p.ordinal) == db.raw_sequence(i):
                stats["merged_duplicates"] += 1
            else:
                stats["conflicts"] += 1
                if len(stats["conflict_examples"]) < 20:
                    stats["conflict_examples"].append(f"{acc}: {names[p.db]} vs {name}")
        stats["records"][name] = len(db)
        stats["residues"][name] = db.info.total_residues
        log(f"  read {name}: {len(db):,} records, {db.info.total_residues:,} residues ({time.time() - t0:.1f} s)")
    return sorted(proteins), proteins, stats


def _fasta_line(acc: str, p: _Protein, dbs: list[BlastProteinDb]) -> bytes:
    terms = sorted(set(t for go in p.go for t in _GO.findall(go)))
    header = f">{acc} {','.join(t.decode() for t in terms)}\n" if terms else f">{acc}\n"
    return header.encode("ascii") + dbs[p.db].sequence(p.ordinal).encode("ascii") + b"\n"


# ----------------------------------------------------------------------------- the command


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `lcplm data prepare-swissprot` is running on {directory} (lock {directory / '.lock'})") from None
        yield


def _parameters(per_bin: int, max_fraction: float) -> dict:
    return {"format_version": FORMAT_VERSION, "length_bin_edges": list(LENGTH_BIN_EDGES),
            "heldout_per_bin": per_bin, "heldout_max_fraction": max_fraction}


def _finished(d: Path, deb_sha: str | None, params: dict) -> dict | None:
    """The manifest of a finished run with these inputs whose outputs are intact, else None."""
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if m.get("parameters") != params or (deb_sha is not None and m.get("deb", {}).get("sha256") != deb_sha):
        return None
    for key, name in OUTPUTS.items():
        f, want = d / name, m.get("outputs", {}).get(key, {})
        if not f.is_file() or f.stat().st_size != want.get("bytes") or sha256_file(f) != want.get("sha256"):
            return None
    return m


def _summary(m: dict) -> str:
    o, t = m["outputs"], m["timings_s"]
    lines = [
        f"{m['dir']}: {o['all']['records']:,} unique Swiss-Prot proteins ({o['all']['residues']:,} residues) from "
        f"{sum(m['merge']['records'].values()):,} records in {', '.join(m['merge']['records'])} "
        f"({m['merge']['merged_duplicates']:,} duplicates merged, {m['merge']['conflicts']} conflicting sequences)",
        f"  train.fasta {o['train']['records']:,} proteins; heldout.fasta {o['heldout']['records']:,} proteins",
        f"  {'length bin':<12}{'proteins':>10}{'held out':>10}",
    ]
    for label, n, h in zip(m["length_bins"]["labels"], m["length_bins"]["proteins"], m["length_bins"]["heldout"]):
        lines.append(f"  {label:<12}{n:>10,}{h:>10,}")
    lines.append("  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return "\n".join(lines)


def prepare_swissprot(cache_dir: str | None = None, deb: str | None = None, per_bin: int = HELDOUT_PER_BIN,
                      max_fraction: float = HELDOUT_MAX_FRACTION, log=print) -> dict:
    """Run the stages of the module docstring (skipping finished ones); returns the manifest."""
    d = swissprot_dir(cache_dir)
    params = _parameters(per_bin, max_fraction)
    with _lock(d):
        for stale in list(d.glob(".download-*")) + list(d.glob(".extract-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run (we hold the lock)
        timings: dict[str, float] = {}
        # 1. the package
        t0 = time.time()
        if deb is not None:
            deb_path = Path(deb)
            if not deb_path.is_file():
                raise UserError(f"--deb {deb}: file not found")
            deb_sha = sha256_file(deb_path)
            version = next((v for v, s in KNOWN_DEBS.items() if s == deb_sha), None)
            if version is None:
                log(f"note: {deb_path.name} (SHA-256 {deb_sha[:16]}...) is not the {PACKAGE} "
                    f"{'/'.join(KNOWN_DEBS)} this was built with; its databases are read and checked all the same")
            else:
                log(f"{deb_path}: {PACKAGE} {version} (SHA-256 matches)")
        else:
            done = _finished(d, None, params)  # a finished run needs neither apt nor the network
            if done is not None:
                log(_summary(done) + "\n(already prepared: nothing to do)")
                return done
            version, deb_sha = apt_candidate()
            deb_path = d / f"{PACKAGE}_{version}_all.deb"
            if deb_path.is_file() and sha256_file(deb_path) == deb_sha:
                log(f"{deb_path}: present, SHA-256 matches apt's index")
            else:
                log(f"downloading {PACKAGE} {version} with apt-get (~225 MB) ...")
                deb_path = apt_download(PACKAGE, version, deb_sha, d)
        timings["download"] = time.time() - t0
        done = _finished(d, deb_sha, params)
        if done is not None:
            log(_summary(done) + "\n(already prepared: nothing to do)")
            return done
        # 2. the BLAST databases
        t0 = time.time()
        blast = d / "blastdb"
        marker = blast / "extracted.json"
        try:
            extracted = json.loads(marker.read_text())
        except (OSError, ValueError):
            extracted = {}
        if extracted.get("deb_sha256") != deb_sha or any(
            not (blast / rel).is_file() or (blast / rel).stat().st_size != size for rel, size in extracted.get("files", {}).items()
        ) or set(extracted.get("files", {})) != set(DB_FILES):
            log(f"extracting {len(DB_FILES)} BLAST database files from {deb_path.name} ...")
            sizes = extract_databases(deb_path, blast)
            atomic_write_text(marker, json.dumps({"deb_sha256": deb_sha, "files": sizes}, indent=2) + "\n")
        else:
            log(f"{blast}: BLAST databases already extracted")
        timings["extract"] = time.time() - t0
        # 3. merge, split, write
        t0 = time.time()
        log("merging the three databases by accession ...")
        dbs = [BlastProteinDb(blast / o / "goasp.fasta") for o in ONTOLOGIES]
        accessions, proteins, merge = merge_databases(dbs, list(ONTOLOGIES), log)
        lengths = np.fromiter((int(dbs[proteins[a].db].lengths[proteins[a].ordinal]) for a in accessions), np.int64, len(accessions))
        held = heldout_mask(accessions, lengths, per_bin, max_fraction)
        bins = length_bins(lengths)
        labels = length_bin_labels()
        outputs = {k: {"records": 0, "residues": 0} for k in ("all", "train", "heldout")}
        with atomic_open(d / OUTPUTS["all"]) as fa, atomic_open(d / OUTPUTS["train"]) as ft, \
                atomic_open(d / OUTPUTS["heldout"]) as fh, atomic_open(d / OUTPUTS["split"]) as fs:
            fs.write(b"accession\tlength\tlength_bin\tsplit\n")
            for j, acc in enumerate(accessions):
                rec = _fasta_line(acc, proteins[acc], dbs)
                side = "heldout" if held[j] else "train"
                fa.write(rec)
                (fh if held[j] else ft).write(rec)
                fs.write(f"{acc}\t{lengths[j]}\t{labels[bins[j]]}\t{side}\n".encode())
                for key in ("all", side):
                    outputs[key]["records"] += 1
                    outputs[key]["residues"] += int(lengths[j])
        for key, name in OUTPUTS.items():
            outputs.setdefault(key, {})
            outputs[key].update(path=name, bytes=(d / name).stat().st_size, sha256=sha256_file(d / name))
        timings["merge_and_write"] = time.time() - t0
        # 4. indexes (FastaIndex reuses an index whose file is unchanged)
        t0 = time.time()
        for key in ("all", "train", "heldout"):
            FastaIndex(d / OUTPUTS[key], cache_dir)
        timings["index"] = time.time() - t0
        manifest = {
            "dir": str(d),
            "package": PACKAGE,
            "deb": {"file": deb_path.name, "version": version, "sha256": deb_sha},
            "parameters": params,
            "merge": merge,
            "length_bins": {
                "labels": labels,
                "proteins": np.bincount(bins, minlength=len(labels)).tolist(),
                "heldout": np.bincount(bins[held], minlength=len(labels)).tolist(),
            },
            "longest": int(lengths.max()),
            "outputs": outputs,
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        }
        atomic_write_text(d / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        log(_summary(manifest))
        return manifest
