"""Cells against independent references: the paper's equations (float64, written in tests/paper.py) for the
Cerebral cell, ``torch.nn.RNNCell`` / ``torch.nn.LSTMCell`` with copied weights for the others."""

import pytest
import torch
from paper import paper_step, random_paper_params, to_documented_layout
from torch import nn

from cerebral_rnn import CerebralLSTMCell, LSTMCell, RNNCell

F64 = torch.float64


def load_cell(cell, layout):
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), layout):
            if getattr(cell, name) is not None:
                getattr(cell, name).copy_(value)


# ---------------------------------------------------------------------------------------------------------
# Cerebral cell against the paper
# ---------------------------------------------------------------------------------------------------------


def test_cerebral_cell_parameter_layout():
    cell = CerebralLSTMCell(3, 5)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {"weight_ih": (40, 3), "weight_hh": (40, 5), "bias_ih": (40,), "bias_hh": (40,)}
    assert [n for n, _ in CerebralLSTMCell(3, 5, bias=False).named_parameters()] == ["weight_ih", "weight_hh"]
    assert cell.bias_ih is not None and CerebralLSTMCell(3, 5, bias=False).bias_ih is None


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("bias", [True, False])
def test_cerebral_cell_matches_paper(gen, dtype, tol, bias):
    I, H, B = 3, 4, 5
    P = random_paper_params(I, H, gen, bias=bias)
    cell = CerebralLSTMCell(I, H, bias=bias, dtype=dtype)
    layout = to_documented_layout(P, H, gen, dtype=dtype)
    if not bias:
        layout = layout[:2]
    load_cell(cell, layout)
    x = torch.randn(B, I, generator=gen, dtype=F64)
    h = torch.randn(B, H, generator=gen, dtype=F64)
    UC = torch.randn(B, H, generator=gen, dtype=F64)
    LC = torch.randn(B, H, generator=gen, dtype=F64)
    h_ref, UC_ref, LC_ref = paper_step(x, h, UC, LC, P)
    h1, c1 = cell(x.to(dtype), (h.to(dtype), torch.cat([UC, LC], -1).to(dtype)))
    assert h1.shape == (B, H) and c1.shape == (B, 2 * H)
    assert h1.dtype == dtype and c1.dtype == dtype
    torch.testing.assert_close(h1.double(), h_ref, atol=tol, rtol=0)
    torch.testing.assert_close(c1[:, :H].double(), UC_ref, atol=tol, rtol=0)  # c = [UC | LC]
    torch.testing.assert_close(c1[:, H:].double(), LC_ref, atol=tol, rtol=0)


def test_cerebral_cell_multistep_and_default_state(gen):
    I, H, B, T = 2, 3, 4, 6
    P = random_paper_params(I, H, gen)
    cell = CerebralLSTMCell(I, H, dtype=F64)
    load_cell(cell, to_documented_layout(P, H, gen))
    xs = torch.randn(T, B, I, generator=gen, dtype=F64)
    h, UC, LC = (torch.zeros(B, H, dtype=F64) for _ in range(3))
    state = None
    for t in range(T):
        h, UC, LC = paper_step(xs[t], h, UC, LC, P)
        state = cell(xs[t], state)  # first step: zeros when omitted
        torch.testing.assert_close(state[0], h, atol=1e-12, rtol=0)
        torch.testing.assert_close(state[1], torch.cat([UC, LC], -1), atol=1e-12, rtol=0)


def test_cerebral_cell_unbatched(gen):
    I, H = 3, 2
    P = random_paper_params(I, H, gen)
    cell = CerebralLSTMCell(I, H, dtype=F64)
    load_cell(cell, to_documented_layout(P, H, gen))
    x = torch.randn(I, generator=gen, dtype=F64)
    h = torch.randn(H, generator=gen, dtype=F64)
    c = torch.randn(2 * H, generator=gen, dtype=F64)
    h_ref, UC, LC = paper_step(x[None], h[None], c[None, :H], c[None, H:], P)
    h1, c1 = cell(x, (h, c))
    assert h1.shape == (H,) and c1.shape == (2 * H,)
    torch.testing.assert_close(h1, h_ref[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(c1, torch.cat([UC, LC], -1)[0], atol=1e-12, rtol=0)
    h2, c2 = cell(x)
    assert h2.shape == (H,) and c2.shape == (2 * H,)


def test_cerebral_cell_gradients_match_paper(gen):
    """Autograd through the cell equals autograd through the paper's equations (float64)."""
    I, H, B = 3, 2, 4
    P = {k: v.requires_grad_() for k, v in random_paper_params(I, H, gen).items()}
    cell = CerebralLSTMCell(I, H, dtype=F64)
    load_cell(cell, to_documented_layout({k: v.detach() for k, v in P.items()}, H, gen))
    x = torch.randn(B, I, generator=gen, dtype=F64, requires_grad=True)
    h = torch.randn(B, H, generator=gen, dtype=F64, requires_grad=True)
    c = torch.randn(B, 2 * H, generator=gen, dtype=F64, requires_grad=True)
    wh, wc = torch.randn(B, H, generator=gen, dtype=F64), torch.randn(B, 2 * H, generator=gen, dtype=F64)
    h_ref, UC, LC = paper_step(x, h, c[:, :H], c[:, H:], P)
    ref_grads = torch.autograd.grad((h_ref * wh).sum() + (torch.cat([UC, LC], -1) * wc).sum(),
                                    [x, h, c] + [P[f"W{p}{g}"] for p in "ul" for g in "fico"])
    h1, c1 = cell(x, (h, c))
    grads = torch.autograd.grad((h1 * wh).sum() + (c1 * wc).sum(), [x, h, c, cell.weight_ih, cell.weight_hh])
    for a, b in zip(grads[:3], ref_grads[:3]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # gradient of W{path}{gate} on [h, x] is [grad weight_hh rows | grad weight_ih rows] of that gate
    gW = dict(zip([f"W{p}{g}" for p in "ul" for g in "fico"], ref_grads[3:]))
    for k, (p, g) in enumerate([("u", "i"), ("u", "f"), ("u", "c"), ("u", "o"),
                                ("l", "i"), ("l", "f"), ("l", "c"), ("l", "o")]):
        rows = slice(k * H, (k + 1) * H)
        torch.testing.assert_close(grads[4][rows], gW[f"W{p}{g}"][:, :H], atol=1e-12, rtol=0)
        torch.testing.assert_close(grads[3][rows], gW[f"W{p}{g}"][:, H:], atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# RNNCell / LSTMCell against torch.nn
# ---------------------------------------------------------------------------------------------------------


def _pair(kind, bias):
    if kind == "lstm":
        ours, ref = LSTMCell(3, 4, bias=bias), nn.LSTMCell(3, 4, bias=bias)
    else:
        nl = kind.split("_")[1]
        ours, ref = RNNCell(3, 4, bias=bias, nonlinearity=nl), nn.RNNCell(3, 4, bias=bias, nonlinearity=nl)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_matches_torch(kind, bias, batched, with_state):
    ours, ref = _pair(kind, bias)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    shape = (5,) if batched else ()
    x = torch.randn(*shape, 3, requires_grad=True)
    states = [torch.randn(*shape, 4, requires_grad=True) for _ in range(2 if kind == "lstm" else 1)]
    hx = None
    if with_state:
        hx = tuple(states) if kind == "lstm" else states[0]
    out_o, out_r = ours(x, hx), ref(x, hx)
    if kind != "lstm":
        out_o, out_r = (out_o,), (out_r,)
    weights = [torch.randn_like(t) for t in out_r]
    inputs_o = [x] + (states if with_state else []) + list(ours.parameters())
    inputs_r = [x] + (states if with_state else []) + list(ref.parameters())
    for a, b in zip(out_o, out_r):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    g_o = torch.autograd.grad(sum((a * w).sum() for a, w in zip(out_o, weights)), inputs_o)
    g_r = torch.autograd.grad(sum((a * w).sum() for a, w in zip(out_r, weights)), inputs_r)
    for a, b in zip(g_o, g_r):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_cell_default_init_bounds_and_shapes():
    for cell, rows in ((RNNCell(3, 16), 16), (LSTMCell(3, 16), 64), (CerebralLSTMCell(3, 16), 128)):
        assert cell.weight_ih.shape == (rows, 3) and cell.weight_hh.shape == (rows, 16)
        for p in cell.parameters():
            assert p.abs().max() <= 1 / 16 ** 0.5


def test_cell_float64_and_repr():
    cell = CerebralLSTMCell(3, 4, dtype=F64, init="identical")
    h, c = cell(torch.randn(2, 3, dtype=F64))
    assert h.dtype == F64 and c.dtype == F64
    assert "identical" in repr(cell)
    assert "relu" in repr(RNNCell(2, 3, nonlinearity="relu"))
    assert "bias=False" in repr(LSTMCell(2, 3, bias=False))


# ---------------------------------------------------------------------------------------------------------
# gradcheck, float64
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,nstate", [
    (lambda: RNNCell(3, 2, nonlinearity="tanh", dtype=F64), 1),
    (lambda: RNNCell(3, 2, nonlinearity="relu", dtype=F64), 1),
    (lambda: LSTMCell(3, 2, dtype=F64), 2),
    (lambda: CerebralLSTMCell(3, 2, dtype=F64), 2),
])
def test_cell_gradcheck(make, nstate):
    cell = make()
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    h = torch.randn(4, 2, dtype=F64, requires_grad=True)
    c = torch.randn(4, 2 * cell.num_paths, dtype=F64, requires_grad=True)

    def f(x, h, c, *ps):
        hx = (h, c) if nstate == 2 else h
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x, hx))

    if nstate == 2:
        assert torch.autograd.gradcheck(f, (x, h, c, *params))
    else:
        assert torch.autograd.gradcheck(lambda x, h, *ps: f(x, h, None, *ps), (x, h, *params))
