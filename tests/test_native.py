"""The ``native`` backend (compiled forward and BPTT) against the ``reference`` backend and gradcheck.

Every cell kind it computes (LSTM, peephole LSTM, GRU) with 1-3 paths: outputs, final states and the gradients of
the input, the initial states and every parameter, in float32 (within 1e-5 of the reference's largest magnitude)
and float64 (1e-12); ``torch.autograd.gradcheck`` of its autograd Function; every GEMM route of the recurrence;
identical paths staying bitwise identical under Adam; refusals and the fallback when the extension cannot be
built. The extension is built on first use (tens of seconds the first time, then loaded from torch's extensions
cache); every test here is skipped, with the build error as the reason, where it cannot be built (and fails
with it under ``CEREBRAL_RNN_REQUIRE_NATIVE=1``, as CI runs it).
"""

from __future__ import annotations

import pytest
import torch
from helpers import skip_unless_native
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM
from cerebral_rnn.backends import BACKENDS, native, select_backend


@pytest.fixture(autouse=True)
def _native_built():
    """Every test here needs the extension: skipped with the build error where it cannot be built, failed with
    it under CEREBRAL_RNN_REQUIRE_NATIVE=1 (CI)."""
    skip_unless_native()


CLASSES = {"lstm": CerebralLSTM, "peephole": CerebralPeepholeLSTM, "gru": CerebralGRU}
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def make(kind="lstm", input_size=4, hidden_size=16, num_layers=1, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return CLASSES[kind](input_size, hidden_size, num_layers, dtype=dtype, **kw)


def random_state(m, batch: int, seed: int = 2):
    """Random initial states for ``m``: (h_0,) or (h_0, c_0) with c_0 K*H wide."""
    g = torch.Generator().manual_seed(seed)
    LD, H, dtype = m.num_layers * (2 if m.bidirectional else 1), m.hidden_size, m.weight_ih_l0.dtype
    hx = [torch.randn(LD, batch, H, generator=g, dtype=dtype)]
    if m.kind.has_cell:
        hx.append(torch.randn(LD, batch, m.num_paths * H, generator=g, dtype=dtype))
    return tuple(hx)


def run(m, backend: str, x, hx=None, grad: bool = True, seed: int = 0):
    """One forward (and backward of a loss weighing every output differently) with ``backend``: outputs, final
    states and every gradient, by name."""
    m.backend = backend
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(grad)
    if hx is not None:
        hx = tuple(s.detach().clone().requires_grad_(grad) for s in hx)
    torch.manual_seed(seed)
    with torch.set_grad_enabled(grad):
        out, states = m(x, hx if hx is None or len(hx) > 1 else hx[0])
    states = states if isinstance(states, tuple) else (states,)
    res = {"output": out, **{f"state {i}": s for i, s in enumerate(states)}, "backend": m.last_backend}
    if not grad:
        return res
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=out.dtype)).sum()
    loss.backward()
    res["grad input"] = x.grad
    for i, s in enumerate(hx or ()):
        res[f"grad state {i}"] = s.grad
    for name, p in m.named_parameters():
        res["grad " + name] = p.grad
    return res


def assert_rel(got: dict, want: dict, tol: float) -> None:
    """Each tensor within ``tol`` of the reference, relative to the reference's largest magnitude."""
    assert got.keys() == want.keys()
    for key, ref in want.items():
        val = got[key]
        if not isinstance(ref, torch.Tensor):
            continue
        assert val is not None and val.shape == ref.shape, key
        scale = max(ref.abs().max().item(), 1e-3)
        err = (val - ref).abs().max().item()
        assert err <= tol * scale, f"{key}: max error {err:.3g} > {tol} x {scale:.3g}"


def check(m, x, hx, tol, grad=True):
    want = run(m, "reference", x, hx, grad)
    got = run(m, "native", x, hx, grad)
    assert got.pop("backend") == "native"
    want.pop("backend")
    assert_rel(got, want, tol)


# ------------------------------------------------------------------------------------------------------------
# Against the reference: every kind, 1-3 paths, hidden sizes that are and are not multiples of the vector width
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("paths", [1, 2, 3])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("batch_first,with_state", [(False, False), (False, True), (True, False), (True, True)])
def test_training_matches_reference(kind, paths, num_layers, bidirectional, batch_first, with_state):
    for H in (1, 5, 16, 24):
        m = make(kind, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 num_paths=paths, seed=H)
        T, B = 5, 3
        x = torch.randn(B, T, 4) if batch_first else torch.randn(T, B, 4)
        check(m, x, random_state(m, B) if with_state else None, 1e-5)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("paths", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_reference(kind, paths, bias):
    for H in (5, 24):
        m = make(kind, hidden_size=H, num_layers=2, bidirectional=True, num_paths=paths, bias=bias,
                 dtype=torch.float64)
        x = torch.randn(6, 4, 4, dtype=torch.float64)
        check(m, x, random_state(m, 4), 1e-12)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_hidden_128_and_a_long_batch(kind):
    """H = 128 (several vector blocks per thread) and T x B beyond one inference chunk of the input projection."""
    m = make(kind, hidden_size=128, bidirectional=True)
    x = torch.randn(40, 9, 4)  # 360 rows > chunk_rows: several chunks in inference
    hx = random_state(m, 9)
    check(m, x, hx, 1e-5)
    check(m, x, hx, 1e-5, grad=False)


@pytest.fixture(params=["own", "addmm", "onednn"])
def gemm(request, monkeypatch):
    """Each route of the recurrent GEMM: the fused own kernels, at::addmm, oneDNN packed (float32)."""
    monkeypatch.setattr(native.BACKEND, "gemm", request.param)
    return request.param


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_gemm_route_matches_reference(kind, grad, dtype, gemm):
    m = make(kind, hidden_size=20, num_layers=2, bidirectional=True, num_paths=2, dtype=dtype)
    x = torch.randn(7, 5, 4, dtype=dtype)
    check(m, x, random_state(m, 5), TOL[dtype], grad=grad)


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("B", [1, 6, 70])
def test_inference_matches_reference(kind, B):
    m = make(kind, hidden_size=24, num_layers=2, bidirectional=True, num_paths=3).eval()
    x = torch.randn(8, B, 4)
    check(m, x, random_state(m, B), 1e-5, grad=False)


def test_unbatched_input_and_expanded_state():
    m = make("lstm", hidden_size=16, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4)
    hx = (torch.randn(4, 16), torch.randn(1, 32).expand(4, 32))  # an expanded (stride 0) c_0
    check(m, x, hx, 1e-5)


def test_large_gate_values_saturate():
    """Pre-activations far outside the exp argument range give 0/1 gates, not inf or NaN, forward and backward.

    Weights x 300 make pre-activations sums of terms of ~1e3: a pre-activation that cancels to near 0 carries an
    absolute rounding error of ~1e-4 in any summation order, so the values are compared at 1e-4; the gradients at
    1e-3, because at a gate within an ulp of 1 the factor s (1 - s) of its derivative depends on the last bit of s
    (in the reference as here)."""
    for kind in CLASSES:
        m = make(kind, hidden_size=16)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(300.0)
        x = torch.randn(8, 4, 4) * 10
        got, want = run(m, "native", x), run(m, "reference", x)
        assert all(torch.isfinite(v).all() for v in got.values() if isinstance(v, torch.Tensor)), kind
        got.pop("backend"), want.pop("backend")
        values = [k for k in want if not k.startswith("grad")]
        assert_rel({k: got[k] for k in values}, {k: want[k] for k in values}, 1e-4)
        assert_rel(got, want, 1e-3)


@pytest.mark.parametrize("B", [3, 64])  # rows split in blocks; hidden units split across threads
def test_two_threads_match_reference(B):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # conftest runs everything else on one thread
    try:
        for kind in CLASSES:
            m = make(kind, hidden_size=64, num_layers=2, bidirectional=True)
            x = torch.randn(6, B, 4)
            check(m, x, random_state(m, B), 1e-5)
            check(m, x, random_state(m, B), 1e-5, grad=False)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------------
# The autograd Function: gradcheck, partial requires_grad, retain_graph
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradcheck(kind, bias, bidirectional):
    m = make(kind, input_size=2, hidden_size=3, bidirectional=bidirectional, num_paths=2, bias=bias,
             dtype=torch.float64)
    T, B = 3, 2
    x = torch.randn(T, B, 2, dtype=torch.float64, requires_grad=True)
    hx = [s.requires_grad_() for s in random_state(m, B)]
    h0 = hx[0]
    c0 = hx[1] if m.kind.has_cell else None
    flat = []
    for w in m.layer_weights(0):
        flat += [w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.peephole]
    plan = native.BACKEND.plan(m.spec, x)
    inputs = (x, h0, c0, *flat)

    def fn(x, h0, c0, *flat):
        return native.NativeFunction.apply(plan, native.NO_STEP_ARGS, x, h0, c0, *flat)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_frozen_weights_learnable_state(kind):
    """Only the initial state requires grad: backward gives h_0 (and c_0) their gradients and nothing else."""
    m = make(kind, hidden_size=8, num_layers=2, bidirectional=True)
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(5, 3, 4)
    hx = [s.requires_grad_() for s in random_state(m, 3)]
    out, _ = m(x, tuple(hx) if len(hx) > 1 else hx[0])
    assert m.last_backend == "native"
    out.square().sum().backward()
    got = [s.grad.clone() for s in hx]
    assert all(p.grad is None for p in m.parameters())
    m.backend = "reference"
    ref = [s.detach().clone().requires_grad_() for s in hx]
    out, _ = m(x, tuple(ref) if len(ref) > 1 else ref[0])
    out.square().sum().backward()
    for g, r in zip(got, ref):
        assert (g - r.grad).abs().max() <= 1e-5 * r.grad.abs().max()


def test_only_the_input_requires_grad():
    m = make("gru", hidden_size=8)
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(5, 3, 4, requires_grad=True)
    m(x)[0].sum().backward()
    assert m.last_backend == "native" and x.grad is not None
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("kind", list(CLASSES))
def test_backward_twice_with_retain_graph(kind):
    m = make(kind, hidden_size=8, bidirectional=True, backend="native")
    x = torch.randn(5, 3, 4, requires_grad=True)
    out, _ = m(x)
    out.sum().backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in m.named_parameters()}
    gx = x.grad.clone()
    out.sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[n], rtol=0, atol=0)
    torch.testing.assert_close(x.grad, 2 * gx, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# Symmetry: identical paths stay bitwise identical in training
# ------------------------------------------------------------------------------------------------------------


def _paths_equal(t: torch.Tensor, K: int) -> bool:
    parts = t.chunk(K, dim=0)
    return all(torch.equal(parts[0], p) for p in parts[1:])


@pytest.mark.parametrize("backend", ["auto", "native"])
@pytest.mark.parametrize("H", [1, 4, 5, 24, 128])
@pytest.mark.parametrize("num_layers,dropout", [(1, 0.0), (2, 0.5)])
def test_identical_paths_stay_identical_under_adam(backend, H, num_layers, dropout):
    m = make("lstm", input_size=3, hidden_size=H, num_layers=num_layers, bidirectional=True, dropout=dropout,
             init="identical", backend=backend).train()
    _train_identical(m, backend)


@pytest.mark.parametrize("kind", ["peephole", "gru"])
@pytest.mark.parametrize("H", [5, 24])
def test_identical_paths_of_every_kind(kind, H):
    m = make(kind, input_size=3, hidden_size=H, num_layers=2, bidirectional=True, dropout=0.5, num_paths=3,
             init="identical", backend="native").train()
    _train_identical(m, "native")


def _train_identical(m, backend: str) -> None:
    K = m.num_paths
    D = 2 if m.bidirectional else 1
    head = torch.nn.Linear(D * m.hidden_size, 1)
    opt = torch.optim.Adam(list(m.parameters()) + list(head.parameters()), lr=0.05)
    gen = torch.Generator().manual_seed(7)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(20):
        x = torch.randn(6, 8, 3, generator=gen)
        target = torch.randn(6, 8, 1, generator=gen)
        out, states = m(x)
        assert m.last_backend == "native"
        states = states if isinstance(states, tuple) else (states,)
        loss = ((head(out) - target) ** 2).mean() + 0.1 * states[-1].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for name, p in m.named_parameters():
            assert _paths_equal(p.grad, K), name
        opt.step()
    for name, p in m.named_parameters():
        assert not torch.equal(p, before[name]), name  # it did train
        assert _paths_equal(p.detach(), K), name
    if m.kind.has_cell:
        with torch.no_grad():
            _, (_, c) = m(torch.randn(6, 8, 3, generator=gen))
        H = m.hidden_size
        assert all(torch.equal(c[..., :H], c[..., k * H:(k + 1) * H]) for k in range(1, K))


# ------------------------------------------------------------------------------------------------------------
# What it refuses, how "auto" uses it, and what happens without a compiler
# ------------------------------------------------------------------------------------------------------------


def test_refuses_what_it_cannot_compute():
    b = BACKENDS["native"]
    m = make("lstm", hidden_size=16)
    x = torch.randn(4, 3, 4)
    spec, weights = m.spec, m.layer_weights(0)
    states = (torch.zeros(1, 3, 16), torch.zeros(1, 3, 32))
    assert b.supports(spec, x, None, weights, states) is None  # training: parameters require grad
    assert "packed" in b.supports(spec, x.view(-1, 4), torch.tensor([4, 4, 4]), weights, states)
    assert "float32 or float64" in b.supports(spec, x.half(), None, weights, states)
    m.backend = "native"
    with pytest.raises(ValueError, match="backend='native'.*packed"):
        m(pack_padded_sequence(x, [4, 2, 1]))
    half = make("lstm", hidden_size=16, dtype=torch.float16, backend="native")
    with pytest.raises(ValueError, match="backend='native'.*float16"):
        half(x.half())
    proj = CerebralLSTM(4, 16, proj_size=8, backend="native")
    with pytest.raises(ValueError, match="backend='native'.*proj_size"):
        proj(x)


@pytest.mark.parametrize("B", [1, 64])
def test_auto_picks_native_for_training_and_inference(B):
    for kind in CLASSES:
        m = make(kind, hidden_size=64)
        x = torch.randn(3, B, 4)
        m(x)
        assert m.last_backend == "native", kind
        with torch.no_grad():
            m(x)
        assert m.last_backend == "native", kind
    m = make("lstm", hidden_size=64, init="identical")  # identical paths: native keeps them identical
    m(torch.randn(3, B, 4))
    assert m.last_backend == "native"
    with torch.no_grad():
        m(pack_padded_sequence(torch.randn(3, B, 4), [3] * B))
    assert m.last_backend != "native"
    states = (torch.zeros(1, B, 64), torch.zeros(1, B, 128))
    assert select_backend("auto", m.spec, x, None, m.layer_weights(0), states).name == "native"


def test_build_failure_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", "the C++ extension could not be built: no compiler")
    monkeypatch.setattr(native, "_WARNED", True)  # the warning itself: test_native_build.py
    m = make("lstm", hidden_size=16)
    x = torch.randn(2, 3, 4)
    reason = BACKENDS["native"].supports(m.spec, x, None, m.layer_weights(0), (torch.zeros(1, 3, 16),) * 2)
    assert "could not be built" in reason
    want = run(m, "reference", x)
    got = run(m, "auto", x)
    assert got.pop("backend") not in ("native", "reference")  # auto falls back to another fast backend
    want.pop("backend")
    assert_rel(got, want, 1e-5)
    m.backend = "native"
    with pytest.raises(ValueError, match="backend='native'.*could not be built"):
        m(x)


def test_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", None)
    monkeypatch.setenv("CEREBRAL_RNN_NATIVE", "0")
    assert not native.available()
    assert "CEREBRAL_RNN_NATIVE=0" in native.unavailable_reason()


def test_build_flags_follow_aten_capability():
    assert "-DCPU_CAPABILITY_AVX512" in native.build_flags("AVX512") or not native._X86
    assert "-march=x86-64-v3" in native.build_flags("AVX2") or not native._X86
    generic = native.build_flags("DEFAULT")
    assert not any(f.startswith(("-march", "-DCPU_CAPABILITY_")) for f in generic)
    assert native._EXT.capability() == (native.capability() if native.capability() in ("AVX512", "AVX2")
                                        else "DEFAULT")
    # what benchmarks record as the build's target: the loaded extension's
    assert native.BUILD_TARGET == native.build_target()
    if native._X86:
        expected = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}.get(native.capability(), "generic")
        assert native.BUILD_TARGET.startswith(expected)
