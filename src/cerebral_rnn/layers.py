r"""Sequence layers with ``torch.nn.LSTM``'s contract: ``RNN``, ``LSTM`` and ``CerebralLSTM``.

Symbols: N batch size, L sequence length, D = 2 if bidirectional else 1, H_in input size, H hidden size.

Each layer runs a time loop over its cell, layer after layer, with dropout between layers in training only.
Inputs may be ``(L, N, H_in)`` (``(N, L, H_in)`` with ``batch_first=True``), unbatched ``(L, H_in)``, or a
``PackedSequence``; the output has the same form. Final states are taken at each sequence's own length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends as _backends
from . import init as _init
from ._checks import check_bool, check_dropout, check_like, check_positive_int
from .backends.reference import lstm_state_pointwise, rnn_pointwise, run_layer

__all__ = ["RNN", "LSTM", "CerebralLSTM"]


class _RNNBase(nn.Module):
    """Shared constructor, parameters and forward driver. Subclasses set the block counts and ``_run_layer``."""

    gate_blocks: int = 1  # rows of weight_ih in units of H
    state_blocks: tuple[int, ...] = (1,)  # widths of the state tensors (h first) in units of H
    state_names: tuple[str, ...] = ("h_0",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.dropout = check_dropout(dropout, num_layers)
        kw = {"device": device, "dtype": dtype}
        rows, H, D = self.gate_blocks * hidden_size, hidden_size, self.num_directions
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else H * D
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (rows, layer_input), "weight_hh": (rows, H)}
                if bias:
                    shapes.update(bias_ih=(rows,), bias_hh=(rows,))
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **kw)))
                    self._flat_weights_names.append(name + suffix)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_weights(self, layer: int) -> list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of each direction of ``layer`` (bias None if absent)."""
        out = []
        for direction in range(self.num_directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            out.append(tuple(getattr(self, n + suffix, None)
                             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
        return out

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[w for w in ws if w is not None] for layer in range(self.num_layers)
                for ws in self.layer_weights(layer)]

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``torch.nn.LSTM``."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    # -- forward driver ----------------------------------------------------------------------------------

    def _check_input(self, input):
        ref = self.weight_ih_l0
        if isinstance(input, PackedSequence):
            x, batch_sizes, sorted_indices, unsorted_indices = input
            check_like("input", x, ref)
            if x.dim() != 2:
                raise ValueError(f"input: expected PackedSequence data of 2 dimensions, got {x.dim()}")
            if x.shape[-1] != self.input_size:
                raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                                 f"got {x.shape[-1]} (packed data shape {tuple(x.shape)})")
            return x, batch_sizes, sorted_indices, unsorted_indices, True
        if not isinstance(input, Tensor):
            raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
        check_like("input", input, ref)
        if input.dim() not in (2, 3):
            raise ValueError(f"input: expected a 2-D (unbatched) or 3-D (batched) tensor, got {input.dim()}-D "
                             f"with shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                             f"got {input.shape[-1]} (shape {tuple(input.shape)})")
        batched = input.dim() == 3
        if input.shape[1 if batched and self.batch_first else 0] == 0:
            raise ValueError(f"input: expected a sequence length > 0, got shape {tuple(input.shape)}")
        if not batched:
            x = input.unsqueeze(1)
        elif self.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        return x, None, None, None, batched

    def _initial_states(self, hx, x: Tensor, batch: int, batched: bool, sorted_indices):
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        widths = [b * H for b in self.state_blocks]
        if hx is None:
            return [x.new_zeros(LD, batch, w) for w in widths]
        if len(self.state_names) == 1:
            hx = (hx,)
        elif not isinstance(hx, (tuple, list)) or len(hx) != len(self.state_names):
            raise TypeError(f"hx: expected a tuple ({', '.join(self.state_names)}), got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        states = []
        for name, s, w in zip(self.state_names, hx, widths):
            check_like(name, s, self.weight_ih_l0)
            expected = (LD, batch, w) if batched else (LD, w)
            if tuple(s.shape) != expected:
                kind = "batched" if batched else "unbatched"
                raise ValueError(f"{name}: expected shape {expected} for {kind} input, got {tuple(s.shape)}")
            if not batched:
                s = s.unsqueeze(1)
            if sorted_indices is not None:
                s = s.index_select(1, sorted_indices)
            states.append(s)
        return states

    def _run_layer(self, layer: int, x: Tensor, batch_sizes: Tensor | None, states: list[Tensor]):
        raise NotImplementedError

    def forward(self, input, hx=None):
        x, batch_sizes, sorted_indices, unsorted_indices, batched = self._check_input(input)
        batch = int(batch_sizes[0]) if batch_sizes is not None else x.shape[1]
        states0 = self._initial_states(hx, x, batch, batched, sorted_indices)
        D = self.num_directions
        finals: list[list[Tensor]] = [[] for _ in states0]
        for layer in range(self.num_layers):
            layer_states = [s[layer * D:(layer + 1) * D] for s in states0]
            x, layer_finals = self._run_layer(layer, x, batch_sizes, layer_states)
            for acc, f in zip(finals, layer_finals):
                acc.append(f)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        out_states = [torch.cat(f, dim=0) if len(f) > 1 else f[0] for f in finals]
        if batch_sizes is not None:
            output = PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                out_states = [s.index_select(1, unsorted_indices) for s in out_states]
        elif not batched:
            output = x.squeeze(1)
            out_states = [s.squeeze(1) for s in out_states]
        else:
            output = x.transpose(0, 1) if self.batch_first else x
        return output, (out_states[0] if len(out_states) == 1 else tuple(out_states))


def _check_simple_backend(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
    if backend not in ("auto", "torch", "reference"):
        raise ValueError(f"backend: expected one of ['auto', 'torch', 'reference'], got {backend!r}")
    return backend


def _torch_flat(weights) -> list[Tensor]:
    return [w for ws in weights for w in ws if w is not None]


class RNN(_RNNBase):
    r"""Elman RNN with ``torch.nn.RNN``'s contract: :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    Args: as ``torch.nn.RNN`` — ``input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False``; ``backend``: ``"auto"``/``"torch"`` (torch's fused
    op, the same function) or ``"reference"`` (the time loop of :mod:`cerebral_rnn.cells`).

    Inputs: ``input`` (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence;
    ``h_0`` (D*num_layers, N, H) or (D*num_layers, H), zeros when omitted.
    Outputs: ``output`` (L, N, D*H) (same form as the input), ``h_n`` (D*num_layers, N, H).

    Parameters: ``weight_ih_l{k}[_reverse]`` (H, H_in or D*H), ``weight_hh_l{k}[_reverse]`` (H, H),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (H,), from U(-1/sqrt(H), 1/sqrt(H)).

    >>> out, h_n = RNN(10, 20, num_layers=2)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 backend: str = "auto", device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)
        self.nonlinearity = nonlinearity
        self.backend = _check_simple_backend(backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init.uniform_(self.parameters(), self.hidden_size)

    def _run_layer(self, layer, x, batch_sizes, states):
        weights = self.layer_weights(layer)
        if self.backend == "reference":
            return run_layer(x, batch_sizes, tuple(states), weights, rnn_pointwise(self.nonlinearity))
        op = torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu
        flat = _torch_flat(weights)
        if batch_sizes is None:
            y, h = op(x, states[0], flat, self.bias, 1, 0.0, self.training, self.bidirectional, False)
        else:
            y, h = op(x, batch_sizes, states[0], flat, self.bias, 1, 0.0, self.training, self.bidirectional)
        return y, (h,)


class LSTM(_RNNBase):
    r"""LSTM with ``torch.nn.LSTM``'s contract, equations, gate order and parameter names (no ``proj_size``).

    See :class:`cerebral_rnn.cells.LSTMCell` for the equations. ``backend="auto"``/``"torch"`` runs torch's
    fused LSTM op (oneDNN on CPU, cuDNN on GPU), which computes the same function; ``"reference"`` runs the
    time loop of :mod:`cerebral_rnn.cells`. ``forget_bias`` as in :class:`~cerebral_rnn.cells.LSTMCell`.

    Inputs: ``input`` as :class:`RNN`; ``(h_0, c_0)`` each (D*num_layers, N, H) (unbatched: (D*num_layers, H)).
    Outputs: ``output`` (L, N, D*H), ``(h_n, c_n)`` each (D*num_layers, N, H).

    Parameters: ``weight_ih_l{k}[_reverse]`` (4H, H_in or D*H), ``weight_hh_l{k}[_reverse]`` (4H, H),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (4H,); rows i, f, g, o.

    >>> out, (h_n, c_n) = LSTM(10, 20, num_layers=2)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
    """

    gate_blocks = 4
    state_blocks = (1, 1)
    state_names = ("h_0", "c_0")
    proj_size = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 forget_bias: float | None = None, backend: str = "auto", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.backend = _check_simple_backend(backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in range(self.num_layers):
            for ws in self.layer_weights(layer):
                _init.init_lstm_(*ws, self.hidden_size, forget_bias=self.forget_bias)

    def _run_layer(self, layer, x, batch_sizes, states):
        weights = self.layer_weights(layer)
        if self.backend == "reference":
            return run_layer(x, batch_sizes, tuple(states), weights, lstm_state_pointwise)
        flat = _torch_flat(weights)
        if batch_sizes is None:
            y, h, c = torch._VF.lstm(x, states, flat, self.bias, 1, 0.0, self.training, self.bidirectional,
                                     False)
        else:
            y, h, c = torch._VF.lstm(x, batch_sizes, states, flat, self.bias, 1, 0.0, self.training,
                                     self.bidirectional)
        return y, (h, c)


class CerebralLSTM(_RNNBase):
    r"""Cerebral LSTM layer (Kumar 2020) with ``torch.nn.LSTM``'s contract.

    Each layer and direction runs a :class:`~cerebral_rnn.cells.CerebralLSTMCell` over time: an upper and a
    lower LSTM path read the same ``[h(t-1), x(t)]`` and :math:`h_t = U_o \odot \tanh(U_C) + L_o \odot
    \tanh(L_C)`. The cell state carries both paths, ``c = [UC | LC]``, so ``c_n`` has 2H features where
    ``h_n`` has H; everything else is shaped as in ``torch.nn.LSTM``, so a model written for ``nn.LSTM``
    (unpacking, ``.detach()`` of the state for truncated BPTT, PackedSequence) runs unchanged.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as ``torch.nn.LSTM``.
        init: ``"distinct"`` (default, paths drawn independently) or ``"identical"`` (lower path a copy of the
            upper path at start). See :mod:`cerebral_rnn.init`.
        forget_bias: optional forget-gate bias of both paths.
        backend: ``"auto"`` (default) or a name from :func:`cerebral_rnn.backends.available_backends`. The
            backend that ran the last forward is in :attr:`last_backend`.

    Inputs: ``input`` (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence;
    ``(h_0, c_0)``: ``h_0`` (D*num_layers, N, H), ``c_0`` (D*num_layers, N, 2H) = ``[UC | LC]`` (unbatched:
    drop N). Zeros when omitted.

    Outputs: ``output`` (L, N, D*H) in the input's form; ``h_n`` (D*num_layers, N, H); ``c_n``
    (D*num_layers, N, 2H).

    Parameters: ``weight_ih_l{k}[_reverse]`` (8H, H_in or D*H), ``weight_hh_l{k}[_reverse]`` (8H, H),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (8H,). Rows: upper path i, f, g, o, then lower path
    i, f, g, o, H rows each. Drawn from U(-1/sqrt(H), 1/sqrt(H)).

    >>> layer = CerebralLSTM(10, 20, num_layers=2)
    >>> out, (h_n, c_n) = layer(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 40]))
    """

    gate_blocks = 8
    state_blocks = (1, 2)
    state_names = ("h_0", "c_0")
    proj_size = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 init: str = "distinct", forget_bias: float | None = None, backend: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)
        self.init = _init.check_scheme(init)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.backend = _backends.get_backend(backend)
        self.last_backend: str | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in range(self.num_layers):
            for ws in self.layer_weights(layer):
                _init.init_cerebral_(*ws, self.hidden_size, scheme=self.init, forget_bias=self.forget_bias)

    def _run_layer(self, layer, x, batch_sizes, states):
        weights = self.layer_weights(layer)
        backend = _backends.select_backend(self.backend, x, batch_sizes, weights, self.training)
        self.last_backend = backend.name
        y, h_n, c_n = backend.forward_layer(x, states[0], states[1], weights, batch_sizes)
        return y, (h_n, c_n)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.init != "distinct":
            s += f", init={self.init!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s
