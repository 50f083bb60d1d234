"""The rest of the core's contract, for every kind of the family: parameter tables, StackedRNN, initialisation
(identical / distinct paths, forget_bias), identical paths staying bitwise identical in training, argument
checks. Values are checked against tests/family_oracle.py where there is a value to check."""

from __future__ import annotations

import math
import re

import pytest
import torch
from family_oracle import F64, HAS_CELL, load_into, random_layers, run_sequence
from helpers import CELLS, LAYERS, skip_refusal
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from cerebral_rnn import (
    GRU,
    LSTM,
    CerebralGRU,
    CerebralGRUCell,
    CerebralLSTM,
    CerebralPeepholeLSTM,
    CerebralPeepholeLSTMCell,
    StackedRNN,
    available_backends,
)

GATES = {"lstm": 4, "peephole": 4, "gru": 3}
TOL = 1e-10


def assert_close(a, b, tol, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=0, msg=lambda s: f"{what}: {s}")


def path_params(m):
    """(name, tensor) of every parameter made of K path blocks of rows (all but weight_hr)."""
    return [(n, p) for n, p in m.named_parameters() if not n.startswith("weight_hr")]


# ---------------------------------------------------------------------------------------------------------
# Parameter tables
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_parameter_table(kind, K, bias):
    """Names in torch.nn.LSTM's order (peephole after the biases), shapes as documented."""
    I, H, P = 3, 5, 2
    kw = {"proj_size": P} if kind == "lstm" else {}
    m = LAYERS[kind](I, H, num_layers=2, bias=bias, bidirectional=True, num_paths=K, **kw)
    G, O = GATES[kind], (P if kind == "lstm" else H)
    expected = {}
    for layer in range(2):
        for sfx in ("", "_reverse"):
            s = f"_l{layer}{sfx}"
            expected["weight_ih" + s] = (G * K * H, I if layer == 0 else 2 * O)
            expected["weight_hh" + s] = (G * K * H, O)
            if bias:
                expected["bias_ih" + s] = (G * K * H,)
                expected["bias_hh" + s] = (G * K * H,)
            if kind == "peephole":
                expected["peephole" + s] = (3 * K * H,)
            if kind == "lstm":
                expected["weight_hr" + s] = (P, H)
    got = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert list(got) == list(expected) and got == expected
    assert m.num_paths == K
    assert LAYERS[kind](I, H).num_paths == 2  # the paper's two paths by default


# ---------------------------------------------------------------------------------------------------------
# StackedRNN with every kind
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
def test_stacked_every_kind_matches_oracle(packed, gen):
    """cerebral (K=3, proj_size, bidirectional) -> cerebral-peephole (K=2, 2 layers) -> cerebral-gru (K=3,
    bidirectional) -> lstm -> gru: each layer as the oracle (the one-path kinds are the oracle's K = 1)."""
    I, H, P, T, B = 2, 3, 2, 4, 3
    specs = [("cerebral", "lstm", {"num_paths": 3, "proj_size": P, "bidirectional": True}),
             ("cerebral-peephole", "peephole", {"num_paths": 2, "num_layers": 2}),
             ("cerebral-gru", "gru", {"num_paths": 3, "bidirectional": True}),
             ("lstm", "lstm", {}),
             ("gru", "gru", {})]
    net = StackedRNN(I, dtype=F64)
    for name, _, kw in specs:
        net.add_layer(name, H, **kw)
    assert [type(layer) for layer in net.layers] == [CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU, LSTM, GRU]
    assert [layer.input_size for layer in net.layers] == [I, 2 * P, H, 2 * H, H]
    assert net.output_size == H
    oracle_layers, width = [], I
    for layer, (_, kind, kw) in zip(net.layers, specs):
        D = 2 if kw.get("bidirectional") else 1
        lay = random_layers(kind, kw.get("num_paths", 1), width, H, kw.get("num_layers", 1), D, gen,
                            proj_size=kw.get("proj_size", 0))
        load_into(layer, kind, lay, H, gen)
        oracle_layers.append((kind, lay, layer))
        width = D * (kw.get("proj_size") or H)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    lengths = [2, 4, 1] if packed else None
    # states: given for the first two layers, None (zeros) for the rest
    states_in, zeros = [], []
    for i, (kind, lay, layer) in enumerate(oracle_layers):
        LD = layer.num_layers * layer.num_directions
        h0 = torch.randn(LD, B, layer.spec.out_size, generator=gen, dtype=F64) if i < 2 else None
        c0 = (torch.randn(LD, B, layer.num_paths * H, generator=gen, dtype=F64)
              if i < 2 and HAS_CELL[kind] else None)
        states_in.append(None if h0 is None else ((h0, c0) if HAS_CELL[kind] else h0))
        zeros.append((h0 if h0 is not None else torch.zeros(LD, B, layer.spec.out_size, dtype=F64),
                      c0 if c0 is not None else torch.zeros(LD, B, layer.num_paths * H, dtype=F64)))
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    out, states = net(inp, states_in)
    y = x
    for (kind, lay, _), (h0, c0), got in zip(oracle_layers, zeros, states):
        y, h_ref, c_ref = run_sequence(kind, y, lay, h0, c0 if HAS_CELL[kind] else None, lengths)
        if HAS_CELL[kind]:
            assert isinstance(got, tuple)
            assert_close(got[0], h_ref, TOL, f"{kind} h_n")
            assert_close(got[1], c_ref, TOL, f"{kind} c_n")
        else:
            assert isinstance(got, torch.Tensor)
            assert_close(got, h_ref, TOL, f"{kind} h_n")
    if packed:
        assert isinstance(out, PackedSequence)
        out = pad_packed_sequence(out, total_length=T)[0]
    assert_close(out, y, TOL, "output")


def test_stacked_batch_first_unbatched_and_dropout(gen):
    net = StackedRNN(2, batch_first=True, dropout=1.0)
    for name in ("cerebral-peephole", "cerebral-gru", "cerebral"):
        net.add_layer(name, 3, num_paths=3)
    x = torch.randn(2, 5, 2, generator=gen)
    net.eval()
    out, _ = net(x)
    assert out.shape == (2, 5, 3)
    single, states = net(x[1])  # unbatched (L, H_in)
    torch.testing.assert_close(single, out[1], atol=1e-6, rtol=0)
    assert states[0][1].shape == (1, 9) and states[1].shape == (1, 3)
    net.train()  # dropout=1 between layers: the last layer reads zeros
    y_train, _ = net(x)
    y_zero, _ = net.layers[2](torch.zeros(2, 5, 3))
    torch.testing.assert_close(y_train, y_zero, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------------------


def every_module(kind, K, scheme, **kw):
    layer_kw = {"proj_size": 2} if kind == "lstm" else {}
    return [LAYERS[kind](3, 5, num_layers=2, bidirectional=True, num_paths=K, init=scheme, **layer_kw, **kw),
            CELLS[kind](3, 5, num_paths=K, init=scheme, **kw)]


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("K", [2, 3])
def test_identical_and_distinct(kind, K):
    bound = 1 / math.sqrt(5)
    for m in every_module(kind, K, "identical"):
        assert m.init == "identical"
        for name, p in path_params(m):
            blocks = p.detach().chunk(K, dim=0)
            assert all(torch.equal(blocks[0], b) for b in blocks[1:]), name
        for name, p in m.named_parameters():
            assert 0 < p.abs().max() <= bound, name  # U(-1/sqrt(H), 1/sqrt(H)), peephole and weight_hr too
    for m in every_module(kind, K, "distinct"):
        for name, p in path_params(m):
            blocks = p.detach().chunk(K, dim=0)
            assert all(not torch.equal(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1:]), name
    torch.manual_seed(11)
    a = every_module(kind, K, "distinct")
    torch.manual_seed(11)
    b = every_module(kind, K, "distinct")
    for ma, mb in zip(a, b):  # the global seed decides
        assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))


@pytest.mark.parametrize("kind", ["lstm", "peephole"])
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("scheme", ["distinct", "identical"])
def test_forget_bias_rows(kind, K, scheme):
    """bias_ih's f rows of every path = forget_bias, bias_hh's f rows = 0; every other row drawn as usual."""
    H, b = 5, 1.25
    for m in every_module(kind, K, scheme, forget_bias=b):
        assert m.forget_bias == b
        pairs = ([(getattr(m, f"bias_ih_l{l}{s}"), getattr(m, f"bias_hh_l{l}{s}")) for l in range(2)
                  for s in ("", "_reverse")] if hasattr(m, "bias_ih_l0") else [(m.bias_ih, m.bias_hh)])
        for b_ih, b_hh in pairs:
            for path in range(K):
                for gate in range(4):  # i, f, g, o
                    rows = slice((path * 4 + gate) * H, (path * 4 + gate + 1) * H)
                    if gate == 1:
                        assert torch.all(b_ih[rows] == b) and torch.all(b_hh[rows] == 0)
                    else:
                        assert b_ih[rows].abs().max() <= 1 / math.sqrt(H) and b_ih[rows].std() > 0
                        assert b_hh[rows].std() > 0


@pytest.mark.parametrize("cls", [CerebralGRU, CerebralGRUCell])
def test_gru_has_no_forget_bias(cls):
    """No forget gate, no forget_bias: an unexpected keyword (TypeError naming it)."""
    with pytest.raises(TypeError, match="forget_bias"):
        cls(3, 5, forget_bias=1.0)
    m = cls(3, 5, num_paths=3)
    bias = m.bias_ih_l0 if cls is CerebralGRU else m.bias_ih
    for block in bias.detach().chunk(9):  # every r, z, n block of every path drawn at random
        assert block.std() > 0


# ---------------------------------------------------------------------------------------------------------
# Identical paths stay bitwise identical in training
# ---------------------------------------------------------------------------------------------------------


def adam_cases():
    for kind in LAYERS:
        for H, K in ((1, 3), (5, 2)):
            for packed in (False, True):
                for backend in [b for b in available_backends(LAYERS[kind]) if b != "reference"]:
                    yield pytest.param(kind, H, K, packed, backend,
                                       id=f"{kind}-H{H}-K{K}-{'packed' if packed else 'dense'}-{backend}")


@pytest.mark.parametrize("kind,H,K,packed,backend", list(adam_cases()))
def test_identical_paths_stay_identical_under_adam(kind, H, K, packed, backend):
    """20 Adam steps of a 2-layer bidirectional layer with dropout between layers, init="identical": every
    path's gradient and value stay bitwise equal to the first path's (and the cell state's K blocks too)."""
    m = LAYERS[kind](3, H, num_layers=2, bidirectional=True, dropout=0.3, num_paths=K, init="identical",
                     backend=backend)
    head = torch.nn.Linear(2 * H, 1)
    opt = torch.optim.Adam(list(m.parameters()) + list(head.parameters()), lr=0.05)
    gen = torch.Generator().manual_seed(7)
    B, T = 4, 5
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for step in range(20):
        x = torch.randn(T, B, 3, generator=gen)
        target = torch.randn(T, B, 1, generator=gen)
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        try:
            out, states = m(inp)
        except ValueError as e:
            if backend == "auto" or "cannot run this input" not in str(e) or step:
                raise
            skip_refusal(backend, e, m, inp)
        y = pad_packed_sequence(out, total_length=T)[0] if packed else out
        loss = ((head(y) - target) ** 2).mean()
        if HAS_CELL[kind]:
            loss = loss + 0.1 * states[1].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for name, p in path_params(m):
            blocks = p.grad.chunk(K, dim=0)
            assert all(torch.equal(blocks[0], b) for b in blocks[1:]), f"d {name} at step {step}"
        opt.step()
    for name, p in path_params(m):
        assert not torch.equal(p, before[name]), name  # it did train
        blocks = p.detach().chunk(K, dim=0)
        assert all(torch.equal(blocks[0], b) for b in blocks[1:]), name
    if HAS_CELL[kind]:  # and so does the cell state, with and without autograd
        m.eval()
        x = torch.randn(T, B, 3, generator=gen)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                _, (_, c) = m(x)
            blocks = c.chunk(K, dim=-1)
            assert all(torch.equal(blocks[0], b) for b in blocks[1:]), f"c_n (grad={grad})"


@pytest.mark.parametrize("kind", list(CELLS))
def test_identical_cell_stays_identical_under_adam(kind):
    H, K = 5, 3
    cell = CELLS[kind](3, H, num_paths=K, init="identical")
    opt = torch.optim.Adam(cell.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        hx = None
        for _t in range(4):
            hx = cell(torch.randn(6, 3, generator=gen), hx)
        h = hx[0] if HAS_CELL[kind] else hx
        loss = (h - 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in cell.named_parameters():
        blocks = p.detach().chunk(K, dim=0)
        assert all(torch.equal(blocks[0], b) for b in blocks[1:]), name


@pytest.mark.parametrize("K", [1, 2, 3])
def test_gru_state_stays_bounded(K, gen):
    """The docstring's reason for the mean: each path's update is a convex combination of n_k in (-1, 1) and
    h(t-1), so h stays in [-1, 1] from a state in it, however large the weights (a sum would not)."""
    layers = random_layers("gru", K, 2, 4, 1, 1, gen)
    for p in layers[0][0]["paths"]:
        for name in p:
            p[name] = p[name] * 8  # saturating gates: z near 1 is where a sum of K updates would grow
    m = CerebralGRU(2, 4, num_paths=K, dtype=F64)
    load_into(m, "gru", layers, 4, gen)
    x = 3 * torch.randn(60, 5, 2, generator=gen, dtype=F64)
    h0 = 2 * torch.rand(1, 5, 4, generator=gen, dtype=F64) - 1
    y, h_n = m(x, h0)
    assert y.abs().max() <= 1 and h_n.abs().max() <= 1
    y_ref, _, _ = run_sequence("gru", x, layers, h0)
    assert_close(y, y_ref, 1e-9, "output")


# ---------------------------------------------------------------------------------------------------------
# Argument checks: the argument named, what was expected and what was got
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [*LAYERS.values(), *CELLS.values()])
@pytest.mark.parametrize("value,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                       ("2", TypeError), (None, TypeError)])
def test_bad_num_paths(cls, value, exc):
    with pytest.raises(exc, match=rf"num_paths: expected a positive int, got .*{value!r}"):
        cls(3, 5, num_paths=value)


@pytest.mark.parametrize("cls", [CerebralPeepholeLSTM, CerebralGRU])
def test_proj_size_only_on_the_lstm_kind(cls):
    with pytest.raises(TypeError, match="proj_size"):
        cls(3, 5, proj_size=2)


@pytest.mark.parametrize("value,exc,message", [
    (5, ValueError, r"proj_size: expected less than hidden_size=5, got 5"),
    (7, ValueError, r"proj_size: expected less than hidden_size=5, got 7"),
    (-1, ValueError, r"proj_size: expected an int >= 0.*got -1"),
    (1.0, TypeError, r"proj_size: expected an int >= 0, got float 1.0"),
    (True, TypeError, r"proj_size: expected an int >= 0, got bool True"),
])
def test_bad_proj_size(value, exc, message):
    for K in (1, 3):
        with pytest.raises(exc, match=message):
            CerebralLSTM(3, 5, proj_size=value, num_paths=K)


@pytest.mark.parametrize("kind", ["lstm", "peephole"])
@pytest.mark.parametrize("K", [2, 3])
def test_c0_wrong_shape_names_both_accepted_shapes(kind, K):
    H = 4
    m = LAYERS[kind](3, H, num_layers=2, bidirectional=True, num_paths=K)
    x = torch.randn(6, 2, 3)
    h0 = torch.zeros(4, 2, H)
    for bad in (torch.zeros(4, 2, K * H + 1), torch.zeros(4, 2, H - 1), torch.zeros(2, 2, K * H),
                torch.zeros(4, 3, H)):
        with pytest.raises(ValueError, match=re.escape(f"c_0: expected shape {(4, 2, K * H)}") + ".*"
                           + re.escape(f"or {(4, 2, H)}") + ".*" + re.escape(f"got {tuple(bad.shape)}")):
            m(x, (h0, bad))
    with pytest.raises(ValueError, match=rf"c_0: expected shape \(4, {K * H}\) .*or \(4, {H}\).*unbatched"):
        m(x[:, 0], (h0[:, 0], torch.zeros(4, K * H + 1)))
    cell = CELLS[kind](3, H, num_paths=K)
    with pytest.raises(ValueError, match=rf"c: expected shape \(2, {K * H}\) .*or \(2, {H}\).*got \(2, 5\)"):
        cell(torch.randn(2, 3), (torch.zeros(2, H), torch.zeros(2, 5)))


def test_k1_c0_is_torch_shaped_only():
    m = CerebralLSTM(3, 4, num_layers=2, num_paths=1)
    with pytest.raises(ValueError, match=r"c_0: expected shape \(2, 2, 4\) for batched input, got \(2, 2, 8\)"):
        m(torch.randn(6, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 8)))


def test_proj_h0_has_proj_size_features():
    m = CerebralLSTM(3, 5, num_layers=2, proj_size=2, num_paths=3)
    x = torch.randn(6, 2, 3)
    with pytest.raises(ValueError, match=r"h_0: expected shape \(2, 2, 2\) for batched input, got \(2, 2, 5\)"):
        m(x, (torch.zeros(2, 2, 5), torch.zeros(2, 2, 15)))
    out, (h, c) = m(x, (torch.zeros(2, 2, 2), torch.zeros(2, 2, 5)))  # c_0 of H features: every path
    assert out.shape == (6, 2, 2) and h.shape == (2, 2, 2) and c.shape == (2, 2, 15)


def test_state_structure_errors():
    gru = CerebralGRU(3, 4, num_paths=3)
    x = torch.randn(6, 2, 3)
    with pytest.raises(TypeError, match=r"hx: expected a Tensor h_0, got a tuple"):
        gru(x, (torch.zeros(1, 2, 4),))
    with pytest.raises(ValueError, match=r"h_0: expected shape \(1, 2, 4\)"):
        gru(x, torch.zeros(1, 2, 12))  # h has H features whatever K
    peep = CerebralPeepholeLSTM(3, 4, num_paths=3)
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\), got Tensor"):
        peep(x, torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="hx"):
        CerebralPeepholeLSTMCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("kind", ["peephole", "gru"])
def test_backends_without_the_kind_are_refused_at_construction(kind):
    valid = available_backends(LAYERS[kind])
    assert valid[:2] == ["auto", "reference"]
    for name in ("lstm2h", "native", "bogus"):
        if name in valid:
            continue
        with pytest.raises(ValueError, match=rf"backend: expected one of .*'reference'.*, got '{name}'"):
            LAYERS[kind](3, 4, backend=name)


def test_stack_kind_errors():
    with pytest.raises(ValueError, match="kind: expected one of .*'cerebral-peephole', 'cerebral-gru'.*got 'peephole'"):
        StackedRNN(3).add_layer("peephole", 4)
    with pytest.raises(TypeError, match="forget_bias"):
        StackedRNN(3).add_layer("cerebral-gru", 4, forget_bias=1.0)
    with pytest.raises(ValueError, match="num_paths"):
        StackedRNN(3).add_layer("cerebral-peephole", 4, num_paths=0)


FAMILY = [*LAYERS.values(), *CELLS.values()]


@pytest.mark.parametrize("cls", FAMILY)
@pytest.mark.parametrize("arg,value,exc", [
    ("input_size", 0, ValueError), ("input_size", 2.0, TypeError), ("hidden_size", -1, ValueError),
    ("hidden_size", "4", TypeError), ("bias", 1, TypeError), ("init", "same", ValueError), ("init", None, TypeError),
])
def test_bad_constructor_arguments(cls, arg, value, exc):
    kw = {"input_size": 3, "hidden_size": 4, arg: value}
    with pytest.raises(exc) as info:
        cls(**kw)
    msg = str(info.value)
    assert msg.startswith(f"{arg}: expected") and "got" in msg, msg
    got = msg.split("got", 1)[1]
    assert repr(value) in got or type(value).__name__ in got, msg  # what was got: the value or its type


@pytest.mark.parametrize("cls", list(LAYERS.values()))
@pytest.mark.parametrize("arg,value,exc", [
    ("num_layers", 0, ValueError), ("num_layers", 1.5, TypeError), ("dropout", 1.5, ValueError),
    ("dropout", "0.1", TypeError), ("bidirectional", 1, TypeError), ("batch_first", None, TypeError),
    ("backend", "fast", ValueError), ("backend", 1, TypeError),
])
def test_bad_layer_arguments(cls, arg, value, exc):
    with pytest.raises(exc) as info:
        cls(3, 4, **{arg: value})
    msg = str(info.value)
    assert msg.startswith(f"{arg}: expected") and "got" in msg, msg


@pytest.mark.parametrize("kind", list(LAYERS))
def test_bad_forward_inputs(kind):
    m = LAYERS[kind](3, 4, num_paths=3)
    with pytest.raises(ValueError, match=r"input: expected last dimension input_size=3, got 5"):
        m(torch.randn(6, 2, 5))
    with pytest.raises(ValueError, match=r"input: expected a 2-D \(unbatched\) or 3-D \(batched\) tensor, got 4-D"):
        m(torch.randn(6, 2, 1, 3))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32 .*got torch.float64"):
        m(torch.randn(6, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="input: expected a sequence length > 0"):
        m(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match=r"input: expected last dimension input_size=3, got 2"):
        m(pack_padded_sequence(torch.randn(4, 2, 2), [4, 1]))
    cell = CELLS[kind](3, 4, num_paths=3)
    with pytest.raises(ValueError, match=r"input: expected last dimension input_size=3, got 5"):
        cell(torch.randn(2, 5))
    # an empty batch is fine, as in torch.nn
    out, states = m(torch.randn(6, 0, 3))
    assert out.shape == (6, 0, 4)
    assert (states[1].shape == (1, 0, 12)) if HAS_CELL[kind] else (states.shape == (1, 0, 4))
