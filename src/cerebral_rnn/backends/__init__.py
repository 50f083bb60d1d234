"""Backends compute one recurrent layer (all its directions) over a whole sequence.

Every backend takes the same parameters, in the same storage layout (:mod:`cerebral_rnn.kinds`), so a module's
``state_dict`` does not depend on the backend. A backend is an object with

``name``
    the string users pass as ``backend=...``.
``kinds``
    the names of the cell kinds it computes (None: all).
``supports(spec, x, batch_sizes, weights, states) -> str | None``
    ``None`` when the backend computes this case exactly; otherwise a short reason (used by ``"auto"`` to fall
    back and by an explicit choice to raise).
``forward_layer(spec, x, states, weights, batch_sizes) -> (y, states_n)``
    ``spec``: a :class:`~cerebral_rnn.layout.LayerSpec`. ``x``: ``(T, B, I)`` time-major, or the ``(N, I)`` data
    of a PackedSequence with ``batch_sizes`` (``(T,)`` int64 on the CPU, non-increasing). ``states``: ``(h_0,)``
    or ``(h_0, c_0)`` with ``h_0`` ``(D, B, out)`` and ``c_0`` ``(D, B, K*H)``. ``weights``: ``D``
    :class:`~cerebral_rnn.layout.DirectionWeights`, direction 0 forward in time, direction 1 reverse. Returns
    ``y``: ``(T, B, D*out)`` (or ``(N, D*out)`` packed; forward direction first on the last dimension) and the
    final states shaped as ``states``.

Randomness (dropout between layers) is drawn by the layer, outside backends, so every backend sees the same
noise under the same seed. Autocast is resolved by the layer too: a backend sees one dtype.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .._compat import under_functorch
from . import lstm2h, native, reference
from ._compile import exporting
from ._rules import needs_grad, paths_identical

__all__ = ["BACKENDS", "Backend", "available_backends", "get_backend", "prepare", "select_backend", "needs_grad",
           "paths_identical"]


class Backend(Protocol):
    name: str
    kinds: tuple[str, ...] | None

    def supports(self, spec, x: Tensor, batch_sizes: Tensor | None, weights, states) -> str | None: ...

    def forward_layer(self, spec, x: Tensor, states, weights, batch_sizes: Tensor | None): ...


BACKENDS: dict[str, Backend] = {
    reference.BACKEND.name: reference.BACKEND,
    lstm2h.BACKEND.name: lstm2h.BACKEND,
    native.BACKEND.name: native.BACKEND,
}


def available_backends(kind=None) -> list[str]:
    """Names accepted by ``backend=``.

    ``kind``: None (every registered backend), a kind's name (a key of :data:`cerebral_rnn.kinds.KINDS`), or a
    layer class or instance: what that kind's layer class accepts. The one-path ``RNN``, ``LSTM``, ``GRU``
    (kinds ``rnn``, ``lstm``, ``gru``) take ``"auto"``, ``"torch"`` and ``"reference"``; the Cerebral kinds
    take ``"auto"`` and every backend that computes them. An unknown name is a ``ValueError``.
    """
    from .. import layers as _layers
    from ..kinds import KINDS

    if kind is None:
        return ["auto", *BACKENDS]
    if not isinstance(kind, str):
        cls = kind if isinstance(kind, type) else type(kind)
        if not (isinstance(cls, type) and issubclass(cls, _layers._RNNBase) and hasattr(cls, "KIND")):
            raise TypeError(f"kind: expected a kind name, a layer class or a layer, got {kind!r}")
        kind = cls.KIND
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)} (or a layer class), got {kind!r}")
    cls = _layers.LAYER_CLASSES[kind]
    if not issubclass(cls, _layers._CerebralBase):
        return list(cls._backend_names)
    return ["auto", *(n for n, b in BACKENDS.items() if b.kinds is None or kind in b.kinds)]


def prepare() -> dict[str, str | None]:
    """Build or load the optional compiled backends now instead of at their first use.

    The ``native`` CPU backend is a C++ extension: the module ``pip install`` compiled for this CPU, or, where
    there is none (or it was built for another torch or source), one compiled on first use (once per machine,
    then loaded from torch's extension cache). Call this before timing anything. Returns, per optional backend,
    ``None`` when it is ready or the reason it is unavailable (``"auto"`` then uses the others);
    ``backends.native.BUILD_ORIGIN`` and ``BUILD_TARGET`` say which module was loaded.
    """
    return {"native": None if native.available() else native.unavailable_reason()}


def get_backend(name: str, kind: str | None = None) -> str:
    """Validate a backend name given to a constructor; return it unchanged."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a str, got {type(name).__name__}")
    valid = available_backends(kind)
    if name not in valid:
        raise ValueError(f"backend: expected one of {valid}, got {name!r}")
    return name


def _auto_order(spec, x: Tensor, batch_sizes, weights, states) -> list[str]:
    """Backends tried by ``"auto"``, best first, for this device, shape and grad mode.

    CPU, dense input: ``native`` (compiled C++ time loop and BPTT: every LSTM, peephole and GRU layer in float32 /
    float64, training and inference) first; where it is unavailable or refuses (``proj_size``, another dtype),
    ``lstm2h``. Packed input on the CPU and CUDA: ``lstm2h`` (oneDNN's / cuDNN's LSTM). ``reference`` last. Each backend's ``supports`` rules out what it cannot compute exactly (kind, dtype, packed input,
    ``torch.export``, identical paths for the backends that cannot keep them identical), and ``reference`` takes
    everything else.
    """
    if x.device.type == "cpu" and batch_sizes is None and not exporting():
        return ["native", "lstm2h", "reference"]
    return ["lstm2h", "reference"]


def select_backend(name: str, spec, x: Tensor, batch_sizes, weights, states) -> Backend:
    """The backend that will run this call: the named one (raising if it cannot compute this case exactly),
    or for ``"auto"`` the first in :func:`_auto_order` that supports it; ``reference`` supports everything.
    Inside a ``torch.func`` transform ``"auto"`` is the reference backend."""
    if under_functorch() and name in ("auto", "reference"):
        return BACKENDS["reference"]  # the only backend made of ops that torch.func transforms know
    if name != "auto":
        backend = BACKENDS[name]
        reason = ("torch.func transforms (grad, vmap, ...) run only the reference backend" if under_functorch()
                  else backend.supports(spec, x, batch_sizes, weights, states))
        if reason is not None:
            raise ValueError(f"backend={name!r} cannot run this input: {reason}; use backend='auto' or 'reference'")
        return backend
    for candidate in _auto_order(spec, x, batch_sizes, weights, states):
        backend = BACKENDS[candidate]
        if backend.supports(spec, x, batch_sizes, weights, states) is None:
            return backend
    return BACKENDS["reference"]
