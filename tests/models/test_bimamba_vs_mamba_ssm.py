"""BiMamba-S against mamba-ssm's own ``Mamba`` modules on CPU (an outside reference).

LC-PLM's layer is two weight-tied ``mamba_ssm.modules.mamba_simple.Mamba`` calls, the second on
the flipped sequence: ``Mamba_f(h) + flip(Mamba_r(flip h))`` with in_proj/out_proj shared. Our
mixer runs the projections once. Here both run mamba-ssm's pure-PyTorch pieces: its
``selective_scan_ref`` (installed in place of the CUDA ``selective_scan_fn`` of the module's slow
path) and its ``nn.Conv1d``. mamba-ssm has no CPU build: it imports with a stub
``selective_scan_cuda`` module (ENVIRONMENT.md). That stub and mamba-ssm's registrations of torch
ops must not leak into other tests (nor can mamba-ssm be imported twice in one process), so the
comparison runs in a child process. Skipped where mamba-ssm is not installed (``make install``
puts it, without its CUDA extension, in the dev environment).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, types
import torch
sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
from mamba_ssm.modules import mamba_simple
from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
from lcplm.models import convert
from lcplm.models.bimamba import BiMambaConfig, BiMambaMixer, SequenceLayout

mamba_simple.selective_scan_fn = selective_scan_ref  # the slow path, on mamba-ssm's reference scan
torch.set_num_threads(1)
torch.manual_seed(0)
d, L = 32, 57
fwd = mamba_simple.Mamba(d_model=d, use_fast_path=False)
rev = mamba_simple.Mamba(d_model=d, use_fast_path=False)
rev.in_proj.weight = fwd.in_proj.weight
rev.out_proj.weight = fwd.out_proj.weight
with torch.no_grad():  # distinct per-direction parameters, so a swapped direction shows
    for p in (rev.conv1d.weight, rev.x_proj.weight, rev.dt_proj.weight, rev.D):
        p.add_(0.1 * torch.randn_like(p))


def ours(first, second, backend):
    one = BiMambaConfig(d_model=d, n_layer=1, scan_backend=backend)
    state = {f"backbone.layers.0.mixer.mamba_{k}.{n}": v for k, m in (("fwd", first), ("rev", second)) for n, v in m.state_dict().items()}
    state["backbone.embedding.weight"] = torch.zeros(one.vocab_size, d)
    state["backbone.layers.0.norm.weight"] = torch.ones(d)
    state["backbone.norm_f.weight"] = torch.ones(d)
    state["lm_head.weight"] = torch.zeros(one.vocab_size, d)
    prefix = "backbone.layers.0.mixer."
    mixer = BiMambaMixer(one)
    mixer.load_state_dict({k[len(prefix):]: v for k, v in convert.lcplm_state_to_ours(state, one).items() if k.startswith(prefix)})
    return mixer


h = torch.randn(2, L, d, requires_grad=True)
theirs = fwd(h) + rev(h.flip(1)).flip(1)
g = torch.randn_like(theirs)
(g_theirs,) = torch.autograd.grad(theirs, h, g, retain_graph=True)
layout = SequenceLayout.build(torch.zeros(2, L, dtype=torch.long))
out = {}
for backend in ("reference", "chunked"):
    o = ours(fwd, rev, backend)(h, layout)
    (g_o,) = torch.autograd.grad(o, h, g)
    out[backend] = {"out": (o - theirs).abs().max().item(), "grad": (g_o - g_theirs).abs().max().item()}
with torch.no_grad():
    out["swapped"] = {"out": (ours(rev, fwd, "reference")(h, layout) - theirs).abs().max().item()}
out["scale"] = theirs.abs().max().item()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def diffs():
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba-ssm is not installed (make install puts it in the dev environment)")
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_mixer_equals_two_tied_mamba_ssm_modules(diffs, backend):
    # fp32 on both sides; mamba-ssm's reference and ours differ only in summation order
    assert diffs[backend]["out"] < 2e-5 * max(1.0, diffs["scale"]), diffs
    assert diffs[backend]["grad"] < 2e-5 * max(1.0, diffs["scale"]), diffs


def test_a_swapped_direction_is_detected(diffs):
    """The comparison is sensitive: loading the directions the wrong way round breaks it."""
    assert diffs["swapped"]["out"] > 1e-3, diffs
