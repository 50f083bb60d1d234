r"""Reference cells: one time step each, written to read like the equations they implement.

These are the oracle of the library. Every layer and every fused backend is tested against the step
functions here (which are themselves tested against independent float64 transcriptions and ``torch.nn``).

Parameter layout (fixed; :mod:`cerebral_rnn.convert` and the backends rely on it):

============================  ==================  ==============================================
cell                          ``weight_ih`` rows   gate order
============================  ==================  ==============================================
:class:`RNNCell`              H                   --
:class:`LSTMCell`             4H                  i, f, g, o  (as ``torch.nn.LSTMCell``)
:class:`CerebralLSTMCell`     8H                  upper i, f, g, o, then lower i, f, g, o
============================  ==================  ==============================================

``weight_hh`` has the same rows and H columns; ``bias_ih`` and ``bias_hh`` have the same rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import init as _init
from ._checks import check_cell_input, check_positive_int, check_state

__all__ = [
    "RNNCell",
    "LSTMCell",
    "CerebralLSTMCell",
    "rnn_step",
    "lstm_step",
    "cerebral_lstm_step",
    "cerebral_lstm_pointwise",
    "lstm_pointwise",
]


# --------------------------------------------------------------------------------------------------------
# Step functions. ``gates`` is the full pre-activation W_ih x + b_ih + W_hh h + b_hh.
# --------------------------------------------------------------------------------------------------------


def lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM after its matmuls: ``gates`` (B, 4H) rows i, f, g, o; ``c`` (B, H) -> (h', c')."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def cerebral_lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Cerebral LSTM after its matmuls (Kumar 2020, eqs. 1-11).

    ``gates`` (B, 8H): upper i, f, g, o then lower i, f, g, o. ``c`` (B, 2H) = ``[UC | LC]``.
    Returns ``h'`` (B, H) and ``c'`` (B, 2H).
    """
    ui, uf, ug, uo, li, lf, lg, lo = gates.chunk(8, dim=-1)
    uc, lc = c.chunk(2, dim=-1)
    uc_new = torch.sigmoid(uf) * uc + torch.sigmoid(ui) * torch.tanh(ug)  # UC = Uf*UC(t-1) + Ui*UCtmp
    lc_new = torch.sigmoid(lf) * lc + torch.sigmoid(li) * torch.tanh(lg)  # LC = Lf*LC(t-1) + Li*LCtmp
    h_new = torch.sigmoid(uo) * torch.tanh(uc_new) + torch.sigmoid(lo) * torch.tanh(lc_new)  # h = Uo*tanh(UC) + Lo*tanh(LC)
    return h_new, torch.cat([uc_new, lc_new], dim=-1)


def rnn_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
             nonlinearity: str = "tanh") -> Tensor:
    """Elman step: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """One LSTM step (torch.nn.LSTMCell's equations and gate order)."""
    return lstm_pointwise(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh), c)


def _per_path_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``W x + b`` for the upper rows (first half) and the lower rows (second half) separately, concatenated.

    Both paths then go through the same kernels on operands of the same shape, so identical paths get bitwise
    identical values and gradients (one GEMM over all 8H rows rounds the bias gradient of a column differently
    depending on its position, and identical paths drift apart in training; see :mod:`cerebral_rnn.init`).
    """
    bs = b.chunk(2) if b is not None else (None, None)
    return torch.cat([F.linear(x, wp, bp) for wp, bp in zip(w.chunk(2), bs)], dim=-1)


def cerebral_lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                       b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """One Cerebral LSTM step: both paths read the same ``[h(t-1), x(t)]``; ``c`` is ``[UC | LC]``."""
    return cerebral_lstm_pointwise(_per_path_linear(x, w_ih, b_ih) + _per_path_linear(h, w_hh, b_hh), c)


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------


class _CellBase(nn.Module):
    gate_blocks: int = 1  # rows of weight_ih, in units of hidden_size
    state_blocks: int = 1  # width of the cell state, in units of hidden_size (0: no cell state)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__}")
        self.bias = bias
        kw = {"device": device, "dtype": dtype}
        rows = self.gate_blocks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **kw))
            self.bias_hh = nn.Parameter(torch.empty(rows, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s

    def _prepare(self, x: Tensor, hx, names: tuple[str, ...]):
        """Check input and state; return batched x, the state tensors (zeros if absent), and whether batched."""
        batched = check_cell_input(x, self.input_size, self.weight_ih)
        if not batched:
            x = x.unsqueeze(0)
        batch = x.shape[0]
        widths = (self.hidden_size, self.state_blocks * self.hidden_size)[: len(names)]
        if hx is None:
            states = [x.new_zeros(batch, w) for w in widths]
        else:
            if len(names) == 1:
                hx = (hx,)
            elif not isinstance(hx, (tuple, list)) or len(hx) != len(names):
                raise TypeError(f"hx: expected a tuple ({', '.join(names)}), got {type(hx).__name__}")
            states = []
            for name, s, w in zip(names, hx, widths):
                expected = (batch, w) if batched else (w,)
                check_state(name, s, expected, self.weight_ih)
                states.append(s if batched else s.unsqueeze(0))
        return x, states, batched


class RNNCell(_CellBase):
    r"""Elman RNN cell: :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})` (or ReLU).

    Args:
        input_size: features of ``x``. hidden_size: features of ``h``. bias: use ``b_ih``, ``b_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Inputs: ``x`` (B, H_in) or (H_in,); ``h`` (B, H) or (H,), zeros when omitted.
    Output: ``h'`` of the same batching.

    Parameters: ``weight_ih`` (H, H_in), ``weight_hh`` (H, H), ``bias_ih``, ``bias_hh`` (H,), all drawn from
    U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn.RNNCell``.

    >>> cell = RNNCell(10, 20)
    >>> cell(torch.randn(3, 10)).shape
    torch.Size([3, 20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init.uniform_(self.parameters(), self.hidden_size)

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._prepare(x, hx, ("h",))
        h = rnn_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)

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
    Outputs: ``(h', c')``.

    Parameters: ``weight_ih`` (4H, H_in), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh`` (4H,); rows i, f, g,
    o. Drawn from U(-1/sqrt(H), 1/sqrt(H)); ``forget_bias`` (if given) sets ``bias_ih``'s f rows to it and
    ``bias_hh``'s f rows to 0.

    >>> h, c = LSTMCell(10, 20)(torch.randn(3, 10))
    >>> h.shape, c.shape
    (torch.Size([3, 20]), torch.Size([3, 20]))
    """

    gate_blocks = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float | None = None,
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init.init_lstm_(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.hidden_size,
                         forget_bias=self.forget_bias)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, (h, c), batched = self._prepare(x, hx, ("h", "c"))
        h, c = lstm_step(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class CerebralLSTMCell(_CellBase):
    r"""Cerebral LSTM cell (Kumar, SN Computer Science 1, 85, 2020): two LSTM paths, *upper* (U) and *lower*
    (L), read the same ``[h(t-1), x(t)]``; their outputs are added.

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
        init: ``"distinct"`` (default; the two paths drawn independently) or ``"identical"`` (the lower path
            starts as an exact copy of the upper path). See :mod:`cerebral_rnn.init`.
        forget_bias: if given, the forget-gate bias of both paths (``bias_ih`` f rows; ``bias_hh`` f rows 0).

    Inputs: ``x`` (B, H_in) or (H_in,); ``(h, c)`` with ``h`` (B, H) and ``c`` (B, 2H) = ``[UC | LC]``
    (unbatched: (H,), (2H,)); zeros when omitted.

    Outputs: ``(h', c')`` of the same shapes.

    Parameters: ``weight_ih`` (8H, H_in), ``weight_hh`` (8H, H), ``bias_ih``, ``bias_hh`` (8H,). Rows: upper
    path i, f, g, o, then lower path i, f, g, o, H rows each (``torch.nn.LSTMCell``'s gate order, twice).

    >>> cell = CerebralLSTMCell(10, 20)
    >>> h, c = cell(torch.randn(3, 10))
    >>> h.shape, c.shape
    (torch.Size([3, 20]), torch.Size([3, 40]))
    """

    gate_blocks = 8
    state_blocks = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, init: str = "distinct",
                 forget_bias: float | None = None, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.init = _init.check_scheme(init)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init.init_cerebral_(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.hidden_size,
                             scheme=self.init, forget_bias=self.forget_bias)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, (h, c), batched = self._prepare(x, hx, ("h", "c"))
        h, c = cerebral_lstm_step(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", init={self.init!r}"
