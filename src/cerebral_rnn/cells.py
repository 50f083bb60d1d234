r"""One-step cells: ``h1 = cell(x, h0)`` or ``h1, c1 = cell(x, (h0, c0))``, state optional.

Each cell is one kind of :mod:`cerebral_rnn.kinds` (whose path step functions are the oracle every layer and
backend is tested against), with ``num_paths`` paths for the Cerebral family. Parameter layout:

=================================  ===================  ====================================================
cell                               ``weight_ih`` rows   row blocks
=================================  ===================  ====================================================
:class:`RNNCell`                   H                    --
:class:`LSTMCell`                  4H                   i, f, g, o  (as ``torch.nn.LSTMCell``)
:class:`GRUCell`                   3H                   r, z, n  (as ``torch.nn.GRUCell``)
:class:`CerebralLSTMCell`          4KH                  path 1 i, f, g, o, then path 2, ...
:class:`CerebralPeepholeLSTMCell`  4KH                  as CerebralLSTMCell; plus ``peephole`` (3KH): w_ci, w_cf, w_co per path
:class:`CerebralGRUCell`           3KH                  path 1 r, z, n, then path 2, ...
=================================  ===================  ====================================================

``weight_hh`` has the same rows and H columns; ``bias_ih`` and ``bias_hh`` have the same rows. Cells with a
cell state take ``c`` of K*H features (``[c_1 | ... | c_K]``), or H features to start every path from the same
cell state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import init as _init
from ._checks import check_bool, check_cell_input, check_positive_int, check_state
from .kinds import CellKind, HasKind, paths_step, rnn_kind
from .layout import DirectionWeights, LayerSpec, split_paths
from .quantization import StaysFloat

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "CerebralLSTMCell", "CerebralPeepholeLSTMCell", "CerebralGRUCell",
           "cell_step"]


def cell_step(spec: LayerSpec, x: Tensor, h: Tensor, c: Tensor | None, w: DirectionWeights):
    """One step of a cell: ``x`` (B, I), ``h`` (B, H), ``c`` (B, K*H) or None. Returns ``(h', c')`` (``c'`` None
    for kinds without a cell state). Every path is computed separately (see :func:`~cerebral_rnn.layout.split_paths`)."""
    pw = split_paths(w, spec)
    gx = [F.linear(x, pw.w_ih[k], pw.b_x[k]) for k in range(spec.paths)]
    cells = list(c.split(spec.hidden_size, dim=-1)) if c is not None else None
    h, cells = paths_step(spec.kind, gx, h, cells, pw.w_hh, pw.b_h, pw.peephole, pw.w_hr)
    return h, (torch.cat(cells, dim=-1) if cells is not None else None)


class _CellBase(HasKind, StaysFloat, nn.Module):
    KIND: str  # the cell's kind: a key of cerebral_rnn.kinds.KINDS (the kind of the layer it is one step of)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, num_paths: int = 1,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_paths = check_positive_int("num_paths", num_paths)
        self.bias = check_bool("bias", bias)
        kw = {"device": device, "dtype": dtype}
        rows = self.spec.rows
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **kw))
            self.bias_hh = nn.Parameter(torch.empty(rows, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if self.kind.peephole:
            self.peephole = nn.Parameter(torch.empty(self.kind.peephole_size(hidden_size, num_paths), **kw))

    @property
    def spec(self) -> LayerSpec:
        return LayerSpec(self.kind, self.num_paths, self.hidden_size)

    def _weights(self) -> DirectionWeights:
        return DirectionWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                                getattr(self, "peephole", None))

    def reset_parameters(self) -> None:
        w = self._weights()
        _init.init_cerebral_(w.w_ih, w.w_hh, w.b_ih, w.b_hh, self.hidden_size,
                             scheme=getattr(self, "init", "distinct"), forget_bias=getattr(self, "forget_bias", None),
                             paths=self.num_paths, peephole=w.peephole, gate_blocks=self.kind.gate_blocks,
                             forget_gate=self.kind.forget_gate)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.num_paths != (2 if hasattr(self, "init") else 1):
            s += f", num_paths={self.num_paths}"
        if getattr(self, "init", "distinct") != "distinct":
            s += f", init={self.init!r}"
        return s

    def forward(self, x: Tensor, hx=None):
        batched = check_cell_input(x, self.input_size, self.weight_ih)
        if not batched:
            x = x.unsqueeze(0)
        batch, H, K = x.shape[0], self.hidden_size, self.num_paths
        has_cell = self.kind.has_cell
        if hx is None:
            h = x.new_zeros(batch, H)
            c = x.new_zeros(batch, K * H) if has_cell else None
        else:
            if has_cell:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"hx: expected a tuple (h, c), got {type(hx).__name__}")
                h, c = hx
            else:
                h, c = hx, None
            check_state("h", h, (batch, H) if batched else (H,), self.weight_ih)
            if not batched:
                h = h.unsqueeze(0)
            if has_cell:
                c = self._check_c(c, batch, batched)
        h, c = cell_step(self.spec, x, h, c, self._weights())
        if not batched:
            h, c = h.squeeze(0), (c.squeeze(0) if c is not None else None)
        return (h, c) if has_cell else h

    def _check_c(self, c, batch: int, batched: bool) -> Tensor:
        H, K = self.hidden_size, self.num_paths
        full = (batch, K * H) if batched else (K * H,)
        one = (batch, H) if batched else (H,)
        if K > 1 and isinstance(c, Tensor) and tuple(c.shape) == one:
            c = c.repeat(*([1] * (c.dim() - 1)), K)  # one cell state for every path
        elif K > 1 and isinstance(c, Tensor) and tuple(c.shape) != full:
            raise ValueError(f"c: expected shape {full} (a cell state per path) or {one} (one for every path), "
                             f"got {tuple(c.shape)}")
        check_state("c", c, full, self.weight_ih)
        return c if batched else c.unsqueeze(0)


class RNNCell(_CellBase):
    r"""Elman RNN cell: :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})` (or ReLU).

    Args: ``input_size``, ``hidden_size``, ``bias``, ``nonlinearity`` (``"tanh"`` or ``"relu"``), ``device``,
    ``dtype``. Inputs: ``x`` (B, H_in) or (H_in,); ``h`` (B, H) or (H,), zeros when omitted. Output: ``h'``.
    Parameters as ``torch.nn.RNNCell``, drawn from U(-1/sqrt(H), 1/sqrt(H)).

    >>> cell = RNNCell(10, 20)
    >>> cell(torch.randn(3, 10)).shape
    torch.Size([3, 20])
    """

    KIND = "rnn"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        rnn_kind(nonlinearity)  # checks it
        self.nonlinearity = nonlinearity  # read by ``kind`` while the parameters are made
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.reset_parameters()

    @property
    def kind(self) -> CellKind:
        """The ``rnn`` kind with this cell's nonlinearity."""
        return rnn_kind(self.nonlinearity)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.nonlinearity == "tanh" else ", nonlinearity='relu'")


class LSTMCell(_CellBase):
    r"""LSTM cell with ``torch.nn.LSTMCell``'s equations, gate order and parameter names.

    .. math::
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \quad
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \quad
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \qquad h' = o \odot \tanh(c')

    Inputs: ``x`` (B, H_in) or (H_in,); ``(h, c)`` each (B, H) or (H,), zeros when omitted.
    Outputs: ``(h', c')``. Parameters: ``weight_ih`` (4H, H_in), ``weight_hh`` (4H, H), ``bias_ih``,
    ``bias_hh`` (4H,); rows i, f, g, o. ``forget_bias`` (if given) sets ``bias_ih``'s f rows to it and
    ``bias_hh``'s f rows to 0.

    >>> h, c = LSTMCell(10, 20)(torch.randn(3, 10))
    >>> h.shape, c.shape
    (torch.Size([3, 20]), torch.Size([3, 20]))
    """

    KIND = "lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 forget_bias: float | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.reset_parameters()


class GRUCell(_CellBase):
    r"""GRU cell with ``torch.nn.GRUCell``'s equations (:class:`~cerebral_rnn.GRU`), gate order r, z, n and
    parameter names.

    >>> GRUCell(10, 20)(torch.randn(3, 10)).shape
    torch.Size([3, 20])
    """

    KIND = "gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.reset_parameters()


class _CerebralCellBase(_CellBase):
    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_paths: int, init: str,
                 forget_bias, device, dtype) -> None:
        super().__init__(input_size, hidden_size, bias, num_paths, device, dtype)
        self.init = _init.check_scheme(init)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.reset_parameters()


class CerebralLSTMCell(_CerebralCellBase):
    r"""Cerebral LSTM cell (Kumar, SN Computer Science 1, 85, 2020): K = ``num_paths`` LSTM paths (the paper's
    *upper* and *lower* for K = 2) read the same ``[h(t-1), x(t)]``; their outputs are added.

    .. math::
        U_f = \sigma(W_{uf} [h, x] + b_{uf}) \qquad L_f = \sigma(W_{lf} [h, x] + b_{lf}) \\
        U_i = \sigma(W_{ui} [h, x] + b_{ui}) \qquad L_i = \sigma(W_{li} [h, x] + b_{li}) \\
        \tilde U_C = \tanh(W_{uc} [h, x] + b_{uc}) \qquad \tilde L_C = \tanh(W_{lc} [h, x] + b_{lc}) \\
        U_C' = U_f \odot U_C + U_i \odot \tilde U_C \qquad L_C' = L_f \odot L_C + L_i \odot \tilde L_C \\
        U_o = \sigma(W_{uo} [h, x] + b_{uo}) \qquad L_o = \sigma(W_{lo} [h, x] + b_{lo}) \\
        h' = U_o \odot \tanh(U_C') + L_o \odot \tanh(L_C')

    Each :math:`W_{\cdot}[h, x] + b_\cdot` is stored split as ``W_ih x + b_ih + W_hh h + b_hh``, as in
    ``torch.nn.LSTMCell``.

    Args:
        input_size, hidden_size, bias: as ``torch.nn.LSTMCell``.
        num_paths: K (default 2, the paper's cell; 1 is ``torch.nn.LSTMCell``).
        init: ``"distinct"`` (default; paths drawn independently) or ``"identical"`` (every path starts as an
            exact copy of the first). See :mod:`cerebral_rnn.init`.
        forget_bias: if given, the forget-gate bias of every path (``bias_ih`` f rows; ``bias_hh`` f rows 0).

    Inputs: ``x`` (B, H_in) or (H_in,); ``(h, c)`` with ``h`` (B, H) and ``c`` (B, K*H) = ``[UC | LC]`` (or
    (B, H): every path starts from it); unbatched: drop B. Zeros when omitted.

    Outputs: ``(h', c')`` with ``c'`` (B, K*H).

    Parameters: ``weight_ih`` (4KH, H_in), ``weight_hh`` (4KH, H), ``bias_ih``, ``bias_hh`` (4KH,). Rows: upper
    path i, f, g, o, then lower path i, f, g, o (then further paths), H rows each.

    >>> cell = CerebralLSTMCell(10, 20)
    >>> h, c = cell(torch.randn(3, 10))
    >>> h.shape, c.shape
    (torch.Size([3, 20]), torch.Size([3, 40]))
    """

    KIND = "cerebral"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 num_paths: int = 2, init: str = "distinct", forget_bias: float | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, num_paths, init, forget_bias, device, dtype)


class CerebralPeepholeLSTMCell(_CerebralCellBase):
    r"""One step of :class:`~cerebral_rnn.CerebralPeepholeLSTM`: K peephole-LSTM paths, outputs added.

    Parameters as :class:`CerebralLSTMCell` plus ``peephole`` (3KH,): path k's ``w_ci, w_cf, w_co``.

    >>> h, c = CerebralPeepholeLSTMCell(10, 20)(torch.randn(3, 10))
    >>> h.shape, c.shape
    (torch.Size([3, 20]), torch.Size([3, 40]))
    """

    KIND = "cerebral-peephole"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 num_paths: int = 2, init: str = "distinct", forget_bias: float | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, num_paths, init, forget_bias, device, dtype)


class CerebralGRUCell(_CerebralCellBase):
    r"""One step of :class:`~cerebral_rnn.CerebralGRU`: K GRU paths, ``h' = mean_k h'_k``.

    Parameters: ``weight_ih`` (3KH, H_in), ``weight_hh`` (3KH, H), ``bias_ih``, ``bias_hh`` (3KH,); rows path 1
    r, z, n, then path 2, ...

    >>> CerebralGRUCell(10, 20)(torch.randn(3, 10)).shape
    torch.Size([3, 20])
    """

    KIND = "cerebral-gru"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 num_paths: int = 2, init: str = "distinct") -> None:
        super().__init__(input_size, hidden_size, bias, num_paths, init, None, device, dtype)
