"""torch.func on every layer: grad, functional_call + grad, vmap over a batch of inputs and per-sample gradients
(vmap of grad), checked against autograd's gradients and against a loop over the inputs. Inside a transform
``backend="auto"`` runs the reference loop, the one backend made of ops that torch.func knows; a named compiled
backend refuses with a clear error."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from cerebral_rnn import GRU, LSTM, RNN, CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM, available_backends

LAYERS = [(CerebralLSTM, {}), (CerebralLSTM, {"num_paths": 3}), (CerebralPeepholeLSTM, {}), (CerebralGRU, {}),
          (LSTM, {}), (GRU, {}), (RNN, {}), (CerebralLSTM, {"num_layers": 2, "bidirectional": True})]
IDS = ["cerebral", "cerebral-k3", "peephole", "cerebral-gru", "lstm", "gru", "rnn", "cerebral-2layer-bi"]


def _make(cls, kw):
    torch.manual_seed(0)
    return cls(3, 4, dtype=torch.float64, **kw)


def _loss(out):
    return (out[0] ** 2).sum()


@pytest.mark.parametrize("cls,kw", LAYERS, ids=IDS)
def test_func_grad_equals_autograd(cls, kw):
    m = _make(cls, kw)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    g = grad(lambda p, x: _loss(functional_call(m, p, (x,))))(params, x)
    _loss(m(x)).backward()  # autograd, through the default backend
    for name, p in m.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=1e-9, atol=1e-11)
    gx = grad(lambda x: _loss(m(x)))(x)
    xr = x.clone().requires_grad_()
    _loss(m(xr)).backward()
    torch.testing.assert_close(gx, xr.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cls,kw", LAYERS, ids=IDS)
def test_vmap_over_inputs_and_per_sample_gradients(cls, kw):
    m = _make(cls, kw)
    xs = torch.randn(4, 6, 3, dtype=torch.float64)  # 4 independent sequences of 6 steps
    ys = vmap(lambda x: m(x.unsqueeze(1))[0].squeeze(1))(xs)
    with torch.no_grad():
        loop = torch.stack([m(x.unsqueeze(1))[0].squeeze(1) for x in xs])
    torch.testing.assert_close(ys, loop, rtol=1e-10, atol=1e-12)
    params = {k: v.detach() for k, v in m.named_parameters()}
    per_sample = vmap(grad(lambda p, x: _loss(functional_call(m, p, (x.unsqueeze(1),)))), in_dims=(None, 0))(
        params, xs)
    for i in (0, 3):
        m.zero_grad()
        _loss(m(xs[i].unsqueeze(1))).backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-9, atol=1e-11)


def test_a_named_compiled_backend_refuses_a_transform_with_the_reason():
    names = [b for b in available_backends(CerebralLSTM) if b not in ("auto", "reference")]
    x = torch.randn(5, 2, 3)
    for name in names:
        m = CerebralLSTM(3, 4, backend=name)
        with pytest.raises(ValueError, match="torch.func transforms"):
            grad(lambda x, m=m: m(x)[0].sum())(x)
