// Batch-invariant CPU decoding kernels: small-M linear y[M,N] = x[M,K] . W[N,K]^T (+ b), and attention.
//
// Why hand-written (see lmlab/core/kernels.py): (1) MKL's SGEMM for 1-16 rows streams the weights at a third
// of this machine's memory bandwidth, while decoding is bound by exactly that stream; (2) MKL sums a lone row
// (GEMV) and a block of rows in different orders, so a draft-verification pass over k tokens is not
// bit-identical to k single-token steps. Here every output element is one FMA chain over k = 0..K-1 in order,
// then + bias, whatever M is and wherever the row sits: speculative decoding is lossless by construction.
//
// Weights are packed once as [ceil(N/64), K, 64] (fp32 or bf16): a 64-column block is one contiguous stream,
// 16 output columns per AVX-512 lane vector, so there is no horizontal reduction at all.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t COLS = 64;

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {  // bf16 -> fp32 is exact: the 16 bits become the high half
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// MB rows of x against one packed 64-column block; accumulators stay in registers (MB x 4 zmm).
template <typename W, int MB>
inline void tile(const float* x, int64_t ldx, const W* wp, int64_t K, const float* bias, float* y, int64_t ldy, int64_t ncols) {
  __m512 acc[MB][4];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const W* r = wp + k * COLS;
    __m512 w0 = load16(r), w1 = load16(r + 16), w2 = load16(r + 32), w3 = load16(r + 48);
    for (int i = 0; i < MB; ++i) {
      __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
      acc[i][0] = _mm512_fmadd_ps(xb, w0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(xb, w1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(xb, w2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(xb, w3, acc[i][3]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t left = ncols - 16 * j;
    if (left <= 0) break;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < MB; ++i) {
      __m512 v = bias ? _mm512_add_ps(acc[i][j], b) : acc[i][j];
      _mm512_mask_storeu_ps(y + i * ldy + 16 * j, m, v);
    }
  }
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

// The optional fp32 bias [N] of a linear layer, checked (nullptr when absent).
inline const float* bias_of(const c10::optional<torch::Tensor>& b, int64_t N) {
  if (!b.has_value() || !b->defined()) return nullptr;
  TORCH_CHECK(b->scalar_type() == at::kFloat && b->is_contiguous() && b->numel() == N, "bias: fp32 [N]");
  return b->data_ptr<float>();
}

template <typename W>
void run(const float* x, int64_t M, const W* wp, int64_t N, int64_t K, const float* bias, float* y) {
  const int64_t blocks = (N + COLS - 1) / COLS;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * COLS, ncols = std::min(COLS, N - n);
      const W* w = wp + b * K * COLS;
      const float* bb = bias ? bias + n : nullptr;
      row_tiles(M, [&](auto mb, int64_t m) { tile<W, decltype(mb)::value>(x + m * K, K, w, K, bb, y + m * N + n, N, ncols); });
    }
  });
}

// exp for x <= 0 (softmax after max-subtraction): Cody-Waite reduction, degree-6 polynomial, scalef. ~1 ulp.
// Hand-written so that every path uses one elementwise function: the result never depends on a lane's place.
inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// One query against its visible keys `idx[0..n)` (in cache order): softmax(q.k * scale) . v, D % 16 == 0.
// Every sum runs over the compacted key index in order, so a query that sees the same keys gets the same bits
// whether it is a lone decoding step, a row of a causal block or a node of a draft tree.
void attend_one(const float* q, const float* K, const float* V, int64_t D, const int64_t* idx, int64_t n, float scale,
                float* s, float* out) {
  const int64_t c = D / 16;
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const float* k = K + idx[j] * D;
    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
    for (int64_t i = 1; i < c; ++i) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * i), _mm512_loadu_ps(k + 16 * i), acc);
    s[j] = _mm512_reduce_add_ps(acc) * scale;
    mx = std::max(mx, s[j]);
  }
  __m512 sum = _mm512_setzero_ps();
  const __m512 vm = _mm512_set1_ps(mx);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
    __m512 e = _mm512_maskz_mov_ps(m, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vm)));
    _mm512_mask_storeu_ps(s + j, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  const float inv = 1.0f / _mm512_reduce_add_ps(sum);
  __m512 o[8];  // D <= 128
  for (int64_t i = 0; i < c; ++i) o[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* v = V + idx[j] * D;
    const __m512 p = _mm512_set1_ps(s[j]);
    for (int64_t i = 0; i < c; ++i) o[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(v + 16 * i), o[i]);
  }
  const __m512 vi = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < c; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(o[i], vi));
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
    std::vector<float> s(std::max<int64_t>(used, 1));
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
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous fp32 [M, H]");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == x.size(1), "w: fp32 [H]");
  const int64_t M = x.size(0), H = x.size(1);
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* r = xp + m * H;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < H; j += 16) {
      const __mmask16 k = H - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (H - j)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(k, r + j);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(H) + static_cast<float>(eps));
    const __m512 vi = _mm512_set1_ps(inv);
    for (int64_t j = 0; j < H; j += 16) {
      const __mmask16 k = H - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (H - j)) - 1u);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, r + j), vi), _mm512_maskz_loadu_ps(k, wp + j));
      _mm512_mask_storeu_ps(yp + m * H + j, k, v);
    }
  }
  return y;
}

// x: fp32 [M, K] contiguous; wp: packed [ceil(N/64), K, 64] fp32 or bf16; bias: fp32 [N] or None.
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& wp, int64_t N, const c10::optional<torch::Tensor>& b) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous fp32 [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(wp.dim() == 3 && wp.is_contiguous() && wp.size(1) == K && wp.size(2) == COLS && wp.size(0) * COLS >= N,
              "wp: packed [ceil(N/64), K, 64]");
  const float* bias = bias_of(b, N);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (wp.scalar_type() == at::kFloat) {
    run<float>(x.data_ptr<float>(), M, wp.data_ptr<float>(), N, K, bias, y.data_ptr<float>());
  } else {
    TORCH_CHECK(wp.scalar_type() == at::kBFloat16, "wp: fp32 or bf16");
    run<at::BFloat16>(x.data_ptr<float>(), M, wp.data_ptr<at::BFloat16>(), N, K, bias, y.data_ptr<float>());
  }
  return y;
}

// 4-bit group-quantized weights (the Q4_1 layout of GGUF: per 32 inputs a scale d and an offset m, w = d q + m,
// q in 0..15), for drafts only: a quantized copy of a target is a draft that needs no training. Packed as
// q [ceil(N/64), K, 32] bytes (byte j < 16: column j in the low nibble, column j + 16 in the high one; byte 16 + j:
// columns 32 + j and 48 + j) and dm [ceil(N/64), K/32, 2, 64] fp16. y = sum_g d_g (x_g . q_g) + m_g sum(x_g).
template <int MB>
inline void tile_q4(const float* x, int64_t ldx, const uint8_t* q, const at::Half* dm, const float* xs, int64_t K, const float* bias,
                    float* y, int64_t ldy, int64_t ncols) {
  const int64_t G = K / 32;
  __m512 tot[MB][4];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 4; ++j) tot[i][j] = _mm512_setzero_ps();
  const __m128i lo4 = _mm_set1_epi8(0x0F);
  for (int64_t g = 0; g < G; ++g) {
    __m512 acc[MB][4];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
      const uint8_t* r = q + k * 32;
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 16));
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(a, lo4)));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(a, 4), lo4)));
      const __m512 w2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, lo4)));
      const __m512 w3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), lo4)));
      for (int i = 0; i < MB; ++i) {
        const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
        acc[i][0] = _mm512_fmadd_ps(xb, w0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(xb, w1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(xb, w2, acc[i][2]);
        acc[i][3] = _mm512_fmadd_ps(xb, w3, acc[i][3]);
      }
    }
    const at::Half* s = dm + g * 128;
    for (int j = 0; j < 4; ++j) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 16 * j)));
      const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 64 + 16 * j)));
      for (int i = 0; i < MB; ++i)
        tot[i][j] = _mm512_fmadd_ps(d, acc[i][j], _mm512_fmadd_ps(m, _mm512_set1_ps(xs[i * G + g]), tot[i][j]));
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t left = ncols - 16 * j;
    if (left <= 0) break;
    const __mmask16 mk = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < MB; ++i) _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mk, bias ? _mm512_add_ps(tot[i][j], bv) : tot[i][j]);
  }
}

// x: fp32 [M, K] contiguous, K % 32 == 0; q: uint8 [ceil(N/64), K, 32]; dm: fp16 [ceil(N/64), K/32, 2, 64].
torch::Tensor packed_linear_q4(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& dm, int64_t N,
                               const c10::optional<torch::Tensor>& b) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous fp32 [M, K]");
  const int64_t M = x.size(0), K = x.size(1), G = K / 32;
  TORCH_CHECK(K % 32 == 0 && q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 3 && q.size(1) == K && q.size(2) == 32 &&
              q.size(0) * COLS >= N, "q: packed uint8 [ceil(N/64), K, 32], K % 32 == 0");
  TORCH_CHECK(dm.scalar_type() == at::kHalf && dm.is_contiguous() && dm.numel() == q.size(0) * G * 128, "dm: fp16 [ceil(N/64), K/32, 2, 64]");
  const float* bias = bias_of(b, N);
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
  const int64_t blocks = (N + COLS - 1) / COLS;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bl = b0; bl < b1; ++bl) {
      const int64_t n = bl * COLS, ncols = std::min(COLS, N - n);
      const uint8_t* qb = qp + bl * K * 32;
      const at::Half* db = dp + bl * G * 128;
      const float* bb = bias ? bias + n : nullptr;
      row_tiles(M, [&](auto mb, int64_t i) {
        tile_q4<decltype(mb)::value>(xp + i * K, K, qb, db, xs.data() + i * G, K, bb, yp + i * N + n, N, ncols);
      });
    }
  });
  return y;
}

// 8-bit group-quantized weights (GGUF's Q8_0 scheme: per 32 inputs a scale d, w = d q, q in -127..127), for
// drafts: q [ceil(N/64), K, 64] int8, d [ceil(N/64), K/32, 64] fp16. y = sum_g d_g (x_g . q_g).
template <int MB>
inline void tile_q8(const float* x, int64_t ldx, const int8_t* q, const at::Half* dd, int64_t K, float* y, int64_t ldy, int64_t ncols) {
  const int64_t G = K / 32;
  __m512 tot[MB][4];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < 4; ++j) tot[i][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 acc[MB][4];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
      const int8_t* r = q + k * 64;
      __m512 w[4];
      for (int j = 0; j < 4; ++j)
        w[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + 16 * j))));
      for (int i = 0; i < MB; ++i) {
        const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(xb, w[j], acc[i][j]);
      }
    }
    for (int j = 0; j < 4; ++j) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dd + g * 64 + 16 * j)));
      for (int i = 0; i < MB; ++i) tot[i][j] = _mm512_fmadd_ps(d, acc[i][j], tot[i][j]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t left = ncols - 16 * j;
    if (left <= 0) break;
    const __mmask16 mk = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
    for (int i = 0; i < MB; ++i) _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mk, tot[i][j]);
  }
}

torch::Tensor packed_linear_q8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& d, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous fp32 [M, K]");
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
  at::parallel_for(0, (N + COLS - 1) / COLS, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bl = b0; bl < b1; ++bl) {
      const int64_t n = bl * COLS, ncols = std::min(COLS, N - n);
      const int8_t* qb = qp + bl * K * 64;
      const at::Half* db = dp + bl * G * 64;
      row_tiles(M, [&](auto mb, int64_t i) { tile_q8<decltype(mb)::value>(xp + i * K, K, qb, db, K, yp + i * N + n, N, ncols); });
    }
  });
  return y;
}

// One linear layer from its packed form: {packed} (fp32 or bf16 blocks) or {codes, dm} (4-bit, drafts).
torch::Tensor linear_any(const torch::Tensor& x, const std::vector<torch::Tensor>& w, int64_t N, const c10::optional<torch::Tensor>& b) {
  auto x2 = x.reshape({-1, x.size(-1)}).contiguous();
  auto y = w.size() == 2 ? packed_linear_q4(x2, w[0], w[1], N, b) : packed_linear(x2, w[0], N, b);
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

// silu(g) * u over n floats, vectorised with exp_neg: sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) below, e = exp(-|g|).
inline void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
    const __m512 e = exp_neg(_mm512_sub_ps(zero, _mm512_abs_ps(gv)));
    const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
    const __m512 sig = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(gv, zero, _CMP_GE_OQ), _mm512_mul_ps(e, inv), inv);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(gv, sig), uv));
  }
}

// A decoder block for a *draft* (numbers that only steer acceptance, so not bound to torch's elementwise kernels):
// as `decoder_block`, with RoPE, the cache writes, SwiGLU and the residuals as plain loops instead of ~20 ATen ops.
// x [B, T, H] contiguous, every row's K/V written at slot `start`; cos/sin [B, 1, T, hd].
torch::Tensor draft_block(const torch::Tensor& x, const torch::Tensor& attn_norm, const torch::Tensor& mlp_norm, double eps,
                          const std::vector<torch::Tensor>& wqkv, const c10::optional<torch::Tensor>& bqkv, const std::vector<torch::Tensor>& wo,
                          const std::vector<torch::Tensor>& w13, const c10::optional<torch::Tensor>& b13, const std::vector<torch::Tensor>& w2,
                          const c10::optional<torch::Tensor>& b2, int64_t nh, int64_t nkv, int64_t hd, int64_t inter,
                          const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor& kc, torch::Tensor& vc, int64_t start,
                          const torch::Tensor& visible, double scale) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), M = B * T, S = kc.size(2), d2 = hd / 2;
  auto xf = x.reshape({M, H});
  auto qkv = linear_any(rms_norm(xf, attn_norm, eps), wqkv, (nh + 2 * nkv) * hd, bqkv);  // [M, (nh + 2 nkv) hd]
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
  auto x1 = linear_any(y, wo, H, c10::nullopt);
  x1.add_(xf);
  auto gu = linear_any(rms_norm(x1, mlp_norm, eps), w13, 2 * inter, b13);  // [M, 2 inter]: gate | up
  auto act = torch::empty({M, inter}, x.options());
  const float* gp = gu.data_ptr<float>();
  for (int64_t r = 0; r < M; ++r) silu_mul(gp + r * 2 * inter, gp + r * 2 * inter + inter, act.data_ptr<float>() + r * inter, inter);
  auto out = linear_any(act, w2, H, b2);
  out.add_(x1);
  return out.view({B, T, H});
}

// Every decoder block of a draft in one call: layers[i] = {attn_norm, mlp_norm, wqkv..., wo..., w13..., w2...} with
// each weight given as its packed form (codes, scales), biases absent. Saves ~30 Python round trips per draft step.
torch::Tensor draft_layers(torch::Tensor x, const std::vector<std::vector<torch::Tensor>>& layers, std::vector<torch::Tensor> kcs,
                           std::vector<torch::Tensor> vcs, double eps, int64_t nh, int64_t nkv, int64_t hd, int64_t inter,
                           const torch::Tensor& cos, const torch::Tensor& sin, int64_t start, const torch::Tensor& visible, double scale) {
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& L = layers[i];
    TORCH_CHECK(L.size() == 10, "draft_layers: {attn_norm, mlp_norm, qkv codes, qkv scales, wo codes, wo scales, w13 codes, w13 scales, w2 codes, w2 scales}");
    x = draft_block(x, L[0], L[1], eps, {L[2], L[3]}, c10::nullopt, {L[4], L[5]}, {L[6], L[7]}, c10::nullopt, {L[8], L[9]}, c10::nullopt,
                    nh, nkv, hd, inter, cos, sin, kcs[i], vcs[i], start, visible, scale);
  }
  return x;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "batch-invariant small-M linear on packed weights");
  m.def("attention", &attention, "batch-invariant attention over visible cached keys");
  m.def("rms_norm", &rms_norm, "fused RMSNorm over rows");
  m.def("packed_linear_q4", &packed_linear_q4, "small-M linear on 4-bit group-quantized packed weights (drafts)");
  m.def("packed_linear_q8", &packed_linear_q8, "small-M linear on 8-bit group-quantized packed weights (drafts)");
  m.def("draft_layers", &draft_layers, "all decoder blocks of a 4-bit draft in one call");
  m.def("draft_block", &draft_block, "a draft's decoder block: kernels and plain loops, no ATen elementwise ops");
  m.def("decoder_block", &decoder_block, "a whole Llama decoder block through the kernels, in one call");
}
