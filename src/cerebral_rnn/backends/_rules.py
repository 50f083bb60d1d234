"""What every backend needs to decide whether it can run a call: one place for each question.

* :func:`needs_grad` -- does autograd need gradients from this call (input, initial state or weights)?
* :func:`paths_identical` -- are a layer's paths equal right now (``init="identical"``, still untrained apart)?
* :func:`dense_cpu_reason` -- can a dense float32/float64 CPU kernel run this call?
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..layout import DirectionWeights, LayerSpec

DTYPES = (torch.float32, torch.float64)


def needs_grad(x: Tensor, states: Sequence[Tensor], weights: Sequence[DirectionWeights]) -> bool:
    """True when autograd is recording and the input, an initial state or a weight requires grad: then a
    backend must return outputs connected to all of them (as ``torch.nn.LSTM`` does)."""
    if not torch.is_grad_enabled():
        return False
    return (x.requires_grad or any(s.requires_grad for s in states)
            or any(t.requires_grad for w in weights for t in w.tensors()))


def paths_identical(spec: LayerSpec, weights: Sequence[DirectionWeights]) -> bool:
    """True when, in some direction, every path's parameter blocks equal the first path's exactly.

    Such paths stay identical in training only if every operation treats them alike (``init="identical"``);
    backends that interleave the paths (a vendor LSTM of size K*H) cannot promise it and refuse such layers.
    Costs one comparison of the parameters (no work proportional to the sequence).
    """
    if spec.paths == 1:
        return False
    for w in weights:
        blocks = [t.chunk(spec.paths, dim=0) for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.peephole) if t is not None]
        if all(torch.equal(parts[0], part) for parts in blocks for part in parts[1:]):
            return True
    return False


def identical_paths_reason(spec: LayerSpec, weights: Sequence[DirectionWeights]) -> str | None:
    """The refusal of a backend that cannot keep identical paths bitwise identical, or None."""
    from ._compile import exporting

    if not exporting() and paths_identical(spec, weights):
        return ("the layer's paths are identical (init='identical'): this backend computes the paths in shared "
                "kernels that may round them differently, which would separate them in training")
    return None


def dense_cpu_reason(x: Tensor, batch_sizes: Tensor | None, weights: Sequence[DirectionWeights]) -> str | None:
    """Why a dense float32/float64 CPU kernel cannot run this call exactly, or None if it can."""
    if batch_sizes is not None:
        return "packed input is not supported"
    if x.device.type != "cpu":
        return f"device {x.device} is not the CPU"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not float32 or float64"
    if any(t.device.type != "cpu" or t.dtype != x.dtype for w in weights for t in w.tensors()):
        return "the weights are not on the CPU in the input's dtype"
    return None
