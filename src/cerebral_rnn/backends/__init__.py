"""Backends compute one Cerebral LSTM layer (all its directions) over a whole sequence.

Every backend takes the same parameters, in the same storage layout, so a module's ``state_dict`` does not
depend on the backend. A backend is an object with

``name``
    the string users pass as ``backend=...``.
``supports(x, batch_sizes, weights, training) -> str | None``
    ``None`` when the backend computes this case exactly; otherwise a short reason (used by ``"auto"`` to fall
    back and by an explicit choice to raise).
``forward_layer(x, h0, c0, weights, batch_sizes) -> (y, h_n, c_n)``
    ``x``: ``(T, B, I)`` time-major, or the ``(N, I)`` data of a PackedSequence with ``batch_sizes`` (``(T,)``
    int64 on the CPU, non-increasing). ``h0``: ``(D, B, H)``; ``c0``: ``(D, B, 2H)`` = ``[UC | LC]``.
    ``weights``: ``D`` tuples ``(w_ih (8H, I), w_hh (8H, H), b_ih (8H,) or None, b_hh (8H,) or None)``,
    direction 0 forward in time, direction 1 reverse. Rows of the 8H dimension: upper path i, f, g, o, then
    lower path i, f, g, o. Returns ``y``: ``(T, B, D*H)`` (or ``(N, D*H)`` packed; forward direction first on
    the last dimension), ``h_n``: ``(D, B, H)``, ``c_n``: ``(D, B, 2H)``.

Randomness (dropout between layers) is drawn by the layer, outside backends, so every backend sees the same
noise under the same seed.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from . import _rules, fused, lstm2h, native, reference

__all__ = ["BACKENDS", "Backend", "available_backends", "get_backend", "prepare", "select_backend"]


class Backend(Protocol):
    name: str

    def supports(self, x: Tensor, batch_sizes: Tensor | None, weights, training: bool) -> str | None: ...

    def forward_layer(self, x: Tensor, h0: Tensor, c0: Tensor, weights, batch_sizes: Tensor | None): ...


BACKENDS: dict[str, Backend] = {
    reference.BACKEND.name: reference.BACKEND,
    lstm2h.BACKEND.name: lstm2h.BACKEND,
    fused.BACKEND.name: fused.BACKEND,
    native.BACKEND.name: native.BACKEND,
}


def available_backends() -> list[str]:
    """Names accepted by ``backend=``: ``"auto"`` and every registered backend."""
    return ["auto", *BACKENDS]


def prepare() -> dict[str, str | None]:
    """Build or load the optional compiled backends now instead of at their first use.

    The ``native`` CPU inference backend is a C++ extension compiled on first use (about 25 s once per machine,
    then loaded from torch's extension cache). Call this before timing anything. Returns, per optional backend,
    ``None`` when it is ready or the reason it is unavailable (``"auto"`` then uses the others).
    """
    return {"native": None if native.available() else native._ERROR}


def get_backend(name: str) -> str:
    """Validate a backend name given to a constructor; return it unchanged."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a str, got {type(name).__name__}")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend: expected one of {available_backends()}, got {name!r}")
    return name


# "fused" (native 8H x H recurrence, 8 small ops per step) beats "lstm2h" (torch's fused LSTM op: twice the
# recurrent FLOPs, no per-step Python) on the CPU once a step has enough work, batch x hidden_size elements:
# sooner in training (its hand-written backward is lean) than in inference (oneDNN's inference kernel is very
# fast). Measured with benchmarks/speed.py on a 2-core CPU, torch 2.13 (docs/fast-path.md).
FUSED_MIN_WORK_TRAIN = 4096  # e.g. B >= 32 at H = 128
FUSED_MIN_WORK_INFER = 16384  # e.g. B >= 128 at H = 128, B >= 32 at H = 512


def _needs_grad(x: Tensor, weights) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(
        w is not None and w.requires_grad for ws in weights for w in ws))


PATH_ALIGN = _rules.PATH_ALIGN  # see backends/_rules.py: why kernels need aligned paths


def _auto_order(x: Tensor, weights) -> list[str]:
    """Backends tried by ``"auto"``, best first, for this device, shape and grad mode.

    CUDA: ``lstm2h`` (cuDNN). CPU, dense input: ``fused`` first when batch x hidden_size reaches
    ``FUSED_MIN_WORK_TRAIN`` (autograd recording) or ``FUSED_MIN_WORK_INFER`` (inference), else ``lstm2h``; in
    inference ``native`` (the compiled C++ loop) comes before both: it measured faster than either at every
    shape of benchmarks/speed.py, and its ``supports`` refuses when its extension could not be built.
    Each backend's ``supports`` then rules out what it cannot compute exactly (``fused``: packed input, dtypes
    other than float32/float64, autocast, ``torch.export``, hidden sizes not a multiple of ``PATH_ALIGN``;
    ``lstm2h``: packed input on the CPU at such sizes), and ``reference`` takes everything else.
    """
    if x.device.type == "cpu" and x.dim() == 3:
        work = x.shape[1] * weights[0][1].shape[1]  # B x H
        if _needs_grad(x, weights):
            return ["fused", "lstm2h", "reference"] if work >= FUSED_MIN_WORK_TRAIN else ["lstm2h", "reference"]
        if work >= FUSED_MIN_WORK_INFER:
            return ["native", "fused", "lstm2h", "reference"]
        return ["native", "lstm2h", "reference"]
    return ["lstm2h", "reference"]


def select_backend(name: str, x: Tensor, batch_sizes: Tensor | None, weights, training: bool) -> Backend:
    """The backend that will run this call: the named one (raising if it cannot compute this case exactly),
    or for ``"auto"`` the first in :func:`_auto_order` that supports it; ``reference`` supports everything."""
    if name != "auto":
        backend = BACKENDS[name]
        reason = backend.supports(x, batch_sizes, weights, training)
        if reason is not None:
            raise ValueError(f"backend={name!r} cannot run this input: {reason}; use backend='auto' or 'reference'")
        return backend
    for candidate in _auto_order(x, weights):
        backend = BACKENDS[candidate]
        if backend.supports(x, batch_sizes, weights, training) is None:
            return backend
    return BACKENDS["reference"]
