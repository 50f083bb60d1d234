r"""Initialisation schemes.

Every parameter starts from U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn.LSTM``. For the Cerebral LSTM the paper
asks that the upper and lower paths start from *different* values:

``"distinct"`` (default)
    the two paths' rows are drawn independently.
``"identical"``
    every path's rows are an exact copy of the first path's. With identical paths the gradients of the paths
    are equal at every step, so they never diverge as long as every operation treats the paths alike: the
    cells and backends that run such layers compute each path with the same operations on its own operands of
    the same shape (per-path matrix products and pointwise steps), and the backends that cannot promise it
    refuse such layers. The model then stays a single LSTM with ``h = K o tanh(c)`` (a single GRU, for the
    Cerebral GRU). Dropout between layers does not break this: every path of the next layer reads the same
    dropped-out input. Use it for the paper's initialisation study.

``forget_bias`` (optional, kinds with a forget gate): the forget-gate rows of ``bias_ih`` are set to it and those
of ``bias_hh`` to 0, so the total forget bias equals it. Everything draws from torch's global generator, so ``torch.manual_seed``
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
                     forget_bias: float | None, gate_blocks: int = 4, forget_gate: int = 1) -> None:
    if forget_bias is None or bias_ih is None:
        return
    H = hidden_size
    for p in range(paths):  # rows of path p start at G*H*p; the forget gate is block ``forget_gate`` of a path
        f = slice(gate_blocks * H * p + forget_gate * H, gate_blocks * H * p + (forget_gate + 1) * H)
        bias_ih[f] = forget_bias
        bias_hh[f] = 0.0


def init_lstm_(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
               hidden_size: int, forget_bias: float | None = None) -> None:
    """Initialise one LSTM layer/direction in place (rows i, f, g, o)."""
    uniform_((weight_ih, weight_hh, bias_ih, bias_hh), hidden_size)
    _set_forget_bias(bias_ih, bias_hh, hidden_size, 1, forget_bias)


@torch.no_grad()
def make_paths_identical_(*params: Tensor | None, paths: int = 2) -> None:
    """Copy the first path's rows onto every other path's rows, in place (each tensor: ``paths`` equal blocks of
    rows; None entries are skipped)."""
    for p in params:
        if p is not None:
            blocks = p.chunk(paths, dim=0)
            for block in blocks[1:]:
                block.copy_(blocks[0])


def init_cerebral_(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
                   hidden_size: int, scheme: str = "distinct", forget_bias: float | None = None, paths: int = 2,
                   peephole: Tensor | None = None, gate_blocks: int = 4, forget_gate: int | None = 1) -> None:
    """Initialise one layer/direction of a K-path cell in place (rows: path 1's gate blocks, then path 2's, ...).

    Every tensor from U(-1/sqrt(H), 1/sqrt(H)); ``forget_bias`` on each path's forget rows (``forget_gate``: the
    index of the forget gate among the ``gate_blocks`` blocks of a path, None if the kind has none); with
    ``scheme="identical"`` every path then becomes a copy of the first (``peephole`` too).
    """
    check_scheme(scheme)
    uniform_((weight_ih, weight_hh, bias_ih, bias_hh, peephole), hidden_size)
    if forget_gate is not None:
        _set_forget_bias(bias_ih, bias_hh, hidden_size, paths, forget_bias, gate_blocks, forget_gate)
    if scheme == "identical":
        make_paths_identical_(weight_ih, weight_hh, bias_ih, bias_hh, peephole, paths=paths)


def paths_equal(weight: Tensor, paths: int = 2) -> bool:
    """True when the ``paths`` blocks of rows of a multi-path parameter are all exactly equal."""
    blocks = weight.chunk(paths, dim=0)
    return all(bool(torch.equal(blocks[0], b)) for b in blocks[1:])
