"""Speed and memory of the Cerebral family against torch.nn.LSTM / torch.nn.GRU, with the machine recorded.

Models (``--models`` picks a subset; the baselines a picked model is measured against are always added). Every
model has the shape's L layers, except ``lstm-2layer``, which has 2L (the stacked-LSTM comparison):

========================== ================================================ ======== =================
name                       module                                           baseline target: train /
                                                                                     infer / memory
========================== ================================================ ======== =================
``cerebral-auto``          CerebralLSTM(I, H), K = 2 paths, backend auto    lstm     2.0 / 2.0 / 1.5
``cerebral-k3-auto``       CerebralLSTM(I, H, num_paths=3), backend auto    lstm     3.0 / 3.0 / -
``cerebral-peephole-auto`` CerebralPeepholeLSTM(I, H), backend auto         lstm     2.2 / 2.2 / -
``cerebral-gru-auto``      CerebralGRU(I, H), backend auto                  gru      2.0 / 2.0 / -
``cerebral-k1-auto``       CerebralLSTM(I, H, num_paths=1), backend auto    lstm     -
``cerebral-gru-k1-auto``   CerebralGRU(I, H, num_paths=1), backend auto     gru      -
``cerebral-reference``     CerebralLSTM(I, H), backend reference (the loop) lstm     -
``lstm``                   nn.LSTM(I, H): the baseline                      lstm     -
``gru``                    nn.GRU(I, H): the GRU models' baseline           lstm     -
``lstm-lib``               cerebral_rnn.LSTM(I, H)                          lstm     1.0 / 1.0 / -
``gru-lib``                cerebral_rnn.GRU(I, H)                           gru      1.0 / 1.0 / -
``lstm-2layer``            nn.LSTM(I, H, num_layers=2L)                     lstm     -
``lstm-matched``           nn.LSTM(I, H'), about cerebral-auto's params     lstm     -
========================== ================================================ ======== =================

``cerebral-reference`` is slow and runs only with ``--with-reference`` or when ``--models`` names it. The
targets are the speed issue's: K = 2 at the FLOP ratio, 2.0x nn.LSTM(H) (training, inference), peak training
memory 1.5x; K = 3 3.0x; peephole 2.2x; CerebralGRU 2.0x nn.GRU(H); the library's one-path LSTM and GRU 1.0x
torch's. The K = 1 Cerebral rows show the native loop with one path against torch's layers (no target).

Throughput: every model's achieved GFLOP/s, from the matrix products' multiply-adds (per layer and path
``2 T B G H (in + H)``, G = 4 for the LSTM kinds, 3 for the GRU; training counted as 3x the forward), and that as
a fraction of the machine's ``torch.mm`` peak, measured once before the grid (``mm_peak_gflops``: a square
float32 product, 2048 (256 with ``--quick``), the same threads; median of 5 calls).

Shapes are (T, B, I, H[, L]) = (steps, batch, input size, hidden size, layers). The default grid is the 7
one-layer shapes of the README plus pytorch/examples' word_language_model as a client would run it: two
layers, I = H = 64, T = 35, training at B = 20 and inference at its evaluation batch B = 10 (each measured in
that mode only). ``--shapes`` takes ``T,B,I,H[,L][:train|:infer]``.

Timing. A training step is forward + backward of ``(y * probe).sum()`` with a fixed random ``probe`` (so the
gradient is dense); inference is a forward under ``torch.no_grad()`` in eval mode. ``--runs`` passes over the
whole grid; in each pass, per shape, every model gets one warm-up call (which also records the backend each
layer ran), then ``--repeats`` timed calls, the models interleaved call by call so that noise from other
processes hits them alike; a model's time in a pass is the median of its calls. A ratio is taken within a pass
(a model's time over its baseline's); the table shows the median of the passes' ratios and their min-max
range. Every timed call of every pass is kept in the JSON. On CUDA every timed call is bracketed by
``torch.cuda.synchronize()``.

Peak training memory (first pass only): on CUDA ``torch.cuda.max_memory_allocated`` over one training step,
minus what was allocated before it. On the CPU, where torch keeps no allocator statistics, glibc's
``mallinfo2`` (bytes in use by malloc, heap and mmap) is sampled after every aten op of one training step (a
``TorchDispatchMode``), and the peak minus the value before the step is reported. It sees every tensor an op
returns or keeps (activations, workspaces, gradients) but not scratch memory allocated and freed inside one
op.

The machine is recorded (CPU model, vendor, ISA flags, torch's CPU capability, ``ATEN_CPU_CAPABILITY`` and
``ONEDNN_MAX_CPU_ISA`` / ``MKL_ENABLE_INSTRUCTIONS``, the native backend's build, threads, versions, load averages at start and end; on CUDA
the GPU, CUDA and cuDNN versions) in the JSON and in the table's header lines. The compiled ``native`` backend
is built (or loaded from the extension cache) before anything is timed.

The JSON report (``"schema": 2``)::

    schema, command (as typed, with the kernel-selecting environment variables), timestamp, timestamp_end,
    seconds, device
    machine   cpu_model, cpu_vendor, cpu_id (family/model/stepping),
              isa_flags {avx2, avx512f, avx512_bf16, amx}, cpu_capability,
              env {ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, DNNL_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS,
              OMP_NUM_THREADS, MKL_NUM_THREADS, CEREBRAL_RNN_NATIVE}, native {ready, unavailable_reason,
              build_target, origin, load_seconds} (null on CUDA), threads, interop_threads, cpu_count,
              cpus_available, memory_bytes, mkldnn, torch, python, os, machine, load_average_start,
              load_average_end (1/5/15 min), l2_cache (lscpu's L2 line), mm_peak_gflops {n, gflops},
              gpu {name, memory_bytes, capability, cuda, cudnn} (null on the CPU)
    settings  runs, repeats, quick, models, shapes, statistic, baseline, memory_method
    results   one per shape: shape {T, B, I, H, L, train, infer}, label,
              models {name: describe, baseline, targets {train, infer, memory}, params, hidden_size,
                      num_layers, num_paths, gates, input_size, train_backend, train_backends (per layer),
                      train_ms (median over runs), train_gflops, infer_backend, infer_backends, infer_ms,
                      infer_gflops, peak_train_bytes},
              ratios {name: baseline, train {median, min, max, runs}, infer {...}, memory, over_target},
              passes [one per run: models {name: train_ms, train_ms_runs, train_backend, infer_...},
                      ratios {name: {train, infer}}, load_average]

A mode a shape does not measure has null times, backends and ratios in ``models`` and ``ratios`` and no keys
in ``passes``; memory is null where it is not measured (inference-only shapes, no mallinfo2).

Usage::

    python benchmarks/speed.py                # the grid, 3 runs: bench-results/speed-cpu-<cpu model>-<isa>.json
    python benchmarks/speed.py --quick        # seconds: bench-results/speed-cpu-<cpu model>-<isa>-quick.json
    python benchmarks/speed.py --device cuda  # bench-results/speed-cuda-<gpu model>-<isa>.json
    python benchmarks/speed.py --shapes 100,64,32,128 35,20,64,64,2:train --models cerebral-auto --runs 5
    python benchmarks/speed.py --with-reference --markdown table.md --json out.json

    # the AVX2 code paths on an AVX-512 machine: bench-results/speed-cpu-<cpu model>-avx2.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/speed.py

(``ATEN_CPU_CAPABILITY`` lowers torch's own kernels and, through it, the ``native`` backend's variant, which
follows torch's capability: x86-64-v3 for AVX2; ``ONEDNN_MAX_CPU_ISA`` lowers oneDNN's, ``MKL_ENABLE_INSTRUCTIONS``
MKL's GEMMs, which would otherwise stay on AVX-512. The record shows the native variant's target,
``BUILD_TARGET``, and which module ran, ``BUILD_ORIGIN``: the one installed, or a build on first use.)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

import cerebral_rnn.backends as cerebral_backends
from cerebral_rnn import GRU as LibGRU
from cerebral_rnn import LSTM as LibLSTM
from cerebral_rnn import CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM

SCHEMA = 2  # version of the JSON layout (1: one pass, one layer, no machine record)


# -- shapes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One point of the grid; ``train``/``infer``: whether that mode is measured at this shape."""

    T: int
    B: int
    I: int
    H: int
    L: int = 1
    train: bool = True
    infer: bool = True

    @property
    def label(self) -> str:
        mode = "" if self.train and self.infer else (" train" if self.train else " infer")
        layers = f", L={self.L}" if self.L != 1 else ""
        return f"{self.T}, {self.B}, {self.I}, {self.H}{layers}{mode}"


SHAPES = [Shape(100, 64, 32, 128), Shape(500, 32, 32, 128), Shape(100, 8, 32, 128), Shape(100, 1, 32, 128),
          Shape(200, 128, 128, 256), Shape(100, 64, 256, 512), Shape(25, 64, 512, 512),
          # pytorch/examples word_language_model: 2 layers, bptt 35, batch 20 (training), eval batch 10
          Shape(35, 20, 64, 64, 2, infer=False), Shape(35, 10, 64, 64, 2, train=False)]
QUICK_SHAPES = [Shape(6, 4, 3, 8), Shape(5, 64, 3, 64), Shape(3, 256, 3, 64),
                Shape(4, 3, 5, 16, 2, infer=False), Shape(4, 2, 5, 16, 2, train=False)]


def parse_shape(text: str) -> Shape:
    """``T,B,I,H[,L][:train|:infer]`` -> Shape (argparse type: its message names the flag)."""
    dims, _, mode = text.partition(":")
    parts = [p.strip() for p in dims.split(",")]
    if len(parts) not in (4, 5) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError("expected T,B,I,H or T,B,I,H,L (positive ints), optionally "
                                         f"followed by :train or :infer, got {text!r}")
    if mode not in ("", "train", "infer"):
        raise argparse.ArgumentTypeError(f"expected :train or :infer after the sizes, got {text!r}")
    return Shape(*(int(p) for p in parts), train=mode != "infer", infer=mode != "train")


# -- models ----------------------------------------------------------------------------------------------


def _params_lstm(I: int, H: int, L: int, paths: int = 1) -> int:
    """Parameters of an L-layer (Cerebral) LSTM with biases: paths * 4H (in + H + 2) per layer."""
    return sum(paths * 4 * H * ((I if layer == 0 else H) + H + 2) for layer in range(L))


def matched_hidden(I: int, H: int, L: int = 1) -> int:
    """Hidden size of an L-layer nn.LSTM with the parameter count closest to CerebralLSTM(I, H, L) (K = 2)."""
    target = _params_lstm(I, H, L, paths=2)
    return min(range(1, 4 * H + 1), key=lambda h: (abs(_params_lstm(I, h, L) - target), h))


@dataclass(frozen=True)
class Model:
    name: str
    describe: str
    baseline: str  # the model every ratio of this one is taken against
    targets: dict  # "train" / "infer" / "memory" -> the highest acceptable ratio, or None
    make: Callable  # (I, H, L, device) -> nn.Module


def _targets(train=None, infer=None, memory=None) -> dict:
    return {"train": train, "infer": infer, "memory": memory}


MODELS = {m.name: m for m in [
    Model("cerebral-auto", "CerebralLSTM(I, H), K=2, backend auto", "lstm", _targets(2.0, 2.0, 1.5),
          lambda I, H, L, d: CerebralLSTM(I, H, L, device=d)),
    Model("cerebral-k3-auto", "CerebralLSTM(I, H, num_paths=3), backend auto", "lstm", _targets(3.0, 3.0),
          lambda I, H, L, d: CerebralLSTM(I, H, L, num_paths=3, device=d)),
    Model("cerebral-peephole-auto", "CerebralPeepholeLSTM(I, H), backend auto", "lstm", _targets(2.2, 2.2),
          lambda I, H, L, d: CerebralPeepholeLSTM(I, H, L, device=d)),
    Model("cerebral-gru-auto", "CerebralGRU(I, H), backend auto", "gru", _targets(2.0, 2.0),
          lambda I, H, L, d: CerebralGRU(I, H, L, device=d)),
    Model("cerebral-k1-auto", "CerebralLSTM(I, H, num_paths=1), backend auto", "lstm", _targets(),
          lambda I, H, L, d: CerebralLSTM(I, H, L, num_paths=1, device=d)),
    Model("cerebral-gru-k1-auto", "CerebralGRU(I, H, num_paths=1), backend auto", "gru", _targets(),
          lambda I, H, L, d: CerebralGRU(I, H, L, num_paths=1, device=d)),
    Model("cerebral-reference", "CerebralLSTM(I, H), backend reference", "lstm", _targets(),
          lambda I, H, L, d: CerebralLSTM(I, H, L, backend="reference", device=d)),
    # the regularisers (cerebral_rnn.regularise), against the same layer unregularised; opt-in (--models): the
    # last three run the reference loop, slow at the large shapes
    Model("cerebral-weight-dropout", "CerebralLSTM(I, H, weight_dropout=0.5)", "cerebral-auto", _targets(1.3, 1.3),
          lambda I, H, L, d: CerebralLSTM(I, H, L, device=d, weight_dropout=0.5)),
    Model("cerebral-recurrent-dropout", "CerebralLSTM(I, H, recurrent_dropout=0.2)", "cerebral-auto",
          _targets(1.3, 1.3), lambda I, H, L, d: CerebralLSTM(I, H, L, device=d, recurrent_dropout=0.2)),
    Model("cerebral-zoneout", "CerebralLSTM(I, H, zoneout=0.1)", "cerebral-auto", _targets(1.3, 1.3),
          lambda I, H, L, d: CerebralLSTM(I, H, L, device=d, zoneout=0.1)),
    Model("cerebral-layer-norm", "CerebralLSTM(I, H, layer_norm=True)", "cerebral-auto", _targets(1.3, 1.3),
          lambda I, H, L, d: CerebralLSTM(I, H, L, device=d, layer_norm=True)),
    Model("lstm", "nn.LSTM(I, H)", "lstm", _targets(), lambda I, H, L, d: nn.LSTM(I, H, L, device=d)),
    Model("gru", "nn.GRU(I, H)", "lstm", _targets(), lambda I, H, L, d: nn.GRU(I, H, L, device=d)),
    Model("lstm-lib", "cerebral_rnn.LSTM(I, H)", "lstm", _targets(1.0, 1.0),
          lambda I, H, L, d: LibLSTM(I, H, L, device=d)),
    Model("gru-lib", "cerebral_rnn.GRU(I, H)", "gru", _targets(1.0, 1.0),
          lambda I, H, L, d: LibGRU(I, H, L, device=d)),
    Model("lstm-2layer", "nn.LSTM(I, H, num_layers=2L)", "lstm", _targets(),
          lambda I, H, L, d: nn.LSTM(I, H, 2 * L, device=d)),
    Model("lstm-matched", "nn.LSTM(I, H') with about cerebral-auto's parameter count", "lstm", _targets(),
          lambda I, H, L, d: nn.LSTM(I, matched_hidden(I, H, L), L, device=d)),
]}
REGULARISED = ["cerebral-weight-dropout", "cerebral-recurrent-dropout", "cerebral-zoneout", "cerebral-layer-norm"]
DEFAULT_MODELS = [n for n in MODELS if n != "cerebral-reference" and n not in REGULARISED]
CEREBRAL_KINDS = ["cerebral-auto", "cerebral-k3-auto", "cerebral-peephole-auto", "cerebral-gru-auto",
                  "cerebral-k1-auto", "cerebral-gru-k1-auto", "lstm-lib", "gru-lib", "cerebral-reference"]


def select_models(names: list[str] | None, with_reference: bool) -> list[str]:
    """The picked models plus the baselines they need, in MODELS order."""
    picked = set(names or DEFAULT_MODELS)
    if with_reference:
        picked.add("cerebral-reference")
    for name in list(picked):
        picked.add(MODELS[name].baseline)
    picked.add("lstm")
    return [n for n in MODELS if n in picked]


def build(shape: Shape, names: list[str], device: str) -> dict[str, nn.Module]:
    models = {}
    for name in names:
        torch.manual_seed(0)  # the same weights whichever subset is picked
        models[name] = MODELS[name].make(shape.I, shape.H, shape.L, device)
    return models


# -- memory ----------------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost"]]


def _malloc_in_use():
    """A function giving the bytes in use by glibc malloc (heap + mmap), or None where mallinfo2 is absent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2

    def in_use() -> int:
        info = fn()
        return info.uordblks + info.hblkhd

    return in_use


class _PeakCPU(TorchDispatchMode):
    """Peak of malloc'd bytes above the value at entry, sampled after every aten op."""

    def __init__(self, in_use) -> None:
        super().__init__()
        self.in_use = in_use
        self.base = self.peak = 0

    def __enter__(self):
        self.base = self.in_use()
        self.peak = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use() - self.base)
        return out


# -- steps and timing ------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, x, probes: dict) -> None:
    for p in model.parameters():
        p.grad = None
    y, _ = model(x)
    probe = probes.setdefault(y.shape[-1], torch.randn(y.shape, device=y.device, dtype=y.dtype))
    (y * probe).sum().backward()


def infer_step(model: nn.Module, x) -> None:
    with torch.no_grad():
        model(x)


@contextlib.contextmanager
def _recording_backends(seen: list):
    """Append the name of every backend ``cerebral_rnn.backends.select_backend`` picks (one per layer)."""
    original = cerebral_backends.select_backend

    def select_and_record(*args, **kwargs):
        backend = original(*args, **kwargs)
        seen.append(backend.name)
        return backend

    cerebral_backends.select_backend = select_and_record
    try:
        yield
    finally:
        cerebral_backends.select_backend = original


def warm_up(model: nn.Module, call: Callable[[], None], device: str) -> list[str]:
    """Run ``call()`` once (untimed); return the backend each layer ran ("torch" for torch's own modules)."""
    if not hasattr(model, "last_backend"):
        call()
        _sync(device)
        return ["torch"]
    seen: list[str] = []
    with _recording_backends(seen):
        call()
    _sync(device)
    # A layer class that stopped calling select_backend still records its last layer's backend.
    return seen or [model.last_backend]


def _backend_label(per_layer: list[str] | None) -> str | None:
    """One name when every layer ran the same backend, else the layers' backends joined by '+'."""
    if not per_layer:
        return None
    return per_layer[0] if len(set(per_layer)) == 1 else "+".join(per_layer)


def time_calls(models: dict, fn, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of ``fn(model)``: ``repeats`` rounds, the models interleaved (no warm-up here)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            _sync(device)
            t0 = time.perf_counter()
            fn(m)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_train_bytes(model: nn.Module, x, probes: dict, device: str, in_use) -> int | None:
    train_step(model, x, probes)  # warm: the same allocations as a timed step
    for p in model.parameters():
        p.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, x, probes)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if in_use is None:
        return None
    with _PeakCPU(in_use) as meter:
        train_step(model, x, probes)
    return meter.peak


def measure_pass(shape: Shape, names: list[str], repeats: int, device: str, in_use, memory: bool) -> dict:
    """One pass at one shape: per model, the backends, every timed call, and (if ``memory``) peak bytes."""
    models = build(shape, names, device)
    torch.manual_seed(1)
    x = torch.randn(shape.T, shape.B, shape.I, device=device)
    probes: dict = {}
    out: dict = {name: {} for name in models}
    modes = [("train", lambda m: train_step(m, x, probes), nn.Module.train)] if shape.train else []
    if shape.infer:
        modes.append(("infer", lambda m: infer_step(m, x), nn.Module.eval))
    for mode, fn, set_mode in modes:
        for name, m in models.items():
            set_mode(m)
            backends = warm_up(m, lambda m=m, fn=fn: fn(m), device)
            out[name][f"{mode}_backends"] = backends
            out[name][f"{mode}_backend"] = _backend_label(backends)
        times = time_calls(models, fn, repeats, device)
        for name in models:
            out[name][f"{mode}_ms_runs"] = [1e3 * t for t in times[name]]
            out[name][f"{mode}_ms"] = statistics.median(out[name][f"{mode}_ms_runs"])
    if memory and shape.train:
        for name, m in models.items():
            m.train()
            out[name]["peak_train_bytes"] = peak_train_bytes(m, x, probes, device, in_use)
    for name, m in models.items():
        out[name]["params"] = sum(p.numel() for p in m.parameters())
        out[name]["hidden_size"] = m.hidden_size
        out[name]["num_layers"] = m.num_layers
        out[name]["num_paths"] = getattr(m, "num_paths", 1)
        kind = getattr(m, "kind", None)
        out[name]["gates"] = kind.gate_blocks if kind is not None else (3 if isinstance(m, nn.GRU) else 4)
        out[name]["input_size"] = m.input_size
    return out


def forward_flops(rec: dict, shape: Shape) -> int:
    """Multiply-adds x 2 of one forward call's matrix products: per layer and path 2 T B G H (in + H)."""
    H, G, K = rec["hidden_size"], rec["gates"], rec["num_paths"]
    return sum(2 * shape.T * shape.B * K * G * H * ((rec["input_size"] if layer == 0 else H) + H)
               for layer in range(rec["num_layers"]))


def mm_peak_gflops(device: str, n: int) -> float:
    """GFLOP/s of a square float32 ``torch.mm`` of size ``n`` with this process's threads (median of 5 calls)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


# -- statistics ------------------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def summarize(shape: Shape, measured: list[dict]) -> dict:
    """The entry of one shape: per-pass ratios, the per-model record, and each ratio's spread over passes."""
    passes = [m["models"] for m in measured]
    names = list(passes[0])
    entry: dict = {"shape": asdict(shape), "label": shape.label, "models": {}, "ratios": {}, "passes": []}
    for p, m in zip(passes, measured):
        ratios = {}
        for name in names:
            base = MODELS[name].baseline
            ratios[name] = {mode: (p[name][f"{mode}_ms"] / p[base][f"{mode}_ms"]
                                   if f"{mode}_ms" in p[name] else None) for mode in ("train", "infer")}
        suffixes = ("_ms", "_ms_runs", "_backend")
        kept = {n: {k: v for k, v in p[n].items() if k.endswith(suffixes)} for n in names}
        entry["passes"].append({"models": kept, "ratios": ratios, "load_average": m["load_average"]})
    first = passes[0]
    for name in names:
        spec, r = MODELS[name], first[name]
        rec = {"describe": spec.describe, "baseline": spec.baseline, "targets": spec.targets,
               **{k: r[k] for k in ("params", "hidden_size", "num_layers", "num_paths", "gates", "input_size")}}
        fwd = forward_flops(rec, shape)
        for mode in ("train", "infer"):
            per_pass = [p[name][f"{mode}_ms"] for p in passes if f"{mode}_ms" in p[name]]
            rec[f"{mode}_backend"] = r.get(f"{mode}_backend")
            rec[f"{mode}_backends"] = r.get(f"{mode}_backends")
            rec[f"{mode}_ms"] = statistics.median(per_pass) if per_pass else None
            flops = fwd * (3 if mode == "train" else 1)
            rec[f"{mode}_gflops"] = flops / (rec[f"{mode}_ms"] * 1e-3) / 1e9 if rec[f"{mode}_ms"] else None
        rec["peak_train_bytes"] = r.get("peak_train_bytes")
        entry["models"][name] = rec
    for name in names:
        spec = MODELS[name]
        q = {"baseline": spec.baseline}
        for mode in ("train", "infer"):
            q[mode] = _spread([p["ratios"][name][mode] for p in entry["passes"]
                               if p["ratios"][name][mode] is not None])
        mine = entry["models"][name]["peak_train_bytes"]
        base = entry["models"][spec.baseline]["peak_train_bytes"]
        q["memory"] = mine / base if mine is not None and base else None
        q["over_target"] = [mode for mode in ("train", "infer", "memory")
                            if spec.targets[mode] is not None and _value(q[mode]) is not None
                            and _value(q[mode]) > spec.targets[mode]]
        entry["ratios"][name] = q
    return entry


def _value(ratio) -> float | None:
    """A ratio's headline number: the median of a spread, or the number itself (memory)."""
    return ratio["median"] if isinstance(ratio, dict) else ratio


# -- the machine -----------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """The first value of every field of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _command_output(*cmd: str) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def _lscpu(field: str) -> str | None:
    out = _command_output("lscpu")
    for line in (out or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip() or None
    return None


_ARM_IMPLEMENTERS = {"0x41": "ARM", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu",
                     "0x48": "HiSilicon",
                     "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere"}


def _cpu_model(info: dict) -> str:
    """/proc/cpuinfo's model name; else lscpu's (ARM Linux); else macOS's brand string; else platform's."""
    mac = _command_output("sysctl", "-n", "machdep.cpu.brand_string") if sys.platform == "darwin" else None
    return (info.get("model name") or mac or _lscpu("Model name") or platform.processor()
            or platform.machine() or "unknown")


def _cpu_vendor(info: dict, model: str) -> str | None:
    if info.get("vendor_id"):
        return info["vendor_id"]
    implementer = info.get("CPU implementer", "").lower()
    if implementer:
        return _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
    if sys.platform == "darwin":
        return "Apple" if "apple" in model.lower() else _command_output("sysctl", "-n", "machdep.cpu.vendor")
    return _lscpu("Vendor ID")


def _native_build() -> dict:
    """The compiled backend: ready or why not (built or loaded here, before any timing), its build target."""
    native = cerebral_backends.native
    try:
        status = cerebral_backends.prepare().get("native")
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal to the benchmark
        status = f"{type(exc).__name__}: {exc}"
    target = getattr(native, "BUILD_TARGET", None)
    if callable(target):
        target = target()
    return {"ready": status is None, "unavailable_reason": status, "build_target": target,
            "origin": getattr(native, "BUILD_ORIGIN", None), "load_seconds": getattr(native, "BUILD_SECONDS", None)}


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CEREBRAL_RNN_NATIVE")


def machine_record(device: str) -> dict:
    """The CPU (and GPU), the ISA torch and oneDNN may use, the native build, threads, versions and load."""
    load_start = _load_average()  # before the native build below loads the machine
    info = _cpuinfo()
    model = _cpu_model(info)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = {f: (f in flags if flags else None) for f in ("avx2", "avx512f", "avx512_bf16")}
    isa["amx"] = any(f.startswith("amx") for f in flags) if flags else None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        capability = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    rec = {
        "cpu_model": model,
        "cpu_vendor": _cpu_vendor(info, model),
        "cpu_id": ("/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
                   if "cpu family" in info else None),
        "isa_flags": isa,
        "cpu_capability": capability,
        "env": {k: os.environ.get(k) for k in ENV_VARS},
        "native": _native_build() if device == "cpu" else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "memory_bytes": mem_total,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "load_average_start": load_start,
        "load_average_end": None,
        "l2_cache": _lscpu("L2 cache") if device == "cpu" else None,
        "mm_peak_gflops": None,  # set by main() before the grid
        "gpu": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        rec["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                      "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                      "cudnn": cudnn}
    return rec


# -- output ----------------------------------------------------------------------------------------------


def slug(text: str | None) -> str:
    """Lower case, runs of anything but letters and digits as one '-': 'AMD EPYC 7B13' -> 'amd-epyc-7b13'."""
    return re.sub(r"[^a-z0-9]+", "-", (text or "unknown").lower()).strip("-") or "unknown"


def default_json_path(device: str, machine: dict, quick: bool) -> Path:
    """bench-results/speed-<device>-<model>-<isa>.json (model: the CPU's, or the GPU's on CUDA, as a slug; isa:
    torch's CPU capability in lower case); ``-quick`` before ``.json`` for a --quick run, so a smoke run never
    overwrites a measurement."""
    isa = (machine["cpu_capability"] or "unknown").lower()
    model = slug(machine["gpu"]["name"] if machine.get("gpu") else machine["cpu_model"])
    return Path("bench-results") / f"speed-{device}-{model}-{isa}{'-quick' if quick else ''}.json"


def header_lines(report: dict) -> list[str]:
    """The table's first lines: the machine (CPU model, ISA in use, threads, torch) and the exact command."""
    m = report["machine"]
    env = m["env"]
    isa_in_use = m["cpu_capability"] or "unknown"
    if env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA"):
        isa_in_use += f", oneDNN ≤ {env.get('ONEDNN_MAX_CPU_ISA') or env.get('DNNL_MAX_CPU_ISA')}"
    if env.get("MKL_ENABLE_INSTRUCTIONS"):
        isa_in_use += f", MKL ≤ {env['MKL_ENABLE_INSTRUCTIONS']}"
    if m["native"] and m["native"]["build_target"]:
        isa_in_use += f", native {m['native']['build_target']}"
    where = f"{m['gpu']['name']} (CUDA {m['gpu']['cuda']}, cuDNN {m['gpu']['cudnn']}) on " if m["gpu"] else ""
    flags = ", ".join(k for k, v in m["isa_flags"].items() if v) or "none"
    start, end = ("/".join(f"{v:.2f}" for v in la) if la else "?"
                  for la in (m["load_average_start"], m["load_average_end"]))
    load = f"load average {start} at start, {end} at end"
    nb = m["native"]
    native = ("—" if nb is None else
              f"ready, build target {nb['build_target'] or 'not reported'}" if nb["ready"] else
              f"unavailable ({nb['unavailable_reason']})")
    s = report["settings"]
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    first = (f"**{where}{m['cpu_model']}** ({m['cpu_vendor'] or 'unknown vendor'}) · ISA in use: {isa_in_use}"
             f" · {threads} · torch {m['torch']} · `{report['command']}`")
    second = (f"CPU flags: {flags}; ATEN_CPU_CAPABILITY={env['ATEN_CPU_CAPABILITY'] or 'unset'}, "
        f"ONEDNN_MAX_CPU_ISA={env['ONEDNN_MAX_CPU_ISA'] or 'unset'}, "
        f"MKL_ENABLE_INSTRUCTIONS={env.get('MKL_ENABLE_INSTRUCTIONS') or 'unset'}; native backend {native}; "
        f"{m['cpus_available'] or m['cpu_count']} CPUs available; L2 {m.get('l2_cache') or 'not reported'}; "
        f"torch.mm peak {_peak_text(m)}; Python {m['python']}, {m['os']}; {load}. "
        f"{s['runs']} runs × {s['repeats']} timed calls per model, median per run; ratios to each row's "
        f"baseline, shown as the median over runs (min–max); **bold**: above the row's target.")
    return [first, "", second]


def _peak_text(m: dict) -> str:
    peak = m.get("mm_peak_gflops")
    return f"{peak['gflops']:.0f} GFLOP/s ({peak['n']}³ float32)" if peak else "not measured"


def _fmt_ratio(q, target, markdown: bool = True) -> str:
    if q is None:
        return "—"
    if not isinstance(q, dict):
        text = f"{q:.2f}"
        return f"**{text}**" if markdown and target is not None and q > target else text
    text = f"{q['median']:.2f}"
    if markdown and target is not None and q["median"] > target:
        text = f"**{text}**"
    if len(q["runs"]) > 1:
        text += f" ({q['min']:.2f}–{q['max']:.2f})"
    return text


def _fmt_ms(v) -> str:
    return "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _fmt_mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def _fmt_gflops(train, infer, peak) -> str:
    def one(v):
        if v is None:
            return "—"
        return f"{v:.1f}" + (f" ({100 * v / peak:.0f}%)" if peak else "")
    return f"{one(train)} / {one(infer)}"


def _fmt_targets(t: dict) -> str:
    parts = [f"{k} ≤ {v:g}" for k, v in t.items() if v is not None]
    return ", ".join(parts) or "—"


def markdown(report: dict) -> str:
    """Header lines, the Cerebral kinds against their targets, then every model."""
    lines = header_lines(report)
    summary_names = [n for n in CEREBRAL_KINDS if n in report["settings"]["models"]]
    head = ("| T, B, I, H | model | backend train / infer | train ms | train × | infer ms | infer × | "
            "memory × | baseline | targets |")
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    peak = (report["machine"].get("mm_peak_gflops") or {}).get("gflops")
    for title, names, extra in [("Cerebral kinds against their targets", summary_names, False),
                                ("Every model", report["settings"]["models"], True)]:
        if not names:
            continue
        lines += ["", f"#### {title}", "",
                  head.replace("| memory × |", "| params | memory MiB | memory × | GFLOP/s train / infer "
                               "(% of mm) |") if extra else head,
                  sep + ("---|---|---|" if extra else "")]
        for e in report["results"]:
            for name in names:
                r, q = e["models"][name], e["ratios"][name]
                t = r["targets"]
                backends = f"{r['train_backend'] or '—'} / {r['infer_backend'] or '—'}"
                cells = [e["label"], f"`{name}`", backends,
                         _fmt_ms(r["train_ms"]), _fmt_ratio(q["train"], t["train"]),
                         _fmt_ms(r["infer_ms"]), _fmt_ratio(q["infer"], t["infer"])]
                if extra:
                    cells += [f"{r['params']:,}", _fmt_mib(r["peak_train_bytes"])]
                cells.append(_fmt_ratio(q["memory"], t["memory"]))
                if extra:
                    cells.append(_fmt_gflops(r.get("train_gflops"), r.get("infer_gflops"), peak))
                cells += [q["baseline"], _fmt_targets(t)]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_progress(run: int, runs: int, entry_models: dict, shape: Shape, file=sys.stderr) -> None:
    """One line per model after each shape of each pass, so a long run shows where it is."""
    print(f"run {run + 1}/{runs}  T, B, I, H = {shape.label}", file=file)
    for name, r in entry_models.items():
        parts = [f"{mode} {r[f'{mode}_ms']:9.2f} ms ({r[f'{mode}_backend']})"
                 for mode in ("train", "infer") if f"{mode}_ms" in r]
        print(f"  {name:<24} " + "   ".join(parts), file=file)


# -- driver ----------------------------------------------------------------------------------------------


def run(shapes: list[Shape], names: list[str], runs: int, repeats: int, device: str) -> dict:
    """All passes over the grid; returns the report without machine, command or settings."""
    in_use = _malloc_in_use() if device == "cpu" else None
    per_shape: list[list[dict]] = [[] for _ in shapes]
    for run_index in range(runs):
        for i, shape in enumerate(shapes):
            measured = measure_pass(shape, names, repeats, device, in_use, memory=run_index == 0)
            per_shape[i].append({"load_average": _load_average(), "models": measured})
            print_progress(run_index, runs, measured, shape)
    return {"results": [summarize(shape, passes) for shape, passes in zip(shapes, per_shape)]}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Model names: " + ", ".join(MODELS) + ". See the module docstring.")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, 2 runs of 2 repeats: a seconds-long smoke run")
    ap.add_argument("--shapes", type=parse_shape, nargs="+", metavar="T,B,I,H[,L][:train|:infer]",
                    help="override the grid (L layers, default 1; :train / :infer measures one mode only)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), metavar="NAME",
                    help=f"measure these models (and their baselines); default: all but cerebral-reference. "
                         f"Choices: {', '.join(MODELS)}")
    ap.add_argument("--with-reference", action="store_true",
                    help="also measure cerebral-reference (the plain time loop; slow)")
    ap.add_argument("--runs", type=_positive_int, default=None,
                    help="passes over the whole grid, for the run-to-run spread (default 3; --quick 2)")
    ap.add_argument("--repeats", type=_positive_int, default=None,
                    help="timed calls per model and mode in each pass (default 5; --quick 2)")
    ap.add_argument("--threads", type=_positive_int, default=None,
                    help="torch threads (default: the CPUs this process may run on)")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the report; default bench-results/speed-<device>-<isa>.json, isa = "
                         "torch's CPU capability in lower case (avx512, avx2, ...), with -quick before .json "
                         "for --quick")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the printed table to this file")
    return ap


def _command(argv: list[str]) -> str:
    """The command line as typed, with the environment variables that change the kernels in front."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV_VARS if os.environ.get(k)]
    return " ".join([*env, "python", "benchmarks/speed.py", *(shlex.quote(a) for a in argv)])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available to this torch")
    runs = args.runs or (2 if args.quick else 3)
    repeats = args.repeats or (2 if args.quick else 5)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    names = select_models(args.models, args.with_reference)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads or _default_threads())
    try:
        started = time.perf_counter()
        timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        machine = machine_record(args.device)  # builds the native backend before anything is timed
        n = 256 if args.quick else 2048
        machine["mm_peak_gflops"] = {"n": n, "gflops": mm_peak_gflops(args.device, n)}
        report = {
            "schema": SCHEMA,
            "command": _command(argv),
            "timestamp": timestamp,
            "device": args.device,
            "machine": machine,
            "settings": {"runs": runs, "repeats": repeats, "quick": args.quick, "models": names,
                         "shapes": [asdict(s) for s in shapes], "statistic": "median",
                         "baseline": "lstm",
                         "memory_method": (
                             "torch.cuda.max_memory_allocated over one training step, first run"
                             if args.device == "cuda" else
                             "glibc mallinfo2 bytes in use, sampled after every aten op of one training "
                             "step, first run")},
            **run(shapes, names, runs, repeats, args.device),
        }
        machine["load_average_end"] = _load_average()
        report["timestamp_end"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        report["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        torch.set_num_threads(threads_before)
    table = markdown(report)
    print(table)
    path = args.json or default_json_path(args.device, report["machine"], args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
        print(f"wrote {args.markdown}")
    return report


if __name__ == "__main__":
    main()
