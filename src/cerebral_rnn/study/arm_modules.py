"""The torch side of the arms: the control arm lstm-x2's module, the forget-bias setter, and what the study reads
off a trained arm (its final hidden state, the gap between its paths). Kept apart from :mod:`.arms` so that the
registry (names, descriptions, parameter formulas) loads without torch, for ``reproduce --help``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from cerebral_rnn import LSTM, CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM


def set_forget_bias_(rnn: nn.Module, value: float, gate_rows: int, forget_block: int = 1) -> None:
    """For an LSTM-like module whose gate rows come in blocks of ``gate_rows`` (i, f, g, o): set the forget
    rows of every ``bias_ih*`` to ``value`` and of every ``bias_hh*`` to 0 (the library's convention)."""
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith(("bias_ih", "bias_hh")):
                rows = slice(forget_block * gate_rows, (forget_block + 1) * gate_rows)
                p[rows] = value if name.startswith("bias_ih") else 0.0


class DoubledLSTM(nn.Module):
    """A single LSTM whose output and recurrent input are :math:`h_t = 2\\,o_t \\odot \\tanh(c_t)`.

    Gates read :math:`W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}` with the doubled :math:`h`, exactly as
    one path of a Cerebral LSTM with identical paths. Computed by an inner :class:`cerebral_rnn.LSTM` (hidden
    size H, parameters stored and initialised as in an LSTM) run with recurrent weight ``2 W_hh`` on
    :math:`h' = h / 2`; its output and ``h_n`` are doubled, ``c_n`` is unchanged. Takes and returns
    ``(h, c)`` like ``nn.LSTM`` (``h_0`` in the doubled scale); accepts dense (L, N, I) and packed input.
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float | None = None, **regularisers) -> None:
        super().__init__()
        self.lstm = LSTM(input_size, hidden_size, forget_bias=forget_bias, **regularisers)
        self.hidden_size = hidden_size

    def forward(self, x, state=None):
        if state is not None:
            h0, c0 = state
            state = (h0 / 2, c0)
        scaled = {"weight_hh_l0": 2 * self.lstm.weight_hh_l0}
        y, (h, c) = torch.func.functional_call(self.lstm, scaled, (x, state))
        if isinstance(y, PackedSequence):
            y = y._replace(data=2 * y.data)
        else:
            y = 2 * y
        return y, (2 * h, c)


def final_hidden(state) -> Tensor:
    """``h_n`` of the last layer, (N, features), from a state as returned by nn.LSTM (tuple) or nn.GRU."""
    h = state[0] if isinstance(state, (tuple, list)) else state
    return h[-1]


def path_difference(rnn: nn.Module) -> float | None:
    """For a Cerebral layer of K paths: max |path k - path 0| over every per-path parameter (each parameter's
    rows split in K equal blocks; a projection ``weight_hr``, shared by the paths, is left out). Zero means the
    paths are still identical (a Cerebral LSTM is then a single LSTM with h = K·o·tanh(c)). None for other
    modules."""
    if not isinstance(rnn, (CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU)):
        return None
    k = rnn.num_paths
    gap = 0.0
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight_hr"):
                continue
            blocks = p.reshape(k, -1)
            gap = max(gap, float((blocks[1:] - blocks[:1]).abs().max()) if k > 1 else 0.0)
    return gap
