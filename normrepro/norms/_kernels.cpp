// CPU kernels of normrepro's Lp batch norms (float32 and float64).
//
// Built on first use by normrepro/norms/_native.py (g++ -O3 -march=native -fopenmp, no torch headers)
// and called through ctypes. Pure C ABI: pointers, sizes, per-channel arrays.
//
// A tensor is seen as (A, C, B), element (a, c, b) at offset (a*C + c)*B + b:
//   NCHW contiguous  -> A = N,       B = H*W   ("planar": each channel is A runs of B contiguous values)
//   channels_last    -> A = N*H*W,   B = 1     ("rows": each row holds the C channels side by side)
//   (N, C)           -> A = N,       B = 1
// The index of an element inside its channel is i = a*B + b, 0 <= i < n = A*B.
//
// Sums of float32 data are accumulated in float over short blocks (vectorised) and in double across
// blocks. Every kernel is parallel over channels (planar) or over row ranges (rows) with OpenMP,
// using `nt` threads (the caller passes torch.get_num_threads()).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;

namespace {

const i64 kBlock = 512;    // planar: values summed in T before being added to the double total
const i64 kRowBlock = 64;  // rows: rows summed in T before being added to the double totals
const i64 kSerial = 1 << 15;  // fewer elements than this: one thread

inline int threads_for(int nt, i64 numel) {
  if (nt < 1 || numel < kSerial) return 1;
  return nt;
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Contiguous row range [r0, r1) of thread t out of nt over A rows.
inline void row_range(i64 A, int t, int nt, i64* r0, i64* r1) {
  i64 per = (A + nt - 1) / nt;
  *r0 = std::min(A, per * t);
  *r1 = std::min(A, *r0 + per);
}

// ---------------------------------------------------------------- per-channel mean
template <typename T>
void mean_kernel(const T* __restrict__ x, i64 A, i64 C, i64 B, T* __restrict__ mu, int nt) {
  const i64 n = A * B;
  nt = threads_for(nt, A * C * B);
  if (B > 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 c = 0; c < C; ++c) {
      double tot = 0;
      for (i64 a = 0; a < A; ++a) {
        const T* __restrict__ p = x + (a * C + c) * B;
        for (i64 b0 = 0; b0 < B; b0 += kBlock) {
          const i64 e = std::min(B, b0 + kBlock);
          T s = 0;
          for (i64 b = b0; b < e; ++b) s += p[b];
          tot += s;
        }
      }
      mu[c] = T(tot / double(n));
    }
    return;
  }
  std::vector<double> acc(size_t(nt) * C, 0.0);
  std::vector<T> tmp(size_t(nt) * C);
#pragma omp parallel num_threads(nt)
  {
    const int t = thread_id();
    i64 r0, r1;
    row_range(A, t, nt, &r0, &r1);
    double* __restrict__ at = acc.data() + size_t(t) * C;
    T* __restrict__ tt = tmp.data() + size_t(t) * C;
    for (i64 r = r0; r < r1; r += kRowBlock) {
      const i64 e = std::min(r1, r + kRowBlock);
      std::fill(tt, tt + C, T(0));
      for (i64 q = r; q < e; ++q) {
        const T* __restrict__ p = x + q * C;
        for (i64 c = 0; c < C; ++c) tt[c] += p[c];
      }
      for (i64 c = 0; c < C; ++c) at[c] += tt[c];
    }
  }
  for (i64 c = 0; c < C; ++c) {
    double tot = 0;
    for (int t = 0; t < nt; ++t) tot += acc[size_t(t) * C + c];
    mu[c] = T(tot / double(n));
  }
}

// ---------------------------------------------------------------- L1: sum|x-mu|, sum sign(x-mu), max|x-mu|
template <typename T, bool kMax>
void l1_kernel(const T* __restrict__ x, i64 A, i64 C, i64 B, const T* __restrict__ mu, T* __restrict__ sum_abs,
               T* __restrict__ sum_sign, T* __restrict__ max_abs, int nt) {
  nt = threads_for(nt, A * C * B);
  if (B > 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 c = 0; c < C; ++c) {
      const T m = mu[c];
      double ta = 0, ts = 0;
      T mx = 0;
      for (i64 a = 0; a < A; ++a) {
        const T* __restrict__ p = x + (a * C + c) * B;
        for (i64 b0 = 0; b0 < B; b0 += kBlock) {
          const i64 e = std::min(B, b0 + kBlock);
          T sa = 0, ss = 0, sm = 0;
          for (i64 b = b0; b < e; ++b) {
            const T d = p[b] - m;
            sa += std::abs(d);
            ss += (d > T(0) ? T(1) : T(0)) - (d < T(0) ? T(1) : T(0));
            if (kMax) sm = std::max(sm, std::abs(d));
          }
          ta += sa;
          ts += ss;
          if (kMax) mx = std::max(mx, sm);
        }
      }
      sum_abs[c] = T(ta);
      sum_sign[c] = T(ts);
      if (kMax) max_abs[c] = mx;
    }
    return;
  }
  std::vector<double> acc(size_t(nt) * 2 * C, 0.0);
  std::vector<T> tmp(size_t(nt) * 3 * C);
#pragma omp parallel num_threads(nt)
  {
    const int t = thread_id();
    i64 r0, r1;
    row_range(A, t, nt, &r0, &r1);
    double* __restrict__ aa = acc.data() + size_t(t) * 2 * C;
    double* __restrict__ as = aa + C;
    T* __restrict__ ta = tmp.data() + size_t(t) * 3 * C;
    T* __restrict__ ts = ta + C;
    T* __restrict__ tm = ts + C;
    std::fill(tm, tm + C, T(0));
    for (i64 r = r0; r < r1; r += kRowBlock) {
      const i64 e = std::min(r1, r + kRowBlock);
      std::fill(ta, ta + C, T(0));
      std::fill(ts, ts + C, T(0));
      for (i64 q = r; q < e; ++q) {
        const T* __restrict__ p = x + q * C;
        for (i64 c = 0; c < C; ++c) {
          const T d = p[c] - mu[c];
          ta[c] += std::abs(d);
          ts[c] += (d > T(0) ? T(1) : T(0)) - (d < T(0) ? T(1) : T(0));
          if (kMax) tm[c] = std::max(tm[c], std::abs(d));
        }
      }
      for (i64 c = 0; c < C; ++c) {
        aa[c] += ta[c];
        as[c] += ts[c];
      }
    }
  }
  for (i64 c = 0; c < C; ++c) {
    double sa = 0, ss = 0;
    T mx = 0;
    for (int t = 0; t < nt; ++t) {
      sa += acc[size_t(t) * 2 * C + c];
      ss += acc[size_t(t) * 2 * C + C + c];
      if (kMax) mx = std::max(mx, tmp[size_t(t) * 3 * C + 2 * C + c]);
    }
    sum_abs[c] = T(sa);
    sum_sign[c] = T(ss);
    if (kMax) max_abs[c] = mx;
  }
}

// ---------------------------------------------------------------- top-k of |x-mu| per channel
// A list of at most k entries sorted by |d| descending; among equal |d| the earlier index comes first.
template <typename T>
struct TopList {
  T* av;    // |d|
  T* dv;    // d (signed)
  i64* iv;  // index inside the channel
  int cnt;
  int k;
  T thr;    // an |d| must exceed this to enter: -1 while the list is not full, then av[k-1]

  void reset() {
    cnt = 0;
    thr = T(-1);
  }
  inline void insert(T a, T d, i64 idx) {
    int pos = cnt < k ? cnt : k - 1;
    while (pos > 0 && av[pos - 1] < a) {
      av[pos] = av[pos - 1];
      dv[pos] = dv[pos - 1];
      iv[pos] = iv[pos - 1];
      --pos;
    }
    av[pos] = a;
    dv[pos] = d;
    iv[pos] = idx;
    if (cnt < k) ++cnt;
    thr = cnt == k ? av[k - 1] : T(-1);
  }
};

// out_dev[c*k + j]: the signed x - mu of the j-th largest |x - mu| of channel c; out_idx its index inside
// the channel. Ties go to the smaller index. Entries a channel cannot fill (NaN input) get index 0 and NaN.
//
// Three phases, each about one vectorised pass or less:
// (1) split each channel into "blocks" (a few hundred to a thousand per channel) and take each block's
//     max |x - mu| (bm);
// (2) t = the k-th largest distinct block max of the channel: k blocks hold a value >= t, so the k-th
//     largest value is >= t, and every value >= t lies in a block with bm >= t;
// (3) scan the parts holding such blocks in index order, inserting the values >= t into a sorted list.
// Planar layout with runs of B >= 64: blocks are the vector lanes of contiguous chunks of a run.
// Otherwise ("rows": channels_last, (N, C), planar with short runs) the data is a matrix of A rows of C*B
// columns and a block is a column over R consecutive rows.
typedef int64_t i64;

template <typename T>
struct VecT;
template <>
struct VecT<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecT<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecT<T>::type;

template <typename T>
constexpr int lanes() {
  return int(32 / sizeof(T));
}

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline T nan_low(T v) {  // NaN -> -1: never a candidate (a NaN channel has a NaN mean anyway)
  return v >= T(0) ? v : T(-1);
}

// max { v[q] : v[q] < t } over q < m, or -1
template <typename T>
T max_below(const T* __restrict__ v, i64 m, T t) {
  constexpr int W = lanes<T>();
  Vec<T> acc = Vec<T>{} - T(1);
  const Vec<T> tv = Vec<T>{} + t;
  i64 q = 0;
  for (; q + W <= m; q += W) {
    Vec<T> b = vload(v + q);
    b = b < tv ? b : Vec<T>{} - T(1);
    acc = acc > b ? acc : b;
  }
  T mx = T(-1);
  for (int l = 0; l < W; ++l) mx = mx > acc[l] ? mx : acc[l];
  for (; q < m; ++q) {
    const T b = v[q] < t ? v[q] : T(-1);
    mx = mx > b ? mx : b;
  }
  return mx;
}

// the k-th largest distinct value of v[0..m) (values >= 0 or -1), at most the k-th largest value
template <typename T>
T kth_distinct(const T* __restrict__ v, i64 m, int k) {
  T t = T(INFINITY);
  for (int i = 0; i < k && t >= T(0); ++i) t = max_below(v, m, t);
  return t;
}

template <typename T>
void finish_list(TopList<T>& L) {
  for (int j = L.cnt; j < L.k; ++j) {
    L.dv[j] = T(NAN);
    L.iv[j] = 0;
  }
}

template <typename T>
void topk_chunks(const T* __restrict__ x, i64 A, i64 C, i64 B, const T* __restrict__ mu, int k, T* out_dev,
                 i64* out_idx, int nt) {
  constexpr int W = lanes<T>();
  const i64 n = A * B, kk = k;
  i64 S = W * 2;
  while (S < B && n / S * W > 1024) S *= 2;
  S = std::min(S, B);
  const i64 nch = (B + S - 1) / S;  // chunks per run
  const i64 m = A * nch * W;        // blocks (chunk, lane) per channel
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> bm(m), av(kk);
#pragma omp for schedule(static)
    for (i64 c = 0; c < C; ++c) {
      const T mc = mu[c];
      const Vec<T> mv = Vec<T>{} + mc;
      for (i64 a = 0; a < A; ++a) {
        const T* p = x + (a * C + c) * B;
        for (i64 h = 0; h < nch; ++h) {
          const i64 b0 = h * S, e = std::min(B, b0 + S);
          Vec<T> acc = Vec<T>{};
          i64 b = b0;
          for (; b + W <= e; b += W) {
            Vec<T> v = vload(p + b) - mv;
            v = v < 0 ? -v : v;
            acc = acc > v ? acc : v;
          }
          T* o = bm.data() + (a * nch + h) * W;
          for (int l = 0; l < W; ++l) o[l] = acc[l];
          for (; b < e; ++b) {
            const T v = std::abs(p[b] - mc);
            T& r = o[(b - b0) % W];
            r = r > v ? r : v;
          }
          for (int l = 0; l < W; ++l) o[l] = nan_low(o[l]);
        }
      }
      const T t = kth_distinct(bm.data(), m, k);
      TopList<T> L{av.data(), out_dev + c * kk, out_idx + c * kk, 0, k, T(-1)};
      for (i64 q = 0; q < A * nch; ++q) {
        const T* o = bm.data() + q * W;
        int cand = 0;
        for (int l = 0; l < W; ++l) cand |= o[l] >= t;
        if (!cand) continue;
        const i64 a = q / nch, b0 = (q % nch) * S, e = std::min(B, b0 + S);
        const T* p = x + (a * C + c) * B;
        for (i64 b = b0; b < e; ++b) {
          const T d = p[b] - mc;
          const T ad = std::abs(d);
          if (ad >= t && ad > L.thr) L.insert(ad, d, a * B + b);
        }
      }
      finish_list(L);
    }
  }
  (void)n;
}

template <typename T>
void topk_rows(const T* __restrict__ x, i64 A, i64 C, i64 B, const T* __restrict__ mu, int k, T* out_dev,
               i64* out_idx, int nt) {
  const i64 L = C * B, kk = k;  // columns per row
  i64 R = 8;
  while (R < 256 && (A / R) * B > 512) R *= 2;
  const i64 m = (A + R - 1) / R;  // row blocks
  std::vector<T> mue(L), bm(size_t(m) * L);
  for (i64 j = 0; j < L; ++j) mue[j] = mu[j / B];
  // phase 1
#pragma omp parallel for schedule(static) num_threads(nt)
  for (i64 q = 0; q < m; ++q) {
    T* __restrict__ o = bm.data() + q * L;
    const T* __restrict__ me = mue.data();
    for (i64 j = 0; j < L; ++j) o[j] = T(0);
    for (i64 r = q * R; r < std::min(A, q * R + R); ++r) {
      const T* __restrict__ p = x + r * L;
      for (i64 j = 0; j < L; ++j) {
        const T v = std::abs(p[j] - me[j]);
        o[j] = o[j] > v ? o[j] : v;
      }
    }
    for (i64 j = 0; j < L; ++j) o[j] = nan_low(o[j]);
  }
  // phase 2: k passes, vectorised over columns; t[c] from its B columns
  std::vector<T> t(C, T(INFINITY)), te(L, T(INFINITY)), acc(L);
  for (int i = 0; i < k; ++i) {
    T* __restrict__ ap = acc.data();
    const T* __restrict__ tp = te.data();
    for (i64 j = 0; j < L; ++j) ap[j] = T(-1);
    for (i64 q = 0; q < m; ++q) {
      const T* __restrict__ b = bm.data() + q * L;
      for (i64 j = 0; j < L; ++j) {
        const T v = b[j] < tp[j] ? b[j] : T(-1);
        ap[j] = ap[j] > v ? ap[j] : v;
      }
    }
    for (i64 c = 0; c < C; ++c) {
      T mx = T(-1);
      for (i64 b = 0; b < B; ++b) mx = mx > ap[c * B + b] ? mx : ap[c * B + b];
      t[c] = mx;
    }
    for (i64 j = 0; j < L; ++j) te[j] = t[j / B];
  }
  // phase 3: channel groups in parallel, blocks in row order
  const i64 G = 16;
  const i64 ngroups = (C + G - 1) / G;
  std::vector<T> av(size_t(C) * kk);
#pragma omp parallel num_threads(nt)
  {
    i64 g0, g1;
    row_range(ngroups, thread_id(), nt, &g0, &g1);
    const i64 c0 = std::min(C, g0 * G), c1 = std::min(C, g1 * G);
    std::vector<TopList<T>> lists;
    for (i64 c = c0; c < c1; ++c)
      lists.push_back(TopList<T>{av.data() + c * kk, out_dev + c * kk, out_idx + c * kk, 0, k, T(-1)});
    const i64 gc = std::max<i64>(1, 16 / B);  // channels per vectorised candidate check
    std::vector<i64> cands;
    std::vector<T> vals;
    for (i64 q = 0; q < m; ++q) {
      const T* __restrict__ b = bm.data() + q * L;
      const i64 r0 = q * R, nr = std::min(A, q * R + R) - r0;
      cands.clear();
      for (i64 cg = c0; cg < c1; cg += gc) {
        const i64 ce = std::min(c1, cg + gc);
        int any = 0;
        for (i64 j = cg * B; j < ce * B; ++j) any |= b[j] >= te[j];
        if (!any) continue;
        for (i64 c = cg; c < ce; ++c) {
          int cand = 0;
          for (i64 bb = 0; bb < B; ++bb) cand |= b[c * B + bb] >= t[c];
          if (cand) cands.push_back(c);
        }
      }
      if (cands.empty()) continue;
      // gather the block's values of the candidate channels first (independent loads), then select
      const i64 per = nr * B;
      vals.resize(cands.size() * size_t(per));
      for (i64 r = 0; r < nr; ++r) {
        const T* p = x + (r0 + r) * L;
        for (size_t ci = 0; ci < cands.size(); ++ci) {
          const T* pc = p + cands[ci] * B;
          T* o = vals.data() + ci * per + r * B;
          for (i64 bb = 0; bb < B; ++bb) o[bb] = pc[bb];
        }
      }
      for (size_t ci = 0; ci < cands.size(); ++ci) {
        const i64 c = cands[ci];
        TopList<T>& Lc = lists[size_t(c - c0)];
        const T tc = t[c], mc = mu[c];
        const T* v = vals.data() + ci * per;
        for (i64 j = 0; j < per; ++j) {
          const T d = v[j] - mc;
          const T ad = std::abs(d);
          if (ad >= tc && ad > Lc.thr) Lc.insert(ad, d, r0 * B + j);
        }
      }
    }
    for (auto& Lc : lists) finish_list(Lc);
  }
}

template <typename T>
void topk_kernel(const T* __restrict__ x, i64 A, i64 C, i64 B, const T* __restrict__ mu, int k, T* out_dev,
                 i64* out_idx, int nt) {
  nt = threads_for(nt, A * C * B);
  if (B >= 64)
    topk_chunks(x, A, C, B, mu, k, out_dev, out_idx, nt);
  else
    topk_rows(x, A, C, B, mu, k, out_dev, out_idx, nt);
}

// ---------------------------------------------------------------- backward sums: sum dy, sum dy*(x-mu)
// x may be null: then only sum dy.
template <typename T>
void grad_sums_kernel(const T* __restrict__ x, const T* __restrict__ dy, i64 A, i64 C, i64 B,
                      const T* __restrict__ mu, T* __restrict__ sum_dy, T* __restrict__ sum_dyd, int nt) {
  nt = threads_for(nt, A * C * B);
  const bool with_x = x != nullptr;
  if (B > 1) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (i64 c = 0; c < C; ++c) {
      const T m = with_x ? mu[c] : T(0);
      double t1 = 0, t2 = 0;
      for (i64 a = 0; a < A; ++a) {
        const i64 o = (a * C + c) * B;
        const T* __restrict__ g = dy + o;
        for (i64 b0 = 0; b0 < B; b0 += kBlock) {
          const i64 e = std::min(B, b0 + kBlock);
          T s1 = 0, s2 = 0;
          if (with_x) {
            const T* __restrict__ p = x + o;
            for (i64 b = b0; b < e; ++b) {
              s1 += g[b];
              s2 += g[b] * (p[b] - m);
            }
          } else {
            for (i64 b = b0; b < e; ++b) s1 += g[b];
          }
          t1 += s1;
          t2 += s2;
        }
      }
      sum_dy[c] = T(t1);
      if (with_x) sum_dyd[c] = T(t2);
    }
    return;
  }
  std::vector<double> acc(size_t(nt) * 2 * C, 0.0);
  std::vector<T> tmp(size_t(nt) * 2 * C);
#pragma omp parallel num_threads(nt)
  {
    const int t = thread_id();
    i64 r0, r1;
    row_range(A, t, nt, &r0, &r1);
    double* __restrict__ a1 = acc.data() + size_t(t) * 2 * C;
    double* __restrict__ a2 = a1 + C;
    T* __restrict__ t1 = tmp.data() + size_t(t) * 2 * C;
    T* __restrict__ t2 = t1 + C;
    for (i64 r = r0; r < r1; r += kRowBlock) {
      const i64 e = std::min(r1, r + kRowBlock);
      std::fill(t1, t1 + 2 * C, T(0));
      for (i64 q = r; q < e; ++q) {
        const T* __restrict__ g = dy + q * C;
        if (with_x) {
          const T* __restrict__ p = x + q * C;
          for (i64 c = 0; c < C; ++c) {
            t1[c] += g[c];
            t2[c] += g[c] * (p[c] - mu[c]);
          }
        } else {
          for (i64 c = 0; c < C; ++c) t1[c] += g[c];
        }
      }
      for (i64 c = 0; c < C; ++c) {
        a1[c] += t1[c];
        a2[c] += t2[c];
      }
    }
  }
  for (i64 c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int t = 0; t < nt; ++t) {
      s1 += acc[size_t(t) * 2 * C + c];
      s2 += acc[size_t(t) * 2 * C + C + c];
    }
    sum_dy[c] = T(s1);
    if (with_x) sum_dyd[c] = T(s2);
  }
}

// ---------------------------------------------------------------- y = (x - mu[c])*scale[c] + shift[c]
template <typename T>
void affine_kernel(const T* __restrict__ x, i64 A, i64 C, i64 B, const T* __restrict__ mu,
                   const T* __restrict__ scale, const T* __restrict__ shift, T* __restrict__ y, int nt) {
  nt = threads_for(nt, A * C * B);
  if (B > 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (i64 a = 0; a < A; ++a)
      for (i64 c = 0; c < C; ++c) {
        const i64 o = (a * C + c) * B;
        const T m = mu[c], w = scale[c], s = shift[c];
        const T* __restrict__ p = x + o;
        T* __restrict__ q = y + o;
        for (i64 b = 0; b < B; ++b) q[b] = (p[b] - m) * w + s;
      }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (i64 r = 0; r < A; ++r) {
    const T* __restrict__ p = x + r * C;
    T* __restrict__ q = y + r * C;
    for (i64 c = 0; c < C; ++c) q[c] = (p[c] - mu[c]) * scale[c] + shift[c];
  }
}

// ---------------------------------------------------------------- L1 input gradient
// dx = a[c]*dy + k[c]*sign(x - mu[c]) + c0[c]
template <typename T>
void l1_dx_kernel(const T* __restrict__ x, const T* __restrict__ dy, i64 A, i64 C, i64 B,
                  const T* __restrict__ mu, const T* __restrict__ ca, const T* __restrict__ ck,
                  const T* __restrict__ c0, T* __restrict__ dx, int nt) {
  nt = threads_for(nt, A * C * B);
  if (B > 1) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (i64 a = 0; a < A; ++a)
      for (i64 c = 0; c < C; ++c) {
        const i64 o = (a * C + c) * B;
        const T m = mu[c], va = ca[c], vk = ck[c], v0 = c0[c];
        const T* __restrict__ p = x + o;
        const T* __restrict__ g = dy + o;
        T* __restrict__ q = dx + o;
        for (i64 b = 0; b < B; ++b) {
          const T d = p[b] - m;
          const T sg = (d > T(0) ? T(1) : T(0)) - (d < T(0) ? T(1) : T(0));
          q[b] = va * g[b] + vk * sg + v0;
        }
      }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (i64 r = 0; r < A; ++r) {
    const T* __restrict__ p = x + r * C;
    const T* __restrict__ g = dy + r * C;
    T* __restrict__ q = dx + r * C;
    for (i64 c = 0; c < C; ++c) {
      const T d = p[c] - mu[c];
      const T sg = (d > T(0) ? T(1) : T(0)) - (d < T(0) ? T(1) : T(0));
      q[c] = ca[c] * g[c] + ck[c] * sg + c0[c];
    }
  }
}

// ---------------------------------------------------------------- dx[c, idx[c*k + j]] += w[c*k + j]
template <typename T>
void scatter_add_kernel(T* dx, i64 A, i64 C, i64 B, int k, const i64* idx, const T* w) {
  (void)A;
  for (i64 c = 0; c < C; ++c)
    for (int j = 0; j < k; ++j) {
      const i64 i = idx[c * k + j];
      const i64 a = i / B, b = i % B;
      dx[(a * C + c) * B + b] += w[c * k + j];
    }
}

}  // namespace

#define NR_EXPORT(T, SUF)                                                                                      \
  extern "C" void nr_mean_##SUF(const T* x, i64 A, i64 C, i64 B, T* mu, int nt) {                          \
    mean_kernel<T>(x, A, C, B, mu, nt);                                                                      \
  }                                                                                                          \
  extern "C" void nr_l1_##SUF(const T* x, i64 A, i64 C, i64 B, const T* mu, T* sa, T* ss, T* mx, int nt) { \
    if (mx)                                                                                                  \
      l1_kernel<T, true>(x, A, C, B, mu, sa, ss, mx, nt);                                                    \
    else                                                                                                     \
      l1_kernel<T, false>(x, A, C, B, mu, sa, ss, mx, nt);                                                   \
  }                                                                                                          \
  extern "C" void nr_topk_##SUF(const T* x, i64 A, i64 C, i64 B, const T* mu, int k, T* dev, i64* idx,    \
                                int nt) {                                                                    \
    topk_kernel<T>(x, A, C, B, mu, k, dev, idx, nt);                                                         \
  }                                                                                                          \
  extern "C" void nr_grad_sums_##SUF(const T* x, const T* dy, i64 A, i64 C, i64 B, const T* mu, T* s1,    \
                                     T* s2, int nt) {                                                        \
    grad_sums_kernel<T>(x, dy, A, C, B, mu, s1, s2, nt);                                                     \
  }                                                                                                          \
  extern "C" void nr_affine_##SUF(const T* x, i64 A, i64 C, i64 B, const T* mu, const T* scale,           \
                                  const T* shift, T* y, int nt) {                                            \
    affine_kernel<T>(x, A, C, B, mu, scale, shift, y, nt);                                                   \
  }                                                                                                          \
  extern "C" void nr_l1_dx_##SUF(const T* x, const T* dy, i64 A, i64 C, i64 B, const T* mu, const T* ca,  \
                                 const T* ck, const T* c0, T* dx, int nt) {                                  \
    l1_dx_kernel<T>(x, dy, A, C, B, mu, ca, ck, c0, dx, nt);                                                 \
  }                                                                                                          \
  extern "C" void nr_scatter_add_##SUF(T* dx, i64 A, i64 C, i64 B, int k, const i64* idx, const T* w) {   \
    scatter_add_kernel<T>(dx, A, C, B, k, idx, w);                                                           \
  }

NR_EXPORT(float, f32)
NR_EXPORT(double, f64)

extern "C" int nr_abi_version() { return 1; }
