"""What a wheel carries, checked from pyproject.toml, and how commands find shipped experiments.

The whole path (build the wheel, install it into a fresh virtualenv, run ``lcplm data
prepare-default``, ``lcplm pretrain`` and ``lcplm embed`` from an empty folder) is ``.ci/wheel-check``,
run by ``.ci/run``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lcplm import config
from lcplm.config import find_experiment, load_config
from lcplm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_pyproject_lists_every_package_and_maps_the_experiments():
    st = _setuptools()
    dirs = {"lcplm": REPO / "lcplm", "lcplm_kernels": REPO / "kernels" / "lcplm_kernels"}
    on_disk = set()
    for top, root in dirs.items():
        for init in root.rglob("__init__.py"):
            on_disk.add(".".join([top, *init.parent.relative_to(root).parts]))
    listed = set(st["packages"])
    assert listed - {"lcplm._experiments"} == on_disk, (sorted(on_disk - listed), sorted(listed - on_disk))
    assert st["package-dir"] == {"lcplm_kernels": "kernels/lcplm_kernels", "lcplm._experiments": "experiments"}
    assert st["package-data"]["lcplm._experiments"] == ["**/*.yaml"]
    assert st["package-data"]["lcplm_kernels"] == ["selective_scan/cpu/*.c"]
    assert (REPO / "kernels" / "lcplm_kernels" / "selective_scan" / "cpu" / "scan.c").is_file()
    assert not any(p.suffix != ".yaml" for p in (REPO / "experiments").rglob("*") if p.is_file())  # all of it ships


def test_experiments_dir_is_the_checkout_here_and_the_packaged_copy_when_there_is_one(tmp_path, monkeypatch):
    assert config.experiments_dir() == REPO / "experiments"
    package = tmp_path / "site" / "lcplm"
    (package / "_experiments" / "pretrain").mkdir(parents=True)
    monkeypatch.setattr(config, "__file__", str(package / "config.py"))
    assert config.experiments_dir() == package / "_experiments"


def test_find_experiment_names_shipped_files_from_any_folder(tmp_path, monkeypatch):
    shipped = REPO / "experiments" / "pretrain" / "tiny.yaml"
    monkeypatch.chdir(tmp_path)
    for name in ("experiments/pretrain/tiny.yaml", "pretrain/tiny.yaml", "pretrain/tiny", "tiny"):
        assert find_experiment(name, "pretrain") == shipped, name
    assert find_experiment("graph/yeast_tiny", "pretrain") == REPO / "experiments" / "graph" / "yeast_tiny.yaml"
    assert load_config(find_experiment("tiny", "pretrain")).run.name == "tiny"  # includes resolve beside the file
    # a file of the user's own comes first, even with a shipped name
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "tiny.yaml").write_text("run: {name: mine}\n")
    assert find_experiment("pretrain/tiny.yaml") == Path("pretrain/tiny.yaml")
    with pytest.raises(UserError, match=r"nope.yaml: config file not found \(here, nor among the shipped experiments"):
        find_experiment("nope.yaml", "pretrain")
    with pytest.raises(UserError, match="config file not found"):
        find_experiment(tmp_path / "absent.yaml", "pretrain")
    with pytest.raises(UserError, match="not found"):
        find_experiment("tiny")  # a bare name needs the command's folder


def test_commands_take_shipped_experiment_names_from_any_folder(tmp_path, monkeypatch, capsys):
    from lcplm.__main__ import main as cli

    monkeypatch.chdir(tmp_path)
    assert cli(["params", "tiny_esm2"]) == 0
    assert capsys.readouterr().out.startswith("model esm2: ")
    assert cli(["params", "genome/tiny_base", "model.num_layers=1"]) == 0
    assert capsys.readouterr().out.startswith("model sparse_transformer: ")
    assert cli(["params", "tiny_nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lcplm params: error: tiny_nope: config file not found")


def test_the_command_line_returns_statuses_and_dropped_convert_names_are_refused(capsys):
    from lcplm import __version__
    from lcplm.__main__ import main as cli

    assert cli(["--version"]) == 0 and capsys.readouterr().out == f"lcplm {__version__}\n"
    assert cli(["pretrain", "--help"]) == 0 and "lcplm pretrain" in capsys.readouterr().out
    for old in ("lcplm-to-ours", "ours-to-lcplm", "esm-to-esm2", "esm-to-genome", "ours-to-esm"):
        assert cli(["convert", old, "a", "b"]) == 2, old  # argparse's usage error, as a status
        assert f"invalid choice: '{old}'" in capsys.readouterr().err
    assert cli(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
