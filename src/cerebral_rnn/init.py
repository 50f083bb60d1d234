r"""Initialisation schemes.

Every parameter starts from U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn.LSTM``. For the Cerebral LSTM the paper
asks that the upper and lower paths start from *different* values:

``"distinct"`` (default)
    the two paths' rows are drawn independently.
``"identical"``
    the lower path's rows are an exact copy of the upper path's. With identical paths the gradients of the two
    paths are equal at every step, so under deterministic training they never diverge (bitwise: the cells and
    the reference backend compute each path with the same kernels on same-shaped operands) and the model stays
    a single LSTM with ``h = 2 o tanh(c)``. Dropout between layers does not break this either: both paths of
    the next layer read the same dropped-out input. Use it for the paper's initialisation study.

``forget_bias`` (optional): the forget-gate rows of ``bias_ih`` are set to it and those of ``bias_hh`` to 0, so
the total forget bias equals it. Everything draws from torch's global generator, so ``torch.manual_seed``
makes it deterministic.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

SCHEMES = ("distinct", "identical")

__all__ = ["SCHEMES", "uniform_", "init_lstm_", "init_cerebral_", "make_paths_identical_", "paths_equal"]


def check_scheme(init: str) -> str:
    if not isinstance(init, str):
        raise TypeError(f"init: expected a str, one of {list(SCHEMES)}, got {type(init).__name__}")
    if init not in SCHEMES:
        raise ValueError(f"init: expected one of {list(SCHEMES)}, got {init!r}")
    return init


def check_forget_bias(forget_bias) -> float | None:
    if forget_bias is None:
        return None
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
        raise TypeError(f"forget_bias: expected a float or None, got {type(forget_bias).__name__}")
    if not math.isfinite(forget_bias):
        raise ValueError(f"forget_bias: expected a finite number, got {forget_bias}")
    return float(forget_bias)


@torch.no_grad()
def uniform_(params: Iterable[Tensor | None], hidden_size: int) -> None:
    """Fill each tensor from U(-1/sqrt(H), 1/sqrt(H)) (torch.nn.LSTM's default)."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in params:
        if p is not None:
            p.uniform_(-bound, bound)


@torch.no_grad()
def _set_forget_bias(bias_ih: Tensor | None, bias_hh: Tensor | None, hidden_size: int, paths: int,
                     forget_bias: float | None) -> None:
    if forget_bias is None or bias_ih is None:
        return
    H = hidden_size
    for p in range(paths):  # rows of path p: [i, f, g, o] starting at 4H*p; f is the second block
        f = slice(4 * H * p + H, 4 * H * p + 2 * H)
        bias_ih[f] = forget_bias
        bias_hh[f] = 0.0


def init_lstm_(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
               hidden_size: int, forget_bias: float | None = None) -> None:
    """Initialise one LSTM layer/direction in place (rows i, f, g, o)."""
    uniform_((weight_ih, weight_hh, bias_ih, bias_hh), hidden_size)
    _set_forget_bias(bias_ih, bias_hh, hidden_size, 1, forget_bias)


@torch.no_grad()
def make_paths_identical_(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
                          bias_hh: Tensor | None) -> None:
    """Copy the upper path's rows (first 4H) onto the lower path's rows (last 4H), in place."""
    for p in (weight_ih, weight_hh, bias_ih, bias_hh):
        if p is not None:
            half = p.shape[0] // 2
            p[half:] = p[:half]


def init_cerebral_(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
                   hidden_size: int, scheme: str = "distinct", forget_bias: float | None = None) -> None:
    """Initialise one Cerebral LSTM layer/direction in place (rows: upper i, f, g, o, lower i, f, g, o)."""
    check_scheme(scheme)
    uniform_((weight_ih, weight_hh, bias_ih, bias_hh), hidden_size)
    _set_forget_bias(bias_ih, bias_hh, hidden_size, 2, forget_bias)
    if scheme == "identical":
        make_paths_identical_(weight_ih, weight_hh, bias_ih, bias_hh)


def paths_equal(weight: Tensor) -> bool:
    """True when the upper and lower halves of an 8H-row Cerebral parameter are exactly equal."""
    half = weight.shape[0] // 2
    return bool(torch.equal(weight[:half], weight[half:]))
