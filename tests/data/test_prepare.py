"""`lcplm data prepare-default` and `lcplm data stats`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import shared_data
from lcplm.__main__ import main as cli
from lcplm.data import prepare
from lcplm.data.cache import default_proteome_path
from lcplm.data.datamodules.fasta import FastaDataConfig, FastaDataModule
from lcplm.data.fasta import FastaIndex
from lcplm.errors import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCPLM_CACHE_DIR", str(tmp_path / "cache"))


def test_prepare_default_copies_validates_and_is_idempotent(tmp_path: Path, capsys):
    assert cli(["data", "prepare-default"]) == 0
    dest = default_proteome_path()
    assert dest.is_file() and dest.is_relative_to(tmp_path / "cache")
    assert "2,100 proteins" in capsys.readouterr().out
    assert len(FastaIndex(dest)) == 2100
    stamp = dest.stat().st_mtime_ns
    assert cli(["data", "prepare-default"]) == 0
    assert "already present" in capsys.readouterr().out and dest.stat().st_mtime_ns == stamp
    # and training can read it through data.path = default
    dm = FastaDataModule(FastaDataConfig(max_length=256, max_tokens=2048), seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].numel() <= 2048 and len(dm.train_indices) + len(dm.val_indices) == 2100


def test_prepare_with_phages_into_an_explicit_cache_dir(tmp_path: Path):
    paths = prepare.prepare_default(str(tmp_path / "elsewhere"), with_phages=True)
    assert [p.name for p in paths] == ["938293.PRJEB85.HG003687.faa", "phage_Agate.faa", "phage_Topaz.faa"]
    assert [len(FastaIndex(p, tmp_path / "elsewhere")) for p in paths[1:]] == [203, 31]


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyhmmer" else real(name, *a))
    with pytest.raises(UserError, match="pip install pyhmmer"):
        prepare.prepare_default()


def test_stats_prints_lengths_and_batching(tmp_path: Path, capsys):
    p = tmp_path / "x.fa"
    p.write_text("".join(f">p{i}\n{'M' * (20 + 7 * i)}\n" for i in range(50)))
    assert cli(["data", "stats", str(p), "--max-length", "128", "--max-tokens", "1024"]) == 0
    out = capsys.readouterr().out
    assert "50 records" in out and "max 363" in out
    for name in ("unsorted (naive)", "length-bucketed", "packed"):
        assert name in out


def test_stats_errors_are_one_line(tmp_path: Path, capsys):
    assert cli(["data", "stats", str(tmp_path / "absent.fa")]) == 2
    err = capsys.readouterr().err.strip()
    assert "absent.fa" in err and "not found" in err and "\n" not in err
    assert cli(["data", "stats", "default"]) == 2
    assert "prepare-default" in capsys.readouterr().err


@pytest.mark.needs_shared_data
def test_stats_on_shared_astral(capsys):
    p = shared_data("homology", "astral-scope-2.07-40.fa")
    assert cli(["data", "stats", str(p), "--max-tokens", "8192"]) == 0
    assert "14,323 records" in capsys.readouterr().out


def test_stats_reports_unk_characters_and_other_formats(tmp_path: Path, capsys):
    p = tmp_path / "x.fa"
    p.write_text(">a\nMK1V*\n>b\nM*KV\n>c\nMKV\n")
    assert cli(["data", "stats", str(p)]) == 0
    assert "3 records, 11 residues; 2 characters read as <unk>" in capsys.readouterr().out
    edges = tmp_path / "e.tsv"
    edges.write_text("a b 0.5\nb c 0.4\nc c\n")
    assert cli(["data", "stats", "--format", "pairs", str(edges)]) == 0
    out = capsys.readouterr().out
    assert "3 lines, 2 edges (1 undirected pairs, 1 self-loops); 1 failed the edge rule (score < 0.5" in out
    assert cli(["data", "stats", "--format", "pairs", "--modes", "binding", str(edges)]) == 2
    assert "--modes only applies to edge_format string_actions" in capsys.readouterr().err
