"""Speed and memory of CerebralLSTM against torch.nn.LSTM baselines.

For each shape (T, B, I, H) and each model, one layer of:

* ``cerebral-auto``       CerebralLSTM(I, H), backend "auto" (the backend it picked is recorded)
* ``cerebral-reference``  CerebralLSTM(I, H), backend "reference" (the plain time loop)
* ``lstm``                nn.LSTM(I, H)                 -- the baseline every ratio is taken against
* ``lstm-2layer``         nn.LSTM(I, H, num_layers=2)
* ``lstm-matched``        nn.LSTM(I, H') with about the Cerebral layer's parameter count

it measures a training step (forward + backward of ``(y * probe).sum()`` with a fixed random ``probe``, so the
gradient is dense) and inference (forward under ``torch.no_grad()``): the median of ``--repeats`` timed runs
after one warm-up, the models interleaved run by run so that noise from other processes hits them alike.

Peak training memory: on CUDA ``torch.cuda.max_memory_allocated`` over one training step, minus what was
allocated before it. On the CPU, where torch keeps no allocator statistics, glibc's ``mallinfo2`` (bytes in
use by malloc, heap and mmap) is sampled after every aten op of one training step (a ``TorchDispatchMode``),
and the peak minus the value before the step is reported. It sees every tensor an op returns or keeps
(activations, workspaces, gradients) but not scratch memory allocated and freed inside one op.

Usage::

    python benchmarks/speed.py                       # CPU, all shapes, table + bench-results/speed-cpu.json
    python benchmarks/speed.py --device cuda
    python benchmarks/speed.py --quick               # seconds-long smoke run (what CI runs)
    python benchmarks/speed.py --shapes 100,64,32,128 25,64,512,512 --repeats 9 --json out.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from cerebral_rnn import CerebralLSTM

SHAPES = [(100, 64, 32, 128), (500, 32, 32, 128), (100, 8, 32, 128), (100, 1, 32, 128), (200, 128, 128, 256),
          (100, 64, 256, 512), (25, 64, 512, 512)]
# The last two train with "fused"; they infer with "native" (where it builds; else the last with "fused").
QUICK_SHAPES = [(6, 4, 3, 8), (5, 64, 3, 64), (3, 256, 3, 64)]
BASELINE = "lstm"


# -- memory ----------------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"]]


def _malloc_in_use():
    """Bytes in use by glibc malloc (heap + mmap), or None where mallinfo2 is unavailable."""
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


# -- models and steps ------------------------------------------------------------------------------------


def matched_hidden(I: int, H: int) -> int:
    """Hidden size of an nn.LSTM with about the parameters of CerebralLSTM(I, H): 4h(I+h+2) ~ 8H(I+H+2)."""
    target = 8 * H * (I + H + 2)
    b = I + 2
    return max(1, round((-b + math.sqrt(b * b + target)) / 2))


def build(I: int, H: int, device: str) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "cerebral-auto": CerebralLSTM(I, H, device=device),
        "cerebral-reference": CerebralLSTM(I, H, backend="reference", device=device),
        "lstm": nn.LSTM(I, H, device=device),
        "lstm-2layer": nn.LSTM(I, H, num_layers=2, device=device),
        "lstm-matched": nn.LSTM(I, matched_hidden(I, H), device=device),
    }


def _backend(model: nn.Module) -> str | None:
    """The backend that ran the model's last forward (CerebralLSTM.last_backend; "torch" for nn.LSTM)."""
    return "torch" if isinstance(model, nn.LSTM) else getattr(model, "last_backend", None)


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


def time_models(models: dict, fn, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of ``fn(model)``: one warm-up each, then ``repeats`` rounds, models interleaved."""
    for m in models.values():
        fn(m)
    _sync(device)
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


# -- driver ----------------------------------------------------------------------------------------------


def run(shapes, repeats: int, device: str, threads: int) -> dict:
    in_use = _malloc_in_use() if device == "cpu" else None
    results = []
    for T, B, I, H in shapes:
        models = build(I, H, device)
        for m in models.values():
            m.train()
        torch.manual_seed(1)
        x = torch.randn(T, B, I, device=device)
        probes: dict = {}
        train = time_models(models, lambda m, x=x, probes=probes: train_step(m, x, probes), repeats, device)
        train_backend = {name: _backend(m) for name, m in models.items()}
        infer = time_models(models, lambda m, x=x: infer_step(m, x), repeats, device)
        infer_backend = {name: _backend(m) for name, m in models.items()}
        entry = {"shape": {"T": T, "B": B, "I": I, "H": H}, "models": {}, "ratios": {}}
        for name, m in models.items():
            entry["models"][name] = {
                "params": sum(p.numel() for p in m.parameters()),
                "hidden_size": m.hidden_size,
                "num_layers": m.num_layers,
                "train_backend": train_backend[name],
                "infer_backend": infer_backend[name],
                "train_ms": 1e3 * statistics.median(train[name]),
                "infer_ms": 1e3 * statistics.median(infer[name]),
                "train_ms_runs": [1e3 * t for t in train[name]],
                "infer_ms_runs": [1e3 * t for t in infer[name]],
                "peak_train_bytes": peak_train_bytes(m, x, probes, device, in_use),
            }
        base = entry["models"][BASELINE]
        for name, r in entry["models"].items():
            mem = None
            if r["peak_train_bytes"] is not None and base["peak_train_bytes"]:
                mem = r["peak_train_bytes"] / base["peak_train_bytes"]
            entry["ratios"][name] = {"train": r["train_ms"] / base["train_ms"],
                                     "infer": r["infer_ms"] / base["infer_ms"], "memory": mem}
        results.append(entry)
        print_shape(entry, file=sys.stderr)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "statistic": "median",
        "memory_method": ("torch.cuda.max_memory_allocated over one training step" if device == "cuda" else
                          "glibc mallinfo2 bytes in use, sampled after every aten op of one training step"),
        "baseline": BASELINE,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }


def _fmt_mem(b) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def print_shape(entry: dict, file=sys.stdout) -> None:
    s = entry["shape"]
    print(f"\nT={s['T']} B={s['B']} I={s['I']} H={s['H']}", file=file)
    print(f"  {'model':<20} {'backend train/infer':<20} {'params':>9} {'train ms':>10} {'x lstm':>7} {'infer ms':>10} "
          f"{'x lstm':>7} {'mem MiB':>9} {'x lstm':>7}", file=file)
    for name, r in entry["models"].items():
        q = entry["ratios"][name]
        mem_ratio = "—" if q["memory"] is None else f"{q['memory']:.2f}"
        backends = f"{r['train_backend']}/{r['infer_backend']}"
        print(f"  {name:<20} {backends:<20} {r['params']:>9} {r['train_ms']:>10.2f} {q['train']:>7.2f} "
              f"{r['infer_ms']:>10.2f} {q['infer']:>7.2f} {_fmt_mem(r['peak_train_bytes']):>9} {mem_ratio:>7}",
              file=file)


def summary(report: dict, file=sys.stdout) -> None:
    """The CerebralLSTM auto row of every shape, as a markdown table."""
    print(f"\n{report['device']} ({report['device_name']}), torch {report['torch']}, {report['threads']} threads, "
          f"median of {report['repeats']}; ratios to nn.LSTM(H)", file=file)
    print("| T, B, I, H | backend train / infer | train ms | train × | infer ms | infer × | memory × |", file=file)
    print("|---|---|---|---|---|---|---|", file=file)
    for e in report["results"]:
        s, r, q = e["shape"], e["models"]["cerebral-auto"], e["ratios"]["cerebral-auto"]
        mem = "—" if q["memory"] is None else f"{q['memory']:.2f}"
        print(f"| {s['T']}, {s['B']}, {s['I']}, {s['H']} | {r['train_backend']} / {r['infer_backend']} | {r['train_ms']:.1f} | {q['train']:.2f} "
              f"| {r['infer_ms']:.1f} | {q['infer']:.2f} | {mem} |", file=file)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected T,B,I,H as four positive ints, got {text!r}")
    return tuple(int(p) for p in parts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats: a seconds-long smoke run")
    ap.add_argument("--shapes", type=parse_shape, nargs="+", metavar="T,B,I,H", help="override the grid")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per model (default 5; --quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    ap.add_argument("--json", type=Path, default=None, help="default bench-results/speed-<device>.json")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    if repeats < 1:
        ap.error(f"--repeats: expected a positive int, got {repeats}")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    report = run(shapes, repeats, args.device, threads)
    report["quick"] = args.quick
    report["command"] = " ".join(["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])])
    summary(report)
    path = args.json or Path("bench-results") / f"speed-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
