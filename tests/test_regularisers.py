"""Weight dropout, recurrent dropout, zoneout and layer norm in every layer class, checked against an
independent float64 transcription (tests/regularisers_oracle.py) given the masks the layer draws, against
gradcheck, against the unregularised layer (bitwise, when off), across backends, and for the identical-paths
promise."""

from __future__ import annotations

import pytest
import regularisers_oracle as oracle
import torch
from helpers import skip_unless_native
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import GRU, LSTM, RNN, CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM, StackedRNN
from cerebral_rnn.study import arms as A

KINDS = {"lstm": CerebralLSTM, "peephole": CerebralPeepholeLSTM, "gru": CerebralGRU}
REGS = {"weight": {"weight_dropout": 0.4}, "recurrent": {"recurrent_dropout": 0.3},
        "zoneout": {"zoneout": 0.3}, "layer_norm": {"layer_norm": True},
        "all": {"weight_dropout": 0.3, "recurrent_dropout": 0.2, "zoneout": 0.25, "layer_norm": True}}
T, B, I, H = 6, 3, 4, 5


def _params(m, suffix="_l0"):
    return {k[: -len(suffix)]: v.detach() for k, v in m.state_dict().items() if k.endswith(suffix)}


def _layer(kind, K, reg, **kw):
    torch.manual_seed(0)
    if K == 1 and kind == "lstm":
        return LSTM(I, H, dtype=torch.float64, **reg, **kw)
    if K == 1 and kind == "gru":
        return GRU(I, H, dtype=torch.float64, **reg, **kw)
    return KINDS[kind](I, H, num_paths=K, dtype=torch.float64, **reg, **kw)


def _oracle(kind, K, m, x, masks, training, h0=None, c0=None):
    mk = masks[0][0] if masks is not None else None
    h0 = torch.zeros(B, H, dtype=torch.float64) if h0 is None else h0
    c0 = torch.zeros(B, K * H, dtype=torch.float64) if c0 is None and kind != "gru" else c0
    r = m.regularisers
    return oracle.run(kind, K, H, _params(m), x, h0, c0, w_mask=mk.weight if mk else None,
                      h_mask=mk.h if mk else None, zone_h=mk.zone_h if mk else None,
                      zone_c=mk.zone_c if mk else None, p_h=r.zoneout_h, p_c=r.zoneout_c, training=training)


@pytest.mark.parametrize("reg", list(REGS), ids=list(REGS))
@pytest.mark.parametrize("kind,K", [("lstm", 1), ("lstm", 2), ("lstm", 3), ("peephole", 2), ("gru", 1), ("gru", 2)])
def test_training_call_equals_the_transcription_with_the_drawn_masks(kind, K, reg):
    m = _layer(kind, K, REGS[reg])
    with torch.no_grad():  # non-trivial layer-norm gains and shifts
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(7)
    masks = m.draw_masks(T, B)
    torch.manual_seed(7)
    y, state = m(x)
    want, (h, c) = _oracle(kind, K, m, x, masks, training=True)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((state[0] if isinstance(state, tuple) else state)[0], h, rtol=1e-10, atol=1e-12)
    if c is not None:
        torch.testing.assert_close(state[1][0], c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,K", [("lstm", 2), ("peephole", 2), ("gru", 2), ("lstm", 1), ("gru", 1)])
def test_eval_uses_the_zoneout_expectation_and_layer_norm_at_init(kind, K):
    m = _layer(kind, K, {"zoneout": (0.3, 0.2) if kind != "gru" else 0.3, "layer_norm": True,
                         "recurrent_dropout": 0.5, "weight_dropout": 0.5}).eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    before = torch.get_rng_state()
    y, _ = m(x)
    assert torch.equal(before, torch.get_rng_state())  # nothing is drawn at eval
    want, _ = _oracle(kind, K, m, x, None, training=False)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU, LSTM, GRU, RNN],
                         ids=lambda c: c.__name__)
def test_off_is_bitwise_the_unregularised_layer_and_keeps_the_state_dict(cls):
    torch.manual_seed(0)
    plain = cls(I, H)
    torch.manual_seed(0)
    zero = cls(I, H, weight_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0, layer_norm=False)
    assert list(plain.state_dict()) == list(zero.state_dict())
    x = torch.randn(T, B, I)
    torch.manual_seed(1)
    a, _ = plain(x)
    torch.manual_seed(1)
    b, _ = zero(x)
    assert torch.equal(a, b)


def test_layer_norm_parameters_have_clear_names():
    m = CerebralLSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True)
    names = [n for n in m.state_dict() if n.startswith("ln_")]
    assert "ln_ih_weight_l0" in names and "ln_c_bias_l1_reverse" in names and len(names) == 6 * 4
    assert m.ln_ih_weight_l0.shape == (8 * H,) and m.ln_c_weight_l0.shape == (2 * H,)
    g = CerebralGRU(I, H, layer_norm=True)
    assert g.ln_hh_bias_l0.shape == (6 * H,) and not hasattr(g, "ln_c_weight_l0")


@pytest.mark.parametrize("reg", list(REGS), ids=list(REGS))
@pytest.mark.parametrize("kind", ["lstm", "peephole", "gru"])
@pytest.mark.parametrize("form", ["dense", "packed", "bidirectional-two-layers"])
def test_gradcheck(kind, reg, form):
    kw = {"num_layers": 2, "bidirectional": True} if form == "bidirectional-two-layers" else {}
    torch.manual_seed(0)
    m = KINDS[kind](3, 2, dtype=torch.float64, **REGS[reg], **kw)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        torch.manual_seed(3)  # the same masks at every evaluation
        inp = pack_padded_sequence(x, torch.tensor([4, 2]), enforce_sorted=True) if form == "packed" else x
        y, _ = torch.func.functional_call(m, dict(zip(names, ps)), (inp,))
        return y.data if form == "packed" else y

    ps = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *ps), eps=1e-6, atol=1e-6, fast_mode=True)


def test_weight_dropout_gives_the_same_numbers_on_every_backend():
    x = torch.randn(T, B, I)
    outs = {}
    for backend in ("reference", "native", "lstm2h"):
        torch.manual_seed(0)
        m = CerebralLSTM(I, H, weight_dropout=0.5, backend=backend)
        torch.manual_seed(5)
        y, _ = m(x)
        y.sum().backward()
        outs[backend] = (y.detach(), m.weight_hh_l0.grad)
    for backend, (y, g) in outs.items():
        torch.testing.assert_close(y, outs["reference"][0], rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(g, outs["reference"][1], rtol=1e-4, atol=1e-5, msg=backend)
        assert (outs["reference"][1] == 0).any()  # dropped weights get no gradient


def _train_identical(**reg):
    torch.manual_seed(0)
    m = CerebralLSTM(I, H, init="identical", **reg)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        y, _ = m(torch.randn(T, B, I))
        opt.zero_grad()
        y.pow(2).sum().backward()
        opt.step()
    return A.path_difference(m)


def test_what_keeps_identical_paths_identical_bitwise():
    assert _train_identical(recurrent_dropout=0.3) == 0.0
    assert _train_identical(zoneout=(0.3, 0.0)) == 0.0
    assert _train_identical(zoneout=0.3, paths_share_masks=True) == 0.0
    assert _train_identical(weight_dropout=0.4, paths_share_masks=True) == 0.0
    assert _train_identical(layer_norm=True) == 0.0
    assert _train_identical(weight_dropout=0.4) > 0.0  # a mask per path separates them
    assert _train_identical(zoneout=0.3) > 0.0


def test_one_path_layers_run_the_regularisers_and_torch_refuses_the_step_ones():
    x = torch.randn(T, B, I, dtype=torch.float64)
    m = LSTM(I, H, weight_dropout=0.5, dtype=torch.float64)  # torch's op with the masked weight
    torch.manual_seed(2)
    masks = m.draw_masks(T, B)
    torch.manual_seed(2)
    y, _ = m(x)
    want, _ = _oracle("lstm", 1, m, x, masks, training=True)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="backend='torch' cannot run recurrent dropout"):
        LSTM(I, H, zoneout=0.1, backend="torch")(x.float())
    with pytest.raises(ValueError, match="backend='lstm2h' cannot run recurrent dropout, zoneout or layer norm"):
        CerebralLSTM(I, H, recurrent_dropout=0.2, backend="lstm2h")(x.float())


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_dropout": 1.0}, r"weight_dropout: expected a probability in \[0, 1\), got 1.0"),
    ({"recurrent_dropout": -0.1}, "recurrent_dropout: expected a probability"),
    ({"zoneout": (0.1, 0.2, 0.3)}, "zoneout: expected p or a pair"),
    ({"zoneout": "0.1"}, "zoneout: expected a probability"),
])
def test_bad_values_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CerebralLSTM(I, H, **kwargs)


def test_zoneout_pair_on_a_kind_without_c_is_refused():
    with pytest.raises(ValueError, match="zoneout: a pair"):
        CerebralGRU(I, H, zoneout=(0.1, 0.1))
    with pytest.raises(TypeError, match="layer_norm: expected a bool"):
        GRU(I, H, layer_norm=1)


def test_stacked_rnn_add_layer_takes_them():
    net = StackedRNN(I).add_layer("cerebral", H, recurrent_dropout=0.2, layer_norm=True).add_layer(
        "lstm", H, weight_dropout=0.3)
    y, _ = net(torch.randn(T, B, I))
    assert y.shape == (T, B, H) and net.layers[0].regularisers.layer_norm
    assert "layer_norm=True" in repr(net.layers[0])


# ---- recurrent dropout and zoneout on the native backend (forward and BPTT in C++) ------------------------------

NATIVE_REGS = {"recurrent": {"recurrent_dropout": 0.3},
               "recurrent+weight": {"recurrent_dropout": 0.3, "weight_dropout": 0.4},
               "zoneout": {"zoneout": 0.3},
               "zoneout-c-only": {"zoneout": (0.0, 0.4)},
               "zoneout-h-c": {"zoneout": (0.3, 0.2)},
               "all-but-layer-norm": {"zoneout": 0.25, "recurrent_dropout": 0.3, "weight_dropout": 0.2},
               "layer-norm": {"layer_norm": True},
               "layer-norm+zoneout-h-c": {"layer_norm": True, "zoneout": (0.3, 0.2)},
               "all": {"zoneout": 0.25, "recurrent_dropout": 0.3, "weight_dropout": 0.2, "layer_norm": True}}
NATIVE_CASES = [(kind, K, reg) for kind, K in [("lstm", 1), ("lstm", 2), ("lstm", 3), ("peephole", 2), ("gru", 1),
                                              ("gru", 3)]
                for reg in NATIVE_REGS
                if kind != "gru" or not isinstance(NATIVE_REGS[reg].get("zoneout"), tuple)]  # the GRU has no c


@pytest.mark.parametrize("kind,K,reg", NATIVE_CASES, ids=[f"{k}-K{n}-{r}" for k, n, r in NATIVE_CASES])
def test_native_step_regularisers_equal_the_transcription_with_the_drawn_masks(kind, K, reg):
    skip_unless_native()
    reg = NATIVE_REGS[reg]
    torch.manual_seed(0)
    m = KINDS[kind](I, H, num_paths=K, dtype=torch.float64, backend="native", **reg)
    with torch.no_grad():  # non-trivial layer-norm gains and shifts
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    c0 = torch.randn(1, B, K * H, dtype=torch.float64) if kind != "gru" else None
    torch.manual_seed(7)
    masks = m.draw_masks(T, B)
    for grad in (True, False):  # the training function and the inference loop (no autograd), both in training
        torch.manual_seed(7)
        with torch.set_grad_enabled(grad):
            y, state = m(x, (h0, c0) if c0 is not None else h0)
        assert m.last_backend == "native"
        want, (h, c) = _oracle(kind, K, m, x, masks, training=True, h0=h0[0], c0=c0[0] if c0 is not None else None)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close((state[0] if isinstance(state, tuple) else state)[0], h, rtol=1e-10, atol=1e-12)
        if c is not None:
            torch.testing.assert_close(state[1][0], c, rtol=1e-10, atol=1e-12)
    if "zoneout" in reg or "layer_norm" in reg:  # eval: zoneout's expectation, layer norm's inference loop
        m.eval()
        y, _ = m(x, (h0, c0) if c0 is not None else h0)
        assert m.last_backend == "native"
        want, _ = _oracle(kind, K, m, x, None, training=False, h0=h0[0], c0=c0[0] if c0 is not None else None)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "peephole", "gru"])
@pytest.mark.parametrize("form", ["dense", "bidirectional-two-layers", "eval"])
@pytest.mark.parametrize("gemm", [None, "addmm"], ids=["own-kernels", "addmm"])
def test_native_step_regularisers_gradcheck(kind, form, gemm, monkeypatch):
    skip_unless_native()
    from cerebral_rnn.backends import native

    monkeypatch.setattr(native.BACKEND, "gemm", gemm)
    kw = {"num_layers": 2, "bidirectional": True} if form != "dense" else {}
    zoneout = 0.3 if kind == "gru" else (0.3, 0.4)
    torch.manual_seed(0)
    m = KINDS[kind](3, 2, dtype=torch.float64, recurrent_dropout=0.4, zoneout=zoneout, backend="native",
                    num_paths=3, **kw)
    m.train(form != "eval")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):
        torch.manual_seed(3)  # the same masks at every evaluation
        y, _ = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        assert m.last_backend == "native"
        return y

    ps = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *ps), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "peephole", "gru"])
@pytest.mark.parametrize("form", ["dense", "bidirectional-two-layers", "eval", "with-dropout-and-zoneout"])
def test_native_layer_norm_gradcheck(kind, form):
    skip_unless_native()
    kw = {"num_layers": 2, "bidirectional": True} if form == "bidirectional-two-layers" else {}
    if form == "with-dropout-and-zoneout":
        kw.update(recurrent_dropout=0.4, zoneout=0.3 if kind == "gru" else (0.3, 0.4))
    torch.manual_seed(0)
    m = KINDS[kind](3, 4, dtype=torch.float64, layer_norm=True, backend="native", num_paths=2, **kw)
    m.train(form != "eval")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    LD = m.num_layers * m.num_directions
    h0 = torch.randn(LD, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(LD, 2, 8, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    assert any(n.startswith("ln_c") for n in names) == (kind != "gru")

    def f(x, h0, c0, *ps):
        torch.manual_seed(3)  # the same masks at every evaluation
        y, state = torch.func.functional_call(m, dict(zip(names, ps)), (x, h0 if kind == "gru" else (h0, c0)))
        assert m.last_backend == "native"
        return (y, *state) if isinstance(state, tuple) else (y, state)

    ps = [p.detach().clone().requires_grad_() for p in m.parameters()]
    if kind == "gru":
        c0 = c0.detach()  # (no c)
    assert torch.autograd.gradcheck(f, (x, h0, c0, *ps), eps=1e-6, atol=1e-6)


def test_native_layer_norm_two_threads_match_the_reference_loop():
    """Rows shared by two threads (the row passes of the forward and the BPTT); float32, bidirectional, every
    step regulariser."""
    skip_unless_native()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for cls in (CerebralLSTM, CerebralGRU):
            torch.manual_seed(0)
            m = cls(5, 24, bidirectional=True, recurrent_dropout=0.4, zoneout=0.2, layer_norm=True)
            x = torch.randn(7, 19, 5)
            res = {}
            for backend in ("native", "reference"):
                m.backend = backend
                m.zero_grad()
                torch.manual_seed(3)
                y, _ = m(x)
                y.square().sum().backward()
                res[backend] = [y.detach(), *(p.grad.clone() for p in m.parameters())]
            for got, want in zip(res["native"], res["reference"]):  # float32 rounding, to each tensor's scale
                torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cls", [CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU])
def test_native_layer_norm_inference_in_chunks_matches_the_reference_loop(cls):
    """Inference computes the input side a chunk of steps at a time (about 512 rows): 40 steps of 20 rows are
    two chunks, the second partial; both directions, in float64, with zoneout's eval expectation."""
    skip_unless_native()
    torch.manual_seed(0)
    m = cls(3, 5, bidirectional=True, num_layers=2, layer_norm=True, zoneout=0.3, dtype=torch.float64).eval()
    x = torch.randn(40, 20, 3, dtype=torch.float64)
    out = {}
    for backend in ("native", "reference"):
        m.backend = backend
        with torch.no_grad():
            out[backend] = m(x)
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = [(o[0], o[1] if isinstance(o[1], tuple) else (o[1], o[1]))
                                            for o in (out["native"], out["reference"])]
    for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):  # a named backend refuses what it cannot run
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU])
def test_native_layer_norm_second_backward_through_the_same_graph(cls):
    """The BPTT writes its gradients over the saved normalised products; a second backward (retain_graph=True)
    must still get every gradient right: against the reference loop, in float64, each backward on its own."""
    skip_unless_native()
    torch.manual_seed(0)
    m = cls(4, 6, layer_norm=True, zoneout=0.25, recurrent_dropout=0.3, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    grads = {}
    for backend in ("native", "reference"):
        m.backend = backend
        torch.manual_seed(7)
        y = m(x)[0]
        runs = []
        for w in (y.square().sum(), y.sin().sum()):  # two losses, one graph
            inputs = [x, *m.parameters()]
            runs.append(torch.autograd.grad(w, inputs, retain_graph=True))
        grads[backend] = runs
    for got_run, want_run in zip(grads["native"], grads["reference"]):
        for got, want in zip(got_run, want_run):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_native_step_regularisers_multithreaded_match_the_reference_loop():
    """Enough work per step for two threads (the masked h of the next step is written by whichever thread ends
    a unit block); float32, bidirectional."""
    skip_unless_native()
    from cerebral_rnn.backends import native

    torch.manual_seed(0)
    m = CerebralLSTM(5, 64, bidirectional=True, recurrent_dropout=0.4, zoneout=(0.2, 0.3))
    x = torch.randn(9, 16, 5)
    if torch.get_num_threads() > 1:
        assert native.BACKEND.plan(m.spec, x).threads > 1
    res = {}
    for backend in ("native", "reference"):
        m.backend = backend
        m.zero_grad()
        torch.manual_seed(3)
        y, _ = m(x)
        y.square().sum().backward()
        res[backend] = (y.detach(), m.weight_hh_l0.grad.clone(), m.weight_hh_l0_reverse.grad.clone())
    for got, want in zip(res["native"], res["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_auto_runs_every_step_regulariser_natively_and_packed_input_on_the_reference_loop():
    skip_unless_native()
    x = torch.randn(T, B, I)
    for reg in ({"weight_dropout": 0.5, "recurrent_dropout": 0.2}, {"zoneout": 0.1, "recurrent_dropout": 0.2}):
        m = CerebralLSTM(I, H, **reg)  # the AWD-style pair; zoneout
        m(x)
        assert m.last_backend == "native"
        m.eval()
        m(x)
        assert m.last_backend == "native"  # at eval: nothing (recurrent dropout), the expectation (zoneout)
    for reg in ({"layer_norm": True}, {"layer_norm": True, "zoneout": 0.1}):
        for cls in (CerebralLSTM, CerebralGRU, LSTM, GRU):
            m = cls(I, H, **reg)
            m(x)
            assert m.last_backend == "native"
            m.eval()
            m(x)
            assert m.last_backend == "native"
    m = CerebralLSTM(I, H, recurrent_dropout=0.2, layer_norm=True)
    m(pack_padded_sequence(x, [T, T - 1, 2]))  # packed input: native refuses, the reference loop runs it
    assert m.last_backend == "reference"
    with pytest.raises(ValueError, match="backend='native' cannot run this input: packed input"):
        CerebralLSTM(I, H, recurrent_dropout=0.2, backend="native")(pack_padded_sequence(x, [T, T - 1, 2]))


def test_masks_are_bernoulli_draws_with_the_asked_probability():
    """The masks' uniforms come two from each of the generator's 63-bit draws: the frequency of True is p, and
    neighbours (the two halves of one draw) are uncorrelated; 2^20 draws, 6 standard errors."""
    from cerebral_rnn.regularise import _below

    torch.manual_seed(0)
    n = 1 << 20
    for p in (0.05, 0.3, 0.5, 0.9):
        m = _below((n,), p, "cpu").double()
        se = (p * (1 - p) / n) ** 0.5
        assert abs(float(m.mean()) - p) < 6 * se
        pairs = m.view(-1, 2)
        cov = float((pairs[:, 0] * pairs[:, 1]).mean()) - p * p
        assert abs(cov) < 6 * p * (1 - p) / (n / 2) ** 0.5
    assert _below((3, 5), 0.5, "cpu").shape == (3, 5)
    assert _below((7,), 0.5, "cpu").dtype == torch.bool
