"""The Cerebral family against torch.nn, and the conversions to and from nn.LSTM(K*H).

* The oracle itself against torch.nn.LSTM / torch.nn.GRU (K = 1) and against tests/paper.py (K = 2): two
  independent transcriptions agreeing is what makes either a reference.
* ``CerebralLSTM(num_paths=1)`` is ``torch.nn.LSTM`` (proj_size included): its state_dict loads into one, and
  outputs, final states and every gradient agree, through every backend.
* ``CerebralGRU(num_paths=1)`` is ``torch.nn.GRU``; with identical paths (K = 2, 3) it equals the ``nn.GRU`` built
  from the first path's rows, whose gradient is K times each path's.
* ``cerebral_to_lstm2h`` / ``cerebral_from_lstm2h`` / ``cerebral_state_to_lstm2h`` / ``cerebral_output_from_lstm2h``
  for K in {1, 2, 3}, with and without proj_size, against the oracle; round trips; refusals.
"""

from __future__ import annotations

import pytest
import torch
from family_oracle import F64, load_into, random_layers, run_sequence, to_layout
from helpers import run_or_skip
from paper import paper_sequence, random_paper_params, to_documented_layout
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from cerebral_rnn import (
    CerebralGRU,
    CerebralLSTM,
    available_backends,
    cerebral_from_lstm2h,
    cerebral_output_from_lstm2h,
    cerebral_state_to_lstm2h,
    cerebral_to_lstm2h,
)

T, B, I, H, P = 4, 3, 2, 3, 2
LENGTHS = [2, 4, 1]
TOL = 1e-10


def assert_close(a, b, tol, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=0, msg=lambda s: f"{what}: {s}")


def data(out):
    return out.data if isinstance(out, PackedSequence) else out


def make_input(mode, gen, dtype=F64):
    """(leaf (T, B, I), module input); unbatched uses sequence 0 only."""
    x = torch.randn(T, B, I, generator=gen, dtype=dtype).requires_grad_()
    if mode == "packed":
        return x, pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    if mode == "unbatched":
        return x, x[:, 0]
    if mode == "batch_first":
        return x, x.transpose(0, 1)
    return x, x


# ---------------------------------------------------------------------------------------------------------
# The oracle against torch.nn and tests/paper.py
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proj", [0, P])
def test_oracle_k1_lstm_is_torch_lstm(proj, gen):
    layers = random_layers("lstm", 1, I, H, 2, 2, gen, proj_size=proj)
    ref = nn.LSTM(I, H, 2, bidirectional=True, proj_size=proj, dtype=F64)
    load_into(ref, "lstm", layers, H, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(4, B, proj or H, generator=gen, dtype=F64)
    c0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    y, h, c = run_sequence("lstm", x, layers, h0, c0, LENGTHS)
    y_t, (h_t, c_t) = ref(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), (h0, c0))
    assert_close(y, pad_packed_sequence(y_t, total_length=T)[0], TOL, "output")
    assert_close(h, h_t, TOL, "h_n")
    assert_close(c, c_t, TOL, "c_n")


@pytest.mark.parametrize("bias", [True, False])
def test_oracle_k1_gru_is_torch_gru(bias, gen):
    layers = random_layers("gru", 1, I, H, 2, 2, gen, bias=bias)
    ref = nn.GRU(I, H, 2, bias=bias, bidirectional=True, dtype=F64)
    load_into(ref, "gru", layers, H, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    y, h, _ = run_sequence("gru", x, layers, h0)
    y_t, h_t = ref(x, h0)
    assert_close(y, y_t, TOL, "output")
    assert_close(h, h_t, TOL, "h_n")


def test_oracle_k2_lstm_is_the_paper(gen):
    """family_oracle (K = 2) and tests/paper.py, two transcriptions, on the same parameters."""
    paper = [[random_paper_params(I if l == 0 else 2 * H, H, gen) for _ in range(2)] for l in range(2)]
    # the paper's U/L matrices as the oracle's paths: path 1 = upper, path 2 = lower; "c" is the candidate g
    layers = [[{"paths": [{**{f"W_{g}": Pd[f"W{u}{pg}"] for g, pg in zip("ifgo", "ifco")},
                           **{f"b_{g}": Pd[f"b{u}{pg}"] for g, pg in zip("ifgo", "ifco")}} for u in "ul"],
                "W_hr": None} for Pd in dirs] for dirs in paper]
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(4, B, 2 * H, generator=gen, dtype=F64)
    for a, b in zip(run_sequence("lstm", x, layers, h0, c0), paper_sequence(x, paper, h0, c0)):
        assert_close(a, b, 1e-13)
    # and both place the parameters in the same rows
    lay = to_layout("lstm", layers[0][0], H, torch.Generator().manual_seed(3))
    doc = to_documented_layout(paper[0][0], H, torch.Generator().manual_seed(3))
    for name, value in zip(("weight_ih", "weight_hh"), doc[:2]):
        assert torch.equal(lay[name], value), name
    assert_close(lay["bias_ih"] + lay["bias_hh"], doc[2] + doc[3], 1e-15, "bias")


# ---------------------------------------------------------------------------------------------------------
# num_paths = 1 is torch.nn.LSTM / torch.nn.GRU
# ---------------------------------------------------------------------------------------------------------


def compare_with_torch(ours, ref, mode, gen, with_state=True):
    """Outputs, final states and gradients (input, states, every parameter) of ``ours`` and ``ref``."""
    ref.load_state_dict(ours.state_dict())  # strict: the same names and shapes
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x, inp = make_input(mode, gen)
    LD = ref.num_layers * (2 if ref.bidirectional else 1)
    batch = () if mode == "unbatched" else (B,)
    lstm = isinstance(ref, nn.LSTM)
    hx = hx_r = None
    states = []
    if with_state:
        states = [torch.randn(LD, *batch, ref.proj_size or H if lstm else H, generator=gen, dtype=F64)]
        if lstm:
            states.append(torch.randn(LD, *batch, H, generator=gen, dtype=F64))
        states = [s.requires_grad_() for s in states]
        hx = tuple(states) if lstm else states[0]
        hx_r = tuple(s.detach().clone().requires_grad_() for s in states)
        hx_r = hx_r if lstm else hx_r[0]
    out, st = run_or_skip(ours, inp, hx)
    out_r, st_r = ref(inp, hx_r)
    st, st_r = (st, st_r) if lstm else ((st,), (st_r,))
    results, results_r = [data(out), *st], [data(out_r), *st_r]
    for what, a, b in zip(["output", "h_n", "c_n"], results, results_r):
        assert_close(a, b, TOL, what)
    w = [torch.randn(t.shape, generator=gen, dtype=F64) for t in results]
    g = torch.autograd.grad(sum((a * b).sum() for a, b in zip(results, w)), [x, *states, *ours.parameters()],
                            retain_graph=True)  # the packing of x is shared with ref's graph
    leaves_r = [x, *(hx_r if lstm else (hx_r,))] if with_state else [x]
    g_r = torch.autograd.grad(sum((a * b).sum() for a, b in zip(results_r, w)), [*leaves_r, *ref.parameters()])
    names = ["input"] + [f"d state {k}" for k in range(len(states))] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, g, g_r):
        assert_close(a, b, TOL, f"d {name}")


MODES = ["batched", "batch_first", "packed", "unbatched"]


@pytest.mark.parametrize("backend", available_backends(CerebralLSTM))
@pytest.mark.parametrize("num_layers,bidirectional,proj", [(1, False, 0), (2, True, 0), (1, False, P),
                                                           (2, True, P)])
@pytest.mark.parametrize("mode", MODES)
def test_k1_lstm_is_torch_lstm(backend, num_layers, bidirectional, proj, mode, gen):
    bf = mode == "batch_first"
    ours = CerebralLSTM(I, H, num_layers, bidirectional=bidirectional, batch_first=bf, proj_size=proj,
                        num_paths=1, dtype=F64, backend=backend)
    ref = nn.LSTM(I, H, num_layers, bidirectional=bidirectional, batch_first=bf, proj_size=proj, dtype=F64)
    compare_with_torch(ours, ref, mode, gen)


@pytest.mark.parametrize("bias", [True, False])
def test_k1_lstm_without_state_and_bias_float32(bias, gen):
    ours = CerebralLSTM(I, H, 2, bias=bias, bidirectional=True, proj_size=P, num_paths=1)
    ref = nn.LSTM(I, H, 2, bias=bias, bidirectional=True, proj_size=P)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, generator=gen)
    y, (h, c) = ours(x)
    y_r, (h_r, c_r) = ref(x)
    for a, b in ((y, y_r), (h, h_r), (c, c_r)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", available_backends(CerebralGRU))
@pytest.mark.parametrize("num_layers,bidirectional,bias", [(1, False, True), (2, True, True), (2, True, False)])
@pytest.mark.parametrize("mode", MODES)
def test_k1_gru_is_torch_gru(backend, num_layers, bidirectional, bias, mode, gen):
    bf = mode == "batch_first"
    ours = CerebralGRU(I, H, num_layers, bias=bias, bidirectional=bidirectional, batch_first=bf, num_paths=1,
                       dtype=F64, backend=backend)
    ref = nn.GRU(I, H, num_layers, bias=bias, bidirectional=bidirectional, batch_first=bf, dtype=F64)
    compare_with_torch(ours, ref, mode, gen, with_state=mode != "batch_first")


# ---------------------------------------------------------------------------------------------------------
# Identical-path CerebralGRU is nn.GRU
# ---------------------------------------------------------------------------------------------------------


def first_path_state_dict(m) -> dict:
    """The first path's rows of each parameter: 3H of the 3KH."""
    return {n: p.detach()[: 3 * m.hidden_size].clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("backend", available_backends(CerebralGRU))
@pytest.mark.parametrize("mode", ["batched", "packed", "unbatched"])
@pytest.mark.parametrize("dtype,tol", [(F64, TOL), (torch.float32, 1e-6)], ids=["f64", "f32"])
def test_identical_path_gru_is_torch_gru(K, backend, mode, dtype, tol, gen):
    m = CerebralGRU(I, H, 2, bidirectional=True, num_paths=K, init="identical", dtype=dtype, backend=backend)
    ref = nn.GRU(I, H, 2, bidirectional=True, dtype=dtype)
    ref.load_state_dict(first_path_state_dict(m))  # strict: a valid nn.GRU state_dict
    x, inp = make_input(mode, gen, dtype)
    h0 = torch.randn(4, *(() if mode == "unbatched" else (B,)), H, generator=gen, dtype=dtype)
    out, h_n = run_or_skip(m, inp, h0)
    out_r, h_r = ref(inp, h0)
    assert_close(data(out), data(out_r), tol, "output")
    assert_close(h_n, h_r, tol, "h_n")
    if dtype == F64:
        w = torch.randn(data(out).shape, generator=gen, dtype=F64)
        g = torch.autograd.grad((data(out) * w).sum() + h_n.sum(), [x, *m.parameters()], retain_graph=True)
        g_r = torch.autograd.grad((data(out_r) * w).sum() + h_r.sum(), [x, *ref.parameters()])
        assert_close(g[0], g_r[0], tol, "d input")
        for (name, _), a, b in zip(m.named_parameters(), g[1:], g_r[1:]):
            # h = mean of K identical paths: each path gets 1/K of nn.GRU's gradient
            for k, rows in enumerate(a.chunk(K, dim=0)):
                assert_close(rows * K, b, 1e-9, f"d {name} path {k}")


def test_first_path_rows_of_distinct_gru_are_a_gru_state_dict(gen):
    """Distinct paths too: the first path's rows load into nn.GRU (strict) and a one-path CerebralGRU with
    those rows is that nn.GRU."""
    m = CerebralGRU(I, H, 2, bidirectional=True, num_paths=3, dtype=F64)
    sd = first_path_state_dict(m)
    ref = nn.GRU(I, H, 2, bidirectional=True, dtype=F64)
    ref.load_state_dict(sd)
    one = CerebralGRU(I, H, 2, bidirectional=True, num_paths=1, dtype=F64)
    one.load_state_dict(sd)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    for a, b in zip(one(x), ref(x)):
        assert_close(a, b, TOL)
    # and the whole 3-path layer is not that nn.GRU (the other paths count)
    assert not torch.allclose(m(x)[0], ref(x)[0])


# ---------------------------------------------------------------------------------------------------------
# Conversions to and from nn.LSTM(K*H)
# ---------------------------------------------------------------------------------------------------------

CONV = [(1, False, "batched"), (2, True, "packed"), (2, False, "batch_first"), (1, True, "unbatched")]


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("proj", [0, P])
@pytest.mark.parametrize("num_layers,bidirectional,mode", CONV)
def test_cerebral_to_lstm2h_computes_the_oracle(K, proj, num_layers, bidirectional, mode, gen):
    D = 2 if bidirectional else 1
    layers = random_layers("lstm", K, I, H, num_layers, D, gen, proj_size=proj)
    m = CerebralLSTM(I, H, num_layers, bidirectional=bidirectional, batch_first=mode == "batch_first",
                     proj_size=proj, num_paths=K, dtype=F64)
    load_into(m, "lstm", layers, H, gen)
    ref = cerebral_to_lstm2h(m)
    assert type(ref) is nn.LSTM
    assert (ref.input_size, ref.hidden_size, ref.num_layers, ref.proj_size) == (I, K * H, num_layers, proj)
    assert (ref.bidirectional, ref.batch_first, ref.bias) == (bidirectional, mode == "batch_first", True)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(num_layers * D, B, proj or H, generator=gen, dtype=F64)
    c0 = torch.randn(num_layers * D, B, K * H, generator=gen, dtype=F64)
    lengths = LENGTHS if mode == "packed" else None
    y_ref, h_ref, c_ref = run_sequence("lstm", x, layers, h0, c0, lengths)
    if mode == "unbatched":
        inp, h0, c0 = x[:, 0], h0[:, 0], c0[:, 0]
        y_ref, h_ref, c_ref = y_ref[:, 0], h_ref[:, 0], c_ref[:, 0]
    elif mode == "packed":
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    else:
        inp = x.transpose(0, 1) if mode == "batch_first" else x
    h0_2, c0_2 = cerebral_state_to_lstm2h(h0, c0, num_paths=K, proj_size=proj)
    assert h0_2.shape[-1] == (proj or K * H) and torch.equal(c0_2, c0)
    if not proj:  # [h_0, 0, ..., 0]
        assert torch.equal(h0_2[..., :H], h0) and not h0_2[..., H:].any()
    out2, st2 = ref(inp, (h0_2, c0_2))
    y, (h, c) = cerebral_output_from_lstm2h(out2, st2, hidden_size=H, num_paths=K, proj_size=proj)
    if mode == "packed":
        assert isinstance(y, PackedSequence)
        y = pad_packed_sequence(y, total_length=T)[0]
    elif mode == "batch_first":
        y = y.transpose(0, 1)
    assert_close(y, y_ref, TOL, "output")
    assert_close(h, h_ref, TOL, "h_n")
    assert_close(c, c_ref, TOL, "c_n")


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("proj", [0, P])
@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True}, {"num_layers": 2, "bias": False}])
def test_lstm2h_round_trip_exact(K, proj, kw):
    m = CerebralLSTM(I, H, proj_size=proj, num_paths=K, forget_bias=1.0, **kw).eval()
    back = cerebral_from_lstm2h(cerebral_to_lstm2h(m), num_paths=K)
    assert type(back) is CerebralLSTM and not back.training
    assert (back.num_paths, back.proj_size, back.hidden_size) == (K, proj, H)
    sd, sd2 = m.state_dict(), back.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    if K == 1:  # a one-path Cerebral LSTM converts to nn.LSTM with the same state_dict
        ref = cerebral_to_lstm2h(m).state_dict()
        assert list(ref) == list(sd) and all(torch.equal(sd[k], ref[k]) for k in sd)


@pytest.mark.parametrize("K", [2, 3])
def test_cerebral_from_lstm2h_refusals(K):
    with pytest.raises(ValueError, match="hidden_size"):
        cerebral_from_lstm2h(nn.LSTM(I, K * H + 1), num_paths=K)  # not divisible by K
    with pytest.raises(ValueError, match="proj_size"):
        cerebral_from_lstm2h(nn.LSTM(I, K * H, proj_size=H), num_paths=K)  # P must be < H
    with pytest.raises(ValueError, match="weight_hh_l0"):
        cerebral_from_lstm2h(nn.LSTM(I, K * H), num_paths=K)  # random W_hh is not [W, ..., W]
    with pytest.raises(ValueError, match="weight_hr_l0"):
        cerebral_from_lstm2h(nn.LSTM(I, K * H, proj_size=P), num_paths=K)  # random W_hr is not [W, ..., W]
    ref = cerebral_to_lstm2h(CerebralLSTM(I, H, 2, bidirectional=True, num_paths=K))
    with torch.no_grad():
        ref.weight_ih_l1_reverse[0, (K - 1) * H] += 1.0  # the last copy of direction 0's input columns
    with pytest.raises(ValueError, match="weight_ih_l1_reverse"):
        cerebral_from_lstm2h(ref, num_paths=K)
    ref = cerebral_to_lstm2h(CerebralLSTM(I, H, 2, proj_size=P, num_paths=K))
    with torch.no_grad():
        ref.weight_hr_l1[0, (K - 1) * H] += 1.0
    with pytest.raises(ValueError, match="weight_hr_l1"):
        cerebral_from_lstm2h(ref, num_paths=K)
    # a K-path conversion read back with another K is refused, not silently wrong
    ref = cerebral_to_lstm2h(CerebralLSTM(I, 2, num_paths=3))  # hidden 6 = 2 x 3
    with pytest.raises(ValueError, match="weight_hh_l0"):
        cerebral_from_lstm2h(ref, num_paths=2)
    with pytest.raises(TypeError, match="module"):
        cerebral_to_lstm2h(CerebralGRU(I, H))
    with pytest.raises(TypeError, match="module"):
        cerebral_from_lstm2h(CerebralLSTM(I, H, num_paths=K))


def test_state_to_lstm2h_accepts_the_layers_c0_of_h_features(gen):
    K = 3
    layers = random_layers("lstm", K, I, H, 1, 1, gen)
    m = CerebralLSTM(I, H, num_paths=K, dtype=F64)
    load_into(m, "lstm", layers, H, gen)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    h0 = torch.randn(1, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(1, B, H, generator=gen, dtype=F64)
    y_ref, h_ref, c_ref = run_sequence("lstm", x, layers, h0, c0.repeat(1, 1, K))
    out2, st2 = cerebral_to_lstm2h(m)(x, cerebral_state_to_lstm2h(h0, c0, num_paths=K))
    y, (h, c) = cerebral_output_from_lstm2h(out2, st2, hidden_size=H, num_paths=K)
    assert_close(y, y_ref, TOL, "output")
    assert_close(h, h_ref, TOL, "h_n")
    assert_close(c, c_ref, TOL, "c_n")
