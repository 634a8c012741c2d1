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

# Byte -> id lookup table: letters (either case) map to their residue id, '.' and '-' to gaps,
# everything else to <unk>.
_LUT = np.full(256, UNK, dtype=np.int64)
for _tok in ESM_TOKENS[4:31]:
    _LUT[ord(_tok)] = TOKEN_TO_ID[_tok]
    _LUT[ord(_tok.lower())] = TOKEN_TO_ID[_tok]
_IS_RESIDUE = np.zeros(PADDED_VOCAB_SIZE, dtype=bool)
_IS_RESIDUE[RESIDUE_IDS.numpy()] = True


def clean_sequence(seq: str, record: str = "<sequence>") -> str:
    """Strip whitespace and one terminal '*' (stop codon of a translated CDS); reject empties."""
    seq = "".join(seq.split())
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise UserError(f"empty sequence in record {record!r}")
    return seq


def encode_residues(seq: str, record: str = "<sequence>") -> np.ndarray:
    """Residue ids of one sequence, without special tokens (int64 numpy array)."""
    seq = clean_sequence(seq, record)
    return _LUT[np.frombuffer(seq.encode("latin-1", errors="replace"), dtype=np.uint8)]


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
