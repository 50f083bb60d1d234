"""The arms of the comparison: a registry of recurrent layers, one entry per arm.

An arm is a name, a one-line description and a builder ``build(input_size, width, forget_bias) -> nn.Module``
that returns any recurrent module with ``torch.nn.LSTM``'s calling convention: ``y, state = rnn(x, state)``
with ``x`` of shape (L, N, input_size) or a ``PackedSequence``, ``y`` of shape (L, N, output_size(width)) (or
packed), and ``state`` either a tensor ``h_n`` (as ``nn.GRU``) or a tuple whose first entry is ``h_n``
(as ``nn.LSTM``), ``h_n`` of shape (layers, N, output_size(width)). Everything else (embedding, head,
training) is the same for every arm, so adding an arm is one :func:`register` call:

>>> from torch import nn
>>> _ = register(Arm("gru-example", "a torch GRU, hidden H", lambda i, w, fb: nn.GRU(i, w), forget_gate=False))
>>> "gru-example" in ARMS
True
>>> del ARMS["gru-example"]

Arms with ``match="cerebral"`` take the width whose *whole model* (embedding + RNN + head of the task) has the
parameter count closest to that arm's model at hidden size H; the others use width H.

The two control arms:

- ``lstm-x2``: one LSTM whose output *and* recurrent input is :math:`h_t = 2\\,o_t \\odot \\tanh(c_t)`, i.e. a
  Cerebral LSTM whose two paths are identical (the function class of ``cerebral-identical``), trained as an
  ordinary LSTM. It holds an ``LSTM(H)`` whose weights are the model's own (``W_hh`` multiplies the doubled
  ``h``) and runs it with recurrent weight ``2 W_hh`` on the undoubled state, doubling what comes out.
- ``lstmp``: ``torch.nn.LSTM(E, 2H, proj_size=H)``: an LSTM of size 2H whose output is projected to H by a
  learned matrix. A Cerebral LSTM of size H is exactly this model with the projection fixed to ``[I I]`` (and
  the gate rows of the two paths interleaved), so it contains the Cerebral LSTM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from cerebral_rnn import GRU, LSTM, CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM

Builder = Callable[[int, int, "float | None"], nn.Module]


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison.

    ``build(input_size, width, forget_bias)`` returns the recurrent module (``forget_bias`` None: the module's
    default initialisation). ``parameters(input_size, width)``, when given, is the module's parameter count as
    a formula (tests check it against the built module); when None it is counted by building the module.
    ``output_size(width)``: features of its output and ``h_n`` (default: ``width``). ``match``: the arm whose
    whole-model parameter count this arm's width is chosen to match (None: width = H). ``forget_gate``: False
    for cells without one (a tuned forget-gate bias is then not applied and is recorded as such).
    """

    name: str
    description: str
    build: Builder
    parameters: Callable[[int, int], int] | None = None
    output_size: Callable[[int], int] = lambda width: width
    match: str | None = None
    forget_gate: bool = True

    def count(self, input_size: int, width: int) -> int:
        if self.parameters is not None:
            return self.parameters(input_size, width)
        return _count_by_building(self, input_size, width)


_COUNT_CACHE: dict[tuple[str, int, int], int] = {}


def _count_by_building(arm: Arm, input_size: int, width: int) -> int:
    key = (arm.name, input_size, width)
    if key not in _COUNT_CACHE:
        state = torch.get_rng_state()  # counting must not move the global generator
        try:
            _COUNT_CACHE[key] = sum(p.numel() for p in arm.build(input_size, width, None).parameters())
        finally:
            torch.set_rng_state(state)
    return _COUNT_CACHE[key]


ARMS: dict[str, Arm] = {}


def register(arm: Arm) -> Arm:
    """Add ``arm`` to the registry (its name must be new)."""
    if not isinstance(arm, Arm):
        raise TypeError(f"arm: expected an Arm, got {type(arm).__name__}")
    if arm.name in ARMS:
        raise ValueError(f"arm: {arm.name!r} is already registered")
    if arm.match is not None and arm.match not in ARMS:
        raise ValueError(f"arm: {arm.name!r} matches {arm.match!r}, which is not registered")
    ARMS[arm.name] = arm
    return arm


def check_arms(names: list[str]) -> list[str]:
    """Validate a list of arm names (as given to ``--models``); duplicates are an error."""
    if not names:
        raise ValueError(f"--models: expected at least one of {list(ARMS)}")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"--models: unknown model {unknown[0]!r}; valid names: {', '.join(ARMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--models: a model is listed twice: {','.join(names)}")
    return names


# -- parameter formulas --------------------------------------------------------------------------------------


def lstm_layer_parameters(input_size: int, hidden: int, proj: int = 0) -> int:
    """One LSTM layer: W_ih (4H x in), W_hh (4H x R), b_ih and b_hh (4H each), W_hr (P x H) if proj P > 0;
    R = P if projected else H."""
    recurrent = proj if proj else hidden
    return 4 * hidden * (input_size + recurrent) + 8 * hidden + proj * hidden


def gru_layer_parameters(input_size: int, hidden: int) -> int:
    """One GRU layer: W_ih (3H x in), W_hh (3H x H), b_ih and b_hh (3H each)."""
    return 3 * hidden * (input_size + hidden) + 6 * hidden


def set_forget_bias_(rnn: nn.Module, value: float, gate_rows: int, forget_block: int = 1) -> None:
    """For an LSTM-like module whose gate rows come in blocks of ``gate_rows`` (i, f, g, o): set the forget
    rows of every ``bias_ih*`` to ``value`` and of every ``bias_hh*`` to 0 (the library's convention)."""
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith(("bias_ih", "bias_hh")):
                rows = slice(forget_block * gate_rows, (forget_block + 1) * gate_rows)
                p[rows] = value if name.startswith("bias_ih") else 0.0


# -- the control arm lstm-x2 ------------------------------------------------------------------------------------


class DoubledLSTM(nn.Module):
    """A single LSTM whose output and recurrent input are :math:`h_t = 2\\,o_t \\odot \\tanh(c_t)`.

    Gates read :math:`W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}` with the doubled :math:`h`, exactly as
    one path of a Cerebral LSTM with identical paths. Computed by an inner :class:`cerebral_rnn.LSTM` (hidden
    size H, parameters stored and initialised as in an LSTM) run with recurrent weight ``2 W_hh`` on
    :math:`h' = h / 2`; its output and ``h_n`` are doubled, ``c_n`` is unchanged. Takes and returns
    ``(h, c)`` like ``nn.LSTM`` (``h_0`` in the doubled scale); accepts dense (L, N, I) and packed input.
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float | None = None) -> None:
        super().__init__()
        self.lstm = LSTM(input_size, hidden_size, forget_bias=forget_bias)
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


# -- the registry ------------------------------------------------------------------------------------------------


def _lstm(i: int, w: int, fb: float | None) -> nn.Module:
    return LSTM(i, w, forget_bias=fb)


def _lstmp(i: int, w: int, fb: float | None) -> nn.Module:
    rnn = nn.LSTM(i, 2 * w, proj_size=w)
    if fb is not None:
        set_forget_bias_(rnn, fb, gate_rows=2 * w)
    return rnn


register(Arm("lstm", "single LSTM, hidden H", _lstm, lambda i, w: lstm_layer_parameters(i, w)))
register(Arm("lstm2", "two-stacked LSTM, hidden H per layer",
             lambda i, w, fb: LSTM(i, w, num_layers=2, forget_bias=fb),
             lambda i, w: lstm_layer_parameters(i, w) + lstm_layer_parameters(w, w)))
register(Arm("cerebral", "Cerebral LSTM, hidden H, init distinct",
             lambda i, w, fb: CerebralLSTM(i, w, init="distinct", forget_bias=fb),
             lambda i, w: 2 * lstm_layer_parameters(i, w)))
register(Arm("cerebral-identical", "Cerebral LSTM, hidden H, init identical",
             lambda i, w, fb: CerebralLSTM(i, w, init="identical", forget_bias=fb),
             lambda i, w: 2 * lstm_layer_parameters(i, w)))
register(Arm("lstm-matched", "single LSTM whose width gives the parameter count closest to cerebral's", _lstm,
             lambda i, w: lstm_layer_parameters(i, w), match="cerebral"))
register(Arm("lstm-x2", "single LSTM with h = 2·o·tanh(c) as output and recurrent input (cerebral-identical's "
             "function class), hidden H", lambda i, w, fb: DoubledLSTM(i, w, forget_bias=fb),
             lambda i, w: lstm_layer_parameters(i, w)))
register(Arm("lstmp", "torch.nn.LSTM(2H, proj_size=H): learned projection, contains the Cerebral LSTM", _lstmp,
             lambda i, w: lstm_layer_parameters(i, 2 * w, proj=w)))
# what `reproduce` trains unless --models says otherwise: the paper's arms and the control arms
DEFAULT_ARMS: tuple[str, ...] = tuple(ARMS)

# the family (the paper's future work): arms for --models, not in the default list
register(Arm("cerebral-k3", "Cerebral LSTM with three paths, hidden H, init distinct",
             lambda i, w, fb: CerebralLSTM(i, w, num_paths=3, init="distinct", forget_bias=fb),
             lambda i, w: 3 * lstm_layer_parameters(i, w)))
register(Arm("cerebral-peephole", "Cerebral peephole LSTM (two peephole LSTM paths), hidden H, init distinct",
             lambda i, w, fb: CerebralPeepholeLSTM(i, w, init="distinct", forget_bias=fb),
             lambda i, w: 2 * (lstm_layer_parameters(i, w) + 3 * w)))
register(Arm("gru", "single GRU, hidden H", lambda i, w, fb: GRU(i, w),
             lambda i, w: gru_layer_parameters(i, w), forget_gate=False))
register(Arm("cerebral-gru", "Cerebral GRU (mean of two GRU paths' updates), hidden H, init distinct",
             lambda i, w, fb: CerebralGRU(i, w, init="distinct"),
             lambda i, w: 2 * gru_layer_parameters(i, w), forget_gate=False))


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
