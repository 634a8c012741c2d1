"""Config validation, and every shipped experiment YAML loads against its schema."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from lcplm.config import PretrainConfig, load_config
from lcplm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

# Directories whose YAML files are not pretraining experiments, and the schema they follow.
SCHEMAS = {
    "sweeps": "lcplm.train.sweep:SweepConfig",
    "slurm": "lcplm.train.slurm:SlurmConfig",
    "downstream": "lcplm.eval.downstream:DownstreamConfig",
    "claims": "lcplm.eval.claims.spec:ClaimConfig",
    "claims/tiers": "lcplm.eval.claims.spec:SmokeConfig",
    "claims/downstream": "lcplm.eval.downstream:DownstreamConfig",
    "claims/pretrain": None,  # pretraining experiments of the claims' arms
}


# experiments of these folders train on this datamodule
DATA_OF_FOLDER = {"graph": "ppi_walks", "genome": "genome"}


def _schema_for(path: Path):
    rel = path.relative_to(EXPERIMENTS)
    key = "/".join(rel.parts[:2]) if "/".join(rel.parts[:2]) in SCHEMAS else rel.parts[0]
    target = SCHEMAS.get(key)
    if target is None:
        return PretrainConfig
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


ALL_YAML = sorted(EXPERIMENTS.rglob("*.yaml"))


def test_there_are_shipped_experiments():
    assert (EXPERIMENTS / "pretrain" / "tiny.yaml") in ALL_YAML


@pytest.mark.parametrize("path", ALL_YAML, ids=[str(p.relative_to(EXPERIMENTS)) for p in ALL_YAML])
def test_shipped_yaml_loads(path: Path):
    cfg = load_config(path, [], schema=_schema_for(path))
    assert cfg is not None
    folder = path.relative_to(EXPERIMENTS).parts[0]
    if folder in DATA_OF_FOLDER:  # each folder's experiments train on one kind of data
        assert cfg.data.name == DATA_OF_FOLDER[folder], path


TOP_SECTIONS = {"model", "data", "optim", "trainer", "run", "task", "include"}


def undocumented_keys(text: str) -> list[str]:
    """Key lines of a YAML text that carry no comment: neither on the line nor on the line above.

    Top-level sections named by the schema (model, data, ...) need none; nested section headers
    and every leaf do (litgpt's config hub habit). List items are values, not keys.
    """
    lines = text.splitlines()
    bad = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_]\w*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        if indent == 0 and key in TOP_SECTIONS and not rest.split("#")[0].strip():
            continue
        commented = " #" in rest or rest.strip().startswith("#") or (i > 0 and lines[i - 1].strip().startswith("#"))
        if not commented:
            bad.append(f"line {i + 1}: {line.strip()}")
    return bad


def test_undocumented_keys_are_found():
    text = "# what this is\nmodel:\n  d_model: 8   # width\n  n_layer: 2\ndata:\n  # the source\n  name: fasta\n  sub:\n    x: 1  # x\n"
    assert undocumented_keys(text) == ["line 4: n_layer: 2", "line 8: sub:"]


@pytest.mark.parametrize("path", ALL_YAML, ids=[str(p.relative_to(EXPERIMENTS)) for p in ALL_YAML])
def test_shipped_yaml_documents_its_keys(path: Path):
    """A shipped YAML opens with a comment saying what it is for, and every key carries a comment."""
    text = path.read_text()
    assert text.startswith("#"), f"{path}: start with a comment saying what this config is for"
    assert undocumented_keys(text) == [], f"{path}: keys without a comment"


def test_tiny_experiment_resolves_sections():
    cfg = load_config(EXPERIMENTS / "pretrain" / "tiny.yaml")
    assert cfg.model.name == "bimamba" and cfg.data.name == "fasta"
    assert cfg.run.name == "tiny"


def test_lcplm_790m_shape():
    cfg = load_config(EXPERIMENTS / "pretrain" / "lcplm_790m.yaml")
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.model.d_state, cfg.model.expand) == (1536, 48, 16, 2)


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_include_and_overrides_apply_in_order(tmp_path: Path):
    _write(tmp_path, "optim:\n  lr: 0.5\n  warmup_steps: 7\n", "base.yaml")
    exp = _write(tmp_path, "include: [base.yaml]\noptim:\n  lr: 0.25\n")
    cfg = load_config(exp, ["optim.warmup_steps=9"])
    assert cfg.optim.lr == 0.25 and cfg.optim.warmup_steps == 9


@pytest.mark.parametrize(
    "text, overrides, fragment",
    [
        ("optim:\n  lrr: 0.1\n", [], "lrr"),  # unknown key in a fixed section
        ("model:\n  name: bimamba\n  d_modell: 8\n", [], "d_modell"),  # unknown key in a polymorphic one
        ("bogus: 1\n", [], "bogus"),  # unknown top-level key
        ("optim:\n  lr: fast\n", [], "lr"),  # wrong type
        ("trainer:\n  max_steps: 1.5\n", [], "max_steps"),
        ("model:\n  name: transformer9000\n", [], "model.name"),
        ("{}\n", ["trainer.max_stepz=3"], "max_stepz"),
        ("{}\n", ["novalue"], "key=value"),
        ("include: [nope.yaml]\n", [], "nope.yaml"),
        ("optim: [1, 2\n", [], "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, overrides: list[str], fragment: str):
    exp = _write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_config(exp, overrides)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_include_cycle_is_an_error(tmp_path: Path):
    _write(tmp_path, "include: [b.yaml]\n", "a.yaml")
    _write(tmp_path, "include: [a.yaml]\n", "b.yaml")
    with pytest.raises(UserError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_split_file_and_overrides():
    from lcplm.config import split_file_and_overrides

    assert split_file_and_overrides(["exp.yaml", "a=1", "b.c=2"]) == ("exp.yaml", ["a=1", "b.c=2"])
    assert split_file_and_overrides(["a=1"]) == (None, ["a=1"])
    assert split_file_and_overrides([]) == (None, [])
    with pytest.raises(UserError, match="unexpected argument 'two.yaml': give one EXPERIMENT.yaml"):
        split_file_and_overrides(["one.yaml", "two.yaml"])
    with pytest.raises(UserError, match="unexpected argument 'late.yaml': give one SWEEP.yaml"):
        split_file_and_overrides(["a=1", "late.yaml"], "SWEEP.yaml")
