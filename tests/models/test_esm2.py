"""ESM-2 as a stage-1 model: parity with Hugging Face ``EsmForMaskedLM`` (padded batches, token
dropout, conversion both ways), padding / packing invariance, the shipped tiny size, and the
suite's entry points (pretrain and resume, checkpoints, embed, strategies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lcplm.config import load_config
from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import build_model, count_parameters
from lcplm.models.esm2 import ESM2LM, ESM2Config

REPO = Path(__file__).resolve().parents[2]
# fp32 on both sides; differences are reduction order only (observed ~2e-6 on logits of size ~5)
ATOL = 1e-4
PROTEINS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRL",
    "MSLKXBUZOW",
    "G",
    "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG",
]


def _random_hf_esm(tie: bool = True, layers: int = 3):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
        position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
        emb_layer_norm_before=False, max_position_embeddings=1026, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, tie_word_embeddings=tie, layer_norm_eps=1e-5,
    )
    hf = transformers.EsmForMaskedLM(cfg).eval()
    with torch.no_grad():  # move norms and biases off their init so every weight is exercised
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


def _masked(seqs: list[str], every: int = 7) -> list[torch.Tensor]:
    """``<cls> P <eos>`` ids with every ``every``-th residue (from a per-protein offset) masked."""
    out = []
    for k, s in enumerate(seqs):
        ids = tokenizer.encode(s)
        ids[1 + k % every : -1 : every] = tokenizer.MASK
        out.append(ids)
    return out


def _tiny(**kw) -> ESM2LM:
    torch.manual_seed(0)
    model = ESM2LM(ESM2Config(num_layers=2, hidden=32, heads=2, ffn=64, init_std=0.1, **kw))  # large weights: sensitive
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


# ----------------------------------------------------------------------------- Hugging Face parity


@pytest.mark.parametrize("tie", [True, False])
def test_padded_batch_logits_equal_hf_esm2_on_each_protein(tie):
    from lcplm.models.convert_esm import from_hf_esm

    hf = _random_hf_esm(tie=tie)
    ours = from_hf_esm(hf, model="esm2", attention_backend="dense")
    assert isinstance(ours, ESM2LM) and ours.cfg.vocab_size == 33
    seqs = _masked(PROTEINS)
    ids, lengths = tokenizer.pad_batch(seqs, 8)
    with torch.no_grad():
        got = ours(ids, lengths=lengths)
        for b, s in enumerate(seqs):
            # ESM-2 on the protein alone (transformers 4.57 takes token dropout's <mask> ratio over
            # the padded length in a padded batch; fair-esm and we take the protein's own length)
            want = hf(s[None]).logits[0]
            torch.testing.assert_close(got[b, : len(s)], want, rtol=0, atol=ATOL)
        # without <mask> tokens the padded batches agree row for row
        plain, plain_len = tokenizer.pad_batch([tokenizer.encode(s) for s in PROTEINS], 8)
        attn = (torch.arange(plain.shape[1])[None] < plain_len[:, None]).long()
        want = hf(plain, attention_mask=attn).logits
        got = ours(plain, lengths=plain_len)
    for b, n in enumerate(plain_len.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], rtol=0, atol=ATOL)


def test_round_trips_with_hf_are_exact(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lcplm.models.convert_esm import config_to_hf, from_hf_esm, save_hf_directory, state_dict_to_hf
    from lcplm.models.io import from_pretrained

    hf = _random_hf_esm()
    ours = from_hf_esm(hf, model="esm2", attention_backend="dense")
    # HF -> ours -> HF: every weight back exactly (the contact head, not trained by lcplm, is zero)
    back = state_dict_to_hf(ours.state_dict(), ours.cfg)
    orig = hf.state_dict()
    assert set(back) == set(orig)
    for k, v in orig.items():
        if "contact_head" in k:
            assert not back[k].any()
        else:
            assert torch.equal(back[k], v), k
    # ... as a directory transformers reads without remote code, with ESM-2's tokenizer
    save_hf_directory(ours, tmp_path / "hf")
    again = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert transformers.EsmConfig(**config_to_hf(ours.cfg)).hidden_size == 64
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok(PROTEINS[1])["input_ids"] == tokenizer.encode(PROTEINS[1]).tolist()
    seqs = _masked(PROTEINS)
    with torch.no_grad():
        for s in seqs:
            torch.testing.assert_close(again(s[None]).logits, hf(s[None]).logits, rtol=0, atol=0)
    # ours -> HF -> ours: a freshly initialised esm2 model comes back exactly
    fresh = _tiny(attention_backend="dense")
    save_hf_directory(fresh, tmp_path / "fresh")
    loaded = from_pretrained(tmp_path / "fresh", name="esm2", attention_backend="dense")
    assert loaded.state_dict().keys() == fresh.state_dict().keys()
    for k, v in fresh.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_hf_conversion_refusals(tmp_path):
    from lcplm.models.convert_esm import config_from_hf, config_to_hf

    hf = _random_hf_esm(layers=1)
    with pytest.raises(UserError, match="target"):
        config_from_hf(hf.config, model="bimamba")
    with pytest.raises(UserError, match="rotary base"):
        config_to_hf(ESM2Config(rotary_base=500.0))
    with pytest.raises(UserError, match="vocab_size"):
        ESM2LM(ESM2Config(vocab_size=20))


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("backend", ["dense", "kernel", "reference"])
def test_packed_equals_padded_equals_alone(backend):
    model = _tiny(attention_backend=backend)
    seqs = _masked(PROTEINS, every=5)
    ids, lengths = tokenizer.pad_batch(seqs, 8)
    packed = torch.cat(seqs)[None]
    cu = torch.tensor([0] + [len(s) for s in seqs], dtype=torch.int32).cumsum(0).to(torch.int32)
    with torch.no_grad():
        alone = [model(s[None])[0] for s in seqs]
        pad = model(ids, lengths=lengths)
        pack = model(packed, cu_seqlens=cu)[0]
        h_pad = model.encode(ids, lengths=lengths)
    for b, s in enumerate(seqs):
        n, start = len(s), int(cu[b])
        # fp32, the same arithmetic per protein: reduction order only
        torch.testing.assert_close(pad[b, :n], alone[b], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pack[start : start + n], alone[b], rtol=1e-5, atol=1e-5)
        assert not h_pad[b, n:].any()  # hidden states are zero at padding
    # sensitivity: the same packed tokens read as one sequence (no cu_seqlens) mix the proteins
    with torch.no_grad():
        mixed = model(packed)[0]
    assert (mixed[: len(seqs[0])] - alone[0]).abs().max() > 1e-3


def test_bad_inputs_are_refused():
    model = _tiny()
    ids = torch.tensor([[0, 5, 6, 2]])
    with pytest.raises(ValueError, match="not both"):
        model(ids, lengths=torch.tensor([4]), cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(ids, cu_seqlens=torch.tensor([0, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="lengths"):
        model(ids, lengths=torch.tensor([5]))
    with pytest.raises(UserError, match="vocabulary of 33"):
        model(torch.tensor([[0, tokenizer.BON, 2]]))


# ----------------------------------------------------------------------------- suite entry points


def test_tiny_esm2_matches_the_tiny_bimamba_size():
    counts = {}
    for name in ("tiny", "tiny_esm2"):
        cfg = load_config(REPO / "experiments" / "pretrain" / f"{name}.yaml")
        counts[name] = count_parameters(build_model(cfg.model))
    assert isinstance(build_model(load_config(REPO / "experiments" / "model" / "tiny_esm2.yaml").model), ESM2LM)
    assert abs(counts["tiny_esm2"] - counts["tiny"]) / counts["tiny"] < 0.10, counts


def test_params_command_prints_the_count(capsys):
    from lcplm.__main__ import main

    assert main(["params", str(REPO / "experiments" / "pretrain" / "tiny_esm2.yaml")]) == 0
    assert capsys.readouterr().out.strip() == "model esm2: 88,977 parameters"
    assert main(["params", str(REPO / "experiments" / "pretrain" / "tiny_esm2.yaml"), "model.num_layers=1"]) == 0
    assert "model esm2: " in capsys.readouterr().out


def test_strategies_know_the_esm2_blocks():
    from lcplm.models import model_class
    from lcplm.models.sparse_transformer import SparseTransformerBlock
    from lcplm.train.strategies import apply_activation_checkpointing

    assert model_class("esm2").block_classes == (SparseTransformerBlock,)
    model = _tiny()
    assert apply_activation_checkpointing(model, model_class("esm2").block_classes) == 2
    ids, lengths = tokenizer.pad_batch(_masked(PROTEINS), 8)
    assert torch.isfinite(model(ids, lengths=lengths)).all()


def _experiment(tmp_path: Path, pack: bool) -> Path:
    from train_helpers import write_fasta

    fasta = write_fasta(tmp_path / "train.fasta", n=48)
    exp = tmp_path / f"esm2_{pack}.yaml"
    exp.write_text(
        f"""# test: tiny ESM-2 on a small FASTA
include:
  - {REPO / 'experiments' / 'pretrain' / 'tiny_esm2.yaml'}
data: {{path: {fasta}, max_tokens: 512, max_length: 64, val_fraction: 0.2, pack: {str(pack).lower()}, cache_dir: {tmp_path / 'cache'}}}
trainer: {{max_steps: 4, max_time_minutes: null, val_check_interval: 2, limit_val_batches: 2, log_every_n_steps: 1, progress_bar: false}}
optim: {{warmup_steps: 1}}
run: {{out_dir: {tmp_path / 'runs'}, name: esm2_{pack}, save_every_n_steps: 2}}
"""
    )
    return exp


@pytest.mark.parametrize("pack", [False, True])
def test_pretrain_resume_checkpoint_and_embed(tmp_path, pack, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests" / "train"))
    from lcplm.__main__ import main
    from lcplm.embed import embed_sequences, load_encoder, random_encoder

    exp = _experiment(tmp_path, pack)
    assert main(["pretrain", str(exp)]) in (0, 1)  # 1: finished, not yet below the unigram baseline
    run = tmp_path / "runs" / f"esm2_{pack}"
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 4 and results["n_parameters"] == 88_977
    assert main(["pretrain", str(exp), "trainer.max_steps=6", "--resume"]) in (0, 1)
    assert json.loads((run / "results.json").read_text())["global_step"] == 6
    model, cfg = load_encoder(run / "checkpoints" / "last.ckpt")
    assert isinstance(model, ESM2LM) and cfg.name == "esm2"
    emb = embed_sequences(model, PROTEINS, max_tokens=256)
    assert emb.mean.shape == (len(PROTEINS), 48) and torch.isfinite(emb.mean).all()
    assert isinstance(random_encoder(cfg, seed=0), ESM2LM)  # eval-downstream's "no pretraining" baseline


def test_convert_commands_both_ways(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from lcplm.__main__ import main
    from lcplm.models.io import from_pretrained

    from conftest import write_run_checkpoint

    model = _tiny(attention_backend="dense")
    write_run_checkpoint(model, tmp_path / "ours.ckpt")
    assert main(["convert", "to-esm", str(tmp_path / "ours.ckpt"), str(tmp_path / "hf")]) == 0
    hf = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert main(["convert", "from-esm", str(tmp_path / "hf"), str(tmp_path / "back"), "--attention-backend", "dense"]) == 0
    back = from_pretrained(tmp_path / "back")
    assert isinstance(back, ESM2LM) and back.cfg.name == "esm2"
    seqs = _masked(PROTEINS)
    with torch.no_grad():
        for s in seqs:
            want = model(s[None])
            torch.testing.assert_close(hf(s[None]).logits, want, rtol=0, atol=ATOL)
            torch.testing.assert_close(back(s[None]), want, rtol=0, atol=0)
    assert "esm2, 2 layers" in capsys.readouterr().out
    # a BiMamba checkpoint is not an ESM-2: one line
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

    write_run_checkpoint(BiMambaLM(BiMambaConfig(d_model=16, n_layer=1)), tmp_path / "bimamba.ckpt")
    assert main(["convert", "to-esm", str(tmp_path / "bimamba.ckpt"), str(tmp_path / "x")]) == 2
    assert "only 'esm2' and 'sparse_transformer'" in capsys.readouterr().err
