"""The ProteinGym DMS reader: wild-type recovery, positions and offsets, folders of assays.
(Bad input through the CLI: tests/eval/test_variants_cli.py.)"""

from __future__ import annotations

import pytest

from lcplm.data.dms import Substitution, find_assays, read_dms, read_wild_type_fasta
from lcplm.errors import UserError
from conftest import shared_data

WT = "MKTAYIAKQR"


def _table(path, rows, with_seq=True):
    head = "mutant,mutated_sequence,DMS_score" if with_seq else "mutant,DMS_score"
    lines = [head]
    for m, y in rows:
        s = list(WT)
        for p in m.split(":"):
            s[int(p[1:-1]) - 1] = p[-1]
        lines.append(f"{m},{''.join(s)},{y}" if with_seq else f"{m},{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wild_type_is_recovered_even_where_the_first_row_mutates(tmp_path):
    a = read_dms(_table(tmp_path / "A.csv", [("M1A:K2R", 1.0), ("T3S", 0.5), ("M1L", -1.0)]))
    assert a.wild_type == WT and a.name == "A" and a.score_bins is None
    assert a.substitutions[0] == (Substitution("M", 0, "A"), Substitution("K", 1, "R"))
    assert a.sites == [0, 1, 2] and a.scores.tolist() == [1.0, 0.5, -1.0]


def test_offset_maps_table_numbers_to_the_wild_type(tmp_path):
    p = tmp_path / "B.csv"
    p.write_text("mutant,DMS_score\nM101A,1\nR110K,2\n")
    a = read_dms(p, WT, offset=101)
    assert [s[0].index for s in a.substitutions] == [0, 9]
    with pytest.raises(UserError, match="position 100 is before the wild type's first residue"):
        p.write_text("mutant,DMS_score\nM100A,1\n")
        read_dms(p, WT, offset=101)


def test_find_assays_expands_folders_and_refuses_two_assays_of_one_name(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = _table(tmp_path / "x" / "A.csv", [("K2R", 1)])
    b = _table(tmp_path / "x" / "B.csv", [("K2R", 1)])
    assert find_assays([tmp_path / "x", a]) == [a.resolve(), b.resolve()]
    _table(tmp_path / "y" / "A.csv", [("K2R", 1)])
    with pytest.raises(UserError, match="two DMS tables are named 'A'"):
        find_assays([tmp_path / "x", tmp_path / "y"])


@pytest.mark.needs_shared_data
def test_shared_blat_table_recovers_the_uniprot_wild_type():
    a = read_dms(shared_data("fitness", "BLAT_ECOLX_Stiffler_2015.csv"))
    assert a.wild_type == read_wild_type_fasta(shared_data("fitness", "BLAT_ECOLX.fasta"))
    assert len(a) == 4996 and len(a.sites) == 263 and set(a.score_bins.tolist()) == {0, 1}


def test_an_inconsistent_later_row_is_blamed_not_the_first(tmp_path):
    """Found by the fuzz suite: with two rows, a later row whose mutant text disagrees with its own
    mutated_sequence made the wild-type recovery trust that sequence and blame row 1."""
    from lcplm.data.dms import read_dms
    from lcplm.errors import UserError

    wt = "MKTAYIAKQR"
    first = "MRTAYIAKQR"  # K2R
    later = "MKTAYIAKQS"  # R10S applied, but the table says A20C (past the end)
    p = tmp_path / "t.csv"
    p.write_text(f"mutant,mutated_sequence,DMS_score\nK2R,{first},0.1\nA20C,{later},0.2\n")
    with pytest.raises(UserError, match=r"line 3 \(mutant 'A20C'\): position 20 is past the end"):
        read_dms(p)
    p.write_text(f"mutant,mutated_sequence,DMS_score\nK2R,{first},0.1\nR10S,{later},0.2\n")
    assert read_dms(p).wild_type == wt
