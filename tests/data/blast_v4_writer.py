"""A small, independent writer of BLAST v4 protein databases and Debian packages for the tests.

It follows NCBI's layout (``.pin`` index, ``.psq`` NCBIstdaa sequences, ``.phr`` BER def lines)
as makeblastdb writes it (indefinite BER lengths), with an option for definite lengths, so the
reader is tested against files it did not write itself.
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"


def ber(tag: int, content: bytes | list[bytes], indefinite: bool = True) -> bytes:
    """One BER element: ``content`` bytes (primitive) or encoded children (constructed)."""
    if isinstance(content, list):
        body = b"".join(content)
        if indefinite:
            return bytes([tag, 0x80]) + body + b"\x00\x00"
    else:
        body = content
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def integer(v: int) -> bytes:
    return ber(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def vstr(s: str) -> bytes:
    return ber(0x1A, s.encode())


def ctx(n: int, inner: bytes, indefinite: bool = True) -> bytes:
    return ber(0xA0 | n, [inner], indefinite)


def seq(children: list[bytes], indefinite: bool = True) -> bytes:
    return ber(0x30, children, indefinite)


# Seq-id builders (explicit context tags, as NCBI's ASN.1 BER)
def ordinal_id(i: int, ind: bool = True) -> bytes:
    return ctx(10, seq([ctx(0, vstr("BL_ORD_ID"), ind), ctx(1, ctx(0, integer(i), ind), ind)], ind), ind)


def textseq_id(choice: int, accession: str, name: str | None = None, version: int | None = None, ind: bool = True) -> bytes:
    fields = ([ctx(0, vstr(name), ind)] if name else []) + [ctx(1, vstr(accession), ind)]
    if version is not None:
        fields.append(ctx(3, integer(version), ind))
    return ctx(choice, seq(fields, ind), ind)


def gi_id(n: int, ind: bool = True) -> bytes:
    return ctx(11, integer(n), ind)


def local_str_id(s: str, ind: bool = True) -> bytes:
    return ctx(0, ctx(1, vstr(s), ind), ind)


def pdb_id(mol: str, chain_id: str, ind: bool = True) -> bytes:
    return ctx(14, seq([ctx(0, vstr(mol), ind), ctx(3, vstr(chain_id), ind)], ind), ind)


def defline(title: str | None, seq_ids: list[bytes], taxid: int | None = None, ind: bool = True) -> bytes:
    fields = [ctx(0, vstr(title), ind)] if title is not None else []
    fields.append(ctx(1, seq(seq_ids, ind), ind))
    if taxid is not None:
        fields.append(ctx(2, integer(taxid), ind))
    return seq(fields, ind)


def write_db(prefix: Path, records: list[tuple[list[bytes], str]], title: str = "test db",
             indefinite: bool = True, version: int = 4, kind: int = 1) -> Path:
    """``records``: (encoded def lines, sequence letters) per record. Writes PREFIX.{pin,phr,psq}."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    phr, psq = bytearray(), bytearray(b"\x00")
    hoff, soff = [0], [1]
    for deflines, sequence in records:
        phr += ber(0x30, deflines, indefinite)
        psq += bytes(NCBISTDAA.index(c) for c in sequence) + b"\x00"
        hoff.append(len(phr))
        soff.append(len(psq))
    stamp = b"Jan 20, 2022  10:32 AM"
    stamp += b"\x00" * (-(len(stamp) + 4) % 8)  # makeblastdb pads the timestamp inside its length
    pin = struct.pack(">ii", version, kind)
    pin += struct.pack(">i", len(title)) + title.encode()
    pin += struct.pack(">i", len(stamp)) + stamp
    total = sum(len(s) for _, s in records)
    pin += struct.pack(">i", len(records)) + struct.pack("<Q", total) + struct.pack(">i", max((len(s) for _, s in records), default=0))
    pin += struct.pack(f">{len(hoff)}i", *hoff) + struct.pack(f">{len(soff)}i", *soff)
    (prefix.parent / (prefix.name + ".pin")).write_bytes(pin)
    (prefix.parent / (prefix.name + ".phr")).write_bytes(bytes(phr))
    (prefix.parent / (prefix.name + ".psq")).write_bytes(bytes(psq))
    return prefix


def metastudent_record(i: int, accession: str, go: list[str], sequence: str) -> tuple[list[bytes], str]:
    """A record as metastudent-data's databases hold them: title ``ACC|GO:..,GO:..``, ordinal id."""
    return [defline(f"{accession}|{','.join(go)}", [ordinal_id(i)], taxid=0)], sequence


def write_deb(path: Path, files: dict[str, bytes], compression: str = "xz") -> Path:
    """A Debian package (ar archive: debian-binary, control.tar.xz, data.tar.<compression>)."""

    def tar_bytes(members: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            dirs = set()
            for name in members:
                parts = name.split("/")[:-1]
                for k in range(1, len(parts) + 1):
                    dirs.add("/".join(parts[:k]))
            for d in sorted(dirs):
                info = tarfile.TarInfo("./" + d)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for name, data in members.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", tar_bytes({"control": b"Package: metastudent-data\n"}, "w:xz")),
        (f"data.tar.{compression}", tar_bytes(files, f"w:{compression}")),
    ]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n" + data
        if len(data) & 1:
            out += b"\n"
    path.write_bytes(bytes(out))
    return path
