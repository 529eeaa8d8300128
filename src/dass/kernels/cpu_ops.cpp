// CPU training kernels for the ops that dominate a DARTS supernet step: depthwise and pointwise
// convolution, and 3x3-style max and average pooling, forward and backward, float32 and float64.
//
// Why: PyTorch's CPU paths for these shapes (few channels, 8-32 px planes, batch 64) are far from the
// hardware: a 5x5 dilated depthwise convolution took 23 ms forward+backward on 64x8x32x32 where the data
// is 2 MB, max pooling 7.7 ms forward. Each kernel here works one (image, channel) plane at a time through a
// padded copy that lives in L1, with the inner loops over contiguous output pixels so that they vectorize.
//
// Determinism: reductions over the batch (weight gradients) are written per image and summed in image order
// afterwards, so results do not depend on the thread count. Threads come from the OpenMP runtime that
// PyTorch has already loaded (same libgomp), so the two never compete for the cores.
//
// Layout: contiguous NCHW. Weights: depthwise (C, 1, k, k), pointwise (Co, Ci).

#include <Python.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

struct Geom {
  int64_t h, w, k, s, p, d, ho, wo;
  // the padded plane, split into s*s phase planes of hq x wq: phase (a, b) holds padded pixels
  // (q*s + a, r*s + b), so that a strided window reads contiguous runs (for s = 1: the padded plane)
  int64_t hq() const { return (h + 2 * p + s - 1) / s; }
  int64_t wq() const { return (w + 2 * p + s - 1) / s; }
  int64_t phase_size() const { return s * s * hq() * wq(); }
};

// 256-bit vectors of T through GCC's vector extension: float x 8 or double x 4.
template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(32))); static constexpr int L = 8; };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(32))); static constexpr int L = 4; };

template <typename T>
inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, typename Vec<T>::type v) { std::memcpy(p, &v, sizeof(v)); }
template <typename T>
inline T hsum(typename Vec<T>::type v) {
  T sum = 0;
  for (int j = 0; j < Vec<T>::L; ++j) sum += v[j];
  return sum;
}

// Phase-split, padded copy of one plane (fill: the padding value).
template <typename T>
void build_phases(const T* __restrict in, const Geom& g, T fill, T* __restrict out, bool relu = false) {
  const int64_t hq = g.hq(), wq = g.wq(), s = g.s;
  if (s == 1) {
    std::fill(out, out + g.p * wq, fill);
    for (int64_t y = 0; y < g.h; ++y) {
      T* row = out + (y + g.p) * wq;
      for (int64_t x = 0; x < g.p; ++x) row[x] = fill;
      const T* src = in + y * g.w;
      if (relu) {
        for (int64_t x = 0; x < g.w; ++x) row[g.p + x] = src[x] > T(0) ? src[x] : T(0);
      } else {
        for (int64_t x = 0; x < g.w; ++x) row[g.p + x] = src[x];
      }
      for (int64_t x = g.p + g.w; x < wq; ++x) row[x] = fill;
    }
    std::fill(out + (g.h + g.p) * wq, out + hq * wq, fill);
    return;
  }
  for (int64_t a = 0; a < s; ++a)
    for (int64_t b = 0; b < s; ++b) {
      T* plane = out + (a * s + b) * hq * wq;
      for (int64_t q = 0; q < hq; ++q) {
        const int64_t y = q * s + a - g.p;
        T* row = plane + q * wq;
        if (y < 0 || y >= g.h) {
          std::fill(row, row + wq, fill);
          continue;
        }
        for (int64_t r = 0; r < wq; ++r) {
          const int64_t x = r * s + b - g.p;
          const T v = (x < 0 || x >= g.w) ? fill : in[y * g.w + x];
          row[r] = relu && v < T(0) ? T(0) : v;
        }
      }
    }
}

// The inverse for gradients: out[y, x] = phases at padded pixel (y + p, x + p).
template <typename T>
void unphase(const T* __restrict phases, const Geom& g, T* __restrict out) {
  const int64_t hq = g.hq(), wq = g.wq(), s = g.s;
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t py = y + g.p;
    const T* rowbase = phases + ((py % s) * s) * hq * wq + (py / s) * wq;
    T* dst = out + y * g.w;
    if (s == 1) {
      for (int64_t x = 0; x < g.w; ++x) dst[x] = rowbase[x + g.p];
    } else {
      for (int64_t x = 0; x < g.w; ++x) {
        const int64_t px = x + g.p;
        dst[x] = rowbase[(px % s) * hq * wq + px / s];
      }
    }
  }
}

// Offset of window tap (ky, kx) in the phase planes, relative to output pixel (0, 0).
inline void tap_offsets(const Geom& g, int64_t* off) {
  const int64_t hq = g.hq(), wq = g.wq();
  for (int64_t ky = 0; ky < g.k; ++ky)
    for (int64_t kx = 0; kx < g.k; ++kx) {
      const int64_t dy = ky * g.d, dx = kx * g.d;
      off[ky * g.k + kx] = ((dy % g.s) * g.s + dx % g.s) * hq * wq + (dy / g.s) * wq + dx / g.s;
    }
}

// out[x] = sum_t w[t] * src[off[t] + x] for x < n: the taps accumulate in registers, 4 vectors at a time.
template <typename T>
void correlate_row(const T* __restrict src, const int64_t* __restrict off, const T* __restrict w, int64_t taps,
                   T* __restrict out, int64_t n) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  int64_t x = 0;
  for (; x + 4 * L <= n; x += 4 * L) {
    V a0{}, a1{}, a2{}, a3{};
    for (int64_t t = 0; t < taps; ++t) {
      const V wv = V{} + w[t];
      const T* p = src + off[t] + x;
      a0 += wv * vload<T>(p);
      a1 += wv * vload<T>(p + L);
      a2 += wv * vload<T>(p + 2 * L);
      a3 += wv * vload<T>(p + 3 * L);
    }
    vstore<T>(out + x, a0);
    vstore<T>(out + x + L, a1);
    vstore<T>(out + x + 2 * L, a2);
    vstore<T>(out + x + 3 * L, a3);
  }
  for (; x + L <= n; x += L) {
    V a{};
    for (int64_t t = 0; t < taps; ++t) a += (V{} + w[t]) * vload<T>(src + off[t] + x);
    vstore<T>(out + x, a);
  }
  for (; x < n; ++x) {
    T a = 0;
    for (int64_t t = 0; t < taps; ++t) a += w[t] * src[off[t] + x];
    out[x] = a;
  }
}

// Per tap t: sum over the output plane of gout * src[off[t] + ...] (the weight gradient of one plane).
template <typename T>
void tap_dots(const T* __restrict src, int64_t src_row, const int64_t* off, int64_t taps, const T* __restrict gout,
              int64_t ho, int64_t wo, T* __restrict sums) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  constexpr int64_t G = 8;   // taps per pass: their accumulators stay in registers
  for (int64_t t0 = 0; t0 < taps; t0 += G) {
    const int64_t nt = std::min(G, taps - t0);
    V acc[G] = {};
    T tail[G] = {};
    for (int64_t oy = 0; oy < ho; ++oy) {
      const T* gr = gout + oy * wo;
      const T* row = src + oy * src_row;
      int64_t x = 0;
      for (; x + L <= wo; x += L) {
        const V gv = vload<T>(gr + x);
        for (int64_t t = 0; t < nt; ++t) acc[t] += gv * vload<T>(row + off[t0 + t] + x);
      }
      for (; x < wo; ++x)
        for (int64_t t = 0; t < nt; ++t) tail[t] += gr[x] * row[off[t0 + t] + x];
    }
    for (int64_t t = 0; t < nt; ++t) sums[t0 + t] = hsum<T>(acc[t]) + tail[t];
  }
}

// g[j] = 0 where the ReLU's input x[j] was not positive (the ReLU's backward)
template <typename T>
inline void relu_mask(T* __restrict g, const T* __restrict x, int64_t n) {
  for (int64_t j = 0; j < n; ++j) g[j] = x[j] > T(0) ? g[j] : T(0);
}

// ---- depthwise convolution ----------------------------------------------------------------------------

// The input gradient of a window op with per-tap weights w (depthwise: the kernel; average pooling: ones)
// for one plane. Stride 1: a correlation of the gradient, padded by (k-1)*d - p, with the flipped kernel
// (accumulated in registers). Strided: each gradient row scattered into the phase planes, then unphased.
template <typename T>
void window_input_grad(const T* __restrict go, const T* w, const Geom& g, const int64_t* off, T* scratch,
                       T* __restrict gx) {
  const int64_t kk = g.k * g.k;
  const int64_t q = (g.k - 1) * g.d - g.p;
  if (g.s == 1 && q >= 0) {
    // gout padded by q on every side: (ho + 2q) x (wo + 2q); gx[y, x] = sum_t wflip[t] * gpad[y + ky*d, x + kx*d]
    Geom pg{g.ho, g.wo, g.k, 1, q, g.d, g.h, g.w};
    build_phases(go, pg, T(0), scratch);
    T wflip[64];
    int64_t offp[64];
    for (int64_t t = 0; t < kk; ++t) wflip[t] = w[kk - 1 - t];
    tap_offsets(pg, offp);
    for (int64_t y = 0; y < g.h; ++y) correlate_row(scratch + y * pg.wq(), offp, wflip, kk, gx + y * g.w, g.w);
    return;
  }
  std::fill(scratch, scratch + g.phase_size(), T(0));
  for (int64_t oy = 0; oy < g.ho; ++oy) {
    const T* gr = go + oy * g.wo;
    for (int64_t t = 0; t < kk; ++t) {
      T* __restrict dst = scratch + off[t] + oy * g.wq();
      const T wt = w[t];
      for (int64_t x = 0; x < g.wo; ++x) dst[x] += wt * gr[x];
    }
  }
  unphase(scratch, g, gx);
}

// Scratch floats per thread for window_input_grad.
inline int64_t input_grad_scratch(const Geom& g) {
  const int64_t q = std::max<int64_t>((g.k - 1) * g.d - g.p, 0);
  return std::max(g.phase_size(), (g.ho + 2 * q) * (g.wo + 2 * q));
}

// ---- depthwise convolutions: one, or a group reading the same input ----------------------------------------
// A single depthwise conv is a group of one. The first (ReLU, depthwise) stage of a mixed op's separable and dilated convolutions all read the same input:
// the padded input is built once per plane for all of them, their input gradients sum in one pass (one
// write, no separate additions), and the weight gradients share one padded copy. specs: m x {k, p, d};
// common stride s and output size. Pointer arrays hold each op's weight / output / gradient.

// Offsets of every op's taps in phase planes padded by P = the largest padding.
inline std::vector<int64_t> group_offsets(const int64_t* specs, int64_t m, const Geom& g, std::vector<int64_t>& start) {
  std::vector<int64_t> off;
  const int64_t hq = g.hq(), wq = g.wq();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t k = specs[3 * i], p = specs[3 * i + 1], d = specs[3 * i + 2];
    start.push_back(static_cast<int64_t>(off.size()));
    for (int64_t ky = 0; ky < k; ++ky)
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t dy = ky * d + g.p - p, dx = kx * d + g.p - p;
        off.push_back(((dy % g.s) * g.s + dx % g.s) * hq * wq + (dy / g.s) * wq + dx / g.s);
      }
  }
  start.push_back(static_cast<int64_t>(off.size()));
  return off;
}

template <typename T>
void dwg_forward(const T* x, const int64_t* ws, const int64_t* outs, const int64_t* specs, int64_t m, int64_t n,
                 int64_t c, Geom g, bool relu, int threads) {
  std::vector<int64_t> start;
  const std::vector<int64_t> off = group_offsets(specs, m, g, start);
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> ph(static_cast<size_t>(g.phase_size()));
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < n * c; ++nc) {
      build_phases(x + nc * g.h * g.w, g, T(0), ph.data(), relu);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t kk = start[i + 1] - start[i];
        const T* wc = reinterpret_cast<const T*>(ws[i]) + (nc % c) * kk;
        T* out = reinterpret_cast<T*>(outs[i]) + nc * g.ho * g.wo;
        for (int64_t oy = 0; oy < g.ho; ++oy)
          correlate_row(ph.data() + oy * g.wq(), off.data() + start[i], wc, kk, out + oy * g.wo, g.wo);
      }
    }
  }
}

template <typename T>
void dwg_backward(const T* x, const int64_t* ws, const int64_t* gouts, const int64_t* specs, int64_t m, T* gx,
                  const int64_t* gw_parts, int64_t n, int64_t c, Geom g, bool relu, int threads) {
  std::vector<int64_t> start;
  const std::vector<int64_t> off = group_offsets(specs, m, g, start);
  // stride 1: input gradient = correlation of each op's output gradient, padded by q = (k-1)d - p (all padded
  // by the largest, Q, side by side in one buffer), with its flipped kernel, over all ops' taps at once
  int64_t Q = 0;
  bool correlate = g.s == 1;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t q = (specs[3 * i] - 1) * specs[3 * i + 2] - specs[3 * i + 1];
    correlate = correlate && q >= 0;
    Q = std::max(Q, q);
  }
  const Geom pg{g.ho, g.wo, 1, 1, Q, 1, g.h, g.w};
  const int64_t buffer = pg.hq() * pg.wq();
  std::vector<int64_t> flip_off;
  for (int64_t i = 0; i < m && correlate; ++i) {
    const int64_t k = specs[3 * i], d = specs[3 * i + 2];
    const int64_t shift = Q - ((k - 1) * d - specs[3 * i + 1]);
    for (int64_t ky = 0; ky < k; ++ky)
      for (int64_t kx = 0; kx < k; ++kx)
        flip_off.push_back(i * buffer + (ky * d + shift) * pg.wq() + kx * d + shift);
  }
  const int64_t scratch_size = std::max(g.phase_size(), correlate ? m * buffer : int64_t(0));
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> scratch(static_cast<size_t>(scratch_size));
    std::vector<T> wflip(static_cast<size_t>(start[m]));
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < n * c; ++nc) {
      const int64_t ch = nc % c;
      if (gx) {
        T* gi = gx + nc * g.h * g.w;
        if (correlate) {
          for (int64_t i = 0; i < m; ++i) {
            build_phases(reinterpret_cast<const T*>(gouts[i]) + nc * g.ho * g.wo, pg, T(0),
                         scratch.data() + i * buffer);
            const int64_t kk = start[i + 1] - start[i];
            const T* wc = reinterpret_cast<const T*>(ws[i]) + ch * kk;
            for (int64_t t = 0; t < kk; ++t) wflip[start[i] + t] = wc[kk - 1 - t];
          }
          for (int64_t y = 0; y < g.h; ++y)
            correlate_row(scratch.data() + y * pg.wq(), flip_off.data(), wflip.data(), start[m], gi + y * g.w, g.w);
        } else {
          std::fill(scratch.begin(), scratch.begin() + g.phase_size(), T(0));
          for (int64_t i = 0; i < m; ++i) {
            const int64_t kk = start[i + 1] - start[i];
            const T* wc = reinterpret_cast<const T*>(ws[i]) + ch * kk;
            const T* go = reinterpret_cast<const T*>(gouts[i]) + nc * g.ho * g.wo;
            for (int64_t oy = 0; oy < g.ho; ++oy)
              for (int64_t t = 0; t < kk; ++t) {
                T* __restrict dst = scratch.data() + off[start[i] + t] + oy * g.wq();
                const T* __restrict gr = go + oy * g.wo;
                const T wt = wc[t];
                for (int64_t xx = 0; xx < g.wo; ++xx) dst[xx] += wt * gr[xx];
              }
          }
          unphase(scratch.data(), g, gi);
        }
        if (relu) relu_mask(gi, x + nc * g.h * g.w, g.h * g.w);
      }
      if (gw_parts) {
        build_phases(x + nc * g.h * g.w, g, T(0), scratch.data(), relu);
        for (int64_t i = 0; i < m; ++i) {
          if (!gw_parts[i]) continue;
          const int64_t kk = start[i + 1] - start[i];
          tap_dots(scratch.data(), g.wq(), off.data() + start[i], kk,
                   reinterpret_cast<const T*>(gouts[i]) + nc * g.ho * g.wo, g.ho, g.wo,
                   reinterpret_cast<T*>(gw_parts[i]) + nc * kk);
        }
      }
    }
  }
}

// out[j] = sum over images i of part[i * stride + j], in image order.
template <typename T>
void sum_images(const T* part, T* out, int64_t n, int64_t stride, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < stride; ++j) {
    T sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += part[i * stride + j];
    out[j] = sum;
  }
}

// ---- pointwise (1x1, stride 1) convolution ------------------------------------------------------------

constexpr int64_t kPixelBlock = 64;

// out[i, o, :] = sum_c w[o, c] * x[i, c, :]. With w transposed it is also the input gradient.
// OT output channels x 4 vectors of pixels: out[o, :] = sum_c w[o, c] * src[c, :], zeroed where mask <= 0.
template <typename T, int OT>
inline void pw_tile(const T* __restrict src, int64_t row, const T* __restrict w, int64_t ci, T* __restrict out,
                    int64_t out_row, const T* __restrict mask) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  V acc[OT][4] = {};
  for (int64_t c = 0; c < ci; ++c) {
    const T* xr = src + c * row;
    const V x0 = vload<T>(xr), x1 = vload<T>(xr + L), x2 = vload<T>(xr + 2 * L), x3 = vload<T>(xr + 3 * L);
    for (int o = 0; o < OT; ++o) {
      const V wv = V{} + w[o * ci + c];
      acc[o][0] += wv * x0;
      acc[o][1] += wv * x1;
      acc[o][2] += wv * x2;
      acc[o][3] += wv * x3;
    }
  }
  const V zero{};
  for (int o = 0; o < OT; ++o)
    for (int v = 0; v < 4; ++v) {
      V r = acc[o][v];
      if (mask) r = vload<T>(mask + o * out_row + v * L) > zero ? r : zero;
      vstore<T>(out + o * out_row + v * L, r);
    }
}

// relu: x passes a ReLU first. mask (nullable): the output is zeroed where mask <= 0 (the input gradient of a
// convolution whose input passed a ReLU: mask is that input).
template <typename T>
void pw_forward(const T* x, const T* w, T* out, int64_t n, int64_t ci, int64_t co, int64_t pixels, bool relu,
                const T* mask, int threads) {
  constexpr int L = Vec<T>::L;
  const int64_t blocks = (pixels + kPixelBlock - 1) / kPixelBlock;
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t p0 = b * kPixelBlock, len = std::min(kPixelBlock, pixels - p0);
      const T* xb = x + i * ci * pixels + p0;
      T* ob = out + i * co * pixels + p0;
      T block[kPixelBlock * 64];   // the ReLU'd input block when ci <= 64
      const bool stage = relu && ci <= 64;
      if (stage) {
        for (int64_t c = 0; c < ci; ++c)
          for (int64_t j = 0; j < len; ++j) {
            const T v = xb[c * pixels + j];
            block[c * kPixelBlock + j] = v > T(0) ? v : T(0);
          }
      }
      const T* src = stage ? block : xb;
      const int64_t row = stage ? kPixelBlock : pixels;
      const T* mrow = mask ? mask + i * co * pixels + p0 : nullptr;
      int64_t x0 = 0;
      if (!(relu && !stage)) {   // register tiles: 3 output channels x 4 vectors of pixels share each input load
        for (; x0 + 4 * L <= len; x0 += 4 * L) {
          int64_t o = 0;
          for (; o + 3 <= co; o += 3) pw_tile<T, 3>(src + x0, row, w + o * ci, ci, ob + o * pixels + x0, pixels,
                                                   mrow ? mrow + o * pixels + x0 : nullptr);
          for (; o < co; ++o) pw_tile<T, 1>(src + x0, row, w + o * ci, ci, ob + o * pixels + x0, pixels,
                                            mrow ? mrow + o * pixels + x0 : nullptr);
        }
      }
      if (x0 < len) {   // the remaining pixels of the block, one output channel at a time
        for (int64_t o = 0; o < co; ++o) {
          T acc[kPixelBlock] = {};
          const T* wo = w + o * ci;
          for (int64_t c = 0; c < ci; ++c) {
            const T v = wo[c];
            const T* __restrict xr = (relu && !stage ? xb : src) + c * (relu && !stage ? pixels : row);
            for (int64_t j = x0; j < len; ++j) acc[j] += v * (relu && !stage && xr[j] < T(0) ? T(0) : xr[j]);
          }
          T* orow = ob + o * pixels;
          for (int64_t j = x0; j < len; ++j) orow[j] = mrow && !(mrow[o * pixels + j] > T(0)) ? T(0) : acc[j];
        }
      }
    }
}

// part[i, o, c] = sum_p gout[i, o, p] * relu?(x[i, c, p]): tiles of 2 output x 4 input channels share
// their row loads (6 loads per 8 multiply-adds); remainders one pair at a time.
template <typename T>
inline typename Vec<T>::type load_x(const T* p, bool relu) {
  typedef typename Vec<T>::type V;
  const V v = vload<T>(p);
  const V zero{};
  return relu ? (v > zero ? v : zero) : v;
}

template <typename T>
void pw_weight_grad(const T* gout, const T* x, T* part, int64_t n, int64_t ci, int64_t co, int64_t pixels, bool relu,
                    int threads) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  constexpr int64_t OB = 2, CB = 4;
  const int64_t vec_end = pixels - pixels % L;
  auto tail = [&](const T* gr, const T* xr) {
    T sum = 0;
    for (int64_t p = vec_end; p < pixels; ++p) sum += gr[p] * (relu && xr[p] < T(0) ? T(0) : xr[p]);
    return sum;
  };
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* gi = gout + i * co * pixels;
    const T* xi = x + i * ci * pixels;
    T* pi = part + i * co * ci;
    int64_t o0 = 0;
    for (; o0 + OB <= co; o0 += OB) {
      int64_t c0 = 0;
      for (; c0 + CB <= ci; c0 += CB) {
        V acc[OB][CB] = {};
        for (int64_t p = 0; p < vec_end; p += L) {
          V xv[CB];
          for (int64_t c = 0; c < CB; ++c) xv[c] = load_x<T>(xi + (c0 + c) * pixels + p, relu);
          for (int64_t o = 0; o < OB; ++o) {
            const V gv = vload<T>(gi + (o0 + o) * pixels + p);
            for (int64_t c = 0; c < CB; ++c) acc[o][c] += gv * xv[c];
          }
        }
        for (int64_t o = 0; o < OB; ++o)
          for (int64_t c = 0; c < CB; ++c)
            pi[(o0 + o) * ci + c0 + c] = hsum<T>(acc[o][c]) + tail(gi + (o0 + o) * pixels, xi + (c0 + c) * pixels);
      }
      for (; c0 < ci; ++c0)
        for (int64_t o = o0; o < o0 + OB; ++o) {
          V acc{};
          for (int64_t p = 0; p < vec_end; p += L) acc += vload<T>(gi + o * pixels + p) * load_x<T>(xi + c0 * pixels + p, relu);
          pi[o * ci + c0] = hsum<T>(acc) + tail(gi + o * pixels, xi + c0 * pixels);
        }
    }
    for (; o0 < co; ++o0)
      for (int64_t c = 0; c < ci; ++c) {
        V acc{};
        for (int64_t p = 0; p < vec_end; p += L) acc += vload<T>(gi + o0 * pixels + p) * load_x<T>(xi + c * pixels + p, relu);
        pi[o0 * ci + c] = hsum<T>(acc) + tail(gi + o0 * pixels, xi + c * pixels);
      }
  }
}

// ---- pooling --------------------------------------------------------------------------------------------

// Max pooling with PyTorch's choice among equal values (the first in window order; NaN wins) and the
// winner's index within the input plane for the backward pass. Vectors of output pixels keep their running
// maximum and index in registers over the window's taps; strided windows read phase planes (padding: -inf,
// which never wins).
template <typename T> struct IndexVec;
template <> struct IndexVec<float> { typedef int32_t type __attribute__((vector_size(32))); };
template <> struct IndexVec<double> { typedef int64_t type __attribute__((vector_size(32))); };

template <typename T>
void max_pool_forward(const T* x, T* out, int32_t* idx, int64_t planes, Geom g, int threads) {
  typedef typename Vec<T>::type V;
  typedef typename IndexVec<T>::type VI;
  typedef typename std::remove_reference<decltype(std::declval<VI>()[0])>::type I;
  constexpr int L = Vec<T>::L;
  const T lowest = -std::numeric_limits<T>::infinity();
  const int64_t kk = g.k * g.k;
  std::vector<int64_t> off(static_cast<size_t>(kk));
  tap_offsets(g, off.data());
  std::vector<int32_t> first(static_cast<size_t>(g.ho * g.wo));   // PyTorch's start index: the first pixel inside
  for (int64_t oy = 0; oy < g.ho; ++oy)
    for (int64_t ox = 0; ox < g.wo; ++ox)
      first[oy * g.wo + ox] = static_cast<int32_t>(std::max<int64_t>(oy * g.s - g.p, 0) * g.w +
                                                   std::max<int64_t>(ox * g.s - g.p, 0));
  VI lane_step{};
  for (int j = 0; j < L; ++j) lane_step[j] = static_cast<I>(j * g.s);
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> ph(static_cast<size_t>(g.phase_size()));
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
      build_phases(x + pl * g.h * g.w, g, lowest, ph.data());
      for (int64_t oy = 0; oy < g.ho; ++oy) {
        T* m = out + pl * g.ho * g.wo + oy * g.wo;
        int32_t* at = idx + pl * g.ho * g.wo + oy * g.wo;
        const T* rowbase = ph.data() + oy * g.wq();
        int64_t ox = 0;
        for (; ox + L <= g.wo; ox += L) {
          V mv = V{} + lowest;
          VI iv;
          for (int j = 0; j < L; ++j) iv[j] = first[oy * g.wo + ox + j];
          for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
              const V v = vload<T>(rowbase + off[ky * g.k + kx] + ox);
              const VI base = VI{} + static_cast<I>((oy * g.s + ky * g.d - g.p) * g.w + kx * g.d - g.p + ox * g.s);
              const VI take = (v > mv) | (v != v);
              mv = take ? v : mv;
              iv = take ? base + lane_step : iv;
            }
          vstore<T>(m + ox, mv);
          for (int j = 0; j < L; ++j) at[ox + j] = static_cast<int32_t>(iv[j]);
        }
        for (; ox < g.wo; ++ox) {
          T mv = lowest;
          int64_t iv = first[oy * g.wo + ox];
          for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
              const T v = rowbase[off[ky * g.k + kx] + ox];
              if (v > mv || v != v) {
                mv = v;
                iv = (oy * g.s + ky * g.d - g.p) * g.w + kx * g.d - g.p + ox * g.s;
              }
            }
          m[ox] = mv;
          at[ox] = static_cast<int32_t>(iv);
        }
      }
    }
  }
}

template <typename T>
void max_pool_backward(const T* gout, const int32_t* idx, T* gx, int64_t planes, int64_t in_plane,
                       int64_t out_plane, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* gi = gx + pl * in_plane;
    std::fill(gi, gi + in_plane, T(0));
    const T* go = gout + pl * out_plane;
    const int32_t* id = idx + pl * out_plane;
    for (int64_t j = 0; j < out_plane; ++j) gi[id[j]] += go[j];
  }
}

// Divisor of each output pixel: the window's size counting padding, or only the pixels inside the plane.
inline int64_t span(int64_t o, int64_t s, int64_t p, int64_t k, int64_t n) {
  return std::min(o * s - p + k, n) - std::max(o * s - p, int64_t(0));
}

// The divisor of every output pixel (computed once per call, not per plane and pixel).
template <typename T>
std::vector<T> divisors(const Geom& g, bool count_pad) {
  std::vector<T> div(static_cast<size_t>(g.ho * g.wo));
  for (int64_t oy = 0; oy < g.ho; ++oy)
    for (int64_t ox = 0; ox < g.wo; ++ox)
      div[oy * g.wo + ox] =
          static_cast<T>(count_pad ? g.k * g.k : span(oy, g.s, g.p, g.k, g.h) * span(ox, g.s, g.p, g.k, g.w));
  return div;
}

// What average pooling needs per call: tap offsets, unit weights (pooling is a correlation with ones) and
// the divisor of every output pixel.
template <typename T>
struct PoolTables {
  std::vector<int64_t> off;
  std::vector<T> ones, div;
  PoolTables(const Geom& g, bool count_pad)
      : off(static_cast<size_t>(g.k * g.k)), ones(static_cast<size_t>(g.k * g.k), T(1)), div(divisors<T>(g, count_pad)) {
    tap_offsets(g, off.data());
  }
};

template <typename T>
void avg_pool_forward(const T* x, T* out, int64_t planes, Geom g, bool count_pad, int threads) {
  const int64_t kk = g.k * g.k;
  const PoolTables<T> tab(g, count_pad);
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> ph(static_cast<size_t>(g.phase_size()));
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
      build_phases(x + pl * g.h * g.w, g, T(0), ph.data());
      for (int64_t oy = 0; oy < g.ho; ++oy) {
        T* __restrict row = out + pl * g.ho * g.wo + oy * g.wo;
        const T* __restrict d = tab.div.data() + oy * g.wo;
        correlate_row(ph.data() + oy * g.wq(), tab.off.data(), tab.ones.data(), kk, row, g.wo);
        for (int64_t ox = 0; ox < g.wo; ++ox) row[ox] /= d[ox];
      }
    }
  }
}

template <typename T>
void avg_pool_backward(const T* gout, T* gx, int64_t planes, Geom g, bool count_pad, int threads) {
  const PoolTables<T> tab(g, count_pad);
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> share(static_cast<size_t>(g.ho * g.wo));
    std::vector<T> scratch(static_cast<size_t>(input_grad_scratch(g)));
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
      const T* __restrict go = gout + pl * g.ho * g.wo;
      const T* __restrict d = tab.div.data();
      T* __restrict sh = share.data();
      for (int64_t j = 0; j < g.ho * g.wo; ++j) sh[j] = go[j] / d[j];
      window_input_grad(share.data(), tab.ones.data(), g, tab.off.data(), scratch.data(), gx + pl * g.h * g.w);
    }
  }
}

// ---- batch normalization (training mode: batch statistics) ------------------------------------------------

// sum over images i and pixels of f(x[i, c, :]) for one channel, in lanes then in order (thread-count free)
template <typename T, typename F>
inline T channel_sum(const T* x, int64_t n, int64_t c, int64_t ch, int64_t hw, F f) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  T total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + (i * c + ch) * hw;
    V acc{};
    int64_t j = 0;
    for (; j + L <= hw; j += L) acc += f(vload<T>(row + j), j);
    T sum = hsum<T>(acc);
    for (; j < hw; ++j) {
      V one{};
      one[0] = row[j];
      sum += f(one, j)[0];
    }
    total += sum;
  }
  return total;
}

// y = (x - mean) * invstd * w + b per channel (w, b nullable); mean, invstd and the biased var come out
template <typename T>
void bn_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* invstd, T* var, int64_t n, int64_t c,
                int64_t hw, double eps, int threads) {
  typedef typename Vec<T>::type V;
  const T count = static_cast<T>(n * hw);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    // two passes for the statistics (a shifted one-pass sum loses digits when |mean| >> std)
    const T m = channel_sum(x, n, c, ch, hw, [](V v, int64_t) { return v; }) / count;
    const T v = channel_sum(x, n, c, ch, hw, [m](V u, int64_t) { const V d = u - m; return d * d; }) / count;
    const T is = T(1) / std::sqrt(v + static_cast<T>(eps));
    mean[ch] = m;
    invstd[ch] = is;
    var[ch] = v;
    const T scale = is * (w ? w[ch] : T(1)), shift = (b ? b[ch] : T(0)) - m * scale;
    for (int64_t i = 0; i < n; ++i) {
      const T* xr = x + (i * c + ch) * hw;
      T* yr = y + (i * c + ch) * hw;
      for (int64_t j = 0; j < hw; ++j) yr[j] = xr[j] * scale + shift;
    }
  }
}

// gx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)); gw = sum(g * xhat); gb = sum(g) (all nullable)
template <typename T>
void bn_backward(const T* g, const T* x, const T* mean, const T* invstd, const T* w, T* gx, T* gw, T* gb, int64_t n,
                 int64_t c, int64_t hw, int threads) {
  typedef typename Vec<T>::type V;
  const T count = static_cast<T>(n * hw);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t ch = 0; ch < c; ++ch) {
    const T m = mean[ch], is = invstd[ch];
    T sum_g = 0, sum_gx = 0;   // sum(g), sum(g * (x - mean))
    {
      constexpr int L = Vec<T>::L;
      for (int64_t i = 0; i < n; ++i) {
        const T* gr = g + (i * c + ch) * hw;
        const T* xr = x + (i * c + ch) * hw;
        V a{}, bsum{};
        int64_t j = 0;
        for (; j + L <= hw; j += L) {
          const V gv = vload<T>(gr + j);
          a += gv;
          bsum += gv * (vload<T>(xr + j) - m);
        }
        T sa = hsum<T>(a), sb = hsum<T>(bsum);
        for (; j < hw; ++j) {
          sa += gr[j];
          sb += gr[j] * (xr[j] - m);
        }
        sum_g += sa;
        sum_gx += sb;
      }
    }
    if (gb) gb[ch] = sum_g;
    if (gw) gw[ch] = sum_gx * is;
    if (gx) {
      const T wv = w ? w[ch] : T(1);
      const T mg = sum_g / count, k = sum_gx * is * is / count, scale = wv * is;
      for (int64_t i = 0; i < n; ++i) {
        const T* gr = g + (i * c + ch) * hw;
        const T* xr = x + (i * c + ch) * hw;
        T* out = gx + (i * c + ch) * hw;
        for (int64_t j = 0; j < hw; ++j) out[j] = scale * (gr[j] - mg - (xr[j] - m) * k);
      }
    }
  }
}

// ---- weighted sum (a mixed op's softmax-weighted sum of its ops' outputs) ----------------------------------

constexpr int64_t kSumBlock = 4096;

// out = sum_t w[t] * xs[t], one pass per block of elements (instead of a multiply and an add per op)
template <typename T>
void weighted_sum(const int64_t* xs, const T* w, int64_t k, int64_t n, T* out, int threads) {
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kSumBlock, len = std::min(kSumBlock, n - j0);
    T* __restrict o = out + j0;
    const T* x0 = reinterpret_cast<const T*>(xs[0]) + j0;
    for (int64_t j = 0; j < len; ++j) o[j] = w[0] * x0[j];
    for (int64_t t = 1; t < k; ++t) {
      const T* __restrict x = reinterpret_cast<const T*>(xs[t]) + j0;
      const T wt = w[t];
      for (int64_t j = 0; j < len; ++j) o[j] += wt * x[j];
    }
  }
}

// gxs[t] = w[t] * g (where gxs[t] is not null); dots[b * k + t] = <g, xs[t]> over block b (summed afterwards in
// block order, so the result does not depend on the thread count)
template <typename T>
void weighted_sum_backward(const T* g, const int64_t* xs, const T* w, int64_t k, int64_t n, const int64_t* gxs,
                           T* dots, int threads) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kSumBlock, len = std::min(kSumBlock, n - j0);
    const T* __restrict gb = g + j0;
    for (int64_t t = 0; t < k; ++t) {
      const T* __restrict x = reinterpret_cast<const T*>(xs[t]) + j0;
      T* __restrict gx = gxs[t] ? reinterpret_cast<T*>(gxs[t]) + j0 : nullptr;
      const T wt = w[t];
      V acc{};
      int64_t j = 0;
      for (; j + L <= len; j += L) {
        const V gv = vload<T>(gb + j);
        acc += gv * vload<T>(x + j);
        if (gx) vstore<T>(gx + j, gv * wt);
      }
      T sum = hsum<T>(acc);
      for (; j < len; ++j) {
        sum += gb[j] * x[j];
        if (gx) gx[j] = wt * gb[j];
      }
      dots[b * k + t] = sum;
    }
  }
}

// ---- subsampling (strided 1x1 convolutions, FactorizedReduce) ----------------------------------------------

// The gradient of x[:, :, off::s, off::s]: every input pixel written once (the picked ones from g, the rest 0).
template <typename T>
void subsample_backward(const T* g, T* gx, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t off, int64_t ho,
                        int64_t wo, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* out = gx + pl * h * w;
    const T* src = g + pl * ho * wo;
    for (int64_t y = 0; y < h; ++y) {
      T* row = out + y * w;
      const int64_t q = (y - off) / s;
      if (y < off || (y - off) % s != 0 || q >= ho) {
        std::fill(row, row + w, T(0));
        continue;
      }
      const T* sr = src + q * wo;
      std::fill(row, row + w, T(0));
      const int64_t cols = std::min(wo, (w - off + s - 1) / s);
      for (int64_t r = 0; r < cols; ++r) row[off + r * s] = sr[r];
    }
  }
}

Geom geom(const int64_t* v) { return Geom{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}; }

}  // namespace

// C entry points (ctypes). `g` is {h, w, k, stride, pad, dilation, ho, wo}. Suffix: element type.
extern "C" {

void sum_images_f32(const float* part, float* out, int64_t n, int64_t stride, int t) {
  sum_images(part, out, n, stride, t);
}
void sum_images_f64(const double* part, double* out, int64_t n, int64_t stride, int t) {
  sum_images(part, out, n, stride, t);
}
void pw_forward_f32(const float* x, const float* w, float* out, int64_t n, int64_t ci, int64_t co, int64_t p,
                    int relu, const float* mask, int t) {
  pw_forward(x, w, out, n, ci, co, p, relu != 0, mask, t);
}
void pw_forward_f64(const double* x, const double* w, double* out, int64_t n, int64_t ci, int64_t co, int64_t p,
                    int relu, const double* mask, int t) {
  pw_forward(x, w, out, n, ci, co, p, relu != 0, mask, t);
}
void pw_weight_grad_f32(const float* go, const float* x, float* part, int64_t n, int64_t ci, int64_t co, int64_t p,
                        int relu, int t) {
  pw_weight_grad(go, x, part, n, ci, co, p, relu != 0, t);
}
void pw_weight_grad_f64(const double* go, const double* x, double* part, int64_t n, int64_t ci, int64_t co,
                        int64_t p, int relu, int t) {
  pw_weight_grad(go, x, part, n, ci, co, p, relu != 0, t);
}
void max_pool_forward_f32(const float* x, float* out, int32_t* idx, int64_t planes, const int64_t* g, int t) {
  max_pool_forward(x, out, idx, planes, geom(g), t);
}
void max_pool_forward_f64(const double* x, double* out, int32_t* idx, int64_t planes, const int64_t* g, int t) {
  max_pool_forward(x, out, idx, planes, geom(g), t);
}
void max_pool_backward_f32(const float* go, const int32_t* idx, float* gx, int64_t planes, int64_t in_plane,
                           int64_t out_plane, int t) {
  max_pool_backward(go, idx, gx, planes, in_plane, out_plane, t);
}
void max_pool_backward_f64(const double* go, const int32_t* idx, double* gx, int64_t planes, int64_t in_plane,
                           int64_t out_plane, int t) {
  max_pool_backward(go, idx, gx, planes, in_plane, out_plane, t);
}
void avg_pool_forward_f32(const float* x, float* out, int64_t planes, const int64_t* g, int count_pad, int t) {
  avg_pool_forward(x, out, planes, geom(g), count_pad != 0, t);
}
void avg_pool_forward_f64(const double* x, double* out, int64_t planes, const int64_t* g, int count_pad, int t) {
  avg_pool_forward(x, out, planes, geom(g), count_pad != 0, t);
}
void avg_pool_backward_f32(const float* go, float* gx, int64_t planes, const int64_t* g, int count_pad, int t) {
  avg_pool_backward(go, gx, planes, geom(g), count_pad != 0, t);
}
void avg_pool_backward_f64(const double* go, double* gx, int64_t planes, const int64_t* g, int count_pad, int t) {
  avg_pool_backward(go, gx, planes, geom(g), count_pad != 0, t);
}

void bn_forward_f32(const float* x, const float* w, const float* b, float* y, float* mean, float* invstd, float* var,
                    int64_t n, int64_t c, int64_t hw, double eps, int t) {
  bn_forward(x, w, b, y, mean, invstd, var, n, c, hw, eps, t);
}
void bn_forward_f64(const double* x, const double* w, const double* b, double* y, double* mean, double* invstd,
                    double* var, int64_t n, int64_t c, int64_t hw, double eps, int t) {
  bn_forward(x, w, b, y, mean, invstd, var, n, c, hw, eps, t);
}
void bn_backward_f32(const float* g, const float* x, const float* mean, const float* invstd, const float* w, float* gx,
                     float* gw, float* gb, int64_t n, int64_t c, int64_t hw, int t) {
  bn_backward(g, x, mean, invstd, w, gx, gw, gb, n, c, hw, t);
}
void bn_backward_f64(const double* g, const double* x, const double* mean, const double* invstd, const double* w,
                     double* gx, double* gw, double* gb, int64_t n, int64_t c, int64_t hw, int t) {
  bn_backward(g, x, mean, invstd, w, gx, gw, gb, n, c, hw, t);
}

void weighted_sum_f32(const int64_t* xs, const float* w, int64_t k, int64_t n, float* out, int t) {
  weighted_sum(xs, w, k, n, out, t);
}
void weighted_sum_f64(const int64_t* xs, const double* w, int64_t k, int64_t n, double* out, int t) {
  weighted_sum(xs, w, k, n, out, t);
}
void weighted_sum_backward_f32(const float* g, const int64_t* xs, const float* w, int64_t k, int64_t n,
                               const int64_t* gxs, float* dots, int t) {
  weighted_sum_backward(g, xs, w, k, n, gxs, dots, t);
}
void weighted_sum_backward_f64(const double* g, const int64_t* xs, const double* w, int64_t k, int64_t n,
                               const int64_t* gxs, double* dots, int t) {
  weighted_sum_backward(g, xs, w, k, n, gxs, dots, t);
}

void subsample_backward_f32(const float* g, float* gx, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t off,
                            int64_t ho, int64_t wo, int t) {
  subsample_backward(g, gx, planes, h, w, s, off, ho, wo, t);
}
void subsample_backward_f64(const double* g, double* gx, int64_t planes, int64_t h, int64_t w, int64_t s,
                            int64_t off, int64_t ho, int64_t wo, int t) {
  subsample_backward(g, gx, planes, h, w, s, off, ho, wo, t);
}

void dwg_forward_f32(const float* x, const int64_t* ws, const int64_t* outs, const int64_t* specs, int64_t m,
                     int64_t n, int64_t c, const int64_t* g, int relu, int t) {
  dwg_forward(x, ws, outs, specs, m, n, c, geom(g), relu != 0, t);
}
void dwg_forward_f64(const double* x, const int64_t* ws, const int64_t* outs, const int64_t* specs, int64_t m,
                     int64_t n, int64_t c, const int64_t* g, int relu, int t) {
  dwg_forward(x, ws, outs, specs, m, n, c, geom(g), relu != 0, t);
}
void dwg_backward_f32(const float* x, const int64_t* ws, const int64_t* gouts, const int64_t* specs, int64_t m,
                      float* gx, const int64_t* gw_parts, int64_t n, int64_t c, const int64_t* g, int relu, int t) {
  dwg_backward(x, ws, gouts, specs, m, gx, gw_parts, n, c, geom(g), relu != 0, t);
}
void dwg_backward_f64(const double* x, const int64_t* ws, const int64_t* gouts, const int64_t* specs, int64_t m,
                      double* gx, const int64_t* gw_parts, int64_t n, int64_t c, const int64_t* g, int relu, int t) {
  dwg_backward(x, ws, gouts, specs, m, gx, gw_parts, n, c, geom(g), relu != 0, t);
}

}  // extern "C"

// A module object so that setuptools can build and import this file as an extension; the functions are
// reached through ctypes (dass.native).
static PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_ops", "dass CPU training kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__cpu_ops(void) { return PyModule_Create(&kModule); }
