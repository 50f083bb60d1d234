"""The Cerebral family's layers against the independent float64 oracle (tests/family_oracle.py).

Every kind (CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU) x K in {1, 2, 3} x a covering set of forms
(layers 1/2, bidirectional, batch_first, unbatched, packed sorted/unsorted, with/without initial state, with/
without bias, proj_size for the LSTM kind), through ``backend="auto"``, ``"reference"`` and every named backend
of ``available_backends(CLASSES[kind])``: outputs, final states and every gradient (input, initial states, every
parameter), the oracle differentiated by autograd. A named backend may refuse a case (ValueError "cannot run
this input"): that case is skipped with the backend's reason (under CEREBRAL_RNN_REQUIRE_NATIVE=1 it fails where
the backend's documentation says it computes the case: tests/helpers.py).
"""

from __future__ import annotations

import pytest
import torch
from family_oracle import (
    F64,
    HAS_CELL,
    layout_grads,
    leaves,
    load_into,
    random_layers,
    requires_grad_,
    run_sequence,
)
from helpers import run_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from cerebral_rnn import CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM, available_backends

CLASSES = {"lstm": CerebralLSTM, "peephole": CerebralPeepholeLSTM, "gru": CerebralGRU}
T, B, I, H, P = 4, 3, 2, 3, 2
LENGTHS = {"packed_sorted": [4, 2, 1], "packed_unsorted": [2, 4, 1]}
TOL = 1e-10

# A covering set of forms: (num_layers, bidirectional, mode, with_state, bias, proj_size). Every value of
# every axis appears, with dense and packed input both in 1 and 2 layers, 1 and 2 directions.
FORMS = [
    (1, False, "batched", True, True, 0),
    (2, True, "packed_unsorted", True, True, 0),
    (2, False, "batch_first", False, False, 0),
    (1, True, "unbatched", True, False, 0),
    (2, True, "packed_sorted", False, True, 0),
    (2, True, "batched", True, True, 0),
    (1, False, "packed_unsorted", True, False, 0),
]
PROJ_FORMS = [
    (1, False, "batched", True, True, P),
    (2, True, "packed_unsorted", True, True, P),
    (2, True, "batch_first", False, False, P),
    (1, True, "unbatched", True, True, P),
]


def form_id(form):
    L, bi, mode, st, bias, proj = form
    return f"L{L}-{'bi' if bi else 'uni'}-{mode}-{'state' if st else 'nostate'}-{'bias' if bias else 'nobias'}" + (
        f"-proj{proj}" if proj else "")


def cases():
    for kind, cls in CLASSES.items():
        for K in (1, 2, 3):
            for form in FORMS + (PROJ_FORMS if kind == "lstm" else []):
                for backend in dict.fromkeys(["auto", "reference", *available_backends(cls)]):
                    yield pytest.param(kind, K, form, backend, id=f"{kind}-K{K}-{form_id(form)}-{backend}")


class Case:
    """One configuration: the oracle's parameters, the module holding them, inputs and states."""

    def __init__(self, kind, K, form, backend, gen, dtype=F64):
        L, bi, mode, with_state, bias, proj = form
        self.kind, self.K, self.mode, self.proj = kind, K, mode, proj
        D = 2 if bi else 1
        self.O = proj or H
        self.layers = random_layers(kind, K, I, H, L, D, gen, bias=bias, proj_size=proj)
        kw = {"proj_size": proj} if proj else {}
        self.m = CLASSES[kind](I, H, L, bias=bias, bidirectional=bi, batch_first=mode == "batch_first",
                               num_paths=K, backend=backend, dtype=dtype, **kw)
        load_into(self.m, kind, self.layers, H, gen)
        self.lengths = LENGTHS.get(mode)
        self.x = torch.randn(T, B, I, generator=gen, dtype=F64)
        self.h0 = torch.randn(L * D, B, self.O, generator=gen, dtype=F64) if with_state else None
        self.c0 = torch.randn(L * D, B, K * H, generator=gen, dtype=F64) if with_state and HAS_CELL[kind] else None
        self.dtype = dtype

    # -- the oracle ---------------------------------------------------------------------------------------

    def expected(self, x=None, h0=None, c0=None):
        L, D = self.m.num_layers, self.m.num_directions
        x = self.x if x is None else x
        h0 = (self.h0 if self.h0 is not None else torch.zeros(L * D, B, self.O, dtype=F64)) if h0 is None else h0
        if HAS_CELL[self.kind] and c0 is None:
            c0 = self.c0 if self.c0 is not None else torch.zeros(L * D, B, self.K * H, dtype=F64)
        y, h_n, c_n = run_sequence(self.kind, x, self.layers, h0, c0, self.lengths)
        if self.mode == "unbatched":  # the oracle ran sequence 0 alone
            return y[:, 0], h_n[:, 0], (c_n[:, 0] if c_n is not None else None)
        return y, h_n, c_n

    # -- the module -----------------------------------------------------------------------------------------

    def inputs(self, x, h0, c0):
        """The module's input and hx built from the oracle's (T, B, I) tensors (differentiably)."""
        x, h0, c0 = (t.to(self.dtype) if t is not None else None for t in (x, h0, c0))
        if self.mode == "unbatched":
            x, h0, c0 = x[:, 0], (h0[:, 0] if h0 is not None else None), (c0[:, 0] if c0 is not None else None)
        elif self.mode == "batch_first":
            x = x.transpose(0, 1)
        elif self.lengths is not None:
            x = pack_padded_sequence(x, self.lengths, enforce_sorted=self.mode == "packed_sorted")
        if h0 is None:
            return (x,)
        return (x, (h0, c0) if HAS_CELL[self.kind] else h0)

    def result(self, out, states):
        """(y as (T, B, D*O) or (T, D*O) unbatched, h_n, c_n) from the module's outputs."""
        if isinstance(out, PackedSequence):
            y, lengths = pad_packed_sequence(out, total_length=T)
            assert lengths.tolist() == self.lengths
        elif self.mode == "batch_first":
            y = out.transpose(0, 1)
        else:
            y = out
        if HAS_CELL[self.kind]:
            assert isinstance(states, tuple) and len(states) == 2
            return y, states[0], states[1]
        assert isinstance(states, torch.Tensor)  # nn.GRU's contract: h_n alone
        return y, states, None

    def check_shapes(self, y, h_n, c_n):
        L, D = self.m.num_layers, self.m.num_directions
        batch = () if self.mode == "unbatched" else (B,)
        assert y.shape == (T, *batch, D * self.O)
        assert h_n.shape == (L * D, *batch, self.O)
        if HAS_CELL[self.kind]:
            assert c_n.shape == (L * D, *batch, self.K * H)


def assert_close(a, b, tol, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=0, msg=lambda s: f"{what}: {s}")


@pytest.mark.parametrize("kind,K,form,backend", list(cases()))
def test_outputs_states_and_gradients_match_oracle(kind, K, form, backend, gen):
    c = Case(kind, K, form, backend, gen)
    with_state = c.h0 is not None
    # the oracle, differentiated by autograd
    x = c.x.clone().requires_grad_()
    h0 = c.h0.clone().requires_grad_() if with_state else None
    c0 = c.c0.clone().requires_grad_() if c.c0 is not None else None
    requires_grad_(c.layers)
    y_ref, h_ref, c_ref = c.expected(x, h0, c0)
    # the module, from leaves of its own
    xm = c.x.clone().requires_grad_()
    h0m = c.h0.clone().requires_grad_() if with_state else None
    c0m = c.c0.clone().requires_grad_() if c.c0 is not None else None
    out, states = run_or_skip(c.m, *c.inputs(xm, h0m, c0m))
    y, h_n, c_n = c.result(out, states)
    c.check_shapes(y, h_n, c_n)
    assert_close(y, y_ref, TOL, "output")
    assert_close(h_n, h_ref, TOL, "h_n")
    if HAS_CELL[kind]:
        assert_close(c_n, c_ref, TOL, "c_n")

    # one random weighting of every result; gradients of its sum
    g = torch.Generator().manual_seed(5)
    results_ref = [y_ref, h_ref] + ([c_ref] if HAS_CELL[kind] else [])
    weights = [torch.randn(t.shape, generator=g, dtype=F64) for t in results_ref]
    if c.lengths is not None:  # the padding of a packed output does not exist: give it no weight
        for b, n in enumerate(c.lengths):
            weights[0][n:, b] = 0
    loss_ref = sum((t * w).sum() for t, w in zip(results_ref, weights))
    loss = sum((t * w).sum() for t, w in zip([y, h_n] + ([c_n] if HAS_CELL[kind] else []), weights))
    state_leaves_ref = [t for t in (h0, c0) if t is not None]
    state_leaves = [t for t in (h0m, c0m) if t is not None]
    grads_ref = torch.autograd.grad(loss_ref, [x, *state_leaves_ref, *leaves(c.layers)])
    names = [n for n, _ in c.m.named_parameters()]
    grads = torch.autograd.grad(loss, [xm, *state_leaves, *c.m.parameters()])
    n_in = 1 + len(state_leaves)
    if c.mode == "unbatched":  # only sequence 0 ran: the oracle's other rows get no gradient
        assert_close(grads[0][:, 1:], torch.zeros_like(grads[0][:, 1:]), 0, "d input (unused rows)")
    for what, a, b in zip(["d input", "d h_0", "d c_0"], grads[:n_in], grads_ref[:n_in]):
        assert_close(a, b, TOL, what)
    expected = layout_grads(kind, c.layers, grads_ref[n_in:], H)
    assert set(expected) == set(names)
    for name, gm in zip(names, grads[n_in:]):
        assert_close(gm, expected[name], TOL, f"d {name}")


# A smaller grid without autograd: the inference paths (the "native" backend runs only here).
INFER_FORMS = [FORMS[0], FORMS[1], FORMS[3], FORMS[5], PROJ_FORMS[1]]


def infer_cases():
    """Float64 everywhere; float32 (to 2e-5) for the backends with kernels of their own (native's vectorised
    exp...) and "auto"."""
    for kind, cls in CLASSES.items():
        for K in (1, 2, 3):
            for form in INFER_FORMS:
                if form[5] and kind != "lstm":
                    continue
                for backend in dict.fromkeys(["auto", "reference", *available_backends(cls)]):
                    for dtype, tol, name in ((F64, TOL, "f64"), (torch.float32, 2e-5, "f32")):
                        if dtype == torch.float32 and backend == "reference":
                            continue
                        yield pytest.param(kind, K, form, backend, dtype, tol,
                                           id=f"{kind}-K{K}-{form_id(form)}-{backend}-{name}")


@pytest.mark.parametrize("kind,K,form,backend,dtype,tol", list(infer_cases()))
def test_inference_matches_oracle(kind, K, form, backend, dtype, tol, gen):
    c = Case(kind, K, form, backend, gen, dtype=dtype)
    y_ref, h_ref, c_ref = c.expected()
    with torch.no_grad():
        out, states = run_or_skip(c.m, *c.inputs(c.x, c.h0, c.c0))
    y, h_n, c_n = c.result(out, states)
    c.check_shapes(y, h_n, c_n)
    assert y.dtype == dtype and h_n.dtype == dtype
    assert_close(y, y_ref, tol, "output")
    assert_close(h_n, h_ref, tol, "h_n")
    if HAS_CELL[kind]:
        assert_close(c_n, c_ref, tol, "c_n")


# ---------------------------------------------------------------------------------------------------------
# The documented state contract
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "peephole"])
@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("mode", ["batched", "unbatched", "packed_unsorted"])
def test_c0_of_h_features_starts_every_path_from_it(kind, K, mode, gen):
    """"A c_0 with H features starts every path from it": the oracle run from [c_0, ..., c_0] (K times)."""
    c = Case(kind, K, (2, True, mode, True, True, 0), "auto", gen)
    c0_one = torch.randn(4, B, H, generator=gen, dtype=F64)
    y_ref, h_ref, c_ref = c.expected(c0=c0_one.repeat(1, 1, K))
    out, (h_n, c_n) = c.m(*c.inputs(c.x, c.h0, c0_one))
    y, h_n, c_n = c.result(out, (h_n, c_n))
    assert_close(y, y_ref, TOL, "output")
    assert_close(h_n, h_ref, TOL, "h_n")
    assert_close(c_n, c_ref, TOL, "c_n")  # c_n carries every path: K*H features


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("K", [1, 3])
def test_dropout_between_layers_in_training_only(kind, K, gen):
    """dropout=1 zeroes what layer 2 reads in training (oracle: layer 2 reads zeros); in eval() nothing is
    dropped (oracle without dropout). Layer 1's final states are the same either way."""
    c = Case(kind, K, (2, True, "packed_unsorted", True, True, 0), "auto", gen)
    c.m.dropout = 1.0
    zeros = run_sequence(kind, c.x, c.layers, c.h0, c.c0, c.lengths, between=lambda l, y: torch.zeros_like(y))
    plain = c.expected()
    for train, (y_ref, h_ref, c_ref) in ((True, zeros), (False, plain)):
        c.m.train(train)
        y, h_n, c_n = c.result(*c.m(*c.inputs(c.x, c.h0, c.c0)))
        assert_close(y, y_ref, TOL, f"output (train={train})")
        assert_close(h_n, h_ref, TOL, f"h_n (train={train})")
        if HAS_CELL[kind]:
            assert_close(c_n, c_ref, TOL, f"c_n (train={train})")
    assert not torch.allclose(zeros[0], plain[0])  # the two references differ: the test can fail


@pytest.mark.parametrize("kind", list(CLASSES))
def test_hidden_size_one_and_long_sequence(kind, gen):
    """H = 1 (every gate block a single row) and a sequence longer than the others, K = 3."""
    layers = random_layers(kind, 3, 2, 1, 2, 2, gen)
    m = CLASSES[kind](2, 1, 2, bidirectional=True, num_paths=3, dtype=F64)
    load_into(m, kind, layers, 1, gen)
    x = torch.randn(12, 2, 2, generator=gen, dtype=F64)
    h0 = torch.zeros(4, 2, 1, dtype=F64)
    c0 = torch.zeros(4, 2, 3, dtype=F64) if HAS_CELL[kind] else None
    y_ref, h_ref, c_ref = run_sequence(kind, x, layers, h0, c0)
    y, states = m(x)
    assert_close(y, y_ref, TOL, "output")
    if HAS_CELL[kind]:
        assert_close(states[0], h_ref, TOL, "h_n")
        assert_close(states[1], c_ref, TOL, "c_n")
    else:
        assert_close(states, h_ref, TOL, "h_n")


# ---------------------------------------------------------------------------------------------------------
# Random shapes
# ---------------------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, derandomize=True)
@given(kind=st.sampled_from(sorted(CLASSES)), K=st.integers(1, 3), T=st.integers(1, 5), I=st.integers(1, 4),
       H=st.integers(1, 6), L=st.integers(1, 2), bidirectional=st.booleans(), packed=st.booleans(),
       lengths_seed=st.integers(0, 2**16), backend_index=st.integers(0, 4))
def test_random_shapes_match_oracle(kind, K, T, I, H, L, bidirectional, packed, lengths_seed, backend_index):
    """Any sizes (H = 1, T = 1, a gate block narrower or wider than a SIMD lane): values through one backend of
    ``available_backends(CLASSES[kind])`` without autograd (where "native" runs; ``"reference"`` when the named one
    refuses the case, as documented), then values and the input's gradient through ``"auto"``."""
    gen = torch.Generator().manual_seed(lengths_seed)
    B, D = 3, 2 if bidirectional else 1
    names = available_backends(CLASSES[kind])
    backend = names[backend_index % len(names)]
    layers = random_layers(kind, K, I, H, L, D, gen)
    m = CLASSES[kind](I, H, L, bidirectional=bidirectional, num_paths=K, dtype=F64, backend=backend)
    load_into(m, kind, layers, H, gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist() if packed else None
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(L * D, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(L * D, B, K * H, generator=gen, dtype=F64) if HAS_CELL[kind] else None
    hx = (h0, c0) if HAS_CELL[kind] else h0
    xr = x.clone().requires_grad_()
    y_ref, h_ref, c_ref = run_sequence(kind, xr, layers, h0, c0, lengths)

    def check(xm):
        inp = pack_padded_sequence(xm, lengths, enforce_sorted=False) if packed else xm
        out, states = m(inp, hx)
        y = pad_packed_sequence(out, total_length=T)[0] if packed else out
        h_n = states[0] if HAS_CELL[kind] else states
        assert_close(y, y_ref, TOL, f"output ({m.backend})")
        assert_close(h_n, h_ref, TOL, f"h_n ({m.backend})")
        if HAS_CELL[kind]:
            assert_close(states[1], c_ref, TOL, f"c_n ({m.backend})")
        return y, h_n

    with torch.no_grad():
        try:
            check(x)
        except ValueError as e:
            assert backend not in ("auto", "reference") and "cannot run this input" in str(e)
            m.backend = "reference"
            check(x)
    m.backend = "auto"
    xm = x.clone().requires_grad_()
    y, h_n = check(xm)
    w = torch.randn(y_ref.shape, generator=gen, dtype=F64)
    (g_ref,) = torch.autograd.grad((y_ref * w).sum() + h_ref.sum(), [xr])
    (g,) = torch.autograd.grad((y * w).sum() + h_n.sum(), [xm])
    assert_close(g, g_ref, TOL, "d input")
