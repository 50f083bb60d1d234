r"""``"native"`` backend: the whole inference time loop of a layer in compiled C++ (CPU, no autograd).

Per direction: the input projection of a chunk of steps (``chunk_rows`` rows) is one GEMM, both biases folded
in; each step adds ``h_{t-1} W_hh^T`` to its rows of it, then ONE pointwise pass computes every gate's
activation, both paths' cell states and ``h_t``, written straight into the output. The recurrent GEMM is, by
batch x hidden_size: a hand-written register-blocked kernel below ``small_max_work`` (MKL's and oneDNN's per-call
overheads dominate there), else oneDNN with ``W_hh`` packed once per call (``mkldnn._linear_pointwise``, as the
``"fused"`` backend uses; float32), else ``addmm_`` (float64, or a torch without oneDNN).
Activations use a vectorisable exp (Cephes ``expf``) and a tanh accurate near 0 (a polynomial for
``|x| < 0.625``), within a few ulp of torch's; float64 uses ``std::exp``/``std::tanh``. The gate rows are used in
their stored order (upper i, f, g, o, lower i, f, g, o): a path's gate ``k`` at unit ``j`` is at column
``k H + j`` (upper) and ``4 H + k H + j`` (lower). The recurrent GEMM covers both paths' rows at once, so
layers whose paths are identical are refused (``"auto"`` then picks a backend that keeps them identical).

The extension is built on first use with ``torch.utils.cpp_extension.load_inline`` (``-O3 -march=native``,
OpenMP; about 25 s on a 2-core machine, cached in torch's extensions directory under a name tagged by the CPU,
so later processes only load it). It needs a C++ compiler and ``ninja``; if the build fails, the failure is
remembered once and ``supports`` gives it as the reason (``"auto"`` then falls back). ``CEREBRAL_RNN_NATIVE=0``
in the environment turns the backend off (no build attempted).
Inference only: ``supports`` refuses whenever autograd would need gradients.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time

import torch
from torch import Tensor

from ._compile import exporting
from ._rules import dense_cpu_reason, identical_paths_reason, needs_grad


def _cpu_tag() -> str:
    """A short hash of this CPU's model and feature flags: the build uses ``-march=native``, so a cache shared
    between different machines (a network home directory) must not hand one machine's build to another."""
    info = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        info += platform.processor()
    return hashlib.sha1(info.encode()).hexdigest()[:10]


_NAME = f"cerebral_rnn_native_{_cpu_tag()}"

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <vector>

namespace {

// Cephes expf: |rel err| ~ 1 ulp; vectorises (no calls, no branches).
static inline float fexp(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;  // NaN passes both comparisons unchanged
  float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (no floorf call:
  // gcc cannot vectorise it under the mask of ftanh's select)
  x = x - fx * 0.693359375f;
  x = x + fx * 2.12194440e-4f;
  float z = x * x;
  float y = 1.9875691500E-4f;
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  y = y * z + x + 1.0f;
  int32_t n = static_cast<int32_t>(fx);
  int32_t bits = (n + 127) << 23;
  float scale = __builtin_bit_cast(float, bits);
  return y * scale;
}

static inline float fsig(float x) { return 1.0f / (1.0f + fexp(-x)); }

// Cephes tanhf: a polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) with the sign of x.
static inline float ftanh(float x) {
  float ax = std::fabs(x);
  float z = x * x;
  float p = -5.70498872745E-3f;
  p = p * z + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  float small = p * z * x + x;
  float big = 1.0f - 2.0f / (fexp(2.0f * ax) + 1.0f);
  big = std::copysign(big, x);
  return ax < 0.625f ? small : big;
}

static inline double fexp(double x) { return std::exp(x); }
static inline double fsig(double x) { return 1.0 / (1.0 + std::exp(-x)); }
static inline double ftanh(double x) { return std::tanh(x); }

// One step's pointwise part for rows [b0, b1): g (B, 8H) preactivations, c (B, 2H) in/out, h out (row stride hs).
template <typename T>
static void pointwise(const T* __restrict g, T* __restrict c, T* __restrict h, int64_t hs, int64_t b0, int64_t b1,
                      int64_t H) {
  for (int64_t b = b0; b < b1; ++b) {
    const T* __restrict p0 = g + b * 8 * H;
    const T* __restrict p1 = p0 + H;
    const T* __restrict p2 = p0 + 2 * H;
    const T* __restrict p3 = p0 + 3 * H;
    const T* __restrict p4 = p0 + 4 * H;
    const T* __restrict p5 = p0 + 5 * H;
    const T* __restrict p6 = p0 + 6 * H;
    const T* __restrict p7 = p0 + 7 * H;
    T* __restrict cu = c + b * 2 * H;
    T* __restrict cl = cu + H;
    T* __restrict hb = h + b * hs;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T ui = fsig(p0[j]), uf = fsig(p1[j]), ug = ftanh(p2[j]), uo = fsig(p3[j]);
      T li = fsig(p4[j]), lf = fsig(p5[j]), lg = ftanh(p6[j]), lo = fsig(p7[j]);
      T uc = uf * cu[j] + ui * ug;
      T lc = lf * cl[j] + li * lg;
      cu[j] = uc;
      cl[j] = lc;
      hb[j] = uo * ftanh(uc) + lo * ftanh(lc);
    }
  }
}

template <typename T>
static void pointwise_all(const at::Tensor& gt, at::Tensor& c, at::Tensor& yt, int64_t grain) {
  const int64_t B = gt.size(0), H = yt.size(1), hs = yt.stride(0);
  const T* gp = gt.data_ptr<T>();
  T* cp = c.data_ptr<T>();
  T* hp = yt.data_ptr<T>();
  if (B >= 2 * grain) {
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) { pointwise<T>(gp, cp, hp, hs, b0, b1, H); });
  } else {
    pointwise<T>(gp, cp, hp, hs, 0, B, H);
  }
}

// Small batches: g[b, :] += h[b, :] W_hh^T with W_hh^T (H, 8H) contiguous, in column blocks of 64 kept in
// registers, NB batch rows at a time sharing each weight load. Every column is the same sequence of
// multiply-adds over k = 0..H-1, so identical paths get identical sums.
template <typename T, int NB>
static void matvec_block(const T* __restrict h, int64_t hs, const T* __restrict wt, T* __restrict g, int64_t H,
                         int64_t N, int64_t c0) {
  constexpr int CB = 64;
  T acc[NB][CB];
  for (int r = 0; r < NB; ++r)
    for (int j = 0; j < CB; ++j) acc[r][j] = g[r * N + c0 + j];
  for (int64_t k = 0; k < H; ++k) {
    const T* w = wt + k * N + c0;
    for (int r = 0; r < NB; ++r) {
      const T hk = h[r * hs + k];
#pragma omp simd
      for (int j = 0; j < CB; ++j) acc[r][j] += hk * w[j];
    }
  }
  for (int r = 0; r < NB; ++r)
    for (int j = 0; j < CB; ++j) g[r * N + c0 + j] = acc[r][j];
}

template <typename T>
static void small_matvec(const T* h, int64_t hs, const T* wt, T* g, int64_t B, int64_t H) {
  const int64_t N = 8 * H, nblocks = N / 64;  // H % 16 == 0 (supports() checks): N % 64 == 0 (H % 8 suffices)
  at::parallel_for(0, nblocks, nblocks >= 16 ? nblocks / 2 : nblocks, [&](int64_t k0, int64_t k1) {
    for (int64_t blk = k0; blk < k1; ++blk) {
      int64_t b = 0;
      for (; b + 4 <= B; b += 4) matvec_block<T, 4>(h + b * hs, hs, wt, g + b * N, H, N, blk * 64);
      for (; b + 2 <= B; b += 2) matvec_block<T, 2>(h + b * hs, hs, wt, g + b * N, H, N, blk * 64);
      for (; b < B; ++b) matvec_block<T, 1>(h + b * hs, hs, wt, g + b * N, H, N, blk * 64);
    }
  });
}

// x W^T + add through torch.ops.mkldnn._linear_pointwise.binary (W packed by mkldnn._reorder_linear_weight).
static at::Tensor linear_add(const at::Tensor& x, const at::Tensor& add, const at::Tensor& packed) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(x, add, packed, std::nullopt, "add");
}

// Input projection of a chunk of steps as one GEMM, then per step G[t] += h W_hh^T and the pointwise pass.
template <typename T>
static void run_direction(const at::Tensor& x, const at::Tensor& h0, at::Tensor& c, const at::Tensor& w_ih,
                          const at::Tensor& w_hh, const at::Tensor& b, const at::Tensor& packed, bool reverse,
                          at::Tensor& y, int64_t col, int64_t chunk_rows, int64_t grain, bool small_kernel) {
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(T_, chunk_rows / std::max<int64_t>(B, 1)));
  at::Tensor G = at::empty({n, B, 8 * H}, x.options());
  at::Tensor w_ih_t = w_ih.t();
  at::Tensor w_hh_t = w_hh.t();
  const bool small = small_kernel && H % 8 == 0;
  at::Tensor wt = small ? w_hh_t.contiguous() : at::Tensor();  // (H, 8H)
  at::Tensor h = h0.stride(1) == 1 ? h0 : h0.contiguous();  // (B, H), rows contiguous, any row stride
  const int64_t nchunks = (T_ + n - 1) / n;
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t ck = reverse ? nchunks - 1 - k : k;
    const int64_t s = ck * n, e = std::min(T_, s + n), m = e - s;
    at::Tensor Gc = G.narrow(0, 0, m).view({m * B, 8 * H});
    at::Tensor xc = x.narrow(0, s, m).reshape({m * B, I});
    if (b.defined()) {
      at::addmm_out(Gc, b, xc, w_ih_t);
    } else {
      at::mm_out(Gc, xc, w_ih_t);
    }
    for (int64_t q = 0; q < m; ++q) {
      const int64_t tl = reverse ? m - 1 - q : q;
      at::Tensor gt = G[tl];  // (B, 8H), contiguous
      if (small) {
        small_matvec<T>(h.data_ptr<T>(), h.stride(0), wt.data_ptr<T>(), gt.data_ptr<T>(), B, H);
      } else if (packed.defined()) {  // oneDNN with the weight packed once per call (as the "fused" backend does)
        gt = linear_add(h.contiguous(), gt, packed);
      } else {
        gt.addmm_(h, w_hh_t);
      }
      at::Tensor yt = y[s + tl].narrow(1, col, H);  // (B, H), row stride D H
      pointwise_all<T>(gt, c, yt, grain);
      h = yt;
    }
  }
}

}  // namespace

// x (T, B, I) contiguous; h0 (D, B, H); c0 (D, B, 2H); per direction w_ih (8H, I), w_hh (8H, H), b (8H) or
// an empty tensor. Returns y (T, B, D H), h_n (D, B, H), c_n (D, B, 2H).
std::vector<at::Tensor> forward_layer(at::Tensor x, at::Tensor h0, at::Tensor c0, std::vector<at::Tensor> w_ih,
                                      std::vector<at::Tensor> w_hh, std::vector<at::Tensor> b, std::vector<at::Tensor> packed,
                                      int64_t chunk_rows, int64_t grain, bool small_kernel) {
  at::NoGradGuard no_grad;
  const int64_t D = static_cast<int64_t>(w_ih.size());
  const int64_t T_ = x.size(0), B = x.size(1), H = w_hh[0].size(1);
  x = x.contiguous();
  at::Tensor y = at::empty({T_, B, D * H}, x.options());
  at::Tensor c_n = c0.clone(at::MemoryFormat::Contiguous);
  at::Tensor h_n = at::empty({D, B, H}, x.options());
  for (int64_t d = 0; d < D; ++d) {
    at::Tensor c = c_n[d];
    at::Tensor bd = b[d].numel() ? b[d].contiguous() : at::Tensor();
    at::Tensor wi = w_ih[d].contiguous(), wh = w_hh[d].contiguous();
    at::Tensor pk = packed[d].numel() ? packed[d] : at::Tensor();
    bool reverse = d == 1;
    if (T_ == 0) {
      h_n[d].copy_(h0[d]);
      continue;
    }
    if (x.scalar_type() == at::kFloat) {
      run_direction<float>(x, h0[d], c, wi, wh, bd, pk, reverse, y, d * H, chunk_rows, grain, small_kernel);
    } else if (x.scalar_type() == at::kDouble) {
      run_direction<double>(x, h0[d], c, wi, wh, bd, pk, reverse, y, d * H, chunk_rows, grain, small_kernel);
    } else {
      TORCH_CHECK(false, "cerebral_rnn native: dtype must be float32 or float64");
    }
    h_n[d].copy_(y[reverse ? 0 : T_ - 1].narrow(1, d * H, H));
  }
  return {y, h_n, c_n};
}
"""

_EXT = None
_ERROR: str | None = None  # why the extension could not be built or loaded; set once, never retried
BUILD_SECONDS: float | None = None  # time the first load took in this process (a build, or loading the cache)


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; a pip-installed ninja sits in the environment's bin folder, which is not on
    PATH when the environment's python is called directly (as ``make`` does). Add that folder if needed."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package ships the binary

        candidates.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for folder in candidates:
        if shutil.which("ninja", path=folder):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return


def _load():
    """The compiled extension, building it on first use; None (with ``_ERROR`` set) if that failed."""
    global _EXT, _ERROR, BUILD_SECONDS
    if _EXT is not None or _ERROR is not None:
        return _EXT
    if os.environ.get("CEREBRAL_RNN_NATIVE", "1") == "0":
        _ERROR = "disabled by CEREBRAL_RNN_NATIVE=0"
        return None
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load_inline

        _put_ninja_on_path()

        flags = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
        _EXT = load_inline(name=_NAME, cpp_sources=[_CPP], functions=["forward_layer"], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], verbose=bool(os.environ.get("CEREBRAL_RNN_NATIVE_VERBOSE")))
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed build: all mean "unavailable"
        _ERROR = f"the C++ extension could not be built: {type(exc).__name__}: {str(exc).strip()[:300]}"
        return None
    BUILD_SECONDS = time.perf_counter() - t0
    return _EXT


def unavailable_reason() -> str | None:
    """Why the extension cannot be used (None if it is loaded or not tried yet)."""
    return _ERROR


def available() -> bool:
    """Whether the extension is (or can be) built and loaded; builds it on first call."""
    return _load() is not None


class NativeBackend:
    """The whole inference time loop in compiled C++; two-path LSTM layers, CPU, float32/float64, dense input,
    no autograd."""

    name = "native"
    kinds = ("lstm",)
    chunk_rows = 1024  # rows (steps x batch) of the input projection per GEMM
    # The recurrent GEMM, by batch x hidden_size: below small_max_work a hand-written register-blocked kernel
    # (MKL's and oneDNN's per-call overheads dominate there), else oneDNN with the weight packed once per call
    # (float32; onednn=False forces torch.addmm, as does float64 or a torch without oneDNN). Measured with
    # benchmarks/speed.py on a 2-core AVX-512 CPU, torch 2.13.
    onednn: bool | None = None
    small_max_work = 4096
    _onednn_ok: bool | None = None  # None: not tried yet in this process
    grain = 16  # batch rows per thread in the pointwise pass (two threads only from 2 x grain rows)

    def supports(self, spec, x: Tensor, batch_sizes, weights, states) -> str | None:
        if spec.kind.name != "lstm" or spec.paths != 2 or spec.proj_size:
            return "only two-path LSTM layers without proj_size (the paper's Cerebral LSTM)"
        reason = dense_cpu_reason(x, batch_sizes, weights)
        if reason is not None:
            return reason
        if needs_grad(x, states, weights):
            return "inference only: autograd needs gradients here (use torch.no_grad() or another backend)"
        if exporting() or torch.compiler.is_compiling():
            return "torch.export / jit tracing / torch.compile cannot trace a C++ extension"
        if _load() is None:
            return _ERROR
        return identical_paths_reason(spec, weights)

    def _use_onednn(self, x) -> bool:
        if NativeBackend._onednn_ok is False:
            return False
        if self.onednn is not None:
            return self.onednn
        return x.dtype == torch.float32 and torch.backends.mkldnn.is_available()

    def forward_layer(self, spec, x, states, weights, batch_sizes):
        h0, c0 = states
        ext = _load()
        w_ih = [w.w_ih for w in weights]
        w_hh = [w.w_hh for w in weights]
        empty = x.new_empty(0)
        bs = []
        for w in weights:
            b_ih, b_hh = w.b_ih, w.b_hh
            b = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
            bs.append(empty if b is None else b)
        small = x.shape[1] * h0.shape[-1] < self.small_max_work
        with torch.no_grad():
            if not small and self._use_onednn(x):
                try:
                    packed = [torch.ops.mkldnn._reorder_linear_weight(w, x.shape[1]) for w in w_hh]
                    out = ext.forward_layer(x, h0, c0, w_ih, w_hh, bs, packed, self.chunk_rows, self.grain,
                                            False)
                    NativeBackend._onednn_ok = True
                    return out[0], (out[1], out[2])
                except (RuntimeError, AttributeError, NotImplementedError):
                    NativeBackend._onednn_ok = False  # this torch build cannot: plain addmm from now on
            out = ext.forward_layer(x, h0, c0, w_ih, w_hh, bs, [empty] * len(w_hh), self.chunk_rows,
                                    self.grain, small)
        return out[0], (out[1], out[2])


BACKEND = NativeBackend()
