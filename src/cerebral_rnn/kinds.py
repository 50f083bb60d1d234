r"""Kinds: one description per kind of recurrent layer, read by the cells, the layers, the reference loop and the
backends. :data:`KINDS` is the one registry of kind names: ``rnn``, ``lstm``, ``gru`` (torch's layers),
``cerebral``, ``cerebral-peephole``, ``cerebral-gru`` (K paths).

A *kind* says what one path of a cell computes after its two matrix products, and how the paths are combined.
Every recurrent layer of the library is ``K = num_paths`` copies of one kind reading the same
``[h(t-1), x(t)]`` (K = 1 for the plain RNN, LSTM and GRU):

* path k's pre-activations ``gx_k = W_ih,k x + b`` and ``gh_k = W_hh,k h(t-1) (+ b_hh,k)``, each
  ``gate_blocks * H`` wide (rows in the kind's gate order);
* path k's pointwise step ``out_k, c_k(t) = step(gx_k, gh_k, h(t-1), c_k(t-1), peephole_k)``;
* ``h(t) = combine(out_1, ..., out_K)``: the sum (LSTM kinds: :math:`h = \sum_k o_k \odot \tanh(c_k)`, the
  Cerebral LSTM of Kumar 2020 for K = 2) or the mean (GRU: keeps ``h`` a convex combination, bounded in
  (-1, 1)); then, for LSTM kinds with ``proj_size = P``, :math:`h \leftarrow W_{hr} h` (P features).

Storage (every layer, cell and backend uses it): ``weight_ih`` has ``K * gate_blocks * H`` rows, path k's
block ``[k G H, (k + 1) G H)`` in the kind's gate order; ``weight_hh``, ``bias_ih``, ``bias_hh`` likewise;
peephole kinds add ``peephole`` (``K * len(peephole_gates) * H``: path k's ``w_ci, w_cf, w_co``). Cell kinds carry ``c`` with
``K * H`` features, path k's at ``[k H, (k + 1) H)``.

Adding a kind = one path step function here, one :class:`CellKind` entry in :data:`KINDS`, a layer class named
by its ``layer`` (a subclass of the Cerebral base with the kind's name as ``KIND``), and its tests; the widths,
:class:`~cerebral_rnn.StackedRNN`, :func:`~cerebral_rnn.available_backends`, the reference backend and the
initialisation read the description. The native backend runs the kinds that have a ``native_id`` (its C++
kernels' number for the kind): the one-path ``lstm`` and ``gru`` share the number of ``cerebral`` and
``cerebral-gru``, whose kernels with K = 1 compute torch's equations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CellKind", "KINDS", "rnn_kind", "combine", "paths_step", "lstm_path", "peephole_path", "gru_path",
           "rnn_tanh_path", "rnn_relu_path"]

# step(gx, gh, h, c, peephole) -> (out, c_new); c and c_new are None for kinds without a cell state.
PathStep = Callable[[Tensor, Tensor, Tensor, "Tensor | None", "Tensor | None"], "tuple[Tensor, Tensor | None]"]


def lstm_path(gx: Tensor, gh: Tensor, h: Tensor, c: Tensor, peephole: Tensor | None = None, norm_c=None):
    """One LSTM path (``torch.nn.LSTM``'s equations, rows i, f, g, o): returns ``(o * tanh(c'), c')``.

    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`` -- Kumar 2020 eqs. 1-5 (upper path) and 6-10 (lower path).
    ``norm_c`` (layer norm): the output reads ``o * tanh(norm_c(c'))``; the returned ``c'`` is not normalised.
    """
    i, f, g, o = (gx + gh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c if norm_c is None else norm_c(c)), c


def peephole_path(gx: Tensor, gh: Tensor, h: Tensor, c: Tensor, peephole: Tensor, norm_c=None):
    """One peephole LSTM path (Gers & Schmidhuber 2000): the input and forget gates see ``c(t-1)``, the output
    gate sees ``c(t)``, each through a diagonal weight (``peephole`` = ``[w_ci, w_cf, w_co]``, 3H). ``norm_c`` as
    in :func:`lstm_path`."""
    a_i, a_f, a_g, a_o = (gx + gh).chunk(4, dim=-1)
    w_ci, w_cf, w_co = peephole.chunk(3, dim=-1)
    i = torch.sigmoid(a_i + w_ci * c)
    f = torch.sigmoid(a_f + w_cf * c)
    c = f * c + i * torch.tanh(a_g)
    o = torch.sigmoid(a_o + w_co * c)
    return o * torch.tanh(c if norm_c is None else norm_c(c)), c


def gru_path(gx: Tensor, gh: Tensor, h: Tensor, c: None = None, peephole: None = None):
    """One GRU path (``torch.nn.GRU``'s equations, rows r, z, n; ``gh`` includes ``b_hh`` because the reset
    gate multiplies ``W_hn h + b_hn``): returns ``((1 - z) * n + z * h, None)``."""
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, None


def rnn_tanh_path(gx: Tensor, gh: Tensor, h: Tensor, c: None = None, peephole: None = None):
    """Elman step: ``tanh(W_ih x + b_ih + W_hh h + b_hh)``."""
    return torch.tanh(gx + gh), None


def rnn_relu_path(gx: Tensor, gh: Tensor, h: Tensor, c: None = None, peephole: None = None):
    """Elman step with ReLU: ``relu(W_ih x + b_ih + W_hh h + b_hh)``."""
    return torch.relu(gx + gh), None


@dataclass(frozen=True)
class CellKind:
    """One kind of recurrent layer: what one path computes, how K paths combine, and how the library runs it. See
    the module docstring for the storage layout. Its ``name`` is the kind's one name everywhere: the layer and
    cell classes, :class:`~cerebral_rnn.StackedRNN`, :func:`~cerebral_rnn.available_backends`, the backends'
    ``kinds`` and the study's arms."""

    name: str
    gates: tuple[str, ...]  # a path's row blocks of weight_ih / weight_hh / biases, in storage order
    step: PathStep  # the reference pointwise step of one path
    layer: str  # the layer class of cerebral_rnn that runs this kind (its cell class: layer + "Cell")
    paths: int = 1  # the layer's default number of paths; 1: a one-path layer with torch's contract and kernels
    has_cell: bool = False  # carries a cell state c (H per path)
    combine: str = "sum"  # "sum" or "mean" of the paths' outputs
    peephole_gates: tuple[str, ...] = ()  # the gates with a diagonal peephole weight (per path: H each)
    hh_bias_in_step: bool = False  # b_hh stays inside gh (GRU); else b_ih + b_hh is added to gx
    forget_gate: int | None = None  # index of the forget gate in ``gates`` (forget_bias), if any
    projection: bool = False  # supports proj_size (LSTM kinds)
    lstm_paths: bool = False  # each path is exactly torch's LSTM (the standard-LSTM identity of ``lstm2h``)
    native_id: int | None = None  # the kind's number in the native backend's C++ kernels (None: not there)

    @property
    def gate_blocks(self) -> int:
        return len(self.gates)

    @property
    def peephole(self) -> bool:
        """Whether each path has a peephole parameter (``len(peephole_gates) * H`` per path)."""
        return bool(self.peephole_gates)

    def peephole_size(self, hidden_size: int, paths: int) -> int:
        """Length of the ``peephole`` parameter of ``paths`` paths of ``hidden_size`` units (0 without)."""
        return len(self.peephole_gates) * hidden_size * paths


_LSTM_GATES = ("i", "f", "g", "o")
KINDS: dict[str, CellKind] = {
    "rnn": CellKind("rnn", ("h",), rnn_tanh_path, "RNN"),
    "lstm": CellKind("lstm", _LSTM_GATES, lstm_path, "LSTM", has_cell=True, forget_gate=1, projection=True,
                     lstm_paths=True, native_id=0),
    "gru": CellKind("gru", ("r", "z", "n"), gru_path, "GRU", combine="mean", hh_bias_in_step=True,
                    native_id=2),
    "cerebral": CellKind("cerebral", _LSTM_GATES, lstm_path, "CerebralLSTM", paths=2, has_cell=True, forget_gate=1,
                         projection=True, lstm_paths=True, native_id=0),
    "cerebral-peephole": CellKind("cerebral-peephole", _LSTM_GATES, peephole_path, "CerebralPeepholeLSTM", paths=2,
                                  has_cell=True, peephole_gates=("i", "f", "o"), forget_gate=1, native_id=1),
    "cerebral-gru": CellKind("cerebral-gru", ("r", "z", "n"), gru_path, "CerebralGRU", paths=2, combine="mean",
                             hh_bias_in_step=True, native_id=2),
}


class HasKind:
    """For the layer and cell classes: the kind is the class attribute ``KIND`` (a key of :data:`KINDS`), so a
    pickled module (``torch.save(model)``) holds no kind and loads with ``weights_only=True`` once its class is
    allowlisted, as ``nn.LSTM`` does."""

    KIND: str

    @property
    def kind_name(self) -> str:
        """The kind's name, a key of :data:`KINDS`."""
        return type(self).KIND

    @property
    def kind(self) -> CellKind:
        """The kind's description."""
        return KINDS[type(self).KIND]


def rnn_kind(nonlinearity: str) -> CellKind:
    """The ``rnn`` kind with ``nonlinearity`` (``"tanh"``: ``KINDS["rnn"]``; ``"relu"``: its ReLU step)."""
    if nonlinearity == "tanh":
        return KINDS["rnn"]
    if nonlinearity == "relu":
        return _RNN_RELU
    raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")


_RNN_RELU = replace(KINDS["rnn"], step=rnn_relu_path)


def combine(kind: CellKind, outs: list[Tensor]) -> Tensor:
    """``sum`` or ``mean`` of the paths' outputs, in path order (identical paths give identical summands)."""
    h = outs[0]
    for out in outs[1:]:
        h = h + out
    if kind.combine == "mean" and len(outs) > 1:
        h = h / len(outs)
    return h


def paths_step(kind: CellKind, gx: list[Tensor], h: Tensor, cells: list[Tensor] | None, w_hh: list[Tensor],
               b_h: list[Tensor | None], peephole: list[Tensor | None], w_hr: Tensor | None = None):
    """One time step of K paths after their input projections ``gx`` (one ``(B, G H)`` tensor per path).

    Each path k: its own recurrent GEMM ``gh_k = h W_hh,k^T (+ b_h,k)`` and its own pointwise step; then
    ``combine`` and the optional projection. Returns ``(h', cells')`` (``cells'`` None for kinds without a cell).
    """
    outs, new_cells = [], []
    for k in range(len(gx)):
        gh = F.linear(h, w_hh[k], b_h[k])
        out, c = kind.step(gx[k], gh, h, cells[k] if cells is not None else None, peephole[k])
        outs.append(out)
        new_cells.append(c)
    h = combine(kind, outs)
    if w_hr is not None:
        h = F.linear(h, w_hr)  # proj_size: h = W_hr (sum over paths)
    return h, (new_cells if kind.has_cell else None)
