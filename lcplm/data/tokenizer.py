"""ESM-2-compatible protein alphabet plus the suite's own special tokens.

Ids 0..32 are exactly ESM-2's (fair-esm ``Alphabet.from_architecture("ESM-1b")``), so ESM and
LC-PLM checkpoints load unchanged; 33..37 are lcplm's graph and genome tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from lcplm.errors import UserError

ESM_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H",
    "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)
LCPLM_TOKENS: tuple[str, ...] = ("[BON]", "[EON]", "[EDGE]", "[NO_EDGE]", "<sep>")
ALL_TOKENS: tuple[str, ...] = ESM_TOKENS + LCPLM_TOKENS
TOKEN_TO_ID: dict[str, int] = {t: i for i, t in enumerate(ALL_TOKENS)}

CLS, PAD, EOS, UNK = 0, 1, 2, 3
MASK = TOKEN_TO_ID["<mask>"]  # 32
BON, EON, EDGE, NO_EDGE = 33, 34, 35, 36
SEP = 37  # between proteins of a genome
VOCAB_SIZE = len(ALL_TOKENS)  # 38
PADDED_VOCAB_SIZE = (VOCAB_SIZE + 7) // 8 * 8  # 40: embedding tables are padded to a multiple of 8

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
STANDARD_AA_IDS = torch.tensor(sorted(TOKEN_TO_ID[a] for a in STANDARD_AMINO_ACIDS), dtype=torch.long)
# Residue tokens are the maskable ones: the 20 standard amino acids plus X B U Z O.
RESIDUE_IDS = torch.tensor([TOKEN_TO_ID[a] for a in "LAGVSERTIDPKQNFYMHWCXBUZO"], dtype=torch.long)
SPECIAL_IDS = torch.tensor(
    [i for i in range(VOCAB_SIZE) if i not in set(RESIDUE_IDS.tolist())], dtype=torch.long
)

# ---- What a residue is: the one definition used by every reader, the FASTA index and encode().
# Each byte of a sequence is in one class:
#   layout       ASCII whitespace (space \t \n \v \f \r): removed, never a token;
#   residue      a letter of ESM-2's alphabet in either case (upper-cased), or a gap '.' / '-';
#   <unk>        a digit, 'J' (not in ESM-2's alphabet), or '*' anywhere but the very end: one
#                <unk> token each; readers count these substitutions and report them;
#   invalid      anything else (control bytes such as 0x1C-0x1F, non-ASCII bytes such as 0x85 or
#                0xA0, other punctuation): an error naming the record, never silently dropped.
# One '*' at the very end (the stop codon of a translated CDS) is dropped. A sequence needs at
# least one letter: an empty one, or one of only digits, gaps and '*', is an error naming it.
SEQUENCE_SPACE = b" \t\n\x0b\x0c\r"
_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))
_ALPHABET = "".join(t for t in ESM_TOKENS[4:31])  # 'LAGV...ZO.-'
PLAIN_RESIDUE_BYTES = (_ALPHABET + _ALPHABET.lower()).encode()  # residues that map to themselves
UNK_BYTES = b"0123456789*Jj"
_NOT_LETTERS = bytes(b for b in range(256) if b not in _LETTERS)

# Byte -> id lookup table: residues to their id, the <unk> class (and, unreachable after the
# checks, invalid bytes) to <unk>.
_LUT = np.full(256, UNK, dtype=np.int64)
for _tok in ESM_TOKENS[4:31]:
    _LUT[ord(_tok)] = TOKEN_TO_ID[_tok]
    _LUT[ord(_tok.lower())] = TOKEN_TO_ID[_tok]
_IS_RESIDUE = np.zeros(PADDED_VOCAB_SIZE, dtype=bool)
_IS_RESIDUE[RESIDUE_IDS.numpy()] = True


def first_invalid_byte(chunk: bytes) -> int:
    """Offset of the first byte of ``chunk`` (whitespace already removed) that is neither a
    residue nor an <unk> character; -1 when there is none."""
    odd = chunk.translate(None, PLAIN_RESIDUE_BYTES + UNK_BYTES)
    return chunk.index(odd[:1]) if odd else -1


def count_unk(chunk: bytes) -> int:
    """Bytes of ``chunk`` that become <unk> (digits, 'J', every '*': drop a terminal one first)."""
    odd = chunk.translate(None, PLAIN_RESIDUE_BYTES)
    return len(odd) - len(odd.translate(None, UNK_BYTES)) if odd else 0


def has_letter(chunk: bytes) -> bool:
    return len(chunk.translate(None, _NOT_LETTERS)) > 0


def describe_byte(b: int) -> str:
    """A byte for messages: ``'%'`` for printable ASCII, ``byte 0x1c`` otherwise."""
    return repr(chr(b)) if 0x20 < b < 0x7F else f"byte 0x{b:02x}"


def residue_bytes(seq: str | bytes, record: str = "<sequence>") -> bytes:
    """The residue bytes of one sequence under the rules above (layout removed, a terminal '*'
    dropped, case kept); raises :class:`UserError` naming ``record`` for an invalid character,
    an empty sequence, or one without any letter."""
    if isinstance(seq, str):
        try:
            raw = seq.encode("latin-1")
        except UnicodeEncodeError as e:
            raise UserError(
                f"record {record!r}: character {seq[e.start]!r} at position {e.start + 1} is not a residue "
                "(letters, '.', '-', '*' and digits are allowed)"
            ) from None
    else:
        raw = bytes(seq)
    raw = raw.translate(None, SEQUENCE_SPACE)
    if raw.endswith(b"*"):
        raw = raw[:-1]
    if not raw:
        raise UserError(f"empty sequence in record {record!r}")
    bad = first_invalid_byte(raw)
    if bad >= 0:
        what = f"character {chr(raw[bad])!r}" if isinstance(seq, str) else describe_byte(raw[bad])
        raise UserError(
            f"record {record!r}: {what} at residue {bad + 1} is not a residue "
            "(letters, '.', '-', '*' and digits are allowed)"
        )
    if not has_letter(raw):
        raise UserError(f"record {record!r} has no amino-acid letter (only digits, gaps or '*')")
    return raw


def clean_sequence(seq: str, record: str = "<sequence>") -> str:
    """The sequence as the tokenizer reads it: layout removed, one terminal '*' dropped, case kept.
    Invalid characters and empty sequences are errors naming ``record`` (see the rules above)."""
    return residue_bytes(seq, record).decode("latin-1")


def encode_residues(seq: str | bytes, record: str = "<sequence>") -> np.ndarray:
    """Residue ids of one sequence, without special tokens (int64 numpy array)."""
    return _LUT[np.frombuffer(residue_bytes(seq, record), dtype=np.uint8)]


def encode(seq: str, add_special_tokens: bool = True, record: str = "<sequence>") -> torch.Tensor:
    """``<cls> residues <eos>`` as a LongTensor (ESM-2's convention)."""
    ids = encode_residues(seq, record)
    if add_special_tokens:
        ids = np.concatenate(([CLS], ids, [EOS]))
    return torch.from_numpy(ids)


def decode(ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out = []
    for i in ids:
        residue = 0 <= i < PADDED_VOCAB_SIZE and bool(_IS_RESIDUE[i])
        if skip_special_tokens and not residue:
            continue
        out.append(ALL_TOKENS[i] if 0 <= i < VOCAB_SIZE else "<unk>")
    return "".join(out)


def is_residue(ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of maskable residue positions (never special tokens or padding)."""
    table = torch.from_numpy(_IS_RESIDUE).to(ids.device)  # a CPU table cannot index a CUDA tensor
    return table[ids.clamp(0, PADDED_VOCAB_SIZE - 1)] & (ids < PADDED_VOCAB_SIZE)


def pad_batch(seqs: Sequence[torch.Tensor], pad_to_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors with ``<pad>``; returns ``(ids [B, L], lengths [B])``."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    L = int(lengths.max()) if len(seqs) else 0
    L = (L + pad_to_multiple_of - 1) // pad_to_multiple_of * pad_to_multiple_of
    out = torch.full((len(seqs), L), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths
