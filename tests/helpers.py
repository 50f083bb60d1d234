"""Small helpers shared by the tests (no assertions here): the kind -> class maps, random states, the nn.LSTM(2H)
equivalent of a CerebralLSTM built by hand, and what a test does when a named backend refuses a case or the
compiled ``native`` backend cannot be built.

``CEREBRAL_RNN_REQUIRE_NATIVE=1`` (set by ``.ci/run``): the ``native`` extension must build here, so a test that
would be skipped because it cannot fails instead; and a named backend refusing a case that its own documentation
says it computes fails instead of being skipped. Refusals its documentation lists (e.g. native and packed input)
are still skipped, with the backend's reason.
"""

from __future__ import annotations

import os
import re
from typing import NoReturn

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from cerebral_rnn import (
    CerebralGRU,
    CerebralGRUCell,
    CerebralLSTM,
    CerebralLSTMCell,
    CerebralPeepholeLSTM,
    CerebralPeepholeLSTMCell,
)

# the Cerebral layer and one-step cell of each kind
LAYERS = {"lstm": CerebralLSTM, "peephole": CerebralPeepholeLSTM, "gru": CerebralGRU}
CELLS = {"lstm": CerebralLSTMCell, "peephole": CerebralPeepholeLSTMCell, "gru": CerebralGRUCell}

REQUIRE_NATIVE = os.environ.get("CEREBRAL_RNN_REQUIRE_NATIVE", "") == "1"
DENSE_DTYPES = (torch.float32, torch.float64)
_PARAM = re.compile(r"(?P<base>\w+?)_l(?P<layer>\d+)(?P<reverse>_reverse)?")


def random_states(m, batch: int, seed: int = 2):
    """A random (h_0, c_0) for CerebralLSTM ``m``: h_0 (L*D, B, H), c_0 (L*D, B, 2H), in m's dtype."""
    g = torch.Generator().manual_seed(seed)
    LD, H = m.num_layers * m.num_directions, m.hidden_size
    dtype = m.weight_ih_l0.dtype
    return (torch.randn(LD, batch, H, generator=g, dtype=dtype),
            torch.randn(LD, batch, 2 * H, generator=g, dtype=dtype))


def hand_lstm2h_state_dict(m: CerebralLSTM) -> dict[str, torch.Tensor]:
    """The state_dict of the ``torch.nn.LSTM(input_size, 2H)`` equivalent to two-path CerebralLSTM ``m`` (no
    proj_size), built element by element from the description in docs/notes.md, without the library's
    converters: gate rows interleaved per gate ``[i_U; i_L | f_U; f_L | g_U; g_L | o_U; o_L]``, recurrent weight
    ``[W_hh, W_hh]``, and for layers above the first each direction's H input columns repeated (the layer below
    emits ``[y_U, y_L]``). Run it from ``([h_0, 0], c_0)`` and sum each direction's two H-wide output halves."""
    H, D = m.hidden_size, m.num_directions
    out = {}
    for layer in range(m.num_layers):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx).detach(), getattr(m, "weight_hh" + sfx).detach()
            cols_in = w_ih.shape[1] * (2 if layer else 1)
            W_ih = torch.empty(8 * H, cols_in, dtype=w_ih.dtype)
            W_hh = torch.empty(8 * H, 2 * H, dtype=w_ih.dtype)
            biases = {n: getattr(m, n + sfx).detach() for n in ("bias_ih", "bias_hh")} if m.bias else {}
            B2 = {n: torch.empty(8 * H, dtype=w_ih.dtype) for n in biases}
            for gate in range(4):  # i, f, g, o
                for path in range(2):  # upper, lower
                    for j in range(H):
                        src = path * 4 * H + gate * H + j  # Cerebral row
                        dst = gate * 2 * H + path * H + j  # LSTM(2H) row
                        W_hh[dst, :H] = w_hh[src]
                        W_hh[dst, H:] = w_hh[src]
                        if layer == 0:
                            W_ih[dst] = w_ih[src]
                        else:
                            for dd in range(D):
                                block = w_ih[src, dd * H:(dd + 1) * H]
                                W_ih[dst, dd * 2 * H: dd * 2 * H + H] = block
                                W_ih[dst, dd * 2 * H + H: (dd + 1) * 2 * H] = block
                        for n in biases:
                            B2[n][dst] = biases[n][src]
            out["weight_ih" + sfx] = W_ih
            out["weight_hh" + sfx] = W_hh
            for n in biases:
                out[n + sfx] = B2[n]
    return out


def skip_unless_native() -> None:
    """Skip the calling test where the ``native`` C++ extension cannot be built here, with the build error as the
    reason; under ``CEREBRAL_RNN_REQUIRE_NATIVE=1`` fail with it instead."""
    __tracebackhide__ = True  # pytest reports the skip or failure at the calling test's line
    from cerebral_rnn.backends import native

    if native.available():
        return
    reason = f"the native backend is unavailable here: {native.unavailable_reason()}"
    if REQUIRE_NATIVE:
        pytest.fail(f"{reason} (CEREBRAL_RNN_REQUIRE_NATIVE=1: it must build)", pytrace=False)
    pytest.skip(reason)


def _paths_identical(m) -> bool:
    """Whether some direction of some layer of ``m`` has every path's rows equal to the first path's, in every
    parameter but the projection (``init="identical"`` before training): compared here block by block."""
    K = m.num_paths
    if K == 1:
        return False
    groups: dict[tuple[str, bool], list[torch.Tensor]] = {}
    for name, p in m.named_parameters():
        match = _PARAM.fullmatch(name)
        if match is not None and match["base"] != "weight_hr":
            groups.setdefault((match["layer"], bool(match["reverse"])), []).append(p.detach())
    return any(all(torch.equal(block, p.chunk(K, dim=0)[0]) for p in params for block in p.chunk(K, dim=0)[1:])
               for params in groups.values())


def documented_refusals(backend: str, m, inp, hx=None) -> list[str]:
    """The cases that ``backend``'s own documentation says it does not compute and that the eager call
    ``m(inp, hx)`` of Cerebral layer ``m`` falls in, worked out from the call (never from the backend's answer).

    From the module docstrings of ``cerebral_rnn/backends/native.py`` and ``lstm2h.py``:

    * ``native``: LSTM (without ``proj_size``), peephole LSTM and GRU layers of any number of paths (the
      one-path LSTM and GRU included), identical paths included; CPU, float32 and float64, dense input. An
      empty batch and parameters or states in another dtype than the input are not documented either way:
      counted as refusable.
    * ``lstm2h``: LSTM layers of any number of paths, ``proj_size`` and packed input included, on the CPU and
      CUDA; not identical paths, and not a dtype torch's LSTM kernel cannot run on this machine (only float32
      and float64 are taken as surely runnable).
    * ``native`` runs every regulariser; ``lstm2h`` not a layer with recurrent dropout, zoneout or layer norm on
      (the module docstring of ``cerebral_rnn/regularise.py``; weight dropout runs everywhere).

    A backend not listed here has no documented support recorded: every refusal of it counts as documented.
    """
    packed = isinstance(inp, PackedSequence)
    x = inp.data if packed else inp
    states = [] if hx is None else list(hx) if isinstance(hx, (tuple, list)) else [hx]
    states = [s for s in states if s is not None]
    if packed:
        batch = int(inp.batch_sizes[0]) if len(inp.batch_sizes) else 0
    else:
        batch = 1 if x.dim() == 2 else x.shape[0 if m.batch_first else 1]
    kind, proj = m.kind_name, m.proj_size
    mixed = any(t.dtype != x.dtype or t.device != x.device for t in [*m.parameters(), *states])
    dense_cpu = [
        ("packed input", packed),
        (f"device {x.device}", x.device.type != "cpu"),
        (f"dtype {x.dtype}", x.dtype not in DENSE_DTYPES),
        ("parameters or states not in the input's dtype and device", mixed),
    ]
    if backend == "native":
        cases = [(f"kind {kind!r}", kind not in ("lstm", "gru", "cerebral", "cerebral-peephole", "cerebral-gru")),
                 ("proj_size", bool(proj)),
                 *dense_cpu, ("an empty batch", batch == 0)]
    elif backend == "lstm2h":
        cases = [(f"kind {kind!r}", kind != "cerebral"),
                 (f"device {x.device}", x.device.type not in ("cpu", "cuda")),
                 (f"dtype {x.dtype}", x.dtype not in DENSE_DTYPES), ("identical paths", _paths_identical(m))]
    else:
        cases = [(f"no documented support of backend {backend!r} recorded in tests/helpers.py", True)]
    regs = getattr(m, "regularisers", None)
    if regs is not None and backend != "native":  # native computes every regulariser
        in_step = bool(regs.recurrent_dropout or regs.zoneout_h or regs.zoneout_c or regs.layer_norm)
        cases.append(("recurrent dropout, zoneout or layer norm", in_step))
    return [what for what, applies in cases if applies]


def skip_refusal(backend: str, error: Exception, m, inp, hx=None) -> NoReturn:
    """Skip the test on named ``backend``'s refusal ``error`` of the call ``m(inp, hx)``, with its reason;
    under ``CEREBRAL_RNN_REQUIRE_NATIVE=1`` fail instead when the call is in no case the backend's documentation
    lets it refuse (:func:`documented_refusals`): e.g. native refusing a dense float64 LSTM because it did not
    build."""
    __tracebackhide__ = True
    documented = documented_refusals(backend, m, inp, hx)
    if not documented:
        if REQUIRE_NATIVE:
            pytest.fail(f"backend {backend!r} refuses a case its documentation says it computes "
                        f"(CEREBRAL_RNN_REQUIRE_NATIVE=1): {error}", pytrace=False)
        pytest.skip(f"backend {backend!r} refuses a case its documentation says it computes: {error}")
    pytest.skip(f"backend {backend!r} refuses this case ({', '.join(documented)}: documented): {error}")


def run_or_skip(m, *args):
    """``m(*args)`` (``args``: the input, then optionally the initial state). A refusal by ``m``'s explicitly
    named backend (ValueError "cannot run this input") goes to :func:`skip_refusal`; ``"auto"`` and
    ``"reference"`` never refuse, so any error of theirs, and any other error, is raised."""
    __tracebackhide__ = True
    try:
        return m(*args)
    except ValueError as e:
        if m.backend in ("auto", "reference") or "cannot run this input" not in str(e):
            raise
        skip_refusal(m.backend, e, m, *args)
