"""Sparse genome transformer: ESM-2 parity, attention backends, pair-pattern invariances,
activation checkpointing, the protein-pair attention pass, and genome-scale memory."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcplm.data import tokenizer
from lcplm.data.genomes import Genome, GenomeProtein, genome_windows
from lcplm.data.pair_sources import window_allowed
from lcplm.errors import UserError
from lcplm.models import attention
from lcplm.models.sparse_transformer import (
    SparseGenomeLM,
    SparseTransformerConfig,
    protein_pair_mass,
    protein_positions,
)

REPO = Path(__file__).resolve().parents[2]


def _tiny(**kw) -> SparseGenomeLM:
    torch.manual_seed(0)
    cfg = SparseTransformerConfig(num_layers=2, hidden=32, heads=2, ffn=64, **kw)
    model = SparseGenomeLM(cfg)
    with torch.no_grad():  # non-trivial norms and biases, so every parameter matters
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _genome(lengths, gid="g", seed=0) -> Genome:
    rng = random.Random(seed)
    aa = tokenizer.STANDARD_AMINO_ACIDS
    return Genome(gid, [GenomeProtein(f"{gid}_{i}", "".join(rng.choice(aa) for _ in range(n))) for i, n in enumerate(lengths)])


def _batch(genomes, allowed_fn, max_tokens=100_000, mask_at=()):
    """Padded batch of one window per genome; allowed_fn(n) -> (n, n) bool."""
    ws = [genome_windows(g, max_tokens)[0] for g in genomes]
    ids, lengths = tokenizer.pad_batch([w.input_ids for w in ws])
    B, L = ids.shape
    P = max(len(w.proteins) for w in ws)
    pid = torch.full((B, L), -1, dtype=torch.long)
    allowed = torch.zeros(B, P, P, dtype=torch.bool)
    for b, w in enumerate(ws):
        pid[b, : len(w)] = w.pid
        allowed[b, : len(w.proteins), : len(w.proteins)] = allowed_fn(len(w.proteins))
    for b, i in mask_at:
        ids[b, i] = tokenizer.MASK
    return {"input_ids": ids, "lengths": lengths, "pid": pid, "allowed": allowed}


def _dense(n):
    return torch.ones(n, n, dtype=torch.bool)


def _single(n):
    return torch.eye(n, dtype=torch.bool)


# ----------------------------------------------------------------------------- ESM-2 parity


def _random_hf_esm(tie: bool = True):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
        emb_layer_norm_before=False, max_position_embeddings=1026, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, tie_word_embeddings=tie,
    )
    hf = transformers.EsmForMaskedLM(cfg).eval()
    with torch.no_grad():  # move norms and biases off their init so every weight is exercised
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLXBUZO"


@pytest.mark.parametrize("backend", ["dense", "reference", "kernel", "auto"])
def test_esm2_parity_dense_pair_source_one_protein(backend):
    from lcplm.models.convert_esm import from_hf_esm

    hf = _random_hf_esm()
    ours = from_hf_esm(hf, attention_backend=backend)
    ids = tokenizer.encode(PROTEIN)[None]
    ids[0, [5, 17, 40]] = tokenizer.MASK  # token dropout rescaling is part of the parity
    pid = torch.zeros_like(ids)
    allowed = torch.ones(1, 1, 1, dtype=torch.bool)  # the dense pair source on one protein
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids, lengths=torch.tensor([ids.shape[1]]), pid=pid, allowed=allowed)
    assert got.shape == (1, ids.shape[1], tokenizer.PADDED_VOCAB_SIZE)
    # fp32 on both sides; 1e-4 leaves ~50x room over the observed ~2e-6 (reduction order)
    torch.testing.assert_close(got[..., :33], want, rtol=0, atol=1e-4)


def test_esm2_parity_padded_batch_and_untied_head():
    from lcplm.models.convert_esm import from_hf_esm

    hf = _random_hf_esm(tie=False)
    ours = from_hf_esm(hf, attention_backend="dense")
    assert ours.decoder.weight is not ours.embed.weight
    seqs = [tokenizer.encode(PROTEIN), tokenizer.encode(PROTEIN[:9]), tokenizer.encode("M")]
    ids, lengths = tokenizer.pad_batch(seqs)
    attn = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        want = hf(ids, attention_mask=attn).logits
        got = ours(ids, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[b, :n, :33], want[b, :n], rtol=0, atol=1e-4)
    # With <mask> tokens in a padded row, transformers 4.57 computes token dropout's mask ratio
    # over the padded length (EsmModel does not pass attention_mask to its embeddings); fair-esm
    # and we use the unpadded length, so the padded row must equal HF on the row alone.
    ids[1, 3] = tokenizer.MASK
    with torch.no_grad():
        got = ours(ids, lengths=lengths)
        alone = hf(ids[1:2, : lengths[1]]).logits[0]
    torch.testing.assert_close(got[1, : lengths[1], :33], alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend,positions", [("dense", "genome"), ("kernel", "genome"), ("dense", "protein")])
def test_single_protein_equals_esm2_on_every_protein_of_a_window(backend, positions):
    """The single_protein arm is the ESM-2 baseline: every protein of every window (the first
    and the others, <mask> tokens in several) has the logits of Hugging Face ESM-2 on
    ``<cls> P <eos>`` alone; the dense arm, same tokens, does not."""
    from lcplm.models.convert_esm import from_hf_esm

    hf = _random_hf_esm()
    ours = from_hf_esm(hf, attention_backend=backend, positions=positions)
    genomes = [_genome([30, 7, 55, 1, 20], "a", 11), _genome([12, 40, 3], "b", 12)]
    plain = _batch(genomes, _single)
    residue = tokenizer.is_residue(plain["input_ids"])
    mask_at = [(b, i) for b, i in residue.nonzero().tolist() if i % 6 == 0]
    batch = _batch(genomes, _single, mask_at=mask_at)
    dense = _batch(genomes, _dense, mask_at=mask_at)
    with torch.no_grad():
        got = ours(**batch)
        got_dense = ours(**dense)
        gaps = []
        for b, g in enumerate(genomes):
            for k in range(len(g.proteins)):
                sel = batch["pid"][b] == k
                ids = batch["input_ids"][b][sel]
                assert ids[0] == tokenizer.CLS and ids[-1] == tokenizer.EOS  # ESM-2's framing
                want = hf(ids[None]).logits[0]
                torch.testing.assert_close(got[b][sel][:, :33], want, rtol=0, atol=1e-4)
                gaps.append((got_dense[b][sel][:, :33] - want).abs().max())
    assert len(mask_at) > 10 and len(gaps) == 8
    assert min(gaps) > 1e-3  # sensitivity: with cross-protein attention no protein is ESM-2 alone


def test_esm2_conversion_from_directory_and_refusals(tmp_path):
    from lcplm.__main__ import main as cli
    from lcplm.models.convert_esm import config_from_hf, from_hf_esm
    from lcplm.models.io import from_pretrained

    hf = _random_hf_esm()
    hf.save_pretrained(tmp_path / "hf")  # safetensors + config.json, no network
    ours = from_pretrained(tmp_path / "hf", attention_backend="dense")
    ref = from_hf_esm(hf, attention_backend="dense")
    ids = tokenizer.encode(PROTEIN[:30])[None]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids), rtol=0, atol=0)
    # <sep> starts as ESM-2's <eos>; the graph tokens as zeros
    assert torch.equal(ours.embed.weight[tokenizer.SEP], ours.embed.weight[tokenizer.EOS])
    assert not ours.embed.weight[tokenizer.BON].any()
    # an lcplm model directory that from_pretrained (and run.init_from) reads back
    out = tmp_path / "esm_genome"
    assert cli(["convert", "from-esm", str(tmp_path / "hf"), str(out), "--model", "sparse_transformer", "--attention-backend", "dense"]) == 0
    back = from_pretrained(out)
    assert back.cfg.hidden == 64 and back.cfg.num_layers == 3 and back.cfg.attention_backend == "dense"
    with torch.no_grad():
        torch.testing.assert_close(back(ids), ref(ids), rtol=0, atol=0)
    bad = hf.config.to_dict() | {"position_embedding_type": "absolute"}
    with pytest.raises(UserError, match="rotary"):
        config_from_hf(bad)
    with pytest.raises(UserError, match="emb_layer_norm_before"):
        config_from_hf(hf.config.to_dict() | {"emb_layer_norm_before": True})
    with pytest.raises(UserError, match="config.json"):
        from_pretrained(tmp_path)
    with pytest.raises(UserError, match="not 'bimamba'"):
        from_pretrained(tmp_path / "hf", name="bimamba")


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize("L", [1, 63, 1000])
def test_attention_backends_agree_op_level(L):
    """attention.sparse_attention: kernel and dense vs the naive fp32 reference, forward and grads."""
    torch.manual_seed(L)
    B, H, D = 2, 2, 16
    sizes = [min(L, s) for s in (L // 3 or 1, L // 2 or 1, L)]
    pid = torch.full((B, L), -1, dtype=torch.long)
    pid[0] = torch.arange(L) * 5 // max(L, 1)  # five proteins (fewer when L < 5)
    pid[1, : sizes[1]] = torch.arange(sizes[1]) * 3 // max(sizes[1], 1)  # three proteins, then padding
    P = int(pid.max()) + 1
    allowed = window_allowed(P, 1).expand(B, P, P).clone()
    q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
    res = {}
    for backend in ("reference", "kernel", "dense"):
        layout = attention.sparse_attention_layout(pid, allowed, backend=backend)
        out = attention.sparse_attention(q, k, v, layout, scale=D**-0.5)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, D)).sum(), (q, k, v))
        res[backend] = (out.detach(), grads)
    assert (res["reference"][0][1, :, sizes[1]:] == 0).all()  # padding queries: zeros
    for backend in ("kernel", "dense"):
        torch.testing.assert_close(res[backend][0], res["reference"][0], rtol=1e-4, atol=1e-5)
        for g, gr in zip(res[backend][1], res["reference"][1]):
            torch.testing.assert_close(g, gr, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lens", [[20, 39], [150, 3, 96, 120, 1, 77, 140, 9, 150, 200]])
def test_backends_agree_whole_model(lens):
    """Model forward and every parameter gradient: kernel and dense vs reference (fp32)."""
    genomes = [_genome(lens, "a", 1), _genome(lens[: max(1, len(lens) // 2)], "b", 2)]
    batch = _batch(genomes, lambda n: window_allowed(n, 1), mask_at=[(0, 1)])
    outs = {}
    for backend in ("reference", "kernel", "dense"):
        model = _tiny(attention_backend=backend)
        logits = model(**batch)
        valid = batch["pid"] >= 0
        (logits[valid] ** 2).mean().backward()
        outs[backend] = (logits[valid].detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_out, ref_grad = outs["reference"]
    for backend in ("kernel", "dense"):
        out, grad = outs[backend]
        # all fp32: differences are summation order only
        torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
        for n in ref_grad:
            torch.testing.assert_close(grad[n], ref_grad[n], rtol=1e-3, atol=1e-5)


def test_auto_backend_dispatch():
    pid = torch.zeros(2, 1000, dtype=torch.long)
    allowed = torch.ones(2, 1, 1, dtype=torch.bool)
    assert attention.sparse_attention_layout(pid, allowed, "auto", num_heads=4).backend == "dense"
    big = torch.zeros(1, 3000, dtype=torch.long)
    layout = attention.sparse_attention_layout(big, allowed[:1], "auto", num_heads=4)
    assert layout.backend == "kernel" and layout.blocks is not None  # 36M scores: past the CPU dense limit


def test_one_token_rows_and_all_padding_rows():
    model = _tiny(attention_backend="kernel")
    ids = torch.tensor([[tokenizer.CLS, 5, tokenizer.EOS], [tokenizer.CLS, tokenizer.PAD, tokenizer.PAD]])
    out = model(ids, lengths=torch.tensor([3, 1]))
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- invariances


def test_single_protein_outputs_do_not_depend_on_other_proteins():
    """Under single_protein, protein 1 is unchanged when proteins 0 and 2 change (content,
    length, masking); under dense it changes."""
    model = _tiny(attention_backend="kernel").eval()
    g1 = _genome([30, 41, 25], "x", seed=1)
    g2 = _genome([55, 41, 12], "x", seed=2)
    g2.proteins[1] = g1.proteins[1]
    b1 = _batch([g1], _single, mask_at=[(0, 3)])
    b2 = _batch([g2], _single, mask_at=[(0, 7), (0, 9)])
    with torch.no_grad():
        h1 = model.encode(**b1)[0][b1["pid"][0] == 1]
        h2 = model.encode(**b2)[0][b2["pid"][0] == 1]
        torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-5)  # rotary at shifted positions: rounding only
        d1 = model.encode(**_batch([g1], _dense))[0][b1["pid"][0] == 1]
        d2 = model.encode(**_batch([g2], _dense))[0][b2["pid"][0] == 1]
        assert (d1 - d2).abs().max() > 1e-3


def test_padding_does_not_leak_and_positions_modes():
    model = _tiny(attention_backend="kernel").eval()
    short, long = _genome([20, 33], "s", 3), _genome([90, 70, 44], "l", 4)
    with torch.no_grad():
        alone = model(**_batch([short], lambda n: window_allowed(n, 1)))
        both = model(**_batch([long, short], lambda n: window_allowed(n, 1)))
        n = alone.shape[1]
        torch.testing.assert_close(both[1, :n], alone[0], rtol=1e-5, atol=1e-5)
    # rotary positions per protein or per window: identical under single_protein (relative)
    g = _genome([20, 33, 17], "p", 5)
    batch = _batch([g], _single)
    genome_pos = _tiny(attention_backend="kernel", positions="genome").eval()
    protein_pos = _tiny(attention_backend="kernel", positions="protein").eval()
    with torch.no_grad():
        torch.testing.assert_close(genome_pos(**batch), protein_pos(**batch), rtol=1e-4, atol=1e-5)
        assert (genome_pos(**_batch([g], _dense)) - protein_pos(**_batch([g], _dense))).abs().max() > 1e-4
    assert protein_positions(batch["pid"])[0].tolist()[:24] == list(range(22)) + [0, 1]  # <cls> 20 residues <eos>, <cls> ...


def test_activation_checkpointing_same_loss_and_gradients():
    """trainer.activation_checkpointing's per-block recomputation over the block-sparse kernel."""
    from lcplm.train.strategies import apply_activation_checkpointing

    batch = _batch([_genome([40, 50, 30], "c", 6)], lambda n: window_allowed(n, 1))
    grads = []
    for ckpt in (False, True):
        model = _tiny(attention_backend="kernel").train()
        if ckpt:
            assert apply_activation_checkpointing(model, SparseGenomeLM.block_classes) == model.cfg.num_layers
        loss = model(**batch).pow(2).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_bad_model_config():
    with pytest.raises(UserError, match="heads"):
        SparseGenomeLM(SparseTransformerConfig(hidden=30, heads=4))
    with pytest.raises(UserError, match="attention_backend"):
        SparseGenomeLM(SparseTransformerConfig(attention_backend="flash9"))
    with pytest.raises(UserError, match="positions"):
        SparseGenomeLM(SparseTransformerConfig(positions="absolute"))


# ----------------------------------------------------------------------------- pair attention pass


def test_protein_pair_mass_matches_full_attention():
    torch.manual_seed(1)
    B, H, L, D, P = 2, 3, 37, 8, 4
    q, k = torch.randn(B, H, L, D), torch.randn(B, H, L, D)
    pid = torch.tensor([[0] * 10 + [1] * 9 + [2] * 8 + [3] * 10, [0] * 12 + [1] * 15 + [-1] * 10])
    allowed = torch.rand(B, P, P) < 0.5
    allowed |= torch.eye(P, dtype=torch.bool)
    allowed |= allowed.transpose(1, 2).clone()
    allowed[1, 2:] = allowed[1, :, 2:] = False
    mask = attention.pair_mask(pid, allowed)
    a = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(~mask[:, None], float("-inf")), -1).nan_to_num(0)
    want = torch.zeros(B, P, P)
    for b in range(B):
        for p in range(P):
            for r in range(P):
                qi, kj = pid[b] == p, pid[b] == r
                if qi.any():
                    want[b, p, r] = a[b][:, qi][:, :, kj].sum((-1, -2)).mean(0) / qi.sum()
    for chunk in (1 << 25, 64):  # one block, and many small query blocks
        got = protein_pair_mass(q, k, pid, allowed, 0.3, chunk_elems=chunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got[0].sum(-1), torch.ones(P))  # each protein's attention sums to 1
    assert (got[~allowed] == 0).all()


def test_protein_pair_attention_is_symmetric_and_respects_pattern():
    model = _tiny(attention_backend="kernel").eval()
    batch = _batch([_genome([20, 30, 25, 18], "m", 7)], lambda n: window_allowed(n, 1))
    m = model.protein_pair_attention(**batch)
    assert m.shape == (1, 4, 4)
    torch.testing.assert_close(m, m.transpose(1, 2))
    assert (m[~batch["allowed"]] == 0).all() and (m[batch["allowed"]] > 0).all()


# ----------------------------------------------------------------------------- genome scale


GENOME_MEMORY_SCRIPT = r"""
import json, sys, time, torch
from lcplm.data.genomes import genome_windows, read_genbank
from lcplm.data.pair_sources import build_pair_source, PairSourceConfig
from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

tokens, source, gbk = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
proteins = [p for g in read_genbank(gbk) for p in g.proteins]
from lcplm.data.genomes import Genome
windows = genome_windows(Genome("concat", proteins), tokens)
w = windows[0]
allowed = build_pair_source(PairSourceConfig(source, window=1)).allowed(w)
torch.manual_seed(0)
model = SparseGenomeLM(SparseTransformerConfig(num_layers=2, hidden=64, heads=4, ffn=128, attention_backend="kernel"))
batch = dict(input_ids=w.input_ids[None], lengths=torch.tensor([len(w)]), pid=w.pid[None], allowed=allowed[None])
pid = w.pid
nnz = int(sum(int((pid == p).sum()) * int((pid == r).sum()) for p, r in allowed.nonzero().tolist()))
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak-RSS counter (VmHWM) to the current RSS
rss0 = status_kb("VmRSS")
t = time.perf_counter()
model(**batch).float().mean().backward()
dt_first = time.perf_counter() - t
peak = status_kb("VmHWM")
print(json.dumps(dict(tokens=len(w), proteins=len(w.proteins), nnz=nnz, seconds=dt_first, rss_before_mb=rss0 / 1024, peak_mb=peak / 1024)))
"""


def _genome_run(tokens: int, source: str) -> dict:
    gbk = Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data")) / "genomes" / "pharokka_meta_phages.gbk"
    out = subprocess.run(
        [sys.executable, "-c", GENOME_MEMORY_SCRIPT, str(tokens), source, str(gbk)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.needs_shared_data
def test_61k_token_genome_forward_backward_memory_linear_in_nnz():
    """A 61,000-token window (real phage proteins) forward+backward on CPU: the peak memory
    (process RSS, measured in a fresh process) grows with the number of allowed token pairs,
    not with L^2 (one fp32 L x L score matrix alone would be 14.9 GB)."""
    from conftest import shared_data

    shared_data("genomes", "pharokka_meta_phages.gbk")
    small = _genome_run(15_250, "single_protein")
    big = _genome_run(61_000, "single_protein")
    print(json.dumps({"small": small, "big": big}))
    assert 60_000 < big["tokens"] <= 61_000
    grow_mem = (big["peak_mb"] - big["rss_before_mb"]) / max(small["peak_mb"] - small["rss_before_mb"], 1.0)
    grow_nnz = big["nnz"] / small["nnz"]
    grow_l2 = (big["tokens"] / small["tokens"]) ** 2
    # linear in nnz means the memory ratio follows the nnz ratio (here ~4x), far below L^2's ~16x
    assert grow_mem < 1.5 * grow_nnz < grow_l2
    assert big["peak_mb"] < 8_000


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_kernel_backend_on_cuda_fp32_and_bf16():
    """Triton kernel inside the model: fp32 (no TF32) matches the reference; under bf16
    autocast its error against the fp32 reference is at most 2x that of SDPA in bf16."""
    batch = {k: v.cuda() for k, v in _batch([_genome([300, 120, 7, 410, 90], "g", 8), _genome([50, 600], "h", 9)],
                                            lambda n: window_allowed(n, 1)).items()}
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = _tiny(attention_backend="reference").cuda()
    kern = _tiny(attention_backend="kernel").cuda()
    dense = _tiny(attention_backend="dense").cuda()
    valid = batch["pid"] >= 0
    want = ref(**batch)[valid]
    torch.testing.assert_close(kern(**batch)[valid], want, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        err_kernel = (kern(**batch)[valid].float() - want).abs().max()
        err_sdpa = (dense(**batch)[valid].float() - want).abs().max()
    assert err_kernel <= 2 * err_sdpa + 1e-3
    (kern(**batch)[valid] ** 2).mean().backward()
    (ref(**batch)[valid] ** 2).mean().backward()
    for (n, a), b in zip(kern.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f"{n}: {m}")
