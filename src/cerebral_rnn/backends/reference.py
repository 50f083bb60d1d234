"""Reference backend: a plain time loop over the step functions of :mod:`cerebral_rnn.cells`.

Works for every case (any dtype and device, packed input, both directions) and serves RNN, LSTM and Cerebral
layers alike through a pluggable pointwise function. The input projection is one GEMM over all steps; steps
are taken with ``unbind``/``split`` so that autograd stays linear in T (slicing ``G[t]`` of one tensor makes
backward quadratic, see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import cerebral_lstm_pointwise, lstm_pointwise

State = tuple[Tensor, ...]
# pointwise(gates, state) -> new state; gates = W_ih x + b_ih + W_hh h + b_hh; state[0] is h.
Pointwise = Callable[[Tensor, State], State]


def rnn_pointwise(nonlinearity: str) -> Pointwise:
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    return lambda gates, state: (act(gates),)


def lstm_state_pointwise(gates: Tensor, state: State) -> State:
    return lstm_pointwise(gates, state[1])


def cerebral_state_pointwise(gates: Tensor, state: State) -> State:
    return cerebral_lstm_pointwise(gates, state[1])


def _path_linear(x: Tensor, w: Tensor, b: Tensor | None, paths: int) -> Tensor:
    """``W x + b``, computed one path (block of ``rows / paths`` rows) at a time and concatenated.

    Used for the input projection, which also carries both biases, so that each Cerebral path's bias gradient
    comes from the same reduction kernel on an operand of the same shape. One linear over all 8H rows makes
    the bias gradient a column reduction whose rounding depends on the column's position (when 4H is not a
    multiple of the vector width, e.g. H=5 or 13): identical paths then got gradients 1 ulp apart at the first
    step and drifted to O(1) differences within a few hundred Adam steps (init.py, DESIGN.md "Symmetry").
    """
    if paths == 1:
        return F.linear(x, w, b)
    bs = b.chunk(paths) if b is not None else (None,) * paths
    return torch.cat([F.linear(x, wp, bp) for wp, bp in zip(w.chunk(paths), bs)], dim=-1)


def _run_direction(x: Tensor, batch_sizes: Tensor | None, state0: State, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Tensor | None, b_hh: Tensor | None, pointwise: Pointwise,
                   reverse: bool, paths: int = 1) -> tuple[Tensor, State]:
    bias = b_ih + b_hh if b_ih is not None else None
    gx = _path_linear(x, w_ih, bias, paths)  # (T, B, G) or packed (N, G): input projection and both biases

    def step(g: Tensor, state: State) -> State:
        return pointwise(g + F.linear(state[0], w_hh), state)  # one bias-free GEMM per step

    if batch_sizes is None:
        steps = gx.unbind(0)
        order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
        outs: list[Tensor] = [x.new_empty(0)] * len(steps)
        state = state0
        for t in order:
            state = step(steps[t], state)
            outs[t] = state[0]
        return torch.stack(outs), state

    sizes = batch_sizes.tolist()
    chunks = gx.split(sizes)  # chunk t: (sizes[t], G), sequences sorted by decreasing length
    outs = [x.new_empty(0)] * len(sizes)
    if not reverse:
        state = state0
        finished: list[State] = []  # states of sequences that ended, last rows first
        for t, g in enumerate(chunks):
            b = sizes[t]
            if b < state[0].shape[0]:
                finished.append(tuple(s[b:] for s in state))
                state = tuple(s[:b] for s in state)
            state = step(g, state)
            outs[t] = state[0]
        finished.append(state)
        final = tuple(torch.cat([part[k] for part in reversed(finished)]) for k in range(len(state0)))
        return torch.cat(outs), final
    state = tuple(s[: sizes[-1]] for s in state0)
    for t in range(len(sizes) - 1, -1, -1):
        b = sizes[t]
        if b > state[0].shape[0]:  # sequences whose last step is t start here, from their initial state
            state = tuple(torch.cat([s, s0[s.shape[0]: b]]) for s, s0 in zip(state, state0))
        state = step(chunks[t], state)
        outs[t] = state[0]
    return torch.cat(outs), state


def run_layer(x: Tensor, batch_sizes: Tensor | None, states0: State,
              weights: Sequence[tuple[Tensor, Tensor, Tensor | None, Tensor | None]],
              pointwise: Pointwise, paths: int = 1) -> tuple[Tensor, State]:
    """One layer, every direction. ``states0``: tensors of shape (D, B, *). Returns y and (D, B, *) states.

    ``paths``: the number of independent blocks of gate rows (2 for the Cerebral LSTM), see :func:`_path_linear`.
    """
    ys, finals = [], []
    for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        y, final = _run_direction(x, batch_sizes, tuple(s[d] for s in states0), w_ih, w_hh, b_ih, b_hh,
                                  pointwise, reverse=d == 1, paths=paths)
        ys.append(y)
        finals.append(final)
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
    return y, tuple(torch.stack([f[k] for f in finals]) for k in range(len(states0)))


class ReferenceBackend:
    """The Cerebral LSTM reference: supports every input; the oracle the fused backends are tested against."""

    name = "reference"

    def supports(self, x, batch_sizes, weights, training) -> str | None:
        return None

    def forward_layer(self, x, h0, c0, weights, batch_sizes):
        y, (h_n, c_n) = run_layer(x, batch_sizes, (h0, c0), weights, cerebral_state_pointwise, paths=2)
        return y, h_n, c_n


BACKEND = ReferenceBackend()
