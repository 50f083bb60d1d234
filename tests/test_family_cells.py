"""The family's one-step cells against the oracle's step, and gradcheck of every kind's cell and layer.

Cells: ``CerebralLSTMCell``, ``CerebralPeepholeLSTMCell``, ``CerebralGRUCell`` with K in {1, 2, 3}: values and
every gradient against tests/family_oracle.py's step functions (float64, differentiated by autograd), batched
and unbatched, with and without a state, a cell state of H features, without bias.

gradcheck: every kind's cell and layer, float64, a dense layer and a packed bidirectional 2-layer one, through
``"auto"`` and every named backend of ``available_backends(LAYERS[kind])`` that runs the case (the hand-written
backwards included).
"""

from __future__ import annotations

import pytest
import torch
from family_oracle import (
    F64,
    HAS_CELL,
    STEPS,
    grads_to_layout,
    leaves,
    load_into,
    random_direction,
    requires_grad_,
)
from helpers import CELLS, LAYERS, skip_refusal
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import (
    CerebralLSTMCell,
    available_backends,
)

I, H, B = 3, 4, 5
TOL = 1e-12


def assert_close(a, b, tol, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=0, msg=lambda s: f"{what}: {s}")


def test_cell_parameter_tables():
    """The documented shapes: weight_ih (G K H, I), weight_hh (G K H, H), biases (G K H,), peephole (3 K H,)."""
    for kind, cls in CELLS.items():
        G = 3 if kind == "gru" else 4
        for K in (1, 2, 3):
            shapes = {n: tuple(p.shape) for n, p in cls(I, H, num_paths=K).named_parameters()}
            expected = {"weight_ih": (G * K * H, I), "weight_hh": (G * K * H, H), "bias_ih": (G * K * H,),
                        "bias_hh": (G * K * H,)}
            if kind == "peephole":
                expected["peephole"] = (3 * K * H,)
            assert shapes == expected, (kind, K)
            no_bias = [n for n, _ in cls(I, H, bias=False, num_paths=K).named_parameters()]
            assert no_bias == ["weight_ih", "weight_hh"] + (["peephole"] if kind == "peephole" else [])
    assert CerebralLSTMCell(I, H).num_paths == 2  # the paper's cell by default


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_values_and_gradients_match_oracle_step(kind, K, bias, batched, gen):
    direction = requires_grad_([[random_direction(kind, K, I, H, gen, bias=bias)]])[0][0]
    cell = CELLS[kind](I, H, bias=bias, num_paths=K, dtype=F64)
    load_into(cell, kind, direction, H, gen)
    x = torch.randn(B, I, generator=gen, dtype=F64, requires_grad=True)
    h = torch.randn(B, H, generator=gen, dtype=F64, requires_grad=True)
    c = torch.randn(B, K * H, generator=gen, dtype=F64, requires_grad=True)
    cells = list(c.chunk(K, dim=-1)) if HAS_CELL[kind] else None
    h_ref, cells_ref = STEPS[kind](x, h, cells, direction)
    results_ref = [h_ref] + ([torch.cat(cells_ref, dim=-1)] if HAS_CELL[kind] else [])

    xm, hm, cm = (t.detach().clone().requires_grad_() for t in (x, h, c))
    rows = slice(None) if batched else 0
    hx = (hm[rows], cm[rows]) if HAS_CELL[kind] else hm[rows]
    out = cell(xm[rows], hx)
    results = list(out) if HAS_CELL[kind] else [out]
    if HAS_CELL[kind]:
        assert isinstance(out, tuple) and len(out) == 2
    else:
        assert isinstance(out, torch.Tensor)
    for what, a, b in zip(("h'", "c'"), results, results_ref):
        assert_close(a, b[rows], TOL, what)

    w = [torch.randn(t.shape, generator=gen, dtype=F64) for t in results_ref]
    g_ref = torch.autograd.grad(sum((t[rows] * wt[rows]).sum() for t, wt in zip(results_ref, w)),
                                [x, h, *([c] if HAS_CELL[kind] else []), *leaves([[direction]])])
    names = [n for n, _ in cell.named_parameters()]
    g = torch.autograd.grad(sum((t * wt[rows]).sum() for t, wt in zip(results, w)),
                            [xm, hm, *([cm] if HAS_CELL[kind] else []), *cell.parameters()])
    n = 3 if HAS_CELL[kind] else 2
    for what, a, b in zip(("d x", "d h", "d c"), g[:n], g_ref[:n]):
        assert_close(a, b, TOL, what)
    it = iter(g_ref[n:])
    grads = {"paths": [{k: next(it) for k in sorted(p)} for p in direction["paths"]], "W_hr": None}
    expected = grads_to_layout(kind, grads, H)
    assert set(expected) == set(names)
    for name, a in zip(names, g[n:]):
        assert_close(a, expected[name], TOL, f"d {name}")


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("K", [1, 3])
def test_cell_default_state_and_one_cell_state_for_every_path(kind, K, gen):
    """No state: zeros. A cell state of H features starts every path from it (LSTM kinds)."""
    direction = random_direction(kind, K, I, H, gen)
    cell = CELLS[kind](I, H, num_paths=K, dtype=F64)
    load_into(cell, kind, direction, H, gen)
    x = torch.randn(B, I, generator=gen, dtype=F64)
    zeros = [torch.zeros(B, H, dtype=F64) for _ in range(K)] if HAS_CELL[kind] else None
    h_ref, c_ref = STEPS[kind](x, torch.zeros(B, H, dtype=F64), zeros, direction)
    out = cell(x)
    assert_close(out[0] if HAS_CELL[kind] else out, h_ref, TOL, "h' from no state")
    if HAS_CELL[kind]:
        assert_close(out[1], torch.cat(c_ref, -1), TOL, "c' from no state")
        h = torch.randn(B, H, generator=gen, dtype=F64)
        c_one = torch.randn(B, H, generator=gen, dtype=F64)
        h_ref, c_ref = STEPS[kind](x, h, [c_one] * K, direction)
        h1, c1 = cell(x, (h, c_one))
        assert c1.shape == (B, K * H)
        assert_close(h1, h_ref, TOL, "h' from one cell state")
        assert_close(c1, torch.cat(c_ref, -1), TOL, "c' from one cell state")
        h1u, c1u = cell(x[0], (h[0], c_one[0]))  # unbatched, H features
        assert_close(h1u, h_ref[0], TOL, "unbatched h'")
        assert_close(c1u, torch.cat(c_ref, -1)[0], TOL, "unbatched c'")


# ---------------------------------------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("K", [1, 3])
def test_cell_gradcheck(kind, K):
    cell = CELLS[kind](2, 2, num_paths=K, dtype=F64)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(3, 2, dtype=F64, requires_grad=True)
    h = torch.randn(3, 2, dtype=F64, requires_grad=True)
    c = torch.randn(3, 2 * K, dtype=F64, requires_grad=True)

    def f(x, h, c, *ps):
        hx = (h, c) if HAS_CELL[kind] else h
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x, hx))

    assert torch.autograd.gradcheck(f, (x, h, c, *params))


def layer_gradcheck_cases():
    for kind in LAYERS:
        for K, packed in ((2, False), (3, True)):
            for backend in dict.fromkeys(["auto", "reference", *available_backends(LAYERS[kind])]):
                yield pytest.param(kind, K, packed, backend,
                                   id=f"{kind}-K{K}-{'packed-bi-2layer' if packed else 'dense-bi'}-{backend}")


@pytest.mark.parametrize("kind,K,packed,backend", list(layer_gradcheck_cases()))
def test_layer_gradcheck(kind, K, packed, backend):
    """gradcheck of the whole layer (input, initial states, every parameter), float64.

    Packed: a 2-layer bidirectional layer over unsorted lengths. Dense: one bidirectional layer (the dense-only
    backends run here)."""
    L = 2 if packed else 1
    m = LAYERS[kind](2, 2, num_layers=L, bidirectional=True, num_paths=K, dtype=F64, backend=backend)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(3, 3, 2, dtype=F64)
    packing = pack_padded_sequence(x, [3, 1, 2], enforce_sorted=False) if packed else None
    inp = (packing.data if packed else x).clone().requires_grad_()
    h0 = torch.randn(2 * L, 3, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(2 * L, 3, 2 * K, dtype=F64, requires_grad=True)

    def f(inp, h0, c0, *ps):
        x = packing._replace(data=inp) if packed else inp
        hx = (h0, c0) if HAS_CELL[kind] else h0
        out, st = torch.func.functional_call(m, dict(zip(names, ps)), (x, hx))
        out = out.data if packed else out
        return (out, *st) if HAS_CELL[kind] else (out, st)

    try:
        f(inp, h0, c0, *params)
    except ValueError as e:
        if backend in ("auto", "reference") or "cannot run this input" not in str(e):
            raise
        skip_refusal(backend, e, m, packing if packed else inp, (h0, c0) if HAS_CELL[kind] else h0)
    fast = packed or backend in ("auto", "reference")
    assert torch.autograd.gradcheck(f, (inp, h0, c0, *params), fast_mode=fast)
