"""``lcplm embed`` as esm-extract users drive it: representation layers, outputs (mean, per_tok,
bos), the truncation default, HDF5 keyed by record id, streaming in parts, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lcplm.__main__ import main as lcplm_main
from lcplm.data import tokenizer as tok
from lcplm.embed import embed_fasta
from lcplm.eval.embedding_files import hdf5_key, read_embeddings
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

from conftest import write_run_checkpoint

REPO = Path(__file__).resolve().parents[1]
AA = "ACDEFGHIKLMNPQRSTVWY"


def _fasta(path: Path, n: int, seed: int = 0, lo: int = 5, hi: int = 60, ids=None) -> Path:
    rng = np.random.default_rng(seed)
    ids = ids or [f"P{i:05d}" for i in range(n)]
    path.write_text("".join(f">{rid} x\n{''.join(rng.choice(list(AA), int(rng.integers(lo, hi))))}\n" for rid in ids))
    return path


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = BiMambaLM(BiMambaConfig(d_model=16, n_layer=2, d_state=4))
    write_run_checkpoint(model, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt", model.eval()


def _embed(ckpt_path, fasta, out, *extra) -> int:
    return lcplm_main(["embed", "--checkpoint", str(ckpt_path), "--fasta", str(fasta), "--out", str(out), "--no-progress",
                       *map(str, extra)])


def _arrays_equal(a: Path, b: Path, exact: bool = True) -> None:
    """Same ids, index and arrays: bitwise, or (``exact=False``, records batched with other
    neighbours: float sums in another order) to fp32 rounding."""
    ids_a, ta = read_embeddings(a)
    ids_b, tb = read_embeddings(b)
    assert ids_a == ids_b and set(ta) == set(tb)
    for k in ta:
        if exact or k == "offsets":
            assert torch.equal(ta[k], tb[k]), k
        else:
            torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6)
    assert (a / "index.tsv").read_text() == (b / "index.tsv").read_text()


def test_repr_layers_and_outputs_follow_esm_numbering(tmp_path, ckpt):
    path, model = ckpt
    fa = _fasta(tmp_path / "in.fa", 6)
    out = tmp_path / "o"
    assert _embed(path, fa, out, "--repr-layers", "0", "1", "-1", "--include", "mean", "per_tok", "bos") == 0
    ids, t = read_embeddings(out)
    names = {f"{kind}{suffix}" for kind in ("mean", "bos", "residues") for suffix in ("_layer0", "_layer1", "")}
    assert set(t) == names | {"offsets"}
    seqs = {r.split("\n")[0].split()[0]: r.split("\n")[1] for r in fa.read_text().split(">")[1:]}
    for i, rid in enumerate(ids):
        ids_1 = tok.encode(seqs[rid])[None]
        with torch.no_grad():
            alone = model.encode_layers(ids_1, [0, 1, 2], lengths=torch.tensor([ids_1.shape[1]]))
            final = model.encode(ids_1, lengths=torch.tensor([ids_1.shape[1]]))
        torch.testing.assert_close(alone[2], final, rtol=0, atol=0)  # layer num_layers is encode()
        rows = slice(int(t["offsets"][i]), int(t["offsets"][i + 1]))
        for k, suffix in ((0, "_layer0"), (1, "_layer1"), (2, "")):
            h = alone[k][0]
            torch.testing.assert_close(t[f"mean{suffix}"][i], h[1:-1].mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(t[f"bos{suffix}"][i], h[0], rtol=1e-5, atol=1e-6)  # the <cls> state
            torch.testing.assert_close(t[f"residues{suffix}"][rows], h[1:-1], rtol=1e-5, atol=1e-6)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["arrays"]["mean_layer1"] == {"output": "mean", "layer": 1} and meta["options"]["repr_layers"] == [0, 1, 2]
    # -3 counts from the end to layer 0, as esm-extract's (k + n + 1) % (n + 1)
    assert _embed(path, fa, tmp_path / "neg", "--repr-layers", "-3") == 0
    assert torch.equal(read_embeddings(tmp_path / "neg")[1]["mean_layer0"], t["mean_layer0"])


@pytest.mark.parametrize("kind", ["bimamba", "esm2", "sparse_transformer"])
def test_every_model_kind_numbers_its_layers_like_esm(kind):
    from lcplm.models.esm2 import ESM2Config, ESM2LM
    from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

    torch.manual_seed(0)
    model = {"bimamba": lambda: BiMambaLM(BiMambaConfig(d_model=16, n_layer=3, d_state=4)),
             "esm2": lambda: ESM2LM(ESM2Config(num_layers=3, hidden=32, heads=2, ffn=64)),
             "sparse_transformer": lambda: SparseGenomeLM(SparseTransformerConfig(num_layers=3, hidden=32, heads=2, ffn=64)),
             }[kind]().eval()
    ids, lens = tok.pad_batch([tok.encode("MKVLAAGITW"), tok.encode("MKV")])
    with torch.no_grad():
        states = model.encode_layers(ids, [0, 1, 2, 3], lengths=lens)
        final = model.encode(ids, lengths=lens)
    assert model.num_layers == 3 and sorted(states) == [0, 1, 2, 3]
    assert torch.equal(states[3], final)  # the last representation is encode()'s
    assert all(not torch.equal(states[k], states[k + 1]) for k in range(3))
    assert all(bool((states[k][1, 5:] == 0).all()) for k in range(4))  # zero at padding
    with pytest.raises(ValueError, match="layer 4 outside 0..3"):
        model.encode_layers(ids, [4], lengths=lens)


def test_bimamba_layer_states_are_the_residual_stream_each_block_reads(ckpt):
    _, model = ckpt
    ids, lens = tok.pad_batch([tok.encode("MKVLAAGITW"), tok.encode("MKV")])
    seen = {}
    hooks = [layer.norm.register_forward_hook(lambda mod, args, out, k=k: seen.__setitem__(k, args[0].detach()))
             for k, layer in enumerate(model.backbone.layers)]
    with torch.enable_grad():  # the reference block path (the inference fast path has no module calls)
        model.encode(ids, lengths=lens)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        states = model.encode_layers(ids, [0, 1], lengths=lens)
    valid = torch.arange(ids.shape[1])[None] < lens[:, None]
    assert torch.equal(states[0][valid], model.backbone.embedding(ids)[valid].detach())
    torch.testing.assert_close(states[0][valid], seen[0][valid], rtol=0, atol=0)
    torch.testing.assert_close(states[1][valid], seen[1][valid], rtol=1e-5, atol=1e-6)


def test_esm2_layers_equal_hugging_face_hidden_states(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lcplm.models.io import from_pretrained

    cfg = transformers.EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, position_embedding_type="rotary", token_dropout=True,
                                 pad_token_id=1, mask_token_id=32, max_position_embeddings=1026)
    torch.manual_seed(0)
    hf = transformers.EsmForMaskedLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf").eval()
    ids = tok.encode("MKVLAAGITWYDE")[None]
    with torch.no_grad():
        want = hf.esm(ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
        got = ours.encode_layers(ids, [0, 1, 2], lengths=torch.tensor([ids.shape[1]]))
    for k in range(3):  # 0: embeddings, 1: after layer 1, 2: after the final LayerNorm (esm-extract's -1)
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_truncation_default_is_esm_extracts_1022_residues(tmp_path, ckpt):
    path, _ = ckpt
    fa = tmp_path / "long.fa"
    fa.write_text(">long\n" + "MKVLAAGITW" * 110 + "\n>short\nMKV\n")
    assert _embed(path, fa, tmp_path / "crop") == 0
    assert _embed(path, fa, tmp_path / "whole", "--long", "full") == 0
    assert "0\tlong\t1100\t1022" in (tmp_path / "crop" / "index.tsv").read_text()
    assert "0\tlong\t1100\t1100" in (tmp_path / "whole" / "index.tsv").read_text()
    assert json.loads((tmp_path / "crop" / "meta.json").read_text())["n_cropped"] == 1


def test_hdf5_is_keyed_by_record_id_and_holds_the_same_arrays(tmp_path, ckpt):
    h5py = pytest.importorskip("h5py")
    path, _ = ckpt
    ids = ["sp|P1|A", "Pfam/PF00001/3-40", "100%", ".", "plain"]
    fa = _fasta(tmp_path / "in.fa", len(ids), ids=ids)
    flags = ["--include", "mean", "per_tok", "bos", "--repr-layers", "1", "2"]
    assert _embed(path, fa, tmp_path / "st", *flags) == 0
    assert _embed(path, fa, tmp_path / "npy", *flags, "--format", "npy") == 0
    assert _embed(path, fa, tmp_path / "h5", *flags, "--format", "hdf5") == 0
    with h5py.File(tmp_path / "h5" / "embeddings.h5", "r") as f:
        assert sorted(f.keys()) == sorted(["sp|P1|A", "Pfam%2FPF00001%2F3-40", "100%25", "%2E", "plain"])
        g = f[hdf5_key("Pfam/PF00001/3-40")]
        assert g.attrs["id"] == "Pfam/PF00001/3-40" and g.attrs["index"] == 1
        assert g["residues"].shape == (int(g.attrs["embedded_length"]), 16) and g["mean_layer1"].shape == (16,)
    _arrays_equal(tmp_path / "st", tmp_path / "h5")
    _arrays_equal(tmp_path / "st", tmp_path / "npy")


def test_parts_assemble_to_the_same_arrays_as_one_chunk(tmp_path, ckpt):
    path, _ = ckpt
    fa = _fasta(tmp_path / "in.fa", 120)
    calls = []
    embed_fasta(path, str(fa), tmp_path / "parts", include=["mean", "per_tok"], max_tokens=256, chunk_tokens=300,
                progress=False, on_chunk=calls.append)
    embed_fasta(path, str(fa), tmp_path / "one", include=["mean", "per_tok"], max_tokens=256, chunk_tokens=10**9,
                progress=False)
    assert len(calls) > 5 and calls[-1] == 120 and calls == sorted(calls)  # written part by part
    _arrays_equal(tmp_path / "parts", tmp_path / "one", exact=False)
    assert not (tmp_path / "parts" / ".partial").exists()


def test_resume_after_a_kill_gives_the_uninterrupted_outputs(tmp_path, ckpt):
    path, _ = ckpt
    fa = _fasta(tmp_path / "in.fa", 3000, lo=40, hi=120)
    args = ["--checkpoint", str(path), "--fasta", str(fa), "--include", "mean", "per_tok", "--max-tokens", "512",
            "--chunk-tokens", "2000", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "kernels"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lcplm", "embed", *args, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = tmp_path / "killed" / ".partial"
    deadline = time.time() + 120
    while len(list(partial.glob("part-*.safetensors"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()  # still running: killed mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_parts = len(list(partial.glob("part-*.safetensors")))
    assert n_parts >= 3 and not (tmp_path / "killed" / "index.tsv").exists()
    torch.set_num_threads(1)
    assert lcplm_main(["embed", *args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert lcplm_main(["embed", *args, "--out", str(tmp_path / "whole")]) == 0
    meta = json.loads((tmp_path / "killed" / "meta.json").read_text())
    assert meta["n_resumed"] > 0 and meta["n_sequences"] == 3000
    _arrays_equal(tmp_path / "killed", tmp_path / "whole")


def _interrupted(path, fa, out, parts: int = 2, **kw) -> list[int]:
    """An interrupted run: stopped after its first ``parts`` parts (they stay, as after a kill).
    Returns the records written after each part."""
    written = []

    def stop(n):
        written.append(n)
        if len(written) == parts:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_fasta(path, str(fa), out, max_tokens=64, chunk_tokens=100, progress=False, on_chunk=stop, **kw)
    assert len(list((out / ".partial").glob("part-*"))) == parts
    return written


def test_resume_refuses_changed_options_or_records_in_one_line(tmp_path, ckpt, capsys):
    path, _ = ckpt
    fa = _fasta(tmp_path / "in.fa", 40)
    out = tmp_path / "o"
    base = ["--max-tokens", "64", "--chunk-tokens", "100", "--resume"]
    written = _interrupted(path, fa, out)
    assert _embed(path, fa, out, *base, "--include", "bos") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot --resume, the interrupted run used another model or options" in err[0]
    assert "options.include: was ['mean'], now ['bos']" in err[0]
    changed = _fasta(tmp_path / "changed.fa", 40, seed=1)  # same ids, other sequences
    assert _embed(path, changed, out, *base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from those the interrupted run embedded" in err[0]
    lines = fa.read_text().splitlines(keepends=True)
    (tmp_path / "short.fa").write_text("".join(lines[: 2 * written[0]]))  # the first part's records only
    assert _embed(path, tmp_path / "short.fa", out, *base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"ends after {written[0]} records, before those the interrupted run embedded" in err[0]
    assert _embed(path, fa, out, *base) == 0  # the same run resumes
    assert "from the interrupted run" in capsys.readouterr().out
    assert _embed(path, fa, out, *base) == 0  # a finished folder: nothing to do
    assert "already complete (40 sequences)" in capsys.readouterr().out
    assert _embed(path, fa, out, *base[:4]) == 0 and not (out / ".partial").exists()  # no --resume: made afresh


@pytest.mark.parametrize("flags, message", [
    (["--include", "contacts"], "--include: unknown output 'contacts' (choose from mean, per_tok, bos)"),
    (["--repr-layers", "3"], "--repr-layers 3: the model has 2 layers (choose 0..2, or -3..-1"),
    (["--repr-layers", "-4"], "--repr-layers -4: the model has 2 layers"),
    (["--chunk-tokens", "-1"], "--chunk-tokens must be >= 1"),
    (["--truncation-seq-length", "0"], "max_length must be >= 1"),
])
def test_bad_flags_are_one_line(tmp_path, ckpt, capsys, flags, message):
    path, _ = ckpt
    assert _embed(path, _fasta(tmp_path / "in.fa", 3), tmp_path / "o", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
