"""Layers against independent references.

* ``RNN`` / ``LSTM`` against ``torch.nn.RNN`` / ``torch.nn.LSTM`` with copied weights (both backends).
* ``CerebralLSTM`` against a float64 loop over the paper's equations (tests/paper.py), and against its
  equivalent ``torch.nn.LSTM`` of hidden size 2H (identity A), its weights interleaved and its gradients mapped
  back by hand.
"""

import io
import warnings

import pytest
import torch
from helpers import hand_lstm2h_state_dict, run_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st
from paper import paper_sequence, random_paper_params, to_documented_layout
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence, pad_sequence

from cerebral_rnn import LSTM, RNN, CerebralLSTM, available_backends

F64 = torch.float64
T, B, I, H = 5, 4, 3, 4
LENGTHS_UNSORTED = [3, 5, 1, 4]
LENGTHS_SORTED = [5, 4, 3, 1]


def suffix(layer, d):
    return f"_l{layer}" + ("_reverse" if d else "")


def make_input(mode, gen, dtype=torch.float32, T=T, B=B, I=I):
    """Returns (leaf tensor whose gradient is compared, module input, batched?)."""
    if mode == "unbatched":
        x = torch.randn(T, I, generator=gen, dtype=dtype).requires_grad_()
        return x, x, False
    if mode == "batch_first":
        x = torch.randn(B, T, I, generator=gen, dtype=dtype).requires_grad_()
        return x, x, True
    x = torch.randn(T, B, I, generator=gen, dtype=dtype).requires_grad_()
    if mode == "packed_sorted":
        return x, pack_padded_sequence(x, LENGTHS_SORTED), True
    if mode == "packed_unsorted":
        return x, pack_padded_sequence(x, LENGTHS_UNSORTED, enforce_sorted=False), True
    return x, x, True


# Every registered Cerebral backend is held to the same references. A named backend may refuse a case it
# cannot compute exactly (documented: ValueError "... cannot run this input"); "auto" and "reference" never do.
CEREBRAL_BACKENDS = available_backends()


def cerebral_forward(m, *args):
    """``m(*args)``; when m's explicitly named backend refuses this case, the test is skipped with that backend's
    reason (never counted as passed), or fails under CEREBRAL_RNN_REQUIRE_NATIVE=1 where the backend's
    documentation says it computes the case (tests/helpers.py)."""
    return run_or_skip(m, *args)


def out_tensor(out):
    return out.data if isinstance(out, PackedSequence) else out


def loss_of(output, states, weights):
    tensors = [out_tensor(output)] + list(states)
    return sum((t * w).sum() for t, w in zip(tensors, weights))


# ---------------------------------------------------------------------------------------------------------
# RNN / LSTM against torch.nn
# ---------------------------------------------------------------------------------------------------------

MODES = ["batched", "batch_first", "packed_sorted", "packed_unsorted", "unbatched"]


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("mode", MODES)
def test_rnn_lstm_match_torch(backend, kind, num_layers, bidirectional, mode, gen):
    compare_with_torch(backend, kind, num_layers, bidirectional, mode, gen)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm"])
@pytest.mark.parametrize("mode", ["batched", "packed_unsorted", "unbatched"])
def test_rnn_lstm_no_bias_match_torch(backend, kind, mode, gen):
    compare_with_torch(backend, kind, 2, True, mode, gen, bias=False)


def compare_with_torch(backend, kind, num_layers, bidirectional, mode, gen, bias=True):
    """Outputs, final states and gradients (input, states, every parameter) equal torch.nn's to 1e-5."""
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": mode == "batch_first",
          "bias": bias}
    if kind == "lstm":
        ref, ours = nn.LSTM(I, H, **kw), LSTM(I, H, backend=backend, **kw)
    else:
        nl = kind.split("_")[1]
        ref, ours = nn.RNN(I, H, nonlinearity=nl, **kw), RNN(I, H, nonlinearity=nl, backend=backend, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    x, inp, batched = make_input(mode, gen)
    LD = num_layers * (2 if bidirectional else 1)
    sshape = (LD, B, H) if batched else (LD, H)
    states = [torch.randn(sshape, generator=gen).requires_grad_() for _ in range(2 if kind == "lstm" else 1)]
    hx = tuple(states) if kind == "lstm" else states[0]

    out_r, st_r = ref(inp, hx)
    out_o, st_o = ours(inp, hx)
    st_r = st_r if kind == "lstm" else (st_r,)
    st_o = st_o if kind == "lstm" else (st_o,)
    assert type(out_o) is type(out_r)
    if isinstance(out_r, PackedSequence):
        assert torch.equal(out_o.batch_sizes, out_r.batch_sizes)
        for a, b in ((out_o.sorted_indices, out_r.sorted_indices),
                     (out_o.unsorted_indices, out_r.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip([out_tensor(out_o), *st_o], [out_tensor(out_r), *st_r]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    weights = [torch.randn(t.shape, generator=gen) for t in [out_tensor(out_r), *st_r]]
    leaves_r = [x, *states, *ref.parameters()]
    leaves_o = [x, *states, *ours.parameters()]
    g_r = torch.autograd.grad(loss_of(out_r, st_r, weights), leaves_r, retain_graph=True)
    g_o = torch.autograd.grad(loss_of(out_o, st_o, weights), leaves_o)
    for a, b in zip(g_o, g_r):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_lstm_no_bias_no_state_matches_torch(backend, gen):
    ref, ours = nn.LSTM(I, H, 2, bias=False), LSTM(I, H, 2, bias=False, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, generator=gen)
    out_r, (h_r, c_r) = ref(x)
    out_o, (h_o, c_o) = ours(x)
    for a, b in ((out_o, out_r), (h_o, h_r), (c_o, c_r)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# CerebralLSTM against the paper (float64 loop)
# ---------------------------------------------------------------------------------------------------------


def paper_layers(num_layers, D, gen, bias=True):
    return [[random_paper_params(I if l == 0 else D * H, H, gen, bias=bias) for _ in range(D)]
            for l in range(num_layers)]


def load_paper(module, layers, gen):
    with torch.no_grad():
        for l, dirs in enumerate(layers):
            for d, P in enumerate(dirs):
                layout = to_documented_layout(P, H, gen, dtype=module.weight_ih_l0.dtype)
                for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), layout):
                    p = getattr(module, name + suffix(l, d), None)
                    if p is not None:
                        p.copy_(value)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("backend", CEREBRAL_BACKENDS)
def test_cerebral_matches_paper_sequence(num_layers, bidirectional, dtype, tol, backend, gen):
    D = 2 if bidirectional else 1
    layers = paper_layers(num_layers, D, gen)
    m = CerebralLSTM(I, H, num_layers, bidirectional=bidirectional, dtype=dtype, backend=backend)
    load_paper(m, layers, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(num_layers * D, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(num_layers * D, B, 2 * H, generator=gen, dtype=F64)
    y_ref, h_ref, c_ref = paper_sequence(x, layers, h0, c0)
    y, (h_n, c_n) = cerebral_forward(m, x.to(dtype), (h0.to(dtype), c0.to(dtype)))
    assert y.shape == (T, B, D * H) and h_n.shape == (num_layers * D, B, H)
    assert c_n.shape == (num_layers * D, B, 2 * H)
    for a, b in ((y, y_ref), (h_n, h_ref), (c_n, c_ref)):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=0)
    # zero initial state when omitted
    y_ref0, h_ref0, c_ref0 = paper_sequence(x, layers, torch.zeros_like(h0), torch.zeros_like(c0))
    y0, (h0_n, c0_n) = m(x.to(dtype))
    for a, b in ((y0, y_ref0), (h0_n, h_ref0), (c0_n, c_ref0)):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=0)


def test_cerebral_no_bias_matches_paper(gen):
    layers = paper_layers(2, 2, gen, bias=False)
    m = CerebralLSTM(I, H, 2, bias=False, bidirectional=True, dtype=F64)
    assert not hasattr(m, "bias_ih_l0")  # as nn.LSTM(bias=False)
    assert not [n for n, _ in m.named_parameters() if "bias" in n]
    load_paper(m, layers, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    y_ref, h_ref, c_ref = paper_sequence(x, layers, torch.zeros(4, B, H, dtype=F64),
                                         torch.zeros(4, B, 2 * H, dtype=F64))
    y, (h_n, c_n) = m(x)
    for a, b in ((y, y_ref), (h_n, h_ref), (c_n, c_ref)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_cerebral_batch_first_and_unbatched_match_paper(gen):
    layers = paper_layers(2, 2, gen)
    m = CerebralLSTM(I, H, 2, bidirectional=True, batch_first=True, dtype=F64)
    load_paper(m, layers, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(4, B, 2 * H, generator=gen, dtype=F64)
    y_ref, h_ref, c_ref = paper_sequence(x, layers, h0, c0)
    y, (h_n, c_n) = m(x.transpose(0, 1), (h0, c0))
    torch.testing.assert_close(y, y_ref.transpose(0, 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, h_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(c_n, c_ref, atol=1e-12, rtol=0)
    # unbatched: sequence 1 alone, (L, H_in) in, states without the batch dimension
    y1, (h1, c1) = m(x[:, 1], (h0[:, 1], c0[:, 1]))
    assert y1.shape == (T, 2 * H) and h1.shape == (4, H) and c1.shape == (4, 2 * H)
    torch.testing.assert_close(y1, y_ref[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(h1, h_ref[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(c1, c_ref[:, 1], atol=1e-12, rtol=0)


def test_cerebral_parameter_names_and_shapes():
    m = CerebralLSTM(3, 5, num_layers=2, bidirectional=True)
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    assert names == [n for n, _ in ref.named_parameters()]
    for n, p in m.named_parameters():
        rp = getattr(ref, n)
        assert p.shape[0] == 2 * rp.shape[0] and p.shape[1:] == rp.shape[1:], n
    assert m.weight_ih_l1.shape == (40, 10) and m.weight_hh_l1_reverse.shape == (40, 5)
    assert len(m.all_weights) == 4 and all(len(ws) == 4 for ws in m.all_weights)


# ---------------------------------------------------------------------------------------------------------
# CerebralLSTM against its equivalent nn.LSTM(2H) (identity A), weights and gradients mapped by hand
# ---------------------------------------------------------------------------------------------------------


def lstm2h_row(p, k, j):
    """Row of the LSTM(2H) gate dimension holding Cerebral path p (0 upper, 1 lower), gate k (i, f, g, o),
    unit j."""
    return k * 2 * H + p * H + j


def cerebral_grad_from_lstm2h(name, g2, layer, D):
    """Map the gradient of an LSTM(2H) parameter to the Cerebral parameter it is tied to, by hand."""
    out_rows = []
    for p in range(2):
        for k in range(4):
            for j in range(H):
                out_rows.append(g2[lstm2h_row(p, k, j)])
    g = torch.stack(out_rows)  # Cerebral row order: p*4H + k*H + j
    if name.startswith("weight_hh"):
        g = g[:, :H] + g[:, H:]  # [W_hh, W_hh]: the two tied copies' gradients add
    elif name.startswith("weight_ih") and layer > 0:
        # the layer below gives [y_U, y_L] per direction (2H each); both halves are read by the same H columns
        g = torch.cat([g[:, d * 2 * H: d * 2 * H + H] + g[:, d * 2 * H + H: (d + 1) * 2 * H]
                       for d in range(D)], dim=1)
    return g


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (2, True), (3, True)])
@pytest.mark.parametrize("mode", ["batched", "batch_first", "packed_unsorted", "unbatched"])
@pytest.mark.parametrize("backend", CEREBRAL_BACKENDS)
def test_cerebral_matches_lstm2h(num_layers, bidirectional, mode, backend, gen):
    D = 2 if bidirectional else 1
    m = CerebralLSTM(I, H, num_layers, bidirectional=bidirectional, batch_first=mode == "batch_first",
                     backend=backend)
    # the equivalent LSTM(2H), its rows interleaved by hand (tests/helpers.py), not by the library's layout code
    # (which the "lstm2h" backend runs): torch computes the expected side
    ref = nn.LSTM(I, 2 * H, num_layers, bidirectional=bidirectional, batch_first=mode == "batch_first")
    ref.load_state_dict(hand_lstm2h_state_dict(m))  # strict: every parameter given
    x, inp, batched = make_input(mode, gen)
    LD = num_layers * D
    bshape = (B,) if batched else ()
    h0 = torch.randn(LD, *bshape, H, generator=gen).requires_grad_()
    c0 = torch.randn(LD, *bshape, 2 * H, generator=gen).requires_grad_()
    h0_2 = torch.cat([h0.detach(), torch.zeros_like(h0)], -1).requires_grad_()  # h0' = [h0, 0]
    c0_2 = c0.detach().clone().requires_grad_()  # c0' = [UC0 | LC0]

    y, (h_n, c_n) = cerebral_forward(m, inp, (h0, c0))
    y2, (h2, c2) = ref(inp, (h0_2, c0_2))

    def fold(t):  # (..., D*2H) -> (..., D*H): y[..., :H] + y[..., H:] per direction
        return torch.cat([t[..., d * 2 * H: d * 2 * H + H] + t[..., d * 2 * H + H: (d + 1) * 2 * H]
                          for d in range(t.shape[-1] // (2 * H))], dim=-1)

    torch.testing.assert_close(out_tensor(y), fold(out_tensor(y2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(h_n, fold(h2), atol=1e-5, rtol=0)
    torch.testing.assert_close(c_n, c2, atol=1e-5, rtol=0)

    wy = torch.randn(out_tensor(y).shape, generator=gen)
    wh = torch.randn(h_n.shape, generator=gen)
    wc = torch.randn(c_n.shape, generator=gen)
    names = [n for n, _ in m.named_parameters()]
    g = torch.autograd.grad((out_tensor(y) * wy).sum() + (h_n * wh).sum() + (c_n * wc).sum(),
                            [x, h0, c0, *m.parameters()], retain_graph=True)
    g2 = torch.autograd.grad((fold(out_tensor(y2)) * wy).sum() + (fold(h2) * wh).sum() + (c2 * wc).sum(),
                             [x, h0_2, c0_2, *(getattr(ref, n) for n in names)])
    torch.testing.assert_close(g[0], g2[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(g[1], g2[1][..., :H], atol=1e-5, rtol=0)
    torch.testing.assert_close(g[2], g2[2], atol=1e-5, rtol=0)
    for name, ga, gb in zip(names, g[3:], g2[3:]):
        layer = int(name.split("_l")[1][0])
        torch.testing.assert_close(ga, cerebral_grad_from_lstm2h(name, gb, layer, D), atol=1e-5, rtol=0,
                                   msg=lambda s, name=name: f"{name}: {s}")


# ---------------------------------------------------------------------------------------------------------
# Packed sequences: each sequence equals itself run alone, unpadded
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CerebralLSTM, LSTM, RNN])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_packed_equals_each_sequence_alone(cls, enforce_sorted, with_state, gen):
    m = cls(I, H, num_layers=2, bidirectional=True, dtype=F64)
    lengths = LENGTHS_SORTED if enforce_sorted else LENGTHS_UNSORTED
    seqs = [torch.randn(n, I, generator=gen, dtype=F64) for n in lengths]
    packed = pack_padded_sequence(pad_sequence(seqs), lengths, enforce_sorted=enforce_sorted)
    cw = 2 * H if cls is CerebralLSTM else H
    h0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(4, B, cw, generator=gen, dtype=F64)
    hx = None
    if with_state:
        hx = h0 if cls is RNN else (h0, c0)
    out, st = m(packed, hx)
    st = (st,) if cls is RNN else st
    padded, out_lengths = pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths
    for b, seq in enumerate(seqs):
        hx_b = None
        if with_state:
            hx_b = h0[:, b] if cls is RNN else (h0[:, b], c0[:, b])
        y_b, st_b = m(seq, hx_b)  # unbatched, unpadded
        st_b = (st_b,) if cls is RNN else st_b
        torch.testing.assert_close(padded[: lengths[b], b], y_b, atol=1e-12, rtol=0)
        if lengths[b] < padded.shape[0]:
            assert padded[lengths[b]:, b].abs().max() == 0  # padding stays zero
        for s, s_b in zip(st, st_b):
            torch.testing.assert_close(s[:, b], s_b, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# gradcheck of a 2-layer bidirectional packed CerebralLSTM
# ---------------------------------------------------------------------------------------------------------


def test_cerebral_gradcheck_packed_bidirectional():
    m = CerebralLSTM(2, 2, num_layers=2, bidirectional=True, dtype=F64)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    lengths = [3, 1, 2]
    packed = pack_padded_sequence(torch.randn(3, 3, 2, dtype=F64), lengths, enforce_sorted=False)
    data = packed.data.clone().requires_grad_()
    h0 = torch.randn(4, 3, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=F64, requires_grad=True)

    def f(data, h0, c0, *ps):
        inp = packed._replace(data=data)
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (inp, (h0, c0)))
        return out.data, h, c

    assert torch.autograd.gradcheck(f, (data, h0, c0, *params))


# ---------------------------------------------------------------------------------------------------------
# Behaviour: dtype, state_dict, dropout, backends
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CerebralLSTM, LSTM, RNN])
def test_state_dict_round_trip(cls, gen):
    kw = {"num_layers": 2, "bidirectional": True}
    if cls is CerebralLSTM:
        kw["init"] = "identical"
    m = cls(I, H, **kw)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(99)
    fresh = cls(I, H, num_layers=2, bidirectional=True)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), m.parameters()))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    sd, sd2 = m.state_dict(), fresh.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = torch.randn(T, B, I, generator=gen)
    y, s = m(x)
    y2, s2 = fresh(x)
    assert torch.equal(y, y2)
    for a, b in zip(s if isinstance(s, tuple) else (s,), s2 if isinstance(s2, tuple) else (s2,)):
        assert torch.equal(a, b)


def test_state_dict_loads_into_torch_lstm_names():
    """LSTM's state_dict is nn.LSTM's, both ways (strict)."""
    ours = LSTM(I, H, 2, bidirectional=True)
    nn.LSTM(I, H, 2, bidirectional=True).load_state_dict(ours.state_dict())
    ours.load_state_dict(nn.LSTM(I, H, 2, bidirectional=True).state_dict())


@pytest.mark.parametrize("cls", [CerebralLSTM, LSTM, RNN])
def test_float64(cls, gen):
    m = cls(I, H, num_layers=2, dtype=F64)
    assert all(p.dtype == F64 for p in m.parameters())
    y, _s = m(torch.randn(T, B, I, generator=gen, dtype=F64))
    assert y.dtype == F64
    m32 = cls(I, H, num_layers=2)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    x = torch.randn(T, B, I, generator=gen)
    torch.testing.assert_close(m32(x)[0].double(), m(x.double())[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [CerebralLSTM, LSTM, RNN])
def test_dropout_between_layers_training_only(cls, gen):
    m = cls(I, H, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, I, generator=gen)
    m.eval()
    y_eval, _ = m(x)
    assert torch.equal(m(x)[0], y_eval)  # eval: deterministic
    m.train()
    torch.manual_seed(1)
    y1, _ = m(x)
    torch.manual_seed(2)
    y2, _ = m(x)
    assert not torch.allclose(y1, y_eval) and not torch.allclose(y1, y2)
    torch.manual_seed(1)
    assert torch.equal(m(x)[0], y1)  # same seed, same mask
    # the first layer's states are untouched by dropout (it acts on the layer's output only)
    m.eval()
    _, s_eval = m(x)
    m.train()
    _, s_train = m(x)
    s_eval = s_eval[0] if isinstance(s_eval, tuple) else s_eval
    s_train = s_train[0] if isinstance(s_train, tuple) else s_train
    torch.testing.assert_close(s_train[0], s_eval[0], atol=1e-6, rtol=0)
    assert not torch.allclose(s_train[1], s_eval[1])


@pytest.mark.parametrize("cls", [CerebralLSTM, LSTM, RNN])
def test_dropout_single_layer_warns_and_is_inert(cls, gen):
    with pytest.warns(UserWarning, match="dropout"):
        m = cls(I, H, num_layers=1, dropout=0.3)
    x = torch.randn(T, B, I, generator=gen)
    m.train()
    y_train, _ = m(x)
    m.eval()
    assert torch.equal(m(x)[0], y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(I, H, num_layers=2, dropout=0.3)
        cls(I, H, num_layers=1, dropout=0.0)


def test_cerebral_dropout_equals_manual_dropout(gen):
    """Training with dropout = running the layers one by one with F.dropout on the first layer's output."""
    m = CerebralLSTM(I, H, num_layers=2, dropout=0.4)
    lower, upper = CerebralLSTM(I, H), CerebralLSTM(H, H)
    lower.load_state_dict({k: v for k, v in m.state_dict().items() if "_l0" in k})
    upper.load_state_dict({k.replace("_l1", "_l0"): v for k, v in m.state_dict().items() if "_l1" in k})
    x = torch.randn(T, B, I, generator=gen)
    torch.manual_seed(5)
    y, (h, c) = m(x)
    torch.manual_seed(5)
    y0, (h0, c0) = lower(x)
    y1, (h1, c1) = upper(torch.nn.functional.dropout(y0, 0.4, training=True))
    torch.testing.assert_close(y, y1, atol=1e-6, rtol=0)
    torch.testing.assert_close(h, torch.cat([h0, h1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c, torch.cat([c0, c1]), atol=1e-6, rtol=0)


def test_cerebral_backends_and_last_backend(gen):
    x = torch.randn(T, B, I, generator=gen)
    m = CerebralLSTM(I, H, 2, backend="reference")
    m_auto = CerebralLSTM(I, H, 2)
    m_auto.load_state_dict(m.state_dict())
    assert m.last_backend is None
    y, _ = m(x)
    assert m.last_backend == "reference"
    y_auto, _ = m_auto(x)
    assert m_auto.last_backend is not None
    torch.testing.assert_close(y_auto, y, atol=1e-5, rtol=0)
    assert "backend='reference'" in repr(m)


@pytest.mark.parametrize("cls", [LSTM, RNN])
def test_simple_backends_agree(cls, gen):
    a = cls(I, H, 2, bidirectional=True, backend="torch")
    b = cls(I, H, 2, bidirectional=True, backend="reference")
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, B, I, generator=gen)
    torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-5, rtol=0)


def test_repr_and_flatten_parameters():
    m = CerebralLSTM(3, 4, num_layers=2, bidirectional=True, init="identical")
    r = repr(m)
    assert "num_layers=2" in r and "bidirectional=True" in r and "identical" in r
    assert m.flatten_parameters() is None
    assert repr(LSTM(3, 4)) == "LSTM(3, 4)"


# ---------------------------------------------------------------------------------------------------------
# torch.compile and swapping into code written for nn.LSTM
# ---------------------------------------------------------------------------------------------------------


class TaggerModel(nn.Module):
    def __init__(self, vocab=11, emb=6, hidden=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = CerebralLSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        out, (h, c) = self.rnn(self.emb(tokens))
        return self.head(out), h, c


def test_torch_compile_matches_eager():
    """Inductor (the default backend) in inference; aot_eager for a training step's gradients.

    Not fullgraph: a fast backend may run eagerly behind a graph break under torch.compile."""
    torch._dynamo.reset()
    model = TaggerModel().eval()
    tokens = torch.randint(0, 11, (3, 7))
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(tokens)
        got = compiled(tokens)
        tokens2 = torch.randint(0, 11, (3, 7))
        got2, eager2 = compiled(tokens2), model(tokens2)
    for a, b in zip(got + got2, eager + eager2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    model.train()
    compiled = torch.compile(model, backend="aot_eager")
    compiled(tokens)[0].sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(tokens)[0].sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-5, msg=lambda s, n=n: f"{n}: {s}")


class SeqModel(nn.Module):
    """Written for nn.LSTM: the rnn class is the only thing that changes."""

    def __init__(self, rnn_cls, vocab=7, emb=5, hidden=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = rnn_cls(emb, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, lengths, state=None):
        self.rnn.flatten_parameters()
        packed = pack_padded_sequence(self.emb(tokens), lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return self.head(out), state


def train_seq_model(rnn_cls):
    torch.manual_seed(0)
    model = SeqModel(rnn_cls)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    data = torch.arange(4 * 24).reshape(4, 24) % 7  # predictable next token
    lengths = torch.tensor([6, 6, 6, 6])
    losses = []
    for _ in range(8):
        state = None
        total = 0.0
        for start in range(0, 18, 6):  # truncated BPTT over chunks of 6
            x, target = data[:, start:start + 6], data[:, start + 1:start + 7]
            logits, state = model(x, lengths, state)
            h, c = state
            state = (h.detach(), c.detach())
            loss = nn.functional.cross_entropy(logits.reshape(-1, 7), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total)
    return losses, state


def test_swap_into_nn_lstm_code():
    _losses_ref, (h, c) = train_seq_model(nn.LSTM)
    assert c.shape == h.shape
    losses, (h, c) = train_seq_model(CerebralLSTM)
    assert h.shape == (2, 4, 8) and c.shape == (2, 4, 16)
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------------------
# Property: any batch of lengths, packed, equals each sequence alone (hypothesis)
# ---------------------------------------------------------------------------------------------------------

_PROPERTY_MODEL = {}


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5), seed=st.integers(0, 2**16),
       with_state=st.booleans())
def test_packed_property(lengths, seed, with_state):
    if not _PROPERTY_MODEL:
        torch.manual_seed(0)
        _PROPERTY_MODEL["m"] = CerebralLSTM(2, 3, num_layers=2, bidirectional=True, dtype=F64)
    m = _PROPERTY_MODEL["m"]
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, 2, generator=g, dtype=F64) for n in lengths]
    h0 = torch.randn(4, len(lengths), 3, generator=g, dtype=F64)
    c0 = torch.randn(4, len(lengths), 6, generator=g, dtype=F64)
    packed = pack_padded_sequence(pad_sequence(seqs), lengths, enforce_sorted=False)
    out, (h, c) = m(packed, (h0, c0) if with_state else None)
    padded, _ = pad_packed_sequence(out)
    for b, seq in enumerate(seqs):
        y_b, (h_b, c_b) = m(seq, (h0[:, b], c0[:, b]) if with_state else None)
        torch.testing.assert_close(padded[: lengths[b], b], y_b, atol=1e-12, rtol=0)
        torch.testing.assert_close(h[:, b], h_b, atol=1e-12, rtol=0)
        torch.testing.assert_close(c[:, b], c_b, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# docs/notes.md, section 3: per-step slices G[t] of one (T, B, G) tensor make backward quadratic in T
# ---------------------------------------------------------------------------------------------------------


def _graph_node_types(t):
    seen, stack, types = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        types.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return types


@pytest.mark.parametrize("make", [lambda b=b: CerebralLSTM(I, H, 2, bidirectional=True, backend=b)
                                  for b in CEREBRAL_BACKENDS]
                         + [lambda: LSTM(I, H, 2, bidirectional=True, backend="reference"),
                            lambda: RNN(I, H, 2, bidirectional=True, backend="reference")],
                         ids=[f"cerebral-{b}" for b in CEREBRAL_BACKENDS] + ["lstm-reference", "rnn-reference"])
@pytest.mark.parametrize("packed", [False, True])
def test_backward_graph_has_no_per_step_select(make, packed, gen):
    """Each select's backward materialises a zero (T, B, G) gradient: T of them is O(T^2) work."""
    m = make()
    x = torch.randn(12, B, I, generator=gen)
    inp = pack_padded_sequence(x, [12, 9, 5, 1]) if packed else x
    out, _ = cerebral_forward(m, inp) if isinstance(m, CerebralLSTM) else m(inp)
    types = _graph_node_types(out_tensor(out).sum())
    assert "SelectBackward0" not in types, types
