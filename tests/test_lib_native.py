"""cerebral_rnn.LSTM and cerebral_rnn.GRU on the native backend: torch.nn.LSTM / torch.nn.GRU's numbers (outputs,
final states and every gradient, compared with torch's own layers given the same parameters), their state_dict,
and where ``backend="auto"`` runs native, torch's op or the reference loop."""

from __future__ import annotations

import pytest
import torch
from helpers import skip_unless_native
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import GRU, LSTM

TORCH = {LSTM: nn.LSTM, GRU: nn.GRU}
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 2e-5, "atol": 2e-6}}


def _pair(cls, dtype, **kw):
    ours = cls(5, 7, dtype=dtype, backend="native", **kw)
    theirs = TORCH[cls](5, 7, dtype=dtype, **kw)
    theirs.load_state_dict(ours.state_dict())  # the same names and shapes: torch's own layer reads ours
    return ours, theirs


def _states(cls, m, batch, dtype, gen):
    LD = m.num_layers * (2 if m.bidirectional else 1)
    h0 = torch.randn(LD, batch, m.hidden_size, dtype=dtype, generator=gen, requires_grad=True)
    if cls is GRU:
        return h0
    return h0, torch.randn(LD, batch, m.hidden_size, dtype=dtype, generator=gen, requires_grad=True)


def _grads(m, x, hx, probe):
    out, state = m(x, hx)
    states = state if isinstance(state, tuple) else (state,)
    loss = (out * probe).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(states))
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *m.parameters()]
    return [out, *states, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True}, {"batch_first": True},
                                {"bias": False, "num_layers": 2, "dropout": 0.0}])
def test_native_is_torchs_layer(cls, dtype, kw, gen):
    skip_unless_native()
    ours, theirs = _pair(cls, dtype, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    B, T = 3, 6
    shape = (B, T, 5) if kw.get("batch_first") else (T, B, 5)
    x = torch.randn(*shape, dtype=dtype, generator=gen, requires_grad=True)
    hx = _states(cls, ours, B, dtype, gen)
    probe = torch.randn(*shape[:2], ours.hidden_size * (2 if ours.bidirectional else 1), dtype=dtype, generator=gen)
    got = _grads(ours, x, hx, probe)
    assert ours.last_backend == "native"
    want = _grads(theirs, x, hx, probe)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[dtype])
    with torch.no_grad():  # inference (no autograd recording) runs the forward without saving
        for g, w in zip(ours(x, hx)[0:1], theirs(x, hx)[0:1]):
            torch.testing.assert_close(g, w, **TOL[dtype])
    assert ours.last_backend == "native"


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_native_unbatched_and_default_state(cls, gen):
    skip_unless_native()
    ours, theirs = _pair(cls, torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, generator=gen)
    out, state = ours(x)
    ref_out, ref_state = theirs(x)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    for s, r in zip(state if isinstance(state, tuple) else (state,),
                    ref_state if isinstance(ref_state, tuple) else (ref_state,)):
        torch.testing.assert_close(s, r, **TOL[torch.float64])


def test_auto_runs_native_for_the_gru_and_torch_where_native_cannot(gen):
    skip_unless_native()
    m = GRU(5, 7)
    x = torch.randn(6, 3, 5, generator=gen)
    m(x)
    assert m.last_backend == "native"  # faster than torch's GRU at every measured shape
    packed = pack_padded_sequence(x, [6, 4, 2])
    m(packed)
    assert m.last_backend == "torch"  # packed input: torch's op
    with pytest.raises(ValueError, match="packed"):
        GRU(5, 7, backend="native")(packed)
    p = LSTM(5, 7, proj_size=3)
    p(x)
    assert p.last_backend == "torch"
    with pytest.raises(ValueError, match="proj_size"):
        LSTM(5, 7, proj_size=3, backend="native")(x)
    big = LSTM(5, 512)  # inference at H = 512 and B = 32: torch's op is the faster on both ISAs measured
    with torch.no_grad():
        big(torch.randn(3, 32, 5, generator=gen))
    assert big.last_backend == "torch"
    t = LSTM(5, 7, backend="torch")
    t(x)
    assert t.last_backend == "torch"


@pytest.mark.parametrize("kw", [{"recurrent_dropout": 0.3, "zoneout": 0.2},
                                {"recurrent_dropout": 0.3, "zoneout": 0.2, "layer_norm": True}],
                         ids=["dropout-zoneout", "with-layer-norm"])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_step_regularisers_run_native_with_the_reference_numbers(cls, kw, gen):
    """Recurrent dropout, zoneout and layer norm (which torch's op cannot run) run natively under "auto", with
    the same masks as the reference loop (drawn by the layer) and the same numbers."""
    skip_unless_native()
    m = cls(5, 7, dtype=torch.float64, **kw)
    x = torch.randn(6, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    outs = []
    for backend in ("auto", "reference"):
        m.backend = backend
        torch.manual_seed(3)
        y = m(x)[0]
        assert m.last_backend == ("native" if backend == "auto" else "reference")
        outs.append([y, *torch.autograd.grad(y.square().sum(), [x, *m.parameters()])])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    m.eval()  # zoneout's expectation
    with torch.no_grad():
        m.backend = "auto"
        y = m(x)[0]
        assert m.last_backend == "native"
        m.backend = "reference"
        torch.testing.assert_close(y, m(x)[0], **TOL[torch.float64])
