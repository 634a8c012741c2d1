/*
 * Fused Mamba-1 selective scan for CPUs: forward and backward, fp32, everything per token
 * in one kernel (delta bias and softplus, the recurrence, the D skip, the silu(z) gate, and
 * all their gradients).
 *
 * Compiled on first use by build.py (cc -O2 -ftree-vectorize -march=native -ffast-math) and
 * called through ctypes; scan.py (and ../conv.py for the conv) wrap it in autograd Functions. The
 * pure-PyTorch references are ../naive.py's selective_scan_ref (sequential) and ../chunked.py.
 *
 * A "row" is one (batch b, channel d) pair; rows are independent, so threads take
 * contiguous row ranges [r0, r1). Per row the N-element state lives in registers and the
 * loop over the state index n is what the compiler vectorises (N = 16: one AVX-512 vector
 * or two AVX2 ones); the per-token passes (softplus, gates) are vectorised over L.
 * Shapes (all contiguous fp32):
 *   u, delta, z, out, y, dout, du, ddelta, dz: (R, L), R = Bsz * Dm rows; y is the
 *   pre-gate output the forward saves (only with z) so the backward's dz needs no recompute
 *   A: (Dm, N)   bias, Dv: (Dm,)   Bt, Ct, dBt, dCt: (Bsz, L, N)   keep: (L,), 0 = sequence start
 *   states: (R, nchunk, N), the state entering each chunk of K steps, saved by the forward
 *   so the backward recomputes one chunk at a time (memory linear in L)
 *   last, dlast, dA_part: (R, N)   dD_part, dbias_part: (R,)   (the caller sums over b)
 * bias, Dv, z, y, keep, last, dlast may be NULL (y must be given with z).
 *
 * Recurrence (the sequential reference's arithmetic):
 *   dt_l = softplus(delta_l + bias)   h_l = exp(dt_l A) keep_l h_{l-1} + dt_l u_l B_l
 *   y_l = <h_l, C_l> + Dv u_l         out_l = y_l silu(z_l)
 * Every factor is a decay in [0, 1] for A <= 0, so nothing overflows for any dt.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
/* Flush denormals to zero inside the kernel (restored on return; MXCSR is per thread): a
 * state decaying through the denormal range (long padding) would otherwise run ~100x slower
 * for those steps. Values below 1.2e-38 change, nothing a float32 result can show. */
#define FTZ_BEGIN                        \
    const unsigned int csr_ = _mm_getcsr(); \
    _mm_setcsr(csr_ | 0x8040u);
#define FTZ_END _mm_setcsr(csr_);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif

#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int64_t Dm, L, N, K, softplus;
    const float *u, *delta, *bias, *A, *Bt, *Ct, *Dv, *z, *keep;
    float *out, *y, *states, *last;
    const float *dout, *dlast;
    float *du, *ddelta, *dz, *dA_part, *dD_part, *dbias_part;
} scan_args;

/* Scratch floats one thread needs: forward L; backward 3 L + 2 (K + 1) N. */
int64_t lcplm_scan_work(int64_t L, int64_t N, int64_t K, int64_t backward) {
    return backward ? 3 * L + 2 * (K + 1) * N : L;
}

typedef union {
    int32_t i;
    float f;
} bits32;

/* r, or x itself when x is NaN: the test is on the bits, which -ffast-math cannot fold */
INLINE float nan_pass(float x, float r) {
    bits32 in, out;
    in.f = x;
    out.f = r;
    out.i = ((in.i & 0x7fffffff) > 0x7f800000) ? in.i : out.i;
    return out.f;
}

/* exp(x): Cody-Waite reduction to [-ln2/2, ln2/2], degree-6 polynomial (about 2 ulp),
 * exponent rebuilt with integer arithmetic. Branch-free so it vectorises (no libm call).
 * Arguments are clamped to [-87.3, 88.3]: a decay below exp(-87.3) ~ 1e-38 is zero for
 * every purpose here.
 * NaN in, NaN out (nan_pass): the file is compiled with -ffast-math, whose finite-math
 * assumption lets the clamps and selects swallow a NaN (-fno-finite-math-only keeps NaN but
 * costs 20%, measured). exp_f, softplus_f and sigmoid_f pass NaN explicitly; everything
 * else reaches the outputs through plain multiplies and adds, which keep it. */
INLINE float exp_f(float x) {
    const float x0 = x;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float f = x - k * 0.693145751953125f;
    f = f - k * 1.428606765330187045e-6f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    bits32 s;
    s.i = ((int32_t)k + 127) << 23;
    return nan_pass(x0, p * s.f);
}

/* log(x) for normal x > 0: x = 2^e m with m in [sqrt(1/2), sqrt(2)), polynomial in m - 1. */
INLINE float log_f(float x) {
    bits32 v;
    v.f = x;
    float e = (float)(((v.i >> 23) & 0xff) - 126);
    v.i = (v.i & 0x007fffff) | 0x3f000000; /* m in [0.5, 1) */
    int lo = v.f < 0.70710678118654752f;
    e = lo ? e - 1.0f : e;
    float m = lo ? v.f + v.f - 1.0f : v.f - 1.0f;
    float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    float y = p * m * z - 2.12194440e-4f * e - 0.5f * z;
    return m + y + 0.693359375f * e;
}

/* log(1 + t) for t in [0, 1], accurate for small t: log(w) * t / (w - 1), w = 1 + t. */
INLINE float log1p_f(float t) {
    float w = 1.0f + t;
    float d = w - 1.0f;
    return d == 0.0f ? t : log_f(w) * (t / d);
}

INLINE float softplus_f(float x) {
    float ax = x < 0.0f ? -x : x;
    return nan_pass(x, (x > 0.0f ? x : 0.0f) + log1p_f(exp_f(-ax)));
}

INLINE float sigmoid_f(float x) { return nan_pass(x, 1.0f / (1.0f + exp_f(-x))); }

/* dt for one row into dt[0..L) */
INLINE void row_dt(const scan_args *a, int64_t r, float *restrict dt) {
    const int64_t L = a->L;
    const float *restrict dr = a->delta + r * L;
    const float bias = a->bias ? a->bias[r % a->Dm] : 0.0f;
    if (a->softplus)
        for (int64_t l = 0; l < L; l++) dt[l] = softplus_f(dr[l] + bias);
    else
        for (int64_t l = 0; l < L; l++) dt[l] = dr[l] + bias;
}

INLINE void fwd_row(const scan_args *a, int64_t r, const int64_t N, float *restrict dt) {
    const int64_t Dm = a->Dm, L = a->L, K = a->K;
    const int64_t b = r / Dm, d = r % Dm;
    const int64_t nchunk = (L + K - 1) / K;
    const float *restrict ur = a->u + r * L;
    const float *restrict Bb = a->Bt + b * L * N;
    const float *restrict Cb = a->Ct + b * L * N;
    const float *restrict keep = a->keep;
    const float Dd = a->Dv ? a->Dv[d] : 0.0f;
    float *restrict yr = a->out + r * L;
    float *restrict st = a->states + r * nchunk * N;
    float h[N], A[N];
    for (int64_t n = 0; n < N; n++) {
        h[n] = 0.0f;
        A[n] = a->A[d * N + n];
    }
    row_dt(a, r, dt);
    for (int64_t l = 0; l < L; l++) {
        if (l % K == 0) memcpy(st + (l / K) * N, h, sizeof(float) * N);
        const float dl = dt[l], x = dl * ur[l], kp = keep ? keep[l] : 1.0f;
        const float *restrict Bl = Bb + l * N;
        const float *restrict Cl = Cb + l * N;
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            float hn = exp_f(dl * A[n]) * kp * h[n] + x * Bl[n];
            h[n] = hn;
            acc += hn * Cl[n];
        }
        yr[l] = acc + Dd * ur[l];
    }
    if (a->z) {
        const float *restrict zr = a->z + r * L;
        float *restrict ys = a->y + r * L;
        for (int64_t l = 0; l < L; l++) {
            ys[l] = yr[l];
            yr[l] *= zr[l] * sigmoid_f(zr[l]);
        }
    }
    if (a->last) memcpy(a->last + r * N, h, sizeof(float) * N);
}

/* Backward of one row. g carries decay_{l+1} dh_{l+1}; at step l, dh_l = g + dy_l C_l. */
INLINE void bwd_row(const scan_args *a, int64_t r, const int64_t N, float *restrict dBt, float *restrict dCt,
                    float *restrict work) {
    const int64_t Dm = a->Dm, L = a->L, K = a->K;
    const int64_t b = r / Dm, d = r % Dm;
    const int64_t nchunk = (L + K - 1) / K;
    const float *restrict ur = a->u + r * L;
    const float *restrict dor = a->dout + r * L;
    const float *restrict Bb = a->Bt + b * L * N;
    const float *restrict Cb = a->Ct + b * L * N;
    const float *restrict keep = a->keep;
    const float *restrict st = a->states + r * nchunk * N;
    const float Dd = a->Dv ? a->Dv[d] : 0.0f;
    const int has_z = a->z != NULL;
    float *restrict dBb = dBt + b * L * N;
    float *restrict dCb = dCt + b * L * N;
    float *restrict dur = a->du + r * L;
    float *restrict ddr = a->ddelta + r * L;
    float *restrict dzr = has_z ? a->dz + r * L : NULL;
    float *restrict dt = work;          /* L */
    float *restrict sg = work + L;      /* L: d softplus / d pre-activation */
    float *restrict gz = work + 2 * L;  /* L: silu(z) */
    float *restrict hbuf = work + 3 * L;
    float *restrict ebuf = hbuf + (K + 1) * N;

    row_dt(a, r, dt);
    if (a->softplus) {
        const float *restrict dr = a->delta + r * L;
        const float bias = a->bias ? a->bias[d] : 0.0f;
        for (int64_t l = 0; l < L; l++) sg[l] = sigmoid_f(dr[l] + bias);
    }
    if (has_z) { /* gz = d out / d y = silu(z); dz = dout y silu'(z) */
        const float *restrict zr = a->z + r * L;
        const float *restrict ys = a->y + r * L;
        for (int64_t l = 0; l < L; l++) {
            float zl = zr[l], s = sigmoid_f(zl);
            gz[l] = zl * s;
            dzr[l] = dor[l] * ys[l] * (s * (1.0f + zl * (1.0f - s)));
        }
    }

    float g[N], A[N], dA[N], h[N];
    for (int64_t n = 0; n < N; n++) {
        g[n] = a->dlast ? a->dlast[r * N + n] : 0.0f;
        A[n] = a->A[d * N + n];
        dA[n] = 0.0f;
    }
    float dD = 0.0f;
    for (int64_t c = nchunk - 1; c >= 0; c--) {
        const int64_t l0 = c * K, T = (L - l0) < K ? (L - l0) : K;
        /* recompute the chunk: hbuf[i] = state entering step l0 + i, hbuf[T] = the state
         * after the chunk; ebuf[i] = that step's decay */
        memcpy(h, st + c * N, sizeof(float) * N);
        for (int64_t i = 0; i < T; i++) {
            const int64_t l = l0 + i;
            const float dl = dt[l], x = dl * ur[l], kp = keep ? keep[l] : 1.0f;
            const float *restrict Bl = Bb + l * N;
            float *restrict hi = hbuf + i * N;
            float *restrict ei = ebuf + i * N;
            for (int64_t n = 0; n < N; n++) {
                float e = exp_f(dl * A[n]) * kp;
                hi[n] = h[n];
                ei[n] = e;
                h[n] = e * h[n] + x * Bl[n];
            }
        }
        memcpy(hbuf + T * N, h, sizeof(float) * N);
        for (int64_t i = T - 1; i >= 0; i--) {
            const int64_t l = l0 + i;
            const float dl = dt[l], ul = ur[l], x = dl * ul;
            const float *restrict Bl = Bb + l * N;
            const float *restrict Cl = Cb + l * N;
            const float *restrict hp = hbuf + i * N;
            const float *restrict hn = hbuf + (i + 1) * N;
            const float *restrict ei = ebuf + i * N;
            float *restrict dBl = dBb + l * N;
            float *restrict dCl = dCb + l * N;
            const float gy = has_z ? dor[l] * gz[l] : dor[l];
            float su = 0.0f, sh = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                float gn = g[n] + gy * Cl[n];
                dCl[n] += gy * hn[n];
                dBl[n] += gn * x;
                su += gn * Bl[n];
                float t = gn * hp[n] * ei[n];
                sh += t * A[n];
                dA[n] += t * dl;
                g[n] = gn * ei[n];
            }
            dD += gy * ul;
            dur[l] = dl * su + Dd * gy;
            ddr[l] = ul * su + sh;
        }
    }
    float dbias = 0.0f;
    if (a->softplus)
        for (int64_t l = 0; l < L; l++) ddr[l] *= sg[l];
    for (int64_t l = 0; l < L; l++) dbias += ddr[l];
    for (int64_t n = 0; n < N; n++) a->dA_part[r * N + n] = dA[n];
    a->dD_part[r] = dD;
    a->dbias_part[r] = dbias;
}

/* Entry points. N is specialised for the common state sizes so the n-loops become whole
 * vectors. Return 0, or 1 on invalid sizes. */
#define DISPATCH(CALL)            \
    switch (a->N) {               \
        case 16: CALL(16); break; \
        case 8: CALL(8); break;   \
        case 4: CALL(4); break;   \
        case 32: CALL(32); break; \
        case 64: CALL(64); break; \
        default: CALL(a->N); break; \
    }

int lcplm_scan_fwd(const scan_args *a, int64_t r0, int64_t r1, float *work) {
    if (a->K < 1 || a->N < 1 || a->L < 1 || (a->z && !a->y)) return 1;
    FTZ_BEGIN
#define FWD(NN) \
    for (int64_t r = r0; r < r1; r++) fwd_row(a, r, NN, work)
    DISPATCH(FWD)
#undef FWD
    FTZ_END
    return 0;
}

int lcplm_scan_bwd(const scan_args *a, int64_t r0, int64_t r1, float *dBt, float *dCt, float *work) {
    if (a->K < 1 || a->N < 1 || a->L < 1 || (a->z && (!a->y || !a->dz))) return 1;
    FTZ_BEGIN
#define BWD(NN) \
    for (int64_t r = r0; r < r1; r++) bwd_row(a, r, NN, dBt, dCt, work)
    DISPATCH(BWD)
#undef BWD
    FTZ_END
    return 0;
}

/* ------------------------------------------------------------------------------------
 * Causal depthwise conv1d + SiLU, the other per-token operation of the Mamba mixer:
 *   pre_l = bias + sum_{j < K, j <= l, pos_l >= j} w[K-1-j] x_{l-j},   out_l = silu(pre_l)
 * pos (Bsz, L) int32 (pos_stride_b 0 when it is (L,)): each token's index within its own
 * packed sequence, so no window crosses a sequence start; NULL for padded batches.
 * Shapes: x, out, dout, dx: (R, L), R = Bsz * E; w: (E, K); bias: (E,) or NULL.
 * The backward recomputes pre (only x is saved) and writes per-row partial sums of dw and
 * dbias (R, K) and (R,), summed over the batch by the caller.
 * ------------------------------------------------------------------------------------ */
typedef struct {
    int64_t E, L, K, silu, pos_stride_b;
    const float *x, *w, *bias;
    const int32_t *pos;
    float *out;
    const float *dout;
    float *dx, *dw_part, *dbias_part;
} conv_args;

/* pre-activation of one row into pre[0..L) */
INLINE void conv_pre(const conv_args *a, int64_t r, const int64_t K, float *restrict pre) {
    const int64_t L = a->L, e = r % a->E, b = r / a->E;
    const float *restrict xr = a->x + r * L;
    const float *restrict w = a->w + e * K;
    const int32_t *restrict pos = a->pos ? a->pos + b * a->pos_stride_b : NULL;
    const float bias = a->bias ? a->bias[e] : 0.0f;
    for (int64_t l = 0; l < L; l++) pre[l] = bias + w[K - 1] * xr[l];
    for (int64_t j = 1; j < K && j < L; j++) {
        const float wj = w[K - 1 - j];
        if (pos)
            for (int64_t l = j; l < L; l++) pre[l] += pos[l] >= j ? wj * xr[l - j] : 0.0f;
        else
            for (int64_t l = j; l < L; l++) pre[l] += wj * xr[l - j];
    }
}

INLINE void conv_fwd_row(const conv_args *a, int64_t r, const int64_t K) {
    const int64_t L = a->L; /* a local: a->L in the loop condition blocks vectorisation */
    float *restrict out = a->out + r * L;
    conv_pre(a, r, K, out);
    if (a->silu)
        for (int64_t l = 0; l < L; l++) out[l] = out[l] * sigmoid_f(out[l]);
}

INLINE void conv_bwd_row(const conv_args *a, int64_t r, const int64_t K, float *restrict dpre) {
    const int64_t L = a->L, e = r % a->E, b = r / a->E;
    const float *restrict xr = a->x + r * L;
    const float *restrict dor = a->dout + r * L;
    const float *restrict w = a->w + e * K;
    const int32_t *restrict pos = a->pos ? a->pos + b * a->pos_stride_b : NULL;
    float *restrict dxr = a->dx + r * L;
    conv_pre(a, r, K, dpre);
    if (a->silu)
        for (int64_t l = 0; l < L; l++) {
            float p = dpre[l], s = sigmoid_f(p);
            dpre[l] = dor[l] * (s * (1.0f + p * (1.0f - s)));
        }
    else
        for (int64_t l = 0; l < L; l++) dpre[l] = dor[l];
    float db = 0.0f, dw0 = 0.0f;
    const float w0 = w[K - 1];
    for (int64_t l = 0; l < L; l++) {
        db += dpre[l];
        dw0 += dpre[l] * xr[l];
        dxr[l] = w0 * dpre[l];
    }
    a->dw_part[r * K + K - 1] = dw0;
    for (int64_t j = 1; j < K; j++) {
        const float wj = w[K - 1 - j];
        float dwj = 0.0f;
        if (pos)
            for (int64_t l = j; l < L; l++) {
                float g = pos[l] >= j ? dpre[l] : 0.0f;
                dwj += g * xr[l - j];
                dxr[l - j] += g * wj;
            }
        else
            for (int64_t l = j; l < L; l++) {
                dwj += dpre[l] * xr[l - j];
                dxr[l - j] += dpre[l] * wj;
            }
        a->dw_part[r * K + K - 1 - j] = dwj;
    }
    if (a->dbias_part) a->dbias_part[r] = db;
}

#define DISPATCH_K(CALL)        \
    switch (a->K) {             \
        case 4: CALL(4); break; \
        case 2: CALL(2); break; \
        case 3: CALL(3); break; \
        default: CALL(a->K); break; \
    }

int lcplm_conv_fwd(const conv_args *a, int64_t r0, int64_t r1) {
    if (a->K < 1 || a->L < 1) return 1;
    FTZ_BEGIN
#define CFWD(KK) \
    for (int64_t r = r0; r < r1; r++) conv_fwd_row(a, r, KK)
    DISPATCH_K(CFWD)
#undef CFWD
    FTZ_END
    return 0;
}

/* work: L floats of scratch owned by the calling thread */
int lcplm_conv_bwd(const conv_args *a, int64_t r0, int64_t r1, float *work) {
    if (a->K < 1 || a->L < 1) return 1;
    FTZ_BEGIN
#define CBWD(KK) \
    for (int64_t r = r0; r < r1; r++) conv_bwd_row(a, r, KK, work)
    DISPATCH_K(CBWD)
#undef CBWD
    FTZ_END
    return 0;
}

/* ------------------------------------------------------------------------------------
 * Forward only, channels-last, both directions: BiMamba-S's mixer at inference.
 *
 * The training kernels above take (B, D, L) rows and vectorise over the state; the model's
 * projections produce (B, L, E) tokens, so using them costs transposes and copies both ways,
 * and the reverse direction costs materialised flips. These run on the projections' layout
 * directly and vectorise over a block of CB channels instead (no horizontal sums): per block,
 * the state is N vectors of CB lanes. Nothing is saved for a backward.
 *
 * Sequences are segments (b, start, end) of the (B, L) token grid: a padded batch has one per
 * row, [0, length); a packed one has one per cu_seqlens entry in row 0. The forward direction
 * runs start -> end; the reverse direction runs end -> start, which is exactly the training
 * path's "reverse each sequence within its extent, scan, reverse back" without the copies.
 * Rows outside every segment are not touched (the caller zeroes them).
 *
 * Activations (x, xc, dbl, z, out) are all fp32 or all bf16 (bf16 = 1: computed in fp32,
 * stored rounded to nearest even); weights are fp32 with the channel dimension padded with
 * zeros to Ep = E rounded up to CB, so every weight load is a whole vector.
 *   x:      (B*L rows, row stride ldx): the in_proj's x half     z: (B*L, row stride ldz)
 *   conv_w: (2, K, Ep) taps per direction (tap K-1 weighs the current step); conv_b: (2, Ep)
 *   xc:     (2, B*L, E): conv + SiLU per direction, written by lcplm_mixer_conv; the scan's
 *           u (and, between the two calls, the caller's x_proj input)
 *   dbl_f, dbl_r: (B*L, row stride lddbl): each direction's x_proj output [dt_low (R) | B (N) | C (N)]
 *   dt_w:   (2, R, Ep) dt_proj weights, transposed; dt_b: (2, Ep); A2: (2, N, Ep) = A log2(e)
 *   Dv:     (2, Ep) or NULL
 *   out:    (B*L, E) = (y_fwd + y_rev) silu(z), y = <C, h> + D u per direction, the state
 *           driven by dt = softplus(dt_low . dt_w + dt_b): dt_proj is fused in here.
 *   yf:     (B*L, E) fp32: y_fwd between the two directions (out itself when out is fp32).
 * Threads take contiguous ranges of channel blocks [cb0, cb1) and run every segment on them.
 * ------------------------------------------------------------------------------------ */
#define CB 16 /* channels per block: one AVX-512 vector, two AVX2 ones */
/* 64-byte vectors on a target without AVX-512 are passed differently (only between these
 * inline functions, never across the library's interface) */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

typedef struct {
    int64_t B, L, E, N, R, K, bf16, nseg, ldx, lddbl, ldz;
    const int64_t *seg;
    const void *x;
    const float *conv_w, *conv_b;
    void *xc;
    const void *dbl_f, *dbl_r, *z;
    const float *dt_w, *dt_b, *A2, *Dv;
    float *yf;
    void *out;
} mixer_args;

INLINE vf vsplat(float x) {
    vf v = {0};
    return v + x;
}

/* m ? a : b lane by lane (m: all ones or all zeros per lane) */
INLINE vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }

/* lanes where x is NaN, tested on the bits (-ffast-math may fold float compares away) */
INLINE vi visnan(vf x) { return ((vi)x & 0x7fffffff) > 0x7f800000; }

/* 2^t for t <= 0. Range reduction to f in [-1/2, 1/2], a degree-6 polynomial (relative error
 * 8e-8), the exponent applied with scalef (AVX-512) or integer arithmetic (t clamped at -126,
 * 2^-126 ~ 1e-38 being 0 for every use here). A NaN t may come out finite: callers pass NaN on
 * where it matters (see lcplm_mixer_scan). */
INLINE vf vexp2(vf t) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    /* f = t - round(t) in one instruction, k = t - f */
    const vf f = (vf)_mm512_reduce_ps((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf k = t - f;
#elif defined(__AVX512F__)
    const vf k = (vf)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = t - k;
#else
    t = vsel(t < vsplat(-126.0f), vsplat(-126.0f), t);
    const vi ki = __builtin_convertvector(t - 0.5f, vi); /* t - 1/2 < 0: truncation is ceil */
    const vf k = __builtin_convertvector(ki, vf);
    const vf f = t - k;
#endif
    vf p = vsplat(1.5345809515565634e-4f);
    p = p * f + 1.3399930903688073e-3f;
    p = p * f + 9.618489071726799e-3f;
    p = p * f + 5.550328642129898e-2f;
    p = p * f + 2.4022646248340607e-1f;
    p = p * f + 6.931471824645996e-1f;
    p = p * f + 1.0f;
#if defined(__AVX512F__)
    return (vf)_mm512_scalef_ps((__m512)p, (__m512)k);
#else
    return p * (vf)((ki + 127) << 23);
#endif
}

/* exp(-|x|) in (0, 1] for any x (|x| = inf gives 2^-150: 0 for every use below) */
INLINE vf vexp_negabs(vf x) {
    const vf t = (vf)((vi)x | (int32_t)0x80000000) * 1.44269504088896341f;
    return vexp2(vsel(t < vsplat(-150.0f), vsplat(-150.0f), t));
}

INLINE vf vsigmoid(vf x) {
    const vf e = vexp_negabs(x);
    const vf r = 1.0f / (1.0f + e);
    return vsel(x >= vsplat(0.0f), r, e * r);
}

/* x sigmoid(x); a NaN x stays NaN (x times anything) */
INLINE vf vsilu(vf x) { return x * vsigmoid(x); }

/* softplus(x) = max(x, 0) + log1p(t), t = exp(-|x|) in (0, 1], with log1p(t) = 2 atanh(s),
 * s = t / (2 + t) in (0, 1/3]: 2 s P(s^2), P a degree-4 fit of atanh(s)/s (relative error
 * 2e-7, small t included: no cancellation). NaN passes (tested on the bits). */
INLINE vf vsoftplus(vf x) {
    const vf t = vexp_negabs(x);
    const vf s = t / (2.0f + t), q = s * s;
    vf p = vsplat(0.1408916711807251f);
    p = p * q + 0.13980300724506378f;
    p = p * q + 0.20012454688549042f;
    p = p * q + 0.3333315849304199f;
    p = p * q + 1.0f;
    const vf r = vsel(x > vsplat(0.0f), x, vsplat(0.0f)) + 2.0f * s * p;
    return vsel(visnan(x), x, r);
}

INLINE float bf16_to_f32(uint16_t h) {
    bits32 v;
    v.i = (int32_t)((uint32_t)h << 16);
    return v.f;
}

/* nb (1..CB) activations from element offset i, fp32 or bf16 widened; other lanes 0 */
INLINE vf ld_act(const void *p, int64_t i, const int bf16, int nb) {
    vf v = {0};
    if (bf16) {
        vh h = {0};
        memcpy(&h, (const uint16_t *)p + i, nb == CB ? sizeof(vh) : (size_t)nb * 2);
        v = (vf)(__builtin_convertvector(h, vu) << 16);
    } else {
        memcpy(&v, (const float *)p + i, nb == CB ? sizeof(vf) : (size_t)nb * 4);
    }
    return v;
}

/* nb lanes to element offset i: fp32, or bf16 rounded to nearest even */
INLINE void st_act(void *p, int64_t i, vf v, const int bf16, int nb) {
    if (bf16) {
        vu w = (vu)v;
        w = (w + 0x7fffu + ((w >> 16) & 1u)) >> 16;
        const vh h = __builtin_convertvector(w, vh);
        memcpy((uint16_t *)p + i, &h, nb == CB ? sizeof(vh) : (size_t)nb * 2);
    } else {
        memcpy((float *)p + i, &v, nb == CB ? sizeof(vf) : (size_t)nb * 4);
    }
}

INLINE vf ld_w(const float *p) {
    vf v;
    memcpy(&v, p, sizeof(vf));
    return v;
}

/* Prefetch the activation at element offset i (fp32 or bf16) for reading (rw 0) or writing.
 * A block's strip of a row is one cache line read once, and rows are 4E bytes or more apart,
 * so the hardware prefetchers miss nearly every one: the kernels fetch the next block's lines
 * while working on the current block. */
#define PREFETCH_ACT(p, i, bf16, rw) __builtin_prefetch((const char *)(p) + (i) * ((bf16) ? 2 : 4), rw, 3)

/* Rows are visited in chunks of a few steps, and within a chunk block by block: a chunk's rows
 * stay cached while every block of the thread reads and writes its strip of them, and the next
 * block's strips are prefetched meanwhile. Block by block over a whole segment instead, nearly
 * every (row, block) access misses. The chunks are short because rows E floats apart map to
 * few L1 sets when E is a multiple of 128 (E = 640: 8 of 64 sets): with 64 rows in flight per
 * array the prefetched lines evicted each other (measured: 5.5 ns per channel-step at 64 rows,
 * 4.1 at 16; the conv likes 8). */
#define MIXER_CHUNK 16
#define CONV_CHUNK 8

/* Steps [l0, l1) of one segment, one channel block, both directions of the causal depthwise
 * conv + SiLU: forward, step l sees x[l - j] (j < K, l - j >= start) with weight w[K-1-j];
 * reverse, step l sees x[l + j] (l + j < end) with the same weight. */
INLINE void mixer_conv_steps(const mixer_args *a, const int64_t *sg, int64_t c0, int64_t l0, int64_t l1,
                             int64_t next_c0, int64_t next_dl, const int64_t KK, const int bf16, const int nb) {
    const int64_t E = a->E, L = a->L, Ep = (E + CB - 1) / CB * CB, BL = a->B * a->L;
    const int64_t b = sg[0], s = sg[1], e = sg[2];
    const char *x = (const char *)a->x;
    for (int64_t dir = 0; dir < 2; dir++) {
        const vf bias = a->conv_b ? ld_w(a->conv_b + dir * Ep + c0) : vsplat(0.0f);
        vf w[KK];
        for (int64_t j = 0; j < KK; j++) w[j] = ld_w(a->conv_w + (dir * KK + j) * Ep + c0);
        /* steps whose whole window lies inside the segment need no per-tap test */
        const int64_t in0 = dir ? l0 : (s + KK - 1 > l0 ? s + KK - 1 : l0);
        const int64_t in1 = dir ? (e - KK + 1 < l1 ? e - KK + 1 : l1) : l1;
        for (int64_t l = l0; l < l1; l++) {
            const int64_t pl = l + next_dl; /* the next unit of work: block next_c0, step pl */
            if (pl < e) {
                PREFETCH_ACT(x, (b * L + pl) * a->ldx + next_c0, bf16, 0);
                PREFETCH_ACT(a->xc, (dir * BL + b * L + pl) * E + next_c0, bf16, 1);
            }
            vf acc = bias;
            if (l >= in0 && l < in1) {
                for (int64_t j = 0; j < KK; j++)
                    acc += w[KK - 1 - j] * ld_act(x, (b * L + (dir ? l + j : l - j)) * a->ldx + c0, bf16, nb);
            } else {
                for (int64_t j = 0; j < KK; j++) {
                    const int64_t src = dir ? l + j : l - j;
                    if (dir ? src < e : src >= s) acc += w[KK - 1 - j] * ld_act(x, (b * L + src) * a->ldx + c0, bf16, nb);
                }
            }
            st_act(a->xc, (dir * BL + b * L + l) * E + c0, vsilu(acc), bf16, nb);
        }
    }
}

/* Steps of one direction of the scan over one segment, one channel block: i0 <= i < i1 counts
 * steps from the segment's start (forward) or end (reverse), from the state h and back into it.
 * The forward direction writes y to yf (fp32 rows like out); the reverse one adds it and writes
 * the gated sum to out. */
INLINE void mixer_scan_steps(const mixer_args *a, const int64_t *sg, int64_t c0, const int64_t dir, int64_t i0,
                             int64_t i1, int64_t next_c0, int64_t next_di, const float *const *dp,
                             float *restrict state, const int64_t NN, const int bf16, const int nb) {
    const int64_t E = a->E, L = a->L, R = a->R, Ep = (E + CB - 1) / CB * CB, BL = a->B * a->L;
    const int64_t b = sg[0], s = sg[1], e = sg[2];
    const float *dtw = a->dt_w + dir * R * Ep + c0;
    const float *A2 = a->A2 + dir * NN * Ep + c0;
    const vf dtb = a->dt_b ? ld_w(a->dt_b + dir * Ep + c0) : vsplat(0.0f);
    const vf Dd = a->Dv ? ld_w(a->Dv + dir * Ep + c0) : vsplat(0.0f);
    /* a NaN in A reaches every output of its channel in the sequential scan; the clamps and
     * rounding inside vexp2 need not keep it, so it is added to y explicitly */
    vf poison = vsplat(0.0f);
    for (int64_t n = 0; n < NN; n++) {
        const vf an = ld_w(A2 + n * Ep);
        poison = vsel(visnan(an), an, poison);
    }
    /* pass 1, independent per step: dt (dt_proj, softplus), dt u, and the D skip. Steps go
     * STEPS1 at a time so that their dt_proj sums and softplus chains run side by side. */
    vf dtv[MIXER_CHUNK], duv[MIXER_CHUNK], yv[MIXER_CHUNK];
    for (int64_t i = i0; i < i1; i++) {
        const int64_t pi = i + next_di; /* the next unit of work: block next_c0, step pi */
        if (pi < e - s) {
            const int64_t prow = b * L + (dir ? e - 1 - pi : s + pi);
            PREFETCH_ACT(a->xc, (dir * BL + prow) * E + next_c0, bf16, 0);
            if (dir == 0) {
                PREFETCH_ACT(a->yf, prow * E + next_c0, 0, 1);
            } else {
                PREFETCH_ACT(a->yf, prow * E + next_c0, 0, 0);
                PREFETCH_ACT(a->z, prow * a->ldz + next_c0, bf16, 0);
                PREFETCH_ACT(a->out, prow * E + next_c0, bf16, 1);
            }
        }
    }
#define STEPS1 4
    for (int64_t i = i0; i < i1; i += STEPS1) {
        const int64_t m = i1 - i < STEPS1 ? i1 - i : STEPS1;
        const float *d[STEPS1];
        vf raw[STEPS1];
#pragma GCC unroll 8
        for (int64_t k = 0; k < STEPS1; k++) {
            d[k] = dp[i - i0 + (k < m ? k : 0)]; /* past the end: repeat a step, results unused */
            raw[k] = dtb;
        }
        for (int64_t r = 0; r < R; r++) {
            const vf w = ld_w(dtw + r * Ep);
#pragma GCC unroll 8
            for (int64_t k = 0; k < STEPS1; k++) raw[k] += d[k][r] * w;
        }
#pragma GCC unroll 8
        for (int64_t k = 0; k < STEPS1; k++) {
            if (k < m) {
                const int64_t l = dir ? e - 1 - (i + k) : s + i + k, row = b * L + l;
                const vf dt = vsoftplus(raw[k]);
                const vf u = ld_act(a->xc, (dir * BL + row) * E + c0, bf16, nb);
                dtv[i - i0 + k] = dt;
                duv[i - i0 + k] = dt * u;
                yv[i - i0 + k] = Dd * u + poison;
            }
        }
    }
#undef STEPS1
    /* pass 2, the recurrence: the decays are independent of the state, so only one multiply-add
     * per state vector and step is on the critical path; y sums in four chains */
    vf h[NN];
    memcpy(h, state, sizeof(h));
    for (int64_t i = i0; i < i1; i++) {
        const vf dt = dtv[i - i0], du = duv[i - i0];
        const float *restrict Bl = dp[i - i0] + R, *restrict Cl = Bl + NN;
        vf yp[4] = {yv[i - i0], vsplat(0.0f), vsplat(0.0f), vsplat(0.0f)};
#pragma GCC unroll 16
        for (int64_t n = 0; n < NN; n++) {
            h[n] = vexp2(dt * ld_w(A2 + n * Ep)) * h[n] + du * Bl[n];
            yp[n & 3] += h[n] * Cl[n];
        }
        const vf y = (yp[0] + yp[1]) + (yp[2] + yp[3]);
        const int64_t l = dir ? e - 1 - i : s + i, row = b * L + l;
        if (dir == 0) {
            st_act(a->yf, row * E + c0, y, 0, nb);
        } else {
            const vf yf = ld_act(a->yf, row * E + c0, 0, nb);
            const vf zl = ld_act(a->z, row * a->ldz + c0, bf16, nb);
            st_act(a->out, row * E + c0, (yf + y) * vsilu(zl), bf16, nb);
        }
    }
    memcpy(state, h, sizeof(h));
}

#define DISPATCH_BF16(CALL) \
    if (a->bf16) {          \
        CALL(1)             \
    } else {                \
        CALL(0)             \
    }

/* full blocks with a constant width (whole-vector loads and stores), the last one as it is */
#define NB(c0) (a->E - (c0) < CB ? (int)(a->E - (c0)) : CB)

/* conv + SiLU of channel blocks [cb0, cb1) over every segment, both directions */
int lcplm_mixer_conv(const mixer_args *a, int64_t cb0, int64_t cb1) {
    if (a->K < 1 || a->E < 1 || a->L < 1) return 1;
    FTZ_BEGIN
#define CONV(KK, BF)                                                                           \
    for (int64_t sgi = 0; sgi < a->nseg; sgi++) {                                              \
        const int64_t *sg = a->seg + 3 * sgi;                                                  \
        for (int64_t l0 = sg[1]; l0 < sg[2]; l0 += CONV_CHUNK) {                              \
            const int64_t l1 = l0 + CONV_CHUNK < sg[2] ? l0 + CONV_CHUNK : sg[2];            \
            for (int64_t cb = cb0; cb < cb1; cb++) {                                           \
                const int64_t nc = cb + 1 < cb1 ? (cb + 1) * CB : cb0 * CB;                    \
                const int64_t nd = cb + 1 < cb1 ? 0 : CONV_CHUNK;                             \
                if (NB(cb * CB) == CB)                                                         \
                    mixer_conv_steps(a, sg, cb * CB, l0, l1, nc, nd, KK, BF, CB);              \
                else /* the last, partial block: no specialisation worth its compile time */   \
                    mixer_conv_steps(a, sg, cb * CB, l0, l1, nc, nd, a->K, BF, NB(cb * CB));   \
            }                                                                                  \
        }                                                                                      \
    }
/* K = 4 (mamba-ssm's default d_conv) specialised, other windows generic */
#define CONV_K(BF)                      \
    if (a->K == 4) {                    \
        CONV(4, BF)                     \
    } else {                            \
        CONV(a->K, BF)                  \
    }
    DISPATCH_BF16(CONV_K)
#undef CONV_K
#undef CONV
    FTZ_END
    return 0;
}

/* each step's x_proj row [dt_low | B | C] as fp32 for steps [i0, i1) of one direction: pointers
 * into dbl, or (bf16) rows widened once into wide for all the thread's blocks */
INLINE void mixer_dbl_rows(const mixer_args *a, const int64_t *sg, int64_t dir, int64_t i0, int64_t i1,
                           const int bf16, float *restrict wide, const float **dp) {
    const int64_t cols = a->R + 2 * a->N;
    const void *dbl = dir ? a->dbl_r : a->dbl_f;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t row = sg[0] * a->L + (dir ? sg[2] - 1 - i : sg[1] + i);
        if (bf16) {
            const uint16_t *src = (const uint16_t *)dbl + row * a->lddbl;
            float *w = wide + (i - i0) * cols;
            for (int64_t j = 0; j < cols; j++) w[j] = bf16_to_f32(src[j]);
            dp[i - i0] = w;
        } else {
            dp[i - i0] = (const float *)dbl + row * a->lddbl;
        }
    }
}

/* Scratch floats one thread of lcplm_mixer_scan needs: the states of its blocks. */
int64_t lcplm_mixer_scan_work(int64_t N, int64_t nblocks) { return nblocks * N * CB; }

/* Both scan directions of channel blocks [cb0, cb1) over every segment; work: see above. */
int lcplm_mixer_scan(const mixer_args *a, int64_t cb0, int64_t cb1, float *work) {
    if (a->N < 1 || a->N > 64 || a->E < 1 || a->L < 1 || a->R < 0 || a->R + 2 * a->N > 256) return 1;
    float wide[MIXER_CHUNK * 256]; /* bf16 dbl rows widened, R + 2N <= 256 floats each */
    const float *dp[MIXER_CHUNK];
    FTZ_BEGIN
#define SCAN(NN, BF)                                                                                   \
    for (int64_t sgi = 0; sgi < a->nseg; sgi++) {                                                      \
        const int64_t *sg = a->seg + 3 * sgi, len = sg[2] - sg[1];                                     \
        for (int64_t dir = 0; dir < 2; dir++) {                                                        \
            memset(work, 0, sizeof(float) * (size_t)((cb1 - cb0) * a->N * CB));                       \
            for (int64_t i0 = 0; i0 < len; i0 += MIXER_CHUNK) {                                        \
                const int64_t i1 = i0 + MIXER_CHUNK < len ? i0 + MIXER_CHUNK : len;                    \
                mixer_dbl_rows(a, sg, dir, i0, i1, BF, wide, dp);                                      \
                for (int64_t cb = cb0; cb < cb1; cb++) {                                               \
                    float *st = work + (cb - cb0) * a->N * CB;                                         \
                    const int nb = NB(cb * CB);                                                        \
                    const int64_t nc = cb + 1 < cb1 ? (cb + 1) * CB : cb0 * CB;                        \
                    const int64_t nd = cb + 1 < cb1 ? 0 : MIXER_CHUNK;                                 \
                    if (nb == CB)                                                                      \
                        mixer_scan_steps(a, sg, cb * CB, dir, i0, i1, nc, nd, dp, st, NN, BF, CB);     \
                    else /* the last, partial block: generic */                                        \
                        mixer_scan_steps(a, sg, cb * CB, dir, i0, i1, nc, nd, dp, st, a->N, BF, nb);   \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
    }
/* d_state 16 (mamba-ssm's default) specialised, other sizes generic: each specialisation costs
 * seconds of compile time on first use */
#define SCAN_N(BF)                      \
    if (a->N == 16) {                   \
        SCAN(16, BF)                    \
    } else {                            \
        SCAN(a->N, BF)                  \
    }
    DISPATCH_BF16(SCAN_N)
#undef SCAN_N
#undef SCAN
    FTZ_END
    return 0;
}
#undef NB

/* The mixer ops over a team of threads: the same split of the channel blocks as row_ranges in
 * ffi.py, one range per thread. Built with -fopenmp when the process already runs libgomp (the
 * one PyTorch ships): the team is then PyTorch's own intra-op threads, which otherwise spin
 * after each of its ops while a separate pool competes with them for the cores (measured:
 * 15-30% slower per mixer). Without OpenMP the pragma is ignored: lcplm_openmp() says 0 and the
 * caller splits the work among its own threads instead. */
#if defined(_OPENMP)
#include <omp.h>
#define TEAM_ID() ((int64_t)omp_get_thread_num())
#define TEAM_SIZE() ((int64_t)omp_get_num_threads())
#else
#define TEAM_ID() ((int64_t)0)
#define TEAM_SIZE() ((int64_t)1)
#endif

int lcplm_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* [*cb0, *cb1): thread t's share of nblocks among n threads */
static void team_range(int64_t nblocks, int64_t t, int64_t n, int64_t *cb0, int64_t *cb1) {
    const int64_t parts = n < nblocks ? n : nblocks, step = nblocks / (parts > 0 ? parts : 1);
    const int64_t extra = nblocks - step * parts;
    *cb0 = t * step + (t < extra ? t : extra);
    *cb1 = t < parts ? *cb0 + step + (t < extra ? 1 : 0) : *cb0;
}

int lcplm_mixer_conv_team(const mixer_args *a, int64_t nthreads) {
    int rc = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : rc)
    {
        int64_t cb0, cb1;
        team_range((a->E + CB - 1) / CB, TEAM_ID(), TEAM_SIZE(), &cb0, &cb1);
        if (cb1 > cb0) rc |= lcplm_mixer_conv(a, cb0, cb1);
    }
    return rc;
}

/* work: nthreads rows of work_stride floats (lcplm_mixer_scan_work for the largest share) */
int lcplm_mixer_scan_team(const mixer_args *a, int64_t nthreads, float *work, int64_t work_stride) {
    int rc = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : rc)
    {
        int64_t cb0, cb1;
        const int64_t t = TEAM_ID();
        team_range((a->E + CB - 1) / CB, t, TEAM_SIZE(), &cb0, &cb1);
        if (cb1 > cb0) rc |= lcplm_mixer_scan(a, cb0, cb1, work + t * work_stride);
    }
    return rc;
}

/* ------------------------------------------------------------------------------------
 * The rest of a BiMamba-S block at inference: residual add and RMSNorm in one pass per row
 * (the eager PyTorch ops take seven passes and as many temporaries). Per row of d:
 *   r = hidden (+ residual)                       fp32, written to res_out (may be residual)
 *   x = r, rounded to bf16 first if norm_bf16     (the training path's residual.to(weight dtype))
 *   normed = x / sqrt(mean(x^2) + eps) * weight   in bf16 if norm_bf16, else fp32
 * hidden is fp32 or bf16 (hidden_bf16); residual fp32 or NULL; weight fp32 (d,).
 * ------------------------------------------------------------------------------------ */
typedef struct {
    int64_t d, hidden_bf16, norm_bf16;
    double eps;
    const void *hidden;
    const float *residual, *weight;
    float *res_out;
    void *normed;
} norm_args;

INLINE float round_bf16(float x) {
    bits32 v;
    v.f = x;
    uint32_t u = (uint32_t)v.i;
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    v.i = (int32_t)u;
    return v.f;
}

INLINE void add_rmsnorm_row(const norm_args *a, int64_t row, const int hbf16, const int nbf16) {
    const int64_t d = a->d;
    const float eps = (float)a->eps;
    float *restrict r = a->res_out + row * d;
    const float *restrict res = a->residual ? a->residual + row * d : NULL;
    const float *restrict w = a->weight;
    float ss = 0.0f;
    for (int64_t j = 0; j < d; j++) {
        float v = hbf16 ? bf16_to_f32(((const uint16_t *)a->hidden)[row * d + j]) : ((const float *)a->hidden)[row * d + j];
        if (res) v += res[j];
        r[j] = v;
        const float x = nbf16 ? round_bf16(v) : v;
        ss += x * x;
    }
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    if (nbf16) {
        uint16_t *restrict o = (uint16_t *)a->normed + row * d;
        for (int64_t j = 0; j < d; j++) {
            bits32 v;
            v.f = round_bf16(round_bf16(r[j]) * scale * w[j]);
            o[j] = (uint16_t)((uint32_t)v.i >> 16);
        }
    } else {
        float *restrict o = (float *)a->normed + row * d;
        for (int64_t j = 0; j < d; j++) o[j] = r[j] * scale * w[j];
    }
}

int lcplm_add_rmsnorm(const norm_args *a, int64_t r0, int64_t r1) {
    if (a->d < 1) return 1;
    FTZ_BEGIN
#define ROWS(HB, NB) \
    for (int64_t row = r0; row < r1; row++) add_rmsnorm_row(a, row, HB, NB)
    if (a->hidden_bf16 && a->norm_bf16)
        ROWS(1, 1);
    else if (a->hidden_bf16)
        ROWS(1, 0);
    else if (a->norm_bf16)
        ROWS(0, 1);
    else
        ROWS(0, 0);
#undef ROWS
    FTZ_END
    return 0;
}

int lcplm_add_rmsnorm_team(const norm_args *a, int64_t rows, int64_t nthreads) {
    int rc = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : rc)
    {
        int64_t r0, r1;
        team_range(rows, TEAM_ID(), TEAM_SIZE(), &r0, &r1);
        if (r1 > r0) rc |= lcplm_add_rmsnorm(a, r0, r1);
    }
    return rc;
}

/* Version of the entry points, scan_args, conv_args, mixer_args and norm_args, checked by the loader. */
int lcplm_scan_abi(void) { return 7; }
