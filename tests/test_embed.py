"""``lcplm embed``: round trips through the output formats, long-sequence policies, bad input
(layers, outputs, streaming and resume: ``tests/test_embed_streaming.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcplm.__main__ import main as lcplm_main
from lcplm.data import tokenizer as tok
from lcplm.cli.embed import main
from lcplm.embed import cached_mean_embeddings, embed_sequences
from lcplm.eval.embedding_files import read_embeddings
from lcplm.errors import UserError
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
from lcplm.models.convert import save_lcplm

from conftest import write_run_checkpoint

SEQS = {
    "sp|P1|short": "MKV",
    "P2": "acdefghiklmnpqrstvwy" * 3,  # lower case is upper-cased
    "P3": "MXKB*",  # X and B are residues, the stop codon is dropped
    "P4": "MKVLAAGIT" * 9,  # 81 residues: the only one longer than --max-length 70 below
    "P5": "G",
}


def _fasta(path, seqs=SEQS):
    path.write_text("".join(f">{k} some description\n{v}\n" for k, v in seqs.items()))
    return path


def _model_cfg():
    return BiMambaConfig(d_model=16, n_layer=2, d_state=4)


def _checkpoint(path, seed=0):
    """An lcplm checkpoint (model weights + experiment config), as the pretrain runner writes it."""
    torch.manual_seed(seed)
    model = BiMambaLM(_model_cfg())
    write_run_checkpoint(model, path)
    return model.eval()


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "last.ckpt"
    return path, _checkpoint(path)


def _alone(model, seq):
    ids = tok.encode(seq)[None]
    with torch.no_grad():
        h = model.encode(ids, lengths=torch.tensor([ids.shape[1]]))[0]
    res = tok.is_residue(ids[0])
    return h[res].mean(0), h[1:-1]


@pytest.mark.parametrize("fmt", ["safetensors", "npy", "hdf5"])
def test_embed_round_trip(tmp_path, ckpt, fmt):
    if fmt == "hdf5":
        pytest.importorskip("h5py")
    path, model = ckpt
    out = tmp_path / "emb"
    rc = main(["--checkpoint", str(path), "--fasta", str(_fasta(tmp_path / "in.fa")), "--out", str(out),
               "--per-residue", "--format", fmt, "--max-tokens", "64", "--no-progress"])
    assert rc == 0
    ids, t = read_embeddings(out)
    assert ids == list(SEQS)
    assert t["mean"].shape == (5, 16) and t["mean"].dtype == torch.float32
    lengths = [3, 60, 4, 81, 1]
    assert t["offsets"].tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    for i, seq in enumerate(SEQS.values()):
        # batched with padding (budget 64 tokens) equals each sequence embedded alone
        mean, per_res = _alone(model, seq.rstrip("*"))
        torch.testing.assert_close(t["mean"][i], mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(t["residues"][t["offsets"][i]:t["offsets"][i + 1]], per_res, rtol=1e-5, atol=1e-5)
    index = (out / "index.tsv").read_text().splitlines()
    assert index[0] == "index\tid\tlength\tembedded_length" and index[1] == "0\tsp|P1|short\t3\t3"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_sequences"] == 5 and meta["d_model"] == 16 and meta["model"]["name"] == "bimamba"


def test_long_sequences_full_crop_or_error(tmp_path, ckpt):
    path, model = ckpt
    fa = _fasta(tmp_path / "in.fa")
    args = ["--checkpoint", str(path), "--fasta", str(fa), "--max-length", "70", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "full"), "--long", "full"]) == 0
    assert main(args + ["--out", str(tmp_path / "crop")]) == 0  # crop is the default, as esm-extract truncates
    _, full = read_embeddings(tmp_path / "full")
    _, crop = read_embeddings(tmp_path / "crop")
    p4 = list(SEQS).index("P4")
    torch.testing.assert_close(full["mean"][p4], _alone(model, SEQS["P4"])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(crop["mean"][p4], _alone(model, SEQS["P4"][:70])[0], rtol=1e-5, atol=1e-5)
    assert "3\tP4\t81\t70" in (tmp_path / "crop" / "index.tsv").read_text()
    assert json.loads((tmp_path / "crop" / "meta.json").read_text())["n_cropped"] == 1
    with pytest.raises(UserError, match="record 'P4' has 81 residues, more than max_length=70"):
        main(args + ["--out", str(tmp_path / "err"), "--long", "error"])


def test_embed_bad_inputs(tmp_path, ckpt, capsys):
    path, _ = ckpt
    fa = _fasta(tmp_path / "in.fa")
    base = ["embed", "--checkpoint", str(path), "--fasta", str(fa), "--out", str(tmp_path / "o"), "--no-progress"]
    cases = [
        (["embed", "--checkpoint", str(tmp_path / "nope.ckpt"), "--fasta", str(fa), "--out", str(tmp_path / "o")],
         "checkpoint not found"),
        (["embed", "--checkpoint", str(path), "--fasta", str(tmp_path / "missing.fa"), "--out", str(tmp_path / "o")],
         "FASTA file not found"),
    ]
    (tmp_path / "dup.fa").write_text(">A\nMKV\n>A\nMKL\n")
    cases.append((base[:4] + [str(tmp_path / "dup.fa")] + base[5:], "duplicate record id 'A'"))
    (tmp_path / "gap.fa").write_text(">A\nMKV\n>B\n---\n")
    cases.append((base[:4] + [str(tmp_path / "gap.fa")] + base[5:], "record 'B' (line 3) has no amino-acid letter"))
    (tmp_path / "empty.fa").write_text("")
    cases.append((base[:4] + [str(tmp_path / "empty.fa")] + base[5:], "empty file"))
    (tmp_path / "not.ckpt").write_bytes(b"not a checkpoint")
    cases.append((["embed", "--checkpoint", str(tmp_path / "not.ckpt")] + base[3:], "cannot read checkpoint"))
    (tmp_path / "afile").write_text("x")
    cases.append((base[:6] + [str(tmp_path / "afile"), "--no-progress"], "exists and is not a directory"))
    cases.append((base + ["--max-length", "0"], "max_length must be >= 1"))
    for argv, message in cases:
        assert lcplm_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_cached_mean_embeddings_embed_once_per_model_data_and_options(tmp_path):
    torch.manual_seed(0)
    model = BiMambaLM(_model_cfg())
    names, seqs = list(SEQS), list(SEQS.values())
    calls = []

    def factory():
        calls.append(1)
        return model

    kw = dict(cache_dir=tmp_path, max_tokens=64, log=lambda s: None)
    first = cached_mean_embeddings("m1", factory, names, seqs, **kw)
    again = cached_mean_embeddings("m1", factory, names, seqs, **kw)
    assert len(calls) == 1 and torch.equal(first, again)
    cached_mean_embeddings("m1", factory, names, seqs, max_length=10, long_policy="crop", **{**kw})
    cached_mean_embeddings("m2", factory, names, seqs, **kw)
    cached_mean_embeddings("m1", factory, names[:2], seqs[:2], **kw)
    assert len(calls) == 4
    direct = embed_sequences(model, seqs, names, max_tokens=64).mean
    torch.testing.assert_close(first, direct)


def test_embed_a_converted_esm2_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")

    cfg = transformers.EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, position_embedding_type="rotary", token_dropout=True,
                                 pad_token_id=1, mask_token_id=32, max_position_embeddings=1026)
    torch.manual_seed(0)
    transformers.EsmForMaskedLM(cfg).save_pretrained(tmp_path / "hf")
    assert lcplm_main(["convert", "from-esm", str(tmp_path / "hf"), str(tmp_path / "esm"), "--model", "sparse_transformer", "--attention-backend", "dense"]) == 0
    fa = str(_fasta(tmp_path / "in.fa"))
    out = tmp_path / "emb"
    assert main(["--checkpoint", str(tmp_path / "esm"), "--fasta", fa, "--out", str(out), "--no-progress"]) == 0
    _, direct = read_embeddings(out)
    # the Hugging Face directory itself is read directly too, with the same result
    assert main(["--checkpoint", str(tmp_path / "hf"), "--fasta", fa, "--out", str(tmp_path / "emb_hf"), "--no-progress"]) == 0
    torch.testing.assert_close(read_embeddings(tmp_path / "emb_hf")[1]["mean"], direct["mean"], rtol=0, atol=0)
    ids, t = read_embeddings(out)
    assert ids == list(SEQS) and t["mean"].shape == (5, 32) and torch.isfinite(t["mean"]).all()


def test_embed_a_released_lcplm_directory_and_its_conversion(tmp_path, ckpt):
    _, model = ckpt
    save_lcplm(model, tmp_path / "lcplm_release")  # config.json + model.safetensors, LC-PLM's layout
    fa = str(_fasta(tmp_path / "in.fa"))
    assert main(["--checkpoint", str(tmp_path / "lcplm_release"), "--fasta", fa, "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert lcplm_main(["convert", "from-lcplm", str(tmp_path / "lcplm_release"), str(tmp_path / "conv")]) == 0
    assert main(["--checkpoint", str(tmp_path / "conv"), "--fasta", fa, "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    direct = embed_sequences(model, list(SEQS.values()), list(SEQS)).mean
    for out in ("a", "b"):
        _, t = read_embeddings(tmp_path / out)
        torch.testing.assert_close(t["mean"], direct, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_embed_on_cuda_matches_cpu(ckpt):
    _, model = ckpt
    names, seqs = list(SEQS), list(SEQS.values())
    cpu = embed_sequences(model, seqs, names, max_tokens=64, per_residue=True).mean
    gpu = embed_sequences(model, seqs, names, max_tokens=64, device="cuda").mean
    # fp32 on both: only summation order differs
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)
    half = embed_sequences(model, seqs, names, max_tokens=64, device="cuda", half=True).mean
    assert half.dtype == torch.float32 and half.device.type == "cpu"
    # bf16 autocast keeps ~8 mantissa bits: a few layers leave ~1% relative error (mamba-ssm's
    # bf16 tests allow rtol 3e-2 / atol 5e-2 on single ops)
    assert ((half - cpu).norm() / cpu.norm()).item() < 3e-2
