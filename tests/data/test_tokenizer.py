"""Golden token ids (ESM-2's alphabet + lcplm's specials) and the cleaning rules of DESIGN.md "Tokens"."""

from __future__ import annotations

import pytest
import torch

from lcplm.data import tokenizer as tok
from lcplm.errors import UserError

# Every id 0..37, written out by hand from DESIGN.md: a change to any of them breaks checkpoints.
GOLDEN = {
    "<cls>": 0, "<pad>": 1, "<eos>": 2, "<unk>": 3,
    "L": 4, "A": 5, "G": 6, "V": 7, "S": 8, "E": 9, "R": 10, "T": 11, "I": 12, "D": 13, "P": 14,
    "K": 15, "Q": 16, "N": 17, "F": 18, "Y": 19, "M": 20, "H": 21, "W": 22, "C": 23, "X": 24,
    "B": 25, "U": 26, "Z": 27, "O": 28, ".": 29, "-": 30, "<null_1>": 31, "<mask>": 32,
    "[BON]": 33, "[EON]": 34, "[EDGE]": 35, "[NO_EDGE]": 36, "<sep>": 37,
}


def test_every_id_is_golden():
    assert len(GOLDEN) == 38 and sorted(GOLDEN.values()) == list(range(38))
    assert tok.TOKEN_TO_ID == GOLDEN
    assert list(tok.ALL_TOKENS) == sorted(GOLDEN, key=GOLDEN.get)
    assert (tok.CLS, tok.PAD, tok.EOS, tok.UNK, tok.MASK) == (0, 1, 2, 3, 32)
    assert (tok.BON, tok.EON, tok.EDGE, tok.NO_EDGE, tok.SEP) == (33, 34, 35, 36, 37)
    assert tok.VOCAB_SIZE == 38 and tok.PADDED_VOCAB_SIZE == 40


def test_residue_and_standard_sets():
    assert sorted(tok.decode(tok.STANDARD_AA_IDS)) == sorted("ACDEFGHIKLMNPQRSTVWY")
    assert set(tok.decode(tok.RESIDUE_IDS)) == set("ACDEFGHIKLMNPQRSTVWYXBUZO")
    ids = torch.arange(-2, 45)
    expected = torch.tensor([i in set(tok.RESIDUE_IDS.tolist()) for i in ids.tolist()])
    assert torch.equal(tok.is_residue(ids), expected)  # specials, gaps, padding, out-of-range: never


def test_encode_adds_cls_eos_and_maps_each_letter():
    letters = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
    ids = tok.encode(letters)
    assert ids.dtype == torch.long
    assert ids.tolist() == [0] + [GOLDEN[c] for c in letters] + [2]
    assert tok.encode(letters, add_special_tokens=False).tolist() == [GOLDEN[c] for c in letters]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("mkva", "MKVA"),  # lower case is upper-cased
        ("MKV*", "MKV"),  # a terminal stop codon is dropped
        ("MK*V", "MK<unk>V"),  # an interior '*' is unknown
        ("MKJV", "MK<unk>V"),  # J (not in ESM-2's alphabet) is unknown
        ("MKxV", "MKXV"),  # X stays X
        ("M K\tV\r\n", "MKV"),  # whitespace is not a residue
        ("MK1V", "MK<unk>V"),  # a digit is unknown, one token per character
        ("M-K.", "M-K."),  # gaps are tokens of their own
    ],
)
def test_cleaning_rules(raw: str, expected: str):
    assert tok.decode(tok.encode(raw, add_special_tokens=False)) == expected


@pytest.mark.parametrize("bad", ["\x1c", "\x1f", "\x85", "\xa0", "é", "@", ">", "\x00", "\u4e00"])
def test_characters_that_are_not_residues_are_errors_naming_the_record(bad: str):
    """Control bytes used to vanish in the tokenizer (str.split treats 0x1C-0x1F, 0x85 and 0xA0
    as whitespace) while the FASTA index counted them: now every reader and the tokenizer reject them."""
    for seq in (f"MK{bad}V", f"{bad}{bad}"):
        with pytest.raises(UserError, match=r"record 'P9'.*is not a residue"):
            tok.encode_residues(seq, record="P9")


@pytest.mark.parametrize("raw", ["123", "**", "--..", "1*2"])
def test_sequence_without_a_letter_is_an_error(raw: str):
    with pytest.raises(UserError, match="P7"):
        tok.encode_residues(raw, record="P7")


def test_unk_counting_helpers_follow_the_tokenizer():
    for raw in [b"MK1V*", b"M*K", b"JJ", b"ACDE", b"x-.9"]:
        ids = tok.encode_residues(raw)
        assert tok.count_unk(tok.residue_bytes(raw)) == int((ids == tok.UNK).sum())


@pytest.mark.parametrize("raw", ["", "*", "  \n"])
def test_empty_sequence_names_the_record(raw: str):
    with pytest.raises(UserError, match="P12345"):
        tok.encode(raw, record="P12345")


def test_pad_batch():
    ids, lengths = tok.pad_batch([tok.encode("MK"), tok.encode("MKVLA")], pad_to_multiple_of=8)
    assert ids.shape == (2, 8) and lengths.tolist() == [4, 7]
    assert ids[0, 4:].eq(tok.PAD).all() and ids[1, 7:].eq(tok.PAD).all()


def test_matches_fair_esm_alphabet():
    esm = pytest.importorskip("esm", reason="fair-esm not installed (pip install fair-esm)")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    assert list(alphabet.all_toks) == list(tok.ESM_TOKENS)
    assert (alphabet.cls_idx, alphabet.padding_idx, alphabet.eos_idx, alphabet.unk_idx, alphabet.mask_idx) == (
        tok.CLS, tok.PAD, tok.EOS, tok.UNK, tok.MASK,
    )
    seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWUZOBX"
    _, _, esm_ids = alphabet.get_batch_converter()([("p", seq)])
    assert esm_ids[0].tolist() == tok.encode(seq).tolist()
