"""Reference backend: one plain time loop over a kind's path step (:mod:`cerebral_rnn.kinds`), for every kind.

Works for every case (any dtype and device, packed input, both directions, projection), and is the backend
that runs recurrent dropout, zoneout and layer norm (:mod:`cerebral_rnn.regularise`). The input projection
is one GEMM per path over all steps; steps are taken with ``unbind``/``split`` so that autograd stays linear in
T (slicing ``G[t]`` of one tensor makes backward quadratic in T).

Symmetry by construction: every path is computed from its *own* copies of its parameter blocks (fresh,
contiguous, equally aligned buffers), by the same operations on operands of the same shape: its own input
projection, its own recurrent GEMM per step, its own pointwise step. So paths with identical parameters get
bitwise identical values and gradients on any CPU (one GEMM over all paths' rows would round a path's rows
differently depending on where they sit relative to the SIMD width, and identical paths drift apart in
training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kinds import combine, paths_step
from ..layout import DirectionWeights, LayerSpec, split_paths
from ..regularise import StepRegs, layer_norm

State = tuple[Tensor, ...]  # (h,) or (h, c_1, ..., c_K): each path's cell state separately


def _regularised_step(spec: LayerSpec, pw, regs: StepRegs):
    """The step with recurrent dropout, zoneout and layer norm (:mod:`cerebral_rnn.regularise`)."""
    kind, K, H = spec.kind, spec.paths, spec.hidden_size
    ln = regs.ln
    if ln is not None:
        hh_w, hh_b = ln[2].chunk(K), ln[3].chunk(K)
        c_w, c_b = (ln[4].chunk(K), ln[5].chunk(K)) if kind.has_cell else (None, None)

    def step(gx_t: list[Tensor], state: State, t: int) -> State:
        h = state[0]
        b = h.shape[0]
        cells = list(state[1:]) if kind.has_cell else None
        h_in = h * regs.h_mask[:b] if regs.h_mask is not None else h  # dropout where h enters W_hh h
        outs, new_cells = [], []
        for k in range(K):
            if ln is None:
                gh = F.linear(h_in, pw.w_hh[k], pw.b_h[k])
            else:
                gh = layer_norm(F.linear(h_in, pw.w_hh[k]), hh_w[k], hh_b[k])
                if pw.b_h[k] is not None:
                    gh = gh + pw.b_h[k]
            extra = {}
            if ln is not None and kind.has_cell:
                extra["norm_c"] = lambda c, k=k: layer_norm(c, c_w[k], c_b[k])
            out, c = kind.step(gx_t[k], gh, h, cells[k] if cells is not None else None, pw.peephole[k], **extra)
            outs.append(out)
            new_cells.append(c)
        h_new = combine(kind, outs)
        if pw.w_hr is not None:
            h_new = F.linear(h_new, pw.w_hr)
        if regs.zone_h is not None:
            h_new = torch.where(regs.zone_h[t, :b], h, h_new)
        elif regs.p_h and not regs.training:
            h_new = regs.p_h * h + (1 - regs.p_h) * h_new
        if kind.has_cell:
            if regs.zone_c is not None:
                new_cells = [torch.where(regs.zone_c[t, :b, k * H:(k + 1) * H], cells[k], c)
                             for k, c in enumerate(new_cells)]
            elif regs.p_c and not regs.training:
                new_cells = [regs.p_c * cells[k] + (1 - regs.p_c) * c for k, c in enumerate(new_cells)]
            return (h_new, *new_cells)
        return (h_new,)

    return step


def _run_direction(spec: LayerSpec, x: Tensor, batch_sizes: Tensor | None, state0: State, w: DirectionWeights,
                   reverse: bool, regs: StepRegs | None = None) -> tuple[Tensor, State]:
    kind, K = spec.kind, spec.paths
    pw = split_paths(w, spec)
    if regs is not None and regs.ln is not None:  # LN(W_ih x) over each path's gate block, then the bias
        ih_w, ih_b = regs.ln[0].chunk(K), regs.ln[1].chunk(K)
        gx = [layer_norm(F.linear(x, pw.w_ih[k]), ih_w[k], ih_b[k]) for k in range(K)]
        gx = [g if pw.b_x[k] is None else g + pw.b_x[k] for k, g in enumerate(gx)]
    else:
        gx = [F.linear(x, pw.w_ih[k], pw.b_x[k]) for k in range(K)]  # K x (T, B, G H) or packed (N, G H)

    if regs is not None:
        reg_step = _regularised_step(spec, pw, regs)

        def step(gx_t: list[Tensor], state: State, t: int) -> State:
            return reg_step(gx_t, state, t)
    else:
        def step(gx_t: list[Tensor], state: State, t: int) -> State:
            cells = list(state[1:]) if kind.has_cell else None
            h, cells = paths_step(kind, gx_t, state[0], cells, pw.w_hh, pw.b_h, pw.peephole, pw.w_hr)
            return (h, *cells) if kind.has_cell else (h,)

    if batch_sizes is None:
        steps = [g.unbind(0) for g in gx]
        T = len(steps[0])
        order = range(T - 1, -1, -1) if reverse else range(T)
        outs: list[Tensor] = [x.new_empty(0)] * T
        state = state0
        for t in order:
            state = step([s[t] for s in steps], state, t)
            outs[t] = state[0]
        return torch.stack(outs), state

    sizes = batch_sizes.tolist()
    chunks = [g.split(sizes) for g in gx]  # chunk t: (sizes[t], G H), sequences sorted by decreasing length
    outs = [x.new_empty(0)] * len(sizes)
    if not reverse:
        state = state0
        finished: list[State] = []  # states of sequences that ended, last rows first
        for t in range(len(sizes)):
            b = sizes[t]
            if b < state[0].shape[0]:
                finished.append(tuple(s[b:] for s in state))
                state = tuple(s[:b] for s in state)
            state = step([c[t] for c in chunks], state, t)
            outs[t] = state[0]
        finished.append(state)
        final = tuple(torch.cat([part[k] for part in reversed(finished)]) for k in range(len(state0)))
        return torch.cat(outs), final
    state = tuple(s[: sizes[-1]] for s in state0)
    for t in range(len(sizes) - 1, -1, -1):
        b = sizes[t]
        if b > state[0].shape[0]:  # sequences whose last step is t start here, from their initial state
            state = tuple(torch.cat([s, s0[s.shape[0]: b]]) for s, s0 in zip(state, state0))
        state = step([c[t] for c in chunks], state, t)
        outs[t] = state[0]
    return torch.cat(outs), state


def run_layer(spec: LayerSpec, x: Tensor, batch_sizes: Tensor | None, states0: State,
              weights: Sequence[DirectionWeights], regs: Sequence[StepRegs] | None = None) -> tuple[Tensor, State]:
    """One layer, every direction. ``states0``: ``(h_0,)`` or ``(h_0, c_0)``, each ``(D, B, *)`` with ``c_0``
    ``K * H`` wide. ``regs``: per direction, the recurrent dropout, zoneout and layer norm of the step
    (:mod:`cerebral_rnn.regularise`), or None. Returns ``y`` (``(T, B, D * out)`` or packed ``(N, D * out)``)
    and the final states, shaped as ``states0``."""
    H = spec.hidden_size
    ys, finals = [], []
    for d, w in enumerate(weights):
        state = (states0[0][d],)
        if spec.kind.has_cell:
            state += tuple(c.clone(memory_format=torch.contiguous_format) for c in states0[1][d].split(H, dim=-1))
        y, final = _run_direction(spec, x, batch_sizes, state, w, reverse=d == 1,
                                  regs=regs[d] if regs is not None else None)
        ys.append(y)
        finals.append((final[0], torch.cat(final[1:], dim=-1)) if spec.kind.has_cell else final)
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
    return y, tuple(torch.stack([f[k] for f in finals]) for k in range(len(states0)))


class ReferenceBackend:
    """Every kind, every input: the oracle the other backends are tested against."""

    name = "reference"
    kinds = None  # all

    def supports(self, spec, x, batch_sizes, weights, states) -> str | None:
        return None

    def forward_layer(self, spec, x, states, weights, batch_sizes):
        return run_layer(spec, x, batch_sizes, states, weights)


BACKEND = ReferenceBackend()
