"""Triton forward of PPI-guided block-sparse attention (flash-attention style).

Triton version: 3.9. GPU tested: none yet. Checked on CPU under ``TRITON_INTERPRET=1`` (fp32
and fp16; the interpreter's bf16 ``tl.dot`` is broken) and compiled ahead of time for sm_80 and
sm_90 with the ptxas bundled in Triton's wheel (tests/kernels/test_block_sparse_compile.py).
The GPU tests (``tests/kernels``, marker ``gpu``) and ``benchmarks/ops/bench_block_sparse_attn.py``
are the first runs on hardware; benchmarks/RESULTS.md says what has been measured.

Supported: q, k, v (B, H, L, D) with any strides whose last one is 1; fp16, bf16, fp32
(fp32 matmuls use TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` is on); any L;
16 <= D <= 128 (BLOCK_D is D rounded up to a power of two, masked); tiles block_m x block_n
from the layout (powers of two in [16, 128]).
Limits: no dropout, no attention bias beyond the pid/allowed mask, no causal mode; B*H*L*D
must fit in int64 offsets (it does), per-sample P+1 squared allowed bytes are read from L2.

One program per (query block, head): it walks the block's partial tiles (masked from pid and
allowed, loaded with bounds checks) and then its full tiles (no mask, no bounds checks), with
an online softmax in base 2. A query row with no allowed key writes zeros and lse = +inf.
"""

from __future__ import annotations

import triton
import triton.language as tl

# read once, like @triton.jit does: kernels defined now are interpreted iff this is true
INTERPRET = bool(triton.knobs.runtime.interpret)


def autotune_configs() -> list[triton.Config]:
    """Launch configurations to try: warps x pipeline stages (tile sizes come from the layout).

    The interpreter cannot autotune over several configs, so it gets one.
    """
    if INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2, 3)]


@triton.jit
def head_dim_mask(offs_d, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr):
    """[BD] bool: columns inside the head dim. A constant-true mask when D is a power of two,
    so the compiler drops it and keeps the loads vectorised along D."""
    if BLOCK_D == HEAD_D:
        return tl.full([BLOCK_D], 1, dtype=tl.int1)
    else:
        return offs_d < HEAD_D


def l_bucket(L: int) -> int:
    """Autotuning key for the sequence length: the next power of two, at least 1024.

    Genome lengths differ every batch; keying on raw L would retune for each of them.
    """
    return max(1024, 1 << (max(L, 1) - 1).bit_length())


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, pq,
    K_BH, V_BH, PID_B, ALLOWED_B, IDX, e_start, e_end,
    stride_kn, stride_vn, L, P1, qk_scale,
    offs_n, offs_d, mask_d,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    for e in range(e_start, e_end):
        kb = tl.load(IDX + e)
        offs_kn = kb * BLOCK_N + offs_n                                                 # [BN]
        if MASKED:
            mask_n = offs_kn < L
            kT = tl.load(K_BH + offs_kn[None, :] * stride_kn + offs_d[:, None],
                         mask=mask_d[:, None] & mask_n[None, :], other=0.0)              # [BD, BN]
            v = tl.load(V_BH + offs_kn[:, None] * stride_vn + offs_d[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)               # [BN, BD]
            pk = tl.load(PID_B + offs_kn, mask=mask_n, other=P1 - 1)                     # [BN]
            ok = tl.load(ALLOWED_B + pq[:, None] * P1 + pk[None, :]) != 0               # [BM, BN]
        else:
            kT = tl.load(K_BH + offs_kn[None, :] * stride_kn + offs_d[:, None],
                         mask=mask_d[:, None], other=0.0)                                # [BD, BN]
            v = tl.load(V_BH + offs_kn[:, None] * stride_vn + offs_d[None, :],
                        mask=mask_d[None, :], other=0.0)                                 # [BN, BD]
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale                     # [BM, BN]
        if MASKED:
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))                                        # [BM]
            # rows with nothing allowed so far keep m = -inf; shift them by 0 so exp2 gives 0
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        alpha = tl.math.exp2(m_i - m_use)                                                # [BM]
        p = tl.math.exp2(s - m_use[:, None])                                             # [BM, BN]
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)              # [BM, BD]
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=autotune_configs(), key=["L_BUCKET", "BLOCK_D"])
@triton.jit
def block_sparse_attn_fwd_kernel(
    Q, K, V, O, LSE,
    PID, ALLOWED, PTR, IDX, FULL_PTR, FULL_IDX, ORDER,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, L, P1, NQ, qk_scale, L_BUCKET,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    row = tl.load(ORDER + tl.program_id(0))
    h = tl.program_id(1).to(tl.int64)
    b = row // NQ
    qb = row - b * NQ
    b64 = b.to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)                                        # [BM]
    offs_n = tl.arange(0, BLOCK_N)                                                       # [BN]
    offs_d = tl.arange(0, BLOCK_D)                                                       # [BD]
    mask_m = offs_m < L
    mask_d = head_dim_mask(offs_d, BLOCK_D, HEAD_D)

    q = tl.load(Q + b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)                      # [BM, BD]
    PID_B = PID + b64 * L
    ALLOWED_B = ALLOWED + b64 * P1 * P1
    pq = tl.load(PID_B + offs_m, mask=mask_m, other=P1 - 1)                              # [BM]
    K_BH = K + b64 * stride_kb + h * stride_kh
    V_BH = V + b64 * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)                           # [BM]
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                                          # [BM]
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)                                 # [BM, BD]
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, pq, K_BH, V_BH, PID_B, ALLOWED_B, IDX,
        tl.load(PTR + row), tl.load(PTR + row + 1),
        stride_kn, stride_vn, L, P1, qk_scale, offs_n, offs_d, mask_d,
        BLOCK_N, True, DOT_PRECISION,
    )
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, pq, K_BH, V_BH, PID_B, ALLOWED_B, FULL_IDX,
        tl.load(FULL_PTR + row), tl.load(FULL_PTR + row + 1),
        stride_kn, stride_vn, L, P1, qk_scale, offs_n, offs_d, mask_d,
        BLOCK_N, False, DOT_PRECISION,
    )
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]                                       # [BM, BD]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))  # [BM]
    tl.store(O + b64 * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + (b64 * H + h) * L + offs_m, lse, mask=mask_m)
