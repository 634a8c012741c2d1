"""LC-PLM <-> lcplm conversion: parity with an LC-PLM-style reference, round trips, the CLI.

The reference below is written from LC-PLM's public description (modeling_lcplm.py's
BiMambaWrapper over mamba-ssm's Mamba-1 slow path): two Mamba mixers whose in/out
projections are the same tensors, the reverse one run on the flipped sequence, each gating
its own scan with silu of its own z, their outputs added; Add -> RMSNorm -> mixer blocks; a
final add + RMSNorm; an untied LM head over 128 rows. Its scan is our sequential reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lcplm.__main__ import main as cli
from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import convert
from lcplm.models.io import from_pretrained
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
from lcplm_kernels.selective_scan import selective_scan_ref

D_MODEL, N_LAYER, D_STATE = 16, 2, 4


class RefRMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class RefMamba(nn.Module):
    """Mamba-1 mixer: in_proj -> causal conv + SiLU -> x_proj -> dt_proj -> scan gated by z -> out_proj."""

    def __init__(self, d, n, k, expand, bias):
        super().__init__()
        e, self.r, self.n = expand * d, -(-d // 16), n
        self.in_proj = nn.Linear(d, 2 * e, bias=bias)
        self.conv1d = nn.Conv1d(e, e, k, groups=e, padding=k - 1, bias=True)
        self.x_proj = nn.Linear(e, self.r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.r, e, bias=True)
        self.A_log = nn.Parameter(torch.zeros(e, n))
        self.D = nn.Parameter(torch.zeros(e))
        self.out_proj = nn.Linear(e, d, bias=bias)

    def forward(self, h):  # (B, L, d)
        length = h.shape[1]
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        dt, b, c = self.x_proj(x.transpose(1, 2)).split([self.r, self.n, self.n], dim=-1)
        dt = self.dt_proj.weight @ dt.transpose(1, 2)
        y = selective_scan_ref(x, dt, -torch.exp(self.A_log), b.transpose(1, 2), c.transpose(1, 2), self.D, z=z,
                               delta_bias=self.dt_proj.bias, delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class RefBiMambaWrapper(nn.Module):
    def __init__(self, d, bias):
        super().__init__()
        self.mamba_fwd = RefMamba(d, D_STATE, 4, 2, bias)
        self.mamba_rev = RefMamba(d, D_STATE, 4, 2, bias)
        self.mamba_rev.in_proj = self.mamba_fwd.in_proj  # bidirectional_weight_tie
        self.mamba_rev.out_proj = self.mamba_fwd.out_proj

    def forward(self, h):
        return self.mamba_fwd(h) + self.mamba_rev(h.flip(1)).flip(1)


class RefBlock(nn.Module):
    def __init__(self, d, bias):
        super().__init__()
        self.norm = RefRMSNorm(d)
        self.mixer = RefBiMambaWrapper(d, bias)

    def forward(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return self.mixer(self.norm(residual)), residual


class RefBackbone(nn.Module):
    def __init__(self, d, n_layer, vocab, bias):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(RefBlock(d, bias) for _ in range(n_layer))
        self.norm_f = RefRMSNorm(d)

    def forward(self, ids):
        hidden, residual = self.embedding(ids), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return self.norm_f(hidden + residual)


class RefLcPlm(nn.Module):
    """LcPlmForMaskedLM's module tree: bimamba.backbone.* and lm_head."""

    def __init__(self, bias=False, vocab=128):
        super().__init__()
        self.bimamba = nn.Module()
        self.bimamba.backbone = RefBackbone(D_MODEL, N_LAYER, vocab, bias)
        self.lm_head = nn.Linear(D_MODEL, vocab, bias=False)

    def forward(self, ids):
        return self.lm_head(self.bimamba.backbone(ids))


def ref_model(bias=False, seed=0) -> RefLcPlm:
    torch.manual_seed(seed)
    ref = RefLcPlm(bias=bias)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.rand_like(p) * 2 - 3)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.3)
    return ref.eval()


def ref_config(bias=False) -> dict:
    return {
        "architectures": ["LcPlmForMaskedLM"], "model_type": "lc_plm", "d_model": D_MODEL, "n_layer": N_LAYER,
        "d_intermediate": 0, "vocab_size": 128, "pad_vocab_size_multiple": 128, "layer": "Mamba1",
        "ssm_cfg": {"d_state": D_STATE, "bias": bias}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "bidirectional": True, "bidirectional_strategy": "add",
        "bidirectional_weight_tie": True, "tie_embeddings": False, "norm_epsilon": 1e-5,
    }


def released_state(ref: RefLcPlm) -> dict:
    """The state dict as the release stores it: tied projections once, under mamba_fwd."""
    return {k: v.clone() for k, v in ref.state_dict().items()
            if not (".mamba_rev.in_proj." in k or ".mamba_rev.out_proj." in k)}


def write_release(tmp: Path, ref: RefLcPlm, config: dict, fmt="safetensors") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(released_state(ref), str(tmp / "model.safetensors"))
    else:
        torch.save(ref.state_dict(), tmp / "pytorch_model.bin")  # both tied names, shared storage
    return tmp


def ids_batch(n=3, length=37, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 33, (n, length), generator=g)  # every ESM-2 id, specials included


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_parity_with_lcplm_formulation(bias, backend):
    ref = ref_model(bias=bias)
    cfg = convert.config_from_lcplm(ref_config(bias), scan_backend=backend)
    assert cfg.resolved_dt_rank == 1 and cfg.bias == bias
    model = BiMambaLM(cfg).eval()
    model.load_state_dict(convert.lcplm_state_to_ours(ref.state_dict(), cfg))
    ids = ids_batch()
    with torch.no_grad():
        expect = ref(ids)[..., : tokenizer.PADDED_VOCAB_SIZE]
        got = model(ids)
    assert expect.abs().max() > 1.0  # not a trivially small output
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)


def test_released_layout_directory_loads(tmp_path):
    ref = ref_model()
    for fmt in ("safetensors", "bin"):
        d = write_release(tmp_path / fmt, ref, ref_config(), fmt)
        model = from_pretrained(d, scan_backend="reference")
        with torch.no_grad():
            torch.testing.assert_close(model(ids_batch()), ref(ids_batch())[..., :40], rtol=0, atol=1e-5)


def test_round_trip_ours_to_lcplm_to_ours_is_exact(tmp_path):
    torch.manual_seed(3)
    model = BiMambaLM(BiMambaConfig(d_model=D_MODEL, n_layer=N_LAYER, d_state=D_STATE, bias=True))
    state = model.state_dict()
    back = convert.lcplm_state_to_ours(convert.ours_state_to_lcplm(state, model.cfg), model.cfg)
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k
    convert.save_lcplm(model, tmp_path / "export")
    reloaded = from_pretrained(tmp_path / "export")
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert reloaded.cfg.bias and reloaded.cfg.d_state == D_STATE


def test_export_runs_in_the_lcplm_formulation():
    """Our weights, exported, give the same logits in the LC-PLM-style model (strict load)."""
    torch.manual_seed(4)
    model = BiMambaLM(BiMambaConfig(d_model=D_MODEL, n_layer=N_LAYER, d_state=D_STATE, bias=True, scan_backend="reference")).eval()
    ref = RefLcPlm(bias=True).eval()
    ref.load_state_dict(convert.ours_state_to_lcplm(model.state_dict(), model.cfg, duplicate_tied=True))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids_batch())[..., :40], model(ids_batch()), rtol=0, atol=1e-5)
    released = convert.ours_state_to_lcplm(model.state_dict(), model.cfg)
    missing, unexpected = ref.load_state_dict(released, strict=False)
    assert not unexpected and all(".mamba_rev.in_proj." in k or ".mamba_rev.out_proj." in k for k in missing)


def test_vocab_rows_trimmed_and_padded():
    ref = ref_model()
    cfg = convert.config_from_lcplm(ref_config())
    ours = convert.lcplm_state_to_ours(ref.state_dict(), cfg)
    emb = ref.bimamba.backbone.embedding.weight
    assert torch.equal(ours["backbone.embedding.weight"], emb[:40])
    back = convert.ours_state_to_lcplm(ours, cfg)
    assert back["bimamba.backbone.embedding.weight"].shape == (128, D_MODEL)
    assert torch.equal(back["bimamba.backbone.embedding.weight"][:40], emb[:40])
    assert not back["lm_head.weight"][40:].any()


def test_backbone_prefix_is_accepted():
    ref = ref_model()
    state = {k.replace("bimamba.backbone.", "backbone."): v for k, v in ref.state_dict().items()}
    cfg = convert.config_from_lcplm(ref_config())
    assert convert.lcplm_state_to_ours(state, cfg).keys() == BiMambaLM(cfg).state_dict().keys()


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c["ssm_cfg"].update(layer="Mamba2"), "Mamba-1"),
        (lambda c: c.update(bidirectional_weight_tie=False), "bidirectional_weight_tie"),
        (lambda c: c.update(d_intermediate=64), "d_intermediate"),
        (lambda c: c["ssm_cfg"].update(headdim=64), "ssm_cfg.headdim"),
        (lambda c: c.pop("d_model"), "d_model"),
    ],
)
def test_unsupported_configs_are_refused(mutate, match):
    c = ref_config()
    mutate(c)
    with pytest.raises(UserError, match=match):
        convert.config_from_lcplm(c)


def test_untied_reverse_projection_is_refused():
    ref = ref_model()
    state = dict(ref.state_dict())
    key = "bimamba.backbone.layers.1.mixer.mamba_rev.in_proj.weight"
    state[key] = state[key] + 1
    with pytest.raises(UserError, match="not tied"):
        convert.lcplm_state_to_ours(state, convert.config_from_lcplm(ref_config()))


# --------------------------------------------------------------------------- CLI


def test_cli_round_trip(tmp_path, capsys):
    ref = ref_model()
    src = write_release(tmp_path / "release", ref, ref_config())
    ours = tmp_path / "ours"
    assert cli(["convert", "from-lcplm", str(src), str(ours), "--scan-backend", "reference"]) == 0
    model = from_pretrained(ours)
    assert model.cfg.scan_backend == "reference"
    with torch.no_grad():
        torch.testing.assert_close(model(ids_batch()), ref(ids_batch())[..., :40], rtol=0, atol=1e-5)
    out = tmp_path / "export"
    assert cli(["convert", "to-lcplm", str(ours), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    again = from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert "wrote" in capsys.readouterr().out


def _cli_error(argv, capsys) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert "not found" in _cli_error(["convert", "from-lcplm", str(tmp_path / "nope"), out], capsys)
    (tmp_path / "empty").mkdir()
    assert "config.json" in _cli_error(["convert", "from-lcplm", str(tmp_path / "empty"), out], capsys)

    ref = ref_model()
    esm_like = tmp_path / "esm"
    esm_like.mkdir()
    (esm_like / "config.json").write_text(json.dumps(ref_config()))
    save_file({"esm.embeddings.word_embeddings.weight": torch.zeros(33, 16)}, str(esm_like / "model.safetensors"))
    assert "not an LC-PLM BiMamba state dict" in _cli_error(["convert", "from-lcplm", str(esm_like), out], capsys)

    wrong = ref_config()
    wrong["ssm_cfg"]["d_state"] = 8  # the weights have 4
    src = write_release(tmp_path / "wrong", ref, wrong)
    err = _cli_error(["convert", "from-lcplm", str(src), out], capsys)
    assert "'bimamba.backbone.layers.0.mixer.mamba_fwd.x_proj.weight' has shape (9, 32)" in err

    deeper = ref_config()
    deeper["n_layer"] = 1  # the weights have 2 layers
    src = write_release(tmp_path / "deeper", ref, deeper)
    assert "unexpected weight" in _cli_error(["convert", "from-lcplm", str(src), out], capsys)

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(ref_config()))
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    assert "cannot read weights" in _cli_error(["convert", "from-lcplm", str(tmp_path / "bad"), out], capsys)

    assert "not found" in _cli_error(["convert", "to-lcplm", str(tmp_path / "none.ckpt"), str(tmp_path / "x")], capsys)
