"""The Triton kernels compile for real GPUs (sm_80, sm_90) without one: Triton's compiler and
the ptxas bundled in its wheel run on CPU. This catches what the interpreter cannot: typing
and layout errors in the GPU lowering, and tiles that do not fit in shared memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

COMPILE = textwrap.dedent(
    """
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from lcplm_kernels.block_sparse_attn import bwd, fwd

    def signature(fn, dtype, constexprs):
        kinds = {"LSE": "*fp32", "DELTA": "*fp32", "ALLOWED": "*u8", "qk_scale": "fp32", "sm_scale": "fp32"}
        kinds.update({n: "*i32" for n in ("PID", "PTR", "IDX", "FULL_PTR", "FULL_IDX", "ORDER")})
        kinds.update({n: "*" + dtype for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")})
        return {n: "constexpr" if n in constexprs else kinds.get(n, "i32") for n in fn.arg_names}

    capability, dtype, head_d, block_d, block = (int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6]))
    kernels = (fwd.block_sparse_attn_fwd_kernel, bwd.block_sparse_attn_bwd_dkdv_kernel, bwd.block_sparse_attn_bwd_dq_kernel)
    for kernel in kernels:
        consts = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d, HEAD_D=head_d, DOT_PRECISION="ieee")
        sig = signature(kernel.fn, dtype, consts)
        # what the JIT specialises on at run time: 16-byte aligned pointers, strides divisible
        # by 16; without it the compiler skips the cp.async / wgmma pipelining paths
        aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.fn.arg_names)
                   if sig[n].startswith("*") or n.startswith("stride_")}
        src = ASTSource(fn=kernel.fn, signature=sig, constexprs=consts, attrs=aligned)
        out = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=dict(num_warps=4, num_stages=2))
        print(kernel.fn.__name__, "shared", out.metadata.shared, "async copies", out.asm["ttgir"].count("async_copy_global_to_local"))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "capability,dtype,head_d,block_d,block",
    [(90, "bf16", 64, 64, 64), (80, "fp16", 80, 128, 64)],
)
def test_kernels_compile_for_gpu(capability, dtype, head_d, block_d, block):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", COMPILE, str(capability), dtype, str(head_d), str(block_d), str(block)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("fwd_kernel", "bwd_dkdv_kernel", "bwd_dq_kernel"):
        line = next(x for x in res.stdout.splitlines() if x.startswith(f"block_sparse_attn_{name} "))
        # the K/V (or Q/dO) tile loads of the main loop are software-pipelined
        assert int(line.split()[-1]) > 0, line
