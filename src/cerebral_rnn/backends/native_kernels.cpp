// The "native" backend's compiled kernels: one recurrent layer (every direction) of K paths of one cell kind
// (LSTM, peephole LSTM, GRU), forward with or without saving for backward, and BPTT. Built by setup.py at install
// time (one module per ISA variant; flags in _build.py) or by native.py with torch.utils.cpp_extension on first
// use. The build selects ATen's vector implementation through CPU_CAPABILITY_AVX512 / CPU_CAPABILITY_AVX2 (or
// none: ATen's generic Vectorized, correct on any CPU).
//
// Symmetry by construction: every path is computed by the same code on operands of the same shape.
//  * Recurrent GEMMs (own kernels): every output element is one sequential chain of fused multiply-adds over
//    the reduction index, whatever its position in a vector or a block, so the result does not depend on
//    where a path's rows sit. Weights are packed per path into buffers of their own.
//  * Library GEMMs (input projection, weight gradients, and the recurrent GEMM where measured faster): one call
//    per path on operands of the same shape, each in a buffer of its own (64-byte aligned by ATen's CPU
//    allocator), so the library takes the same code path for every path.
//  * Pointwise loops: at::vec::Vectorized<T> over hidden units; the last, partial vector of a row is loaded and
//    stored with Vectorized::loadu(ptr, count) / store(ptr, count), so every element goes through the same
//    vector instructions (no scalar tail loop). The build uses -ffp-contract=off, so the arithmetic is exactly
//    what is written here (fused multiply-adds only where at::vec::fmadd says so).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace crnn {

using at::Tensor;
template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int LSTM = 0, PEEPHOLE = 1, GRU = 2;
template <int KIND>
constexpr int gates() { return KIND == GRU ? 3 : 4; }

// Register blocking by ISA (vector registers: 32 with AVX-512, 16 with AVX2). Forward: MR batch rows x G gate
// vectors of one unit block in accumulators. Backward: BWD_MR rows x BWD_NR unit blocks. Chosen by measuring the
// kernels alone with each build (the table: docs/native.md, "Register blocks"); with AVX2 one more forward row
// spills.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int FWD_MR4 = 6, FWD_MR3 = 8, BWD_MR = 6, BWD_NR = 4;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int FWD_MR4 = 3, FWD_MR3 = 4, BWD_MR = 4, BWD_NR = 3;
#else
constexpr int FWD_MR4 = 2, FWD_MR3 = 2, BWD_MR = 2, BWD_NR = 2;
#endif
template <int KIND>
constexpr int fwd_mr() { return gates<KIND>() == 3 ? FWD_MR3 : FWD_MR4; }

const char* capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "AVX2";
#else
  return "DEFAULT";
#endif
}

// ---- activations -------------------------------------------------------------------------------------------
// sigmoid(x) = 1 / (1 + exp(-x)); float32 tanh(x) = 1 - 2 / (exp(2x) + 1); lane by lane, NaN in -> NaN out.
// float64: Sleef's exp and tanh (1 ulp) and true division.
// float32 on AVX-512 / AVX2: exp by n = round(x log2 e), r = x - n ln 2 (two constants), a degree-6 polynomial for
// e^r and scaling by 2^n (scalef / exponent bits), about 1 ulp; the argument is clamped to [-87, 80], so 1 + exp()
// is finite and normal; 1 / y by the ISA's reciprocal estimate and one Newton step (about 1 ulp; a division costs
// ~10 cycles a vector and an LSTM path step needs five). Elsewhere (generic Vectorized): ATen's exp and division.
// Saturation: sigmoid(x < -80) = 1.8e-35 (not 0), tanh(|x| > 40) = +-1.
template <typename T>
inline Vec<T> v_sigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return one / (one + x.neg().exp());
}
template <typename T>
inline Vec<T> v_tanh(const Vec<T>& x) { return x.tanh(); }

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
using vf = __m512;
#define CRNN(op) _mm512_##op
#else
using vf = __m256;
#define CRNN(op) _mm256_##op
#endif
inline vf expf_clamped(vf x) {
  x = CRNN(min_ps)(CRNN(set1_ps)(80.f), CRNN(max_ps)(CRNN(set1_ps)(-87.f), x));  // NaN passes (second operand)
#if defined(CPU_CAPABILITY_AVX512)
  const vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
  vf r = CRNN(fnmadd_ps)(n, CRNN(set1_ps)(0.693359375f), x);
  r = CRNN(fnmadd_ps)(n, CRNN(set1_ps)(-2.12194440e-4f), r);
  vf p = CRNN(set1_ps)(1.f / 720.f);
  p = CRNN(fmadd_ps)(p, r, CRNN(set1_ps)(1.f / 120.f));
  p = CRNN(fmadd_ps)(p, r, CRNN(set1_ps)(1.f / 24.f));
  p = CRNN(fmadd_ps)(p, r, CRNN(set1_ps)(1.f / 6.f));
  p = CRNN(fmadd_ps)(p, r, CRNN(set1_ps)(0.5f));
  p = CRNN(fmadd_ps)(p, r, CRNN(set1_ps)(1.f));
  p = CRNN(fmadd_ps)(p, r, CRNN(set1_ps)(1.f));
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_scalef_ps(p, n);
#else
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
#endif
}
inline vf rcpf(vf y) {
#if defined(CPU_CAPABILITY_AVX512)
  const vf r = _mm512_rcp14_ps(y);  // 14 bits
#else
  const vf r = _mm256_rcp_ps(y);  // 12 bits
#endif
  return CRNN(fmadd_ps)(r, CRNN(fnmadd_ps)(y, r, CRNN(set1_ps)(1.f)), r);  // r (2 - y r)
}
template <>
inline Vec<float> v_sigmoid<float>(const Vec<float>& x) {
  const vf one = CRNN(set1_ps)(1.f);
  return rcpf(CRNN(add_ps)(one, expf_clamped(CRNN(sub_ps)(CRNN(setzero_ps)(), x))));
}
template <>
inline Vec<float> v_tanh<float>(const Vec<float>& x) {
  const vf one = CRNN(set1_ps)(1.f);
  const vf xv = x;
  return CRNN(fnmadd_ps)(CRNN(set1_ps)(2.f), rcpf(CRNN(add_ps)(expf_clamped(CRNN(add_ps)(xv, xv)), one)), one);
}
#undef CRNN
#endif

inline int tail(int64_t H, int64_t j0, int V) { return static_cast<int>(std::min<int64_t>(V, H - j0)); }

// ---- operands of one direction -----------------------------------------------------------------------------
// Time t of the direction's sequence; step s = t (forward) or T-1-t (reverse). State slots (cell states and
// the backward's h_prev): forward c_t is at slot t+1, c_{t-1} at slot t (slot 0: c_0); reverse c_t at slot t,
// the previous (c_{t+1}) at slot t+1 (slot T: c_0).
template <typename T>
struct Dir {
  int64_t T_ = 0, B = 0, H = 0, K = 0, D = 1, d = 0, nub = 0;
  bool reverse = false;
  // per path
  std::vector<const T*> pf;    // forward panels (nub, H, G, V): W_hh^T of unit block u, gate-interleaved
  std::vector<const T*> pb;    // backward panels (nub, G H, V): W_hh columns of unit block u
  std::vector<const T*> bx;    // bias of the input side (G H): b_ih + b_hh (LSTM kinds), b_ih (GRU), or null
  std::vector<const T*> bh;    // GRU: b_hh (G H) or null
  std::vector<const T*> peep;  // peephole (3H) or null
  std::vector<T*> gx;          // (n, B, G H): input projection; in training overwritten by the activations
  std::vector<T*> gh;          // GRU, library GEMM: (B, G H) h W_hh^T + b_hh of this step
  std::vector<T*> c;           // (slots, B, H) cell states (training: T+1 slots; inference: 1, in place)
  std::vector<T*> hn;          // GRU training: (T, B, H) W_hn h + b_hn
  std::vector<T*> dgx, dgh;    // backward: (T, B, G H) gradients of the pre-activations (input / recurrent side)
  std::vector<T*> dc;          // backward: (B, H) gradient of the cell state, carried
  std::vector<T*> dpeep;       // backward: (3H) peephole gradient
  std::vector<T*> dbx, dbh;    // backward: (G H) gradients of the input-side / GRU's recurrent bias
  const T* h0 = nullptr;       // (B, H)
  T* y = nullptr;              // (T, B, D H): this direction's columns start at d H
  const T* dy = nullptr;       // backward: (T, B, D H)
  T* dh = nullptr;             // backward: (B, H) gradient of h at the current step
  T* dir = nullptr;            // backward, GRU: (B, H) direct term sum_k dout_k z_k
  // recurrent dropout: the (B, H) mask (scaled) on h where it enters W_hh h, or null; hm: h_prev * mask of each
  // time (training: T slots, saved for the backward; inference: 2 alternating slots), written by the step before
  const T* rmask = nullptr;
  T* hm = nullptr;
  // zoneout: the fraction of h (and of each path's c) kept from the step before, per element: training masks
  // zh (T, B, H), zc (T, B, K H) of 0/1, or at eval the probabilities ph, pc (0: off)
  const T* zh = nullptr;
  const T* zc = nullptr;
  T ph = 0, pc = 0;
  bool train = false, own = true;

  int64_t ys() const { return D * H; }
  const T* hprev(int64_t t) const {  // h_{t-1} (forward) / h_{t+1} (reverse), rows of stride hs(t)
    if (!reverse) return t == 0 ? h0 : y + (t - 1) * B * ys() + d * H;
    return t == T_ - 1 ? h0 : y + (t + 1) * B * ys() + d * H;
  }
  int64_t hs(int64_t t) const { return (reverse ? t == T_ - 1 : t == 0) ? H : ys(); }
  int64_t hm_slot(int64_t t) const { return train ? t : (t & 1); }
  const T* ghprev(int64_t t) const { return rmask ? hm + hm_slot(t) * B * H : hprev(t); }  // what W_hh multiplies
  int64_t ghs(int64_t t) const { return rmask ? H : hs(t); }
  int64_t tnext(int64_t t) const { return reverse ? t - 1 : t + 1; }
  bool zone_h() const { return zh != nullptr || ph != T(0); }
  bool zone_c() const { return zc != nullptr || pc != T(0); }
  Vec<T> keep_h(int64_t t, int64_t b, int64_t j0, int cnt) const {
    return zh ? Vec<T>::loadu(zh + (t * B + b) * H + j0, cnt) : Vec<T>(ph);
  }
  Vec<T> keep_c(int64_t t, int64_t b, int64_t k, int64_t j0, int cnt) const {
    return zc ? Vec<T>::loadu(zc + (t * B + b) * K * H + k * H + j0, cnt) : Vec<T>(pc);
  }
  int64_t slot_new(int64_t t) const { return reverse ? t : t + 1; }
  int64_t slot_prev(int64_t t) const { return reverse ? t + 1 : t; }
  int64_t time(int64_t s) const { return reverse ? T_ - 1 - s : s; }
};

// ---- forward: one block of MR batch rows x one unit block, every path ----------------------------------------
// The recurrent GEMM of one block: acc[r][g] += sum_m h[r][m] W^T[m][g, unit block], one fused multiply-add per m
// in order. Not inlined, so that its accumulators own the vector registers (inlined into the pointwise code, the
// compiler kept the pointwise constants in registers and spilled accumulators). pre: the next panel, prefetched
// into L2 line by line as this one is read (at H = 512 a path's panels do not fit in L2; read from L3 without
// prefetching, the first pass over a panel ran at a third of the speed), or null.
template <typename T, int G, int MR, bool PF>
inline void fwd_gemm_loop(const T* __restrict h, int64_t hs, const T* __restrict w, int64_t H, Vec<T>* __restrict accp,
                          const T* pre) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int LINE = 64 / sizeof(T);
  VT acc[MR][G];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) acc[r][g] = accp[r * G + g];
  for (int64_t m = 0; m < H; ++m, w += G * V) {
    if constexpr (PF) {
#pragma GCC unroll 4
      for (int q = 0; q < G * V; q += LINE) __builtin_prefetch(pre + m * G * V + q, 0, 2);
    }
    VT wv[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) wv[g] = VT::loadu(w + g * V);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const VT hb(h[r * hs + m]);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[r][g] = at::vec::fmadd(hb, wv[g], acc[r][g]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) accp[r * G + g] = acc[r][g];
}

template <typename T, int G, int MR>
__attribute__((noinline)) void fwd_gemm(const T* h, int64_t hs, const T* w, int64_t H, Vec<T>* accp,
                                        const T* pre = nullptr) {
  if (pre)
    fwd_gemm_loop<T, G, MR, true>(h, hs, w, H, accp, pre);
  else
    fwd_gemm_loop<T, G, MR, false>(h, hs, w, H, accp, pre);
}

// The accumulators of MR rows of one path: initialised from the input projection (LSTM kinds: the whole
// pre-activation; GRU: the recurrent term alone, b_hh or a library GEMM's h W_hh^T + b_hh), then the own GEMM.
template <typename T, int KIND, int MR>
inline void fwd_acc(const Dir<T>& a, int64_t t, int64_t gx_step, int64_t k, int64_t u, int64_t rb, Vec<T>* acc,
                    const T* pre) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  const int64_t H = a.H, GH = G * H, B = a.B, j0 = u * V;
  const int cnt = tail(H, j0, V);
  if constexpr (KIND == GRU) {
    const T* ri = a.own ? a.bh[k] : a.gh[k] + rb * GH;
    const int64_t rs = a.own ? 0 : GH;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[r * G + g] = ri ? VT::loadu(ri + r * rs + g * H + j0, cnt) : VT(T(0));
  } else {
    const T* gx = a.gx[k] + gx_step * B * GH + rb * GH + j0;
    VT bias[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) bias[g] = a.bx[k] ? VT::loadu(a.bx[k] + g * H + j0, cnt) : VT(T(0));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[r * G + g] = VT::loadu(gx + r * GH + g * H, cnt) + bias[g];
  }
  if (a.own) fwd_gemm<T, G, MR>(a.ghprev(t) + rb * a.ghs(t), a.ghs(t), a.pf[k] + u * a.H * G * V, a.H, acc, pre);
}

template <typename T, int KIND, int M>
inline void fwd_acc_tail(const Dir<T>& a, int64_t t, int64_t gs, int64_t k, int64_t u, int64_t rb, int64_t rem,
                         Vec<T>* acc, const T* pre) {
  if constexpr (M >= 1) {
    if (rem == M)
      fwd_acc<T, KIND, M>(a, t, gs, k, u, rb, acc, pre);
    else
      fwd_acc_tail<T, KIND, M - 1>(a, t, gs, k, u, rb, rem, acc, pre);
  }
}

// The pointwise step of one batch row of one unit block, every path, from the accumulators (acc[k]: G vectors),
// and the combination of the paths: h = sum (LSTM kinds) or mean (GRU) of their outputs, stored at h_t.
template <typename T, int KIND>
inline void fwd_row(const Dir<T>& a, int64_t t, int64_t gx_step, int64_t cp, int64_t cn, int64_t u, int64_t b,
                    const Vec<T>* acc, int64_t kstride) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  const int64_t H = a.H, GH = G * H, B = a.B, j0 = u * V;
  const int cnt = tail(H, j0, V);
  const VT one(T(1));
  VT hsum;
  for (int64_t k = 0; k < a.K; ++k, acc += kstride) {
    T* row = a.gx[k] + gx_step * B * GH + b * GH + j0;  // the input projection; activations when training
    VT out;
    if constexpr (KIND == GRU) {
      VT xr = VT::loadu(row, cnt), xz = VT::loadu(row + H, cnt), xn = VT::loadu(row + 2 * H, cnt);
      if (a.bx[k]) {
        xr = xr + VT::loadu(a.bx[k] + j0, cnt);
        xz = xz + VT::loadu(a.bx[k] + H + j0, cnt);
        xn = xn + VT::loadu(a.bx[k] + 2 * H + j0, cnt);
      }
      const VT rg = v_sigmoid<T>(xr + acc[0]);
      const VT z = v_sigmoid<T>(xz + acc[1]);
      const VT n = v_tanh<T>(xn + rg * acc[2]);
      const VT h = VT::loadu(a.hprev(t) + b * a.hs(t) + j0, cnt);
      out = (one - z) * n + z * h;
      if (a.train) {
        rg.store(row, cnt);
        z.store(row + H, cnt);
        n.store(row + 2 * H, cnt);
        acc[2].store(a.hn[k] + t * B * H + b * H + j0, cnt);
      }
    } else {
      const int64_t co = b * H + j0;
      T* cbase = a.c[k];
      const VT c0 = VT::loadu(cbase + cp * B * H + co, cnt);
      VT ai = acc[0], af = acc[1], ao = acc[3];
      VT wco;
      if constexpr (KIND == PEEPHOLE) {
        ai = at::vec::fmadd(VT::loadu(a.peep[k] + j0, cnt), c0, ai);
        af = at::vec::fmadd(VT::loadu(a.peep[k] + H + j0, cnt), c0, af);
        wco = VT::loadu(a.peep[k] + 2 * H + j0, cnt);
      }
      const VT i = v_sigmoid<T>(ai), f = v_sigmoid<T>(af), g = v_tanh<T>(acc[2]);
      const VT c1 = at::vec::fmadd(f, c0, i * g);
      if constexpr (KIND == PEEPHOLE) ao = at::vec::fmadd(wco, c1, ao);
      const VT o = v_sigmoid<T>(ao);
      out = o * v_tanh<T>(c1);
      if (a.zone_c()) {  // zoneout: the carried c keeps a fraction of the step before's; the output reads c1
        const VT kc = a.keep_c(t, b, k, j0, cnt);
        (kc * c0 + (one - kc) * c1).store(cbase + cn * B * H + co, cnt);
      } else {
        c1.store(cbase + cn * B * H + co, cnt);
      }
      if (a.train) {
        i.store(row, cnt);
        f.store(row + H, cnt);
        g.store(row + 2 * H, cnt);
        o.store(row + 3 * H, cnt);
      }
    }
    hsum = k == 0 ? out : hsum + out;
  }
  if (KIND == GRU && a.K > 1) hsum = hsum / VT(T(a.K));  // the mean of the paths' updates
  if (a.zone_h()) {  // zoneout: h keeps a fraction of the step before's
    const VT kh = a.keep_h(t, b, j0, cnt);
    hsum = kh * VT::loadu(a.hprev(t) + b * a.hs(t) + j0, cnt) + (one - kh) * hsum;
  }
  hsum.store(a.y + t * B * a.ys() + a.d * H + b * a.ys() + j0, cnt);
  if (a.rmask) {  // recurrent dropout: what the next step's W_hh multiplies
    const int64_t tn = a.tnext(t);
    if (tn >= 0 && tn < a.T_)
      (hsum * VT::loadu(a.rmask + b * H + j0, cnt)).store(a.hm + a.hm_slot(tn) * B * H + b * H + j0, cnt);
  }
}

// Rows per group: the accumulators of a group (K paths x rows x G vectors) stay in L1 between the GEMM and the
// pointwise pass.
template <typename T, int KIND>
int64_t fwd_group_rows(int64_t K) {
  constexpr int MR = fwd_mr<KIND>();
  const int64_t bytes = K * gates<KIND>() * static_cast<int64_t>(sizeof(Vec<T>));
  return std::max<int64_t>(MR, 24 * 1024 / bytes);
}

// One step for the unit blocks [u0, u1), every batch row: per group of rows, every path's GEMM (register blocks
// of MR rows), then the pointwise pass row by row. scratch: K * group rows * G vectors.
template <typename T, int KIND>
void fwd_units(const Dir<T>& a, int64_t t, int64_t gs, int64_t cp, int64_t cn, int64_t u0, int64_t u1,
               Vec<T>* scratch) {
  constexpr int MR = fwd_mr<KIND>();
  constexpr int G = gates<KIND>();
  // groups of equal size (B = 64 with at most 30 rows a group: 32 + 32, not 30 + 30 + 4)
  const int64_t ngroups = (a.B + fwd_group_rows<T, KIND>(a.K) - 1) / fwd_group_rows<T, KIND>(a.K);
  const int64_t RG = (a.B + ngroups - 1) / ngroups;
  const int64_t kstride = RG * G;
  for (int64_t u = u0; u < u1; ++u) {
    for (int64_t g0 = 0; g0 < a.B; g0 += RG) {
      const int64_t g1 = std::min(a.B, g0 + RG);
      for (int64_t k = 0; k < a.K; ++k) {
        Vec<T>* acc = scratch + k * kstride;
        // register blocks of balanced sizes (B = 8 with MR = 6: 4 + 4, not 6 + 2)
        const int64_t n = g1 - g0, nb = (n + MR - 1) / MR;
        // the last block of the last group prefetches this path's panel of the next unit block
        const T* next = a.own && g1 == a.B && u + 1 < u1 ? a.pf[k] + (u + 1) * a.H * G * Vec<T>::size() : nullptr;
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t r0 = g0 + n * i / nb, r1 = g0 + n * (i + 1) / nb;
          fwd_acc_tail<T, KIND, MR>(a, t, gs, k, u, r0, r1 - r0, acc + (r0 - g0) * G, i == nb - 1 ? next : nullptr);
        }
      }
      for (int64_t b = g0; b < g1; ++b) fwd_row<T, KIND>(a, t, gs, cp, cn, u, b, scratch + (b - g0) * G, kstride);
    }
  }
}

// ---- backward, phase A: pointwise backward of one unit block at time t, every path and row -------------------
template <typename T, int KIND>
void bwd_pointwise(const Dir<T>& a, int64_t t, int64_t u) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  const int64_t H = a.H, GH = G * H, B = a.B, j0 = u * V;
  const int cnt = tail(H, j0, V);
  const VT one(T(1));
  for (int64_t k = 0; k < a.K; ++k) {
    const T* act = a.gx[k] + t * B * GH + j0;
    T* dgx = a.dgx[k] + t * B * GH + j0;
    if constexpr (KIND == GRU) {
      T* dgh = a.dgh[k] + t * B * GH + j0;
      const T* hn = a.hn[k] + t * B * H + j0;
      const T* hp = a.hprev(t) + j0;
      const int64_t hs = a.hs(t);
      VT sr(T(0)), sz(T(0)), sn(T(0)), shn(T(0));  // this step's column sums (bias gradients)
      for (int64_t b = 0; b < B; ++b) {
        const VT dhc = VT::loadu(a.dh + b * H + j0, cnt);  // d loss / d h_t (the carried h)
        const VT kh = a.zone_h() ? a.keep_h(t, b, j0, cnt) : VT(T(0));
        const VT dh = a.zone_h() ? (one - kh) * dhc : dhc;  // the un-zoned update's share
        const VT dout = a.K > 1 ? dh / VT(T(a.K)) : dh;
        const T* row = act + b * GH;
        const VT r = VT::loadu(row, cnt), z = VT::loadu(row + H, cnt), n = VT::loadu(row + 2 * H, cnt);
        const VT hnv = VT::loadu(hn + b * H, cnt), h = VT::loadu(hp + b * hs, cnt);
        const VT dn = dout * (one - z);
        const VT dz = dout * (h - n);
        const VT dan = dn * (one - n * n);
        const VT dar = dan * hnv * r * (one - r);
        const VT daz = dz * z * (one - z);
        T* gxr = dgx + b * GH;
        T* ghr = dgh + b * GH;
        dar.store(gxr, cnt);
        daz.store(gxr + H, cnt);
        dan.store(gxr + 2 * H, cnt);
        const VT dhn = dan * r;
        dar.store(ghr, cnt);
        daz.store(ghr + H, cnt);
        dhn.store(ghr + 2 * H, cnt);
        sr = sr + dar;
        sz = sz + daz;
        sn = sn + dan;
        shn = shn + dhn;
        VT direct = dout * z;
        if (k > 0)
          direct = VT::loadu(a.dir + b * H + j0, cnt) + direct;
        else if (a.zone_h())
          direct = kh * dhc + direct;  // zoneout: h_{t-1} kept
        direct.store(a.dir + b * H + j0, cnt);
      }
      if (a.dbx[k]) {
        T* db = a.dbx[k] + j0;
        (VT::loadu(db, cnt) + sr).store(db, cnt);
        (VT::loadu(db + H, cnt) + sz).store(db + H, cnt);
        (VT::loadu(db + 2 * H, cnt) + sn).store(db + 2 * H, cnt);
      }
      if (a.dbh[k]) {
        T* db = a.dbh[k] + j0;
        (VT::loadu(db, cnt) + sr).store(db, cnt);
        (VT::loadu(db + H, cnt) + sz).store(db + H, cnt);
        (VT::loadu(db + 2 * H, cnt) + shn).store(db + 2 * H, cnt);
      }
    } else {
      const T* cprev = a.c[k] + a.slot_prev(t) * B * H + j0;
      const T* cnew = a.c[k] + a.slot_new(t) * B * H + j0;
      T* dcb = a.dc[k] + j0;
      VT wci, wcf, wco, sci(T(0)), scf(T(0)), sco(T(0));
      VT si(T(0)), sf(T(0)), sg(T(0)), so(T(0));  // this step's column sums (bias gradients)
      if constexpr (KIND == PEEPHOLE) {
        wci = VT::loadu(a.peep[k] + j0, cnt);
        wcf = VT::loadu(a.peep[k] + H + j0, cnt);
        wco = VT::loadu(a.peep[k] + 2 * H + j0, cnt);
      }
      for (int64_t b = 0; b < B; ++b) {
        VT dh = VT::loadu(a.dh + b * H + j0, cnt);  // d loss / d h_t (the carried h)
        if (a.zone_h()) {  // zoneout: the un-zoned update's share; the kept share goes straight to h_{t-1}
          const VT kh = a.keep_h(t, b, j0, cnt);
          if (k == 0) (kh * dh).store(a.dir + b * H + j0, cnt);
          dh = (one - kh) * dh;
        }
        const T* row = act + b * GH;
        const VT i = VT::loadu(row, cnt), f = VT::loadu(row + H, cnt), g = VT::loadu(row + 2 * H, cnt),
                 o = VT::loadu(row + 3 * H, cnt);
        const VT c0 = VT::loadu(cprev + b * H, cnt);
        // the un-zoned new cell (what the output read): recomputed exactly as the forward made it under zoneout
        const VT c1 = a.zone_c() ? at::vec::fmadd(f, c0, i * g) : VT::loadu(cnew + b * H, cnt);
        const VT tc = v_tanh<T>(c1);
        const VT dao = dh * tc * o * (one - o);
        const VT dcc = VT::loadu(dcb + b * H, cnt);  // d loss / d c_t (the carried c)
        const VT kc = a.zone_c() ? a.keep_c(t, b, k, j0, cnt) : VT(T(0));
        VT dc = at::vec::fmadd(dh * o, one - tc * tc, a.zone_c() ? (one - kc) * dcc : dcc);
        if constexpr (KIND == PEEPHOLE) dc = at::vec::fmadd(dao, wco, dc);
        const VT dai = dc * g * i * (one - i);
        const VT daf = dc * c0 * f * (one - f);
        const VT dag = dc * i * (one - g * g);
        VT dcp = dc * f;
        if constexpr (KIND == PEEPHOLE) {
          dcp = at::vec::fmadd(dai, wci, dcp);
          dcp = at::vec::fmadd(daf, wcf, dcp);
          sci = at::vec::fmadd(dai, c0, sci);
          scf = at::vec::fmadd(daf, c0, scf);
          sco = at::vec::fmadd(dao, c1, sco);
        }
        if (a.zone_c()) dcp = kc * dcc + dcp;  // zoneout: c_{t-1} kept
        T* gr = dgx + b * GH;
        dai.store(gr, cnt);
        daf.store(gr + H, cnt);
        dag.store(gr + 2 * H, cnt);
        dao.store(gr + 3 * H, cnt);
        dcp.store(dcb + b * H, cnt);
        si = si + dai;
        sf = sf + daf;
        sg = sg + dag;
        so = so + dao;
      }
      if (a.dbx[k]) {
        T* db = a.dbx[k] + j0;
        (VT::loadu(db, cnt) + si).store(db, cnt);
        (VT::loadu(db + H, cnt) + sf).store(db + H, cnt);
        (VT::loadu(db + 2 * H, cnt) + sg).store(db + 2 * H, cnt);
        (VT::loadu(db + 3 * H, cnt) + so).store(db + 3 * H, cnt);
      }
      if constexpr (KIND == PEEPHOLE) {
        T* dp = a.dpeep[k] + j0;
        (VT::loadu(dp, cnt) + sci).store(dp, cnt);
        (VT::loadu(dp + H, cnt) + scf).store(dp + H, cnt);
        (VT::loadu(dp + 2 * H, cnt) + sco).store(dp + 2 * H, cnt);
      }
    }
  }
}

// ---- backward, phase B: dh_prev for MR rows x NR unit blocks = dy_prev (+ direct) + sum_k dG_k W_hh,k ---------
// acc[r][n] += sum_m dG[r][m] W[m][unit block u + n], one fused multiply-add per m in order (not inlined: see
// fwd_gemm).
template <typename T, int MR, int NR, bool PF>
inline void bwd_gemm_loop(const T* __restrict dg, const T* __restrict w, int64_t GH, Vec<T>* __restrict accp,
                          const T* pre) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int LINE = 64 / sizeof(T);
  VT acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) acc[r][n] = accp[r * NR + n];
  for (int64_t m = 0; m < GH; ++m) {
    if constexpr (PF) {
      if (m * V % LINE == 0) {
#pragma GCC unroll 4
        for (int n = 0; n < NR; ++n) __builtin_prefetch(pre + n * GH * V + m * V, 0, 2);
      }
    }
    VT wv[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) wv[n] = VT::loadu(w + n * GH * V + m * V);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const VT bc(dg[r * GH + m]);
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) acc[r][n] = at::vec::fmadd(bc, wv[n], acc[r][n]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) accp[r * NR + n] = acc[r][n];
}

// pre: the next group of NR panels (prefetched into L2 as these are read), or null; see fwd_gemm.
template <typename T, int MR, int NR>
__attribute__((noinline)) void bwd_gemm(const T* dg, const T* w, int64_t GH, Vec<T>* accp, const T* pre) {
  if (pre)
    bwd_gemm_loop<T, MR, NR, true>(dg, w, GH, accp, pre);
  else
    bwd_gemm_loop<T, MR, NR, false>(dg, w, GH, accp, pre);
}

// un: the first unit block of the next group, whose panels this block prefetches (-1: none).
template <typename T, int KIND, int MR, int NR>
inline void bwd_block(const Dir<T>& a, int64_t t, const T* dyp, int64_t u, int64_t rb, int64_t un) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  const int64_t H = a.H, GH = G * H, B = a.B;
  int cnt[NR];
#pragma GCC unroll 4
  for (int n = 0; n < NR; ++n) cnt[n] = tail(H, (u + n) * V, V);
  // dy_prev (+ GRU's direct term): the accumulators' start, or (recurrent dropout) added after the masked sum
  auto direct = [&](int r, int n) {
    const int64_t j = (u + n) * V;
    VT v = dyp ? VT::loadu(dyp + (rb + r) * a.ys() + j, cnt[n]) : VT(T(0));
    if (a.dir) v = v + VT::loadu(a.dir + (rb + r) * H + j, cnt[n]);  // GRU's z h term, zoneout's kept h
    return v;
  };
  VT acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) acc[r][n] = a.rmask ? VT(T(0)) : direct(r, n);
  for (int64_t k = 0; k < a.K; ++k)
    bwd_gemm<T, MR, NR>((KIND == GRU ? a.dgh[k] : a.dgx[k]) + t * B * GH + rb * GH, a.pb[k] + u * GH * V, GH,
                        &acc[0][0], un >= 0 ? a.pb[k] + un * GH * V : nullptr);
  if (a.rmask) {  // h_prev entered W_hh h as h_prev * mask
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n)
        acc[r][n] = acc[r][n] * VT::loadu(a.rmask + (rb + r) * H + (u + n) * V, cnt[n]) + direct(r, n);
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) acc[r][n].store(a.dh + (rb + r) * H + (u + n) * V, cnt[n]);
}

template <typename T, int KIND, int MR, int N>
inline void bwd_ntail(const Dir<T>& a, int64_t t, const T* dyp, int64_t u, int64_t rb, int64_t nr, int64_t un) {
  if constexpr (N >= 1) {
    if (nr == N)
      bwd_block<T, KIND, MR, N>(a, t, dyp, u, rb, un);
    else
      bwd_ntail<T, KIND, MR, N - 1>(a, t, dyp, u, rb, nr, un);
  }
}

template <typename T, int KIND, int M>
inline void bwd_mtail(const Dir<T>& a, int64_t t, const T* dyp, int64_t u, int64_t rb, int64_t mr, int64_t nr,
                      int64_t un) {
  if constexpr (M >= 1) {
    if (mr == M)
      bwd_ntail<T, KIND, M, BWD_NR>(a, t, dyp, u, rb, nr, un);
    else
      bwd_mtail<T, KIND, M - 1>(a, t, dyp, u, rb, mr, nr, un);
  }
}

template <typename T, int KIND>
void bwd_gemm_units(const Dir<T>& a, int64_t t, const T* dyp, int64_t u0, int64_t u1) {
  const int64_t nbr = (a.B + BWD_MR - 1) / BWD_MR;  // row blocks of balanced sizes
  const int64_t ngr = (u1 - u0 + BWD_NR - 1) / BWD_NR;  // unit-block groups of balanced sizes
  for (int64_t j = 0; j < ngr; ++j) {
    const int64_t ua = u0 + (u1 - u0) * j / ngr, ub = u0 + (u1 - u0) * (j + 1) / ngr;
    for (int64_t i = 0; i < nbr; ++i) {
      const int64_t r0 = a.B * i / nbr, r1 = a.B * (i + 1) / nbr;
      const int64_t un = i == nbr - 1 && ub + BWD_NR <= u1 ? ub : -1;  // prefetch the next group's panels
      bwd_mtail<T, KIND, BWD_MR>(a, t, dyp, ua, r0, r1 - r0, ub - ua, un);
    }
  }
}

// ---- threads -------------------------------------------------------------------------------------------------
// A time loop runs in one OpenMP parallel region (torch's OpenMP runtime, so torch.set_num_threads applies) as a
// sequence of phases (a forward step; a backward step's pointwise part, then its GEMM), each a set of items (unit
// blocks) that may run in any order. Thread i owns a contiguous range of the items (so the weight panels of its
// units stay in its caches) and claims them in chunks; a thread done with its range takes what is left of the
// others'. A phase starts when every item of the previous one is done. Unlike a barrier, no thread has to arrive:
// where a thread is descheduled (the CPUs are shared with other processes), the others finish the phase without
// it, and wait only for an item it had claimed. With one thread no region is opened.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct alignas(64) Counter {
  std::atomic<int64_t> v{0};
};

inline void wait_until(const std::atomic<int64_t>& v, int64_t target) {
  int spins = 0;
  while (v.load(std::memory_order_acquire) < target) {
    if (++spins < 256) {
      cpu_relax();
    } else {
      std::this_thread::yield();  // waited long: the thread we wait for may need this CPU
      spins = 0;
    }
  }
}

// body(phase, item0, item1, tid) computes items [item0, item1) of a phase; items(phase): how many the phase has;
// grain(phase): items a claim takes.
template <typename Items, typename Body, typename Grain>
void run_phases_var(int64_t nt, int64_t nphases, const Items& items, const Grain& grain, const Body& body) {
#ifdef _OPENMP
  if (nt > 1) {
    std::vector<Counter> pos(nt);  // claims in each thread's range, counted over every phase
    Counter done;                  // items done, counted over every phase
#pragma omp parallel num_threads(static_cast<int>(nt))
    {
      // the team may be smaller than asked (nested parallelism, OMP_THREAD_LIMIT): its ranges split all items
      const int64_t tn = std::min<int64_t>(omp_get_num_threads(), nt), tid = omp_get_thread_num();
      if (tid < tn) {
        std::vector<int64_t> base(tn, 0);  // claims of each range in the phases before this one
        int64_t before = 0;                // items of the phases before this one
        for (int64_t p = 0; p < nphases; ++p) {
          const int64_t ni = items(p);
          wait_until(done.v, before);
          const int64_t g = grain(p);
          for (int64_t j = 0; j < tn; ++j) {  // own range first, then the others'
            const int64_t r = (tid + j) % tn;
            const int64_t lo = ni * r / tn, end = base[r] + ni * (r + 1) / tn - lo;
            int64_t c = pos[r].v.load(std::memory_order_relaxed);
            while (c < end) {
              const int64_t take = std::min(g, end - c);
              if (!pos[r].v.compare_exchange_weak(c, c + take, std::memory_order_acq_rel)) continue;
              const int64_t i0 = lo + c - base[r];
              body(p, i0, i0 + take, tid);
              done.v.fetch_add(take, std::memory_order_acq_rel);
              c = pos[r].v.load(std::memory_order_relaxed);
            }
          }
          for (int64_t r = 0; r < tn; ++r) base[r] += ni * (r + 1) / tn - ni * r / tn;
          before += ni;
        }
      }
    }
    return;
  }
#endif
  for (int64_t p = 0; p < nphases; ++p) body(p, 0, items(p), 0);
}

// The same with nitems items in every phase (one item: no region).
template <typename Body, typename Grain>
void run_phases(int64_t nt, int64_t nphases, int64_t nitems, const Grain& grain, const Body& body) {
  run_phases_var(nitems > 1 ? nt : 1, nphases, [nitems](int64_t) { return nitems; }, grain, body);
}

// ---- packing --------------------------------------------------------------------------------------------------
// Forward panels of one path's W_hh (G H, H): (nub, H, G, V), element [u][m][g][l] = W[g H + u V + l][m],
// zero where u V + l >= H.
// Unit blocks per thread when packing in parallel: at least 2^17 elements, so that small weights are packed by
// the calling thread without waking the others.
inline int64_t pack_grain(int64_t per_block) {
  return std::max<int64_t>(1, ((int64_t(1) << 17) + per_block - 1) / per_block);
}

template <typename T>
void pack_fwd_impl(const T* __restrict w, T* __restrict p, int64_t G, int64_t H, int64_t V) {
  // transposed in tiles of 16 columns m x V units, so that reads and writes are both whole cache lines
  constexpr int64_t MB = 16;
  const int64_t nub = (H + V - 1) / V;
  at::parallel_for(0, nub, pack_grain(G * H * V), [&](int64_t u0, int64_t u1) {
    std::vector<T> tile(MB * V);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = std::min<int64_t>(V, H - u * V);
      for (int64_t m0 = 0; m0 < H; m0 += MB) {
        const int64_t mb = std::min<int64_t>(MB, H - m0);
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t l = 0; l < V; ++l) {
            const T* src = w + (g * H + u * V + l) * H + m0;
            for (int64_t mm = 0; mm < mb; ++mm) tile[mm * V + l] = l < n ? src[mm] : T(0);
          }
          for (int64_t mm = 0; mm < mb; ++mm) {
            T* dst = p + ((u * H + m0 + mm) * G + g) * V;
            for (int64_t l = 0; l < V; ++l) dst[l] = tile[mm * V + l];
          }
        }
      }
    }
  });
}

Tensor pack_fwd(const Tensor& w, int64_t G, int64_t H, int64_t V) {
  const int64_t nub = (H + V - 1) / V;
  Tensor c = w.contiguous();
  Tensor p = at::empty({nub, H, G, V}, w.options());
  if (w.scalar_type() == at::kFloat)
    pack_fwd_impl<float>(c.data_ptr<float>(), p.data_ptr<float>(), G, H, V);
  else
    pack_fwd_impl<double>(c.data_ptr<double>(), p.data_ptr<double>(), G, H, V);
  return p;
}

// Backward panels: (nub, G H, V), element [u][m][l] = W[m][u V + l], zero where u V + l >= H.
template <typename T>
void pack_bwd_impl(const T* __restrict w, T* __restrict p, int64_t GH, int64_t H, int64_t V) {
  const int64_t nub = (H + V - 1) / V;
  at::parallel_for(0, nub, pack_grain(GH * V), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = std::min<int64_t>(V, H - u * V);
      for (int64_t m = 0; m < GH; ++m) {
        T* dst = p + (u * GH + m) * V;
        const T* src = w + m * H + u * V;
        for (int64_t l = 0; l < n; ++l) dst[l] = src[l];
        for (int64_t l = n; l < V; ++l) dst[l] = T(0);
      }
    }
  });
}

Tensor pack_bwd(const Tensor& w, int64_t G, int64_t H, int64_t V) {
  const int64_t nub = (H + V - 1) / V;
  Tensor c = w.contiguous();
  Tensor p = at::empty({nub, G * H, V}, w.options());
  if (w.scalar_type() == at::kFloat)
    pack_bwd_impl<float>(c.data_ptr<float>(), p.data_ptr<float>(), G * H, H, V);
  else
    pack_bwd_impl<double>(c.data_ptr<double>(), p.data_ptr<double>(), G * H, H, V);
  return p;
}

// Path k's rows of a (K R, ...) parameter, copied into a buffer of its own (same shape and alignment for every
// path).
Tensor own_rows(const Tensor& t, int64_t k, int64_t rows) {
  return t.narrow(0, k * rows, rows).clone(at::MemoryFormat::Contiguous);
}

// Every path's rows of a contiguous (K R, C) weight as operands of the same shape and alignment: views when the
// weight starts on a 64-byte boundary and a path's block is a multiple of 64 bytes (every path's view then starts
// on one), otherwise copies of their own.
std::vector<Tensor> path_operands(const Tensor& t, int64_t K, int64_t rows) {
  const int64_t block = rows * t.stride(0) * static_cast<int64_t>(t.element_size());
  const bool aligned = t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 64 == 0 && block % 64 == 0;
  std::vector<Tensor> out;
  for (int64_t k = 0; k < K; ++k) out.push_back(aligned ? t.narrow(0, k * rows, rows) : own_rows(t, k, rows));
  return out;
}

// ---- oneDNN packed GEMM (torch.ops.mkldnn._linear_pointwise, as torch's inductor uses it) ------------------------
Tensor onednn_pack(const Tensor& w, int64_t rows) {  // w (out, in)
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                       .typed<Tensor(const Tensor&, std::optional<int64_t>)>();
  return op.call(w, rows);
}

Tensor onednn_linear_add(const Tensor& x, const Tensor& add, const Tensor& packed) {  // x W^T + add
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                     c10::string_view)>();
  return op.call(x, add, packed, std::nullopt, "add");
}

// GEMM modes of the recurrence: 0 own kernels (fused with the pointwise part), 1 at::addmm per path and step,
// 2 oneDNN with the weight packed once per call (float32).
constexpr int64_t GEMM_OWN = 0, GEMM_ADDMM = 1, GEMM_ONEDNN = 2;

struct Layer {
  int64_t kind, K, T_, B, I, H, D, G;
};

// ---- per-path operands of one direction ----------------------------------------------------------------------
// Made at every call (a cache keyed by parameter versions would miss in-place writes through .data). Per path k,
// 5 tensors: W_ih's rows (a view or an own copy, path_operands), the input-side bias (b_ih + b_hh for
// LSTM kinds, b_ih for the GRU), GRU's b_hh, the peephole weights, and W_hh packed into forward panels (own GEMM);
// undefined where absent.
template <typename T, int KIND>
std::vector<Tensor> prepare_dir(int64_t K, int64_t H, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
                                const Tensor& b_hh, const Tensor& peep, bool own) {
  constexpr int V = Vec<T>::size();
  constexpr int G = gates<KIND>();
  const int64_t GH = G * H;
  std::vector<Tensor> wih = path_operands(w_ih, K, GH), out;
  Tensor b;
  if (KIND != GRU && (b_ih.defined() || b_hh.defined()))
    b = b_ih.defined() && b_hh.defined() ? b_ih + b_hh : (b_ih.defined() ? b_ih : b_hh);
  else if (KIND == GRU)
    b = b_ih;
  for (int64_t k = 0; k < K; ++k) {
    out.push_back(wih[k]);
    out.push_back(b.defined() ? own_rows(b, k, GH) : Tensor());
    out.push_back(KIND == GRU && b_hh.defined() ? own_rows(b_hh, k, GH) : Tensor());
    out.push_back(KIND == PEEPHOLE ? own_rows(peep, k, 3 * H) : Tensor());
    out.push_back(own ? pack_fwd(w_hh.narrow(0, k * GH, GH), G, H, V) : Tensor());
  }
  return out;
}

// ---- forward -------------------------------------------------------------------------------------------------
template <typename T, int KIND>
std::vector<Tensor> forward_impl(const Layer& L, const Tensor& x, const Tensor& h0, const Tensor& c0,
                                 const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                                 const std::vector<Tensor>& b_ih, const std::vector<Tensor>& b_hh,
                                 const std::vector<Tensor>& peep, bool train, int64_t mode, int64_t threads,
                                 int64_t chunk_rows, const std::vector<Tensor>& rmask, const std::vector<Tensor>& zh,
                                 const std::vector<Tensor>& zc, double ph, double pc) {
  constexpr int V = Vec<T>::size();
  constexpr int G = gates<KIND>();
  const int64_t K = L.K, T_ = L.T_, B = L.B, I = L.I, H = L.H, D = L.D, GH = G * H;
  const int64_t nub = (H + V - 1) / V;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, nub));
  const auto opt = x.options();
  const bool cell = KIND != GRU;
  Tensor y = at::empty({T_, B, D * H}, opt);
  Tensor h_n = at::empty({D, B, H}, opt);
  Tensor c_n = cell ? at::empty({D, B, K * H}, opt) : Tensor();
  std::vector<Tensor> saved_act, saved_state;  // per direction and path: activations; c (or GRU's hn)
  std::vector<Tensor> saved_hm;                // per direction, with recurrent dropout: h_prev * mask
  const Tensor x2 = x.view({T_ * B, I});
  const int64_t n = train ? T_ : std::max<int64_t>(1, std::min<int64_t>(T_, chunk_rows / std::max<int64_t>(B, 1)));

  for (int64_t d = 0; d < D; ++d) {
    Dir<T> a;
    a.T_ = T_, a.B = B, a.H = H, a.K = K, a.D = D, a.d = d, a.nub = nub;
    a.reverse = d == 1, a.train = train, a.own = mode == GEMM_OWN;
    Tensor h0d = h0[d].contiguous();
    a.h0 = h0d.data_ptr<T>();
    a.y = y.data_ptr<T>();
    Tensor hm;
    if (!rmask.empty()) {
      a.rmask = rmask[d].data_ptr<T>();
      hm = at::empty({train ? T_ : 2, B, H}, opt);
      a.hm = hm.data_ptr<T>();
      hm[a.hm_slot(a.reverse ? T_ - 1 : 0)].copy_(h0d * rmask[d]);  // what the first step's W_hh multiplies
      if (train) saved_hm.push_back(hm);
    }
    a.zh = zh.empty() ? nullptr : zh[d].data_ptr<T>();
    a.zc = zc.empty() ? nullptr : zc[d].data_ptr<T>();
    a.ph = static_cast<T>(ph), a.pc = static_cast<T>(pc);
    const std::vector<Tensor> prep =
        prepare_dir<T, KIND>(K, H, w_ih[d], w_hh[d], b_ih[d], b_hh[d], peep[d], mode == GEMM_OWN);
    std::vector<Tensor> wih(K), bx(K), whh_lib(K), packed(K), bh_t(K), gx(K), gh(K), cst(K);
    for (int64_t k = 0; k < K; ++k) {
      wih[k] = prep[k * 5];
      bx[k] = prep[k * 5 + 1];
      bh_t[k] = prep[k * 5 + 2];
      const Tensor& pk = prep[k * 5 + 3];
      if (a.own) {
        a.pf.push_back(prep[k * 5 + 4].data_ptr<T>());
      } else {
        Tensor whk = w_hh[d].narrow(0, k * GH, GH);
        whh_lib[k] = whk.t().contiguous();  // (H, G H), own buffer
        if (mode == GEMM_ONEDNN) packed[k] = onednn_pack(whk.clone(at::MemoryFormat::Contiguous), B);
      }
      a.bh.push_back(bh_t[k].defined() ? bh_t[k].data_ptr<T>() : nullptr);
      a.bx.push_back(bx[k].defined() ? bx[k].data_ptr<T>() : nullptr);  // added in the kernel, not by the GEMM
      a.peep.push_back(pk.defined() ? pk.data_ptr<T>() : nullptr);
      gx[k] = at::empty({n, B, GH}, opt);
      a.gx.push_back(gx[k].data_ptr<T>());
      if (KIND == GRU && !a.own) {
        gh[k] = at::empty({B, GH}, opt);
        a.gh.push_back(gh[k].data_ptr<T>());
      }
      if (cell) {
        cst[k] = at::empty({train ? T_ + 1 : 1, B, H}, opt);
        cst[k][train && a.reverse ? T_ : 0].copy_(c0[d].narrow(1, k * H, H));
        a.c.push_back(cst[k].data_ptr<T>());
      } else if (train) {
        cst[k] = at::empty({T_, B, H}, opt);  // GRU: hn
        a.hn.push_back(cst[k].data_ptr<T>());
      }
    }

    // Items a claim takes in a forward step: two unit blocks where a thread has several (the second's weight panels
    // are prefetched while the first runs), else one.
    auto fwd_grain = [&](int64_t) -> int64_t { return nub >= 4 * nt ? 2 : 1; };
    // Per-thread accumulators of a group of rows (fwd_units).
    const int64_t per_thread = K * fwd_group_rows<T, KIND>(K) * G * V;
    Tensor scratch = at::empty({std::max<int64_t>(nt, at::get_num_threads()) * per_thread}, opt);
    auto scratch_of = [&](int64_t tid) { return reinterpret_cast<Vec<T>*>(scratch.data_ptr<T>() + tid * per_thread); };

    // The recurrent part of one step with a library GEMM: gates in memory, then the pointwise part over units.
    auto lib_step = [&](int64_t t, int64_t gs, int64_t cp, int64_t cn) {
      const int64_t hs = a.ghs(t);
      const T* hp = a.ghprev(t);
      Tensor hprev = at::from_blob(const_cast<T*>(hp), {B, H}, {hs, 1}, opt);
      for (int64_t k = 0; k < K; ++k) {
        Tensor gk = gx[k][gs];
        Tensor target = KIND == GRU ? gh[k] : gk;
        if (mode == GEMM_ONEDNN) {
          Tensor add = KIND == GRU ? (bh_t[k].defined() ? bh_t[k].expand({B, GH}) : at::zeros({B, GH}, opt)) : gk;
          target.copy_(onednn_linear_add(hprev.contiguous(), add.contiguous(), packed[k]));
        } else if (KIND == GRU) {
          if (bh_t[k].defined())
            at::addmm_out(target, bh_t[k], hprev, whh_lib[k]);
          else
            at::mm_out(target, hprev, whh_lib[k]);
        } else {
          target.addmm_(hprev, whh_lib[k]);
        }
      }
      at::parallel_for(0, nub, 1, [&](int64_t u0, int64_t u1) {
        fwd_units<T, KIND>(a, t, gs, cp, cn, u0, u1, scratch_of(at::get_thread_num()));
      });
    };

    if (train) {  // the input projection of every step, one GEMM per path, then the whole loop
      for (int64_t k = 0; k < K; ++k) {
        Tensor g2 = gx[k].view({T_ * B, GH});
        at::mm_out(g2, x2, wih[k].t());
      }
      if (a.own) {
        run_phases(nt, T_, nub, fwd_grain, [&](int64_t s, int64_t u0, int64_t u1, int64_t tid) {
          const int64_t t = a.time(s);
          fwd_units<T, KIND>(a, t, t, a.slot_prev(t), a.slot_new(t), u0, u1, scratch_of(tid));
        });
      } else {
        for (int64_t s = 0; s < T_; ++s) {
          const int64_t t = a.time(s);
          lib_step(t, t, a.slot_prev(t), a.slot_new(t));
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        saved_act.push_back(gx[k]);
        saved_state.push_back(cst[k]);
      }
    } else {  // inference: the input projection chunk by chunk into one reused buffer per path
      const int64_t nchunks = (T_ + n - 1) / n;
      for (int64_t q = 0; q < nchunks; ++q) {
        const int64_t ci = a.reverse ? nchunks - 1 - q : q;
        const int64_t s0 = ci * n, m = std::min(T_, s0 + n) - s0;
        Tensor xc = x2.narrow(0, s0 * B, m * B);
        for (int64_t k = 0; k < K; ++k) {
          Tensor g2 = gx[k].view({n * B, GH}).narrow(0, 0, m * B);
          at::mm_out(g2, xc, wih[k].t());
        }
        if (a.own) {
          run_phases(nt, m, nub, fwd_grain, [&](int64_t qq, int64_t u0, int64_t u1, int64_t tid) {
            const int64_t tl = a.reverse ? m - 1 - qq : qq;
            fwd_units<T, KIND>(a, s0 + tl, tl, 0, 0, u0, u1, scratch_of(tid));
          });
        } else {
          for (int64_t qq = 0; qq < m; ++qq) {
            const int64_t tl = a.reverse ? m - 1 - qq : qq;
            lib_step(s0 + tl, tl, 0, 0);
          }
        }
      }
    }
    h_n[d].copy_(y[a.reverse ? 0 : T_ - 1].narrow(1, d * H, H));
    if (cell)
      for (int64_t k = 0; k < K; ++k)
        c_n[d].narrow(1, k * H, H).copy_(cst[k][train ? (a.reverse ? 0 : T_) : 0]);
  }
  std::vector<Tensor> out{y, h_n, c_n};
  out.insert(out.end(), saved_act.begin(), saved_act.end());
  out.insert(out.end(), saved_state.begin(), saved_state.end());
  out.insert(out.end(), saved_hm.begin(), saved_hm.end());
  return out;
}

// ---- backward --------------------------------------------------------------------------------------------------
// needs: x, h0, c0, w_ih, w_hh, b_ih, b_hh, peephole.
template <typename T, int KIND>
std::vector<Tensor> backward_impl(const Layer& L, const Tensor& x, const Tensor& h0, const Tensor& c0,
                                  const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                                  const std::vector<Tensor>& b_ih, const std::vector<Tensor>& b_hh,
                                  const std::vector<Tensor>& peep, const Tensor& y, const std::vector<Tensor>& acts,
                                  const std::vector<Tensor>& states, const Tensor& dy, const Tensor& dh_n,
                                  const Tensor& dc_n, const std::vector<bool>& needs, int64_t mode, int64_t threads,
                                  const std::vector<Tensor>& rmask, const std::vector<Tensor>& hms,
                                  const std::vector<Tensor>& zh, const std::vector<Tensor>& zc, double ph,
                                  double pc) {
  constexpr int V = Vec<T>::size();
  constexpr int G = gates<KIND>();
  const int64_t K = L.K, T_ = L.T_, B = L.B, I = L.I, H = L.H, D = L.D, GH = G * H;
  const int64_t nub = (H + V - 1) / V;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, nub));
  const auto opt = x.options();
  const bool cell = KIND != GRU;
  const bool n_x = needs[0], n_h0 = needs[1], n_c0 = needs[2], n_wih = needs[3], n_whh = needs[4],
             n_bih = needs[5], n_bhh = needs[6], n_peep = needs[7];
  const Tensor x2 = x.view({T_ * B, I});
  Tensor dx = n_x ? at::zeros({T_, B, I}, opt) : Tensor();
  Tensor dx2 = n_x ? dx.view({T_ * B, I}) : Tensor();
  Tensor dh0 = n_h0 ? at::empty({D, B, H}, opt) : Tensor();
  Tensor dc0 = cell && n_c0 ? at::empty({D, B, K * H}, opt) : Tensor();
  std::vector<Tensor> out_w;

  for (int64_t d = 0; d < D; ++d) {
    Dir<T> a;
    a.T_ = T_, a.B = B, a.H = H, a.K = K, a.D = D, a.d = d, a.nub = nub;
    a.reverse = d == 1, a.train = true, a.own = mode == GEMM_OWN;
    Tensor h0d = h0[d].contiguous();
    a.h0 = h0d.data_ptr<T>();
    a.y = const_cast<T*>(y.data_ptr<T>());
    const bool masked = !rmask.empty();
    Tensor rmask_d = masked ? rmask[d] : Tensor();
    if (masked) a.rmask = rmask_d.data_ptr<T>();
    a.zh = zh.empty() ? nullptr : zh[d].data_ptr<T>();
    a.zc = zc.empty() ? nullptr : zc[d].data_ptr<T>();
    a.ph = static_cast<T>(ph), a.pc = static_cast<T>(pc);
    a.dy = dy.data_ptr<T>();
    std::vector<Tensor> keep, dgx(K), dgh(K), dcs(K), dps(K), dbx(K), dbh(K), whh_lib(K), packed(K);
    for (int64_t k = 0; k < K; ++k) {
      const Tensor& act = acts[d * K + k];
      const Tensor& st = states[d * K + k];
      a.gx.push_back(const_cast<T*>(act.data_ptr<T>()));
      if (cell)
        a.c.push_back(const_cast<T*>(st.data_ptr<T>()));
      else
        a.hn.push_back(const_cast<T*>(st.data_ptr<T>()));
      Tensor whk = w_hh[d].narrow(0, k * GH, GH);
      if (a.own) {
        Tensor p = pack_bwd(whk, G, H, V);
        keep.push_back(p);
        a.pb.push_back(p.data_ptr<T>());
      } else {
        whh_lib[k] = whk.clone(at::MemoryFormat::Contiguous);  // (G H, H)
        if (mode == GEMM_ONEDNN) packed[k] = onednn_pack(whk.t().contiguous(), B);
      }
      a.peep.push_back(KIND == PEEPHOLE ? (keep.push_back(own_rows(peep[d], k, 3 * H)), keep.back().data_ptr<T>())
                                        : nullptr);
      dgx[k] = at::empty({T_, B, GH}, opt);
      a.dgx.push_back(dgx[k].data_ptr<T>());
      if (KIND == GRU) {
        dgh[k] = at::empty({T_, B, GH}, opt);
        a.dgh.push_back(dgh[k].data_ptr<T>());
      }
      if (cell) {
        dcs[k] = dc_n[d].narrow(1, k * H, H).clone(at::MemoryFormat::Contiguous);
        a.dc.push_back(dcs[k].data_ptr<T>());
      }
      if (KIND == PEEPHOLE) {
        dps[k] = at::zeros({3 * H}, opt);
        a.dpeep.push_back(dps[k].data_ptr<T>());
      }
      const bool need_bx = KIND == GRU ? b_ih[d].defined() && n_bih
                                       : (b_ih[d].defined() && n_bih) || (b_hh[d].defined() && n_bhh);
      const bool need_bh = KIND == GRU && b_hh[d].defined() && n_bhh;
      dbx[k] = need_bx ? at::zeros({GH}, opt) : Tensor();
      dbh[k] = need_bh ? at::zeros({GH}, opt) : Tensor();
      a.dbx.push_back(need_bx ? dbx[k].data_ptr<T>() : nullptr);
      a.dbh.push_back(need_bh ? dbh[k].data_ptr<T>() : nullptr);
    }
    const int64_t t_first = a.reverse ? 0 : T_ - 1;
    Tensor dh = (dh_n[d] + dy[t_first].narrow(1, d * H, H)).contiguous();  // (B, H)
    a.dh = dh.data_ptr<T>();
    // the direct term of dh_prev: GRU's z h, zoneout's kept h (written by every step's pointwise part)
    Tensor dir = KIND == GRU || a.zone_h() ? at::empty({B, H}, opt) : Tensor();
    a.dir = dir.defined() ? dir.data_ptr<T>() : nullptr;
    auto dy_prev = [&](int64_t s) -> const T* {  // forward step s: dy at the time of its h_prev; none for h_0
      if (s == 0) return nullptr;
      const int64_t tp = a.reverse ? a.time(s) + 1 : a.time(s) - 1;
      return a.dy + tp * B * a.ys() + d * H;
    };

    if (a.own) {
      // phases 2s (pointwise part) and 2s + 1 (dh_prev GEMM) of backward step s, walking the direction's steps
      // in reverse
      auto grain = [&](int64_t p) -> int64_t { return p % 2 ? BWD_NR : 1; };
      run_phases(nt, 2 * T_, nub, grain, [&](int64_t p, int64_t u0, int64_t u1, int64_t) {
        const int64_t st = T_ - 1 - p / 2;
        const int64_t t = a.time(st);
        if (p % 2 == 0) {
          for (int64_t u = u0; u < u1; ++u) bwd_pointwise<T, KIND>(a, t, u);
        } else {
          bwd_gemm_units<T, KIND>(a, t, dy_prev(st), u0, u1);
        }
      });
    } else {
      for (int64_t s = 0; s < T_; ++s) {
        const int64_t st = T_ - 1 - s;
        const int64_t t = a.time(st);
        at::parallel_for(0, nub, 1, [&](int64_t u0, int64_t u1) {
          for (int64_t u = u0; u < u1; ++u) bwd_pointwise<T, KIND>(a, t, u);
        });
        const T* dyp = dy_prev(st);
        Tensor init = dyp ? at::from_blob(const_cast<T*>(dyp), {B, H}, {a.ys(), 1}, opt) : Tensor();
        // recurrent dropout: the products go into their own sum, masked, then the direct terms are added
        Tensor sum = masked ? at::zeros({B, H}, opt) : dh;
        if (!masked) {
          if (init.defined())
            dh.copy_(init);
          else
            dh.zero_();
          if (dir.defined()) dh.add_(dir);
        }
        for (int64_t k = 0; k < K; ++k) {
          Tensor g = (KIND == GRU ? dgh[k] : dgx[k])[t];
          if (mode == GEMM_ONEDNN)
            sum.copy_(onednn_linear_add(g, sum, packed[k]));
          else
            sum.addmm_(g, whh_lib[k]);
        }
        if (masked) {
          dh.copy_(sum * rmask_d);
          if (init.defined()) dh.add_(init);
          if (dir.defined()) dh.add_(dir);
        }
      }
    }
    if (n_h0) dh0[d].copy_(dh);
    if (cell && n_c0)
      for (int64_t k = 0; k < K; ++k) dc0[d].narrow(1, k * H, H).copy_(dcs[k]);

    keep.clear();  // the packed panels are not needed any more: free them before the weight gradients
    whh_lib.clear();
    packed.clear();

    // Gradients of the parameters and of x: one GEMM per path over every step. Each path's product goes into a
    // buffer of its own (the same shape and alignment for every path), copied into the path's rows of the
    // gradient before the next path's is made.
    const int64_t I_ = x2.size(1);
    Tensor gwi = n_wih ? at::empty({K * GH, I_}, opt) : Tensor();
    Tensor gwh = n_whh ? at::empty({K * GH, H}, opt) : Tensor();
    std::vector<Tensor> gb_x, gb_h, gp;
    for (int64_t k = 0; k < K; ++k) {
      Tensor gxk = dgx[k].view({T_ * B, GH});
      Tensor ghk = (KIND == GRU ? dgh[k] : dgx[k]).view({T_ * B, GH});
      // (X^T dG)^T rather than dG^T X: MKL runs the tall-skinny product ~1.4x faster this way round
      if (n_wih) gwi.narrow(0, k * GH, GH).copy_(at::mm(x2.t(), gxk).t());
      if (n_whh && masked) {  // recurrent dropout: W_hh multiplied h_prev * mask, saved per time by the forward
        gwh.narrow(0, k * GH, GH).copy_(at::mm(hms[d].view({T_ * B, H}).t(), ghk).t());
      } else if (n_whh) {
        // h_prev of time t: y at t-1 (forward) / t+1 (reverse), h_0 at the first step
        Tensor yd = y.narrow(2, d * H, H);
        Tensor first = a.reverse ? ghk.narrow(0, (T_ - 1) * B, B) : ghk.narrow(0, 0, B);
        Tensor g = at::mm(h0d.t(), first);  // (H, G H)
        if (T_ > 1) {
          Tensor rest = a.reverse ? ghk.narrow(0, 0, (T_ - 1) * B) : ghk.narrow(0, B, (T_ - 1) * B);
          Tensor hp = (a.reverse ? yd.narrow(0, 1, T_ - 1) : yd.narrow(0, 0, T_ - 1)).reshape({(T_ - 1) * B, H});
          g.addmm_(hp.t(), rest);
        }
        gwh.narrow(0, k * GH, GH).copy_(g.t());
      }
      if (dbx[k].defined()) gb_x.push_back(dbx[k]);
      if (dbh[k].defined()) gb_h.push_back(dbh[k]);
      if (KIND == PEEPHOLE && n_peep) gp.push_back(dps[k]);
      if (n_x) {
        Tensor wk = w_ih[d].narrow(0, k * GH, GH);
        dx2.addmm_(gxk, wk);
      }
    }
    Tensor gbi, gbh;
    if (KIND == GRU) {
      if (!gb_x.empty()) gbi = at::cat(gb_x);
      if (!gb_h.empty()) gbh = at::cat(gb_h);
    } else if (!gb_x.empty()) {
      Tensor gb = at::cat(gb_x);
      if (b_ih[d].defined() && n_bih) gbi = gb;
      if (b_hh[d].defined() && n_bhh) gbh = gbi.defined() ? gb.clone() : gb;
    }
    Tensor gpe = !gp.empty() ? at::cat(gp) : Tensor();
    out_w.insert(out_w.end(), {gwi, gwh, gbi, gbh, gpe});
  }
  std::vector<Tensor> out{dx, dh0, dc0};
  out.insert(out.end(), out_w.begin(), out_w.end());
  return out;
}

// ---- layer norm (Ba et al. 2016, haste's LayerNormLSTM form) ----------------------------------------------------
// Per path k: a_k = LN_ih(W_ih,k x) + LN_hh(W_hh,k h_{t-1}) + b_k, each LN over the path's whole G H row with its
// own gain and shift (eps = 1e-5); LSTM kinds output o_k tanh(LN_c(c_k)) (the carried c_k is not normalised); the
// GRU's n reads r (LN_hh(W_hn h) + b_hn). An LN needs the whole row of the step's recurrent product before the
// pointwise part, so a step is two phases of one parallel region (run_phases_var): every path's recurrent product
// on the forward panels (ln_gemm_units, unit blocks shared by the threads), then every batch row's normalisations
// and pointwise step (rows shared by the threads). The input side's LN runs after the input GEMM, over every step
// in training, chunk by chunk in inference. The BPTT mirrors it: per step the rows' pointwise and LN backward (the
// gains', shifts', biases' and peepholes' gradients summed per thread in that pass), then dh_prev = sum_k dG_k
// W_hh,k. Symmetry: every path by the same code on same-shaped buffers of its own.
constexpr double LN_EPS = 1e-5;

// Sum of the n values of a row, lanes beyond the row masked to 0, lane sums added in lane order.
template <typename T>
inline T row_sum(const Vec<T>& s) {
  constexpr int V = Vec<T>::size();
  T lanes[V];
  s.store(lanes);
  T out = 0;
  for (int l = 0; l < V; ++l) out += lanes[l];
  return out;
}

// Mean and 1 / sqrt(biased variance + eps) of a row of n (two passes, as torch's layer_norm defines them).
template <typename T>
inline void row_moments(const T* x, int64_t n, T& mean, T& rstd) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  const VT zero(T(0));
  VT s(T(0));
  for (int64_t j = 0; j < n; j += V) s = s + VT::set(zero, VT::loadu(x + j, tail(n, j, V)), tail(n, j, V));
  mean = row_sum<T>(s) / T(n);
  const VT mv(mean);
  VT q(T(0));
  for (int64_t j = 0; j < n; j += V) {
    const int cnt = tail(n, j, V);
    const VT dlt = VT::set(zero, VT::loadu(x + j, cnt) - mv, cnt);
    q = at::vec::fmadd(dlt, dlt, q);
  }
  rstd = T(1) / std::sqrt(row_sum<T>(q) / T(n) + T(LN_EPS));
}

// xhat = (x - mean) rstd, row of n (may be in place).
template <typename T>
inline void row_normalise(const T* x, int64_t n, T mean, T rstd, T* xhat) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  const VT mv(mean), rv(rstd);
  for (int64_t j = 0; j < n; j += V) {
    const int cnt = tail(n, j, V);
    ((VT::loadu(x + j, cnt) - mv) * rv).store(xhat + j, cnt);
  }
}

// LN backward of a row: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gain.
template <typename T>
inline void row_ln_backward(const T* dy, const T* gain, const T* xhat, T rstd, int64_t n, T* dx) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  const VT zero(T(0));
  VT s(T(0)), sx(T(0));
  for (int64_t j = 0; j < n; j += V) {
    const int cnt = tail(n, j, V);
    const VT g = VT::set(zero, VT::loadu(dy + j, cnt) * VT::loadu(gain + j, cnt), cnt);
    s = s + g;
    sx = at::vec::fmadd(g, VT::set(zero, VT::loadu(xhat + j, cnt), cnt), sx);
  }
  const VT m1(row_sum<T>(s) / T(n)), m2(row_sum<T>(sx) / T(n)), rv(rstd);
  for (int64_t j = 0; j < n; j += V) {
    const int cnt = tail(n, j, V);
    const VT g = VT::loadu(dy + j, cnt) * VT::loadu(gain + j, cnt);
    (rv * (g - m1 - VT::loadu(xhat + j, cnt) * m2)).store(dx + j, cnt);
  }
}

// The operands of one direction with layer norm (per path k); Dir<T> holds the shared ones (h, y, masks).
template <typename T>
struct LnDir {
  std::vector<T*> act;          // LN_ih(x W_ih^T) + b; training: (T, B, G H), overwritten by the activations;
                                // inference: (n, B, G H), the chunk of steps from act_t0
  std::vector<T*> xih, xhh;     // training: (T, B, G H) normalised input / recurrent products
  std::vector<T*> rih, rhh;     // training: (T, B) their 1 / std
  std::vector<T*> graw;         // this step's h W_hh^T, rows of graw_stride (read raw; training saves xhh)
  int64_t graw_stride = 0;      // K G H: every path's product from one GEMM, path k at columns k G H
  int64_t act_t0 = 0;           // the first step act holds (inference: the input side chunk by chunk)
  std::vector<const T*> gih, bih, ghh, bhh, gc, bc;  // gains and shifts (G H; c: H)
  std::vector<T*> c1, xc, rc;   // LSTM kinds, training: (T, B, H) un-zoned new cell, its normalised value, (T, B)
  std::vector<T*> hn;           // GRU, training: (T, B, H) LN_hh(W_hn h)_n + b_hn
  // backward
  std::vector<T*> dgx;          // (T, B, G H): gradient of x W_ih^T (first of LN_ih's output, then through LN_ih)
  std::vector<T*> dgh;          // (T, B, G H): gradient of h W_hh^T
  // per thread: a (G H + H) scratch row (GRU: LN_hh's output's gradient; LSTM kinds: LN_c's output's), and, when
  // the parameters' gradients are needed, per path the row sums ln_acc_size() (see ln_acc_*), or null
  T* scratch = nullptr;
  T* acc = nullptr;
  int64_t acc_stride = 0;       // per thread: K ln_acc_size()
};

// The per-thread sums of one path over the rows of every step, which give the LN parameters', biases' and
// peepholes' gradients after the loop: offsets in units of G H / H.
template <int G>
constexpr int64_t ln_acc_size(int64_t H) { return 4 * G * H + 5 * H; }
//   [0, GH) sum da  |  [GH, 2GH) sum da xih  |  [2GH, 3GH) sum dn  |  [3GH, 4GH) sum dn xhh
//   then H each: sum dch, sum dch xc, sum da_i c_prev, sum da_f c_prev, sum da_o c1 (peephole)

template <typename T>
inline void row_acc(T* s, const T* v, int64_t n) {  // s += v
  using VT = Vec<T>;
  constexpr int V = VT::size();
  for (int64_t j = 0; j < n; j += V) {
    const int cnt = tail(n, j, V);
    (VT::loadu(s + j, cnt) + VT::loadu(v + j, cnt)).store(s + j, cnt);
  }
}

template <typename T>
inline void row_acc_prod(T* s, const T* v, const T* w, int64_t n) {  // s += v w
  using VT = Vec<T>;
  constexpr int V = VT::size();
  for (int64_t j = 0; j < n; j += V) {
    const int cnt = tail(n, j, V);
    at::vec::fmadd(VT::loadu(v + j, cnt), VT::loadu(w + j, cnt), VT::loadu(s + j, cnt)).store(s + j, cnt);
  }
}

// Forward of one batch row at time t, every path: the recurrent product's LN, the kind's step, the output LN
// (LSTM kinds), the paths' sum (mean for the GRU), zoneout and the recurrent-dropout product of the next step.
// buf: 2 H scratch of this thread.
template <typename T, int KIND>
void ln_fwd_row(const Dir<T>& a, const LnDir<T>& l, int64_t t, int64_t cp, int64_t cn, int64_t b, T* buf) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  const int64_t H = a.H, GH = G * H, B = a.B, rowi = t * B + b;
  const VT one(T(1));
  T* hsum = buf;
  for (int64_t k = 0; k < a.K; ++k) {
    T* raw = l.graw[k] + b * l.graw_stride;
    T mean, rstd;
    row_moments<T>(raw, GH, mean, rstd);
    T* xh = a.train ? l.xhh[k] + rowi * GH : nullptr;  // training: the normalised row, saved
    if (a.train) {
      row_normalise<T>(raw, GH, mean, rstd, xh);
      l.rhh[k][rowi] = rstd;
    }
    const VT mv(mean), rv(rstd);
    T* row = l.act[k] + ((t - l.act_t0) * B + b) * GH;
    const T* gh = l.ghh[k];
    const T* bhh = l.bhh[k];
    auto lnh = [&](int64_t off, int cnt) {  // LN_hh's output at offset off of the row (inference: normalised here)
      const VT xv = a.train ? VT::loadu(xh + off, cnt) : (VT::loadu(raw + off, cnt) - mv) * rv;
      return at::vec::fmadd(VT::loadu(gh + off, cnt), xv, VT::loadu(bhh + off, cnt));
    };
    if constexpr (KIND == GRU) {
      const T* hp = a.hprev(t) + b * a.hs(t);
      for (int64_t j0 = 0; j0 < H; j0 += V) {
        const int cnt = tail(H, j0, V);
        VT hr = lnh(j0, cnt), hz = lnh(H + j0, cnt), hnv = lnh(2 * H + j0, cnt);
        if (a.bh[k]) {
          hr = hr + VT::loadu(a.bh[k] + j0, cnt);
          hz = hz + VT::loadu(a.bh[k] + H + j0, cnt);
          hnv = hnv + VT::loadu(a.bh[k] + 2 * H + j0, cnt);
        }
        const VT r = v_sigmoid<T>(VT::loadu(row + j0, cnt) + hr);
        const VT z = v_sigmoid<T>(VT::loadu(row + H + j0, cnt) + hz);
        const VT n = v_tanh<T>(VT::loadu(row + 2 * H + j0, cnt) + r * hnv);
        const VT out = (one - z) * n + z * VT::loadu(hp + j0, cnt);
        (k == 0 ? out : VT::loadu(hsum + j0, cnt) + out).store(hsum + j0, cnt);
        if (a.train) {
          r.store(row + j0, cnt);
          z.store(row + H + j0, cnt);
          n.store(row + 2 * H + j0, cnt);
          hnv.store(l.hn[k] + rowi * H + j0, cnt);
        }
      }
    } else {
      const T* c0p = a.c[k] + cp * B * H + b * H;
      T* cnp = a.c[k] + cn * B * H + b * H;
      T* c1 = a.train && KIND == PEEPHOLE ? l.c1[k] + rowi * H : buf + H;  // (saved for the peephole's gradient)
      for (int64_t j0 = 0; j0 < H; j0 += V) {
        const int cnt = tail(H, j0, V);
        VT ai = VT::loadu(row + j0, cnt) + lnh(j0, cnt);
        VT af = VT::loadu(row + H + j0, cnt) + lnh(H + j0, cnt);
        const VT ag = VT::loadu(row + 2 * H + j0, cnt) + lnh(2 * H + j0, cnt);
        VT ao = VT::loadu(row + 3 * H + j0, cnt) + lnh(3 * H + j0, cnt);
        const VT c0 = VT::loadu(c0p + j0, cnt);
        if constexpr (KIND == PEEPHOLE) {
          ai = at::vec::fmadd(VT::loadu(a.peep[k] + j0, cnt), c0, ai);
          af = at::vec::fmadd(VT::loadu(a.peep[k] + H + j0, cnt), c0, af);
        }
        const VT i = v_sigmoid<T>(ai), f = v_sigmoid<T>(af), g = v_tanh<T>(ag);
        const VT cv = at::vec::fmadd(f, c0, i * g);
        if constexpr (KIND == PEEPHOLE) ao = at::vec::fmadd(VT::loadu(a.peep[k] + 2 * H + j0, cnt), cv, ao);
        const VT o = v_sigmoid<T>(ao);
        cv.store(c1 + j0, cnt);
        if (a.zone_c()) {
          const VT kc = a.keep_c(t, b, k, j0, cnt);
          (kc * c0 + (one - kc) * cv).store(cnp + j0, cnt);
        } else {
          cv.store(cnp + j0, cnt);
        }
        if (a.train) {
          i.store(row + j0, cnt);
          f.store(row + H + j0, cnt);
          g.store(row + 2 * H + j0, cnt);
        }
        o.store(row + 3 * H + j0, cnt);  // (inference: the row is this step's scratch)
      }
      T cm, cr;
      row_moments<T>(c1, H, cm, cr);
      T* xc = a.train ? l.xc[k] + rowi * H : nullptr;
      if (a.train) {
        row_normalise<T>(c1, H, cm, cr, xc);
        l.rc[k][rowi] = cr;
      }
      const VT cmv(cm), crv(cr);
      for (int64_t j0 = 0; j0 < H; j0 += V) {
        const int cnt = tail(H, j0, V);
        const VT xcv = a.train ? VT::loadu(xc + j0, cnt) : (VT::loadu(c1 + j0, cnt) - cmv) * crv;
        const VT cn_ = at::vec::fmadd(VT::loadu(l.gc[k] + j0, cnt), xcv, VT::loadu(l.bc[k] + j0, cnt));
        const VT out = VT::loadu(row + 3 * H + j0, cnt) * v_tanh<T>(cn_);
        (k == 0 ? out : VT::loadu(hsum + j0, cnt) + out).store(hsum + j0, cnt);
      }
    }
  }
  const T* hp = a.hprev(t) + b * a.hs(t);
  T* yr = a.y + t * B * a.ys() + a.d * H + b * a.ys();
  const int64_t tn = a.tnext(t);
  const bool next = a.rmask && tn >= 0 && tn < a.T_;
  for (int64_t j0 = 0; j0 < H; j0 += V) {
    const int cnt = tail(H, j0, V);
    VT hv = VT::loadu(hsum + j0, cnt);
    if (KIND == GRU && a.K > 1) hv = hv / VT(T(a.K));
    if (a.zone_h()) {
      const VT kh = a.keep_h(t, b, j0, cnt);
      hv = kh * VT::loadu(hp + j0, cnt) + (one - kh) * hv;
    }
    hv.store(yr + j0, cnt);
    if (next) (hv * VT::loadu(a.rmask + b * H + j0, cnt)).store(a.hm + a.hm_slot(tn) * B * H + b * H + j0, cnt);
  }
}

// Backward of one batch row at time t, every path, on thread tid: from dh (the carried h's gradient) and each
// path's carried dc, the gradients of x W_ih^T (dgx, through LN_ih) and of h W_hh^T (dgh, through LN_hh), the
// direct term of dh_prev (a.dir) and dc_prev (in place of dc); the row's terms of the parameters' sums (l.acc).
// dgx and dgh may be the saved xih and xhh: each row of those is read for the last time here, before its
// gradient overwrites it.
template <typename T, int KIND>
void ln_bwd_row(const Dir<T>& a, const LnDir<T>& l, int64_t t, int64_t b, int64_t tid) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  const int64_t H = a.H, GH = G * H, B = a.B, rowi = t * B + b;
  const VT one(T(1)), zero(T(0));
  const T* dhr = a.dh + b * H;
  T* scr = l.scratch + tid * (2 * GH + H);
  for (int64_t k = 0; k < a.K; ++k) {
    const T* row = l.act[k] + rowi * GH;
    const T* xhh = l.xhh[k] + rowi * GH;
    const T* xih = l.xih[k] + rowi * GH;
    T* da = scr;  // the gradient of LN_ih's output (+ b): the pre-activations'
    T* acc = l.acc ? l.acc + tid * l.acc_stride + k * ln_acc_size<G>(H) : nullptr;
    if constexpr (KIND == GRU) {
      T* dgn = scr + GH;  // LN_hh's output's gradient
      const T* hp = a.hprev(t) + b * a.hs(t);
      const T* hn = l.hn[k] + rowi * H;
      for (int64_t j0 = 0; j0 < H; j0 += V) {
        const int cnt = tail(H, j0, V);
        const VT dhc = VT::loadu(dhr + j0, cnt);
        const VT kh = a.zone_h() ? a.keep_h(t, b, j0, cnt) : zero;
        const VT dh = a.zone_h() ? (one - kh) * dhc : dhc;
        const VT dout = a.K > 1 ? dh / VT(T(a.K)) : dh;
        const VT r = VT::loadu(row + j0, cnt), z = VT::loadu(row + H + j0, cnt), n = VT::loadu(row + 2 * H + j0, cnt);
        const VT dn = dout * (one - z);
        const VT dz = dout * (VT::loadu(hp + j0, cnt) - n);
        const VT dan = dn * (one - n * n);
        const VT dar = dan * VT::loadu(hn + j0, cnt) * r * (one - r);
        const VT daz = dz * z * (one - z);
        dar.store(da + j0, cnt);
        daz.store(da + H + j0, cnt);
        dan.store(da + 2 * H + j0, cnt);
        dar.store(dgn + j0, cnt);
        daz.store(dgn + H + j0, cnt);
        (dan * r).store(dgn + 2 * H + j0, cnt);
        VT direct = dout * z;
        if (k > 0)
          direct = VT::loadu(a.dir + b * H + j0, cnt) + direct;
        else if (a.zone_h())
          direct = kh * dhc + direct;
        direct.store(a.dir + b * H + j0, cnt);
      }
      if (acc) {
        row_acc<T>(acc + 2 * GH, dgn, GH);
        row_acc_prod<T>(acc + 3 * GH, dgn, xhh, GH);
      }
      row_ln_backward<T>(dgn, l.ghh[k], xhh, l.rhh[k][rowi], GH, l.dgh[k] + rowi * GH);
    } else {
      const T* c0p = a.c[k] + a.slot_prev(t) * B * H + b * H;
      const T* xc = l.xc[k] + rowi * H;
      T* dch = scr + GH;  // LN_c's output's gradient
      T* dcb = a.dc[k] + b * H;
      T* hacc = acc ? acc + 4 * GH : nullptr;  // the H-sized sums
      // pass 1: the output's gradients (o and LN_c's output), and LN_c's two row sums
      VT s(T(0)), sx(T(0));
      for (int64_t j0 = 0; j0 < H; j0 += V) {
        const int cnt = tail(H, j0, V);
        VT dh = VT::loadu(dhr + j0, cnt);
        if (a.zone_h()) {
          const VT kh = a.keep_h(t, b, j0, cnt);
          if (k == 0) (kh * dh).store(a.dir + b * H + j0, cnt);
          dh = (one - kh) * dh;
        }
        const VT gcv = VT::loadu(l.gc[k] + j0, cnt), xcv = VT::loadu(xc + j0, cnt);
        const VT tc = v_tanh<T>(at::vec::fmadd(gcv, xcv, VT::loadu(l.bc[k] + j0, cnt)));
        const VT o = VT::loadu(row + 3 * H + j0, cnt);
        (dh * tc * o * (one - o)).store(da + 3 * H + j0, cnt);
        const VT dc_hat = dh * o * (one - tc * tc);
        dc_hat.store(dch + j0, cnt);
        if (hacc) {
          (VT::loadu(hacc + j0, cnt) + dc_hat).store(hacc + j0, cnt);
          at::vec::fmadd(dc_hat, xcv, VT::loadu(hacc + H + j0, cnt)).store(hacc + H + j0, cnt);
        }
        const VT g = VT::set(zero, dc_hat * gcv, cnt);
        s = s + g;
        sx = at::vec::fmadd(g, VT::set(zero, xcv, cnt), sx);
      }
      const VT m1(row_sum<T>(s) / T(H)), m2(row_sum<T>(sx) / T(H)), rv(l.rc[k][rowi]);
      // pass 2: the cell's gradient, the gates', dc_prev
      for (int64_t j0 = 0; j0 < H; j0 += V) {
        const int cnt = tail(H, j0, V);
        const VT g = VT::loadu(dch + j0, cnt) * VT::loadu(l.gc[k] + j0, cnt);
        VT dc = rv * (g - m1 - VT::loadu(xc + j0, cnt) * m2);
        const VT dcc = VT::loadu(dcb + j0, cnt);
        const VT kc = a.zone_c() ? a.keep_c(t, b, k, j0, cnt) : zero;
        dc = dc + (a.zone_c() ? (one - kc) * dcc : dcc);
        const VT dao = VT::loadu(da + 3 * H + j0, cnt);
        if constexpr (KIND == PEEPHOLE) dc = at::vec::fmadd(dao, VT::loadu(a.peep[k] + 2 * H + j0, cnt), dc);
        const VT i = VT::loadu(row + j0, cnt), f = VT::loadu(row + H + j0, cnt), gg = VT::loadu(row + 2 * H + j0, cnt);
        const VT c0 = VT::loadu(c0p + j0, cnt);
        const VT dai = dc * gg * i * (one - i);
        const VT daf = dc * c0 * f * (one - f);
        const VT dag = dc * i * (one - gg * gg);
        VT dcp = dc * f;
        if constexpr (KIND == PEEPHOLE) {
          dcp = at::vec::fmadd(dai, VT::loadu(a.peep[k] + j0, cnt), dcp);
          dcp = at::vec::fmadd(daf, VT::loadu(a.peep[k] + H + j0, cnt), dcp);
          if (hacc) {
            at::vec::fmadd(dai, c0, VT::loadu(hacc + 2 * H + j0, cnt)).store(hacc + 2 * H + j0, cnt);
            at::vec::fmadd(daf, c0, VT::loadu(hacc + 3 * H + j0, cnt)).store(hacc + 3 * H + j0, cnt);
            at::vec::fmadd(dao, VT::loadu(l.c1[k] + rowi * H + j0, cnt), VT::loadu(hacc + 4 * H + j0, cnt))
                .store(hacc + 4 * H + j0, cnt);
          }
        }
        if (a.zone_c()) dcp = kc * dcc + dcp;
        dai.store(da + j0, cnt);
        daf.store(da + H + j0, cnt);
        dag.store(da + 2 * H + j0, cnt);
        dcp.store(dcb + j0, cnt);
      }
      if (acc) row_acc_prod<T>(acc + 3 * GH, da, xhh, GH);  // (sum dn = sum da: not kept twice)
      row_ln_backward<T>(da, l.ghh[k], xhh, l.rhh[k][rowi], GH, l.dgh[k] + rowi * GH);
    }
    if (acc) {
      row_acc<T>(acc, da, GH);
      row_acc_prod<T>(acc + GH, da, xih, GH);
    }
    row_ln_backward<T>(da, l.gih[k], xih, l.rih[k][rowi], GH, l.dgx[k] + rowi * GH);  // through LN_ih
  }
}

// Rows [0, n) in parallel (torch's thread pool), at least 4 rows a task.
template <typename F>
void for_rows(int64_t n, int64_t threads, const F& f) {
  if (threads <= 1 || n < 8) {
    for (int64_t b = 0; b < n; ++b) f(b, 0);
    return;
  }
  at::parallel_for(0, n, std::max<int64_t>(4, (n + threads - 1) / threads), [&](int64_t b0, int64_t b1) {
    const int64_t tid = at::get_thread_num();
    for (int64_t b = b0; b < b1; ++b) f(b, tid);
  });
}

// Layer norm's recurrent products of one step: graw[b, k G H + g H + j] = sum_m h[b, m] W_hh,k^T[m, g H + j],
// for every path k and row b, on the forward panels (the register-blocked GEMM of the loop without layer norm;
// one panel, a unit block's (H, G, V), stays in L2 while the rows stream through it). Unit blocks are shared by
// the threads; every sum runs over m in order, so identical paths get identical products.
template <typename T, int G, int M>
inline void ln_gemm_block(const T* h, int64_t hs, const T* w, int64_t H, int64_t rem, Vec<T>* acc) {
  if constexpr (M >= 1) {
    if (rem == M) {
      for (int i = 0; i < M * G; ++i) acc[i] = Vec<T>(T(0));
      fwd_gemm<T, G, M>(h, hs, w, H, acc);
    } else {
      ln_gemm_block<T, G, M - 1>(h, hs, w, H, rem, acc);
    }
  }
}

template <typename T, int KIND>
void ln_gemm_units(const T* h, int64_t hs, int64_t B, int64_t H, const std::vector<const T*>& pf, T* graw,
                   int64_t u0, int64_t u1) {
  using VT = Vec<T>;
  constexpr int V = VT::size();
  constexpr int G = gates<KIND>();
  constexpr int MR = fwd_mr<KIND>();
  const int64_t K = static_cast<int64_t>(pf.size()), GH = G * H;
  VT acc[MR * G];
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t j0 = u * V;
    const int cnt = tail(H, j0, V);
    for (int64_t k = 0; k < K; ++k) {
      const T* w = pf[k] + u * H * G * V;
      const int64_t nb = (B + MR - 1) / MR;  // register blocks of balanced sizes
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t r0 = B * i / nb, r1 = B * (i + 1) / nb;
        ln_gemm_block<T, G, MR>(h + r0 * hs, hs, w, H, r1 - r0, acc);
        for (int64_t r = r0; r < r1; ++r)
          for (int g = 0; g < G; ++g) acc[(r - r0) * G + g].store(graw + r * K * GH + k * GH + g * H + j0, cnt);
      }
    }
  }
}

// ln: per direction 6 tensors (gain and shift of LN_ih, LN_hh (G H each per path), LN_c (H per path; undefined
// for the GRU)). Returns y, h_n, c_n, then in training per direction and path the saved tensors (ln_saved()),
// then per direction with recurrent dropout the masked h_prev of every step.
constexpr int LN_SAVED = 9;  // act, xih, rih, xhh, rhh, c1 / hn, xc, rc, carried c (undefined where absent)

template <typename T, int KIND>
std::vector<Tensor> ln_forward_impl(const Layer& L, const Tensor& x, const Tensor& h0, const Tensor& c0,
                                    const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                                    const std::vector<Tensor>& b_ih, const std::vector<Tensor>& b_hh,
                                    const std::vector<Tensor>& peep, const std::vector<Tensor>& ln, bool train,
                                    int64_t threads, const std::vector<Tensor>& rmask, const std::vector<Tensor>& zh,
                                    const std::vector<Tensor>& zc, double ph, double pc) {
  constexpr int G = gates<KIND>();
  const int64_t K = L.K, T_ = L.T_, B = L.B, I = L.I, H = L.H, D = L.D, GH = G * H;
  const auto opt = x.options();
  const bool cell = KIND != GRU;
  Tensor y = at::empty({T_, B, D * H}, opt);
  Tensor h_n = at::empty({D, B, H}, opt);
  Tensor c_n = cell ? at::empty({D, B, K * H}, opt) : Tensor();
  std::vector<Tensor> saved, saved_hm;
  const Tensor x2 = x.view({T_ * B, I});
  const int64_t nthr = std::max<int64_t>(threads, at::get_num_threads());
  Tensor scratch = at::empty({nthr, 2 * H}, opt);
  // steps of the input side at a time: all in training; in inference chunks of about 512 rows, one buffer
  const int64_t n = train ? T_ : std::max<int64_t>(1, std::min<int64_t>(T_, 512 / std::max<int64_t>(B, 1)));
  for (int64_t d = 0; d < D; ++d) {
    Dir<T> a;
    LnDir<T> l;
    a.T_ = T_, a.B = B, a.H = H, a.K = K, a.D = D, a.d = d, a.nub = 0;
    a.reverse = d == 1, a.train = train, a.own = false;
    Tensor h0d = h0[d].contiguous();
    a.h0 = h0d.data_ptr<T>();
    a.y = y.data_ptr<T>();
    Tensor hm;
    if (!rmask.empty()) {
      a.rmask = rmask[d].data_ptr<T>();
      hm = at::empty({train ? T_ : 2, B, H}, opt);
      a.hm = hm.data_ptr<T>();
      hm[a.hm_slot(a.reverse ? T_ - 1 : 0)].copy_(h0d * rmask[d]);
      if (train) saved_hm.push_back(hm);
    }
    a.zh = zh.empty() ? nullptr : zh[d].data_ptr<T>();
    a.zc = zc.empty() ? nullptr : zc[d].data_ptr<T>();
    a.ph = static_cast<T>(ph), a.pc = static_cast<T>(pc);
    const std::vector<Tensor> prep = prepare_dir<T, KIND>(K, H, w_ih[d], w_hh[d], b_ih[d], b_hh[d], peep[d], true);
    std::vector<Tensor> keep, cells, acts;
    std::vector<const T*> bxs;
    std::vector<const T*> pf;  // every path's W_hh^T in forward panels: the recurrent products (ln_gemm_units)
    Tensor graw = at::empty({B, K * GH}, opt);
    l.graw_stride = K * GH;
    for (int64_t k = 0; k < K; ++k) {
      const Tensor& bx = prep[k * 5 + 1];
      pf.push_back(prep[k * 5 + 4].data_ptr<T>());
      keep.insert(keep.end(), {prep[k * 5 + 2], prep[k * 5 + 3]});
      a.bh.push_back(prep[k * 5 + 2].defined() ? prep[k * 5 + 2].data_ptr<T>() : nullptr);
      a.peep.push_back(prep[k * 5 + 3].defined() ? prep[k * 5 + 3].data_ptr<T>() : nullptr);
      l.graw.push_back(graw.data_ptr<T>() + k * GH);
      for (int j = 0; j < 6; ++j) {
        const Tensor& p = ln[d * 6 + j];
        if (!p.defined()) {
          keep.push_back(Tensor());
          continue;
        }
        keep.push_back(own_rows(p, k, j < 4 ? GH : H));
      }
      const size_t o = keep.size() - 6;
      l.gih.push_back(keep[o].data_ptr<T>());
      l.bih.push_back(keep[o + 1].data_ptr<T>());
      l.ghh.push_back(keep[o + 2].data_ptr<T>());
      l.bhh.push_back(keep[o + 3].data_ptr<T>());
      l.gc.push_back(cell ? keep[o + 4].data_ptr<T>() : nullptr);
      l.bc.push_back(cell ? keep[o + 5].data_ptr<T>() : nullptr);
      // the input side, LN_ih(x W_ih^T) + b: of every step in training (saved), else chunk by chunk (input_side)
      Tensor act = at::empty({n, B, GH}, opt);
      Tensor xih = train ? at::empty({T_, B, GH}, opt) : Tensor();
      Tensor rih = train ? at::empty({T_, B}, opt) : Tensor();
      acts.push_back(act);
      bxs.push_back(bx.defined() ? bx.data_ptr<T>() : nullptr);
      l.act.push_back(act.data_ptr<T>());
      Tensor xhh = train ? at::empty({T_, B, GH}, opt) : Tensor();
      Tensor rhh = train ? at::empty({T_, B}, opt) : Tensor();
      l.xih.push_back(train ? xih.data_ptr<T>() : nullptr);
      l.rih.push_back(train ? rih.data_ptr<T>() : nullptr);
      l.xhh.push_back(train ? xhh.data_ptr<T>() : nullptr);
      l.rhh.push_back(train ? rhh.data_ptr<T>() : nullptr);
      Tensor c1, xc, rc, hn, cst;
      if (cell) {
        cst = at::empty({train ? T_ + 1 : 1, B, H}, opt);
        cst[train && a.reverse ? T_ : 0].copy_(c0[d].narrow(1, k * H, H));
        a.c.push_back(cst.data_ptr<T>());
        if (train) {
          if (KIND == PEEPHOLE) c1 = at::empty({T_, B, H}, opt);
          xc = at::empty({T_, B, H}, opt);
          rc = at::empty({T_, B}, opt);
        }
        l.c1.push_back(c1.defined() ? c1.data_ptr<T>() : nullptr);
        l.xc.push_back(train ? xc.data_ptr<T>() : nullptr);
        l.rc.push_back(train ? rc.data_ptr<T>() : nullptr);
      } else if (train) {
        hn = at::empty({T_, B, H}, opt);
        l.hn.push_back(hn.data_ptr<T>());
      }
      saved.insert(saved.end(), {act, xih, rih, xhh, rhh, cell ? c1 : hn, xc, rc, cst});
      cells.push_back(cst);
    }
    // rows of steps [s0, s0 + m) of path k into act (from its row 0): x W_ih^T by a library GEMM, then per
    // row the normalisation (training: xih and rih kept), the gain, the shift and the bias
    auto input_side = [&](int64_t k, int64_t s0, int64_t m) {
      Tensor a2 = acts[k].view({n * B, GH}).narrow(0, 0, m * B);
      at::mm_out(a2, x2.narrow(0, s0 * B, m * B), prep[k * 5].t());
      T* ap = a2.data_ptr<T>();
      T* xp = train ? l.xih[k] + s0 * B * GH : nullptr;
      T* rp = train ? l.rih[k] + s0 * B : nullptr;
      const T* gi = l.gih[k];
      const T* bi = l.bih[k];
      const T* bxp = bxs[k];
      for_rows(m * B, threads, [&](int64_t r, int64_t) {
        using VT = Vec<T>;
        constexpr int V = VT::size();
        T* row = ap + r * GH;
        T mean, rstd;
        row_moments<T>(row, GH, mean, rstd);
        T* xh = train ? xp + r * GH : nullptr;  // training: the normalised row, saved
        if (train) {
          row_normalise<T>(row, GH, mean, rstd, xh);
          rp[r] = rstd;
        }
        const VT mv(mean), rv(rstd);
        for (int64_t j = 0; j < GH; j += V) {
          const int cnt = tail(GH, j, V);
          const VT xv = train ? VT::loadu(xh + j, cnt) : (VT::loadu(row + j, cnt) - mv) * rv;
          VT v = at::vec::fmadd(VT::loadu(gi + j, cnt), xv, VT::loadu(bi + j, cnt));
          if (bxp) v = v + VT::loadu(bxp + j, cnt);
          v.store(row + j, cnt);
        }
      });
    };
    // Steps [s1, s1 + m) in one parallel region, two phases a step: every path's recurrent product (unit blocks),
    // then every row's normalisations and pointwise step (rows).
    const int64_t nub = (H + Vec<T>::size() - 1) / Vec<T>::size();
    auto steps = [&](int64_t s1, int64_t m) {
      run_phases_var(
          threads, 2 * m, [&](int64_t p) { return p % 2 ? B : nub; }, [](int64_t p) { return p % 2 ? 4 : 1; },
          [&](int64_t p, int64_t i0, int64_t i1, int64_t tid) {
            const int64_t t = a.time(s1 + p / 2);
            if (p % 2 == 0) {
              ln_gemm_units<T, KIND>(a.ghprev(t), a.ghs(t), B, H, pf, graw.data_ptr<T>(), i0, i1);
              return;
            }
            const int64_t cp = train ? a.slot_prev(t) : 0, cn = train ? a.slot_new(t) : 0;
            for (int64_t b = i0; b < i1; ++b)
              ln_fwd_row<T, KIND>(a, l, t, cp, cn, b, scratch.data_ptr<T>() + tid * 2 * H);
          });
    };
    if (train) {
      for (int64_t k = 0; k < K; ++k) input_side(k, 0, T_);
      steps(0, T_);
    } else {  // chunk by chunk: the input side of the chunk's steps, then its steps
      for (int64_t s = 0; s < T_;) {
        const int64_t t = a.time(s), s0 = t / n * n, e = std::min(T_, s0 + n);
        l.act_t0 = s0;
        for (int64_t k = 0; k < K; ++k) input_side(k, s0, e - s0);
        const int64_t m = a.reverse ? t - s0 + 1 : e - t;
        steps(s, m);
        s += m;
      }
    }
    h_n[d].copy_(y[a.reverse ? 0 : T_ - 1].narrow(1, d * H, H));
    if (cell)
      for (int64_t k = 0; k < K; ++k)
        c_n[d].narrow(1, k * H, H).copy_(cells[k][train ? (a.reverse ? 0 : T_) : 0]);
  }
  std::vector<Tensor> out{y, h_n, c_n};
  if (train) {
    out.insert(out.end(), saved.begin(), saved.end());
    out.insert(out.end(), saved_hm.begin(), saved_hm.end());
  }
  return out;
}

// needs: x, h0, c0, w_ih, w_hh, b_ih, b_hh, peephole, the LN parameters. saved: ln_forward_impl's, LN_SAVED per
// direction and path. Returns dx, dh0, dc0, then per direction the gradients of w_ih, w_hh, b_ih, b_hh,
// peephole and the 6 LN parameters (undefined where not needed or absent).
template <typename T, int KIND>
std::vector<Tensor> ln_backward_impl(const Layer& L, const Tensor& x, const Tensor& h0, const Tensor& c0,
                                     const std::vector<Tensor>& w_ih, const std::vector<Tensor>& w_hh,
                                     const std::vector<Tensor>& b_ih, const std::vector<Tensor>& b_hh,
                                     const std::vector<Tensor>& peep, const std::vector<Tensor>& ln,
                                     const Tensor& y, const std::vector<Tensor>& saved, const Tensor& dy,
                                     const Tensor& dh_n, const Tensor& dc_n, const std::vector<bool>& needs,
                                     int64_t threads, const std::vector<Tensor>& rmask,
                                     const std::vector<Tensor>& hms, const std::vector<Tensor>& zh,
                                     const std::vector<Tensor>& zc, double ph, double pc) {
  constexpr int G = gates<KIND>();
  const int64_t K = L.K, T_ = L.T_, B = L.B, I = L.I, H = L.H, D = L.D, GH = G * H;
  const auto opt = x.options();
  const bool cell = KIND != GRU;
  const bool n_x = needs[0], n_h0 = needs[1], n_c0 = needs[2], n_wih = needs[3], n_whh = needs[4],
             n_bih = needs[5], n_bhh = needs[6], n_peep = needs[7], n_ln = needs[8];
  const Tensor x2 = x.view({T_ * B, I});
  Tensor dx = n_x ? at::zeros({T_, B, I}, opt) : Tensor();
  Tensor dx2 = n_x ? dx.view({T_ * B, I}) : Tensor();
  Tensor dh0 = n_h0 ? at::empty({D, B, H}, opt) : Tensor();
  Tensor dc0 = cell && n_c0 ? at::empty({D, B, K * H}, opt) : Tensor();
  std::vector<Tensor> out_w;
  for (int64_t d = 0; d < D; ++d) {
    Dir<T> a;
    LnDir<T> l;
    a.T_ = T_, a.B = B, a.H = H, a.K = K, a.D = D, a.d = d, a.nub = 0;
    a.reverse = d == 1, a.train = true, a.own = false;
    Tensor h0d = h0[d].contiguous();
    a.h0 = h0d.data_ptr<T>();
    a.y = const_cast<T*>(y.data_ptr<T>());
    const bool masked = !rmask.empty();
    Tensor rmask_d = masked ? rmask[d] : Tensor();
    if (masked) a.rmask = rmask_d.data_ptr<T>();
    a.zh = zh.empty() ? nullptr : zh[d].data_ptr<T>();
    a.zc = zc.empty() ? nullptr : zc[d].data_ptr<T>();
    a.ph = static_cast<T>(ph), a.pc = static_cast<T>(pc);
    a.dy = dy.data_ptr<T>();
    std::vector<Tensor> keep, whh_lib(K), dgx(K), dgh(K), dcs(K);
    for (int64_t k = 0; k < K; ++k) {
      const Tensor* sv = &saved[(d * K + k) * LN_SAVED];
      l.act.push_back(const_cast<T*>(sv[0].data_ptr<T>()));
      l.xih.push_back(const_cast<T*>(sv[1].data_ptr<T>()));
      l.rih.push_back(const_cast<T*>(sv[2].data_ptr<T>()));
      l.xhh.push_back(const_cast<T*>(sv[3].data_ptr<T>()));
      l.rhh.push_back(const_cast<T*>(sv[4].data_ptr<T>()));
      if (cell) {
        l.c1.push_back(KIND == PEEPHOLE ? const_cast<T*>(sv[5].data_ptr<T>()) : nullptr);
        l.xc.push_back(const_cast<T*>(sv[6].data_ptr<T>()));
        l.rc.push_back(const_cast<T*>(sv[7].data_ptr<T>()));
        a.c.push_back(const_cast<T*>(sv[8].data_ptr<T>()));
      } else {
        l.hn.push_back(const_cast<T*>(sv[5].data_ptr<T>()));
      }
      whh_lib[k] = w_hh[d].narrow(0, k * GH, GH).clone(at::MemoryFormat::Contiguous);  // (G H, H)
      a.peep.push_back(KIND == PEEPHOLE ? (keep.push_back(own_rows(peep[d], k, 3 * H)), keep.back().data_ptr<T>())
                                        : nullptr);
      keep.push_back(own_rows(ln[d * 6], k, GH));
      l.gih.push_back(keep.back().data_ptr<T>());
      keep.push_back(own_rows(ln[d * 6 + 2], k, GH));
      l.ghh.push_back(keep.back().data_ptr<T>());
      if (cell) {
        keep.push_back(own_rows(ln[d * 6 + 4], k, H));
        l.gc.push_back(keep.back().data_ptr<T>());
        keep.push_back(own_rows(ln[d * 6 + 5], k, H));
        l.bc.push_back(keep.back().data_ptr<T>());
      }
      // the gradients of x W_ih^T and h W_hh^T overwrite the saved xih and xhh, row by row (the Python side
      // recomputes the forward for a second backward through the same graph)
      dgx[k] = sv[1];
      l.dgx.push_back(l.xih.back());
      dgh[k] = sv[3];
      l.dgh.push_back(l.xhh.back());
      if (cell) {
        dcs[k] = dc_n[d].narrow(1, k * H, H).clone(at::MemoryFormat::Contiguous);
        a.dc.push_back(dcs[k].data_ptr<T>());
      }
    }
    const int64_t t_first = a.reverse ? 0 : T_ - 1;
    Tensor dh = (dh_n[d] + dy[t_first].narrow(1, d * H, H)).contiguous();  // (B, H)
    a.dh = dh.data_ptr<T>();
    Tensor dir = KIND == GRU || a.zone_h() ? at::empty({B, H}, opt) : Tensor();
    a.dir = dir.defined() ? dir.data_ptr<T>() : nullptr;
    const int64_t nthr = std::max<int64_t>(threads, at::get_num_threads());
    Tensor scratch = at::empty({nthr, 2 * GH + H}, opt);
    l.scratch = scratch.data_ptr<T>();
    // the parameters' sums, per thread (each thread's rows in a fixed order; summed over the threads after)
    const bool n_bias = (b_ih[d].defined() && n_bih) || (b_hh[d].defined() && n_bhh);
    const bool summed = n_ln || n_bias || (KIND == PEEPHOLE && n_peep);
    l.acc_stride = K * ln_acc_size<G>(H);
    Tensor acc = summed ? at::zeros({nthr, l.acc_stride}, opt) : Tensor();
    l.acc = summed ? acc.data_ptr<T>() : nullptr;
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t st = T_ - 1 - s;
      const int64_t t = a.time(st);
      for_rows(B, threads, [&](int64_t b, int64_t tid) { ln_bwd_row<T, KIND>(a, l, t, b, tid); });
      const T* dyp = nullptr;  // dy at the time of this step's h_prev; none for h_0
      if (st > 0) dyp = a.dy + (a.reverse ? t + 1 : t - 1) * B * a.ys() + d * H;
      Tensor init = dyp ? at::from_blob(const_cast<T*>(dyp), {B, H}, {a.ys(), 1}, opt) : Tensor();
      Tensor sum = masked ? at::zeros({B, H}, opt) : dh;
      if (!masked) {
        if (init.defined())
          dh.copy_(init);
        else
          dh.zero_();
        if (dir.defined()) dh.add_(dir);
      }
      for (int64_t k = 0; k < K; ++k) sum.addmm_(dgh[k][t], whh_lib[k]);
      if (masked) {
        dh.copy_(sum * rmask_d);
        if (init.defined()) dh.add_(init);
        if (dir.defined()) dh.add_(dir);
      }
    }
    if (n_h0) dh0[d].copy_(dh);
    if (cell && n_c0)
      for (int64_t k = 0; k < K; ++k) dc0[d].narrow(1, k * H, H).copy_(dcs[k]);
    whh_lib.clear();

    // After the loop, per path: the weights' and x's GEMMs on the gradients of x W_ih^T and h W_hh^T; the
    // gains', shifts', biases' and peepholes' gradients from the threads' sums.
    Tensor gwi = n_wih ? at::empty({K * GH, I}, opt) : Tensor();
    Tensor gwh = n_whh ? at::empty({K * GH, H}, opt) : Tensor();
    Tensor sums = summed ? acc.sum(0).view({K, ln_acc_size<G>(H)}) : Tensor();
    std::vector<Tensor> gb_x, gb_h, gp, g_ln[6];
    for (int64_t k = 0; k < K; ++k) {
      Tensor draw = dgx[k].view({T_ * B, GH});  // d (x W_ih^T)
      Tensor ghk = dgh[k].view({T_ * B, GH});
      if (n_wih) {
        Tensor gwi_k = gwi.narrow(0, k * GH, GH);
        at::mm_out(gwi_k, draw.t(), x2);
      }
      if (n_whh) {
        Tensor gwh_k = gwh.narrow(0, k * GH, GH);
        if (masked) {
          at::mm_out(gwh_k, ghk.t(), hms[d].view({T_ * B, H}));
        } else {
          Tensor yd = y.narrow(2, d * H, H);
          Tensor first = a.reverse ? ghk.narrow(0, (T_ - 1) * B, B) : ghk.narrow(0, 0, B);
          at::mm_out(gwh_k, first.t(), h0d);
          if (T_ > 1) {
            Tensor rest = a.reverse ? ghk.narrow(0, 0, (T_ - 1) * B) : ghk.narrow(0, B, (T_ - 1) * B);
            Tensor hp = (a.reverse ? yd.narrow(0, 1, T_ - 1) : yd.narrow(0, 0, T_ - 1)).reshape({(T_ - 1) * B, H});
            gwh_k.addmm_(rest.t(), hp);
          }
        }
      }
      if (n_x) dx2.addmm_(draw, w_ih[d].narrow(0, k * GH, GH));
      if (!summed) continue;
      Tensor sk = sums[k];
      Tensor sum_da = sk.narrow(0, 0, GH), sum_dn = KIND == GRU ? sk.narrow(0, 2 * GH, GH) : sum_da;
      if (KIND == GRU) {
        if (b_ih[d].defined() && n_bih) gb_x.push_back(sum_da);
        if (b_hh[d].defined() && n_bhh) gb_h.push_back(sum_dn);
      } else if (n_bias) {
        gb_x.push_back(sum_da);
      }
      if (KIND == PEEPHOLE && n_peep) gp.push_back(sk.narrow(0, 4 * GH + 2 * H, 3 * H));
      if (n_ln) {
        g_ln[0].push_back(sk.narrow(0, GH, GH));
        g_ln[1].push_back(sum_da);
        g_ln[2].push_back(sk.narrow(0, 3 * GH, GH));
        g_ln[3].push_back(sum_dn);
        if (cell) {
          g_ln[4].push_back(sk.narrow(0, 4 * GH + H, H));
          g_ln[5].push_back(sk.narrow(0, 4 * GH, H));
        }
      }
    }
    Tensor gbi, gbh;
    if (KIND == GRU) {
      if (!gb_x.empty()) gbi = at::cat(gb_x);
      if (!gb_h.empty()) gbh = at::cat(gb_h);
    } else if (!gb_x.empty()) {
      Tensor gb = at::cat(gb_x);
      if (b_ih[d].defined() && n_bih) gbi = gb;
      if (b_hh[d].defined() && n_bhh) gbh = gbi.defined() ? gb.clone() : gb;
    }
    Tensor gpe = !gp.empty() ? at::cat(gp) : Tensor();
    out_w.insert(out_w.end(), {gwi, gwh, gbi, gbh, gpe});
    for (int j = 0; j < 6; ++j) out_w.push_back(g_ln[j].empty() ? Tensor() : at::cat(g_ln[j]));
  }
  std::vector<Tensor> out{dx, dh0, dc0};
  out.insert(out.end(), out_w.begin(), out_w.end());
  return out;
}

#ifndef CRNN_KERNELS_ONLY  // (a test harness can include the kernels alone)
Layer layer_of(int64_t kind, int64_t K, const Tensor& x, const std::vector<Tensor>& w_hh) {
  Layer L;
  L.kind = kind, L.K = K, L.T_ = x.size(0), L.B = x.size(1), L.I = x.size(2);
  L.H = w_hh[0].size(1), L.D = static_cast<int64_t>(w_hh.size()), L.G = kind == GRU ? 3 : 4;
  return L;
}

// Recurrent-dropout masks: none, or one (B, H) per direction in the input's dtype (made contiguous here).
void check_masks(std::vector<Tensor>& rmask, const Tensor& x, const std::vector<Tensor>& w_hh) {
  if (rmask.empty()) return;
  TORCH_CHECK(rmask.size() == w_hh.size(), "cerebral_rnn native: one recurrent-dropout mask per direction");
  for (auto& m : rmask) {
    TORCH_CHECK(m.dim() == 2 && m.size(0) == x.size(1) && m.size(1) == w_hh[0].size(1) &&
                    m.scalar_type() == x.scalar_type(),
                "cerebral_rnn native: a recurrent-dropout mask is (B, H) in the input's dtype");
    m = m.contiguous();
  }
}

// Zoneout masks: none, or one per direction, (T, B, H) for h and (T, B, K H) for c, 0/1 in the input's dtype.
void check_zoneout(int64_t kind, int64_t K, std::vector<Tensor>& zh, std::vector<Tensor>& zc, const Tensor& x,
                   const std::vector<Tensor>& w_hh) {
  const int64_t H = w_hh[0].size(1);
  for (auto* v : {&zh, &zc}) {
    if (v->empty()) continue;
    TORCH_CHECK(v->size() == w_hh.size(), "cerebral_rnn native: one zoneout mask per direction");
    const int64_t width = v == &zh ? H : K * H;
    TORCH_CHECK(v == &zh || kind != GRU, "cerebral_rnn native: the GRU has no c to zone out");
    for (auto& m : *v) {
      TORCH_CHECK(m.dim() == 3 && m.size(0) == x.size(0) && m.size(1) == x.size(1) && m.size(2) == width &&
                      m.scalar_type() == x.scalar_type(),
                  "cerebral_rnn native: a zoneout mask is (T, B, H) for h, (T, B, K H) for c, in the input's dtype");
      m = m.contiguous();
    }
  }
}

void check_args(int64_t kind, int64_t K, const Tensor& x, const std::vector<Tensor>& w_hh) {
  TORCH_CHECK(kind == LSTM || kind == PEEPHOLE || kind == GRU, "cerebral_rnn native: unknown kind ", kind);
  TORCH_CHECK(K >= 1, "cerebral_rnn native: paths must be >= 1");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "cerebral_rnn native: x must be a contiguous (T, B, I) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "cerebral_rnn native: dtype must be float32 or float64");
  TORCH_CHECK(w_hh.size() == 1 || w_hh.size() == 2, "cerebral_rnn native: one or two directions");
}

// Undefined tensors arrive from Python as None (std::optional); map them to undefined at::Tensor.
std::vector<Tensor> defined(const std::vector<std::optional<Tensor>>& v) {
  std::vector<Tensor> out;
  for (const auto& t : v) out.push_back(t.has_value() ? t->contiguous() : Tensor());
  return out;
}

template <typename F>
auto dispatch(int64_t kind, at::ScalarType dt, const F& f) {
  if (dt == at::kFloat) {
    if (kind == LSTM) return f(float(), std::integral_constant<int, LSTM>());
    if (kind == PEEPHOLE) return f(float(), std::integral_constant<int, PEEPHOLE>());
    return f(float(), std::integral_constant<int, GRU>());
  }
  if (kind == LSTM) return f(double(), std::integral_constant<int, LSTM>());
  if (kind == PEEPHOLE) return f(double(), std::integral_constant<int, PEEPHOLE>());
  return f(double(), std::integral_constant<int, GRU>());
}

std::vector<Tensor> forward(int64_t kind, int64_t K, Tensor x, Tensor h0, std::optional<Tensor> c0,
                            std::vector<Tensor> w_ih, std::vector<Tensor> w_hh,
                            std::vector<std::optional<Tensor>> b_ih, std::vector<std::optional<Tensor>> b_hh,
                            std::vector<std::optional<Tensor>> peep, bool train, int64_t mode, int64_t threads,
                            int64_t chunk_rows, std::vector<Tensor> rmask, std::vector<Tensor> zh,
                            std::vector<Tensor> zc, double ph, double pc) {
  check_args(kind, K, x, w_hh);
  check_masks(rmask, x, w_hh);
  check_zoneout(kind, K, zh, zc, x, w_hh);
  at::NoGradGuard no_grad;
  const Layer L = layer_of(kind, K, x, w_hh);
  for (auto& w : w_ih) w = w.contiguous();
  for (auto& w : w_hh) w = w.contiguous();
  const Tensor c = c0.has_value() ? *c0 : Tensor();
  const auto bi = defined(b_ih), bh = defined(b_hh), pp = defined(peep);
  return dispatch(kind, x.scalar_type(), [&](auto tv, auto kv) {
    using T = decltype(tv);
    return forward_impl<T, decltype(kv)::value>(L, x, h0, c, w_ih, w_hh, bi, bh, pp, train, mode, threads,
                                                 chunk_rows, rmask, zh, zc, ph, pc);
  });
}

std::vector<Tensor> backward(int64_t kind, int64_t K, Tensor x, Tensor h0, std::optional<Tensor> c0,
                             std::vector<Tensor> w_ih, std::vector<Tensor> w_hh,
                             std::vector<std::optional<Tensor>> b_ih, std::vector<std::optional<Tensor>> b_hh,
                             std::vector<std::optional<Tensor>> peep, Tensor y, std::vector<Tensor> acts,
                             std::vector<Tensor> states, Tensor dy, Tensor dh_n, std::optional<Tensor> dc_n,
                             std::vector<bool> needs, int64_t mode, int64_t threads, std::vector<Tensor> rmask,
                             std::vector<Tensor> hms, std::vector<Tensor> zh, std::vector<Tensor> zc, double ph,
                             double pc) {
  check_args(kind, K, x, w_hh);
  check_masks(rmask, x, w_hh);
  check_zoneout(kind, K, zh, zc, x, w_hh);
  TORCH_CHECK(hms.size() == rmask.size(), "cerebral_rnn native: one saved h_prev * mask per masked direction");
  for (auto& t : hms) t = t.contiguous();
  TORCH_CHECK(needs.size() == 8, "cerebral_rnn native: needs has 8 flags");
  at::NoGradGuard no_grad;
  const Layer L = layer_of(kind, K, x, w_hh);
  for (auto& w : w_ih) w = w.contiguous();
  for (auto& w : w_hh) w = w.contiguous();
  const Tensor c = c0.has_value() ? *c0 : Tensor();
  const Tensor dc = dc_n.has_value() ? dc_n->contiguous() : Tensor();
  const auto bi = defined(b_ih), bh = defined(b_hh), pp = defined(peep);
  dy = dy.contiguous();
  dh_n = dh_n.contiguous();
  return dispatch(kind, x.scalar_type(), [&](auto tv, auto kv) {
    using T = decltype(tv);
    return backward_impl<T, decltype(kv)::value>(L, x, h0, c, w_ih, w_hh, bi, bh, pp, y, acts, states, dy, dh_n,
                                                  dc, needs, mode, threads, rmask, hms, zh, zc, ph, pc);
  });
}

// Layer norm: per direction 6 tensors (ln_ih gain, shift; ln_hh gain, shift; ln_c gain, shift: None for the GRU).
void check_ln(int64_t kind, int64_t K, std::vector<Tensor>& ln, const Tensor& x, const std::vector<Tensor>& w_hh) {
  const int64_t H = w_hh[0].size(1), G = kind == GRU ? 3 : 4;
  TORCH_CHECK(ln.size() == 6 * w_hh.size(), "cerebral_rnn native: 6 layer-norm tensors per direction");
  for (size_t j = 0; j < ln.size(); ++j) {
    const bool c = j % 6 >= 4;
    if (c && kind == GRU) continue;
    TORCH_CHECK(ln[j].defined() && ln[j].dim() == 1 && ln[j].size(0) == K * (c ? H : G * H) &&
                    ln[j].scalar_type() == x.scalar_type(),
                "cerebral_rnn native: a layer-norm gain or shift is (K G H) or, for c, (K H) in the input's dtype");
    ln[j] = ln[j].contiguous();
  }
}

std::vector<Tensor> ln_forward(int64_t kind, int64_t K, Tensor x, Tensor h0, std::optional<Tensor> c0,
                               std::vector<Tensor> w_ih, std::vector<Tensor> w_hh,
                               std::vector<std::optional<Tensor>> b_ih, std::vector<std::optional<Tensor>> b_hh,
                               std::vector<std::optional<Tensor>> peep, std::vector<std::optional<Tensor>> ln_opt,
                               bool train, int64_t threads, std::vector<Tensor> rmask, std::vector<Tensor> zh,
                               std::vector<Tensor> zc, double ph, double pc) {
  check_args(kind, K, x, w_hh);
  check_masks(rmask, x, w_hh);
  check_zoneout(kind, K, zh, zc, x, w_hh);
  auto ln = defined(ln_opt);
  check_ln(kind, K, ln, x, w_hh);
  at::NoGradGuard no_grad;
  const Layer L = layer_of(kind, K, x, w_hh);
  for (auto& w : w_ih) w = w.contiguous();
  for (auto& w : w_hh) w = w.contiguous();
  const Tensor c = c0.has_value() ? *c0 : Tensor();
  const auto bi = defined(b_ih), bh = defined(b_hh), pp = defined(peep);
  return dispatch(kind, x.scalar_type(), [&](auto tv, auto kv) {
    using T = decltype(tv);
    return ln_forward_impl<T, decltype(kv)::value>(L, x, h0, c, w_ih, w_hh, bi, bh, pp, ln, train, threads, rmask,
                                                    zh, zc, ph, pc);
  });
}

std::vector<Tensor> ln_backward(int64_t kind, int64_t K, Tensor x, Tensor h0, std::optional<Tensor> c0,
                                std::vector<Tensor> w_ih, std::vector<Tensor> w_hh,
                                std::vector<std::optional<Tensor>> b_ih, std::vector<std::optional<Tensor>> b_hh,
                                std::vector<std::optional<Tensor>> peep, std::vector<std::optional<Tensor>> ln_opt,
                                Tensor y, std::vector<std::optional<Tensor>> saved_opt, Tensor dy, Tensor dh_n,
                                std::optional<Tensor> dc_n, std::vector<bool> needs, int64_t threads,
                                std::vector<Tensor> rmask, std::vector<Tensor> hms, std::vector<Tensor> zh,
                                std::vector<Tensor> zc, double ph, double pc) {
  check_args(kind, K, x, w_hh);
  check_masks(rmask, x, w_hh);
  check_zoneout(kind, K, zh, zc, x, w_hh);
  auto ln = defined(ln_opt);
  check_ln(kind, K, ln, x, w_hh);
  TORCH_CHECK(hms.size() == rmask.size(), "cerebral_rnn native: one saved h_prev * mask per masked direction");
  for (auto& t : hms) t = t.contiguous();
  TORCH_CHECK(needs.size() == 9, "cerebral_rnn native: needs has 9 flags");
  const auto saved = defined(saved_opt);
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == LN_SAVED * K * static_cast<int64_t>(w_hh.size()),
              "cerebral_rnn native: the saved tensors of ln_forward");
  at::NoGradGuard no_grad;
  const Layer L = layer_of(kind, K, x, w_hh);
  for (auto& w : w_ih) w = w.contiguous();
  for (auto& w : w_hh) w = w.contiguous();
  const Tensor c = c0.has_value() ? *c0 : Tensor();
  const Tensor dc = dc_n.has_value() ? dc_n->contiguous() : Tensor();
  const auto bi = defined(b_ih), bh = defined(b_hh), pp = defined(peep);
  dy = dy.contiguous();
  dh_n = dh_n.contiguous();
  return dispatch(kind, x.scalar_type(), [&](auto tv, auto kv) {
    using T = decltype(tv);
    return ln_backward_impl<T, decltype(kv)::value>(L, x, h0, c, w_ih, w_hh, bi, bh, pp, ln, y, saved, dy, dh_n,
                                                     dc, needs, threads, rmask, hms, zh, zc, ph, pc);
  });
}

#endif  // CRNN_KERNELS_ONLY
}  // namespace crnn

#ifndef CRNN_KERNELS_ONLY
#include <torch/version.h>
#define CRNN_STR2(x) #x
#define CRNN_STR(x) CRNN_STR2(x)
#ifndef CRNN_SOURCE_SHA
#define CRNN_SOURCE_SHA unknown
#endif
#ifndef CRNN_VARIANT
#define CRNN_VARIANT unknown
#endif
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &crnn::forward, "one layer forward (every direction)");
  m.def("backward", &crnn::backward, "one layer BPTT (every direction)");
  m.def("ln_forward", &crnn::ln_forward, "one layer forward with layer norm (every direction)");
  m.def("ln_backward", &crnn::ln_backward, "one layer BPTT with layer norm (every direction)");
  m.def("capability", &crnn::capability, "the vector ISA this build was compiled for");
  // what this module was built from and for: native.py uses it only if all three match the running process
  m.attr("source_sha") = CRNN_STR(CRNN_SOURCE_SHA);
  m.attr("variant") = CRNN_STR(CRNN_VARIANT);
  m.attr("torch_version") = TORCH_VERSION;
}
#endif
