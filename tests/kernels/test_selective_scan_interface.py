"""The selective-scan dispatch (lcplm_kernels.selective_scan.interface): backend resolution, the
cuda backend's packed-batch rule, and the errors for a backend asked for by name that cannot run.
The CPU kernel's own dispatch cases are in test_selective_scan_cpu.py."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lcplm_kernels import BackendUnavailableError
from lcplm_kernels.selective_scan import interface, naive
from scan_cases import ATOL, RTOL, make_inputs


def _packed(lengths, dim=4, nstate=5, seed=8):
    total = sum(lengths)
    x = make_inputs(1, dim, nstate, total, seed=seed)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return x, cu


def test_backend_dispatch_on_cpu():
    x = make_inputs(2, 4, 8, 40)
    ref = naive.selective_scan_ref(**x, delta_softplus=True)
    native_ok = interface.native_scan_unavailable() is None
    for backend in ("auto", "chunked", "reference") + (("native",) if native_ok else ()):
        out = interface.selective_scan(**x, delta_softplus=True, backend=backend)
        torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    # auto on CPU: the fused C kernel when it compiles here, else the chunked PyTorch scan
    assert interface.resolve_scan_backend("auto", torch.device("cpu")) == ("native" if native_ok else "chunked")
    assert interface.resolve_scan_backend("auto", torch.device("cpu"), torch.float64) == "chunked"


def test_named_backend_that_cannot_run_says_what_to_do(monkeypatch):
    monkeypatch.setattr(interface, "mamba_scan_fn", lambda: None)
    x = make_inputs(1, 2, 3, 5)
    with pytest.raises(BackendUnavailableError, match=r"pip install -e \.\[gpu\]"):
        interface.selective_scan(**x, backend="cuda")
    monkeypatch.setattr(interface, "mamba_scan_fn", lambda: object())
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        interface.selective_scan(**x, backend="cuda")
    with pytest.raises(ValueError, match="must be one of"):
        interface.selective_scan(**x, backend="fast")


def test_cli_turns_backend_unavailable_into_one_line_and_exit_2(monkeypatch, capsys):
    """lcplm_kernels cannot raise lcplm's UserError; the CLI treats its BackendUnavailableError alike."""
    from lcplm import cli

    monkeypatch.setattr(interface, "mamba_scan_fn", lambda: None)

    def main(argv):
        interface.resolve_scan_backend("cuda", torch.device("cpu"))
        return 0

    command = types.ModuleType("lcplm_test_command")
    command.main = main
    monkeypatch.setitem(sys.modules, "lcplm_test_command", command)
    monkeypatch.setitem(cli.COMMANDS, "scan", ("lcplm_test_command", "raises BackendUnavailableError"))
    assert cli.main(["scan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lcplm scan: error: scan backend 'cuda' needs mamba-ssm" in err


def test_cuda_packed_rule_unpacks_and_repacks(monkeypatch):
    """The cuda backend's packed-batch rule (unpack to padded, scan, pack), run with the reference
    standing in for the kernel: it must equal the reference's own segment-reset scan."""

    def fake_kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        return naive.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    monkeypatch.setattr(interface, "mamba_scan_fn", lambda: fake_kernel)
    monkeypatch.setattr(interface, "resolve_scan_backend", lambda backend, device, dtype=None: "cuda")
    x, cu = _packed([4, 1, 30, 9])
    out = interface.selective_scan(**x, delta_softplus=True, cu_seqlens=cu, backend="cuda")
    ref = naive.selective_scan_ref(**x, delta_softplus=True, cu_seqlens=cu)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
