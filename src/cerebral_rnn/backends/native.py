r"""``"native"`` backend: the time loop of a layer, forward and backward (BPTT), in compiled C++ (CPU).

Kinds: those with a ``native_id`` (:data:`cerebral_rnn.kinds.KINDS`): ``cerebral`` (any number of paths K, no
``proj_size``), ``cerebral-peephole`` and ``cerebral-gru`` (any K), and the one-path ``lstm`` (no ``proj_size``)
and ``gru`` of :class:`cerebral_rnn.LSTM` / :class:`cerebral_rnn.GRU` (the same kernels with K = 1, which compute
torch's equations; ``"auto"`` runs them where :meth:`NativeBackend.beats_torch` says they are faster), with or
without recurrent dropout, zoneout and layer norm (``forward_layer(..., step_regs=...)``;
:mod:`cerebral_rnn.regularise`). Recurrent dropout: the step's
recurrent product reads ``m * h_{t-1}``, written by the step before as it stores ``h``; the BPTT masks the
recurrent product's gradient and ``dW_hh`` reads the saved ``m * h_{t-1}``. Zoneout: where a step stores ``h``
and each path's ``c`` it keeps the masked (training) or expected (eval) fraction of the previous value; the BPTT
splits each gradient between the update and the kept value, and recomputes the un-zoned cell (what the output
read) from the saved gates, bit for bit as the forward made it. Layer norm (:class:`NativeLNFunction`): its own
loop, since each LN needs a path's whole row of pre-activations before the step: the input side's LN after the
input GEMM (over every step in training, a chunk of steps at a time in inference), then per step every path's
recurrent product on the register-blocked panels (unit blocks shared by the threads) and per batch row (rows
shared by the threads) the normalisations, the step and the output's LN; the BPTT mirrors it per row, writing
its gradients over the saved normalised products and summing the gains', shifts', biases' and peepholes'
gradients per thread as it goes, then ``dh_{t-1}`` by one GEMM per path; a second backward through the same
graph recomputes the forward first. float32 and float64; dense input; one or two directions; any hidden size and batch. Training goes through
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
default) uses the fused kernels, chosen by measuring the three routes on grid shapes with both ISAs
(``docs/native.md``).

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

**Build**: ``pip install`` / ``pip wheel`` compile the source at install time (``setup.py``), one extension
module per variant of :mod:`~cerebral_rnn.backends._build`: ``_native_avx512`` (``-march=x86-64-v4``),
``_native_avx2`` (``-march=x86-64-v3``) and ``_native_default`` (no ``-march``, ATen's generic ``Vectorized``,
correct on any CPU; the only one off x86-64). The first use picks the variant for ATen's CPU capability
(:func:`torch.backends.cpu.get_cpu_capability`, which ``ATEN_CPU_CAPABILITY`` can lower) and imports it if it
was built from the source installed beside it and against the running torch's version. Otherwise the variant is
compiled then with ``torch.utils.cpp_extension.load`` (a C++ compiler and ``ninja`` needed; about a minute,
announced on stderr; ``-mtune=native`` added) into torch's extension cache (``TORCH_EXTENSIONS_DIR``), under a
name that carries the variant, a hash of this CPU's model and flags and a hash of the source, flags and torch
version. Builds hold an ``flock`` on their folder (a killed build leaves no lock behind; a lock file torch's
loader left is removed) and wait at most ``CEREBRAL_RNN_BUILD_TIMEOUT`` seconds (900) for another process's
build. If nothing works, the reason is remembered, :meth:`NativeBackend.supports` gives it, ``"auto"`` falls back
and warns once. ``CEREBRAL_RNN_NATIVE=0`` turns the backend off; ``CEREBRAL_RNN_NATIVE_VERBOSE=1`` shows a build;
:func:`cerebral_rnn.backends.prepare` loads it up front (``BUILD_ORIGIN``, ``BUILD_TARGET`` say what it loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kinds import KINDS
from . import _build
from ._compile import exporting
from ._rules import dense_cpu_reason, needs_grad

GEMM_MODES = {"own": 0, "addmm": 1, "onednn": 2}
_X86 = _build.X86


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


_CAPABILITY: str | None = None


def _cap() -> str:
    """:func:`capability`, read once."""
    global _CAPABILITY
    if _CAPABILITY is None:
        _CAPABILITY = capability()
    return _CAPABILITY


def build_flags(cap: str | None = None) -> list[str]:
    """Compiler flags of the build on first use for ATen's CPU capability ``cap``: the vector ISA ATen's kernels
    use, so that the extension's ``at::vec::Vectorized`` is the same width (and runs wherever ATen's does)."""
    return _build.compile_flags(_build.variant_for(capability() if cap is None else cap), tune_native=True)


def build_target(cap: str | None = None) -> str:
    """The instruction set the variant for ATen's CPU capability ``cap`` is compiled for."""
    return _build.target(_build.variant_for(capability() if cap is None else cap))


def _jit_name(variant: str, flags: list[str]) -> str:
    key = _build.SOURCE.read_bytes() + " ".join(flags).encode() + torch.__version__.encode()
    return f"cerebral_rnn_native_{variant}_{_cpu_tag()}_{hashlib.sha1(key).hexdigest()[:10]}"


_EXT = None
_ERROR: str | None = None  # why the extension could not be built or loaded; set once, never retried
_WARNED = False  # the fallback warning is given once per process
BUILD_SECONDS: float | None = None  # time the first load took in this process (an import, a build, or the cache)
BUILD_TARGET: str | None = None  # what the loaded extension was compiled for, e.g. "x86-64-v3 (AVX2)"
BUILD_ORIGIN: str | None = None  # where it came from: "installed module <name>" or "compiled on first use in <dir>"


def _say(message: str) -> None:
    print(f"cerebral-rnn: {message}", file=sys.stderr, flush=True)


def _installed(variant: str):
    """The module ``setup.py`` built for ``variant``, or ``(None, why not)``. It is used only if it was built from
    the source beside it and against the running torch's version (the C++ ABI changes between releases)."""
    name = f"{__package__}.{_build.module_name(variant)}"
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        return None, f"no installed module {name} ({str(exc).strip()[:200]})"
    running = torch.__version__.split("+")[0]
    if getattr(mod, "torch_version", None) != running:
        return None, f"{name} was built for torch {getattr(mod, 'torch_version', '?')}, this is torch {running}"
    if getattr(mod, "source_sha", None) != _build.source_sha():
        return None, f"{name} was built from another version of {_build.SOURCE.name}"
    return mod, None


def _build_timeout() -> float:
    raw = os.environ.get("CEREBRAL_RNN_BUILD_TIMEOUT", "900")
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"CEREBRAL_RNN_BUILD_TIMEOUT: expected seconds, got {raw!r}") from None


@contextlib.contextmanager
def _build_lock(folder: Path, timeout: float):
    """Hold an exclusive ``flock`` on ``folder`` while building: the kernel releases it when its holder dies, so
    a killed build never blocks the next one. Waits at most ``timeout`` seconds for another process's build."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file only
        yield
        return
    with open(folder / "cerebral_rnn.flock", "w") as f:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another process kept building the native backend in {folder} for more "
                                       f"than {timeout:.0f} s (CEREBRAL_RNN_BUILD_TIMEOUT)") from None
                if not waiting:
                    _say(f"waiting for another process that is building the native backend in {folder}")
                    waiting = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile(variant: str, why: str):
    """Compile ``variant`` with ``torch.utils.cpp_extension.load`` into the extension cache (or load it from
    there), saying so on stderr when it compiles."""
    from torch.utils.cpp_extension import get_default_build_root, load

    _put_ninja_on_path()
    flags = _build.compile_flags(variant, tune_native=True)
    name = _jit_name(variant, flags)
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
    folder.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder, _build_timeout()):
        baton = folder / "lock"
        if baton.exists():  # torch's lock file, left by a build that was killed (builds hold the flock above)
            _say(f"removing {baton}, left by an interrupted build")
            baton.unlink()
        if not (folder / f"{name}.so").exists():
            _say(f"compiling the native CPU backend for {_build.target(variant)}, once per machine (about a "
                 f"minute; {why}); CEREBRAL_RNN_NATIVE=0 skips it")
        ext = load(name=name, sources=[str(_build.SOURCE)], extra_cflags=flags, extra_ldflags=_build.link_flags(),
                   build_directory=str(folder), verbose=bool(os.environ.get("CEREBRAL_RNN_NATIVE_VERBOSE")))
    return ext, f"compiled on first use in {folder}"


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
    """The compiled extension: the module installed for this CPU's variant, else one compiled on first use;
    None (with ``_ERROR`` set) if neither works."""
    global _EXT, _ERROR, BUILD_SECONDS, BUILD_TARGET, BUILD_ORIGIN
    if _EXT is not None or _ERROR is not None:
        return _EXT
    if os.environ.get("CEREBRAL_RNN_NATIVE", "1") == "0":
        _ERROR = "disabled by CEREBRAL_RNN_NATIVE=0"
        return None
    t0 = time.perf_counter()
    variant = _build.variant_for(capability())
    ext, why = _installed(variant)
    origin = f"installed module {__package__}.{_build.module_name(variant)}"
    if ext is None:
        try:
            ext, origin = _compile(variant, why)
        except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a failed build: all mean "unavailable"
            _ERROR = (f"the C++ extension could not be built ({why}): {type(exc).__name__}: "
                      f"{str(exc).strip()[:300]}")
            return None
    _EXT = ext
    BUILD_SECONDS = time.perf_counter() - t0
    BUILD_TARGET = _build.target(variant)
    BUILD_ORIGIN = origin
    return _EXT


def _warn_fallback() -> None:
    """Say once per process that the compiled backend is missing (unless it was turned off on purpose)."""
    global _WARNED
    if not _WARNED and _ERROR is not None and not _ERROR.startswith("disabled"):
        _WARNED = True
        warnings.warn(f"cerebral-rnn: the native backend is unavailable, so the layers run slower pure-PyTorch "
                      f"backends: {_ERROR}. Set CEREBRAL_RNN_NATIVE=0 to silence this.", RuntimeWarning,
                      stacklevel=2)


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


class StepArgs(NamedTuple):
    """The regularisers inside the step, as the C++ kernels take them (per direction; empty lists: off):
    recurrent-dropout masks (B, H), scaled; zoneout keep masks of h (T, B, H) and of c (T, B, K H), 0/1 in the
    input's dtype (training); the zoneout probabilities of h and c for the expectation (eval; 0: off)."""

    rmask: list
    zh: list
    zc: list
    ph: float = 0.0
    pc: float = 0.0


NO_STEP_ARGS = StepArgs([], [], [])


def step_args(step_regs, dtype) -> StepArgs:
    """:class:`StepArgs` of a layer's :class:`~cerebral_rnn.regularise.StepRegs` (one per direction; None: off).
    Layer norm's gains and shifts go separately (:func:`ln_args`)."""
    if step_regs is None:
        return NO_STEP_ARGS

    def each(name):
        ts = [getattr(r, name) for r in step_regs]
        return [] if any(t is None for t in ts) else [t.detach().to(dtype).contiguous() for t in ts]

    r0 = step_regs[0]
    return StepArgs(each("h_mask"), each("zone_h"), each("zone_c"), 0.0 if r0.training else float(r0.p_h),
                    0.0 if r0.training else float(r0.p_c))


class NativeFunction(torch.autograd.Function):
    """One layer (every direction) with hand-written BPTT in C++. Inputs: a plan, the step's regularisers
    (:class:`StepArgs`), ``x`` (T, B, I), ``h_0`` (D, B, H), ``c_0`` (D, B, K H) or None, then per direction
    ``w_ih, w_hh, b_ih, b_hh, peephole`` (absent ones None). Outputs: ``y`` (T, B, D H), ``h_n`` and, for kinds
    with a cell, ``c_n``."""

    @staticmethod
    def forward(ctx, plan, regs, x, h0, c0, *flat):
        ext = _load()
        w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
        x = x.contiguous()
        masks = regs.rmask
        out = ext.forward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, True, plan.fwd_mode,
                          plan.threads, plan.chunk_rows, *regs)
        y, h_n, c_n = out[0], out[1], out[2]
        # per direction and path: activations (D K), then cell states or GRU's W_hn h + b_hn (D K); then, with
        # recurrent dropout, per direction the masked h_prev of every step (D)
        n_hm = len(masks)
        saved = out[3:len(out) - n_hm]
        ctx.plan = plan
        ctx.n_saved = len(saved)
        ctx.n_masks = n_hm
        ctx.zone = (regs.zh, regs.zc, regs.ph, regs.pc)  # constants (masks drawn before the call), not outputs
        ctx.save_for_backward(x, h0, c0, y, *flat, *saved, *masks, *out[len(out) - n_hm:])
        if plan.has_cell:
            return y, h_n, c_n
        return y, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        plan = ctx.plan
        saved = ctx.saved_tensors
        nm = ctx.n_masks
        masks, hms = list(saved[len(saved) - 2 * nm:len(saved) - nm]), list(saved[len(saved) - nm:])
        saved = saved[:len(saved) - 2 * nm]
        x, h0, c0, y = saved[:4]
        n = ctx.n_saved
        flat = saved[4:len(saved) - n]
        rest = saved[len(saved) - n:]
        D = len(flat) // 5
        w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
        acts, states = list(rest[: n // 2]), list(rest[n // 2:])
        need = ctx.needs_input_grad[1:]  # (regs, x, h0, c0, *flat)
        pneed = [any(need[4 + 5 * d + i] for d in range(D)) for i in range(5)]
        needs = [need[1], need[2], bool(need[3]), *pneed]
        res = _load().backward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, y, acts, states,
                               dy, dh_n, dc_n, needs, plan.bwd_mode, plan.threads, masks, hms, *ctx.zone)
        dx, dh0, dc0 = res[0], res[1], res[2]
        grads = []
        for d in range(D):
            for i in range(5):
                g = res[3 + 5 * d + i]
                grads.append(g if need[4 + 5 * d + i] else None)
        return (None, None, dx if need[1] else None, dh0 if need[2] else None, dc0 if need[3] else None, *grads)


def ln_args(step_regs, dtype) -> list | None:
    """The layer-norm gains and shifts of every direction as the C++ kernels take them (6 per direction: LN_ih's,
    LN_hh's, LN_c's gain and shift; None for the GRU's c pair), or None without layer norm."""
    if step_regs is None or step_regs[0].ln is None:
        return None
    return [None if t is None else t.to(dtype) for r in step_regs for t in r.ln]


class NativeLNFunction(torch.autograd.Function):
    """One layer with layer norm (every direction), hand-written BPTT in C++. Inputs as :class:`NativeFunction`'s,
    then per direction the 6 layer-norm tensors (``ln_args``). Outputs as :class:`NativeFunction`'s."""

    @staticmethod
    def forward(ctx, plan, regs, x, h0, c0, n_flat, *tensors):
        ext = _load()
        flat, ln = tensors[:n_flat], list(tensors[n_flat:])
        w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
        x = x.contiguous()
        out = ext.ln_forward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, ln, True,
                             plan.threads, *regs)
        D, K = len(w_hh), plan.paths
        n_saved = LN_SAVED * D * K
        saved = out[3:3 + n_saved]
        hms = out[3 + n_saved:]
        ctx.plan, ctx.n_flat, ctx.n_saved, ctx.n_masks = plan, n_flat, n_saved, len(regs.rmask)
        ctx.none = [t is None for t in saved]  # saved slots a kind does not use
        ctx.zone = (regs.zh, regs.zc, regs.ph, regs.pc)
        ctx.regs, ctx.consumed = regs, False
        ctx.save_for_backward(x, h0, c0, out[0], *flat, *ln, *(t for t in saved if t is not None), *regs.rmask,
                              *hms)
        return (out[0], out[1], out[2]) if plan.has_cell else (out[0], out[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        plan, n_flat = ctx.plan, ctx.n_flat
        st = list(ctx.saved_tensors)
        x, h0, c0, y = st[:4]
        flat = st[4:4 + n_flat]
        D = n_flat // 5
        ln = st[4 + n_flat:4 + n_flat + 6 * D]
        rest = iter(st[4 + n_flat + 6 * D:])
        saved = [None if none else next(rest) for none in ctx.none]
        rest = list(rest)
        masks, hms = rest[:ctx.n_masks], rest[ctx.n_masks:]
        w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
        if ctx.consumed:  # a second backward through this graph (retain_graph=True): the first one overwrote
            # the saved normalised products with their gradients; the forward, recomputed, gives them back
            out = _load().ln_forward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, ln, True,
                                     plan.threads, *ctx.regs)
            saved = list(out[3:3 + ctx.n_saved])
        ctx.consumed = True
        need = ctx.needs_input_grad  # (plan, regs, x, h0, c0, n_flat, *flat, *ln)
        pneed = [any(need[6 + 5 * d + i] for d in range(D)) for i in range(5)]
        lneed = any(need[6 + n_flat:])
        needs = [need[2], need[3], bool(need[4]), *pneed, lneed]
        res = _load().ln_backward(plan.kind, plan.paths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, ln, y, saved, dy,
                                  dh_n, dc_n, needs, plan.threads, masks, hms, *ctx.zone)
        grads, lgrads = [], []
        for d in range(D):
            base = 3 + 11 * d
            grads += [res[base + i] if need[6 + 5 * d + i] else None for i in range(5)]
            lgrads += [res[base + 5 + j] if need[6 + n_flat + 6 * d + j] else None for j in range(6)]
        return (None, None, res[0] if need[2] else None, res[1] if need[3] else None,
                res[2] if need[4] else None, None, *grads, *lgrads)


LN_SAVED = 9  # tensors ln_forward saves per direction and path (the C++ LN_SAVED)


class NativeBackend:
    """Compiled C++ time loop and BPTT: LSTM (no proj_size), peephole LSTM and GRU layers of any number of
    paths; CPU, float32/float64, dense input; training and inference."""

    name = "native"
    kinds = tuple(name for name, kind in KINDS.items() if kind.native_id is not None)  # the C++ kernels' kinds
    # Rows (steps x batch) of the input projection per GEMM in inference; None: as many as fill 512 KiB of
    # projection (every path), so that it is still in L2 when the steps read it, within [256, 1024] rows (MKL's
    # sgemm repacks W_ih at every call, which small chunks pay often). Measurements: docs/native.md.
    chunk_rows: int | None = None
    # The GEMM of the recurrence, forward and backward: None = "own" (the fused register-blocked kernels; see the
    # module docstring for the measurement); "addmm" or "onednn" force a library call per path and step (tests
    # use this to cover every route).
    gemm: str | None = None
    # Below this many multiply-adds per step (B x K x G H x H) one thread runs the loop: waking a second thread
    # for every step costs more than it saves (measurements: docs/native.md, "Threads").
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
            _warn_fallback()
            return _ERROR
        return None

    # One-path layers (cerebral_rnn.LSTM and GRU, kinds "lstm" and "gru"): where "auto" runs this backend rather
    # than torch's fused op, from benchmarks/speed.py's K = 1 rows on an AMD EPYC Zen 3 (AVX2) and Zen 5
    # (AVX-512), 2 threads (docs/backends.md, "One path"). The GRU: everywhere (0.1-0.9x nn.GRU on both). The
    # LSTM: in training everywhere (0.70-1.05x); in inference with AVX2 up to H = lstm_max_hidden_infer
    # (0.75-0.89x; 1.06-1.12x at H = 512), with AVX-512 up to lstm_max_batch_infer rows (0.68-1.03x; oneDNN's
    # AVX-512 forward was faster from B = 32 on). Not measured elsewhere (the generic build): torch's op.
    lstm_max_hidden_infer = 256
    lstm_max_batch_infer = 16

    def beats_torch(self, spec, x: Tensor, training: bool) -> bool:
        """Whether ``"auto"`` should run a one-path LSTM / GRU layer here instead of torch's fused op (the
        measured rule above; ``training``: autograd records the call)."""
        cap = _cap()
        if spec.kind.name not in ("lstm", "gru") or cap not in ("AVX2", "AVX512"):
            return False
        if spec.kind.name == "gru" or training:
            return True
        if cap == "AVX512":
            return x.shape[1] <= self.lstm_max_batch_infer
        return spec.hidden_size <= self.lstm_max_hidden_infer

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
        return Plan(spec.kind.native_id, spec.paths, fwd, bwd, self._threads(x, spec), self._chunk_rows(x, spec),
                    spec.kind.has_cell)

    def forward_layer(self, spec, x, states, weights, batch_sizes, step_regs=None):
        """As every backend's; ``step_regs``: the layer's recurrent dropout, zoneout and layer norm, one
        :class:`~cerebral_rnn.regularise.StepRegs` per direction, or None. Layer norm runs its own loop
        (:class:`NativeLNFunction`: per step the recurrent products, then the rows' normalisation and step)."""
        plan = self.plan(spec, x)
        h0 = states[0]
        c0 = states[1] if spec.kind.has_cell else None
        regs = step_args(step_regs, x.dtype)
        flat = []
        for w in weights:
            flat += [w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.peephole]
        ln = ln_args(step_regs, x.dtype)
        if ln is not None:
            if needs_grad(x, states, weights) or (torch.is_grad_enabled()
                                                  and any(t is not None and t.requires_grad for t in ln)):
                out = NativeLNFunction.apply(plan, regs, x, h0, c0, len(flat), *flat, *ln)
            else:
                w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
                with torch.no_grad():
                    out = _load().ln_forward(plan.kind, plan.paths, x.contiguous(), h0, c0, w_ih, w_hh, b_ih, b_hh,
                                             peep, ln, False, plan.threads, *regs)[:3]
        elif needs_grad(x, states, weights):
            out = NativeFunction.apply(plan, regs, x, h0, c0, *flat)
        else:
            w_ih, w_hh, b_ih, b_hh, peep = _split(flat)
            with torch.no_grad():
                out = _load().forward(plan.kind, plan.paths, x.contiguous(), h0, c0, w_ih, w_hh, b_ih, b_hh, peep,
                                      False, plan.fwd_mode, plan.threads, plan.chunk_rows, *regs)[:3]
        if spec.kind.has_cell:
            return out[0], (out[1], out[2])
        return out[0], (out[1],)


BACKEND = NativeBackend()
