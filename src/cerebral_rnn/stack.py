"""A recurrent network built layer by layer, mixing cell kinds.

>>> import torch
>>> from cerebral_rnn import StackedRNN
>>> net = StackedRNN(16).add_layer("cerebral", 32).add_layer("lstm", 24).add_layer("rnn", 8)
>>> out, states = net(torch.randn(10, 4, 16))
>>> out.shape, [type(s).__name__ for s in states]
(torch.Size([10, 4, 8]), ['tuple', 'tuple', 'Tensor'])

A Cerebral layer under an LSTM layer is one of the "Cerebral LSTM based stacked networks" the paper names as
future work.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ._checks import check_bool, check_dropout, check_positive_int
from .layers import LAYER_CLASSES

__all__ = ["StackedRNN", "LAYER_KINDS"]

LAYER_KINDS = LAYER_CLASSES  # kind name (cerebral_rnn.kinds.KINDS) -> layer class


class StackedRNN(nn.Module):
    """Recurrent layers added one by one with :meth:`add_layer`; each reads the previous layer's output.

    Args:
        input_size: features of the input.
        dropout: dropout on each layer's output before the next layer (training only).
        batch_first: input and output are (N, L, features); passed to every layer.
        device, dtype: default for layers added later (an ``add_layer`` call may override them).

    Forward: ``output, states = net(input, states=None)``. ``input`` as for :class:`~cerebral_rnn.LSTM`
    (batched, unbatched or PackedSequence). ``states``: None or a list with one entry per layer, each what that
    layer takes as ``hx`` (or None). Returns the last layer's output and the list of every layer's final state.
    """

    def __init__(self, input_size: int, dropout: float = 0.0, batch_first: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.dropout = check_dropout(dropout, num_layers=2)  # the stack's depth is not known yet
        self.batch_first = check_bool("batch_first", batch_first)
        self._factory = {"device": device, "dtype": dtype}
        self.layers = nn.ModuleList()

    @property
    def output_size(self) -> int:
        """Features of the output: the last layer's D*H, or the input size while empty."""
        if not self.layers:
            return self.input_size
        last = self.layers[-1]
        return last.spec.out_size * last.num_directions

    def add_layer(self, kind: str, hidden_size: int, **options) -> StackedRNN:
        """Append a layer of ``kind`` (a key of :data:`LAYER_KINDS`: ``"rnn"``, ``"lstm"``, ``"gru"``,
        ``"cerebral"``, ``"cerebral-peephole"``, ``"cerebral-gru"``) reading the current output.

        ``options`` go to the layer's constructor (``num_layers``, ``bidirectional``, ``num_paths``, ``init``,
        the regularisers ``weight_dropout``, ``recurrent_dropout``, ``zoneout``, ``layer_norm``,
        ``backend``, ``nonlinearity``, ``proj_size``...). ``input_size`` and ``batch_first`` are set by the stack.
        Returns ``self``.
        """
        if kind not in LAYER_KINDS:
            raise ValueError(f"kind: expected one of {list(LAYER_KINDS)}, got {kind!r}")
        for fixed in ("input_size", "batch_first"):
            if fixed in options:
                raise TypeError(f"add_layer: {fixed} is set by the stack, got {fixed}={options[fixed]!r}")
        options = {**self._factory, **options}
        self.layers.append(LAYER_KINDS[kind](self.output_size, hidden_size, batch_first=self.batch_first,
                                             **options))
        return self

    def forward(self, input, states: list | None = None):
        if not self.layers:
            raise RuntimeError("StackedRNN has no layers: call add_layer(kind, hidden_size) first")
        if states is None:
            states = [None] * len(self.layers)
        elif not isinstance(states, (list, tuple)) or len(states) != len(self.layers):
            got = f"{type(states).__name__} of length {len(states)}" if isinstance(states, (list, tuple)) \
                else type(states).__name__
            raise ValueError(f"states: expected a list of {len(self.layers)} entries (one per layer), got {got}")
        x = input
        finals = []
        for k, (layer, hx) in enumerate(zip(self.layers, states)):
            x, final = layer(x, hx)
            finals.append(final)
            if self.dropout > 0 and self.training and k < len(self.layers) - 1:
                x = _dropout(x, self.dropout)
        return x, finals


def _dropout(x, p: float):
    if isinstance(x, PackedSequence):
        return x._replace(data=F.dropout(x.data, p, training=True))
    return F.dropout(x, p, training=True)

