r"""``"native"`` backend: the time loop of a layer, forward and backward (BPTT), in compiled C++ (CPU).

Kinds: ``lstm`` (any number of paths K, no ``proj_size``), ``peephole`` and ``gru`` (any K); float32 and
float64; dense input; one or two directions; any hidden size and batch. Training goes through
:class:`NativeFunction` (an ``autograd.Function``); inference (no autograd recording) runs the same forward
without saving anything. The C++ source is ``native_kernels.cpp`` beside this module.

Per direction:

* **input projection**: one GEMM per path, ``X W_ih,k^T`` (``at::mm``), over every step in training, over chunks
  of 256-1024 rows (``NativeBackend.chunk_rows``) into one reused buffer in inference; the biases (``b_ih + b_hh`` for LSTM kinds,
  ``b_ih`` for the GRU) are added inside the recurrent kernel;
* **recurrence**: per step, for one block of hidden units (one vector wide) and a group of batch rows, every
  path's recurrent GEMM accumulates all its gates in registers (a register-blocked kernel reading ``W_hh,k``
  packed per path into panels), then the kind's pointwise step runs on them and the paths' outputs are combined
  (sum, or mean for the GRU) into ``h_t``. Threads (``torch.get_num_threads()``) share a step by unit blocks:
  each owns a range and claims its blocks, and takes what is left of the others' when done; a step starts when
  every block of the previous one is done. Loops with fewer than ``min_work_per_thread`` multiply-adds a step
  run on one thread;
* **backward**: per step, the kind's pointwise backward per path (gates, cell state, GRU's ``z * dh`` and the
  peephole terms; bias and peephole gradients summed on the way), then ``dh_{t-1} = dy_{t-1} + sum_k dG_k
  W_hh,k`` (paths in order) by a second register-blocked kernel; after the loop, per path, ``dW_ih,k =
  (X^T dG_k)^T`` and ``dW_hh,k = (H_prev^T dG_k)^T`` (one GEMM each over every step) and ``dX = sum_k dG_k
  W_ih,k``. Only what ``ctx.needs_input_grad`` asks for is computed; the saved tensors are never modified, so
  ``backward`` can run twice (``retain_graph``).

The recurrent GEMM can also be a library call per path and step (``gemm="addmm"``: ``at::addmm``;
``gemm="onednn"``: oneDNN with the weight packed once per call through the private op
``torch.ops.mkldnn._linear_pointwise``, probed once, float32) followed by the pointwise pass. ``gemm=None`` (the
default) uses the fused kernels: measured on grid shapes (one thread, AVX-512 and AVX2 builds), a layer ran
within 7% of ``addmm`` at B = 64 (faster at some shapes, slower at others; training up to 14% faster), 3-17%
faster at B <= 8, and 1.1-9x faster than with ``onednn`` (a new output tensor per call); see
``docs/native.md``.

**Symmetry by construction** (``init="identical"`` paths stay bitwise identical in training): every path is
computed by the same code on operands of the same shape in buffers of its own (or views at offsets that are
multiples of 64 bytes); the recurrent kernels compute every output element as one sequential chain of fused
multiply-adds, whatever its position in a vector or a block; the pointwise loops use ``at::vec::Vectorized``
with masked partial loads and stores for the last vector of a row (no scalar tail loop); library GEMMs are one
call per path on same-shaped, equally aligned operands. So this backend runs layers whose paths are identical.

**Activations**: ``sigmoid(x) = 1 / (1 + exp(-x))``, float32 ``tanh(x) = 1 - 2 / (exp(2x) + 1)``. float32 with
the AVX-512 or AVX2 build: an exp by range reduction and a degree-6 polynomial (about 1 ulp) and the reciprocal
by the ISA's estimate plus one Newton step (about 1 ulp; a division costs several times more); the generic
build uses ATen's ``exp`` and division; float64 uses Sleef's ``exp``/``tanh`` (1 ulp) and division. All saturate
without inf or NaN (float32 sigmoid bottoms out at 1.8e-35).

**Build**: compiled on first use with ``torch.utils.cpp_extension.load`` following ATen's CPU capability
(:func:`torch.backends.cpu.get_cpu_capability`, which ``ATEN_CPU_CAPABILITY`` can lower): ``"AVX512"`` builds with
``-march=x86-64-v4 -mtune=native -DCPU_CAPABILITY_AVX512``, ``"AVX2"`` with ``-march=x86-64-v3 -mtune=native
-DCPU_CAPABILITY_AVX2``; anything else without ``-march``, using ATen's generic ``Vectorized`` (correct on any
CPU). Always ``-O3 -fopenmp -ffp-contract=off`` (the arithmetic is what the source says). The extension's name
carries the capability, a hash of this CPU's model and flags and a hash of the source and flags, so builds for
different ISAs coexist in torch's extension cache (``TORCH_EXTENSIONS_DIR``). It needs a C++ compiler and
``ninja``; if the build fails, the failure is remembered and :meth:`NativeBackend.supports` gives it as the
reason (``"auto"`` falls back). ``CEREBRAL_RNN_NATIVE=0`` turns the backend off; ``CEREBRAL_RNN_NATIVE_VERBOSE=1``
shows the build; :func:`cerebral_rnn.backends.prepare` builds it up front.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._compile import exporting
from ._rules import dense_cpu_reason, needs_grad

_SOURCE = Path(__file__).with_name("native_kernels.cpp")
KIND_IDS = {"lstm": 0, "peephole": 1, "gru": 2}
GEMM_MODES = {"own": 0, "addmm": 1, "onednn": 2}


def _cpu_tag() -> str:
    """A short hash of this CPU's model and feature flags (``-mtune=native``; a cache shared between machines,
    e.g. a network home directory, must not hand one machine's build to another)."""
    info = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        info += platform.processor()
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def capability() -> str:
    """ATen's CPU capability in this process ("AVX512", "AVX2", "DEFAULT", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old torch or an unknown platform: the generic build
        return "DEFAULT"


_X86 = platform.machine().lower() in ("x86_64", "amd64")


def build_flags(cap: str | None = None) -> list[str]:
    """Compiler flags for ATen's CPU capability ``cap``: the vector ISA ATen's kernels use, so that the
    extension's ``at::vec::Vectorized`` is the same width (and runs wherever ATen's does)."""
    cap = capability() if cap is None else cap
    x86 = _X86
    flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if x86 and cap == "AVX512":
        flags += ["-march=x86-64-v4", "-mtune=native", "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=crnn_avx512"]
    elif x86 and cap == "AVX2":
        flags += ["-march=x86-64-v3", "-mtune=native", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=crnn_avx2"]
    else:
        flags += ["-DCPU_CAPABILITY=crnn_default"]
    return flags


def _name(cap: str, flags: list[str]) -> str:
    src = hashlib.sha1(_SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:10]
    return f"cerebral_rnn_native_{cap.lower()}_{_cpu_tag()}_{src}"


_EXT = None
_ERROR: str | None = None  # why the extension could not be built or loaded; set once, never retried
BUILD_SECONDS: float | None = None  # time the first load took in this process (a build, or loading the cache)
BUILD_TARGET: str | None = None  # what the loaded extension was compiled for, e.g. "x86-64-v3 (AVX2)"


def build_target(cap: str | None = None) -> str:
    """The instruction set :func:`build_flags` compiles for at ATen's CPU capability ``cap``."""
    cap = capability() if cap is None else cap
    if _X86 and cap == "AVX512":
        return "x86-64-v4 (AVX-512)"
    if _X86 and cap == "AVX2":
        return "x86-64-v3 (AVX2)"
    return f"generic ({platform.machine()}, compiler default)"


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
    global _EXT, _ERROR, BUILD_SECONDS, BUILD_TARGET
    if _EXT is not None or _ERROR is not None:
        return _EXT
    if os.environ.get("CEREBRAL_RNN_NATIVE", "1") == "0":
        _ERROR = "disabled by CEREBRAL_RNN_NATIVE=0"
        return None
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        cap = capability()
        flags = build_flags(cap)
        _EXT = load(name=_name(cap, flags), sources=[str(_SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                    verbose=bool(os.environ.get("CEREBRAL_RNN_NATIVE_VERBOSE")))
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed build: all mean "unavailable"
        _ERROR = f"the C++ extension could not be built: {type(exc).__name__}: {str(exc).strip()[:300]}"
        return None
    BUILD_SECONDS = time.perf_counter() - t0
    BUILD_TARGET = build_target(cap)
    return _EXT


def unavailable_reason() -> str | None:
    """Why the extension cannot be used (None if it is loaded or not tried yet)."""
    return _ERROR


def available() -> bool:
    """Whether the extension is (or can be) built and loaded; builds it on first call."""
    return _load() is not None


_ONEDNN_OK: bool | None = None  # the private oneDNN ops work in this torch build (probed once)


def _onednn_ok() -> bool:
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        try:
            w = torch.zeros(8, 4)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
            torch.ops.mkldnn._linear_pointwise.binary(torch.zeros(2, 4), torch.zeros(2, 8), packed, None, "add")
            _ONEDNN_OK = torch.backends.mkldnn.is_available()
        except (RuntimeError, AttributeError, NotImplementedError):
            _ONEDNN_OK = False
    return _ONEDNN_OK


class Plan(NamedTuple):
    """How one call runs: the kind's id in the C++ code, the paths, the GEMM route of the recurrence forward and
    backward (``GEMM_MODES``), the threads and the rows of an inference chunk."""

    kind: int
    paths: int
    fwd_mode: int
    bwd_mode: int
    threads: int
    chunk_rows: int
    has_cell: bool


def _split(flat):
    """The flat parameter list (5 per direction: w_ih, w_hh, b_ih, b_hh, peephole) as 5 lists over directions."""
    return [list(flat[i::5]) for i in range(5)]


class NativeFunction(torch.autograd.Function):
    """One layer (every direction) with hand-written BPTT in C++. Inputs: a plan, ``x`` (T, B, I), ``h_0``
    (D, B, H), ``c_0`` (D, B, K H) or None, then per direction ``w_ih, w_hh, b_ih, b_hh, peephole`` (absent ones
    None). Outputs: ``y`` (T, B, D H), ``h_n`` and, for kinds with a cell, ``c_n``."""

    @staticmethod
    def forward(ctx, plan, x, h0, c0, *flat):
        ext = _load()
        w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
        x = x.contiguous()
        out = ext.forward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, True, plan.fwd_mode,
                          plan.threads, plan.chunk_rows)
        y, h_n, c_n = out[0], out[1], out[2]
        saved = out[3:]  # per direction and path: activations (D K), then cell states or GRU's W_hn h + b_hn (D K)
        ctx.plan = plan
        ctx.n_saved = len(saved)
        ctx.save_for_backward(x, h0, c0, y, *flat, *saved)
        if plan.has_cell:
            return y, h_n, c_n
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        plan = ctx.plan
        saved = ctx.saved_tensors
        x, h0, c0, y = saved[:4]
        n = ctx.n_saved
        flat = saved[4:len(saved) - n]
        rest = saved[len(saved) - n:]
        D = len(flat) // 5
        w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
        acts, states = list(rest[: n // 2]), list(rest[n // 2:])
        need = ctx.needs_input_grad  # (plan, x, h0, c0, *flat)
        pneed = [any(need[4 + 5 * d + i] for d in range(D)) for i in range(5)]
        needs = [need[1], need[2], bool(need[3]), *pneed]
        res = _load().backward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, y, acts, states,
                               dy, dh_n, dc_n, needs, plan.bwd_mode, plan.threads)
        dx, dh0, dc0 = res[0], res[1], res[2]
        grads = []
        for d in range(D):
            for i in range(5):
                g = res[3 + 5 * d + i]
                grads.append(g if need[4 + 5 * d + i] else None)
        return (None, dx if need[1] else None, dh0 if need[2] else None, dc0 if need[3] else None, *grads)


class NativeBackend:
    """Compiled C++ time loop and BPTT: LSTM (no proj_size), peephole LSTM and GRU layers of any number of
    paths; CPU, float32/float64, dense input; training and inference."""

    name = "native"
    kinds = ("lstm", "peephole", "gru")
    # Rows (steps x batch) of the input projection per GEMM in inference; None: as many as fill 512 KiB of
    # projection (every path), so that it is still in L2 when the steps read it, within [256, 1024] rows: MKL's
    # sgemm repacks W_ih at every call (~15% of the projection at 128 rows, ~2% at 1024 for I = 256, 4H = 2048).
    # Measured (one thread, AVX-512): 100,64,32,128 inference 18.0-18.6 ms at 128-256 rows, 18.9-20.1 at 1024,
    # 22.6-24.4 at 2048; 25,64,512,512: 103-108 ms at any of 128-2048 rows.
    chunk_rows: int | None = None
    # The GEMM of the recurrence, forward and backward: None = "own" (the fused register-blocked kernels; see the
    # module docstring for the measurement); "addmm" or "onednn" force a library call per path and step (tests
    # use this to cover every route).
    gemm: str | None = None
    # Below this many multiply-adds per step (B x K x G H x H) one thread runs the loop: waking a second thread
    # for every step costs more than it saves (measured, 2 threads: at 32768 two threads were no faster, from
    # 131072 (e.g. B = 1, H = 128) they were 1.2-1.5x faster in inference).
    min_work_per_thread = 1 << 16

    def supports(self, spec, x: Tensor, batch_sizes, weights, states) -> str | None:
        if spec.kind.name not in self.kinds:
            return f"kind {spec.kind.name!r} is not one of {list(self.kinds)}"
        if spec.proj_size:
            return "proj_size is not supported (the layer's other backends compute it)"
        reason = dense_cpu_reason(x, batch_sizes, weights)
        if reason is not None:
            return reason
        if any(s.device.type != "cpu" or s.dtype != x.dtype for s in states):
            return "the initial states are not on the CPU in the input's dtype"
        if x.dim() != 3 or x.shape[1] == 0:
            return "an empty batch"
        if exporting():
            return "torch.export / jit tracing cannot record a C++ extension"
        if _load() is None:
            return _ERROR
        return None

    def _mode(self, x: Tensor) -> int:
        """The GEMM route of the per-step products (forward and BPTT use the same)."""
        mode = self.gemm or "own"
        if mode == "onednn" and (x.dtype != torch.float32 or not _onednn_ok()):
            mode = "addmm"
        return GEMM_MODES[mode]

    def _threads(self, x: Tensor, spec) -> int:
        threads = torch.get_num_threads()
        work = x.shape[1] * spec.paths * spec.path_rows * spec.hidden_size
        return 1 if work < self.min_work_per_thread else threads

    def _chunk_rows(self, x: Tensor, spec) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        return max(256, min(1024, (512 * 1024) // (spec.rows * x.element_size())))

    def plan(self, spec, x: Tensor) -> Plan:
        fwd = bwd = self._mode(x)
        return Plan(KIND_IDS[spec.kind.name], spec.paths, fwd, bwd, self._threads(x, spec), self._chunk_rows(x, spec),
                    spec.kind.has_cell)

    def forward_layer(self, spec, x, states, weights, batch_sizes):
        plan = self.plan(spec, x)
        h0 = states[0]
        c0 = states[1] if spec.kind.has_cell else None
        flat = []
        for w in weights:
            flat += [w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.peephole]
        if needs_grad(x, states, weights):
            out = NativeFunction.apply(plan, x, h0, c0, *flat)
        else:
            w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
            with torch.no_grad():
                out = _load().forward(plan.kind, plan.paths, x.contiguous(), h0, c0, w_ih, w_hh, b_ih, b_hh, peep,
                                      False, plan.fwd_mode, plan.threads, plan.chunk_rows)[:3]
        if spec.kind.has_cell:
            return out[0], (out[1], out[2])
        return out[0], (out[1],)


BACKEND = NativeBackend()
