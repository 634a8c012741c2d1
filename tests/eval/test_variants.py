"""Zero-shot variant scoring: parity with ESM-2 in Hugging Face form scored the way ProteinGym's
``baselines/esm/compute_fitness.py`` does (fair-esm's alphabet, one unbatched pass per position),
windows, multi-mutants, pseudo-log-likelihood, genome context and the BiMamba-S path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcplm.data import tokenizer
from lcplm.data.dms import Substitution
from lcplm.eval import variants as V

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKW"  # 76 residues
MUTANTS = ["M1A", "K2R", "T3S", "Y5F", "Q9E", "S13T", "F14L", "E25D", "D42A", "Q45K", "W76Y", "K2R:Q45K", "A4G:I6V:E25D"]


def _random_hf_esm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
        emb_layer_norm_before=False, max_position_embeddings=1026, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    hf = transformers.EsmForMaskedLM(cfg).eval()
    with torch.no_grad():  # off the near-uniform init, so score differences are large and varied
        for p in hf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return hf


def _subs(mutants, offset=1):
    out = []
    for m in mutants:
        out.append(tuple(Substitution(p[0], int(p[1:-1]) - offset, p[-1]) for p in m.split(":")))
    return out


def _fair_esm_tokens(seq: str) -> torch.Tensor:
    esm = pytest.importorskip("esm")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    _, _, tokens = alphabet.get_batch_converter()([("wt", seq)])
    return tokens, alphabet


def _proteingym_window(i, n, w):
    # ProteinGym's utils/scoring_utils.get_optimal_window, transcribed for the test
    half = w // 2
    if n <= w:
        return 0, n
    if i < half:
        return 0, w
    if i >= n - half:
        return n - w, n
    return max(0, i - half), min(n, i + half)


def _direct_marginals(hf, seq, mutants, masked: bool, window=None):
    """ProteinGym's ESM scorer: per token position i a pass (masked, or one unmasked pass),
    log_softmax over ESM's 33 tokens, label_row sums mt - wt over a mutant's sites."""
    tokens, alphabet = _fair_esm_tokens(seq)
    n = tokens.shape[1]
    rows = []
    with torch.no_grad():
        for i in range(n):
            t = tokens.clone()
            if masked:
                t[0, i] = alphabet.mask_idx
            s, e = _proteingym_window(i, n, window) if window else (0, n)
            logits = hf(t[:, s:e], attention_mask=torch.ones_like(t[:, s:e])).logits
            rows.append(torch.log_softmax(logits, dim=-1)[0, i - s])
    lp = torch.stack(rows)
    out = []
    for m in mutants:
        score = 0.0
        for part in m.split(":"):
            wt, idx, mt = part[0], int(part[1:-1]) - 1, part[-1]
            assert seq[idx] == wt
            score += (lp[1 + idx, alphabet.get_idx(mt)] - lp[1 + idx, alphabet.get_idx(wt)]).item()
        out.append(score)
    return np.asarray(out)


def test_fair_esm_alphabet_ids_equal_ours():
    tokens, alphabet = _fair_esm_tokens(WT)
    assert tokens[0].tolist() == tokenizer.encode(WT).tolist()
    assert alphabet.mask_idx == tokenizer.MASK and alphabet.padding_idx == tokenizer.PAD
    for aa in "ACDEFGHIKLMNPQRSTVWY":
        assert alphabet.get_idx(aa) == tokenizer.TOKEN_TO_ID[aa]


# fp32 on both sides: the converted model's logits differ from HF's by ~1e-6 (reduction order),
# and a score is a difference of two log-probabilities summed over at most 3 sites; 2e-5 leaves
# ~3x room over the largest difference observed (6e-6) while scores span several nats.
PARITY_ATOL = 2e-5


@pytest.mark.parametrize("method", ["masked-marginal", "wt-marginal"])
def test_converted_esm2_scores_equal_direct_esm_computation(method, tmp_path):
    from lcplm.models.convert_esm import from_hf_esm
    from lcplm.models.io import save_pretrained

    hf = _random_hf_esm()
    want = _direct_marginals(hf, WT, MUTANTS, masked=method == "masked-marginal")
    save_pretrained(from_hf_esm(hf, attention_backend="dense"), tmp_path / "esm")
    hf.save_pretrained(tmp_path / "hf")
    for source in (tmp_path / "esm", tmp_path / "hf"):  # our model directory, and the HF directory read directly
        sm = V.load_scoring_model(source)
        got = V.score_substitutions(sm, WT, _subs(MUTANTS), method, max_tokens=300).scores
        assert np.abs(want).max() > 0.5  # the scores are far from zero: the comparison has teeth
        np.testing.assert_allclose(got, want, rtol=0, atol=PARITY_ATOL)


@pytest.mark.parametrize("method", ["masked-marginal", "wt-marginal"])
def test_windows_follow_proteingym_optimal_window(method):
    """A 30-token window over the 78-token protein: every site sees ProteinGym's window."""
    from lcplm.models.convert_esm import from_hf_esm

    hf = _random_hf_esm()
    ours = from_hf_esm(hf, attention_backend="dense")
    want = _direct_marginals(hf, WT, MUTANTS, masked=method == "masked-marginal", window=30)
    got = V.score_substitutions(ours, WT, _subs(MUTANTS), method, window=30).scores
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY_ATOL)
    whole = V.score_substitutions(ours, WT, _subs(MUTANTS), method, window="none").scores
    assert np.abs(whole - want).max() > 1e-3  # the window changes the scores: the test can fail


def test_optimal_window_cases():
    assert V.optimal_window(5, 100, 200) == (0, 100)
    assert V.optimal_window(5, 100, 20) == (0, 20)
    assert V.optimal_window(95, 100, 20) == (80, 100)
    assert V.optimal_window(90, 100, 20) == (80, 100)
    assert V.optimal_window(50, 100, 20) == (40, 60)
    assert V.optimal_window(50, 100, 21) == (40, 60)  # ProteinGym's odd window is 2 * (w // 2) wide in the middle


@pytest.mark.parametrize("chunk", [64, 2])
def test_pseudo_ll_equals_direct_sum_over_positions(chunk, monkeypatch):
    from lcplm.models.convert_esm import from_hf_esm

    monkeypatch.setattr(V, "PLL_CHUNK", chunk)  # 2: the four sequences run in two chunks

    hf = _random_hf_esm()
    ours = from_hf_esm(hf, attention_backend="dense")
    seq = WT[:24]
    mutants = ["K2R", "Y5F:Q9E", "S13T"]

    def pll(s):
        tokens, alphabet = _fair_esm_tokens(s)
        total = 0.0
        with torch.no_grad():
            for i in range(1, len(s) + 1):  # every residue (ESM's loop stops two short)
                t = tokens.clone()
                t[0, i] = alphabet.mask_idx
                lp = torch.log_softmax(hf(t, attention_mask=torch.ones_like(t)).logits, dim=-1)
                total += lp[0, i, alphabet.get_idx(s[i - 1])].item()
        return total

    def mutate(m):
        s = list(seq)
        for part in m.split(":"):
            s[int(part[1:-1]) - 1] = part[-1]
        return "".join(s)

    want = np.asarray([pll(mutate(m)) - pll(seq) for m in mutants])
    res = V.score_substitutions(ours, seq, _subs(mutants), "pseudo-ll", max_tokens=200)
    np.testing.assert_allclose(res.scores, want, rtol=0, atol=1e-4)  # sums of 24 log-probabilities
    assert res.forward_rows == 4 * len(seq)  # wild type + 3 mutants, one masked pass per residue


def test_masked_marginal_runs_one_row_per_position_and_batches_under_the_budget(monkeypatch):
    from lcplm.models.convert_esm import from_hf_esm

    ours = from_hf_esm(_random_hf_esm(), attention_backend="dense")
    shapes = []
    real_forward = ours.forward

    def spy(ids, **kw):
        shapes.append(tuple(ids.shape))
        return real_forward(ids, **kw)

    monkeypatch.setattr(ours, "forward", spy)
    subs = _subs(MUTANTS)
    res = V.score_substitutions(ours, WT, subs, "masked-marginal", max_tokens=78 * 4)
    n_sites = len({s.index for m in subs for s in m})
    assert res.forward_rows == n_sites
    assert sum(b for b, _ in shapes) == n_sites
    assert all(b * L <= 78 * 4 for b, L in shapes) and max(b for b, _ in shapes) == 4


def test_multi_mutant_scores_the_sum_of_its_sites():
    from lcplm.models.convert_esm import from_hf_esm

    ours = from_hf_esm(_random_hf_esm(), attention_backend="dense")
    s = V.score_substitutions(ours, WT, _subs(["K2R", "Q45K", "K2R:Q45K"]), "masked-marginal").scores
    assert s[2] == pytest.approx(s[0] + s[1], abs=1e-9)


def test_bimamba_scores_do_not_depend_on_batching():
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

    torch.manual_seed(0)
    model = BiMambaLM(BiMambaConfig(d_model=32, n_layer=2, scan_backend="chunked"))
    subs = _subs(MUTANTS)
    one = V.score_substitutions(model, WT, subs, "masked-marginal", max_tokens=78).scores  # one row per batch
    many = V.score_substitutions(model, WT, subs, "masked-marginal", max_tokens=10_000).scores
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)
    assert V.resolve_window("auto", V.as_scoring_model(model)) is None  # BiMamba-S scores whole proteins


def _genome_fixture():
    from lcplm.data.genomes import Genome, GenomeProtein

    others = ["MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG"]
    proteins = [GenomeProtein("p0", others[0]), GenomeProtein("target", WT), GenomeProtein("p2", others[1])]
    return [Genome("g1", proteins)]


def test_genome_context_scores_see_other_proteins_only_through_the_pair_source():
    """single_protein: the other proteins' residues cannot change the target's scores; dense:
    they do. And one site's score equals a direct pass over the genome window."""
    from lcplm.data.genomes import Genome, GenomeProtein
    from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

    torch.manual_seed(0)
    model = SparseGenomeLM(SparseTransformerConfig(hidden=32, heads=4, ffn=64, positions="protein",
                                                   attention_backend="reference", init_std=0.3)).eval()
    subs = _subs(MUTANTS)
    genomes = _genome_fixture()
    changed = [Genome("g1", [GenomeProtein("p0", "W" * 27), genomes[0].proteins[1], GenomeProtein("p2", "C" * 39)])]

    def scores(g, source):
        ctx = V.genome_context(g, "target", WT, max_tokens=1000, pair_source=source)
        return ctx, V.score_substitutions(model, WT, subs, "masked-marginal", context=ctx).scores

    ctx, single = scores(genomes, "single_protein")
    assert ctx.first == (1 + 27 + 1) + 1  # <cls> p0 <eos> <cls> | target
    np.testing.assert_allclose(scores(changed, "single_protein")[1], single, rtol=0, atol=1e-5)
    ctx, dense = scores(genomes, "dense")
    assert np.abs(scores(changed, "dense")[1] - dense).max() > 1e-3

    ids = ctx.window_ids.clone()
    site = ctx.first + 1  # K2R
    ids[site] = tokenizer.MASK
    with torch.no_grad():
        logits = model(ids[None], lengths=torch.tensor([len(ids)]), pid=ctx.pid[None], allowed=ctx.allowed[None])
    lp = torch.log_softmax(logits[0, site, :33], dim=-1)
    direct = (lp[tokenizer.TOKEN_TO_ID["R"]] - lp[tokenizer.TOKEN_TO_ID["K"]]).item()
    assert dense[1] == pytest.approx(direct, abs=1e-5)

    pll = V.score_substitutions(model, WT, _subs(["K2R"]), "pseudo-ll", context=ctx, max_tokens=4000)
    assert np.isfinite(pll.scores).all() and pll.forward_rows == 2 * len(WT)


def test_genome_context_errors_name_the_problem():
    from lcplm.errors import UserError

    genomes = _genome_fixture()
    with pytest.raises(UserError, match="no protein 'nope'"):
        V.genome_context(genomes, "nope", WT)
    with pytest.raises(UserError, match="not the assay's wild type"):
        V.genome_context(genomes, "p0", WT)
    with pytest.raises(UserError, match="does not fit"):
        V.genome_context(genomes, "target", WT, max_tokens=40)


def test_lcplm_release_directory_and_its_conversion_score_like_the_model(tmp_path):
    """A BiMamba-S written in LC-PLM's released layout (128-row vocabulary), read directly and
    through `lcplm convert from-lcplm`, scores as the model it came from."""
    from lcplm.__main__ import main as cli
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
    from lcplm.models.convert import save_lcplm

    torch.manual_seed(0)
    model = BiMambaLM(BiMambaConfig(d_model=32, n_layer=2, scan_backend="chunked")).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    subs = _subs(MUTANTS)
    want = V.score_substitutions(model, WT, subs, "masked-marginal").scores
    save_lcplm(model, tmp_path / "release")
    assert cli(["convert", "from-lcplm", str(tmp_path / "release"), str(tmp_path / "ours.ckpt")]) == 0
    for source in (tmp_path / "release", tmp_path / "ours.ckpt"):
        sm = V.load_scoring_model(source)
        assert sm.kind == "bimamba" and V.resolve_window("auto", sm) is None
        # the loaded model scans with the native C kernel, the original with the chunked one: 1.1e-5 apart
        # at most on scores up to 25 (the head is scaled 20x); 1e-4 leaves ~9x room
        np.testing.assert_allclose(V.score_substitutions(sm, WT, subs, "masked-marginal").scores, want, rtol=0, atol=1e-4)
    assert np.abs(want).max() > 0.5
