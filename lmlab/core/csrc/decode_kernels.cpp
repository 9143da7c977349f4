// Batch-invariant CPU decoding kernels: small-M linear y[M,N] = x[M,K] . W[N,K]^T (+ b), attention, RMSNorm and
// whole decoder blocks, written once for every CPU with GCC/Clang vector extensions.
//
// Why hand-written (see lmlab/core/kernels.py): (1) torch's GEMM for 1-16 rows streams the weights well below this
// machine's memory bandwidth, while decoding is bound by exactly that stream; (2) it sums a lone row (GEMV) and a
// block of rows in different orders, so a draft-verification pass over k tokens is not bit-identical to k
// single-token steps. Here every output element is one fixed chain of FMAs, whatever M is, wherever the row sits and
// however many threads run: speculative decoding is lossless by construction.
//
// Portability: `vf` is a vector of L floats, L = 16 (AVX-512), 8 (AVX2 + FMA) or 4 (NEON, and a plain fallback),
// chosen from the flags the host compiler sets for `-march=native` / `-mcpu=native`. The only ISA-specific code is
// one tiny helper each for FMA and fp16 -> fp32. Built with -ffp-contract=off and without -ffast-math: the compiler
// may not fuse, reorder or reassociate anything, so the results are deterministic and batch-invariant on each ISA.
// The bits differ between ISAs (L differs, so the lane partial sums do), never between batch sizes on one.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON) || defined(__aarch64__)
#include <arm_neon.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int VB = 64, NREG = 32;  // vector bytes, vector registers
constexpr const char* ISA = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int VB = 32, NREG = 16;
constexpr const char* ISA = "avx2";
#elif defined(__ARM_NEON) || defined(__aarch64__)
constexpr int VB = 16, NREG = 32;
constexpr const char* ISA = "neon";
#else
constexpr int VB = 16, NREG = 16;
constexpr const char* ISA = "generic";  // correct everywhere, but std::fma per lane: kernels.py turns this off
#endif
constexpr int L = VB / 4;  // floats per vector

typedef float vf __attribute__((vector_size(VB)));
typedef int32_t vi __attribute__((vector_size(VB)));
typedef uint16_t vu16 __attribute__((vector_size(VB / 2)));
typedef int16_t vi16 __attribute__((vector_size(VB / 2)));
typedef int8_t vi8 __attribute__((vector_size(VB / 4)));
typedef uint8_t vu8 __attribute__((vector_size(VB / 4)));

template <typename V, typename T>
inline V ld(const T* p) {  // unaligned load (memcpy compiles to one vector load)
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
inline void st(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
inline vf splat(float a) {  // (not vf{} + a: 0.0f + -0.0f is +0.0f)
  vf v;
  for (int i = 0; i < L; ++i) v[i] = a;
  return v;
}
inline vf ld_part(const float* p, int64_t n) {  // the first n < L floats, the rest zero
  vf v = {};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}
inline void st_part(float* p, vf v, int64_t n) { std::memcpy(p, &v, std::min<int64_t>(n, L) * sizeof(float)); }

// a * b + c with one rounding: the only FMA in this file (-ffp-contract=off forbids implicit ones).
inline vf fmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__ARM_NEON) || defined(__aarch64__)
  return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
  vf r;
  for (int i = 0; i < L; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}

// L fp16 values -> fp32 (exact on every ISA).
inline vf ld_half(const at::Half* p) {
#if defined(__AVX512F__)
  return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__AVX2__) && defined(__F16C__)
  return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif (defined(__ARM_NEON) || defined(__aarch64__)) && defined(__ARM_FP16_FORMAT_IEEE)
  return (vf)vcvt_f32_f16(vld1_f16(reinterpret_cast<const float16_t*>(p)));
#else
  vf r;
  for (int i = 0; i < L; ++i) r[i] = static_cast<float>(p[i]);
  return r;
#endif
}

inline vf select(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }  // m ? a : b, lanewise
inline vf vmax(vf a, vf b) { return select(a > b, a, b); }

// Sum of the lanes in one fixed (pairwise) order.
inline float hsum(vf v) {
  float t[L];
  std::memcpy(t, &v, sizeof(t));
  for (int w = L / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}

// L narrow integers widened to 32-bit lanes. Intrinsics on x86: GCC 12 scalarises __builtin_convertvector from
// 8-byte vectors (one vcvtsi2ss per lane), which made the 4-bit kernel 10x slower than its memory stream.
inline vi widen(const int8_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(ld<vi8>(p), vi);
#endif
}
inline vi widen(const uint8_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(ld<vu8>(p), vi);
#endif
}
inline vi widen(const uint16_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(ld<vu16>(p), vi);
#endif
}
inline vi widen(const int16_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(ld<vi16>(p), vi);
#endif
}

// Weights of a linear layer as L floats: fp32, bf16 (exact: the 16 bits become the high half) or int8 (exact).
inline vf ld_w(const float* p) { return ld<vf>(p); }
inline vf ld_w(const at::BFloat16* p) { return (vf)(widen(reinterpret_cast<const uint16_t*>(p)) << 16); }
inline vf ld_w(const int8_t* p) { return __builtin_convertvector(widen(p), vf); }
template <typename W>
inline vf ld_w_part(const W* p, int64_t n) {  // the first n < L weights, the rest zero
  W t[L] = {};
  std::memcpy(t, p, n * sizeof(W));
  return ld_w(static_cast<const W*>(t));
}

// Rows in tiles of 4, then a tile of the 1-3 left over: calls f(std::integral_constant<int, MB>, first_row).
template <typename F>
inline void row_tiles(int64_t M, F&& f) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) f(std::integral_constant<int, 4>{}, i);
  switch (M - i) {
    case 3: f(std::integral_constant<int, 3>{}, i); break;
    case 2: f(std::integral_constant<int, 2>{}, i); break;
    case 1: f(std::integral_constant<int, 1>{}, i); break;
    default: break;
  }
}

// Output rows per tile for MB input rows: MB x NR accumulators plus MB inputs in registers, two spare (AVX2: 8, 6, 3, 3;
// 4 x 3 fills all 16 registers with one input live at a time: 12 FMAs per 7 loads instead of 8 per 6).
template <int MB>
constexpr int out_rows() {
  return MB == 4 && NREG == 16 ? 3 : std::max(1, std::min(8, (NREG - 2 - MB) / MB));
}

// ------------------------------------------------------------------------------------ dense linear, W as torch holds it
// y[i, n] for MB rows x NR output rows: lane l sums x[k] w[n, k] over k = l, l + L, ... (one FMA chain, in order,
// tail lanes zero-padded), then the lanes are summed pairwise. Nothing depends on MB, NR or the thread.
// noinline: a tile is thousands of FMAs, and inlined into run_dense's loops GCC 12 allocated its accumulators worse
// (10-29 % slower at M = 1-2 on the AVX2 EPYC, measured A/B in one process).
template <typename W, int MB, int NR>
__attribute__((noinline)) void dot_tile(const float* x, int64_t K, const W* w, float* out, int64_t ldo) {
  vf acc[MB][NR] = {};
  const int64_t Kv = K / L * L;
  for (int64_t k = 0; k < Kv; k += L) {
    vf wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = ld_w(w + r * K + k);
    for (int i = 0; i < MB; ++i) {
      const vf xv = ld<vf>(x + i * K + k);
      for (int r = 0; r < NR; ++r) acc[i][r] = fmadd(xv, wv[r], acc[i][r]);
    }
  }
  if (Kv < K) {
    for (int i = 0; i < MB; ++i) {
      const vf xv = ld_part(x + i * K + Kv, K - Kv);
      for (int r = 0; r < NR; ++r) acc[i][r] = fmadd(xv, ld_w_part(w + r * K + Kv, K - Kv), acc[i][r]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < NR; ++r) out[i * ldo + r] = hsum(acc[i][r]);
}

// y = (x . W^T) * scale + bias, each optional (scale: int8 weights' per-output-channel scales).
// Loop order: blocks of NB output rows outside, row tiles inside, so each block of W comes from memory once and every
// further row tile reads it from L1/L2. With row tiles outside, each 4-row tile re-streamed the thread's whole slice
// of W: on the AVX2 EPYC a 16-token verification pass cost 3.83 single steps (benchmarks/specdec_pass_cost.py).
// NB = 24 is a multiple of every out_rows<MB>() on every ISA (8, 6, 3, 2), so no block ends in 1-row tiles.
template <typename W>
void run_dense(const float* x, int64_t M, const W* w, int64_t N, int64_t K, const float* scale, const float* bias, float* y) {
  constexpr int64_t GRAIN = 8;  // output rows per task: 576 -> 72 tasks, balanced on any thread count
  constexpr int64_t NB = 24;
  at::parallel_for(0, (N + GRAIN - 1) / GRAIN, 1, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * GRAIN, n1 = std::min(N, t1 * GRAIN);
    for (int64_t b0 = n0; b0 < n1; b0 += NB) {
      const int64_t b1 = std::min(n1, b0 + NB);
      row_tiles(M, [&](auto mb, int64_t m) {
        constexpr int MB = decltype(mb)::value, NR = out_rows<MB>();
        int64_t n = b0;
        for (; n + NR <= b1; n += NR) dot_tile<W, MB, NR>(x + m * K, K, w + n * K, y + m * N + n, N);
        for (; n < b1; ++n) dot_tile<W, MB, 1>(x + m * K, K, w + n * K, y + m * N + n, N);
      });
    }
    for (int64_t i = 0; i < M; ++i) {
      float* r = y + i * N;
      if (scale)
        for (int64_t j = n0; j < n1; ++j) r[j] *= scale[j];
      if (bias)
        for (int64_t j = n0; j < n1; ++j) r[j] += bias[j];
    }
  });
}

// ------------------------------------------------------------------------------------ exp, attention, RMSNorm, SiLU
// exp for x <= 0 (softmax after max-subtraction): Cody-Waite reduction, degree-6 polynomial, exact 2^n. ~1 ulp.
// Hand-written so that every path uses one elementwise function: the result never depends on a lane's place.
inline vf exp_neg(vf x) {
  x = vmax(x, splat(-87.0f));
  const vf t = x * 1.44269504088896341f;
  const vf n = (t + 12582912.0f) - 12582912.0f;  // round to nearest even (|t| < 2^22; no fast-math may fold it)
  vf r = fmadd(-n, splat(0.693359375f), x);
  r = fmadd(-n, splat(-2.12194440e-4f), r);
  vf p = splat(1.9875691500e-4f);
  p = fmadd(p, r, splat(1.3981999507e-3f));
  p = fmadd(p, r, splat(8.3334519073e-3f));
  p = fmadd(p, r, splat(4.1665795894e-2f));
  p = fmadd(p, r, splat(1.6666665459e-1f));
  p = fmadd(p, r, splat(5.0000001201e-1f));
  p = fmadd(p, r * r, r + 1.0f);
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;  // 2^n, n in [-126, 0]: a normal float
  return p * (vf)e;
}

// One query against its visible keys `idx[0..n)` (in cache order): softmax(q.k * scale) . v, D % 16 == 0.
// Every sum runs over the compacted key index in order, so a query that sees the same keys gets the same bits
// whether it is a lone decoding step, a row of a causal block or a node of a draft tree.
void attend_one(const float* q, const float* K, const float* V, int64_t D, const int64_t* idx, int64_t n, float scale,
                float* s, float* out) {
  const int64_t c = D / L;
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const float* k = K + idx[j] * D;
    vf acc = ld<vf>(q) * ld<vf>(k);
    for (int64_t i = 1; i < c; ++i) acc = fmadd(ld<vf>(q + L * i), ld<vf>(k + L * i), acc);
    s[j] = hsum(acc) * scale;
    mx = std::max(mx, s[j]);
  }
  vf sum = {};
  const vf vm = splat(mx);
  for (int64_t j = 0; j < n; j += L) {
    const int64_t left = std::min<int64_t>(L, n - j);
    vf e = exp_neg(ld_part(s + j, left) - vm);
    for (int64_t l = left; l < L; ++l) e[l] = 0.0f;
    st_part(s + j, e, left);
    sum += e;
  }
  const float inv = 1.0f / hsum(sum);
  vf o[128 / L] = {};  // D <= 128
  for (int64_t j = 0; j < n; ++j) {
    const float* v = V + idx[j] * D;
    const vf p = splat(s[j]);
    for (int64_t i = 0; i < c; ++i) o[i] = fmadd(p, ld<vf>(v + L * i), o[i]);
  }
  for (int64_t i = 0; i < c; ++i) st(out + L * i, o[i] * inv);
}

// silu(g) * u over n floats, with exp_neg: sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) below, e = exp(-|g|).
inline void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += L) {
    const int64_t left = std::min<int64_t>(L, n - i);
    const vf gv = ld_part(g + i, left), uv = ld_part(u + i, left);
    const vf e = exp_neg((vf)((vi)gv | INT32_MIN));  // -|g|: the sign bit set
    const vf inv = 1.0f / (1.0f + e);
    const vf sig = select(gv >= 0.0f, inv, e * inv);
    st_part(out + i, gv * sig * uv, left);
  }
}

// ------------------------------------------------------------------------------------ 4- and 8-bit packed linears
// Packed as 64-column blocks (see kernels.pack_q4 / pack_q8): a block's K rows are one contiguous stream, each
// output column is a lane, so there is no horizontal reduction; MB rows x NV vectors of columns per tile.
constexpr int64_t COLS = 64;
constexpr int VPB = COLS / L;  // vectors per 64-column block row
template <int MB>
constexpr int col_vectors() {  // a power of two dividing VPB; MB x NV accumulators in 3/4 of the registers
  int nv = VPB;
  while (nv > 1 && MB * nv > NREG * 3 / 4) nv /= 2;
  return nv;
}

// 4-bit codes of columns [col, col + L) at input k (row r of the block, 16 little-endian 16-bit words): word j holds
// columns j, j + 16, j + 32 and j + 48 in its nibbles 0-3, so one word vector shifted by 4t holds 16 consecutive
// columns 16t.. (the 8-bit-activation kernel below reads it that way; this one widens L words at a time).
inline vf ld_q4(const uint8_t* r, int off, int shift) {
  return __builtin_convertvector((widen(reinterpret_cast<const uint16_t*>(r) + off) >> shift) & 15, vf);
}

// q [K, 32] bytes and dm [K/32, 2, 64] fp16 (scales d, offsets m) of one block, from column c0 on;
// y = sum_g d_g (x_g . q_g) + m_g sum(x_g), xs: the per-group input sums.
template <int MB, int NV>
inline void tile_q4(const float* x, int64_t K, const uint8_t* q, const at::Half* dm, const float* xs, int c0, const float* bias,
                    float* y, int64_t ldy, int64_t ncols) {
  const int64_t G = K / 32;
  int off[NV], sh[NV];
  for (int j = 0; j < NV; ++j) {
    const int col = c0 + j * L;
    off[j] = col % 16;
    sh[j] = (col / 16) * 4;
  }
  vf tot[MB][NV] = {};
  for (int64_t g = 0; g < G; ++g) {
    vf acc[MB][NV] = {};
    for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
      const uint8_t* r = q + k * 32;
      vf w[NV];
      for (int j = 0; j < NV; ++j) w[j] = ld_q4(r, off[j], sh[j]);
      for (int i = 0; i < MB; ++i) {
        const vf xb = splat(x[i * K + k]);
        for (int j = 0; j < NV; ++j) acc[i][j] = fmadd(xb, w[j], acc[i][j]);
      }
    }
    const at::Half* s = dm + g * 128 + c0;
    for (int j = 0; j < NV; ++j) {
      const vf d = ld_half(s + L * j), m = ld_half(s + 64 + L * j);
      for (int i = 0; i < MB; ++i) tot[i][j] = fmadd(d, acc[i][j], fmadd(m, splat(xs[i * G + g]), tot[i][j]));
    }
  }
  for (int j = 0; j < NV && j * L < ncols; ++j) {
    const int64_t left = ncols - j * L;
    const vf bv = bias ? ld_part(bias + j * L, std::min<int64_t>(L, left)) : vf{};
    for (int i = 0; i < MB; ++i) st_part(y + i * ldy + j * L, bias ? tot[i][j] + bv : tot[i][j], left);
  }
}

// The same 4-bit weights against 8-bit activations (llama.cpp's Q4_1 x Q8_1 scheme; for drafts, whose numbers only
// steer acceptance): each row's inputs are rounded per group of 32 to xq in -127..127 with a scale xd, and a group's
// dot product is summed exactly in 16-bit integers, 16 columns a vector: with the codes centred (q - 8 in -8..7)
// 32 products stay within |8 * 127 * 32| = 32512. Per 64 columns and input that is one load, four shift-and-mask
// pairs, four multiplies and four adds of 16 lanes, against 8 widen-convert-FMA chains of 8 lanes on fp32
// activations: the fp32 kernel was compute-bound at ~2x its memory stream (benchmarks/RESULTS.md).
// y = sum_g d_g xd_g (xq_g . (q_g - 8)) + (m_g + 8 d_g) sum(x_g): w = d (q - 8) + (m + 8 d), the offset term with
// the true input sums, so the inputs' rounding error meets the centred codes q - 8 rather than q (output error 0.5 %
// instead of 1.3 % relative on Gaussian data, tests/core/test_kernels.py). The integer part is exact and a row's
// result depends only on that row: batch-invariant too.
typedef int16_t v16s __attribute__((vector_size(32)));  // 16 lanes on every ISA (two NEON registers)
typedef uint16_t v16u __attribute__((vector_size(32)));

template <int MB>
inline void tile_q4_x8(const int16_t* xq, int64_t K, const float* xd, const float* xs, const uint8_t* q, const at::Half* dm,
                       const float* bias, float* y, int64_t ldy, int64_t ncols) {
  const int64_t G = K / 32;
  vf tot[MB][VPB] = {};
  for (int64_t g = 0; g < G; ++g) {
    v16s acc[MB][4] = {};
    for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
      const v16u r = ld<v16u>(q + k * 32);
      v16s w[4];
      for (int t = 0; t < 4; ++t) w[t] = (v16s)((r >> (4 * t)) & 15) - 8;
      for (int i = 0; i < MB; ++i) {
        const int16_t xk = xq[i * K + k];
        for (int t = 0; t < 4; ++t) acc[i][t] += w[t] * xk;
      }
    }
    const at::Half* s = dm + g * 128;
    for (int i = 0; i < MB; ++i) {
      int16_t sums[COLS];
      std::memcpy(sums, acc[i], sizeof(sums));
      const vf xdv = splat(xd[i * G + g]), xsv = splat(xs[i * G + g]);
      for (int j = 0; j < VPB; ++j) {
        const vf d = ld_half(s + L * j), m = ld_half(s + 64 + L * j);
        const vf dot = __builtin_convertvector(widen(sums + L * j), vf);  // xq_g . (q_g - 8), exact
        tot[i][j] = fmadd(d * xdv, dot, fmadd(m + 8.0f * d, xsv, tot[i][j]));
      }
    }
  }
  for (int j = 0; j < VPB && j * L < ncols; ++j) {
    const int64_t left = ncols - j * L;
    const vf bv = bias ? ld_part(bias + j * L, std::min<int64_t>(L, left)) : vf{};
    for (int i = 0; i < MB; ++i) st_part(y + i * ldy + j * L, bias ? tot[i][j] + bv : tot[i][j], left);
  }
}

// q [K, 64] int8 and d [K/32, 64] fp16 of one block, from column c0 on; y = sum_g d_g (x_g . q_g).
template <int MB, int NV>
inline void tile_q8(const float* x, int64_t K, const int8_t* q, const at::Half* dd, int c0, float* y, int64_t ldy, int64_t ncols) {
  const int64_t G = K / 32;
  vf tot[MB][NV] = {};
  for (int64_t g = 0; g < G; ++g) {
    vf acc[MB][NV] = {};
    for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
      const int8_t* r = q + k * 64 + c0;
      vf w[NV];
      for (int j = 0; j < NV; ++j) w[j] = ld_w(r + j * L);
      for (int i = 0; i < MB; ++i) {
        const vf xb = splat(x[i * K + k]);
        for (int j = 0; j < NV; ++j) acc[i][j] = fmadd(xb, w[j], acc[i][j]);
      }
    }
    for (int j = 0; j < NV; ++j) {
      const vf d = ld_half(dd + g * 64 + c0 + L * j);
      for (int i = 0; i < MB; ++i) tot[i][j] = fmadd(d, acc[i][j], tot[i][j]);
    }
  }
  for (int j = 0; j < NV && j * L < ncols; ++j)
    for (int i = 0; i < MB; ++i) st_part(y + i * ldy + j * L, tot[i][j], ncols - j * L);
}

// Every 64-column block of a packed layer, rows in tiles: f(mb, first_row, first_column_in_block, nv, block, columns).
template <typename F>
void run_blocks(int64_t M, int64_t N, F&& f) {
  at::parallel_for(0, (N + COLS - 1) / COLS, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t ncols = std::min(COLS, N - b * COLS);
      row_tiles(M, [&](auto mb, int64_t i) {
        constexpr int NV = col_vectors<decltype(mb)::value>();
        for (int c = 0; c < ncols; c += NV * L) f(mb, std::integral_constant<int, NV>{}, i, c, b, std::min<int64_t>(NV * L, ncols - c));
      });
    }
  });
}

// The optional fp32 vector [N] of a linear layer (bias, scales), checked (nullptr when absent).
inline const float* vec_of(const c10::optional<torch::Tensor>& b, int64_t N, const char* what) {
  if (!b.has_value() || !b->defined()) return nullptr;
  TORCH_CHECK(b->scalar_type() == at::kFloat && b->is_contiguous() && b->numel() == N, what, ": fp32 [N]");
  return b->data_ptr<float>();
}

inline void check_x(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous fp32 [M, K]");
}

}  // namespace

// q [B, H, T, D]; k, v caches [B, Hkv, S, D] (fp32, contiguous); visible [B, T, S] bool: which keys each query
// sees. Returns [B, H, T, D]. Grouped-query attention: head h reads kv head h / (H / Hkv).
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& visible, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat, "fp32 q/k/v");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && visible.is_contiguous(), "contiguous q/k/v/visible");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(D % 16 == 0 && D <= 128 && H % Hkv == 0 && visible.size(0) == B && visible.size(1) == T && visible.size(2) <= S,
              "attention: D % 16 == 0, D <= 128, H % Hkv == 0, visible [B, T, <=S]");
  const int64_t used = visible.size(2);
  auto vis = visible.to(at::kBool);
  const bool* vp = vis.data_ptr<bool>();
  std::vector<int64_t> idx(B * T * used), cnt(B * T);
  for (int64_t r = 0; r < B * T; ++r) {
    int64_t n = 0;
    for (int64_t j = 0; j < used; ++j)
      if (vp[r * used + j]) idx[r * used + n++] = j;
    cnt[r] = n;
  }
  auto out = torch::empty_like(q);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vv = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  at::parallel_for(0, B * H * T, 1, [&](int64_t a, int64_t z) {
    std::vector<float> s(std::max<int64_t>(used, 1) + L);
    for (int64_t w = a; w < z; ++w) {
      const int64_t b = w / (H * T), h = (w / T) % H, t = w % T;
      const int64_t kvoff = ((b * Hkv + h / group) * S) * D;
      attend_one(qp + w * D, kp + kvoff, vv + kvoff, D, idx.data() + (b * T + t) * used, cnt[b * T + t], static_cast<float>(scale),
                 s.data(), op + w * D);
    }
  });
  return out;
}

// RMSNorm over the last dim of x [M, H] (fp32, contiguous): one fused pass instead of ~8 small aten ops
// (50 us -> a few us per call, 61 calls per decoding step). The sum of squares per row has a fixed order.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  check_x(x);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == x.size(1), "w: fp32 [H]");
  const int64_t M = x.size(0), H = x.size(1);
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* r = xp + m * H;
    vf acc = {};
    for (int64_t j = 0; j < H; j += L) {
      const vf v = ld_part(r + j, std::min<int64_t>(L, H - j));
      acc = fmadd(v, v, acc);
    }
    const float inv = 1.0f / std::sqrt(hsum(acc) / static_cast<float>(H) + static_cast<float>(eps));
    for (int64_t j = 0; j < H; j += L) {
      const int64_t left = std::min<int64_t>(L, H - j);
      st_part(yp + m * H + j, ld_part(r + j, left) * inv * ld_part(wp + j, left), left);
    }
  }
  return y;
}

// x: fp32 [M, K] contiguous; w: [N, K] contiguous, fp32, bf16 or int8 (the layer's own weight, or a bf16 copy);
// scale: fp32 [N] (int8 weights' per-channel scales) or None; bias: fp32 [N] or None. y = (x . w^T) * scale + bias.
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& w, int64_t N, const c10::optional<torch::Tensor>& b,
                            const c10::optional<torch::Tensor>& scale) {
  check_x(x);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(0) == N && w.size(1) == K, "w: contiguous [N, K]");
  const float* bias = vec_of(b, N, "bias");
  const float* sc = vec_of(scale, N, "scale");
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  switch (w.scalar_type()) {
    case at::kFloat: run_dense(xp, M, w.data_ptr<float>(), N, K, sc, bias, yp); break;
    case at::kBFloat16: run_dense(xp, M, w.data_ptr<at::BFloat16>(), N, K, sc, bias, yp); break;
    case at::kChar:
      TORCH_CHECK(sc, "int8 weights need their scales");
      run_dense(xp, M, w.data_ptr<int8_t>(), N, K, sc, bias, yp);
      break;
    default: TORCH_CHECK(false, "w: fp32, bf16 or int8");
  }
  return y;
}

// 4-bit group-quantized weights (the Q4_1 layout of GGUF: per 32 inputs a scale d and an offset m, w = d q + m,
// q in 0..15), for drafts only: a quantized copy of a target is a draft that needs no training.
// x: fp32 [M, K] contiguous, K % 32 == 0; q: uint8 [ceil(N/64), K, 32]; dm: fp16 [ceil(N/64), K/32, 2, 64].
torch::Tensor packed_linear_q4(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& dm, int64_t N,
                               const c10::optional<torch::Tensor>& b, bool act8) {
  check_x(x);
  const int64_t M = x.size(0), K = x.size(1), G = K / 32;
  TORCH_CHECK(K % 32 == 0 && q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 3 && q.size(1) == K && q.size(2) == 32 &&
              q.size(0) * COLS >= N, "q: packed uint8 [ceil(N/64), K, 32], K % 32 == 0");
  TORCH_CHECK(dm.scalar_type() == at::kHalf && dm.is_contiguous() && dm.numel() == q.size(0) * G * 128, "dm: fp16 [ceil(N/64), K/32, 2, 64]");
  const float* bias = vec_of(b, N, "bias");
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  std::vector<float> xs(M * G);  // per row and group: sum of the inputs (the offsets' share)
  const float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < M; ++i)
    for (int64_t g = 0; g < G; ++g) {
      float t = 0.f;
      for (int64_t k = 0; k < 32; ++k) t += xp[i * K + g * 32 + k];
      xs[i * G + g] = t;
    }
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const at::Half* dp = dm.data_ptr<at::Half>();
  float* yp = y.data_ptr<float>();
  if (act8) {
    std::vector<int16_t> xq(M * K);
    std::vector<float> xd(M * G);
    for (int64_t r = 0; r < M * G; ++r) {
      const float* xg = xp + r * 32;
      float amax = 0.f;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(xg[k]));
      const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      xd[r] = d;
      for (int k = 0; k < 32; ++k) xq[r * 32 + k] = static_cast<int16_t>(std::nearbyint(xg[k] * inv));
    }
    at::parallel_for(0, (N + COLS - 1) / COLS, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bl = b0; bl < b1; ++bl) {
        const int64_t n = bl * COLS, nc = std::min(COLS, N - n);
        const uint8_t* qb = qp + bl * K * 32;
        const at::Half* db = dp + bl * G * 128;
        const float* bb = bias ? bias + n : nullptr;
        int64_t i = 0;
        for (; i + 2 <= M; i += 2)
          tile_q4_x8<2>(xq.data() + i * K, K, xd.data() + i * G, xs.data() + i * G, qb, db, bb, yp + i * N + n, N, nc);
        if (i < M) tile_q4_x8<1>(xq.data() + i * K, K, xd.data() + i * G, xs.data() + i * G, qb, db, bb, yp + i * N + n, N, nc);
      }
    });
    return y;
  }
  run_blocks(M, N, [&](auto mb, auto nv, int64_t i, int c, int64_t bl, int64_t nc) {
    const int64_t n = bl * COLS + c;
    tile_q4<decltype(mb)::value, decltype(nv)::value>(xp + i * K, K, qp + bl * K * 32, dp + bl * G * 128, xs.data() + i * G, c,
                                                       bias ? bias + n : nullptr, yp + i * N + n, N, nc);
  });
  return y;
}

// 8-bit group-quantized weights (GGUF's Q8_0 scheme: per 32 inputs a scale d, w = d q, q in -127..127), for
// drafts: q [ceil(N/64), K, 64] int8, d [ceil(N/64), K/32, 64] fp16. y = sum_g d_g (x_g . q_g).
torch::Tensor packed_linear_q8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& d, int64_t N) {
  check_x(x);
  const int64_t M = x.size(0), K = x.size(1), G = K / 32;
  TORCH_CHECK(K % 32 == 0 && q.scalar_type() == at::kChar && q.is_contiguous() && q.dim() == 3 && q.size(1) == K && q.size(2) == 64 &&
              q.size(0) * COLS >= N, "q: packed int8 [ceil(N/64), K, 64], K % 32 == 0");
  TORCH_CHECK(d.scalar_type() == at::kHalf && d.is_contiguous() && d.numel() == q.size(0) * G * 64, "d: fp16 [ceil(N/64), K/32, 64]");
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const at::Half* dp = d.data_ptr<at::Half>();
  float* yp = y.data_ptr<float>();
  run_blocks(M, N, [&](auto mb, auto nv, int64_t i, int c, int64_t bl, int64_t nc) {
    tile_q8<decltype(mb)::value, decltype(nv)::value>(xp + i * K, K, qp + bl * K * 64, dp + bl * G * 64, c, yp + i * N + bl * COLS + c, N, nc);
  });
  return y;
}

// One linear layer from its kernel form, told apart by dtype: {w} (fp32 / bf16 [N, K]), {int8 w [N, K], fp32 scales
// [N]}, {uint8 codes, fp16 dm} (4-bit) or {int8 codes, fp16 d} (8-bit groups).
torch::Tensor linear_any(const torch::Tensor& x, const std::vector<torch::Tensor>& w, int64_t N, const c10::optional<torch::Tensor>& b,
                         bool act8 = false) {
  auto x2 = x.reshape({-1, x.size(-1)}).contiguous();
  torch::Tensor y;
  if (w.size() == 1) {
    y = packed_linear(x2, w[0], N, b, c10::nullopt);
  } else if (w[0].scalar_type() == at::kByte) {
    y = packed_linear_q4(x2, w[0], w[1], N, b, act8);
  } else if (w[1].scalar_type() == at::kFloat) {
    y = packed_linear(x2, w[0], N, b, w[1]);
  } else {
    y = packed_linear_q8(x2, w[0], w[1], N);
    if (b.has_value() && b->defined()) y.add_(*b);
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {  // as model.apply_rope
  const int64_t d = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, d), x2 = x.narrow(-1, d, d);
  return x * cos + torch::cat({-x2, x1}, -1) * sin;
}

// A whole decoder block (RMSNorm, fused qkv, RoPE, K/V written at slot `start` of every row, attention over the
// visible keys, output projection, RMSNorm, SwiGLU MLP, both residuals) in one call: the same ATen ops and kernels,
// in the same order, as `model.Block.forward`, so the same bits, without ~25 Python-level op dispatches per layer
// (~3 ms of a ~12 ms fp32 decoding step of SmolLM2, and half of a 4-bit draft's step).
torch::Tensor decoder_block(const torch::Tensor& x, const torch::Tensor& attn_norm, const torch::Tensor& mlp_norm, double eps,
                            const std::vector<torch::Tensor>& wqkv, const c10::optional<torch::Tensor>& bqkv, const std::vector<torch::Tensor>& wo,
                            const std::vector<torch::Tensor>& w13, const c10::optional<torch::Tensor>& b13, const std::vector<torch::Tensor>& w2,
                            const c10::optional<torch::Tensor>& b2, int64_t nh, int64_t nkv, int64_t hd, int64_t inter,
                            const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor& kc, torch::Tensor& vc, int64_t start,
                            const torch::Tensor& visible, double scale) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  auto h = rms_norm(x.reshape({-1, H}).contiguous(), attn_norm, eps).view({B, T, H});
  auto qkv = linear_any(h, wqkv, (nh + 2 * nkv) * hd, bqkv);
  auto parts = qkv.split_with_sizes({nh * hd, nkv * hd, nkv * hd}, -1);
  auto q = rope(parts[0].view({B, T, nh, hd}).transpose(1, 2), cos, sin);
  auto k = rope(parts[1].view({B, T, nkv, hd}).transpose(1, 2), cos, sin);
  auto v = parts[2].view({B, T, nkv, hd}).transpose(1, 2);
  kc.narrow(2, start, T).copy_(k);
  vc.narrow(2, start, T).copy_(v);
  auto y = attention(q.contiguous(), kc, vc, visible, scale);
  auto x1 = x + linear_any(y.transpose(1, 2).reshape({B, T, nh * hd}), wo, H, c10::nullopt);
  auto h2 = rms_norm(x1.reshape({-1, H}).contiguous(), mlp_norm, eps).view({B, T, H});
  auto gu = linear_any(h2, w13, 2 * inter, b13).split(inter, -1);
  return x1 + linear_any(torch::silu(gu[0]) * gu[1], w2, H, b2);
}

// A decoder block for a *draft* (numbers that only steer acceptance, so not bound to torch's elementwise kernels):
// as `decoder_block`, with RoPE, the cache writes, SwiGLU and the residuals as plain loops instead of ~20 ATen ops.
// x [B, T, H] contiguous, every row's K/V written at slot `start`; cos/sin [B, 1, T, hd].
torch::Tensor draft_block(const torch::Tensor& x, const torch::Tensor& attn_norm, const torch::Tensor& mlp_norm, double eps,
                          const std::vector<torch::Tensor>& wqkv, const c10::optional<torch::Tensor>& bqkv, const std::vector<torch::Tensor>& wo,
                          const std::vector<torch::Tensor>& w13, const c10::optional<torch::Tensor>& b13, const std::vector<torch::Tensor>& w2,
                          const c10::optional<torch::Tensor>& b2, int64_t nh, int64_t nkv, int64_t hd, int64_t inter,
                          const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor& kc, torch::Tensor& vc, int64_t start,
                          const torch::Tensor& visible, double scale, bool act8) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), M = B * T, S = kc.size(2), d2 = hd / 2;
  auto xf = x.reshape({M, H});
  auto qkv = linear_any(rms_norm(xf, attn_norm, eps), wqkv, (nh + 2 * nkv) * hd, bqkv, act8);  // [M, (nh + 2 nkv) hd]
  auto q = torch::empty({B, nh, T, hd}, x.options());
  auto cs = cos.contiguous(), sn = sin.contiguous();
  const float *qp = qkv.data_ptr<float>(), *cp = cs.data_ptr<float>(), *sp = sn.data_ptr<float>();
  float *qo = q.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
  const int64_t W = (nh + 2 * nkv) * hd;
  auto rot = [&](const float* src, float* dst, const float* c, const float* s) {
    for (int64_t i = 0; i < d2; ++i) {
      dst[i] = src[i] * c[i] - src[i + d2] * s[i];
      dst[i + d2] = src[i + d2] * c[i + d2] + src[i] * s[i + d2];
    }
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* row = qp + (b * T + t) * W;
      const float *c = cp + (b * T + t) * hd, *s = sp + (b * T + t) * hd;
      for (int64_t h = 0; h < nh; ++h) rot(row + h * hd, qo + ((b * nh + h) * T + t) * hd, c, s);
      for (int64_t h = 0; h < nkv; ++h) {
        const int64_t slot = ((b * nkv + h) * S + start + t) * hd;
        rot(row + (nh + h) * hd, kp + slot, c, s);
        std::memcpy(vp + slot, row + (nh + nkv + h) * hd, hd * sizeof(float));
      }
    }
  auto y = attention(q, kc, vc, visible, scale).transpose(1, 2).reshape({M, nh * hd});
  auto x1 = linear_any(y, wo, H, c10::nullopt, act8);
  x1.add_(xf);
  auto gu = linear_any(rms_norm(x1, mlp_norm, eps), w13, 2 * inter, b13, act8);  // [M, 2 inter]: gate | up
  auto act = torch::empty({M, inter}, x.options());
  const float* gp = gu.data_ptr<float>();
  for (int64_t r = 0; r < M; ++r) silu_mul(gp + r * 2 * inter, gp + r * 2 * inter + inter, act.data_ptr<float>() + r * inter, inter);
  auto out = linear_any(act, w2, H, b2, act8);
  out.add_(x1);
  return out.view({B, T, H});
}

// Every decoder block of a draft in one call: layers[i] = {attn_norm, mlp_norm, wqkv..., wo..., w13..., w2...} with
// each weight given as its packed form (codes, scales), biases absent. Saves ~30 Python round trips per draft step.
torch::Tensor draft_layers(torch::Tensor x, const std::vector<std::vector<torch::Tensor>>& layers, std::vector<torch::Tensor> kcs,
                           std::vector<torch::Tensor> vcs, double eps, int64_t nh, int64_t nkv, int64_t hd, int64_t inter,
                           const torch::Tensor& cos, const torch::Tensor& sin, int64_t start, const torch::Tensor& visible, double scale,
                           bool act8) {
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& L = layers[i];
    TORCH_CHECK(L.size() == 10, "draft_layers: {attn_norm, mlp_norm, qkv codes, qkv scales, wo codes, wo scales, w13 codes, w13 scales, w2 codes, w2 scales}");
    x = draft_block(x, L[0], L[1], eps, {L[2], L[3]}, c10::nullopt, {L[4], L[5]}, {L[6], L[7]}, c10::nullopt, {L[8], L[9]}, c10::nullopt,
                    nh, nkv, hd, inter, cos, sin, kcs[i], vcs[i], start, visible, scale, act8);
  }
  return x;
}

std::string isa() { return std::string(ISA) + " (" + std::to_string(L) + " fp32 lanes)"; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa", &isa, "the vector ISA this build targets");
  m.def("packed_linear", &packed_linear, "batch-invariant small-M linear on [N, K] fp32 / bf16 / int8 weights");
  m.def("attention", &attention, "batch-invariant attention over visible cached keys");
  m.def("rms_norm", &rms_norm, "fused RMSNorm over rows");
  m.def("packed_linear_q4", &packed_linear_q4, "small-M linear on 4-bit group-quantized packed weights (drafts)");
  m.def("packed_linear_q8", &packed_linear_q8, "small-M linear on 8-bit group-quantized packed weights (drafts)");
  m.def("draft_layers", &draft_layers, "all decoder blocks of a 4-bit draft in one call");
  m.def("draft_block", &draft_block, "a draft's decoder block: kernels and plain loops, no ATen elementwise ops");
  m.def("decoder_block", &decoder_block, "a whole Llama decoder block through the kernels, in one call");
}
