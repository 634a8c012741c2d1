"""lcplm eval-lm: length bins, identical masks for every checkpoint and batching, the loss and
its intervals, positional limits, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lcplm.__main__ import main as cli
from lcplm.config import PretrainConfig, to_dict
from lcplm.data import tokenizer as tok
from lcplm.errors import UserError
from lcplm.eval import lm
from lcplm.files import atomic_write_with
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
from lcplm.models.esm2 import ESM2Config, ESM2LM
from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

AA = "ACDEFGHIKLMNPQRSTVWY"


def write_fasta(path, residue_lengths, seed=0):
    rng = np.random.default_rng(seed)
    path.write_text("".join(f">s{i:03d} d\n{''.join(rng.choice(list(AA), n))}\n" for i, n in enumerate(residue_lengths)))
    return path


def write_ckpt(path, model, max_length=64, task="mlm"):
    cfg = to_dict(PretrainConfig(model=model.cfg, data={"name": "fasta", "max_length": max_length}))
    cfg["task"]["name"] = task
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda f: torch.save({"state_dict": state, "hyper_parameters": {"config": cfg}}, f))
    return str(path)


def bimamba(seed=0):
    torch.manual_seed(seed)
    return BiMambaLM(BiMambaConfig(d_model=16, n_layer=1, d_state=4)).eval()


def esm_like(seed=0):
    torch.manual_seed(seed)
    return SparseGenomeLM(SparseTransformerConfig(num_layers=1, hidden=16, heads=2, ffn=32, attention_backend="dense")).eval()


# 62 residues = 64 tokens (bin 1-64), 63 = 65 (bin 65-128), 126 = 128, 300 = 302 > 256 (beyond)
LENGTHS = [10, 62, 63, 100, 126, 30, 300, 50, 20]


@pytest.fixture
def fasta(tmp_path):
    return str(write_fasta(tmp_path / "held.fasta", LENGTHS))


def test_bins_count_tokens_and_report_empty_and_beyond(tmp_path, fasta):
    ms = lm.build_masked_set(fasta, (64, 128, 192, 256), None, 0, 0.15, str(tmp_path / "c"))
    assert ms.token_lengths.tolist() == [12, 64, 65, 102, 128, 32, 52, 22]
    assert ms.bins.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert ms.n_beyond == 1 and ms.n_per_bin_in_file == [5, 3, 0, 0]
    assert lm.bin_labels((64, 128, 192, 256)) == ["1-64", "65-128", "129-192", "193-256"]
    res = lm.evaluate([write_ckpt(tmp_path / "a.ckpt", bimamba())], fasta, (64, 128, 192, 256), n_boot=200,
                      cache_dir=str(tmp_path / "c"), log=lambda s: None)
    rows = res["models"][0]["bins"]
    assert [r["state"] for r in rows] == ["ok", "ok", "empty", "empty"]
    assert "loss" not in rows[2] and res["data"]["n_beyond_last_bin"] == 1
    md = lm.markdown(res)
    assert "| 129-192 | 0 | empty |" in md and "nan" not in md.lower()
    json.dumps(res, allow_nan=False)  # no NaN anywhere in the JSON
    for bad in ("64,32", "2,8", "a,b", ""):
        with pytest.raises(UserError, match="--bins"):
            lm.parse_bins(bad)


def test_per_bin_choice_depends_on_ids_only_and_masks_on_the_record_only(tmp_path, fasta):
    full = lm.build_masked_set(fasta, (64, 128), None, 3, 0.15, str(tmp_path / "c"))
    some = lm.build_masked_set(fasta, (64, 128), 2, 3, 0.15, str(tmp_path / "c"))
    assert np.bincount(some.bins, minlength=2).tolist() == [2, 2]
    for i, rid in enumerate(some.ids):  # the same record gets the same corruption in either selection
        j = full.ids.index(rid)
        assert np.array_equal(some.inputs[i], full.inputs[j]) and np.array_equal(some.labels[i], full.labels[j])
    other_seed = lm.build_masked_set(fasta, (64, 128), None, 4, 0.15, str(tmp_path / "c"))
    assert other_seed.digest != full.digest
    # corruption as in training: targets are residues only, some shown as <mask>
    lab = np.concatenate(full.labels)
    inp = np.concatenate(full.inputs)
    assert (lab[lab >= 0] >= 4).all() and (inp[lab >= 0] == tok.MASK).sum() > 0


def test_every_checkpoint_and_every_batching_sees_the_same_masks(tmp_path, fasta):
    a, b = write_ckpt(tmp_path / "a.ckpt", bimamba(0)), write_ckpt(tmp_path / "e.ckpt", esm_like(1))
    kw = dict(edges=(64, 128), n_boot=200, cache_dir=str(tmp_path / "c"), log=lambda s: None)
    big = lm.evaluate([f"bim={a}", f"esm={b}"], fasta, max_tokens=4096, **kw)
    small = lm.evaluate([f"bim={a}"], fasta, max_tokens=70, **kw)  # one sequence per batch, mostly
    digests = {m["mask_digest"] for m in big["models"] + small["models"]}
    assert len(digests) == 1 and big["models"][0]["kind"] == "bimamba" and big["models"][1]["kind"] == "sparse_transformer"
    np.testing.assert_allclose(big["models"][0]["per_sequence"]["mask_nll"], small["models"][0]["per_sequence"]["mask_nll"],
                               rtol=1e-5, atol=1e-6)
    assert big["models"][0]["per_sequence"]["mask_n"] == small["models"][0]["per_sequence"]["mask_n"]


def test_loss_is_the_token_weighted_mean_at_mask_positions(tmp_path, fasta):
    model = bimamba(2)
    path = write_ckpt(tmp_path / "a.ckpt", model)
    res = lm.evaluate([path], fasta, (64, 128), n_boot=300, cache_dir=str(tmp_path / "c"), log=lambda s: None)
    ms = lm.build_masked_set(fasta, (64, 128), None, 0, 0.15, str(tmp_path / "c"))
    nll_sum, n_sum = np.zeros(2), np.zeros(2)
    per_seq = res["models"][0]["per_sequence"]
    for i in range(len(ms.ids)):  # each sequence alone, by hand
        x = torch.from_numpy(ms.inputs[i])[None]
        y = torch.from_numpy(ms.labels[i])
        with torch.no_grad():
            logp = F.log_softmax(model(x)[0].double(), -1)
        shown = (y >= 0) & (x[0] == tok.MASK)
        nll = float(-logp[shown, y[shown]].sum())
        assert per_seq["mask_nll"][i] == pytest.approx(nll, rel=1e-5, abs=1e-5)
        assert per_seq["mask_n"][i] == int(shown.sum())
        nll_sum[ms.bins[i]] += nll
        n_sum[ms.bins[i]] += int(shown.sum())
    for b in range(2):
        iv = res["models"][0]["bins"][b]["loss"]
        assert iv["estimate"] == pytest.approx(nll_sum[b] / n_sum[b], rel=1e-5)
        assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["n"] == int((ms.bins == b).sum())
    overall = res["models"][0]["overall"]["loss"]["estimate"]
    assert overall == pytest.approx(nll_sum.sum() / n_sum.sum(), rel=1e-5)
    # near uniform over the 40-row head at initialisation: about log(40) nats
    assert abs(overall - np.log(tok.PADDED_VOCAB_SIZE)) < 0.5


def test_sequences_over_a_positional_limit_are_reported_never_cropped(tmp_path, fasta, monkeypatch):
    path = write_ckpt(tmp_path / "a.ckpt", bimamba())
    real = lm.load_lm

    def limited(p):
        model, cfg, tl = real(p)
        cfg.max_positions = 64  # as a model with learned positions would declare
        return model, cfg, tl

    monkeypatch.setattr(lm, "load_lm", limited)
    res = lm.evaluate([path], fasta, (64, 128), n_boot=200, cache_dir=str(tmp_path / "c"), log=lambda s: None)
    m = res["models"][0]
    assert m["positional_limit"] == 64
    assert m["bins"][0]["state"] == "ok" and m["bins"][0]["n_over_limit"] == 0
    assert m["bins"][1] | {"state": "over_limit", "n_over_limit": 3, "n_evaluated": 0} == m["bins"][1]
    assert "over limit (3)" in lm.markdown(res)
    assert m["per_sequence"]["mask_nll"][2] is None


def test_cli_writes_json_table_and_plot_and_warns_without_extrapolation(tmp_path, fasta, capsys):
    a = write_ckpt(tmp_path / "a.ckpt", bimamba(0), max_length=512)
    out = tmp_path / "out"
    rc = cli(["eval-lm", a, "--fasta", fasta, "--bins", "64,128", "--out", str(out), "--bootstrap", "200",
              "--cache-dir", str(tmp_path / "c")])
    cap = capsys.readouterr()
    assert rc == 0
    assert "no evaluated sequence is longer than its training length (512 tokens)" in cap.err
    res = json.loads((out / "lm_eval.json").read_text())
    assert res["models"][0]["extrapolation_evaluated"] is False and res["models"][0]["label"] == "a"
    assert (out / "lm_eval.md").read_text().startswith("# Held-out masked-LM loss") and (out / "lm_eval.png").stat().st_size > 1000
    b = write_ckpt(tmp_path / "b.ckpt", bimamba(0), max_length=64)
    assert cli(["eval-lm", b, "--fasta", fasta, "--bins", "64,128", "--out", str(out), "--bootstrap", "200",
                "--cache-dir", str(tmp_path / "c")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found"),
    ("garbage", "cannot read checkpoint"),
    ("downstream", "task.name must be one of"),  # refused by the stored config's validation
    ("no-config", "no lcplm experiment config"),
    ("dir", "without config.json"),
    ("no-bin", "no sequence falls in the bins"),
    ("same-label", "share a label"),
])
def test_bad_inputs_are_one_line(tmp_path, fasta, capsys, case, message):
    good = write_ckpt(tmp_path / "good.ckpt", bimamba())
    ckpt = {
        "missing": str(tmp_path / "nope.ckpt"),
        "garbage": str(tmp_path / "garbage.ckpt"),
        "downstream": write_ckpt(tmp_path / "ds.ckpt", bimamba(), task="downstream"),
        "no-config": str(tmp_path / "nocfg.ckpt"),
        "dir": str(tmp_path),
    }.get(case, good)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "nocfg.ckpt")
    args = ["eval-lm", ckpt, "--fasta", fasta, "--bins", "8" if case == "no-bin" else "64,128", "--out", str(tmp_path / "o"),
            "--bootstrap", "200", "--cache-dir", str(tmp_path / "c")]
    if case == "same-label":
        args.insert(2, f"good={good}")
        args[1] = f"good={good}"
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and message in err[-1], err  # the data line (stderr log) may precede the error


def test_every_model_kind_and_released_layout_reads_the_same(tmp_path, fasta):
    """Native ESM-2, unshared BiMamba, and the released LC-PLM / Hugging Face ESM-2 directories of
    the same weights give the same per-sequence losses as their lcplm checkpoints."""
    from lcplm.models.convert import save_lcplm
    from lcplm.models.convert_esm import save_hf_directory

    torch.manual_seed(3)
    esm = ESM2LM(ESM2Config(num_layers=1, hidden=16, heads=2, ffn=32)).eval()
    torch.manual_seed(4)
    unshared = BiMambaLM(BiMambaConfig(d_model=16, n_layer=1, d_state=4, share_projections=False)).eval()
    bim = bimamba(5)
    save_hf_directory(esm, tmp_path / "hf_esm2")
    save_lcplm(bim, tmp_path / "lcplm_release")
    specs = [f"esm={write_ckpt(tmp_path / 'esm.ckpt', esm)}", f"esm_hf={tmp_path / 'hf_esm2'}",
             f"bim={write_ckpt(tmp_path / 'bim.ckpt', bim)}", f"bim_release={tmp_path / 'lcplm_release'}",
             f"unshared={write_ckpt(tmp_path / 'unshared.ckpt', unshared)}"]
    res = lm.evaluate(specs, fasta, (64, 128), n_boot=200, cache_dir=str(tmp_path / "c"), log=lambda s: None)
    m = {x["label"]: x for x in res["models"]}
    assert [m[k]["kind"] for k in ("esm", "esm_hf", "bim", "bim_release", "unshared")] == ["esm2", "esm2", "bimamba", "bimamba", "bimamba"]
    for a, b in (("esm", "esm_hf"), ("bim", "bim_release")):
        np.testing.assert_allclose(m[a]["per_sequence"]["mask_nll"], m[b]["per_sequence"]["mask_nll"], rtol=1e-5, atol=1e-5)
    assert m["esm_hf"]["training_length"] is None and m["esm"]["training_length"] == 64
    assert all(x["overall"]["loss"] for x in res["models"])
