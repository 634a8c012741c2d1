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
#include <stdint.h>
#include <string.h>
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

/* Version of the entry points, scan_args and conv_args, checked by the loader. */
int lcplm_scan_abi(void) { return 4; }
