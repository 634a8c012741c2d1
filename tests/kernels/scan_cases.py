"""Shared inputs, runner and mamba-ssm fp32 tolerances for the selective-scan tests
(test_selective_scan_chunked.py for the PyTorch scans, test_selective_scan_cpu.py
for the fused C kernel, test_selective_scan_interface.py for the dispatch)."""

from __future__ import annotations

import torch

RTOL, ATOL = 6e-4, 2e-3
RTOLW, ATOLW = 1e-3, 2e-3  # max(1e-3, rtol/atol): mamba widens weight tolerances when z is used
GRAD_TOL = {
    "u": (RTOL * 2, ATOL * 2),
    "delta": (RTOL * 5, ATOL * 10),
    "A": (RTOLW, ATOLW * 5),
    "B": (RTOL, ATOL),
    "C": (RTOL, ATOL),
    "D": (RTOLW, ATOLW),
    "z": (RTOLW, ATOLW),
    "delta_bias": (RTOLW, ATOLW),
}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, nstate, length, seed=0, has_D=True, has_z=True, has_bias=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.rand(batch, dim, length, generator=g),
        "A": -0.5 * torch.rand(dim, nstate, generator=g),
        "B": torch.randn(batch, nstate, length, generator=g),
        "C": torch.randn(batch, nstate, length, generator=g),
        "D": torch.randn(dim, generator=g) if has_D else None,
        "z": torch.randn(batch, dim, length, generator=g) if has_z else None,
        "delta_bias": 0.5 * torch.rand(dim, generator=g) if has_bias else None,
    }
    return {k: (v.to(dtype) if v is not None else None) for k, v in t.items()}


def run(fn, inputs, grad_out=None, grad_last=None, **kw):
    """Outputs, last state and gradients of every input of ``fn`` on fresh leaf copies."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = fn(**leaves, return_last_state=True, **kw)
    loss = (out.float() * grad_out).sum() if grad_out is not None else out.float().sum()
    if grad_last is not None:
        loss = loss + (last * grad_last).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out.detach(), last.detach(), grads


def assert_close_all(a, b, names=NAMES):
    out_a, last_a, grads_a = a
    out_b, last_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last_a, last_b, rtol=RTOL, atol=ATOL)
    for k in names:
        if k in grads_b:
            rtol, atol = GRAD_TOL[k]
            torch.testing.assert_close(grads_a[k], grads_b[k], rtol=rtol, atol=atol, msg=lambda m: f"d{k}: {m}")


def assert_error_at_most_twice_the_references(fn, reference):
    """Flash-attention's rule: ``fn``'s error against an fp64 oracle (``reference`` run in
    fp64) is at most twice the fp32 ``reference``'s own error, for the output and every
    gradient."""
    x = make_inputs(2, 8, 16, 500, seed=4)
    gout = torch.randn(2, 8, 500, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    oracle = run(reference, {k: (v.double() if v is not None else None) for k, v in x.items()}, gout,
                 delta_softplus=True)
    ref = run(reference, x, gout.float(), delta_softplus=True)
    got = run(fn, x, gout.float(), delta_softplus=True)

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(got[0], oracle[0]) <= 2 * err(ref[0], oracle[0]) + 1e-6
    for k in NAMES:
        scale = oracle[2][k].abs().max().item()
        assert err(got[2][k], oracle[2][k]) <= 2 * err(ref[2][k], oracle[2][k]) + 1e-6 * scale, k
