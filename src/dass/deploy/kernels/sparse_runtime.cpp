// The packed sparse runtime: executes a whole compiled network in one call.
//
// Why one call: at batch 1 the layers of a pruned network hold a few thousand multiply-adds each, so any
// per-layer dispatch from Python (or per-layer OpenMP fork/join) costs more than the arithmetic. The
// Python side (dass.deploy.compiler) turns the network into a flat program of fixed-size instructions
// over one activation arena; this file runs it inside a single OpenMP parallel region, one barrier per
// instruction.
//
// Convolutions are "direct sparse convolutions": each output channel holds a list of (offset, weight)
// taps, where the offset addresses the tap's input channel / row / column in a zero-padded and, for
// strided convolutions, phase-split copy of the input. Every tap then becomes one vector multiply-add
// over a contiguous tile of output pixels, accumulated in registers (output-stationary). Pointwise and
// linear layers are the same kernel with one tap per input channel (CSR); depthwise, dilated and strided
// convolutions differ only in their offsets. Layers kept dense store all weights with a shared offset
// table per group (no per-weight index).
//
// Layout: activations are NCHW float32; every buffer of the program has a fixed per-image size and lives
// at (per-image offset * batch) in the arena, so a batch of N is N contiguous images per buffer.

#include <Python.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>
#include <omp.h>
#include <immintrin.h>

namespace {

// The codes of the program format. Each list is written once and makes both its enum and its part of
// dass_signature(), which dass.deploy.program compares with its own enums when it loads this library (a
// library built from other codes is refused). Values never change: saved programs hold them.
#define DASS_OPS(M) M(CONV, 1) M(ACT, 2) M(ADD, 3) M(AFFINE, 4) M(POOL, 5) M(GAP, 6) M(COPY_CHANNELS, 7) \
  M(SHIFT, 8) M(ZERO, 9)
#define DASS_ACTS(M) M(NONE, 0) M(RELU, 1) M(RELU6, 2)
// Where a conv reads its input (F_SCRATCH), see run_conv.
#define DASS_SCRATCH(M) M(IN_PLACE, 0) M(OWN_COPY, 1) M(EARLIER_COPY, 2) M(PER_THREAD, 3) M(PER_CHANNEL, 4)
// F_IM2COL: the layout of a conv's copy of its input, see run_conv.
#define DASS_LAYOUTS(M) M(PADDED, 0) M(UNFOLDED, 1) M(SHIFTED, 2)
// F_AUX of a pool: max, average over the window's pixels inside the plane, average counting the padding.
#define DASS_POOLS(M) M(MAX, 0) M(AVG_INSIDE, 1) M(AVG_PADDED, 2)
// Instruction fields (int64 each).
#define DASS_FIELDS(M)                                                                                      \
  M(OP, 0) M(X, 1) M(Y, 2) M(OUT, 3)        /* per-image arena offsets (floats) */                          \
  M(C, 4) M(H, 5) M(W, 6)                   /* input shape */                                               \
  M(CO, 7) M(HO, 8) M(WO, 9)                /* output shape */                                              \
  M(K, 10) M(STRIDE, 11) M(PAD, 12) M(DIL, 13) M(GROUPS, 14)                                                \
  M(ACT, 15) M(IN_ACT, 16)                  /* output activation; activation applied to the input copy */   \
  M(WEIGHT, 17) M(BIAS, 18)                 /* offsets into the float pool (-1: none) */                    \
  M(ROWPTR, 19) M(TAPS, 20)                 /* offsets into the int pool */                                 \
  M(DENSE, 21) M(KTAPS, 22)                 /* 1: dense weights with a shared tap table of KTAPS entries */ \
  M(HQ, 23) M(WQ, 24) M(SCRATCH, 25)        /* padded/phase-split input plane: see run_conv */              \
  M(AUX, 26) M(AUX2, 27)                    /* op-specific (pool kind, channel offset, shifts) */           \
  M(X_IMG, 28) M(Y_IMG, 29) M(OUT_IMG, 30)  /* per-image strides (floats) of x, y, out */                   \
  M(OUT_PAD, 31)                            /* >0: out is stored zero-padded by this much (see run_conv) */ \
  M(X_AT, 32) M(Y_AT, 33) M(OUT_AT, 34)     /* offsets inside an image (a channel slice of a bigger one) */ \
  M(CHANNELS, 35) M(NCHANNELS, 36)          /* input channels some tap reads (int pool): those are copied */\
  M(PHASES, 37)                             /* bit (a*s + b): some tap reads phase plane (a, b) */          \
  M(IM2COL, 38)                             /* the copy's layout (Layout): padded, unfolded, shifted */      \
  M(ROWS16, 39)                             /* 1: unfolded 16-pixel rows, taps as 16-bit row numbers */     \
  M(Y_PAD, 40)                              /* >0: the residual y is stored zero-padded by this much */
// For tiny output planes the compiler unfolds inputs through a padded copy of at most this many floats on
// the stack (see build_im2col).
#define DASS_IM2COL_MAX_PADDED 1024

#define DASS_OP_CODE(name, value) OP_##name = value,
#define DASS_ACT_CODE(name, value) ACT_##name = value,
#define DASS_SCRATCH_CODE(name, value) SCRATCH_##name = value,
#define DASS_LAYOUT_CODE(name, value) LAYOUT_##name = value,
#define DASS_POOL_CODE(name, value) POOL_##name = value,
#define DASS_FIELD_CODE(name, value) F_##name = value,
#define DASS_COUNT(name, value) +1
enum Op : int64_t { DASS_OPS(DASS_OP_CODE) };
enum Act : int64_t { DASS_ACTS(DASS_ACT_CODE) };
enum Scratch : int64_t { DASS_SCRATCH(DASS_SCRATCH_CODE) };
enum Layout : int64_t { DASS_LAYOUTS(DASS_LAYOUT_CODE) };
enum PoolKind : int64_t { DASS_POOLS(DASS_POOL_CODE) };
enum Field { DASS_FIELDS(DASS_FIELD_CODE) };
constexpr int64_t N_FIELDS = 0 DASS_FIELDS(DASS_COUNT);
constexpr int64_t kIm2colMaxPadded = DASS_IM2COL_MAX_PADDED;

#define DASS_SPELL(name, value) #name "=" #value ","
#define DASS_STRING(x) DASS_STRING_(x)
#define DASS_STRING_(x) #x
constexpr char kSignature[] =
    "op:" DASS_OPS(DASS_SPELL) ";act:" DASS_ACTS(DASS_SPELL) ";scratch:" DASS_SCRATCH(DASS_SPELL)
    ";layout:" DASS_LAYOUTS(DASS_SPELL)
    ";pool:" DASS_POOLS(DASS_SPELL) ";field:" DASS_FIELDS(DASS_SPELL)
    ";limits:IM2COL_MAX_PADDED=" DASS_STRING(DASS_IM2COL_MAX_PADDED) ",";

inline float act_apply(float v, int64_t act) {
  if (act == ACT_RELU) return v > 0.f ? v : 0.f;
  if (act == ACT_RELU6) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}

typedef float v8f __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads
typedef float v4f __attribute__((vector_size(16)));
typedef float v4u __attribute__((vector_size(16), aligned(4)));

// The output activation on a vector (the same values as act_apply per lane).
template <typename VT>
inline VT act_vec(VT v, int64_t act) {
  if (act == ACT_RELU) return v > 0.f ? v : VT{};
  if (act == ACT_RELU6) return v < 0.f ? VT{} : (v > 6.f ? VT{} + 6.f : v);
  return v;
}

template <typename VT> struct Unaligned;
template <> struct Unaligned<v8f> { typedef v8u type; };
template <> struct Unaligned<v4f> { typedef v4u type; };

// 16-float vectors where the machine has AVX-512 (DASS_NO_AVX512 builds the 8-float kernels only, for A/B runs).
#if defined(__AVX512F__) && !defined(DASS_NO_AVX512)
#define DASS_V16 1
typedef float v16f __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
template <> struct Unaligned<v16f> { typedef v16u type; };
#else
#define DASS_V16 0
#endif
#ifndef DASS_R32
#define DASS_R32 2   // rows per tile of 32 columns
#endif
#ifndef DASS_R16
#define DASS_R16 4   // rows per tile of 16 columns
#endif
#ifndef DASS_IMGS
#define DASS_IMGS 2  // images per block at batch > 1
#endif
#ifndef DASS_IL_HANDOFF
#define DASS_IL_HANDOFF 1  // two threads share the rest of a block when one finishes first (0: off, A/B)
#endif
#ifndef DASS_FLAT
#define DASS_FLAT 1  // planes with output-long rows read as one row (0: in 2-D tiles, for A/B runs)
#endif

// Distances between consecutive images of a block: in the conv's source, its output and its residual.
struct ImgStride { int64_t src, dst, res; };

// One output tile of R rows x (V vectors of L floats) for each of B images, accumulated in registers over all
// taps of one output channel: per tap one weight and index, broadcast once, then B*R*V vector loads and
// multiply-adds, no stores. Blocking images (batch > 1) loads each tap once per block instead of once per
// image, and gives small tiles enough independent accumulator chains.
template <typename VT, int L, int V, int R, int B>
inline void conv_tile(const float* __restrict src, int64_t src_row, const int32_t* __restrict taps,
                      const float* __restrict w, int64_t count, float bias, float* __restrict dst,
                      int64_t dst_row, int64_t act, const float* __restrict res, int64_t res_row, ImgStride is) {
  typedef typename Unaligned<VT>::type VU;
  // Small tiles have few independent accumulator chains and would wait on the multiply-add latency:
  // they take taps two at a time into two sets of accumulators.
  constexpr int U = B * V * R <= 4 ? 2 : 1;
  VT acc[U][B][R][V];
#pragma GCC unroll 16
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[u][b][r][v] = VT{} + (u == 0 ? bias : 0.f);
  int64_t j = 0;
  for (; j + U <= count; j += U) {
#pragma GCC unroll 2
    for (int u = 0; u < U; ++u) {
      const float* __restrict p = src + taps[j + u];
      const float wj = w[j + u];
#pragma GCC unroll 16
      for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
          for (int v = 0; v < V; ++v)
            acc[u][b][r][v] += wj * *reinterpret_cast<const VU*>(p + b * is.src + r * src_row + v * L);
    }
  }
  for (; j < count; ++j) {
    const float* __restrict p = src + taps[j];
    const float wj = w[j];
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v)
          acc[0][b][r][v] += wj * *reinterpret_cast<const VU*>(p + b * is.src + r * src_row + v * L);
  }
  // the stores straight from the registers (through a stack copy and a scalar loop, they cost more than the
  // arithmetic of the 1-3 taps an output channel keeps at high sparsity)
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        VT sum = acc[0][b][r][v];
        for (int u = 1; u < U; ++u) sum += acc[u][b][r][v];
        if (res) sum += *reinterpret_cast<const VU*>(res + b * is.res + r * res_row + v * L);
        *reinterpret_cast<VU*>(dst + b * is.dst + r * dst_row + v * L) = act_vec(sum, act);
      }
}

// Scalar tile for the narrow remainders (planes 2 or 1 pixel wide).
template <int T, int R, int B>
inline void conv_tile_scalar(const float* __restrict src, int64_t src_row, const int32_t* __restrict taps,
                             const float* __restrict w, int64_t count, float bias, float* __restrict dst,
                             int64_t dst_row, int64_t act, const float* __restrict res, int64_t res_row,
                             ImgStride is) {
  float acc[B][R][T];
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[b][r][t] = bias;
  for (int64_t j = 0; j < count; ++j) {
    const float* __restrict p = src + taps[j];
    const float wj = w[j];
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) acc[b][r][t] += wj * p[b * is.src + r * src_row + t];
  }
  for (int b = 0; b < B; ++b)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t)
        dst[b * is.dst + r * dst_row + t] =
            act_apply(acc[b][r][t] + (res ? res[b * is.res + r * res_row + t] : 0.f), act);
}

template <int T, int R, int B>
inline void tile(const float* src, int64_t src_row, const int32_t* taps, const float* w, int64_t count, float bias,
                 float* dst, int64_t dst_row, int64_t act, const float* res, int64_t res_row, ImgStride is) {
#if DASS_V16
  if constexpr (T % 16 == 0)
    conv_tile<v16f, 16, T / 16, R, B>(src, src_row, taps, w, count, bias, dst, dst_row, act, res, res_row, is);
  else
#endif
  if constexpr (T % 8 == 0)
    conv_tile<v8f, 8, T / 8, R, B>(src, src_row, taps, w, count, bias, dst, dst_row, act, res, res_row, is);
  else if constexpr (T == 4)
    conv_tile<v4f, 4, 1, R, B>(src, src_row, taps, w, count, bias, dst, dst_row, act, res, res_row, is);
  else
    conv_tile_scalar<T, R, B>(src, src_row, taps, w, count, bias, dst, dst_row, act, res, res_row, is);
}

template <int T, int R, int B>
inline void conv_rows(const float* src, int64_t src_row, const int32_t* taps, const float* w, int64_t count,
                      float bias, float* dst, int64_t dst_row, int64_t rows, int64_t x0, int64_t act,
                      const float* res, int64_t res_row, ImgStride is) {
  int64_t y = 0;
  for (; y + R <= rows; y += R)
    tile<T, R, B>(src + y * src_row + x0, src_row, taps, w, count, bias, dst + y * dst_row + x0, dst_row, act,
                  res ? res + y * res_row + x0 : nullptr, res_row, is);
  if constexpr (R > 2)
    for (; y + 2 <= rows; y += 2)
      tile<T, 2, B>(src + y * src_row + x0, src_row, taps, w, count, bias, dst + y * dst_row + x0, dst_row, act,
                    res ? res + y * res_row + x0 : nullptr, res_row, is);
  for (; y < rows; ++y)
    tile<T, 1, B>(src + y * src_row + x0, src_row, taps, w, count, bias, dst + y * dst_row + x0, dst_row, act,
                  res ? res + y * res_row + x0 : nullptr, res_row, is);
}

// An unfolded 4x4 output plane (16 pixels) of B images with taps given as 16-bit row numbers: 6 bytes of
// weight and index per nonzero instead of 8. One 16-float vector (or two of 8) per image and tap; taps go
// four at a time (AVX-512) or two at a time into separate accumulators, for the multiply-add latency.
template <int B>
inline void conv_rows16(const float* __restrict src, const uint16_t* __restrict rows, const float* __restrict w,
                        int64_t count, float bias, float* __restrict dst, int64_t act, const float* __restrict res,
                        ImgStride is) {
#if DASS_V16
  typedef v16f VT;
  typedef v16u VU;
  constexpr int L = 16;
  constexpr int U = B >= 4 ? 1 : 4 / B;
#else
  typedef v8f VT;
  typedef v8u VU;
  constexpr int L = 8;
  constexpr int U = B >= 2 ? 1 : 2;
#endif
  constexpr int V = 16 / L;
  VT a[U][B][V];
#pragma GCC unroll 16
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) a[u][b][v] = VT{} + (u == 0 ? bias : 0.f);
  int64_t j = 0;
  for (; j + U <= count; j += U)
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const float* p = src + static_cast<int64_t>(rows[j + u]) * 16;
      const float wj = w[j + u];
#pragma GCC unroll 16
      for (int b = 0; b < B; ++b)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) a[u][b][v] += wj * *reinterpret_cast<const VU*>(p + b * is.src + v * L);
    }
  for (; j < count; ++j) {
    const float* p = src + static_cast<int64_t>(rows[j]) * 16;
#pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) a[0][b][v] += w[j] * *reinterpret_cast<const VU*>(p + b * is.src + v * L);
  }
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      VT sum = a[0][b][v];
      for (int u = 1; u < U; ++u) sum += a[u][b][v];
      if (res) sum += *reinterpret_cast<const VU*>(res + b * is.res + v * L);
      *reinterpret_cast<VU*>(dst + b * is.dst + v * L) = act_vec(sum, act);
    }
}

// All output pixels of one output channel (of B images): the row is cut into tiles of 32/16/8/4/2/1 columns,
// 8 vector accumulators per image for the wide ones (8-column tiles 8 rows tall: 2-3% faster ResNet-18 than 4
// rows; 3 rows of 32 or 6 of 16, 12 accumulators, were 1-2% slower). Rows of dst and res are dst_row / res_row
// floats apart (more than wo when they are stored padded).
template <int B>
void conv_channel(const float* src, int64_t src_row, const int32_t* taps, const float* w, int64_t count,
                  float bias, float* dst, int64_t dst_row, int64_t wo, int64_t ho, int64_t act, const float* res,
                  int64_t res_row, ImgStride is) {
  int64_t x = 0;
  if (ho == 1) {   // one long row (a plane read flat): 8 or 4 vectors per tap, one weight load for all
    for (; x + 128 <= wo; x += 128)
      tile<128, 1, B>(src + x, src_row, taps, w, count, bias, dst + x, dst_row, act, res ? res + x : nullptr, res_row, is);
    for (; x + 64 <= wo; x += 64)
      tile<64, 1, B>(src + x, src_row, taps, w, count, bias, dst + x, dst_row, act, res ? res + x : nullptr, res_row, is);
  }
  for (; x + 32 <= wo; x += 32) conv_rows<32, DASS_R32, B>(src, src_row, taps, w, count, bias, dst, dst_row, ho, x, act, res, res_row, is);
  for (; x + 16 <= wo; x += 16) conv_rows<16, DASS_R16, B>(src, src_row, taps, w, count, bias, dst, dst_row, ho, x, act, res, res_row, is);
  for (; x + 8 <= wo; x += 8) conv_rows<8, 8, B>(src, src_row, taps, w, count, bias, dst, dst_row, ho, x, act, res, res_row, is);
  for (; x + 4 <= wo; x += 4) conv_rows<4, 4, B>(src, src_row, taps, w, count, bias, dst, dst_row, ho, x, act, res, res_row, is);
  for (; x + 2 <= wo; x += 2) conv_rows<2, 4, B>(src, src_row, taps, w, count, bias, dst, dst_row, ho, x, act, res, res_row, is);
  for (; x < wo; ++x) conv_rows<1, 4, B>(src, src_row, taps, w, count, bias, dst, dst_row, ho, x, act, res, res_row, is);
}

// The zero border of one output plane stored padded by p (hp x wp floats in all).
// The right border of a row and the left border of the next one are 2p contiguous floats: one masked store
// each (the scalar stores of the border cost more than the 1-3 taps of a sparse output channel).
void zero_border(float* plane, int64_t hp, int64_t wp, int64_t p) {
  std::fill(plane, plane + p * wp + p, 0.f);
  const int64_t gap = 2 * p;
  if (gap <= 8) {
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(gap)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t y = p; y < hp - p - 1; ++y) _mm256_maskstore_ps(plane + y * wp + wp - p, keep, _mm256_setzero_ps());
  } else {
    for (int64_t y = p; y < hp - p - 1; ++y) std::fill(plane + y * wp + wp - p, plane + y * wp + wp + p, 0.f);
  }
  std::fill(plane + (hp - p) * wp - p, plane + hp * wp, 0.f);
}

#if DASS_V16
template <int ACT>
inline __m512 act_v16(__m512 v) {
  if constexpr (ACT == ACT_RELU) return _mm512_max_ps(v, _mm512_setzero_ps());
  if constexpr (ACT == ACT_RELU6) return _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.f));
  return v;
}

// (The masks depend on the column only: computed once per call for rows of up to FILL_MAX_VECTORS vectors, and
// rows outside the plane are stores of the fill alone. Computing them per row and vector made the copy ~12
// instructions per 16 floats, and the per-channel copies of the depthwise convs a fifth of the DASS network's
// time at batch 1.)
constexpr int64_t FILL_MAX_VECTORS = 8;

template <int ACT>
void fill_rows_v16_act(const float* in, int64_t h, int64_t wd, int64_t pad, int64_t wq, float fill, int64_t q0,
                       int64_t q1, float* out, int64_t col0) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 outside = _mm512_set1_ps(fill);
  auto masks = [&](int64_t x, __mmask16& keep, __mmask16& valid) {
    const __m512i col = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(x + col0)), lane);
    keep = _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32(static_cast<int>(wq + col0)));
    valid = keep & _mm512_cmpge_epi32_mask(col, _mm512_set1_epi32(static_cast<int>(pad))) &
            _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32(static_cast<int>(pad + wd)));
  };
  const int64_t nv = (wq + 15) / 16;
  if (nv <= FILL_MAX_VECTORS) {
    __mmask16 keep[FILL_MAX_VECTORS], valid[FILL_MAX_VECTORS];
    for (int64_t v = 0; v < nv; ++v) masks(v * 16, keep[v], valid[v]);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t y = q - pad;
      float* dst = out + q * wq;
      if (y < 0 || y >= h) {
        for (int64_t v = 0; v < nv; ++v) _mm512_mask_storeu_ps(dst + v * 16, keep[v], outside);
        continue;
      }
      const float* src = in + y * wd - pad + col0;   // src[c]: padded column c + col0
      for (int64_t v = 0; v < nv; ++v)
        _mm512_mask_storeu_ps(dst + v * 16, keep[v], act_v16<ACT>(_mm512_mask_loadu_ps(outside, valid[v], src + v * 16)));
    }
    return;
  }
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t y = q - pad;
    const bool inside = y >= 0 && y < h;
    const float* src = in + y * wd - pad + col0;
    for (int64_t x = 0; x < wq; x += 16) {
      __mmask16 keep, valid;
      masks(x, keep, valid);
      __m512 v = _mm512_mask_loadu_ps(outside, inside ? valid : __mmask16{0}, src + x);
      _mm512_mask_storeu_ps(out + q * wq + x, keep, act_v16<ACT>(v));
    }
  }
}

// Rows [q0, q1) of a copy of one plane padded by `pad` (wq floats a row, column x holding padded column
// x + col0) with `fill` outside the plane, 16 columns at a time: masked loads read only the plane's columns
// (never memory outside the row), a masked store ends the row. The input activation applies to the loaded
// values (a nonzero fill takes none: pools).
void fill_rows_v16(const float* in, int64_t h, int64_t wd, int64_t pad, int64_t wq, float fill, int64_t in_act,
                   int64_t q0, int64_t q1, float* out, int64_t col0 = 0) {
  if (in_act == ACT_RELU) {
    fill_rows_v16_act<ACT_RELU>(in, h, wd, pad, wq, fill, q0, q1, out, col0);
  } else if (in_act == ACT_RELU6) {
    fill_rows_v16_act<ACT_RELU6>(in, h, wd, pad, wq, fill, q0, q1, out, col0);
  } else {
    fill_rows_v16_act<ACT_NONE>(in, h, wd, pad, wq, fill, q0, q1, out, col0);
  }
}
#endif

// The zero-padded copy (hq rows of wq floats, the input at row and column pad) of one input channel for a
// stride-1 conv, the input activation applied on the way.
// (Plain loops, kept loops: GCC would make memset/memcpy calls of the 1-2 float pads and the short rows, and
// those calls were most of the copy's time.)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void pad_plane(const float* in, int64_t h, int64_t wd, int64_t pad, int64_t hq, int64_t wq, int64_t in_act,
               float* out) {
#if DASS_V16
  fill_rows_v16(in, h, wd, pad, wq, 0.f, in_act, 0, hq, out);
#else
  for (int64_t q = 0; q < hq; ++q) {
    float* row = out + q * wq;
    const int64_t y = q - pad;
    if (y < 0 || y >= h) {
      for (int64_t x = 0; x < wq; ++x) row[x] = 0.f;
      continue;
    }
    const float* src = in + y * wd;
    for (int64_t x = 0; x < pad; ++x) row[x] = 0.f;
    if (in_act == ACT_NONE) {
      for (int64_t x = 0; x < wd; ++x) row[pad + x] = src[x];
    } else if (in_act == ACT_RELU) {
      for (int64_t x = 0; x < wd; ++x) row[pad + x] = src[x] > 0.f ? src[x] : 0.f;
    } else {
      for (int64_t x = 0; x < wd; ++x) row[pad + x] = act_apply(src[x], in_act);
    }
    for (int64_t x = pad + wd; x < wq; ++x) row[x] = 0.f;
  }
#endif
}

// Zero-padded, phase-split copy of one input channel: plane (a, b) holds padded pixels (q*s + a, r*s + b),
// so a strided tap reads a contiguous run. The input activation is applied on the way.
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void build_phases(const float* in, int64_t h, int64_t wd, int64_t pad, int64_t s, int64_t hq, int64_t wq,
                  int64_t in_act, int64_t phases, float* out) {
  if (s == 1) {
    pad_plane(in, h, wd, pad, hq, wq, in_act, out);
    return;
  }
  if (s == 2) {   // common case, vectorized: 16 source columns at a time split into even and odd columns
    // (straight from the source row: through a padded row buffer, the loads waited for its scalar stores)
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), eight = _mm256_set1_epi32(8);
    const __m256i first = _mm256_set1_epi32(static_cast<int>(pad - 1)), end = _mm256_set1_epi32(static_cast<int>(pad + wd));
    auto act8 = [&](__m256 v) {
      if (in_act == ACT_RELU) return _mm256_max_ps(v, zero);
      if (in_act == ACT_RELU6) return _mm256_min_ps(_mm256_max_ps(v, zero), six);
      return v;
    };
    for (int64_t a = 0; a < 2; ++a) {
      const bool even = (phases >> (2 * a)) & 1, odd = (phases >> (2 * a + 1)) & 1;
      if (!even && !odd) continue;
      float* plane0 = out + 2 * a * hq * wq;
      float* plane1 = plane0 + hq * wq;
      for (int64_t q = 0; q < hq; ++q) {
        const int64_t y = 2 * q + a - pad;
        float* row0 = plane0 + q * wq;
        float* row1 = plane1 + q * wq;
        if (y < 0 || y >= h) {
          for (int64_t r = 0; even && r < wq; ++r) row0[r] = 0.f;
          for (int64_t r = 0; odd && r < wq; ++r) row1[r] = 0.f;
          continue;
        }
        const float* src = in + y * wd - pad;   // src[c]: padded column c, valid for pad <= c < pad + wd
        // outputs r .. r + 7 come from padded columns 2r .. 2r + 15: masked loads give the zero padding (and
        // never touch memory outside the row), a masked store ends the row
        for (int64_t r = 0; r < wq; r += 8) {
          const __m256i c_lo = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(2 * r)), lane);
          const __m256i c_hi = _mm256_add_epi32(c_lo, eight);
          auto inside = [&](__m256i c) { return _mm256_and_si256(_mm256_cmpgt_epi32(c, first), _mm256_cmpgt_epi32(end, c)); };
          const __m256 lo = act8(_mm256_maskload_ps(src + 2 * r, inside(c_lo)));
          const __m256 hi = act8(_mm256_maskload_ps(src + 2 * r + 8, inside(c_hi)));
          // shuffle: [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6]; the 64-bit permute puts the pairs in order
          const __m256 ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
          const __m256 od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
          if (r + 8 <= wq) {
            if (even) _mm256_storeu_ps(row0 + r, ev);
            if (odd) _mm256_storeu_ps(row1 + r, od);
          } else {
            const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(wq - r)), lane);
            if (even) _mm256_maskstore_ps(row0 + r, keep, ev);
            if (odd) _mm256_maskstore_ps(row1 + r, keep, od);
          }
        }
      }
    }
    return;
  }
  for (int64_t a = 0; a < s; ++a)
    for (int64_t b = 0; b < s; ++b) {
      if (!((phases >> (a * s + b)) & 1)) continue;   // no tap reads this phase (1x1 stride-2 convs: only one)
      float* plane = out + (a * s + b) * hq * wq;
      // columns r whose source x = r*s + b - pad lies inside the row: [r0, r1)
      const int64_t r0 = std::min<int64_t>(wq, std::max<int64_t>(0, (pad - b + s - 1) / s));
      const int64_t last = wd - 1 + pad - b;   // r1 = floor(last / s) + 1, none when last < 0
      const int64_t r1 = std::max<int64_t>(r0, std::min<int64_t>(wq, last < 0 ? 0 : last / s + 1));
      for (int64_t q = 0; q < hq; ++q) {
        const int64_t y = q * s + a - pad;
        float* row = plane + q * wq;
        if (y < 0 || y >= h) {
          std::fill(row, row + wq, 0.f);
          continue;
        }
        const float* src = in + y * wd + b - pad;
        std::fill(row, row + r0, 0.f);
        if (in_act == ACT_NONE) {
          for (int64_t r = r0; r < r1; ++r) row[r] = src[r * s];
        } else {
          for (int64_t r = r0; r < r1; ++r) row[r] = act_apply(src[r * s], in_act);
        }
        std::fill(row + r1, row + wq, 0.f);
      }
    }
}

// Floats between the column-shifted planes of one input channel (LAYOUT_SHIFTED): whole cache lines, so that
// every plane starts aligned.
inline int64_t shifted_plane(int64_t hq, int64_t wq) { return (hq * wq + 15) / 16 * 16; }

// The column-shifted copy of one input channel (LAYOUT_SHIFTED): k*s planes of hq rows of wq (= the output's
// width) floats, plane kx*s + a holding padded pixel (q*s + a, r*s + kx*dil) at row q, column r. A tap
// (ky, kx) then reads plane kx*s + (ky*dil) % s from row (ky*dil) / s on, and an output plane is one contiguous
// run of ho * wq floats: each tap is aligned loads (in a padded plane, two taps of three straddle cache lines;
// such loads cost twice).
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void build_shifted(const float* in, int64_t h, int64_t wd, int64_t pad, int64_t k, int64_t s, int64_t dil,
                   int64_t hq, int64_t wq, int64_t in_act, float* out) {
  const int64_t sub = shifted_plane(hq, wq);
#if DASS_V16
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
  auto act = [&](__m512 v) {
    if (in_act == ACT_RELU) return _mm512_max_ps(v, zero);
    if (in_act == ACT_RELU6) return _mm512_min_ps(_mm512_max_ps(v, zero), six);
    return v;
  };
  if (k == 3 && dil == 1 && pad == 1 && wq % 16 == 0 && wd == s * wq && s <= 2) {   // the common 3x3 convs
    // per 16 output columns: stride 1, one input vector; stride 2, two, split into even and odd columns
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t a = 0; a < s; ++a)
      for (int64_t q = 0; q < hq; ++q) {
        float* r0 = out + a * sub + q * wq;   // planes kx = 0, 1, 2 (columns r*s - 1, r*s, r*s + 1)
        float* r1 = r0 + s * sub;
        float* r2 = r1 + s * sub;
        const int64_t y = q * s + a - 1;
        if (y < 0 || y >= h) {
          for (int64_t x = 0; x < wq; x += 16) {
            _mm512_storeu_ps(r0 + x, zero);
            _mm512_storeu_ps(r1 + x, zero);
            _mm512_storeu_ps(r2 + x, zero);
          }
          continue;
        }
        const float* row = in + y * wd;
        auto load = [&](int64_t x) {   // input columns s*x .. s*x + 15 (stride 1) or their even ones (stride 2)
          if (s == 1) return _mm512_castps_si512(act(_mm512_loadu_ps(row + x)));
          return _mm512_castps_si512(act(_mm512_permutex2var_ps(_mm512_loadu_ps(row + 2 * x), even,
                                                                _mm512_loadu_ps(row + 2 * x + 16))));
        };
        auto load_odd = [&](int64_t x) {
          return _mm512_castps_si512(act(_mm512_permutex2var_ps(_mm512_loadu_ps(row + 2 * x), odd,
                                                                _mm512_loadu_ps(row + 2 * x + 16))));
        };
        // before / cur / after: the columns left of, at and right of each output column's centre
        __m512i before_prev = _mm512_setzero_si512(), cur = load(0);
        for (int64_t x = 0; x < wq; x += 16) {
          if (s == 1) {
            const __m512i after = x + 16 < wq ? load(x + 16) : _mm512_setzero_si512();
            _mm512_storeu_ps(r0 + x, _mm512_castsi512_ps(_mm512_alignr_epi32(cur, before_prev, 15)));
            _mm512_storeu_ps(r1 + x, _mm512_castsi512_ps(cur));
            _mm512_storeu_ps(r2 + x, _mm512_castsi512_ps(_mm512_alignr_epi32(after, cur, 1)));
            before_prev = cur;
            cur = after;
          } else {
            const __m512i right = load_odd(x);   // column 2r + 1; column 2r - 1 is the previous odd one
            _mm512_storeu_ps(r0 + x, _mm512_castsi512_ps(_mm512_alignr_epi32(right, before_prev, 15)));
            _mm512_storeu_ps(r1 + x, _mm512_castsi512_ps(cur));
            _mm512_storeu_ps(r2 + x, _mm512_castsi512_ps(right));
            before_prev = right;
            if (x + 16 < wq) cur = load(x + 16);
          }
        }
      }
    return;
  }
  if (s == 1) {
    for (int64_t kx = 0; kx < k; ++kx) fill_rows_v16(in, h, wd, pad, wq, 0.f, in_act, 0, hq, out + kx * sub, kx * dil);
    return;
  }
#endif
  for (int64_t kx = 0; kx < k; ++kx)
    for (int64_t a = 0; a < s; ++a)
      for (int64_t q = 0; q < hq; ++q) {
        float* row = out + (kx * s + a) * sub + q * wq;
        const int64_t y = q * s + a - pad;
        for (int64_t r = 0; r < wq; ++r) {
          const int64_t c = r * s + kx * dil - pad;
          row[r] = y >= 0 && y < h && c >= 0 && c < wd ? act_apply(in[y * wd + c], in_act) : 0.f;
        }
      }
}

// The barrier between instructions. OpenMP's own barriers spin for a long time before sleeping; when the
// machine is busy with other work (two cores shared with a training job, say) a thread spinning while its
// partner is descheduled burns whole scheduler slices, and a 20-op network took 5x longer on two threads
// than on one. This one spins briefly, then yields the core.
//
// A dissemination barrier: in round r thread t raises its flag for thread (t + 2^r) mod n and waits for the one
// thread (t - 2^r) mod n raised for it. Each flag is written by one thread and read by one other, on its own
// cache line, so two threads exchange one line each way at the same time; a shared counter and generation
// word needed several transfers in a row. Flags hold the barrier's epoch (no reset between barriers).
// Spin briefly, then yield the core, until `done()` (the barrier's and the block copies' waits).
template <typename Done>
inline void spin_until(Done done) {
  for (int spins = 0; !done(); ++spins) {
    if (spins < 4000) {
      _mm_pause();
    } else {
      sched_yield();
    }
  }
}

struct Barrier {
  struct alignas(64) Flag { std::atomic<int64_t> epoch{0}; };
  struct alignas(64) Count { int64_t passed = 0; };
  std::vector<Flag> flags;    // [thread][round]
  std::vector<Count> passed;  // per thread: barriers it has passed (only that thread touches it)
  int size = 1, rounds = 0;

  void resize(int n) {
    size = n;
    rounds = 0;
    while ((1 << rounds) < n) ++rounds;
    flags = std::vector<Flag>(static_cast<size_t>(n) * std::max(rounds, 1));
    passed = std::vector<Count>(static_cast<size_t>(n));
  }

  void wait(int tid) {
    if (size == 1) return;
    const int64_t epoch = ++passed[tid].passed;
    for (int r = 0; r < rounds; ++r) {
      flags[((tid + (1 << r)) % size) * rounds + r].epoch.store(epoch, std::memory_order_release);
      const std::atomic<int64_t>& mine = flags[tid * rounds + r].epoch;
      spin_until([&] { return mine.load(std::memory_order_acquire) >= epoch; });
    }
  }
};

// For tiny output planes (4x4 and below) tiles of a padded plane are only 1-4 pixels wide. There the input
// is unfolded instead: row (ci, ky, kx) holds the input pixels that tap reads for every output pixel, so each
// tap is one multiply-add over the whole plane, 16-64 contiguous floats. The unfold is cheap at this size.

// (GCC would turn the copy loops below into memcpy calls, which cost more than copying 4 floats; the
// attribute keeps them loops. Measured: the whole file built that way ran 1.6x slower, so only here.)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void build_im2col(const float* in, int64_t h, int64_t wd, int64_t k, int64_t s, int64_t pad, int64_t dil,
                  int64_t ho, int64_t wo, int64_t in_act, float* out) {
  // through a zero-padded copy of the plane, so that the unfold itself is plain copies without bounds tests
  // (on the stack: thread_local storage in a shared library costs a call per access. The compiler unfolds
  // only planes whose padded copy fits, see IM2COL_MAX_PADDED.)
  const int64_t hp = h + 2 * pad, wp = wd + 2 * pad;
  float padded[kIm2colMaxPadded];
  std::fill(padded, padded + hp * wp, 0.f);
  for (int64_t y = 0; y < h; ++y) {
    float* row = padded + (y + pad) * wp + pad;
    const float* src = in + y * wd;
    for (int64_t x = 0; x < wd; ++x) row[x] = act_apply(src[x], in_act);
  }
  if (s == 1 && wo == 4) {   // the 4x4 planes of ResNet-18's last stage: one 4-float vector per output row
    for (int64_t ky = 0; ky < k; ++ky)
      for (int64_t kx = 0; kx < k; ++kx)
        for (int64_t oy = 0; oy < ho; ++oy)
          _mm_storeu_ps(out + ((ky * k + kx) * ho + oy) * 4, _mm_loadu_ps(padded + (oy + ky * dil) * wp + kx * dil));
    return;
  }
  for (int64_t ky = 0; ky < k; ++ky)
    for (int64_t kx = 0; kx < k; ++kx)
      for (int64_t oy = 0; oy < ho; ++oy) {
        const float* src = padded + (oy * s + ky * dil) * wp + kx * dil;
        float* dst = out + ((ky * k + kx) * ho + oy) * wo;
        for (int64_t ox = 0; ox < wo; ++ox) dst[ox] = src[ox * s];   // (a memcpy call per 4 floats costs more)
      }
}

struct alignas(64) Counter { std::atomic<int64_t> v{0}; };   // one cache line each: no false sharing

struct Ctx {
  Barrier* barrier;
  float* arena;
  float* scratch;
  const float* fpool;
  const int32_t* ipool;
  int64_t batch;
  const int64_t* program;
  int64_t count;                     // instructions in the program
  int64_t per_op;                    // work counters per instruction (see dass_run)
  const uint8_t* copy_read_later;   // per instruction: a later conv reads the copy it makes (EARLIER_COPY)
  std::atomic<int64_t>* block_flags; // per block of images: who copies it (see run_conv)
  // Buffer b of per-image size S at per-image offset B holds image i at arena[B * batch + i * S]; a value
  // stored as a channel slice of b (a concatenation's input) adds its offset inside the image.
  float* at(const int64_t* f, int base, int within) const { return arena + f[base] * batch + f[within]; }
};

// The work of one instruction is a range of units (output channels, copied planes, ...). Each thread owns a
// share (`split(t)` .. `split(t + 1)`) and claims it in chunks from its own counter; when done, it claims what
// is left of the other shares, so that a core running slower than the other (this machine's do not always
// run at one speed) holds up only its last chunk. `next` holds one zeroed counter per thread.
// (For convs, measured on ResNet-18 at 90%: 5-15% faster than static equal shares; for the other ops it
// made no measurable difference on whole networks, +-2%.)
template <typename Split, typename Fn>
void share_work(Counter* next, Split split, Fn fn) {
  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
  for (int64_t step = 0; step < nth; ++step) {
    const int64_t owner = (tid + step) % nth, begin = split(owner), end = split(owner + 1);
    const int64_t chunk = std::max<int64_t>(1, (end - begin) / 16);
    for (;;) {
      const int64_t first = begin + next[owner].v.fetch_add(chunk, std::memory_order_relaxed);
      if (first >= end) break;
      for (int64_t idx = first; idx < std::min(end, first + chunk); ++idx) fn(idx);
    }
  }
}

// Equal shares of `total` units.
template <typename Fn>
void share_equally(Counter* next, int64_t total, Fn fn) {
  const int64_t nth = omp_get_num_threads();
  share_work(next, [&](int64_t t) { return t <= 0 ? 0 : (t >= nth ? total : total * t / nth); }, fn);
}

// One tile of 16*V output pixels of one output channel over the taps of one chunk of input channels
// (run_conv_chunked): the partial sums of the earlier chunks wait in dst; the first chunk starts from the bias,
// the last adds the residual and applies the activation.
template <int V>
inline void chunk_tile(const float* __restrict src, const int32_t* __restrict taps, const float* __restrict w,
                       int64_t count, float* __restrict dst, float bias, bool first, bool last, int64_t act,
                       const float* __restrict res) {
#if DASS_V16
  typedef v16f VT;
  typedef v16u VU;
  constexpr int L = 16, NV = V;
#else
  typedef v8f VT;
  typedef v8u VU;
  constexpr int L = 8, NV = 2 * V;
#endif
  constexpr int U = NV >= 8 ? 1 : (NV >= 4 ? 2 : 4);   // at least 8 independent multiply-add chains
  VT acc[U][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    acc[0][v] = first ? VT{} + bias : *reinterpret_cast<const VU*>(dst + v * L);
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) acc[u][v] = VT{};
  }
  int64_t j = 0;
  for (; j + U <= count; j += U)
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const float* __restrict p = src + taps[j + u];
      const float wj = w[j + u];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[u][v] += wj * *reinterpret_cast<const VU*>(p + v * L);
    }
  for (; j < count; ++j) {
    const float* __restrict p = src + taps[j];
    const float wj = w[j];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[0][v] += wj * *reinterpret_cast<const VU*>(p + v * L);
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    VT sum = acc[0][v];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) sum += acc[u][v];
    if (last) {
      if (res) sum += *reinterpret_cast<const VU*>(res + v * L);
      sum = act_vec(sum, act);
    }
    *reinterpret_cast<VU*>(dst + v * L) = sum;
  }
}

// A rider: a conv with chunked taps that reads the copy of the chunked conv before it (a ResNet shortcut reads
// its block's 3x3 conv's copy). That conv computes it with its own, image by image, while the copy is in cache;
// the instruction loop skips it.
inline bool rides(const int64_t* f) {
  return f[F_OP] == OP_CONV && f[F_SCRATCH] == SCRATCH_EARLIER_COPY && f[F_AUX] > 0;
}

// A conv with chunked taps (F_AUX > 0), on a column-shifted copy (LAYOUT_SHIFTED) or on its input read in place (a
// pointwise conv), blocked for L1. In the output-channel order of run_conv every tap loads its input rows again
// from L2 for every output channel (a 64-channel 32x32 input is 256 KB per image): the convs ran at the rate of
// L2, one cache line per multiply-add. Here the taps of each output channel are split by chunks of F_AUX input
// channels (the compiler sizes a chunk's rows to stay in L1), stored chunk by chunk (row pointers per (chunk,
// output channel)), and the loops go: a tile of 16*V output pixels, then a chunk, then every output channel, so all
// output channels read a chunk's rows while they are in L1; partial sums wait in the output. Work units: images (a batch of at least one image per thread), or (image,
// block of output channels); each thread copies the images it computes into its own scratch (no barrier). The
// riders that follow it (see rides) run on the same copy, unit by unit.
template <int V>
void run_conv_chunked(const int64_t* f, const Ctx& c, Counter* next) {
  const int64_t n = c.batch, cin = f[F_C], h = f[F_H], wd = f[F_W], ho = f[F_HO], wo = f[F_WO];
  const int64_t hq = f[F_HQ], wq = f[F_WQ], k = f[F_K], s = f[F_STRIDE], pix = ho * wo;
  // the input read in place (a pointwise conv: its planes are the output's), or a column-shifted copy of it
  const bool in_place = f[F_SCRATCH] == SCRATCH_IN_PLACE;
  const int64_t plane = in_place ? hq * wq : k * s * shifted_plane(hq, wq);
  const int64_t src_img = in_place ? f[F_X_IMG] : cin * plane;
  const int64_t nth = omp_get_num_threads();
  const float* x = c.at(f, F_X, F_X_AT);
  const int32_t* used = c.ipool + f[F_CHANNELS];
  const int64_t nused = f[F_NCHANNELS];
  float* const base = c.scratch + f[F_AUX2] * n;   // (after a copy a later conv still reads, see the compiler)
  auto copy_image = [&](int64_t i, int64_t k_used, float* dst) {
    build_shifted(x + i * f[F_X_IMG] + used[k_used] * h * wd, h, wd, f[F_PAD], k, s, f[F_DIL], hq, wq, f[F_IN_ACT],
                  dst + used[k_used] * plane);
  };
  const int64_t k_ins = (f - c.program) / N_FIELDS;
  int64_t convs = 1;   // this conv and its riders: f, f + N_FIELDS, ...
  while (k_ins + convs < c.count && rides(f + convs * N_FIELDS)) ++convs;
  // image i of conv g (this one or a rider) from the copy at src, output channels [o0, o1)
  auto compute = [&](const int64_t* g, const float* src, int64_t i, int64_t o0, int64_t o1) {
    const int64_t cog = g[F_CO], nchunks = (cin + g[F_AUX] - 1) / g[F_AUX];
    float* dst = c.at(g, F_OUT, F_OUT_AT) + i * g[F_OUT_IMG];
    const float* r = g[F_Y] >= 0 ? c.at(g, F_Y, F_Y_AT) + i * g[F_Y_IMG] : nullptr;
    const float* bias = g[F_BIAS] >= 0 ? c.fpool + g[F_BIAS] : nullptr;
    const float* weight = c.fpool + g[F_WEIGHT];
    const int32_t* rowptr = c.ipool + g[F_ROWPTR];   // (chunk, output channel) segments: nchunks * co + 1
    const int32_t* taps = c.ipool + g[F_TAPS];
    for (int64_t p0 = 0; p0 < pix; p0 += 16 * V)
      for (int64_t ch = 0; ch < nchunks; ++ch)
        for (int64_t o = o0; o < o1; ++o) {
          const int64_t lo = rowptr[ch * cog + o], hi = rowptr[ch * cog + o + 1];
          chunk_tile<V>(src + p0, taps + lo, weight + lo, hi - lo, dst + o * pix + p0, bias ? bias[o] : 0.f, ch == 0,
                        ch == nchunks - 1, g[F_ACT], r ? r + o * pix + p0 : nullptr);
        }
  };
  if (n >= nth) {
    float* const own = in_place ? nullptr : base + omp_get_thread_num() * src_img;
    share_equally(next, n, [&](int64_t i) {
      if (!in_place)
        for (int64_t u = 0; u < nused; ++u) copy_image(i, u, own);
      for (int64_t j = 0; j < convs; ++j)
        compute(f + j * N_FIELDS, in_place ? x + i * src_img : own, i, 0, f[j * N_FIELDS + F_CO]);
    });
    return;
  }
  // Fewer images than threads: units of (image, block of output channels), and each thread copies the images of
  // the units it computes into its own scratch, so that no barrier follows the copy (a thread waiting at a barrier
  // for a core that the machine gave to another process loses a scheduler slice, milliseconds; a copy is a few
  // microseconds). Conv after conv, each with its instruction's counters; a barrier between them only where a
  // rider reads an output (its residual).
  float* const own = in_place ? nullptr : base + omp_get_thread_num() * n * src_img;
  std::vector<uint8_t> copied(n, 0);   // image i is in own
  const int64_t oblocks = (2 * nth + n - 1) / n;
  for (int64_t j = 0; j < convs; ++j) {
    const int64_t* g = f + j * N_FIELDS;
    const int64_t cog = g[F_CO], per = (cog + oblocks - 1) / oblocks;
    if (j > 0 && g[F_Y] >= 0) c.barrier->wait(omp_get_thread_num());
    share_equally(next + j * c.per_op, n * oblocks, [&](int64_t idx) {
      const int64_t i = idx / oblocks, o0 = idx % oblocks * per;
      if (!copied[i] && !in_place) {
        for (int64_t u = 0; u < nused; ++u) copy_image(i, u, own + i * src_img);
        copied[i] = 1;
      }
      compute(g, (in_place ? x : own) + i * src_img, i, std::min(cog, o0), std::min(cog, o0 + per));
    });
  }
}

// `next`: 2 x threads zeroed counters (the copy's units, then the output channels)
void run_conv(const int64_t* f, const Ctx& c, Counter* next) {
  if (f[F_AUX] > 0) {   // chunked taps: 16*V output pixels per tile, the most that divide the plane, up to 256
    const int64_t pix = f[F_HO] * f[F_WO];
    if (pix % 256 == 0) return run_conv_chunked<16>(f, c, next);
    if (pix % 128 == 0) return run_conv_chunked<8>(f, c, next);
    if (pix % 64 == 0) return run_conv_chunked<4>(f, c, next);
    if (pix % 32 == 0) return run_conv_chunked<2>(f, c, next);
    return run_conv_chunked<1>(f, c, next);
  }
  const int64_t n = c.batch, cin = f[F_C], h = f[F_H], wd = f[F_W], co = f[F_CO], ho = f[F_HO], wo = f[F_WO];
  const int64_t s = f[F_STRIDE], hq = f[F_HQ], wq = f[F_WQ];
  const float* x = c.at(f, F_X, F_X_AT);
  float* out = c.at(f, F_OUT, F_OUT_AT);
  const int64_t x_img = f[F_X_IMG], out_img = f[F_OUT_IMG];
  const float* src = x;
  int64_t src_img = x_img;
  // the copy's layout: padded (phase-split when strided) planes of hq x wq, unfolded rows, or column-shifted
  // planes (an input stored padded by its producer has no copy: hq x wq are its padded planes)
  // (chunked taps, F_AUX > 0: run_conv_chunked)
  const bool im2col = f[F_IM2COL] == LAYOUT_UNFOLDED;
  const int64_t plane = im2col ? f[F_K] * f[F_K] * ho * wo : (f[F_SCRATCH] != SCRATCH_IN_PLACE ? s * s : 1) * hq * wq;
  // F_SCRATCH: IN_PLACE reads x; OWN_COPY makes a padded / unfolded copy of x, shared by the threads;
  // EARLIER_COPY reads the copy an earlier conv made of the same input; PER_THREAD unfolds x into a copy of
  // each thread's own (the 4x4 planes at batch 1: no barrier after it, no reads of what the other core wrote:
  // 6-10% faster layers; a batch shares one copy, each thread would otherwise unfold the images the other one
  // computes)
  // PER_CHANNEL (depthwise convs): each output channel reads its own input channel only, so each thread copies
  // the channel's planes of the images it computes into its own scratch right before computing them: no copy
  // phase, no barrier after it, and the copy is still in L1 when the taps read it. Its taps address one plane.
  const int64_t mode = f[F_SCRATCH] == SCRATCH_PER_THREAD && n > 1 ? SCRATCH_OWN_COPY : f[F_SCRATCH];
  const bool per_channel = mode == SCRATCH_PER_CHANNEL;
  float* const scratch = mode == SCRATCH_PER_THREAD ? c.scratch + omp_get_thread_num() * n * cin * plane
                         : per_channel ? c.scratch + omp_get_thread_num() * n * plane : c.scratch;
  const int32_t* used = c.ipool + f[F_CHANNELS];
  const int64_t nused = f[F_NCHANNELS];
  // Batches of at least a block of images per thread copy block by block instead: each thread copies the block
  // of images it is about to compute, so the copy is still in its cache when the taps read it and no barrier
  // follows. (A batch-64 copy of a stride-2 layer's phase planes is 19 MB: written to and read back from
  // memory.) Into its own part of the scratch; or, when a later conv reads the copy (EARLIER_COPY), into the
  // shared copy, where a per-block flag makes one thread copy each block and the other wait for it.
  constexpr int64_t IB = DASS_IMGS;
  const int64_t nth = omp_get_num_threads(), k_ins = (f - c.program) / N_FIELDS;
  const bool per_block = mode == SCRATCH_OWN_COPY && n >= nth * IB;
  const bool shared_blocks = per_block && c.copy_read_later[k_ins];
  float* const block_copy = c.scratch + omp_get_thread_num() * IB * cin * plane;
  auto copy_plane = [&](int64_t i, int64_t ch, float* dst) {   // image i, input channel ch into dst
    const float* in = x + i * x_img + ch * h * wd;
    if (im2col) {
      build_im2col(in, h, wd, f[F_K], s, f[F_PAD], f[F_DIL], ho, wo, f[F_IN_ACT], dst);
    } else {
      build_phases(in, h, wd, f[F_PAD], s, hq, wq, f[F_IN_ACT], f[F_PHASES], dst);
    }
  };
  if (mode == SCRATCH_PER_THREAD) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < nused; ++k) copy_plane(i, used[k], scratch + (i * cin + used[k]) * plane);
  } else if (mode == SCRATCH_OWN_COPY && !per_block) {
    share_equally(next + omp_get_num_threads(), n * nused, [&](int64_t idx) {
      const int64_t i = idx / nused, ch = used[idx % nused];
      copy_plane(i, ch, scratch + (i * cin + ch) * plane);
    });
    c.barrier->wait(omp_get_thread_num());
  }
  if (mode != SCRATCH_IN_PLACE) {
    src = scratch;
    src_img = (per_channel ? 1 : cin) * plane;
  }
  const float* bias = f[F_BIAS] >= 0 ? c.fpool + f[F_BIAS] : nullptr;
  const float* weight = c.fpool + f[F_WEIGHT];
  const int32_t* rowptr = c.ipool + f[F_ROWPTR];
  const int32_t* taps = c.ipool + f[F_TAPS];
  const bool dense = f[F_DENSE] != 0;
  const int64_t ktaps = f[F_KTAPS], groups = f[F_GROUPS], cout_g = co / groups;
  const int64_t cin_plane = plane;
  const float* res = f[F_Y] >= 0 ? c.at(f, F_Y, F_Y_AT) : nullptr;   // a fused residual addition
  const int64_t res_img = f[F_Y_IMG];
  // An unfolded input is one row of ho*wo pixels per tap. So is a plane whose rows are as long as the output's
  // when neither the output nor the residual is stored padded (pointwise convs, or stride-2 ones on a phase
  // plane): each tap reads the whole plane as one contiguous row. Other planes are read in 2-D tiles.
  const bool flat = im2col || (DASS_FLAT && wq == wo && f[F_OUT_PAD] == 0 && (!res || f[F_Y_PAD] == 0));
  const int64_t row = flat ? ho * wo : wq, tile_w = flat ? ho * wo : wo, tile_h = flat ? 1 : ho;
  // Outputs (and residuals) stored padded: planes of (ho + 2p) x (wo + 2p) with a zero border, which the
  // consuming stride-1 convs read in place instead of making a padded copy (no copy, no barrier after it).
  const int64_t opad = f[F_OUT_PAD], yp = f[F_Y_PAD];
  const int64_t out_row = wo + 2 * opad, out_plane = (ho + 2 * opad) * out_row;
  const int64_t res_row = wo + 2 * yp, res_plane = (ho + 2 * yp) * res_row;
  // Rows are (block of images, output channel) pairs: at batch > 1 a block of DASS_IMGS images shares each
  // tap load (the last block may be smaller). Each thread owns a share of equal work (a row costs its taps
  // plus a fixed overhead) and claims it in chunks from its own counter; when done, it claims what is left of
  // the other shares. (Measured on a ResNet-18 at 90% sparsity, batch 1: the equal static split was 12-14%
  // faster than OpenMP's dynamic schedule, whose shared counter bounced between the cores on every row;
  // claiming the leftovers of a share gained 5% more, as the cores of this machine do not always run at one
  // pace.)
  const int64_t blocks = (n + IB - 1) / IB;
  const int64_t total = blocks * co;
  const int64_t overhead = 8, per_image = dense ? co * (ktaps + overhead) : rowptr[co] + co * overhead;
  auto work_before = [&](int64_t idx) {   // work of rows [0, idx)
    const int64_t i = idx / co, o = idx % co;
    return i * per_image + (dense ? o * (ktaps + overhead) : rowptr[o] + o * overhead);
  };
  auto split = [&](int64_t t) {           // first row at or after the t-th share of the work
    if (t <= 0) return int64_t{0};
    if (t >= nth) return total;
    const int64_t target = (blocks * per_image) * t / nth;
    int64_t a = 0, b = total;
    while (a < b) {
      const int64_t m = (a + b) / 2;
      if (work_before(m) < target) a = m + 1; else b = m;
    }
    return a;
  };
  const ImgStride is{src_img, out_img, res_img};
  auto run_images = [&](auto imgs, int64_t i, int64_t o) {   // images i .. i + imgs - 1, output channel o
    constexpr int B = decltype(imgs)::value;
    const float* base = per_block && !shared_blocks ? block_copy + i % IB * src_img : src + i * src_img;
    if (per_channel) {   // (a sparse channel without taps reads nothing: its output is the bias)
      base = src;
      if (dense || rowptr[o + 1] > rowptr[o])
        for (int k = 0; k < B; ++k)
          build_phases(x + (i + k) * x_img + o * h * wd, h, wd, f[F_PAD], s, hq, wq, f[F_IN_ACT], f[F_PHASES],
                       scratch + k * plane);
    }
    const float b = bias ? bias[o] : 0.f;
    float* dst = out + i * out_img + o * out_plane;
    const float* r = res ? res + i * res_img + o * res_plane + yp * res_row + yp : nullptr;
    if (opad) {
      for (int k = 0; k < B; ++k) zero_border(dst + k * out_img, ho + 2 * opad, out_row, opad);
      dst += opad * out_row + opad;
    }
    if (dense) {
      const int64_t g = o / cout_g;
      conv_channel<B>(base + (per_channel ? 0 : g * (cin / groups) * cin_plane), row, taps, weight + o * ktaps, ktaps, b, dst,
                      out_row, tile_w, tile_h, f[F_ACT], r, res_row, is);
    } else if (f[F_ROWS16]) {
      const int64_t lo = rowptr[o], hi = rowptr[o + 1];
      conv_rows16<B>(base, reinterpret_cast<const uint16_t*>(taps) + lo, weight + lo, hi - lo, b, dst, f[F_ACT], r,
                     is);
    } else {
      const int64_t lo = rowptr[o], hi = rowptr[o + 1];
      conv_channel<B>(base, row, taps + lo, weight + lo, hi - lo, b, dst, out_row, tile_w, tile_h,
                      f[F_ACT], r, res_row, is);
    }
  };
  int64_t copied = -1;   // (per_block: the block of images in this thread's copy)
  auto run_row = [&](int64_t idx) {
    const int64_t i = idx / co * IB, o = idx % co;
    if (per_block && idx / co != copied) {
      copied = idx / co;
      std::atomic<int64_t>& flag = c.block_flags[copied];   // 2k + 1: being copied for instruction k; 2k + 2: done
      int64_t seen = shared_blocks ? flag.load(std::memory_order_acquire) : 0;
      if (!shared_blocks || (seen < 2 * k_ins + 1 && flag.compare_exchange_strong(seen, 2 * k_ins + 1))) {
        float* dst = shared_blocks ? scratch + i * cin * plane : block_copy;
        for (int64_t j = i; j < std::min(n, i + IB); ++j)
          for (int64_t k = 0; k < nused; ++k) copy_plane(j, used[k], dst + ((j - i) * cin + used[k]) * plane);
        if (shared_blocks) flag.store(2 * k_ins + 2, std::memory_order_release);
      } else {
        spin_until([&] { return flag.load(std::memory_order_acquire) >= 2 * k_ins + 2; });
      }
    }
    if (i + IB <= n) {
      run_images(std::integral_constant<int, IB>{}, i, o);
    } else {
      for (int64_t k = i; k < n; ++k) run_images(std::integral_constant<int, 1>{}, k, o);
    }
  };
  share_work(next, split, run_row);
}

// Pooling, separable and branch-free: the plane goes into a copy padded with the window's neutral value, then
// rows are reduced over k columns at every column (stride 1, so that the loops vectorize) and columns over k
// rows at the output rows only; a stride > 1 picks every s-th column of that. (The window-per-pixel loop
// with bounds tests that this replaces took 12 ns per output of a stride-2 3x3 pool, most of the DASS
// network's time at 99% sparsity.) `buf` holds 2 (h + 2p) (w + 2p) + (w + 2p) + wo floats. Each pass is a
// plain loop (the activation and the divisor outside the loops), so that all of them vectorize.
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void pool_plane(const float* in, float* dst, float* buf, int64_t h, int64_t wd, int64_t ho, int64_t wo, int64_t k,
                int64_t s, int64_t p, int64_t kind, int64_t act) {
  const bool is_max = kind == POOL_MAX;
  const int64_t hp = h + 2 * p, wp = wd + 2 * p, wr = wp - k + 1;   // wr: windows along a row, stride 1
  const float neutral = is_max ? -3.402823466e38f : 0.f;
  float* padded = buf;
  float* rows = padded + hp * wp;     // rows[y][x]: reduction of padded[y][x .. x + k)
  float* col = rows + hp * wp;        // one output row before the stride
  float* cols_in = col + wp;          // per output column: window columns inside the plane
  for (int64_t xo = 0; xo < wo; ++xo)
    cols_in[xo] = static_cast<float>(std::min<int64_t>(xo * s + k, p + wd) - std::max<int64_t>(xo * s, p));
  for (int64_t i = 0; i < p * wp; ++i) padded[i] = neutral;
  for (int64_t y = 0; y < h; ++y) {
    float* row = padded + (y + p) * wp;
    for (int64_t x = 0; x < p; ++x) row[x] = row[wp - 1 - x] = neutral;
    for (int64_t x = 0; x < wd; ++x) row[p + x] = in[y * wd + x];
  }
  for (int64_t i = (h + p) * wp; i < hp * wp; ++i) padded[i] = neutral;
  // k-wide reductions of 8 neighbouring windows at a time, in registers (a pass per tap over short rows
  // spent more on loop overhead than on the arithmetic)
  auto reduce = [&](const float* src, int64_t step, int64_t count, float* out) {
    int64_t x = 0;
    for (; x + 8 <= count; x += 8) {
      __m256 v = _mm256_loadu_ps(src + x);
      for (int64_t j = 1; j < k; ++j) {
        const __m256 u = _mm256_loadu_ps(src + x + j * step);
        v = is_max ? _mm256_max_ps(v, u) : _mm256_add_ps(v, u);
      }
      _mm256_storeu_ps(out + x, v);
    }
    for (; x < count; ++x) {
      float v = src[x];
      for (int64_t j = 1; j < k; ++j) v = is_max ? (src[x + j * step] > v ? src[x + j * step] : v) : v + src[x + j * step];
      out[x] = v;
    }
  };
  for (int64_t y = 0; y < hp; ++y) reduce(padded + y * wp, 1, wr, rows + y * wp);
  for (int64_t yo = 0; yo < ho; ++yo) {
    const int64_t y0 = yo * s;
    reduce(rows + y0 * wp, wp, wr, col);
    float* d = dst + yo * wo;
    if (s == 1) {
      for (int64_t xo = 0; xo < wo; ++xo) d[xo] = col[xo];
    } else {
      for (int64_t xo = 0; xo < wo; ++xo) d[xo] = col[xo * s];
    }
    if (kind == POOL_AVG_PADDED) {
      const float n = static_cast<float>(k * k);
      for (int64_t xo = 0; xo < wo; ++xo) d[xo] /= n;
    } else if (kind == POOL_AVG_INSIDE) {
      const float rows_in = static_cast<float>(std::min<int64_t>(y0 + k, p + h) - std::max<int64_t>(y0, p));
      for (int64_t xo = 0; xo < wo; ++xo) d[xo] /= rows_in * cols_in[xo];
    }
    if (act == ACT_RELU) {
      for (int64_t xo = 0; xo < wo; ++xo) d[xo] = d[xo] > 0.f ? d[xo] : 0.f;
    } else if (act == ACT_RELU6) {
      for (int64_t xo = 0; xo < wo; ++xo) d[xo] = act_apply(d[xo], ACT_RELU6);
    }
  }
}

#if DASS_V16
// Stride-1 pooling (a DARTS cell's 3x3 max and average pools): the plane goes into a copy padded with the
// window's neutral value (16 columns at a time, masked), then every 16 output columns of a row take the k*k
// windows' unaligned loads from that copy, in L1. (The separable passes of pool_plane went through memory
// three times; this is ~3x faster on a 32x32 plane.) `padded` holds (h + 2p) (w + 2p) + 16 floats.
void pool_plane_s1(const float* in, float* dst, float* padded, const float* cols_in, int64_t h, int64_t wd,
                   int64_t ho, int64_t wo, int64_t k, int64_t p, int64_t kind, int64_t act) {
  const bool is_max = kind == POOL_MAX;
  const int64_t wp = wd + 2 * p, hp = h + 2 * p;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 zero = _mm512_setzero_ps();
  fill_rows_v16(in, h, wd, p, wp, is_max ? -3.402823466e38f : 0.f, ACT_NONE, 0, hp, padded);
  const float window = static_cast<float>(k * k);
  for (int64_t yo = 0; yo < ho; ++yo) {
    const float rows_in = static_cast<float>(std::min<int64_t>(yo + k, p + h) - std::max<int64_t>(yo, p));
    for (int64_t x = 0; x < wo; x += 16) {
      // (lanes past wo read the next row or the slack; the store drops them)
      const __mmask16 keep = _mm512_cmplt_epi32_mask(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(x)), lane),
                                                     _mm512_set1_epi32(static_cast<int>(wo)));
      const float* win = padded + yo * wp + x;
      auto reduce = [&](__m512 a, __m512 b) { return is_max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b); };
      __m512 v;
      if (k == 3) {   // a tree of the 9 taps (one chain of 8 dependent ops was most of the time)
        const __m512 r0 = reduce(reduce(_mm512_loadu_ps(win), _mm512_loadu_ps(win + 1)), _mm512_loadu_ps(win + 2));
        const __m512 r1 = reduce(reduce(_mm512_loadu_ps(win + wp), _mm512_loadu_ps(win + wp + 1)),
                                 _mm512_loadu_ps(win + wp + 2));
        const __m512 r2 = reduce(reduce(_mm512_loadu_ps(win + 2 * wp), _mm512_loadu_ps(win + 2 * wp + 1)),
                                 _mm512_loadu_ps(win + 2 * wp + 2));
        v = reduce(reduce(r0, r1), r2);
      } else {
        v = _mm512_loadu_ps(win);
        for (int64_t ky = 0; ky < k; ++ky)
          for (int64_t kx = ky == 0 ? 1 : 0; kx < k; ++kx) v = reduce(v, _mm512_loadu_ps(win + ky * wp + kx));
      }
      if (kind == POOL_AVG_PADDED) {
        v = _mm512_div_ps(v, _mm512_set1_ps(window));
      } else if (kind == POOL_AVG_INSIDE) {
        v = _mm512_div_ps(v, _mm512_mul_ps(_mm512_set1_ps(rows_in), _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), keep, cols_in + x)));
      }
      if (act == ACT_RELU) v = _mm512_max_ps(v, zero);
      else if (act == ACT_RELU6) v = _mm512_min_ps(_mm512_max_ps(v, zero), _mm512_set1_ps(6.f));
      _mm512_mask_storeu_ps(dst + yo * wo + x, keep, v);
    }
  }
}
#endif

void run_pool(const int64_t* f, const Ctx& c, Counter* next) {
  // F_AUX: the PoolKind
  const int64_t n = c.batch, ch = f[F_C], h = f[F_H], wd = f[F_W], ho = f[F_HO], wo = f[F_WO];
  const int64_t k = f[F_K], s = f[F_STRIDE], p = f[F_PAD], kind = f[F_AUX];
  const float* x = c.at(f, F_X, F_X_AT);
  float* out = c.at(f, F_OUT, F_OUT_AT);
  const int64_t hp = h + 2 * p, wp = wd + 2 * p;
  std::vector<float> buf(static_cast<size_t>(2 * hp * wp + wp + wo));   // per thread and instruction
#if DASS_V16
  // (the stride-1 path: the padded plane, 16 floats of slack, and each output column's window columns inside
  // the plane; 2 hp wp + wp + wo >= that, as hp, wp >= k >= 1 and wo = wp - k + 1)
  const bool s1 = s == 1 && wo == wp - k + 1 && ho == hp - k + 1 && hp * wp >= 16 + wo;
  float* const cols_in = buf.data() + hp * wp + 16;
  if (s1)
    for (int64_t xo = 0; xo < wo; ++xo)
      cols_in[xo] = static_cast<float>(std::min<int64_t>(xo + k, p + wd) - std::max<int64_t>(xo, p));
#endif
  share_equally(next, n * ch, [&](int64_t idx) {
    const int64_t i = idx / ch, cc = idx % ch;
    const float* in = x + i * f[F_X_IMG] + cc * h * wd;
    float* dst = out + i * f[F_OUT_IMG] + cc * ho * wo;
#if DASS_V16
    if (s1) {
      pool_plane_s1(in, dst, buf.data(), cols_in, h, wd, ho, wo, k, p, kind, f[F_ACT]);
      return;
    }
#endif
    pool_plane(in, dst, buf.data(), h, wd, ho, wo, k, s, p, kind, f[F_ACT]);
  });
}

void run_elementwise(const int64_t* f, const Ctx& c, Counter* next) {
  const int64_t n = c.batch, op = f[F_OP], ch = f[F_C], plane = f[F_H] * f[F_W];
  const float* x = c.at(f, F_X, F_X_AT);
  const float* y = op == OP_ADD ? c.at(f, F_Y, F_Y_AT) : nullptr;
  float* out = c.at(f, F_OUT, F_OUT_AT);
  const float* scale = op == OP_AFFINE ? c.fpool + f[F_WEIGHT] : nullptr;
  const float* shift = op == OP_AFFINE ? c.fpool + f[F_BIAS] : nullptr;
  const int64_t act = f[F_ACT];
  share_equally(next, n * ch, [&](int64_t idx) {
    const int64_t i = idx / ch, cc = idx % ch;
    const float* a = x + i * f[F_X_IMG] + cc * plane;
    float* d = out + i * f[F_OUT_IMG] + cc * plane;
    if (op == OP_ADD) {
      const float* b = y + i * f[F_Y_IMG] + cc * plane;
      for (int64_t j = 0; j < plane; ++j) d[j] = act_apply(a[j] + b[j], act);
    } else if (op == OP_AFFINE) {
      const float sc = scale[cc], sh = shift[cc];
      for (int64_t j = 0; j < plane; ++j) d[j] = act_apply(a[j] * sc + sh, act);
    } else {
      for (int64_t j = 0; j < plane; ++j) d[j] = act_apply(a[j], act);
    }
  });
}

void run_gap(const int64_t* f, const Ctx& c, Counter* next) {
  const int64_t n = c.batch, ch = f[F_C], plane = f[F_H] * f[F_W];
  const float* x = c.at(f, F_X, F_X_AT);
  float* out = c.at(f, F_OUT, F_OUT_AT);
  share_equally(next, n * ch, [&](int64_t idx) {
    const int64_t i = idx / ch, cc = idx % ch;
    const float* a = x + i * f[F_X_IMG] + cc * plane;
    float sum = 0.f;
    for (int64_t j = 0; j < plane; ++j) sum += a[j];
    out[i * f[F_OUT_IMG] + cc] = sum / static_cast<float>(plane);
  });
}

// out[:, AUX : AUX + C] = x (one input of a concatenation)
void run_copy_channels(const int64_t* f, const Ctx& c, Counter* next) {
  const int64_t n = c.batch, size = f[F_C] * f[F_H] * f[F_W], at = f[F_AUX] * f[F_H] * f[F_W];
  const float* x = c.at(f, F_X, F_X_AT);
  float* out = c.at(f, F_OUT, F_OUT_AT);
  share_equally(next, n, [&](int64_t i) {
    std::memcpy(out + i * f[F_OUT_IMG] + at, x + i * f[F_X_IMG], sizeof(float) * size);
  });
}

// out[c, y, x] = x[c, y + AUX, x + AUX2], zero outside the input (crops and pads)
void run_shift(const int64_t* f, const Ctx& c, Counter* next) {
  const int64_t n = c.batch, ch = f[F_C], h = f[F_H], wd = f[F_W], ho = f[F_HO], wo = f[F_WO];
  const int64_t dy = f[F_AUX], dx = f[F_AUX2];
  const float* x = c.at(f, F_X, F_X_AT);
  float* out = c.at(f, F_OUT, F_OUT_AT);
  // output columns [x0, x1) read inside the input row; the rest is zero
  const int64_t x0 = std::min(wo, std::max<int64_t>(0, -dx)), x1 = std::max(x0, std::min(wo, wd - dx));
  share_equally(next, n * ch, [&](int64_t idx) {
    const int64_t i = idx / ch, cc = idx % ch;
    const float* in = x + i * f[F_X_IMG] + cc * h * wd;
    float* dst = out + i * f[F_OUT_IMG] + cc * ho * wo;
    for (int64_t y = 0; y < ho; ++y) {
      float* row = dst + y * wo;
      const int64_t yy = y + dy;
      if (yy < 0 || yy >= h) {
        std::fill(row, row + wo, 0.f);
        continue;
      }
      std::fill(row, row + x0, 0.f);
      std::copy(in + yy * wd + x0 + dx, in + yy * wd + x1 + dx, row + x0);
      std::fill(row + x1, row + wo, 0.f);
    }
  });
}

// out = 0: CO*HO*WO floats of each image (not the whole image stride: an output written into its channel slice
// of a concatenation, at F_OUT_AT, must not clear the other slices, nor run past the buffer at the last image)
void run_zero(const int64_t* f, const Ctx& c, Counter* next) {
  const int64_t n = c.batch, size = f[F_CO] * f[F_HO] * f[F_WO];
  float* out = c.at(f, F_OUT, F_OUT_AT);
  share_equally(next, n, [&](int64_t i) { std::fill(out + i * f[F_OUT_IMG], out + i * f[F_OUT_IMG] + size, 0.f); });
}


// ---- batch-interleaved execution (dass_run_batched) -------------------------------------------------------
//
// At batches of 16 images and more, a second program (dass.deploy.batched) runs with every activation stored
// as [channel][row][column][16 images], planes zero-padded as their readers need: one 16-float vector holds
// one pixel of 16 images. A sparse conv's tap is then one weight times whole aligned vectors at every output
// pixel, whatever its shift, stride or kernel size: a tile of up to 16 output pixels accumulates in 16
// registers, each tap costs one index, one broadcast and 16 multiply-adds with aligned loads. No copies, no
// unfolding, no straddling loads; each thread runs the whole network on its own blocks of 16 images without
// a barrier (blocks left over are shared op by op).
// Fields: X/Y/OUT are offsets in the block's arena; HQ x WQ the stored (padded) input plane; OUT_PAD, Y_PAD the
// stored padding of the output and the residual; a conv's TAPS hold offsets (floats) of the tap's pixel for
// output pixel (0, 0) in the stored input, its ROWPTR segments per (chunk of input channels, output channel),
// AUX chunks.

constexpr int64_t kLanes = 16;
#ifndef DASS_IL_CN
#define DASS_IL_CN 8      // widest tile: 2x8 pixels on wide planes (1.05x over 1x16 tiles, 1.12x over 4x4)
#endif
#ifndef DASS_IL_ALONE
#define DASS_IL_ALONE 1   // 0: the threads share every block op by op (for A/B runs: 0.80x)
#endif
#ifndef DASS_IL_GROUP
#define DASS_IL_GROUP 4   // convs per wavefront (1: none)
#endif

inline int64_t pow2_floor(int64_t v) {
  int64_t p = 1;
  while (p * 2 <= v) p *= 2;
  return p;
}

// Zero the border of a stored plane of hp x wp pixels padded by p.
inline void zero_border16(float* plane, int64_t hp, int64_t wp, int64_t p) {
  if (p <= 0) return;
  std::fill(plane, plane + p * wp * kLanes, 0.f);
  std::fill(plane + (hp - p) * wp * kLanes, plane + hp * wp * kLanes, 0.f);
  for (int64_t y = p; y < hp - p; ++y) {
    float* row = plane + y * wp * kLanes;
    std::fill(row, row + p * kLanes, 0.f);
    std::fill(row + (wp - p) * kLanes, row + wp * kLanes, 0.f);
  }
}

#if DASS_V16
// One tile of R x CN output pixels (x 16 images) of one output channel, over the taps of one segment.
// `init` false: start from the bias, else from the partial sums stored at `out`; `last`: add the residual and
// apply the activation before storing.
template <int R, int CN, int S>
inline void il_tile(const float* __restrict base, int64_t in_row, const int32_t* __restrict taps,
                    const float* __restrict w, int64_t count, bool init, float bias, float* out, int64_t out_row,
                    const float* res, int64_t res_row, int64_t act, bool last) {
  v16f acc[R][CN];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < CN; ++t)
      acc[r][t] = init ? *reinterpret_cast<const v16f*>(out + r * out_row + t * kLanes) : v16f{} + bias;
  for (int64_t i = 0; i < count; ++i) {
    const v16f wv = _mm512_broadcastss_ps(_mm_load_ss(w + i));
    const float* p = base + taps[i];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float* q = p + r * in_row;
#pragma GCC unroll 16
      for (int t = 0; t < CN; ++t) acc[r][t] += wv * *reinterpret_cast<const v16f*>(q + t * S * kLanes);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < CN; ++t) {
      v16f v = acc[r][t];
      if (last) {
        if (res) v += *reinterpret_cast<const v16f*>(res + r * res_row + t * kLanes);
        v = act_vec(v, act);
      }
      *reinterpret_cast<v16f*>(out + r * out_row + t * kLanes) = v;
    }
}

template <int S>
inline void il_tile_any(int64_t r, int64_t cn, const float* base, int64_t in_row, const int32_t* taps, const float* w,
                        int64_t count, bool init, float bias, float* out, int64_t out_row, const float* res,
                        int64_t res_row, int64_t act, bool last) {
#define DASS_IL_TILE(R, CN) \
  case R * 32 + CN: il_tile<R, CN, S>(base, in_row, taps, w, count, init, bias, out, out_row, res, res_row, act, last); break;
  switch (r * 32 + cn) {
    DASS_IL_TILE(1, 16) DASS_IL_TILE(1, 8) DASS_IL_TILE(1, 4) DASS_IL_TILE(1, 2) DASS_IL_TILE(1, 1)
    DASS_IL_TILE(2, 8) DASS_IL_TILE(2, 4) DASS_IL_TILE(2, 2) DASS_IL_TILE(2, 1)
    DASS_IL_TILE(4, 4) DASS_IL_TILE(4, 2) DASS_IL_TILE(4, 1)
    default: break;
  }
#undef DASS_IL_TILE
}
#endif

// Tiles of R0 x CN0 pixels (16 accumulators when the plane allows), smaller ones at the right and bottom edges.
inline int64_t il_cn0(const int64_t* f) { return std::min<int64_t>(DASS_IL_CN, pow2_floor(f[F_WO])); }
inline int64_t il_r0(const int64_t* f) { return std::min<int64_t>({16 / il_cn0(f), 4, pow2_floor(f[F_HO])}); }
// The height of the band of tile rows starting at output row oy.
inline int64_t il_band(const int64_t* f, int64_t oy) {
  int64_t r = il_r0(f);
  while (oy + r > f[F_HO]) r /= 2;
  return r;
}

// Output channels [o0, o1) of a conv's band of output rows [oy, oy + r), for one block. The chunks of input
// channels run outermost, so that a chunk's rows serve every output channel from the cache (partial sums wait
// in the output).
void il_conv_band(const int64_t* f, float* arena, const float* fpool, const int32_t* ipool, int64_t o0, int64_t o1,
                  int64_t oy, int64_t r) {
#if DASS_V16   // (without AVX-512 dass_run_batched refuses to run: PackedModel runs the per-image program)
  const float* x = arena + f[F_X];
  const int64_t wq = f[F_WQ], s = f[F_STRIDE], ho = f[F_HO], wo = f[F_WO], co = f[F_CO];
  const int64_t op = f[F_OUT_PAD], wop = wo + 2 * op, out_plane = (ho + 2 * op) * wop * kLanes;
  const int64_t yp = f[F_Y_PAD], wyp = wo + 2 * yp, res_plane = (ho + 2 * yp) * wyp * kLanes;
  float* out = arena + f[F_OUT];
  const float* y = f[F_Y] >= 0 ? arena + f[F_Y] : nullptr;
  const int32_t* rowptr = ipool + f[F_ROWPTR];
  const int32_t* taps = ipool + f[F_TAPS];
  const float* w = fpool + f[F_WEIGHT];
  const float* bias = f[F_BIAS] >= 0 ? fpool + f[F_BIAS] : nullptr;
  const int64_t chunks = f[F_AUX], act = f[F_ACT], cn0 = il_cn0(f);
  if (oy == 0)
    for (int64_t o = o0; o < o1; ++o) zero_border16(out + o * out_plane, ho + 2 * op, wop, op);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const bool init = ch > 0, last = ch == chunks - 1;
    for (int64_t ox = 0, cn = cn0; ox < wo; ox += cn) {
      while (ox + cn > wo) cn /= 2;
      const float* base = x + (oy * s * wq + ox * s) * kLanes;
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t a = rowptr[ch * co + o], e = rowptr[ch * co + o + 1];
        float* dst = out + o * out_plane + ((oy + op) * wop + ox + op) * kLanes;
        const float* res = y ? y + o * res_plane + ((oy + yp) * wyp + ox + yp) * kLanes : nullptr;
        const float b = bias ? bias[o] : 0.f;
        if (s == 1)
          il_tile_any<1>(r, cn, base, s * wq * kLanes, taps + a, w + a, e - a, init, b, dst, wop * kLanes, res,
                         wyp * kLanes, act, last);
        else
          il_tile_any<2>(r, cn, base, s * wq * kLanes, taps + a, w + a, e - a, init, b, dst, wop * kLanes, res,
                         wyp * kLanes, act, last);
      }
    }
  }
#else
  (void)f, (void)arena, (void)fpool, (void)ipool, (void)o0, (void)o1, (void)oy, (void)r;
#endif
}

// Output channels [o0, o1) of a conv for one block, band by band.
void il_conv(const int64_t* f, float* arena, const float* fpool, const int32_t* ipool, int64_t o0, int64_t o1) {
  for (int64_t oy = 0, r = 0; oy < f[F_HO]; oy += r) {
    r = il_band(f, oy);
    il_conv_band(f, arena, fpool, ipool, o0, o1, oy, r);
  }
}

// Channels [c0, c1) of an add (Y >= 0) or activation: out = act(x [+ y]), each operand with its own padding.
void il_elementwise(const int64_t* f, float* arena, int64_t c0, int64_t c1) {
  const int64_t h = f[F_H], wd = f[F_W], act = f[F_ACT];
  const int64_t xp = (f[F_HQ] - h) / 2, yp = f[F_Y_PAD], op = f[F_OUT_PAD];
  const float* x = arena + f[F_X];
  const float* y = f[F_Y] >= 0 ? arena + f[F_Y] : nullptr;
  float* out = arena + f[F_OUT];
  for (int64_t c = c0; c < c1; ++c) {
    float* dst = out + c * (h + 2 * op) * (wd + 2 * op) * kLanes;
    zero_border16(dst, h + 2 * op, wd + 2 * op, op);
    for (int64_t r = 0; r < h; ++r) {
      const float* a = x + (c * f[F_HQ] * f[F_WQ] + (r + xp) * f[F_WQ] + xp) * kLanes;
      const float* b = y ? y + (c * (h + 2 * yp) * (wd + 2 * yp) + (r + yp) * (wd + 2 * yp) + yp) * kLanes : nullptr;
      float* d = dst + ((r + op) * (wd + 2 * op) + op) * kLanes;
      for (int64_t j = 0; j < wd * kLanes; ++j) d[j] = act_apply(a[j] + (b ? b[j] : 0.f), act);
    }
  }
}

// Channels [c0, c1) of a global average pool: out[c] = the mean of x's plane c, per image.
void il_gap(const int64_t* f, float* arena, int64_t c0, int64_t c1) {
  const int64_t h = f[F_H], wd = f[F_W], xp = (f[F_HQ] - h) / 2, op = f[F_OUT_PAD];
  const float* x = arena + f[F_X];
  float* out = arena + f[F_OUT];
  const float scale = 1.f / static_cast<float>(h * wd);
  for (int64_t c = c0; c < c1; ++c) {
    float sum[kLanes] = {};
    for (int64_t r = 0; r < h; ++r) {
      const float* a = x + (c * f[F_HQ] * f[F_WQ] + (r + xp) * f[F_WQ] + xp) * kLanes;
      for (int64_t q = 0; q < wd; ++q)
        for (int64_t l = 0; l < kLanes; ++l) sum[l] += a[q * kLanes + l];
    }
    float* dst = out + c * (1 + 2 * op) * (1 + 2 * op) * kLanes;
    zero_border16(dst, 1 + 2 * op, 1 + 2 * op, op);
    for (int64_t l = 0; l < kLanes; ++l) dst[((1 + 2 * op) * op + op) * kLanes + l] = sum[l] * scale;
  }
}

// Channels [c0, c1) of images [first, first + valid) of the input batch (N, C, H, W) into a block's input
// buffer (stored padded by p); lanes past `valid` hold zeros.
void il_load_input(const float* in, int64_t first, int64_t valid, const int64_t* io, float* arena, int64_t c0,
                   int64_t c1) {
  const int64_t ch = io[1], h = io[2], wd = io[3], p = io[4], hp = h + 2 * p, wp = wd + 2 * p;
  const int64_t img = ch * h * wd;
  for (int64_t c = c0; c < c1; ++c) {
    float* plane = arena + io[0] + c * hp * wp * kLanes;
    zero_border16(plane, hp, wp, p);
    for (int64_t r = 0; r < h; ++r) {
      float* d = plane + ((r + p) * wp + p) * kLanes;
      const float* src = in + first * img + c * h * wd + r * wd;
      for (int64_t q = 0; q < wd; ++q) {
        for (int64_t l = 0; l < valid; ++l) d[q * kLanes + l] = src[l * img + q];
        for (int64_t l = valid; l < kLanes; ++l) d[q * kLanes + l] = 0.f;
      }
    }
  }
}

// The inverse for the program's output value (stored padded by p): channels [c0, c1) of images
// [first, first + valid) of the output batch (N, C, H, W).
void il_store_output(const float* arena, const int64_t* io, int64_t first, int64_t valid, float* outb, int64_t c0,
                     int64_t c1) {
  const int64_t ch = io[6], h = io[7], wd = io[8], p = io[9], hp = h + 2 * p, wp = wd + 2 * p;
  const int64_t img = ch * h * wd;
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = 0; r < h; ++r) {
      const float* s = arena + io[5] + (c * hp * wp + (r + p) * wp + p) * kLanes;
      for (int64_t l = 0; l < valid; ++l) {
        float* d = outb + (first + l) * img + c * h * wd + r * wd;
        for (int64_t q = 0; q < wd; ++q) d[q] = s[q * kLanes + l];
      }
    }
}

// Units [u0, u1) of instruction f (output channels of a conv, channels of the other ops) for one block.
void il_run_op(const int64_t* f, float* arena, const float* fpool, const int32_t* ipool, int64_t u0, int64_t u1) {
  switch (f[F_OP]) {
    case OP_CONV: il_conv(f, arena, fpool, ipool, u0, u1); break;
    case OP_GAP: il_gap(f, arena, u0, u1); break;
    default: il_elementwise(f, arena, u0, u1); break;
  }
}

inline int64_t il_units(const int64_t* f) { return f[F_OP] == OP_CONV ? f[F_CO] : f[F_C]; }

// Wavefronts: a run of convs in which each reads what the ones before it write is computed band by band in
// turns, each conv's band as soon as its producers have written the rows it reads. A conv's output is then read
// (and a residual block's input read again) while still in the cache, instead of after the whole layer has gone
// through it: a 32x32 layer of 64 channels is 4.7 MB per block of 16 images.
constexpr int64_t kMaxGroup = 8;

struct IlSpan {
  int64_t lo, hi;
  bool overlaps(const IlSpan& o) const { return lo < o.hi && o.lo < hi && lo < hi && o.lo < o.hi; }
  bool operator==(const IlSpan& o) const { return lo == o.lo && hi == o.hi; }
};
inline IlSpan il_x(const int64_t* f) { return {f[F_X], f[F_X] + f[F_C] * f[F_HQ] * f[F_WQ] * kLanes}; }
inline IlSpan il_plane_span(int64_t at, const int64_t* f, int64_t pad) {
  return {at, at + f[F_CO] * (f[F_HO] + 2 * pad) * (f[F_WO] + 2 * pad) * kLanes};
}
inline IlSpan il_out(const int64_t* f) { return il_plane_span(f[F_OUT], f, f[F_OUT_PAD]); }
inline IlSpan il_y(const int64_t* f) { return f[F_Y] >= 0 ? il_plane_span(f[F_Y], f, f[F_Y_PAD]) : IlSpan{0, 0}; }

struct IlGroup {
  int64_t first = 0, size = 1;
  int64_t px[kMaxGroup], py[kMaxGroup];   // the member writing a member's input / residual (-1: none)
};

// Splits the program into groups: runs of up to `limit` convs where a member's output overlaps nothing an
// earlier member reads or writes, and a member reads an earlier member's output only as that whole value.
std::vector<IlGroup> il_groups(const int64_t* program, int64_t count, int64_t limit) {
  std::vector<IlGroup> groups;
  for (int64_t k = 0; k < count;) {
    IlGroup g;
    g.first = k;
    g.px[0] = g.py[0] = -1;
    const int64_t* f0 = program + k * N_FIELDS;
    while (f0[F_OP] == OP_CONV && g.size < std::min(limit, kMaxGroup) && k + g.size < count) {
      const int64_t* f = program + (k + g.size) * N_FIELDS;
      if (f[F_OP] != OP_CONV) break;
      bool ok = true;
      int64_t px = -1, py = -1;
      for (int64_t m = 0; m < g.size && ok; ++m) {
        const int64_t* e = program + (k + m) * N_FIELDS;
        const IlSpan out = il_out(e);
        ok = !il_out(f).overlaps(out) && !il_out(f).overlaps(il_x(e)) && !il_out(f).overlaps(il_y(e));
        if (il_x(f).overlaps(out)) {   // its input: the whole value, as stored
          ok = ok && il_x(f) == out && f[F_H] == e[F_HO] && f[F_W] == e[F_WO] && f[F_HQ] == e[F_HO] + 2 * e[F_OUT_PAD] &&
               f[F_WQ] == e[F_WO] + 2 * e[F_OUT_PAD];
          px = m;
        }
        if (il_y(f).overlaps(out)) {   // its residual: the whole value, as stored
          ok = ok && il_y(f) == out && f[F_Y_PAD] == e[F_OUT_PAD] && f[F_HO] == e[F_HO] && f[F_WO] == e[F_WO];
          py = m;
        }
      }
      if (!ok) break;
      g.px[g.size] = px;
      g.py[g.size] = py;
      ++g.size;
    }
    groups.push_back(g);
    k += g.size;
  }
  return groups;
}

// Runs a group on one block: sweeps over its members, each computing its next band when its producers have
// written the rows that band reads (a member's producers come before it, so every sweep moves the first
// unfinished member and the group ends).
void il_run_group(const int64_t* program, const IlGroup& g, float* arena, const float* fpool, const int32_t* ipool,
                  double* times) {
  if (g.size == 1 && program[g.first * N_FIELDS + F_OP] != OP_CONV) {
    const int64_t* f = program + g.first * N_FIELDS;
    const double t0 = times ? omp_get_wtime() : 0.0;
    il_run_op(f, arena, fpool, ipool, 0, il_units(f));
    if (times) times[g.first] += omp_get_wtime() - t0;
    return;
  }
  int64_t done[kMaxGroup] = {};
  for (bool moved = true; moved;) {
    moved = false;
    for (int64_t m = 0; m < g.size; ++m) {
      const int64_t* f = program + (g.first + m) * N_FIELDS;
      const int64_t oy = done[m];
      if (oy >= f[F_HO]) continue;
      const int64_t r = il_band(f, oy);
      if (g.px[m] >= 0) {   // rows of its input up to the last one the band's taps reach
        const int64_t* p = program + (g.first + g.px[m]) * N_FIELDS;
        const int64_t reach = (oy + r - 1) * f[F_STRIDE] + (f[F_K] - 1) * f[F_DIL] - f[F_PAD] + 1;
        if (done[g.px[m]] < std::min(std::max<int64_t>(reach, 0), p[F_HO])) continue;
      }
      if (g.py[m] >= 0 && done[g.py[m]] < oy + r) continue;
      const double t0 = times ? omp_get_wtime() : 0.0;
      il_conv_band(f, arena, fpool, ipool, 0, f[F_CO], oy, r);
      if (times) times[g.first + m] += omp_get_wtime() - t0;
      done[m] = oy + r;
      moved = true;
    }
  }
}

// Handoffs of a block's rest to the other thread since the library loaded (tests check that the path ran).
std::atomic<int64_t> g_handoffs{0};

// A test hook: DASS_TEST_LAG_US delays thread 0 of the batched program before its first block, so that the
// other thread finishes first and the handoff runs deterministically in tests.
inline int64_t il_test_lag_us() {
  const char* text = std::getenv("DASS_TEST_LAG_US");
  return text ? std::max<int64_t>(0, std::atoll(text)) : 0;
}
}  // namespace

extern "C" {

// Runs `count` instructions over `arena` for a batch of `batch` images with `threads` threads.
// `times` (nullable) receives each instruction's wall time in seconds, for profiling.
int dass_run(const int64_t* program, int64_t count, float* arena, float* scratch, const float* fpool,
             const int32_t* ipool, int64_t batch, int threads, double* times) {
  for (int64_t k = 0; k < count; ++k) {
    const int64_t op = program[k * N_FIELDS + F_OP];
    if (op < OP_CONV || op > OP_ZERO) return static_cast<int>(k) + 1;
  }
  Barrier barrier;
  const int64_t per_op = 2 * std::max(threads, 1);
  std::vector<Counter> claimed(count * per_op);   // units of each thread's shares claimed so far, per instruction
  // which copies a later conv reads (the copy the last copying conv made; any other scratch user overwrites it,
  // but a shifted copy placed after it in the scratch)
  std::vector<uint8_t> copy_read_later(count, 0);
  for (int64_t k = count - 1, pending = 0; k >= 0; --k) {
    const int64_t* f = program + k * N_FIELDS;
    if (f[F_OP] != OP_CONV || f[F_SCRATCH] == SCRATCH_IN_PLACE) continue;
    if ((f[F_IM2COL] == LAYOUT_SHIFTED && f[F_AUX2] > 0) || rides(f)) continue;
    if (f[F_SCRATCH] == SCRATCH_EARLIER_COPY) {
      pending = 1;
    } else {
      copy_read_later[k] = static_cast<uint8_t>(pending);
      pending = 0;
    }
  }
  std::vector<std::atomic<int64_t>> block_flags((batch + DASS_IMGS - 1) / DASS_IMGS);
  for (auto& flag : block_flags) flag.store(0, std::memory_order_relaxed);
  Ctx ctx{&barrier, arena, scratch, fpool, ipool, batch, program, count, per_op, copy_read_later.data(),
          block_flags.data()};
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    barrier.resize(omp_get_num_threads());   // the team may be smaller than asked; implicit barrier follows
    // Denormal inputs and results flush to zero (as in most inference runtimes): a denormal operand
    // costs ~100x a normal multiply-add. The mode is per thread and OpenMP threads may be shared with
    // PyTorch, so it is restored on the way out.
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    double last = times ? omp_get_wtime() : 0.0;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t* f = program + k * N_FIELDS;
      Counter* const next = &claimed[k * per_op];
      if (rides(f)) continue;   // (computed by the conv before it; times[k] stays 0)
      switch (f[F_OP]) {
        case OP_CONV: run_conv(f, ctx, next); break;
        case OP_ACT:
        case OP_ADD:
        case OP_AFFINE: run_elementwise(f, ctx, next); break;
        case OP_POOL: run_pool(f, ctx, next); break;
        case OP_GAP: run_gap(f, ctx, next); break;
        case OP_COPY_CHANNELS: run_copy_channels(f, ctx, next); break;
        case OP_SHIFT: run_shift(f, ctx, next); break;
        default: run_zero(f, ctx, next); break;
      }
      barrier.wait(omp_get_thread_num());
      if (times && omp_get_thread_num() == 0) {
        const double now = omp_get_wtime();
        times[k] = now - last;
        last = now;
      }
    }
    _mm_setcsr(csr);
  }
  return 0;
}

// Runs the batch-interleaved program (see il_conv) on `batch` images of `input` (N, C, H, W) into `output`.
// `arenas` holds one arena of `arena_size` floats (64-byte aligned) per thread; `io` the input's arena offset,
// C, H, W and stored padding, then the output's. Blocks of 16 images go to the threads in turns, each running
// the whole program alone; the blocks left over (fewer than the threads) are shared op by op, with a barrier
// after each. `times` (nullable) receives each instruction's time in seconds on thread 0.
int dass_run_batched(const int64_t* program, int64_t count, float* arenas, int64_t arena_size, const float* fpool,
                     const int32_t* ipool, const int64_t* io, const float* input, float* output, int64_t batch,
                     int threads, double* times) {
  if (!DASS_V16) return -1;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t op = program[k * N_FIELDS + F_OP];
    if (op != OP_CONV && op != OP_ADD && op != OP_ACT && op != OP_GAP) return static_cast<int>(k) + 1;
  }
  if (times) std::fill(times, times + count, 0.0);
  const int64_t blocks = (batch + kLanes - 1) / kLanes;
  const std::vector<IlGroup> groups = il_groups(program, count, DASS_IL_GROUP);
  const int64_t lag_us = il_test_lag_us();
  Barrier barrier;
  // The two-thread handoff (see below): threads done with their blocks, and the rest of a block to share.
  std::atomic<int64_t> finished{0}, request{-1};
  float* request_arena = nullptr;
  int64_t request_first = 0, request_valid = 0;
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    barrier.resize(omp_get_num_threads());
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);   // (denormals flush to zero, as in dass_run)
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t alone = DASS_IL_ALONE ? blocks / nth * nth : 0;   // blocks each thread runs alone
    auto share = [&](int64_t units, int64_t t) { return units * t / nth; };
    // instructions [k0, count) of the block in `arena` and its output, every thread a share of each op's units
    auto run_shared = [&](float* arena, int64_t first, int64_t valid, int64_t k0) {
      double last = times && tid == 0 ? omp_get_wtime() : 0.0;
      for (int64_t k = k0; k < count; ++k) {
        const int64_t* f = program + k * N_FIELDS;
        const int64_t units = il_units(f);
        il_run_op(f, arena, fpool, ipool, share(units, tid), share(units, tid + 1));
        barrier.wait(tid);
        if (times && tid == 0) {
          const double now = omp_get_wtime();
          times[k] += now - last;
          last = now;
        }
      }
      il_store_output(arena, io, first, valid, output, share(io[6], tid), share(io[6], tid + 1));
      barrier.wait(tid);
    };
    // Two threads: the machine's cores do not always run at one pace (one ran its two blocks in 41-47 ms where
    // the other took 33-38, call after call), and each runs its blocks alone. So a thread that finishes first
    // waits for a request; the other, between two groups of its last block, sees that and asks it to share the
    // rest of that block op by op (sharing runs ~0.8x as efficiently as a block alone, so only the rest).
    const bool handoff = DASS_IL_HANDOFF && nth == 2;
    bool requested = false;
    if (lag_us > 0 && tid == 0) std::this_thread::sleep_for(std::chrono::microseconds(lag_us));
    float* mine = arenas + tid * arena_size;
    for (int64_t b = tid; b < alone; b += nth) {
      const int64_t first = b * kLanes, valid = std::min(kLanes, batch - first);
      const bool last_block = b + nth >= alone;
      il_load_input(input, first, valid, io, mine, 0, io[1]);
      size_t gi = 0;
      for (; gi < groups.size(); ++gi) {
        if (handoff && last_block && gi > 0 && finished.load(std::memory_order_acquire) > 0) break;
        il_run_group(program, groups[gi], mine, fpool, ipool, tid == 0 ? times : nullptr);
      }
      if (gi < groups.size()) {
        requested = true;
        request_arena = mine;
        request_first = first;
        request_valid = valid;
        request.store(groups[gi].first, std::memory_order_release);
        g_handoffs.fetch_add(1, std::memory_order_relaxed);
        run_shared(mine, first, valid, groups[gi].first);
      } else {
        il_store_output(mine, io, first, valid, output, 0, io[6]);
      }
    }
    if (handoff && !requested) {
      finished.fetch_add(1, std::memory_order_acq_rel);
      spin_until([&] {
        return request.load(std::memory_order_acquire) >= 0 || finished.load(std::memory_order_acquire) == nth;
      });
      const int64_t k0 = request.load(std::memory_order_acquire);
      if (k0 >= 0) run_shared(request_arena, request_first, request_valid, k0);
    }
    barrier.wait(tid);
    for (int64_t b = alone; b < blocks; ++b) {   // together: each thread a share of each op's units
      const int64_t first = b * kLanes, valid = std::min(kLanes, batch - first);
      float* shared = arenas;   // (thread 0's arena; the others wait at the barrier above before using it)
      il_load_input(input, first, valid, io, shared, share(io[1], tid), share(io[1], tid + 1));
      barrier.wait(tid);
      run_shared(shared, first, valid, 0);
    }
    _mm_setcsr(csr);
  }
  return 0;
}

// The codes this library was built with (see DASS_OPS and the lists after it).
const char* dass_signature() { return kSignature; }

int dass_max_threads() { return omp_get_max_threads(); }

// 1 where dass_run_batched has its kernels (AVX-512: 16 images per vector); elsewhere it returns -1.
int dass_batched_vectorized() { return DASS_V16; }

// Handoffs since the library loaded (see dass_run_batched).
int64_t dass_batched_handoffs() { return g_handoffs.load(); }

}  // extern "C"

// A module object so that setuptools can build and import this file as an extension; the functions are
// reached through ctypes (dass.deploy.native).
static PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_sparse_runtime", "dass packed sparse runtime kernels", -1,
                              nullptr};

PyMODINIT_FUNC PyInit__sparse_runtime(void) { return PyModule_Create(&kModule); }
