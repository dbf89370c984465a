// CPU kernels of normrepro's batch norms (float32 and float64): the norm primitives of the "native" backend
// (normrepro/norms/prims_native.py) and two fused kernels (statistics + output, sums + dx) for L1 and Top-k.
//
// Built on first use by normrepro/norms/_native.py (g++ -O3 -march=native -fopenmp, no torch headers)
// and called through ctypes: a plain C ABI of pointers, sizes and per-channel arrays.
//
// A tensor is seen as (A, C, B), element (a, c, b) at offset (a*C + c)*B + b:
//   NCHW contiguous  -> A = N,       B = H*W   ("planar": a channel is A runs of B contiguous values)
//   channels_last    -> A = N*H*W,   B = 1     ("rows": a row holds the C channels side by side)
//   (N, C)           -> A = N,       B = 1
// The index of a value inside its channel is i = a*B + b, 0 <= i < n = A*B.
//
// Reductions run per channel group, on a 2-D view of A rows by L columns (element (a, j) at p[a*rs + j],
// rs = C*B, column j belonging to the group's channel j / B): planar tensors in groups of at least 256
// columns (one channel when B >= 256), row tensors all channels at once (or a share per thread).
// Elementwise passes (output, dx) run on "parts" that give each thread one contiguous block of memory:
// planar tensors by channel groups (static schedule: thread t gets consecutive groups), row tensors by
// blocks of rows. Two threads writing into the same fresh page at once both take the page fault, so
// interleaving threads over the pages of a new output costs twice the faults of a single writer.
// The fused kernels (nr_fwd, nr_bwd) make all their passes over a planar group before moving on; on row
// tensors they finish the statistics of every group, then write the output by row blocks.
//
// Sums of float32 data are accumulated in float over short row blocks (vectorised) and in double
// across blocks. Work runs in parallel with OpenMP on `nt` threads (the caller passes
// torch.get_num_threads(); the process shares torch's libgomp).
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

const i64 kRowBlock = 64;     // rows summed in T before being added to the double totals
const i64 kSerial = 1 << 15;  // fewer elements than this: one thread
const i64 kRun = 16;          // planar runs at least this long: per-channel scalars and register accumulators

inline int threads_for(int nt, i64 numel) { return (nt < 1 || numel < kSerial) ? 1 : nt; }

// ---------------------------------------------------------------- channel groups
// Group g holds channels [g*CB, g*CB + nch): a view of A rows (stride C*B) by nch*B columns starting at
// element (0, g*CB, 0). Planar tensors: CB*B >= 256 columns per group (one channel when B >= 256, so
// that the passes over a channel hit the cache); rows: all channels, or a share per thread.
struct Geometry {
  i64 A, C, B;
  i64 CB;  // channels per group
  i64 groups;
  Geometry(i64 A_, i64 C_, i64 B_, int nt) : A(A_), C(C_), B(B_) {
    if (B > 1)
      CB = (256 + B - 1) / B;
    else
      CB = nt > 1 ? std::max<i64>(16, (C / nt + 15) / 16 * 16) : C;
    CB = std::max<i64>(1, std::min(CB, C));
    groups = (C + CB - 1) / CB;
  }
  i64 c0(i64 g) const { return g * CB; }
  i64 nch(i64 g) const { return std::min(CB, C - g * CB); }
  i64 offset(i64 g) const { return g * CB * B; }  // of element (0, c0, 0)
  i64 rs() const { return C * B; }
  i64 cols(i64 g) const { return nch(g) * B; }
};

// A part of an elementwise pass: rows [a0, a1) of channels [c0, c0 + nch).
struct Part {
  i64 a0, a1, c0, nch;
};

inline i64 num_parts(const Geometry& G, int nt) { return G.B == 1 ? std::min<i64>(nt, G.A) : G.groups; }

inline Part part(const Geometry& G, i64 i, i64 parts) {
  if (G.B == 1) {  // rows: a block of rows, all channels
    const i64 per = (G.A + parts - 1) / parts;
    return Part{std::min(G.A, i * per), std::min(G.A, (i + 1) * per), 0, G.C};
  }
  return Part{0, G.A, G.c0(i), G.nch(i)};
}

template <typename T>
struct TopList;

// Scratch buffers of one thread, grown on demand.
template <typename T>
struct Scratch {
  std::vector<TopList<T>> lists;
  std::vector<T> t0, t1, t2, t3, t4, t5, t6, t7;
  std::vector<double> d0, d1, d2;
  std::vector<uint8_t> m0, m1;
  std::vector<i64> iv;
  uint8_t* getm(std::vector<uint8_t>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
  T* get(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
  double* getd(std::vector<double>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

// Per-column copy of per-channel values: e[j] = v[j / B] (0 when v is null).
template <typename T>
inline void expand(T* __restrict__ e, const T* __restrict__ v, i64 L, i64 B) {
  for (i64 j = 0; j < L; ++j) e[j] = v ? v[j / B] : T(0);
}

template <typename T>
inline T sign_of(T d) {
  return (d > T(0) ? T(1) : T(0)) - (d < T(0) ? T(1) : T(0));
}

// ---------------------------------------------------------------- reductions over a view
// Per channel of the view (nch = L / B): out = sum of x / div.
template <typename T>
void view_sums(const T* __restrict__ p, i64 rs, i64 A, i64 L, i64 B, double div, T* __restrict__ out,
               Scratch<T>& S) {
  if (B >= kRun) {  // planar: a run of B values per row and channel, summed in registers
    for (i64 ch = 0; ch < L / B; ++ch) {
      double tot = 0;
      for (i64 a = 0; a < A; ++a) {
        const T* __restrict__ r = p + a * rs + ch * B;
        T acc = 0;
        for (i64 b = 0; b < B; ++b) acc += r[b];
        tot += acc;
      }
      out[ch] = T(tot / div);
    }
    return;
  }
  T* __restrict__ cb = S.get(S.t0, L);
  double* __restrict__ cd = S.getd(S.d0, L);
  std::fill(cd, cd + L, 0.0);
  for (i64 a0 = 0; a0 < A; a0 += kRowBlock) {
    const i64 a1 = std::min(A, a0 + kRowBlock);
    std::fill(cb, cb + L, T(0));
    i64 a = a0;
    for (; a + 4 <= a1; a += 4) {  // four rows per pass over the accumulators
      const T *__restrict__ r0 = p + a * rs, *__restrict__ r1 = r0 + rs, *__restrict__ r2 = r1 + rs,
                            *__restrict__ r3 = r2 + rs;
      for (i64 j = 0; j < L; ++j) cb[j] += (r0[j] + r1[j]) + (r2[j] + r3[j]);
    }
    for (; a < a1; ++a) {
      const T* __restrict__ r = p + a * rs;
      for (i64 j = 0; j < L; ++j) cb[j] += r[j];
    }
    for (i64 j = 0; j < L; ++j) cd[j] += cb[j];
  }
  for (i64 ch = 0; ch < L / B; ++ch) {
    double s = 0;
    for (i64 b = 0; b < B; ++b) s += cd[ch * B + b];
    out[ch] = T(s / div);
  }
}

// Per channel, with d = x - mu: sum |d| (kAbs), sum sign(d) (kSign), sum d*d (kSq), max |d| (kMax, NaN sticky).
template <typename T, bool kAbs, bool kSign, bool kSq, bool kMax>
void view_dev(const T* __restrict__ p, i64 rs, i64 A, i64 L, i64 B, const T* __restrict__ mu, T* __restrict__ sa,
              T* __restrict__ ss, T* __restrict__ sq, T* __restrict__ mx, Scratch<T>& S) {
  if (B >= kRun) {
    for (i64 ch = 0; ch < L / B; ++ch) {
      const T m = mu[ch];
      double va = 0, vs = 0, vq = 0;
      T vm = 0;
      for (i64 a = 0; a < A; ++a) {
        const T* __restrict__ r = p + a * rs + ch * B;
        T ca = 0, cs = 0, cq = 0, cm = 0;
        for (i64 b = 0; b < B; ++b) {
          const T d = r[b] - m;
          const T ad = std::abs(d);
          if (kAbs) ca += ad;
          if (kSign) cs += sign_of(d);
          if (kSq) cq += d * d;
          if (kMax) cm = (ad > cm || ad != ad) ? ad : cm;
        }
        va += ca;
        vs += cs;
        vq += cq;
        vm = (cm > vm || cm != cm) ? cm : vm;
      }
      if (kAbs) sa[ch] = T(va);
      if (kSign) ss[ch] = T(vs);
      if (kSq) sq[ch] = T(vq);
      if (kMax) mx[ch] = vm;
    }
    return;
  }
  T* __restrict__ me = S.get(S.t0, L);
  T* __restrict__ ca = S.get(S.t1, L);
  T* __restrict__ cs = S.get(S.t2, L);
  T* __restrict__ cq = S.get(S.t3, L);
  T* __restrict__ cm = S.get(S.t4, L);
  double* __restrict__ da = S.getd(S.d0, L);
  double* __restrict__ ds = S.getd(S.d1, L);
  double* __restrict__ dq = S.getd(S.d2, L);
  expand(me, mu, L, B);
  std::fill(da, da + L, 0.0);
  std::fill(ds, ds + L, 0.0);
  std::fill(dq, dq + L, 0.0);
  std::fill(cm, cm + L, T(0));
  for (i64 a0 = 0; a0 < A; a0 += kRowBlock) {
    const i64 a1 = std::min(A, a0 + kRowBlock);
    std::fill(ca, ca + L, T(0));
    std::fill(cs, cs + L, T(0));
    std::fill(cq, cq + L, T(0));
    i64 a = a0;
    for (; a + 4 <= a1; a += 4) {  // four rows per pass over the accumulators
      const T *__restrict__ r0 = p + a * rs, *__restrict__ r1 = r0 + rs, *__restrict__ r2 = r1 + rs,
                            *__restrict__ r3 = r2 + rs;
      for (i64 j = 0; j < L; ++j) {
        const T m = me[j];
        const T d0 = r0[j] - m, d1 = r1[j] - m, d2 = r2[j] - m, d3 = r3[j] - m;
        const T a0_ = std::abs(d0), a1_ = std::abs(d1), a2_ = std::abs(d2), a3_ = std::abs(d3);
        if (kAbs) ca[j] += (a0_ + a1_) + (a2_ + a3_);
        if (kSign) cs[j] += (sign_of(d0) + sign_of(d1)) + (sign_of(d2) + sign_of(d3));
        if (kSq) cq[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        if (kMax) {
          T v = cm[j];
          v = (a0_ > v || a0_ != a0_) ? a0_ : v;
          v = (a1_ > v || a1_ != a1_) ? a1_ : v;
          v = (a2_ > v || a2_ != a2_) ? a2_ : v;
          v = (a3_ > v || a3_ != a3_) ? a3_ : v;
          cm[j] = v;
        }
      }
    }
    for (; a < a1; ++a) {
      const T* __restrict__ r = p + a * rs;
      for (i64 j = 0; j < L; ++j) {
        const T d = r[j] - me[j];
        const T ad = std::abs(d);
        if (kAbs) ca[j] += ad;
        if (kSign) cs[j] += sign_of(d);
        if (kSq) cq[j] += d * d;
        if (kMax) cm[j] = (ad > cm[j] || ad != ad) ? ad : cm[j];
      }
    }
    for (i64 j = 0; j < L; ++j) {
      da[j] += ca[j];
      ds[j] += cs[j];
      dq[j] += cq[j];
    }
  }
  for (i64 ch = 0; ch < L / B; ++ch) {
    double va = 0, vs = 0, vq = 0;
    T vm = 0;
    for (i64 b = 0; b < B; ++b) {
      const i64 j = ch * B + b;
      va += da[j];
      vs += ds[j];
      vq += dq[j];
      vm = (cm[j] > vm || cm[j] != cm[j]) ? cm[j] : vm;
    }
    if (kAbs) sa[ch] = T(va);
    if (kSign) ss[ch] = T(vs);
    if (kSq) sq[ch] = T(vq);
    if (kMax) mx[ch] = vm;
  }
}

template <typename T>
using DevFn = void (*)(const T*, i64, i64, i64, i64, const T*, T*, T*, T*, T*, Scratch<T>&);

template <typename T>
DevFn<T> dev_fn(bool a, bool s, bool q, bool m) {
  static const DevFn<T> table[16] = {
      view_dev<T, 0, 0, 0, 0>, view_dev<T, 0, 0, 0, 1>, view_dev<T, 0, 0, 1, 0>, view_dev<T, 0, 0, 1, 1>,
      view_dev<T, 0, 1, 0, 0>, view_dev<T, 0, 1, 0, 1>, view_dev<T, 0, 1, 1, 0>, view_dev<T, 0, 1, 1, 1>,
      view_dev<T, 1, 0, 0, 0>, view_dev<T, 1, 0, 0, 1>, view_dev<T, 1, 0, 1, 0>, view_dev<T, 1, 0, 1, 1>,
      view_dev<T, 1, 1, 0, 0>, view_dev<T, 1, 1, 0, 1>, view_dev<T, 1, 1, 1, 0>, view_dev<T, 1, 1, 1, 1>};
  return table[(a ? 8 : 0) + (s ? 4 : 0) + (q ? 2 : 0) + (m ? 1 : 0)];
}

// Per channel: sum dy and (when x is given) sum dy * (x - mu).
template <typename T>
void view_grad_sums(const T* __restrict__ px, const T* __restrict__ pg, i64 rs, i64 A, i64 L, i64 B,
                    const T* __restrict__ mu, T* __restrict__ sum_dy, T* __restrict__ sum_dyd, Scratch<T>& S) {
  const bool with_x = px != nullptr;
  if (B >= kRun) {
    for (i64 ch = 0; ch < L / B; ++ch) {
      const T m = with_x ? mu[ch] : T(0);
      double t1 = 0, t2 = 0;
      for (i64 a = 0; a < A; ++a) {
        const T* __restrict__ g = pg + a * rs + ch * B;
        T c1 = 0, c2 = 0;
        if (with_x) {
          const T* __restrict__ r = px + a * rs + ch * B;
          for (i64 b = 0; b < B; ++b) {
            c1 += g[b];
            c2 += g[b] * (r[b] - m);
          }
        } else {
          for (i64 b = 0; b < B; ++b) c1 += g[b];
        }
        t1 += c1;
        t2 += c2;
      }
      sum_dy[ch] = T(t1);
      if (with_x) sum_dyd[ch] = T(t2);
    }
    return;
  }
  T* __restrict__ me = S.get(S.t0, L);
  T* __restrict__ c1 = S.get(S.t1, L);
  T* __restrict__ c2 = S.get(S.t2, L);
  double* __restrict__ d1 = S.getd(S.d0, L);
  double* __restrict__ d2 = S.getd(S.d1, L);
  expand(me, with_x ? mu : nullptr, L, B);
  std::fill(d1, d1 + L, 0.0);
  std::fill(d2, d2 + L, 0.0);
  for (i64 a0 = 0; a0 < A; a0 += kRowBlock) {
    const i64 a1 = std::min(A, a0 + kRowBlock);
    std::fill(c1, c1 + L, T(0));
    std::fill(c2, c2 + L, T(0));
    i64 a = a0;
    if (with_x) {
      for (; a + 4 <= a1; a += 4) {  // four rows per pass over the accumulators
        const T *__restrict__ g0 = pg + a * rs, *__restrict__ g1 = g0 + rs, *__restrict__ g2 = g1 + rs,
                              *__restrict__ g3 = g2 + rs;
        const T *__restrict__ r0 = px + a * rs, *__restrict__ r1 = r0 + rs, *__restrict__ r2 = r1 + rs,
                              *__restrict__ r3 = r2 + rs;
        for (i64 j = 0; j < L; ++j) {
          const T m = me[j];
          c1[j] += (g0[j] + g1[j]) + (g2[j] + g3[j]);
          c2[j] += (g0[j] * (r0[j] - m) + g1[j] * (r1[j] - m)) + (g2[j] * (r2[j] - m) + g3[j] * (r3[j] - m));
        }
      }
    }
    for (; a < a1; ++a) {
      const T* __restrict__ g = pg + a * rs;
      if (with_x) {
        const T* __restrict__ r = px + a * rs;
        for (i64 j = 0; j < L; ++j) {
          c1[j] += g[j];
          c2[j] += g[j] * (r[j] - me[j]);
        }
      } else {
        for (i64 j = 0; j < L; ++j) c1[j] += g[j];
      }
    }
    for (i64 j = 0; j < L; ++j) {
      d1[j] += c1[j];
      d2[j] += c2[j];
    }
  }
  for (i64 ch = 0; ch < L / B; ++ch) {
    double s1 = 0, s2 = 0;
    for (i64 b = 0; b < B; ++b) {
      s1 += d1[ch * B + b];
      s2 += d2[ch * B + b];
    }
    sum_dy[ch] = T(s1);
    if (with_x) sum_dyd[ch] = T(s2);
  }
}

// ---------------------------------------------------------------- elementwise passes over a view
// y = (x - mu)*scale + shift per channel (mu, shift may be null: 0)
template <typename T>
void view_affine(const T* __restrict__ px, T* __restrict__ py, i64 rs, i64 A, i64 L, i64 B,
                 const T* __restrict__ mu, const T* __restrict__ scale, const T* __restrict__ shift, Scratch<T>& S) {
  if (B >= kRun) {
    for (i64 a = 0; a < A; ++a)
      for (i64 ch = 0; ch < L / B; ++ch) {
        const T m = mu ? mu[ch] : T(0), sc = scale[ch], sh = shift ? shift[ch] : T(0);
        const T* __restrict__ r = px + a * rs + ch * B;
        T* __restrict__ o = py + a * rs + ch * B;
        for (i64 b = 0; b < B; ++b) o[b] = (r[b] - m) * sc + sh;
      }
    return;
  }
  T* __restrict__ me = S.get(S.t0, L);
  T* __restrict__ sc = S.get(S.t1, L);
  T* __restrict__ sh = S.get(S.t2, L);
  expand(me, mu, L, B);
  expand(sc, scale, L, B);
  expand(sh, shift, L, B);
  i64 a = 0;
  for (; a + 4 <= A; a += 4) {  // four rows per load of the coefficients
    const T *__restrict__ r0 = px + a * rs, *__restrict__ r1 = r0 + rs, *__restrict__ r2 = r1 + rs,
                          *__restrict__ r3 = r2 + rs;
    T *__restrict__ o0 = py + a * rs, *__restrict__ o1 = o0 + rs, *__restrict__ o2 = o1 + rs, *__restrict__ o3 = o2 + rs;
    for (i64 j = 0; j < L; ++j) {
      const T m = me[j], c = sc[j], h = sh[j];
      o0[j] = (r0[j] - m) * c + h;
      o1[j] = (r1[j] - m) * c + h;
      o2[j] = (r2[j] - m) * c + h;
      o3[j] = (r3[j] - m) * c + h;
    }
  }
  for (; a < A; ++a) {
    const T* __restrict__ r = px + a * rs;
    T* __restrict__ o = py + a * rs;
    for (i64 j = 0; j < L; ++j) o[j] = (r[j] - me[j]) * sc[j] + sh[j];
  }
}

// dx = ca*dy + kd*(x - mu) + ks*sign(x - mu) + c0 per channel (kd: kD, ks: kS; x is not read without either)
template <typename T, bool kD, bool kS>
void view_input_grad(const T* __restrict__ px, const T* __restrict__ pg, T* __restrict__ pd, i64 rs, i64 A, i64 L,
                     i64 B, const T* __restrict__ mu, const T* __restrict__ ca, const T* __restrict__ kd,
                     const T* __restrict__ ks, const T* __restrict__ c0, Scratch<T>& S) {
  if (B >= kRun) {
    for (i64 a = 0; a < A; ++a)
      for (i64 ch = 0; ch < L / B; ++ch) {
        const T va = ca[ch], v0 = c0[ch], vd = kD ? kd[ch] : T(0), vs = kS ? ks[ch] : T(0);
        const T m = (kD || kS) ? mu[ch] : T(0);
        const T* __restrict__ g = pg + a * rs + ch * B;
        T* __restrict__ o = pd + a * rs + ch * B;
        if (kD || kS) {
          const T* __restrict__ r = px + a * rs + ch * B;
          for (i64 b = 0; b < B; ++b) {
            const T d = r[b] - m;
            T v = va * g[b] + v0;
            if (kD) v += vd * d;
            if (kS) v += vs * sign_of(d);
            o[b] = v;
          }
        } else {
          for (i64 b = 0; b < B; ++b) o[b] = va * g[b] + v0;
        }
      }
    return;
  }
  T* __restrict__ me = S.get(S.t0, L);
  T* __restrict__ va = S.get(S.t1, L);
  T* __restrict__ vd = S.get(S.t2, L);
  T* __restrict__ vs = S.get(S.t3, L);
  T* __restrict__ v0 = S.get(S.t4, L);
  expand(me, (kD || kS) ? mu : nullptr, L, B);
  expand(va, ca, L, B);
  expand(vd, kd, L, B);
  expand(vs, ks, L, B);
  expand(v0, c0, L, B);
  i64 a = 0;
  for (; a + 4 <= A; a += 4) {  // four rows per load of the coefficients
    const T *__restrict__ g0 = pg + a * rs, *__restrict__ g1 = g0 + rs, *__restrict__ g2 = g1 + rs,
                          *__restrict__ g3 = g2 + rs;
    T *__restrict__ o0 = pd + a * rs, *__restrict__ o1 = o0 + rs, *__restrict__ o2 = o1 + rs, *__restrict__ o3 = o2 + rs;
    if (kD || kS) {
      const T *__restrict__ r0 = px + a * rs, *__restrict__ r1 = r0 + rs, *__restrict__ r2 = r1 + rs,
                            *__restrict__ r3 = r2 + rs;
      for (i64 j = 0; j < L; ++j) {
        const T m = me[j], ga = va[j], gd = vd[j], gs = vs[j], g0_ = v0[j];
        const T d0 = r0[j] - m, d1 = r1[j] - m, d2 = r2[j] - m, d3 = r3[j] - m;
        T w0 = ga * g0[j] + g0_, w1 = ga * g1[j] + g0_, w2 = ga * g2[j] + g0_, w3 = ga * g3[j] + g0_;
        if (kD) {
          w0 += gd * d0;
          w1 += gd * d1;
          w2 += gd * d2;
          w3 += gd * d3;
        }
        if (kS) {
          w0 += gs * sign_of(d0);
          w1 += gs * sign_of(d1);
          w2 += gs * sign_of(d2);
          w3 += gs * sign_of(d3);
        }
        o0[j] = w0;
        o1[j] = w1;
        o2[j] = w2;
        o3[j] = w3;
      }
    } else {
      for (i64 j = 0; j < L; ++j) {
        const T ga = va[j], g0_ = v0[j];
        o0[j] = ga * g0[j] + g0_;
        o1[j] = ga * g1[j] + g0_;
        o2[j] = ga * g2[j] + g0_;
        o3[j] = ga * g3[j] + g0_;
      }
    }
  }
  for (; a < A; ++a) {
    const T* __restrict__ g = pg + a * rs;
    T* __restrict__ o = pd + a * rs;
    if (kD || kS) {
      const T* __restrict__ r = px + a * rs;
      for (i64 j = 0; j < L; ++j) {
        const T d = r[j] - me[j];
        T v = va[j] * g[j] + v0[j];
        if (kD) v += vd[j] * d;
        if (kS) v += vs[j] * sign_of(d);
        o[j] = v;
      }
    } else {
      for (i64 j = 0; j < L; ++j) o[j] = va[j] * g[j] + v0[j];
    }
  }
}

template <typename T>
void input_grad_any(const T* px, const T* pg, T* pd, i64 rs, i64 A, i64 L, i64 B, const T* mu, const T* ca,
                    const T* kd, const T* ks, const T* c0, Scratch<T>& S) {
  if (kd && ks)
    view_input_grad<T, true, true>(px, pg, pd, rs, A, L, B, mu, ca, kd, ks, c0, S);
  else if (kd)
    view_input_grad<T, true, false>(px, pg, pd, rs, A, L, B, mu, ca, kd, ks, c0, S);
  else if (ks)
    view_input_grad<T, false, true>(px, pg, pd, rs, A, L, B, mu, ca, kd, ks, c0, S);
  else
    view_input_grad<T, false, false>(px, pg, pd, rs, A, L, B, mu, ca, kd, ks, c0, S);
}

// ---------------------------------------------------------------- top-k of |x - mu| per channel
// A list of at most k entries sorted by |d| descending; among equal |d| the earlier index comes first.
template <typename T>
struct TopList {
  T* av;    // |d|
  T* dv;    // d (signed)
  i64* iv;  // index inside the channel
  int cnt;
  int k;
  T thr;  // an |d| must exceed this to enter: -1 while the list is not full, then av[k-1]

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
  void finish() {  // entries a channel cannot fill (NaN input): index 0, NaN deviation
    for (int j = cnt; j < k; ++j) {
      dv[j] = T(NAN);
      iv[j] = 0;
    }
  }
};

template <typename T>
inline T nan_low(T v) {  // NaN -> -1: never a candidate (a NaN channel has a NaN mean anyway)
  return v >= T(0) ? v : T(-1);
}

inline i64 topk_block_rows(i64 A, i64 B) {  // rows per block: a few hundred blocks per channel
  i64 R = 8;
  while (R < 256 && R < A && (A / R) * B > 512) R *= 2;
  return R;
}

// Per channel of the view: dev[ch*k + j] = the signed x - mu of the j-th largest |x - mu|, idx[...] its
// index inside the channel (a*B + b). Three phases, each at most about one vectorised pass:
// (1) blocks = one column over R consecutive rows (a few hundred per channel); bm = block max |x - mu|;
// (2) t = the k-th largest distinct block max of the channel (k vectorised passes over bm; rows layout: the k-th
//     largest counting repeats, in one pass): k blocks hold a value >= t, so the k-th largest value is >= t,
//     and every value >= t lies in a block with bm >= t;
// (3) scan the rows of the blocks with bm >= t, in index order, inserting the values >= t into the list.
template <typename T>
void view_topk(const T* __restrict__ p, i64 rs, i64 A, i64 L, i64 B, const T* __restrict__ mu, int k,
               T* __restrict__ dev, i64* __restrict__ idx, Scratch<T>& S) {
  const i64 nch = L / B, kk = k;
  const i64 R = topk_block_rows(A, B);
  const i64 m = (A + R - 1) / R;
  T* __restrict__ me = S.get(S.t0, L);
  T* __restrict__ te = S.get(S.t1, L);
  T* __restrict__ acc = S.get(S.t2, L);
  T* __restrict__ t = S.get(S.t3, nch);
  T* __restrict__ bm = S.get(S.t4, size_t(m) * L);
  expand(me, mu, L, B);
  // phase 1
  for (i64 q = 0; q < m; ++q) {
    T* __restrict__ o = bm + q * L;
    std::fill(o, o + L, T(0));
    const i64 qa1 = std::min(A, q * R + R);
    i64 a = q * R;
    for (; a + 4 <= qa1; a += 4) {  // four rows per pass over the block maxima
      const T *__restrict__ r0 = p + a * rs, *__restrict__ r1 = r0 + rs, *__restrict__ r2 = r1 + rs,
                            *__restrict__ r3 = r2 + rs;
      for (i64 j = 0; j < L; ++j) {
        const T m = me[j];
        const T v0 = std::abs(r0[j] - m), v1 = std::abs(r1[j] - m), v2 = std::abs(r2[j] - m),
                v3 = std::abs(r3[j] - m);
        const T u = (v0 > v1 ? v0 : v1), w = (v2 > v3 ? v2 : v3);
        const T v = u > w ? u : w;
        o[j] = o[j] > v ? o[j] : v;
      }
    }
    for (; a < qa1; ++a) {
      const T* __restrict__ r = p + a * rs;
      for (i64 j = 0; j < L; ++j) {
        const T v = std::abs(r[j] - me[j]);
        o[j] = o[j] > v ? o[j] : v;
      }
    }
    for (i64 j = 0; j < L; ++j) o[j] = nan_low(o[j]);
  }
  // phase 2
  if (B == 1) {  // one pass over bm: per column the k largest block maxima (with repeats), kept in L1
    T* __restrict__ tl = S.get(S.t6, size_t(k) * L);
    T* __restrict__ vv = S.get(S.t7, L);
    std::fill(tl, tl + size_t(k) * L, T(-1));
    for (i64 q = 0; q < m; ++q) {
      std::copy(bm + q * L, bm + q * L + L, vv);
      for (int i = 0; i < k; ++i) {  // a compare-exchange chain, vectorised over the columns
        T* __restrict__ e = tl + size_t(i) * L;
        for (i64 j = 0; j < L; ++j) {
          const T hi = e[j] > vv[j] ? e[j] : vv[j];
          vv[j] = e[j] > vv[j] ? vv[j] : e[j];
          e[j] = hi;
        }
      }
    }
    for (i64 j = 0; j < L; ++j) te[j] = t[j] = tl[size_t(k - 1) * L + j];
  }
  if (B > 1) std::fill(te, te + L, T(INFINITY));
  for (int i = 0; i < (B > 1 ? k : 0); ++i) {
    std::fill(acc, acc + L, T(-1));
    for (i64 q = 0; q < m; ++q) {
      const T* __restrict__ b = bm + q * L;
      for (i64 j = 0; j < L; ++j) {
        const T v = b[j] < te[j] ? b[j] : T(-1);
        acc[j] = acc[j] > v ? acc[j] : v;
      }
    }
    for (i64 ch = 0; ch < nch; ++ch) {
      T mx = T(-1);
      for (i64 b = 0; b < B; ++b) mx = mx > acc[ch * B + b] ? mx : acc[ch * B + b];
      t[ch] = mx;
    }
    for (i64 j = 0; j < L; ++j) te[j] = t[j / B];
  }
  // phase 3
  std::vector<TopList<T>>& lists = S.lists;
  T* __restrict__ av = S.get(S.t2, size_t(nch) * kk);  // acc is no longer needed
  lists.clear();
  for (i64 ch = 0; ch < nch; ++ch) lists.push_back(TopList<T>{av + ch * kk, dev + ch * kk, idx + ch * kk, 0, k, T(-1)});
  if (B == 1) {
    // (a) list the values of the candidate blocks, block rows in order (a vectorised test per 16 channels);
    // (b) load them with independent loads (they are scattered: one cache line each);
    // (c) select. Per channel the order is the index order.
    std::vector<i64>& cand = S.iv;  // (row << 32) | channel
    cand.clear();
    uint8_t* __restrict__ mk = S.getm(S.m0, size_t(L) + 8);
    for (i64 q = 0; q < m; ++q) {
      const T* __restrict__ b = bm + q * L;
      const i64 a1 = std::min(A, q * R + R);
      for (i64 j = 0; j < L; ++j) mk[j] = b[j] >= te[j];  // vectorised
      for (i64 j0 = 0; j0 < L; j0 += 8) {
        uint64_t w;
        std::memcpy(&w, mk + j0, 8);  // bytes past L: stale zeros or ones of no channel, masked below
        if (j0 + 8 > L) w &= (uint64_t(1) << (8 * (L - j0))) - 1;
        while (w) {
          const int byte = __builtin_ctzll(w) / 8;
          w &= ~(uint64_t(0xff) << (8 * byte));
          const i64 j = j0 + byte;
          for (i64 a = q * R; a < a1; ++a) cand.push_back((a << 32) | j);
        }
      }
    }
    const size_t nc = cand.size();
    T* __restrict__ vals = S.get(S.t0, nc);  // me is no longer needed
    for (size_t i = 0; i < nc; ++i) vals[i] = p[(cand[i] >> 32) * rs + (cand[i] & 0xffffffff)];
    uint8_t* __restrict__ keep = S.getm(S.m1, nc);
    for (size_t i = 0; i < nc; ++i) {  // branch-free filter: most values are below t
      const i64 j = cand[i] & 0xffffffff;
      keep[i] = std::abs(vals[i] - mu[j]) >= te[j];
    }
    for (size_t i = 0; i < nc; ++i) {
      if (!keep[i]) continue;
      const i64 j = cand[i] & 0xffffffff;
      const T d = vals[i] - mu[j];
      const T ad = std::abs(d);
      TopList<T>& Lc = lists[size_t(j)];
      if (ad > Lc.thr) Lc.insert(ad, d, cand[i] >> 32);
    }
  } else {  // channel by channel; in a block, rows then candidate columns (index order a*B + b)
    std::vector<i64>& cols = S.iv;
    for (i64 ch = 0; ch < nch; ++ch) {
      TopList<T>& Lc = lists[size_t(ch)];
      const T tc = t[ch], mc = mu[ch];
      for (i64 q = 0; q < m; ++q) {
        const T* b = bm + q * L + ch * B;
        cols.clear();
        for (i64 bb = 0; bb < B; ++bb)
          if (b[bb] >= tc) cols.push_back(bb);
        if (cols.empty()) continue;
        for (i64 a = q * R; a < std::min(A, q * R + R); ++a) {
          const T* r = p + a * rs + ch * B;
          for (i64 bb : cols) {
            const T d = r[bb] - mc;
            const T ad = std::abs(d);
            if (ad >= tc && ad > Lc.thr) Lc.insert(ad, d, a * B + bb);
          }
        }
      }
    }
  }
  for (auto& Lc : lists) Lc.finish();
}

// dx[channel ch, index i] += w for the k selected indices of each channel of the view (kCodes: idx holds
// selection codes (i + 1) * sign, 0 = nothing to add)
template <typename T, bool kCodes = false>
void view_scatter_add(T* __restrict__ pd, i64 rs, i64 nch, i64 B, int k, const i64* __restrict__ idx,
                      const T* __restrict__ w) {
  for (i64 ch = 0; ch < nch; ++ch)
    for (int j = 0; j < k; ++j) {
      i64 i = idx[ch * k + j];
      if (kCodes) {
        if (i == 0) continue;
        i = (i < 0 ? -i : i) - 1;
      }
      pd[(i / B) * rs + ch * B + (i % B)] += w[ch * k + j];
    }
}

// ---------------------------------------------------------------- drivers
// Reductions: fn(G, g, S) for every channel group, consecutive groups per thread.
template <typename T, typename F>
void for_groups(i64 A, i64 C, i64 B, int nt, F&& fn) {
  const Geometry G(A, C, B, nt);
  nt = threads_for(nt, A * C * B);
  nt = int(std::min<i64>(nt, G.groups));
#pragma omp parallel num_threads(nt)
  {
    static thread_local Scratch<T> S;  // kept between calls: no allocation (and page faults) per call
#pragma omp for schedule(static)
    for (i64 g = 0; g < G.groups; ++g) fn(G, g, S);
  }
}

// Elementwise passes: fn(P, S) for every part (see Part), one contiguous block of memory per thread.
template <typename T, typename F>
void for_parts(i64 A, i64 C, i64 B, int nt, F&& fn) {
  const Geometry G(A, C, B, nt);
  nt = threads_for(nt, A * C * B);
  const i64 parts = num_parts(G, nt);
  nt = int(std::min<i64>(nt, parts));
#pragma omp parallel num_threads(nt)
  {
    static thread_local Scratch<T> S;
#pragma omp for schedule(static)
    for (i64 i = 0; i < parts; ++i) fn(part(G, i, parts), S);
  }
}

enum Kind { kL1 = 0, kTopk = 1 };

// Fused training forward of one norm: statistics and output.
//   kind L1:   stat = mean|x - mu|;                 aux1[c] = mean sign(x - mu)
//   kind Topk: stat = mean of the k largest |x-mu|; aux1[c*k + j] = signed deviations, aux2 = their selection
//              codes (index + 1) * sign(deviation) (0: a zero or NaN deviation), max_abs = the largest |x - mu|
//   f = f0 + cscale * stat (f0 per channel, may be null: 0), s = f + eps,
//   y = (x - mu) * gamma / s + beta (gamma, beta may be null); max_abs and stat_out (stat per channel) optional.
template <typename T>
void fused_forward(int kind, const T* x, i64 A, i64 C, i64 B, const T* gamma, const T* beta, const T* f0, T eps,
                   T cscale, int k, T* y, T* mu, T* f, T* s, T* aux1, i64* aux2, T* max_abs, T* stat_out, int nt) {
  const i64 n = A * B;
  const Geometry G(A, C, B, nt);
  nt = threads_for(nt, A * C * B);
  const i64 parts = num_parts(G, nt);
  nt = int(std::min<i64>(nt, std::max(G.groups, B == 1 ? parts : i64(1))));
  std::vector<T> coef(2 * size_t(C));
  T* sc = coef.data();
  T* sh = sc + C;
#pragma omp parallel num_threads(nt)
  {
    static thread_local Scratch<T> S;
#pragma omp for schedule(static)
    for (i64 g = 0; g < G.groups; ++g) {
      const i64 c0 = G.c0(g), nch = G.nch(g), L = G.cols(g), rs = G.rs(), off = G.offset(g);
      const T* p = x + off;
      view_sums(p, rs, A, L, B, double(n), mu + c0, S);
      T* stat = S.get(S.t5, 2 * size_t(nch));
      T* ssum = stat + nch;
      if (kind == kL1) {
        dev_fn<T>(true, true, false, max_abs != nullptr)(p, rs, A, L, B, mu + c0, stat, ssum, nullptr,
                                                          max_abs ? max_abs + c0 : nullptr, S);
        for (i64 ch = 0; ch < nch; ++ch) {
          stat[ch] = stat[ch] / T(n);
          aux1[c0 + ch] = ssum[ch] / T(n);
        }
      } else {
        T* dv = aux1 + c0 * k;
        i64* code = aux2 + c0 * k;
        view_topk(p, rs, A, L, B, mu + c0, k, dv, code, S);
        for (i64 ch = 0; ch < nch; ++ch) {
          T sum = 0;
          for (int j = 0; j < k; ++j) {
            const T d = dv[ch * k + j];
            sum += std::abs(d);
            code[ch * k + j] = (code[ch * k + j] + 1) * i64(sign_of(d));
          }
          stat[ch] = sum / T(k);
          if (max_abs) max_abs[c0 + ch] = std::abs(dv[ch * k]);
        }
      }
      for (i64 ch = 0; ch < nch; ++ch) {
        const i64 c = c0 + ch;
        f[c] = (f0 ? f0[c] : T(0)) + cscale * stat[ch];
        if (stat_out) stat_out[c] = stat[ch];
        s[c] = f[c] + eps;
        sc[c] = gamma ? gamma[c] / s[c] : T(1) / s[c];
        sh[c] = beta ? beta[c] : T(0);
      }
      if (B > 1) view_affine(p, y + off, rs, A, L, B, mu + c0, sc + c0, sh + c0, S);
    }
    if (B == 1) {  // after the barrier of the loop above: the output by blocks of rows
#pragma omp for schedule(static)
      for (i64 i = 0; i < parts; ++i) {
        const Part P = part(G, i, parts);
        const i64 rs = G.rs();
        view_affine(x + P.a0 * rs, y + P.a0 * rs, rs, P.a1 - P.a0, C, i64(1), mu, sc, sh, S);
      }
    }
  }
}

// Fused backward: the sums, then dx (see normrepro/norms/formulas.py for the coefficients).
//   L1:   aux1[c] = mean sign(x - mu);  dx = a*dy - cscale*q*sign(x - mu) + c0
//   Topk: aux2 = the selection codes of fused_forward (aux1 unused);
//         dx = a*dy + c0, plus w at the selected values
// Writes dx and the per-channel sum dy, sum dy*(x - mu).
template <typename T>
void fused_backward(int kind, const T* x, const T* dy, i64 A, i64 C, i64 B, const T* mu, const T* s,
                    const T* gamma, T cscale, int k, const T* aux1, const i64* aux2, T* dx, T* sum_dy, T* sum_dyd,
                    int nt) {
  const i64 n = A * B;
  const Geometry G(A, C, B, nt);
  nt = threads_for(nt, A * C * B);
  const i64 parts = num_parts(G, nt);
  nt = int(std::min<i64>(nt, std::max(G.groups, B == 1 ? parts : i64(1))));
  std::vector<T> coef(3 * size_t(C) + (kind == kTopk ? size_t(C) * k : 0));
  T *ca = coef.data(), *ck = ca + C, *cz = ca + 2 * C, *w = ca + 3 * C;
#pragma omp parallel num_threads(nt)
  {
    static thread_local Scratch<T> S;
#pragma omp for schedule(static)
    for (i64 g = 0; g < G.groups; ++g) {
      const i64 c0 = G.c0(g), nch = G.nch(g), L = G.cols(g), rs = G.rs(), off = G.offset(g);
      view_grad_sums(x + off, dy + off, rs, A, L, B, mu + c0, sum_dy + c0, sum_dyd + c0, S);
      for (i64 ch = 0; ch < nch; ++ch) {
        const i64 c = c0 + ch;
        const T gm = gamma ? gamma[c] : T(1);
        const T mdy = sum_dy[c] / T(n), mdyd = sum_dyd[c] / T(n);
        const T a = gm / s[c];
        const T q = gm * (mdyd / s[c] / s[c]);
        ca[c] = a;
        if (kind == kL1) {
          ck[c] = -cscale * q;
          cz[c] = -a * mdy - ck[c] * aux1[c];
        } else {
          T sg = 0;
          for (int j = 0; j < k; ++j) sg += T((aux2[c * k + j] > 0) - (aux2[c * k + j] < 0));
          cz[c] = -a * mdy + q * (cscale / T(k)) * sg;
          for (int j = 0; j < k; ++j)
            w[c * k + j] = -q * (cscale * T(n) / T(k)) * T((aux2[c * k + j] > 0) - (aux2[c * k + j] < 0));
        }
      }
      if (B > 1) {
        input_grad_any(x + off, dy + off, dx + off, rs, A, L, B, mu + c0, ca + c0, (const T*)nullptr,
                       kind == kL1 ? ck + c0 : nullptr, cz + c0, S);
        if (kind == kTopk) view_scatter_add<T, true>(dx + off, rs, nch, B, k, aux2 + c0 * k, w + c0 * k);
      }
    }
    if (B == 1) {
#pragma omp for schedule(static)
      for (i64 i = 0; i < parts; ++i) {
        const Part P = part(G, i, parts);
        const i64 rs = G.rs(), o = P.a0 * rs;
        input_grad_any(x + o, dy + o, dx + o, rs, P.a1 - P.a0, C, i64(1), mu, ca, (const T*)nullptr,
                       kind == kL1 ? ck : nullptr, cz, S);
      }
      if (kind == kTopk) {
#pragma omp single
        view_scatter_add<T, true>(dx, G.rs(), C, B, k, aux2, w);
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- C ABI
// The primitives of the native backend (one pass each, over the whole tensor) and the two fused kernels.
#define NR_EXPORT(T, SUF)                                                                                      \
  extern "C" void nr_sums_##SUF(const T* x, i64 A, i64 C, i64 B, T* out, int nt) {                          \
    for_groups<T>(A, C, B, nt, [&](const Geometry& G, i64 g, Scratch<T>& S) {                                \
      view_sums(x + G.offset(g), G.rs(), A, G.cols(g), B, 1.0, out + G.c0(g), S);                            \
    });                                                                                                      \
  }                                                                                                          \
  extern "C" void nr_dev_stats_##SUF(const T* x, i64 A, i64 C, i64 B, const T* mu, T* sa, T* ss, T* sq,     \
                                     T* mx, int nt) {                                                        \
    const DevFn<T> fn = dev_fn<T>(sa != nullptr, ss != nullptr, sq != nullptr, mx != nullptr);               \
    for_groups<T>(A, C, B, nt, [&](const Geometry& G, i64 g, Scratch<T>& S) {                                \
      const i64 c0 = G.c0(g);                                                                                \
      fn(x + G.offset(g), G.rs(), A, G.cols(g), B, mu + c0, sa ? sa + c0 : nullptr, ss ? ss + c0 : nullptr, \
         sq ? sq + c0 : nullptr, mx ? mx + c0 : nullptr, S);                                                 \
    });                                                                                                      \
  }                                                                                                          \
  extern "C" void nr_topk_##SUF(const T* x, i64 A, i64 C, i64 B, const T* mu, int k, T* dev, i64* idx,    \
                                int nt) {                                                                    \
    for_groups<T>(A, C, B, nt, [&](const Geometry& G, i64 g, Scratch<T>& S) {                                \
      const i64 c0 = G.c0(g);                                                                                \
      view_topk(x + G.offset(g), G.rs(), A, G.cols(g), B, mu + c0, k, dev + c0 * k, idx + c0 * k, S);        \
    });                                                                                                      \
  }                                                                                                          \
  extern "C" void nr_grad_sums_##SUF(const T* x, const T* dy, i64 A, i64 C, i64 B, const T* mu, T* s1,    \
                                     T* s2, int nt) {                                                        \
    for_groups<T>(A, C, B, nt, [&](const Geometry& G, i64 g, Scratch<T>& S) {                                \
      const i64 o = G.offset(g), c0 = G.c0(g);                                                               \
      view_grad_sums(x ? x + o : nullptr, dy + o, G.rs(), A, G.cols(g), B, mu + c0, s1 + c0,                 \
                     s2 ? s2 + c0 : nullptr, S);                                                             \
    });                                                                                                      \
  }                                                                                                          \
  extern "C" void nr_affine_##SUF(const T* x, i64 A, i64 C, i64 B, const T* mu, const T* scale,           \
                                  const T* shift, T* y, int nt) {                                            \
    for_parts<T>(A, C, B, nt, [&](const Part& P, Scratch<T>& S) {                                            \
      const i64 rs = C * B, o = P.a0 * rs + P.c0 * B;                                                        \
      view_affine(x + o, y + o, rs, P.a1 - P.a0, P.nch * B, B, mu + P.c0, scale + P.c0,                      \
                  shift ? shift + P.c0 : nullptr, S);                                                        \
    });                                                                                                      \
  }                                                                                                          \
  extern "C" void nr_input_grad_##SUF(const T* x, const T* dy, i64 A, i64 C, i64 B, const T* mu,          \
                                      const T* ca, const T* kd, const T* ks, const T* c0, T* dx, int nt) {   \
    for_parts<T>(A, C, B, nt, [&](const Part& P, Scratch<T>& S) {                                            \
      const i64 rs = C * B, o = P.a0 * rs + P.c0 * B, c = P.c0;                                              \
      const bool xs = kd || ks;                                                                              \
      input_grad_any(xs ? x + o : nullptr, dy + o, dx + o, rs, P.a1 - P.a0, P.nch * B, B,                    \
                     xs ? mu + c : nullptr, ca + c, kd ? kd + c : nullptr, ks ? ks + c : nullptr, c0 + c, S); \
    });                                                                                                      \
  }                                                                                                          \
  extern "C" void nr_scatter_add_##SUF(T* dx, i64 A, i64 C, i64 B, int k, const i64* idx, const T* w) {    \
    (void)A;                                                                                                 \
    view_scatter_add(dx, C * B, C, B, k, idx, w);                                                            \
  }                                                                                                          \
  extern "C" void nr_fwd_##SUF(int kind, const T* x, i64 A, i64 C, i64 B, const T* gamma, const T* beta,   \
                               const T* f0, T eps, T cscale, int k, T* y, T* mu, T* f, T* s, T* aux1,       \
                               i64* aux2, T* max_abs, T* stat, int nt) {                                     \
    fused_forward<T>(kind, x, A, C, B, gamma, beta, f0, eps, cscale, k, y, mu, f, s, aux1, aux2, max_abs,    \
                     stat, nt);                                                                              \
  }                                                                                                          \
  extern "C" void nr_bwd_##SUF(int kind, const T* x, const T* dy, i64 A, i64 C, i64 B, const T* mu,       \
                               const T* s, const T* gamma, T cscale, int k, const T* aux1, const i64* aux2,  \
                               T* dx, T* sum_dy, T* sum_dyd, int nt) {                                       \
    fused_backward<T>(kind, x, dy, A, C, B, mu, s, gamma, cscale, k, aux1, aux2, dx, sum_dy, sum_dyd, nt);   \
  }

NR_EXPORT(float, f32)
NR_EXPORT(double, f64)

extern "C" int nr_abi_version() { return 4; }
