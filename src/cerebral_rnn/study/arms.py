"""The arms of the comparison: a registry of recurrent layers, one entry per arm.

An arm is a name, a one-line description and a builder ``build(input_size, width, forget_bias, **regularisers)``
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[[int, int, "float | None"], "nn.Module"]


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison.

    ``build(input_size, width, forget_bias)`` returns the recurrent module (``forget_bias`` None: the module's
    default initialisation). ``parameters(input_size, width)``, when given, is the module's parameter count as
    a formula (tests check it against the built module); when None it is counted by building the module.
    ``output_size(width)``: features of its output and ``h_n`` (default: ``width``). ``match``: the arm whose
    whole-model parameter count this arm's width is chosen to match (None: width = H). ``forget_gate``: False
    for cells without one (a tuned forget-gate bias is then not applied and is recorded as such). ``kind``: the
    kind of recurrent layer the arm trains, a key of :data:`cerebral_rnn.kinds.KINDS` (an arm named after a kind
    trains that kind; the others are configurations of one).
    """

    name: str
    description: str
    build: Builder
    parameters: Callable[[int, int], int] | None = None
    output_size: Callable[[int], int] = lambda width: width
    match: str | None = None
    forget_gate: bool = True
    kind: str = ""

    def count(self, input_size: int, width: int) -> int:
        if self.parameters is not None:
            return self.parameters(input_size, width)
        return _count_by_building(self, input_size, width)


_COUNT_CACHE: dict[tuple[str, int, int], int] = {}


def _count_by_building(arm: Arm, input_size: int, width: int) -> int:
    key = (arm.name, input_size, width)
    if key not in _COUNT_CACHE:
        import torch

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


# -- the registry ------------------------------------------------------------------------------------------------


def _lstm(i: int, w: int, fb: float | None, **reg):
    from cerebral_rnn import LSTM

    return LSTM(i, w, forget_bias=fb, **reg)


def _lstm2(i: int, w: int, fb: float | None, **reg):
    from cerebral_rnn import LSTM

    return LSTM(i, w, num_layers=2, forget_bias=fb, **reg)


def _cerebral(init: str, paths: int = 2):
    def build(i: int, w: int, fb: float | None, **reg):
        from cerebral_rnn import CerebralLSTM

        return CerebralLSTM(i, w, num_paths=paths, init=init, forget_bias=fb, **reg)

    return build


def _peephole(i: int, w: int, fb: float | None, **reg):
    from cerebral_rnn import CerebralPeepholeLSTM

    return CerebralPeepholeLSTM(i, w, init="distinct", forget_bias=fb, **reg)


def _doubled(i: int, w: int, fb: float | None, **reg):
    from .arm_modules import DoubledLSTM

    return DoubledLSTM(i, w, forget_bias=fb, **reg)


def _lstmp(i: int, w: int, fb: float | None, **reg):
    from torch import nn

    from .arm_modules import set_forget_bias_

    if reg:  # torch's nn.LSTM has no regularisers: the library's LSTM (the same function, nn.LSTM's contract)
        from cerebral_rnn import LSTM

        return LSTM(i, 2 * w, proj_size=w, forget_bias=fb, **reg)
    rnn = nn.LSTM(i, 2 * w, proj_size=w)
    if fb is not None:
        set_forget_bias_(rnn, fb, gate_rows=2 * w)
    return rnn


def _gru(i: int, w: int, fb: float | None, **reg):
    from cerebral_rnn import GRU

    return GRU(i, w, **reg)


def _cerebral_gru(i: int, w: int, fb: float | None, **reg):
    from cerebral_rnn import CerebralGRU

    return CerebralGRU(i, w, init="distinct", **reg)


register(Arm("lstm", "single LSTM, hidden H", _lstm, lambda i, w: lstm_layer_parameters(i, w), kind="lstm"))
register(Arm("lstm2", "two-stacked LSTM, hidden H per layer",
             _lstm2,
             lambda i, w: lstm_layer_parameters(i, w) + lstm_layer_parameters(w, w), kind="lstm"))
register(Arm("cerebral", "Cerebral LSTM, hidden H, init distinct",
             _cerebral("distinct"),
             lambda i, w: 2 * lstm_layer_parameters(i, w), kind="cerebral"))
register(Arm("cerebral-identical", "Cerebral LSTM, hidden H, init identical",
             _cerebral("identical"),
             lambda i, w: 2 * lstm_layer_parameters(i, w), kind="cerebral"))
register(Arm("lstm-matched", "single LSTM whose width gives the parameter count closest to cerebral's", _lstm,
             lambda i, w: lstm_layer_parameters(i, w), match="cerebral", kind="lstm"))
register(Arm("lstm-x2", "single LSTM with h = 2·o·tanh(c) as output and recurrent input (cerebral-identical's "
             "function class), hidden H", _doubled,
             lambda i, w: lstm_layer_parameters(i, w), kind="lstm"))
register(Arm("lstmp", "torch.nn.LSTM(2H, proj_size=H): learned projection, contains the Cerebral LSTM", _lstmp,
             lambda i, w: lstm_layer_parameters(i, 2 * w, proj=w), kind="lstm"))
# what `reproduce` trains unless --models says otherwise: the paper's arms and the control arms
DEFAULT_ARMS: tuple[str, ...] = tuple(ARMS)

# the family (the paper's future work): arms for --models, not in the default list
register(Arm("cerebral-k3", "Cerebral LSTM with three paths, hidden H, init distinct",
             _cerebral("distinct", 3),
             lambda i, w: 3 * lstm_layer_parameters(i, w), kind="cerebral"))
register(Arm("cerebral-peephole", "Cerebral peephole LSTM (two peephole LSTM paths), hidden H, init distinct",
             _peephole,
             lambda i, w: 2 * (lstm_layer_parameters(i, w) + 3 * w), kind="cerebral-peephole"))
register(Arm("gru", "single GRU, hidden H", _gru,
             lambda i, w: gru_layer_parameters(i, w), forget_gate=False, kind="gru"))
register(Arm("cerebral-gru", "Cerebral GRU (mean of two GRU paths' updates), hidden H, init distinct",
             _cerebral_gru,
             lambda i, w: 2 * gru_layer_parameters(i, w), forget_gate=False, kind="cerebral-gru"))


_LAZY = ("DoubledLSTM", "set_forget_bias_", "final_hidden", "path_difference")


def __getattr__(name: str):
    """The torch side (:mod:`.arm_modules`), imported on first use."""
    if name in _LAZY:
        from . import arm_modules

        return getattr(arm_modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
