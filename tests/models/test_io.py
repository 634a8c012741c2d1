"""Model files (lcplm.models.io): round trips for every kind, transformers with trust_remote_code,
LC-PLM's and ESM-2's layouts, run checkpoints, init_from, bad inputs, and the layer rule."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lcplm.__main__ import main as cli
from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import MODELS, build_model, convert, io
from lcplm.models.bimamba import BiMambaConfig
from lcplm.models.esm2 import ESM2Config
from lcplm.models.sparse_transformer import SparseTransformerConfig

from conftest import write_run_checkpoint

PACKAGE = Path(io.__file__).resolve().parents[1]

VARIANTS = {
    "bimamba": lambda: BiMambaConfig(d_model=16, n_layer=2, d_state=4, scan_backend="reference"),
    "bimamba-bias-tied": lambda: BiMambaConfig(d_model=16, n_layer=2, d_state=4, d_conv=3, expand=3, dt_rank=3,
                                               bias=True, conv_bias=False, tie_embeddings=True, residual_in_fp32=False,
                                               scan_backend="reference"),
    "sparse_transformer": lambda: SparseTransformerConfig(num_layers=2, hidden=32, heads=2, ffn=64,
                                                          attention_backend="reference"),
    "sparse_transformer-untied-protein": lambda: SparseTransformerConfig(num_layers=2, hidden=32, heads=4, ffn=48,
                                                                        tie_embeddings=False, positions="protein",
                                                                        rotary_base=500.0, attention_backend="dense"),
}
VARIANTS["bimamba-unshared"] = lambda: BiMambaConfig(d_model=16, n_layer=2, d_state=4, bias=True,
                                                     scan_backend="reference", share_projections=False)
VARIANTS["esm2"] = lambda: ESM2Config(num_layers=2, hidden=32, heads=4, ffn=64, attention_backend="reference")
VARIANTS["esm2-untied-40"] = lambda: ESM2Config(num_layers=1, hidden=16, heads=2, ffn=32, vocab_size=40,
                                                tie_embeddings=False, attention_backend="dense")


def make_model(variant: str, seed: int = 0):
    """A small model whose every parameter matters (norms and biases moved off their init)."""
    torch.manual_seed(seed)
    model = build_model(VARIANTS[variant]())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or name.endswith(".D"):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def batch(model) -> dict[str, torch.Tensor]:
    """A padded batch; for the genome model, windows of several proteins with a pair pattern."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 29, (3, 23), generator=g)
    lengths = torch.tensor([23, 9, 16])
    ids[0, [2, 11]] = tokenizer.MASK
    ids[2, 5] = tokenizer.MASK
    out = {"input_ids": ids, "lengths": lengths}
    if "pid" in type(model).keyword_inputs:
        pid = torch.tensor([[0] * 8 + [1] * 9 + [2] * 6, [0] * 4 + [1] * 5 + [-1] * 14, [0] * 7 + [1] * 2 + [2] * 7 + [-1] * 7])
        allowed = torch.eye(3, dtype=torch.bool).repeat(3, 1, 1)
        allowed[0, 0, 1] = allowed[0, 1, 0] = allowed[2, 1, 2] = allowed[2, 2, 1] = allowed[1, 0, 1] = True
        out.update(pid=pid, allowed=allowed)
    return out


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(model))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def one_line_error(argv: list[str], capsys) -> str:
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------- our layout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_pretrained_then_from_pretrained_is_exact(variant, tmp_path):
    model = make_model(variant)
    out = io.save_pretrained(model, tmp_path / "m")
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "model.safetensors", *io.MODELING_FILES}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lcplm" and config["lcplm_config"] == dataclasses.asdict(model.cfg)
    assert config["tie_word_embeddings"] == bool(io.tied_parameters(model))
    back = io.from_pretrained(out)
    assert type(back) is type(model) and back.cfg == model.cfg and not back.training
    assert_same_weights(back, model)
    assert torch.equal(outputs(back), outputs(model))
    if io.tied_parameters(model):  # stored once, tied again on load
        from safetensors.torch import load_file

        assert set(io.tied_parameters(model)).isdisjoint(load_file(str(out / "model.safetensors")))
        assert io.tied_parameters(back) == io.tied_parameters(model)


@pytest.mark.parametrize("variant", ["bimamba", "sparse_transformer"])
def test_run_checkpoint_exports_and_loads_the_same_model(variant, tmp_path, capsys):
    model = make_model(variant)
    ckpt = tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt"
    write_run_checkpoint(model, ckpt)
    direct = io.from_pretrained(ckpt)
    assert_same_weights(direct, model)
    assert cli(["export", str(ckpt), str(tmp_path / "export")]) == 0
    assert "wrote" in capsys.readouterr().out
    exported = io.from_pretrained(tmp_path / "export")
    assert exported.cfg == model.cfg
    assert torch.equal(outputs(exported), outputs(model))
    # key=value settings change the stored runtime choices, not the weights
    other = "dense" if variant.startswith("sparse") else "chunked"
    key = "attention_backend" if variant.startswith("sparse") else "scan_backend"
    assert cli(["export", str(ckpt), str(tmp_path / "export2"), f"{key}={other}", "--no-modeling"]) == 0
    again = io.from_pretrained(tmp_path / "export2")
    assert getattr(again.cfg, key) == other
    assert not (tmp_path / "export2" / "modeling_lcplm.py").exists()
    assert "auto_map" not in json.loads((tmp_path / "export2" / "config.json").read_text())


def test_stored_configs_with_a_retired_key_still_load(tmp_path):
    model = make_model("bimamba")
    out = io.save_pretrained(model, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config["lcplm_config"]["activation_checkpointing"] = True  # moved to trainer.activation_checkpointing
    (out / "config.json").write_text(json.dumps(config))
    assert_same_weights(io.from_pretrained(out), model)


def test_sharded_weights_round_trip_and_stale_files_are_replaced(tmp_path):
    model = make_model("sparse_transformer")
    out = io.save_pretrained(model, tmp_path / "m", max_shard_bytes=20_000)
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    index = json.loads((out / io.INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert_same_weights(io.from_pretrained(out), model)
    # writing a single-file model into the same directory removes the shards and the index
    io.save_pretrained(make_model("bimamba"), out)
    assert not list(out.glob("model-*-of-*.safetensors")) and not (out / io.INDEX_FILE).exists()
    assert io.from_pretrained(out).cfg.name == "bimamba"


def test_init_from_loads_weights_of_any_model_file_into_the_experiment_model(tmp_path):
    from lcplm.train.checkpoint import load_weights

    model = make_model("bimamba")
    write_run_checkpoint(model, tmp_path / "a.ckpt")
    io.save_pretrained(model, tmp_path / "dir")
    for src in (tmp_path / "a.ckpt", tmp_path / "dir"):
        fresh = build_model(dataclasses.replace(model.cfg, scan_backend="chunked"))  # architecture from the experiment
        load_weights(fresh, src)
        assert_same_weights(fresh, model)
        assert fresh.cfg.scan_backend == "chunked"
    genome = build_model(VARIANTS["sparse_transformer"]())
    with pytest.raises(UserError, match="holds a 'bimamba' model, not 'sparse_transformer'"):
        load_weights(genome, tmp_path / "dir")
    bigger = build_model(dataclasses.replace(model.cfg, d_model=32))
    with pytest.raises(UserError, match="shape mismatch at"):
        load_weights(bigger, tmp_path / "a.ckpt")


# ----------------------------------------------------------------------------- transformers


def _hf_inputs(model) -> dict[str, torch.Tensor]:
    b = batch(model)
    lengths = b.pop("lengths")
    b["attention_mask"] = (torch.arange(b["input_ids"].shape[1])[None] < lengths[:, None]).long()
    return b


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_loads_the_export_with_trust_remote_code_and_equal_outputs(variant, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = make_model(variant)
    out = io.save_pretrained(model, tmp_path / "hf_export")
    for name in io.MODELING_FILES:  # self-contained: torch and transformers only
        assert all(m.split(".")[0] in {"torch", "transformers", "__future__", "math", "typing"} for m in _imports(out / name)), name
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = hf(**_hf_inputs(model)).logits
        hidden = base(**_hf_inputs(model)).last_hidden_state
        ours = model(**batch(model))
        ours_hidden = model.encode(**batch(model))
    assert ours.abs().max() > 0.1  # not a trivially small output: 1e-5 below is <1e-4 of it
    # fp32 on both sides; the reference scan / attention sum in another order: ~1e-6 observed
    torch.testing.assert_close(logits, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden, ours_hidden, rtol=1e-5, atol=1e-5)
    tied = bool(io.tied_parameters(model))
    assert (hf.get_output_embeddings().weight is hf.get_input_embeddings().weight) == tied
    # labels give the masked-LM loss over the targets
    labels = torch.full_like(_hf_inputs(model)["input_ids"], -100)
    labels[0, 3] = 7
    with torch.no_grad():
        loss = hf(**_hf_inputs(model), labels=labels).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(ours[0, 3:4], labels[0, 3:4]), rtol=1e-5, atol=1e-5)


def test_an_export_loads_in_a_process_where_lcplm_cannot_be_imported(tmp_path):
    pytest.importorskip("transformers")
    import os
    import subprocess
    import sys

    model = make_model("bimamba-unshared")
    io.save_pretrained(model, tmp_path / "model")
    b = _hf_inputs(model)
    torch.save({"inputs": b, "logits": outputs(model)}, tmp_path / "expected.pt")
    script = f"""
import sys
sys.modules["lcplm"] = None  # any import of lcplm fails
import torch, transformers
hf = transformers.AutoModelForMaskedLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
ref = torch.load({str(tmp_path / "expected.pt")!r})
with torch.no_grad():
    torch.testing.assert_close(hf(**ref["inputs"]).logits, ref["logits"], rtol=1e-5, atol=1e-5)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_transformers_reads_sharded_exports(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = make_model("bimamba")
    out = io.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=10_000)
    assert (out / io.INDEX_FILE).is_file()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(**_hf_inputs(model)).logits, outputs(model), rtol=1e-5, atol=1e-5)


def test_lcplm_released_layout_export_loads_in_transformers(tmp_path, capsys):
    """The ours-to-LC-PLM export ships the modeling code its auto_map names."""
    transformers = pytest.importorskip("transformers")
    model = make_model("bimamba-bias-tied")  # out_proj bias: LC-PLM adds half of ours per direction
    write_run_checkpoint(model, tmp_path / "a.ckpt")
    assert cli(["export", str(tmp_path / "a.ckpt"), str(tmp_path / "released"), "--format", "lcplm-released"]) == 0
    out = tmp_path / "released"
    config = json.loads((out / "config.json").read_text())
    for target in config["auto_map"].values():
        module, cls = target.split(".")
        assert (out / f"{module}.py").is_file() and f"class {cls}(" in (out / f"{module}.py").read_text()
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    assert type(hf).__name__ == "LcPlmForMaskedLM" and not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        logits = hf.eval()(**_hf_inputs(model)).logits
    assert logits.shape[-1] == convert.LCPLM_VOCAB
    torch.testing.assert_close(logits[..., : model.cfg.vocab_size], outputs(model), rtol=1e-5, atol=1e-5)
    # and back through our reader
    assert_same_weights(io.from_pretrained(out, scan_backend="reference"), model)
    # LcPlm's base-model prefix has no shipped class: no auto_map rather than a broken one
    assert cli(["convert", "to-lcplm", str(tmp_path / "a.ckpt"), str(tmp_path / "base"), "--prefix", "backbone."]) == 0
    assert "auto_map" not in json.loads((tmp_path / "base" / "config.json").read_text())
    assert not (tmp_path / "base" / "modeling_lcplm.py").exists()


@pytest.mark.parametrize("tie", [True, False])
def test_genome_model_exports_to_hf_esm2_and_back(tie, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = make_model("sparse_transformer")
    if not tie:
        model = build_model(dataclasses.replace(model.cfg, tie_embeddings=False))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.eval()
    write_run_checkpoint(model, tmp_path / "g.ckpt")
    assert cli(["export", str(tmp_path / "g.ckpt"), str(tmp_path / "esm"), "--format", "hf-esm"]) == 0
    hf, info = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "esm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    ids = tokenizer.encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ")[None]
    ids[0, [4, 9]] = tokenizer.MASK
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits
    # one protein: ESM-2 and the genome model compute the same function (fp32, reduction order)
    torch.testing.assert_close(theirs, ours[..., :33], rtol=0, atol=1e-4)
    back = io.from_pretrained(tmp_path / "esm", attention_backend="reference")
    own, new = model.state_dict(), back.state_dict()
    rows = {"embed.weight", "decoder.weight", "head_bias"}
    for k in own:
        if k in rows:  # ESM-2 has 33 rows: ours beyond them are rebuilt (<sep> from <eos>, others zero)
            assert torch.equal(new[k][:33], own[k][:33]), k
            if k != "head_bias":
                assert torch.equal(new[k][tokenizer.SEP], own[k][tokenizer.EOS]), k
        else:
            assert torch.equal(new[k], own[k]), k
    with torch.no_grad():
        assert torch.equal(back(ids)[..., :33], ours[..., :33])
    err = one_line_error(["export", str(tmp_path / "g.ckpt"), str(tmp_path / "x"), "--format", "hf-esm",
                          "rotary_base=500.0"], capsys)
    assert "rotary_base" in err


def test_only_the_genome_model_exports_to_esm_and_only_bimamba_to_lcplm(tmp_path, capsys):
    write_run_checkpoint(make_model("bimamba"), tmp_path / "b.ckpt")
    write_run_checkpoint(make_model("sparse_transformer"), tmp_path / "s.ckpt")
    assert "ESM-2" in one_line_error(["export", str(tmp_path / "b.ckpt"), str(tmp_path / "o"), "--format", "hf-esm"], capsys)
    err = one_line_error(["export", str(tmp_path / "s.ckpt"), str(tmp_path / "o"), "--format", "lcplm-released"], capsys)
    assert "only 'bimamba'" in err


# ----------------------------------------------------------------------------- bad inputs


def test_bad_model_files_are_one_line_errors(tmp_path, capsys):
    good = io.save_pretrained(make_model("bimamba"), tmp_path / "good")
    out = str(tmp_path / "out")

    def check(src, message):
        err = one_line_error(["export", str(src), out], capsys)
        assert message in err, err

    check(tmp_path / "nope", "not found")
    (tmp_path / "empty_dir").mkdir()
    check(tmp_path / "empty_dir", "no config.json")

    def variant(name, edit=None, weights: bytes | None = None):
        d = tmp_path / name
        d.mkdir()
        config = json.loads((good / "config.json").read_text())
        if edit:
            edit(config)
        (d / "config.json").write_text(json.dumps(config))
        (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes() if weights is None else weights)
        return d

    check(variant("kind", lambda c: c["lcplm_config"].update(name="nope")), "model.name must be one of")
    check(variant("unknown_key", lambda c: c["lcplm_config"].update(depth=3)), "depth")
    check(variant("model_type", lambda c: c.update(model_type="bert")), "model_type 'bert' is not a format lcplm reads")
    check(variant("no_config", lambda c: c.pop("lcplm_config")), "no model config with a 'name'")
    check(variant("shape", lambda c: c["lcplm_config"].update(d_state=8)), "shape mismatch at")
    full = (good / "model.safetensors").read_bytes()
    check(variant("truncated", weights=full[: len(full) // 2]), "cannot read weights")
    check(variant("empty_weights", weights=b""), "cannot read weights")
    (tmp_path / "bad_json").mkdir()
    (tmp_path / "bad_json" / "config.json").write_text("{not json")
    check(tmp_path / "bad_json", "not valid JSON")

    sharded = io.save_pretrained(make_model("bimamba"), tmp_path / "sharded", max_shard_bytes=10_000)
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    check(sharded, "weights file not found")
    index = json.loads((sharded / io.INDEX_FILE).read_text())
    index["weight_map"] = {k: "../elsewhere.safetensors" for k in index["weight_map"]}
    (sharded / io.INDEX_FILE).write_text(json.dumps(index))
    check(sharded, "is not a file name in the directory")

    (tmp_path / "empty.ckpt").write_bytes(b"")
    check(tmp_path / "empty.ckpt", "empty file")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    check(tmp_path / "garbage.ckpt", "cannot read checkpoint")
    ckpt = tmp_path / "ok.ckpt"
    write_run_checkpoint(make_model("bimamba"), ckpt)
    data = ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    check(tmp_path / "truncated.ckpt", "cannot read checkpoint")
    torch.save({"state_dict": {}, "x": _Unsafe(tmp_path / "pwned")}, tmp_path / "unsafe.ckpt")
    check(tmp_path / "unsafe.ckpt", "refused")
    assert not (tmp_path / "pwned").exists()
    torch.save({"state_dict": {"model.w": torch.ones(1)}}, tmp_path / "no_config.ckpt")
    check(tmp_path / "no_config.ckpt", "no lcplm experiment config")
    assert "not a setting of 'bimamba' models" in one_line_error(["export", str(good), out, "width=3"], capsys)


class _Unsafe:
    """A pickle that would create a file if unpickled without weights_only."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


# ----------------------------------------------------------------------------- writers (layering: tests/test_layers.py)


def test_model_files_are_written_only_through_the_atomic_writer():
    """No module calls safetensors' file writer or torch.save itself, except the two places that
    hand torch.save to lcplm.files (the Lightning CheckpointIO and io's pytorch_model.bin)."""
    allowed_torch_save = {"train/checkpoint_io.py", "models/io.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                base = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                if name == "save_file" or (name == "save" and base == "torch" and rel not in allowed_torch_save):
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_every_registered_kind_round_trips_from_its_default_config(tmp_path):
    """New kinds need no edit in io: it dispatches on the registry and the config dataclass."""
    for kind in MODELS:
        from lcplm.models import model_class

        cls = model_class(kind)
        torch.manual_seed(0)
        model = cls(cls.config_class()).eval()
        out = io.save_pretrained(model, tmp_path / kind, modeling=io.reference_covers(model) is None)
        assert_same_weights(io.from_pretrained(out), model)
