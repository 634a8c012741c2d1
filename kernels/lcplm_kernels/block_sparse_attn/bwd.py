"""Triton backward of PPI-guided block-sparse attention (flash-attention 2 style, no atomics).

Same Triton version, hardware status, shapes and limits as fwd.py. Three launches:
1. ``block_sparse_attn_bwd_preprocess_kernel``: delta = rowsum(dO * O) per query, fp32.
2. ``block_sparse_attn_bwd_dkdv_kernel``: one program per (key block, head) walks the
   key-major layout (the query blocks that attend it) and accumulates dK, dV in registers.
3. ``block_sparse_attn_bwd_dq_kernel``: one program per (query block, head) walks the
   query-major layout and accumulates dQ.
Probabilities are recomputed from the forward's base-2 log-sum-exp; a query row with no
allowed key has lse = +inf, so its probabilities, and all its gradients, are exactly zero.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .fwd import autotune_configs, head_dim_mask


@triton.jit
def block_sparse_attn_bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_om,
    stride_dob, stride_doh, stride_dom,
    H, L,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)                          # [BM]
    offs_d = tl.arange(0, BLOCK_D)                                                       # [BD]
    mask = (offs_m < L)[:, None] & head_dim_mask(offs_d, BLOCK_D, HEAD_D)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)                                     # [BM, BD]
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)                                    # [BM, BD]
    tl.store(DELTA + (b * H + h) * L + offs_m, tl.sum(o * do, 1), mask=offs_m < L)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, pk,
    Q_BH, DO_BH, LSE_BH, DELTA_BH, PID_B, ALLOWED_B, IDX, e_start, e_end,
    stride_qm, stride_dom, L, P1, qk_scale,
    offs_m, offs_d, mask_d,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    for e in range(e_start, e_end):
        qb = tl.load(IDX + e)
        offs_qm = qb * BLOCK_M + offs_m                                                  # [BM]
        if MASKED:
            mask_m = offs_qm < L
            qT = tl.load(Q_BH + offs_qm[None, :] * stride_qm + offs_d[:, None],
                         mask=mask_d[:, None] & mask_m[None, :], other=0.0)              # [BD, BM]
            do = tl.load(DO_BH + offs_qm[:, None] * stride_dom + offs_d[None, :],
                         mask=mask_m[:, None] & mask_d[None, :], other=0.0)              # [BM, BD]
            # out-of-range queries: lse = +inf gives p = 0
            lse = tl.load(LSE_BH + offs_qm, mask=mask_m, other=float("inf"))            # [BM]
            delta = tl.load(DELTA_BH + offs_qm, mask=mask_m, other=0.0)                 # [BM]
            pq = tl.load(PID_B + offs_qm, mask=mask_m, other=P1 - 1)                     # [BM]
            okT = tl.load(ALLOWED_B + pq[None, :] * P1 + pk[:, None]) != 0              # [BN, BM]
        else:
            qT = tl.load(Q_BH + offs_qm[None, :] * stride_qm + offs_d[:, None],
                         mask=mask_d[:, None], other=0.0)                                # [BD, BM]
            do = tl.load(DO_BH + offs_qm[:, None] * stride_dom + offs_d[None, :],
                         mask=mask_d[None, :], other=0.0)                                # [BM, BD]
            lse = tl.load(LSE_BH + offs_qm)                                              # [BM]
            delta = tl.load(DELTA_BH + offs_qm)                                          # [BM]
        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale                    # [BN, BM]
        pT = tl.math.exp2(sT - lse[None, :])                                             # [BN, BM]
        if MASKED:
            pT = tl.where(okT, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)             # [BN, BD]
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)                    # [BN, BM]
        dsT = pT * (dpT - delta[None, :])                                                # [BN, BM]
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PRECISION)  # [BN, BD]
    return dk, dv


@triton.autotune(configs=autotune_configs(), key=["L_BUCKET", "BLOCK_D"])
@triton.jit
def block_sparse_attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    PID, ALLOWED, PTR, IDX, FULL_PTR, FULL_IDX, ORDER,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, L, P1, NK, qk_scale, sm_scale, L_BUCKET,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    row = tl.load(ORDER + tl.program_id(0))
    h = tl.program_id(1).to(tl.int64)
    b = row // NK
    kb = row - b * NK
    b64 = b.to(tl.int64)
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)                                        # [BN]
    offs_m = tl.arange(0, BLOCK_M)                                                       # [BM]
    offs_d = tl.arange(0, BLOCK_D)                                                       # [BD]
    mask_n = offs_n < L
    mask_d = head_dim_mask(offs_d, BLOCK_D, HEAD_D)
    mask_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(K + b64 * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=mask_nd, other=0.0)                                                 # [BN, BD]
    v = tl.load(V + b64 * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=mask_nd, other=0.0)                                                 # [BN, BD]
    PID_B = PID + b64 * L
    ALLOWED_B = ALLOWED + b64 * P1 * P1
    pk = tl.load(PID_B + offs_n, mask=mask_n, other=P1 - 1)                              # [BN]
    Q_BH = Q + b64 * stride_qb + h * stride_qh
    DO_BH = DO + b64 * stride_dob + h * stride_doh
    LSE_BH = LSE + (b64 * H + h) * L
    DELTA_BH = DELTA + (b64 * H + h) * L

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)                                  # [BN, BD]
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)                                  # [BN, BD]
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, pk, Q_BH, DO_BH, LSE_BH, DELTA_BH, PID_B, ALLOWED_B, IDX,
        tl.load(PTR + row), tl.load(PTR + row + 1),
        stride_qm, stride_dom, L, P1, qk_scale, offs_m, offs_d, mask_d,
        BLOCK_M, True, DOT_PRECISION,
    )
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, pk, Q_BH, DO_BH, LSE_BH, DELTA_BH, PID_B, ALLOWED_B, FULL_IDX,
        tl.load(FULL_PTR + row), tl.load(FULL_PTR + row + 1),
        stride_qm, stride_dom, L, P1, qk_scale, offs_m, offs_d, mask_d,
        BLOCK_M, False, DOT_PRECISION,
    )
    tl.store(DK + b64 * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + b64 * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=mask_nd)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, pq,
    K_BH, V_BH, PID_B, ALLOWED_B, IDX, e_start, e_end,
    stride_kn, stride_vn, L, P1, qk_scale,
    offs_n, offs_d, mask_d,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    for e in range(e_start, e_end):
        kb = tl.load(IDX + e)
        offs_kn = kb * BLOCK_N + offs_n                                                  # [BN]
        if MASKED:
            mask_n = offs_kn < L
            kT = tl.load(K_BH + offs_kn[None, :] * stride_kn + offs_d[:, None],
                         mask=mask_d[:, None] & mask_n[None, :], other=0.0)              # [BD, BN]
            vT = tl.load(V_BH + offs_kn[None, :] * stride_vn + offs_d[:, None],
                         mask=mask_d[:, None] & mask_n[None, :], other=0.0)              # [BD, BN]
            pk = tl.load(PID_B + offs_kn, mask=mask_n, other=P1 - 1)                     # [BN]
            ok = tl.load(ALLOWED_B + pq[:, None] * P1 + pk[None, :]) != 0               # [BM, BN]
        else:
            kT = tl.load(K_BH + offs_kn[None, :] * stride_kn + offs_d[:, None],
                         mask=mask_d[:, None], other=0.0)                                # [BD, BN]
            vT = tl.load(V_BH + offs_kn[None, :] * stride_vn + offs_d[:, None],
                         mask=mask_d[:, None], other=0.0)                                # [BD, BN]
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale                     # [BM, BN]
        p = tl.math.exp2(s - lse[:, None])                                               # [BM, BN]
        if MASKED:
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)                              # [BM, BN]
        ds = p * (dp - delta[:, None])                                                   # [BM, BN]
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PRECISION)   # [BM, BD]
    return dq


@triton.autotune(configs=autotune_configs(), key=["L_BUCKET", "BLOCK_D"])
@triton.jit
def block_sparse_attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    PID, ALLOWED, PTR, IDX, FULL_PTR, FULL_IDX, ORDER,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    H, L, P1, NQ, qk_scale, sm_scale, L_BUCKET,
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
    mask_md = mask_m[:, None] & mask_d[None, :]
    q = tl.load(Q + b64 * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=mask_md, other=0.0)                                                 # [BM, BD]
    do = tl.load(DO + b64 * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=mask_md, other=0.0)                                                # [BM, BD]
    lse = tl.load(LSE + (b64 * H + h) * L + offs_m, mask=mask_m, other=float("inf"))    # [BM]
    delta = tl.load(DELTA + (b64 * H + h) * L + offs_m, mask=mask_m, other=0.0)         # [BM]
    PID_B = PID + b64 * L
    ALLOWED_B = ALLOWED + b64 * P1 * P1
    pq = tl.load(PID_B + offs_m, mask=mask_m, other=P1 - 1)                              # [BM]
    K_BH = K + b64 * stride_kb + h * stride_kh
    V_BH = V + b64 * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)                                  # [BM, BD]
    dq = _dq_tiles(
        dq, q, do, lse, delta, pq, K_BH, V_BH, PID_B, ALLOWED_B, IDX,
        tl.load(PTR + row), tl.load(PTR + row + 1),
        stride_kn, stride_vn, L, P1, qk_scale, offs_n, offs_d, mask_d,
        BLOCK_N, True, DOT_PRECISION,
    )
    dq = _dq_tiles(
        dq, q, do, lse, delta, pq, K_BH, V_BH, PID_B, ALLOWED_B, FULL_IDX,
        tl.load(FULL_PTR + row), tl.load(FULL_PTR + row + 1),
        stride_kn, stride_vn, L, P1, qk_scale, offs_n, offs_d, mask_d,
        BLOCK_N, False, DOT_PRECISION,
    )
    tl.store(DQ + b64 * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask_md)
