r"""Layer descriptions and weight layouts, below both the layers and the backends (nothing here imports them).

:class:`LayerSpec` says what one layer computes (kind, paths, sizes); :class:`DirectionWeights` holds one
direction's parameters as stored. The rest is the exact identity between a K-path LSTM layer and a standard
LSTM of hidden size K*H (used by the ``lstm2h`` backend and by :mod:`cerebral_rnn.convert`):

* gate rows interleaved per gate: ``[i_1; ...; i_K | f_1; ...; f_K | g_1; ...; g_K | o_1; ...; o_K]``;
* without projection the standard LSTM's hidden state is ``h' = [o_1 tanh c_1, ..., o_K tanh c_K]`` (K*H
  features, ``h = sum of its K blocks``), so its recurrent weight is ``[W_hh, ..., W_hh]`` (the same interleaved
  block K times, 4KH x KH), it starts from ``h_0' = [h_0, 0, ..., 0]``, and its output is folded back by summing
  the K blocks of every direction;
* with ``proj_size = P`` the recurrence already reads the P-wide projected ``h``: the standard
  ``LSTM(K*H, proj_size=P)`` has ``W_hh`` interleaved (4KH x P), ``W_hr' = [W_hr, ..., W_hr]`` (P x KH), the same
  initial state and the same output;
* the cell state ``[c_1 | ... | c_K]`` is the standard LSTM's cell state as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .kinds import CellKind

__all__ = ["LayerSpec", "DirectionWeights", "PathWeights", "split_paths", "lstm_gate_order", "vendor_lstm_weights",
           "vendor_initial_state", "fold_paths"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer: ``paths`` copies of ``kind``, hidden size H, optional projection to ``proj_size`` features."""

    kind: CellKind
    paths: int
    hidden_size: int
    proj_size: int = 0

    @property
    def out_size(self) -> int:
        """Features of h (the output and the recurrent input): P with a projection, else H."""
        return self.proj_size or self.hidden_size

    @property
    def path_rows(self) -> int:
        """Rows of one path in weight_ih / weight_hh / the biases: gate_blocks * H."""
        return self.kind.gate_blocks * self.hidden_size

    @property
    def rows(self) -> int:
        return self.paths * self.path_rows

    @property
    def cell_size(self) -> int:
        """Features of the cell state c: K * H for kinds with a cell, 0 otherwise."""
        return self.paths * self.hidden_size if self.kind.has_cell else 0


class DirectionWeights(NamedTuple):
    """One direction of one layer, as stored: absent parameters are None."""

    w_ih: Tensor  # (K G H, input)
    w_hh: Tensor  # (K G H, out_size)
    b_ih: Tensor | None  # (K G H,)
    b_hh: Tensor | None  # (K G H,)
    peephole: Tensor | None = None  # (K 3 H,)
    w_hr: Tensor | None = None  # (P, H)

    def tensors(self) -> list[Tensor]:
        return [t for t in self if t is not None]


class PathWeights(NamedTuple):
    """One direction's parameters cut into per-path copies (lists of K tensors, or of K Nones)."""

    w_ih: list[Tensor]  # (G H, input) each
    w_hh: list[Tensor]  # (G H, out_size) each
    b_x: list[Tensor | None]  # bias of the input projection: b_ih + b_hh, or b_ih alone (kind.hh_bias_in_step)
    b_h: list[Tensor | None]  # bias of the recurrent projection: b_hh (kind.hh_bias_in_step) or None
    peephole: list[Tensor | None]  # (3 H,) each
    w_hr: Tensor | None  # shared by the paths: (P, H)


def _own(t: Tensor) -> Tensor:
    """A fresh contiguous copy (differentiable): every path's operand gets an equally aligned buffer of its own."""
    return t.clone(memory_format=torch.contiguous_format)


def split_paths(w: DirectionWeights, spec: LayerSpec) -> PathWeights:
    """Per-path copies of one direction's parameters, for kernels that compute every path with the same
    operations on operands of the same shape (so that identical paths stay bitwise identical)."""
    K = spec.paths

    def cut(t: Tensor | None) -> list[Tensor | None]:
        return [None] * K if t is None else [_own(part) for part in t.chunk(K, dim=0)]

    if spec.kind.hh_bias_in_step:
        b_x, b_h = w.b_ih, w.b_hh
    else:  # both biases go into the input projection
        b_x = w.b_ih + w.b_hh if w.b_ih is not None and w.b_hh is not None else w.b_ih
        b_h = None
    return PathWeights(cut(w.w_ih), cut(w.w_hh), cut(b_x), cut(b_h), cut(w.peephole), w.w_hr)


def lstm_gate_order(hidden_size: int, paths: int = 2, device=None) -> Tensor:
    """Row indices taking K-path rows (path 1 i,f,g,o, ..., path K i,f,g,o) to LSTM(K*H) rows
    (i_1, ..., i_K, f_1, ..., f_K, g_1, ..., o_K)."""
    H = hidden_size
    blocks = [torch.arange(H, device=device) + H * (path * 4 + gate) for gate in range(4) for path in range(paths)]
    return torch.cat(blocks)


def vendor_lstm_weights(w: DirectionWeights, spec: LayerSpec, input_directions: int = 0) -> list[Tensor]:
    """The standard LSTM(K*H) weights of one direction, as differentiable functions of the stored ones:
    ``[w_ih', w_hh', b_ih', b_hh', w_hr']`` (biases omitted when absent, ``w_hr'`` only with a projection).

    ``input_directions``: 0 when the layer's input is read as is; otherwise the number of directions of the layer
    below *in its LSTM(K*H) form* (no projection), whose K*H-wide outputs per direction are read, so each
    direction's H input columns repeat K times.
    """
    if w.peephole is not None or not spec.kind.lstm_paths:
        raise ValueError(f"kind {spec.kind.name!r} has no standard-LSTM identity")
    H, K = spec.hidden_size, spec.paths
    order = lstm_gate_order(H, K, w.w_ih.device)
    w_ih = w.w_ih.index_select(0, order)
    if input_directions:
        cols = [w_ih[:, d * H:(d + 1) * H] for d in range(input_directions)]
        w_ih = torch.cat([c for col in cols for c in [col] * K], dim=1)
    w_hh = w.w_hh.index_select(0, order)
    if w.w_hr is None:
        w_hh = torch.cat([w_hh] * K, dim=1) if K > 1 else w_hh
    out = [w_ih, w_hh]
    out += [b.index_select(0, order) for b in (w.b_ih, w.b_hh) if b is not None]
    if w.w_hr is not None:
        out.append(torch.cat([w.w_hr] * K, dim=1) if K > 1 else w.w_hr)
    return out


def vendor_initial_state(h0: Tensor, c0: Tensor, paths: int, projected: bool) -> tuple[Tensor, Tensor]:
    """The LSTM(K*H) initial state: ``([h_0, 0, ..., 0], c_0)``, or ``(h_0, c_0)`` with a projection."""
    if projected or paths == 1:
        return h0, c0
    return torch.cat([h0] + [torch.zeros_like(h0)] * (paths - 1), dim=-1), c0


def fold_paths(y: Tensor, hidden_size: int, paths: int) -> Tensor:
    """Sum the K H-wide blocks of every direction on the last dimension: (..., D K H) -> (..., D H)."""
    if paths == 1:
        return y
    return y.unflatten(-1, (-1, paths, hidden_size)).sum(-2).flatten(-2)
