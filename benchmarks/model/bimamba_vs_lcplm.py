"""One BiMamba-S mixer (ours: shared projections run once) vs LC-PLM's formulation (two
weight-tied Mamba calls, the second on the flipped sequence), at d_model 1536 (issue 3).

    .venv/bin/python benchmarks/model/bimamba_vs_lcplm.py [--lengths 2048 8192 32768 61000]

FLOPs (CPU, no GPU needed): ``torch.utils.flop_counter.FlopCounterMode`` over forward +
backward of one mixer on meta tensors (shapes only, so 61k tokens cost nothing). LC-PLM's
formulation is emulated with the same modules: ``in_proj`` and ``out_proj`` applied once
per direction, each direction gated with silu of its own z (the reverse one flipped).
Before counting, the emulation is checked to equal our mixer on real tensors (with the
sequential reference scan). FlopCounterMode counts matmuls and convolutions only; the conv
and the scan here are elementwise, so while counting the scan is swapped for an elementwise
stand-in of the same inputs (its python loop over 61k steps would take minutes on meta
tensors and count zero), and the conv + scan cost per token, the same on both sides, is
added analytically for a whole-mixer estimate. Target: FLOP ratio <= 0.6.

GPU (when CUDA and mamba-ssm are present): our mixer on mamba-ssm's kernels vs two
``mamba_ssm.modules.mamba_simple.Mamba`` modules with tied in/out projections (what
LC-PLM's modeling_lcplm.py builds), batch 1, bf16 autocast, forward + backward: time and
peak memory ratios. Without a GPU it prints "no CUDA GPU: skipped".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lcplm_kernels import selective_scan as scan_ops
from lcplm.models.bimamba import BiMambaConfig, BiMambaMixer, SequenceLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def lcplm_formulation(mixer: BiMambaMixer, h: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """LC-PLM's BiMambaWrapper with our modules: Mamba(h) + flip(Mamba'(flip h)), where the two
    Mambas share in_proj / out_proj and each gates its own scan with silu of its own z."""

    def mamba(direction, x_in):
        x, z = mixer.in_proj(x_in).chunk(2, dim=-1)
        y = direction(x.transpose(1, 2), layout, mixer.backend, mixer.chunk_size) * F.silu(z.transpose(1, 2))
        return mixer.out_proj(y.transpose(1, 2))

    return mamba(mixer.fwd, h) + mamba(mixer.rev, h.flip(1)).flip(1)


def check_equivalence() -> float:
    torch.manual_seed(0)
    mixer = BiMambaMixer(BiMambaConfig(d_model=32, n_layer=1, scan_backend="reference"))
    h = torch.randn(2, 50, 32)
    layout = SequenceLayout.build(torch.zeros(2, 50, dtype=torch.long))
    with torch.no_grad():
        return (mixer(h, layout) - lcplm_formulation(mixer, h, layout)).abs().max().item()


def _elementwise_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **_):
    """Stand-in while counting: touches every scan input, only elementwise ops (0 counted FLOPs)."""
    return u * (delta + delta_bias[:, None]) + (B * C).sum(1, keepdim=True) * A.sum() + D[:, None] * u


def count_flops(fn, mixer, h, layout) -> int:
    real_scan = scan_ops.selective_scan  # the model calls it through the package
    scan_ops.selective_scan = _elementwise_scan
    try:
        with FlopCounterMode(display=False) as counter:
            fn(mixer, h, layout).sum().backward()
    finally:
        scan_ops.selective_scan = real_scan
    return counter.get_total_flops()


def elementwise_flops_per_token(cfg: BiMambaConfig) -> int:
    """Conv and scan work per token, forward + backward (~3x forward), both directions:
    conv 2K per channel; scan per state element ~ exp + 2 mul (decay, input) + 2 FMA
    (recurrence, output contraction) = ~7 flops forward. Same for both formulations."""
    e, n, k = cfg.d_inner, cfg.d_state, cfg.d_conv
    forward = 2 * (2 * k * e + 7 * e * n)
    return 3 * forward


def flops_main(lengths: list[int]) -> None:
    print("\nFLOPs of one mixer, d_model 1536, batch 1, forward + backward (FlopCounterMode; meta tensors)")
    err = check_equivalence()
    print(f"  check: LC-PLM emulation vs our mixer on real tensors, max |diff| = {err:.1e}")
    cfg = BiMambaConfig(d_model=1536, n_layer=48, scan_backend="reference")
    with torch.device("meta"):
        mixer = BiMambaMixer(cfg)
    print(f"  {'L':>7} {'ours GFLOP':>11} {'LC-PLM GFLOP':>13} {'matmul ratio':>13} {'whole-mixer est.':>17}")
    for length in lengths:
        h = torch.randn(1, length, cfg.d_model, device="meta", requires_grad=True)
        layout = SequenceLayout.build(torch.zeros(1, length, dtype=torch.long, device="meta"))
        ours = count_flops(lambda m, x, lay: m(x, lay), mixer, h, layout)
        theirs = count_flops(lcplm_formulation, mixer, h, layout)
        extra = elementwise_flops_per_token(cfg) * length
        print(
            f"  {length:>7} {ours / 1e9:>11.1f} {theirs / 1e9:>13.1f} {ours / theirs:>13.3f} "
            f"{(ours + extra) / (theirs + extra):>17.3f}"
        )


def gpu_main(lengths: list[int], repeats: int) -> None:
    print("\nGPU: one mixer, d_model 1536, batch 1, bf16 autocast, forward + backward")
    if not torch.cuda.is_available():
        print("  no CUDA GPU: skipped")
        return
    if scan_ops.mamba_scan_fn() is None:
        print(f"  mamba-ssm not importable: skipped ({scan_ops.GPU_INSTALL_HINT})")
        return
    from mamba_ssm.modules.mamba_simple import Mamba

    from lcplm.models import convert

    torch.manual_seed(0)
    cfg = BiMambaConfig(d_model=1536, n_layer=48, scan_backend="cuda")
    fwd, rev = Mamba(d_model=cfg.d_model).cuda(), Mamba(d_model=cfg.d_model).cuda()
    rev.in_proj.weight = fwd.in_proj.weight
    rev.out_proj.weight = fwd.out_proj.weight
    mixer = BiMambaMixer(cfg).cuda()
    # the same weights on both sides, through the converter's LC-PLM -> ours mapping
    one = BiMambaConfig(d_model=cfg.d_model, n_layer=1)
    state = {f"backbone.layers.0.mixer.mamba_{d}.{k}": v for d, m in (("fwd", fwd), ("rev", rev)) for k, v in m.state_dict().items()}
    state["backbone.embedding.weight"] = torch.zeros(one.vocab_size, cfg.d_model)
    state["backbone.layers.0.norm.weight"] = torch.ones(cfg.d_model)
    state["backbone.norm_f.weight"] = torch.ones(cfg.d_model)
    state["lm_head.weight"] = torch.zeros(one.vocab_size, cfg.d_model)
    prefix = "backbone.layers.0.mixer."
    ours_state = convert.lcplm_state_to_ours(state, one)
    mixer.load_state_dict({k[len(prefix):]: v for k, v in ours_state.items() if k.startswith(prefix)})

    def theirs(x):
        return fwd(x) + rev(x.flip(1)).flip(1)

    def step(fn, x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(x)
        out.float().square().mean().backward()

    def measure(fn, length):
        x = torch.randn(1, length, cfg.d_model, device="cuda", requires_grad=True)
        try:
            for _ in range(2):
                step(fn, x)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                step(fn, x)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / repeats, (torch.cuda.max_memory_allocated() - base) / 2**20
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return float("nan"), float("nan")

    layout_cache = {}

    def ours(x):
        length = x.shape[1]
        if length not in layout_cache:
            layout_cache[length] = SequenceLayout.build(torch.zeros(1, length, dtype=torch.long, device="cuda"))
        return mixer(x, layout_cache[length])

    x = torch.randn(1, 2048, cfg.d_model, device="cuda")
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    print(f"  check (fp32): max |ours - LC-PLM| = {diff:.1e}")
    print(f"  {'L':>7} {'ours ms':>9} {'LC-PLM ms':>10} {'time ratio':>11} {'ours MiB':>9} {'LC-PLM MiB':>11} {'mem ratio':>10}")
    for length in lengths:
        t_o, m_o = measure(ours, length)
        t_t, m_t = measure(theirs, length)
        print(f"  {length:>7} {t_o:>9.2f} {t_t:>10.2f} {t_o / t_t:>11.3f} {m_o:>9.0f} {m_t:>11.0f} {m_o / m_t:>10.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768, 61000])
    p.add_argument("--repeats", type=int, default=5)
    ns = p.parse_args()
    print(header("cuda" if torch.cuda.is_available() else None))
    flops_main(ns.lengths)
    gpu_main(ns.lengths, ns.repeats)


if __name__ == "__main__":
    main()
