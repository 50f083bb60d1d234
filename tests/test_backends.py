"""Every fast backend against the ``reference`` backend (the time loop over cells.py's step functions).

Outputs, final states and the gradients of the input, h_0, c_0 and every parameter are compared. The
reference is independent of the code under test: a plain loop over ``cerebral_lstm_pointwise`` with autograd.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_states, skip_unless_native
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cerebral_rnn import CerebralLSTM
from cerebral_rnn.backends import BACKENDS, available_backends, lstm2h, native
from cerebral_rnn.kinds import KINDS
from cerebral_rnn.layout import DirectionWeights, LayerSpec

FAST = ["lstm2h"]  # native: tests/test_native.py
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def run(module: CerebralLSTM, backend: str, x, hx=None, packed_lengths=None, seed: int = 0):
    """One forward/backward with ``backend``; returns the outputs, states and every gradient, by name."""
    module.backend = backend
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    if hx is not None:
        hx = tuple(s.detach().clone().requires_grad_() for s in hx)
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, batch_first=module.batch_first, enforce_sorted=False)
    torch.manual_seed(seed)
    out, (h_n, c_n) = module(inp, hx)
    if packed_lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=module.batch_first)
    g = torch.Generator().manual_seed(1)
    # A loss that weighs every output and both final states differently.
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (h_n * torch.randn(h_n.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (c_n * torch.randn(c_n.shape, generator=g, dtype=out.dtype)).sum()
    loss.backward()
    res = {"output": out, "h_n": h_n, "c_n": c_n, "grad input": x.grad}
    if hx is not None:
        res["grad h_0"], res["grad c_0"] = hx[0].grad, hx[1].grad
    for name, p in module.named_parameters():
        res["grad " + name] = p.grad
    res["backend"] = module.last_backend
    return res


def assert_rel(got: dict, want: dict, tol: float) -> None:
    """Each tensor within ``tol`` of the reference, relative to the reference's largest magnitude."""
    for key, ref in want.items():
        if key == "backend":
            continue
        val = got[key]
        assert val is not None and val.shape == ref.shape, key
        scale = max(ref.abs().max().item(), 1e-3)
        err = (val - ref).abs().max().item()
        assert err <= tol * scale, f"{key}: max error {err:.3g} > {tol} x {scale:.3g}"


def make(input_size=5, hidden_size=16, num_layers=1, dtype=torch.float32, seed=0, **kw) -> CerebralLSTM:
    torch.manual_seed(seed)
    return CerebralLSTM(input_size, hidden_size, num_layers, dtype=dtype, **kw)


states = random_states


# ------------------------------------------------------------------------------------------------------------
# float32, fixed cases: every backend to 1e-5 relative
# ------------------------------------------------------------------------------------------------------------

CASES = [
    {"num_layers": 1},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 2, "batch_first": True},
    {"num_layers": 1, "bias": False, "bidirectional": True},
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("with_state", [False, True])
def test_float32_matches_reference(backend, kw, with_state):
    m = make(**kw)
    T, B = 17, 20
    x = torch.randn(B, T, 5) if m.batch_first else torch.randn(T, B, 5)
    hx = states(m, B) if with_state else None
    want = run(m, "reference", x, hx)
    got = run(m, backend, x, hx)
    assert got["backend"] == backend
    assert_rel(got, want, 1e-5)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("T,B", [(40, 20), (3, 1), (700, 1)])  # inference projects in chunks of 512 rows
def test_inference_matches_reference(backend, bidirectional, T, B):
    m = make(num_layers=2, bidirectional=bidirectional).eval()
    x = torch.randn(T, B, 5)
    hx = states(m, B)
    with torch.no_grad():
        m.backend = "reference"
        want = m(x, hx)
        m.backend = backend
        got = m(x, hx)
    assert m.last_backend == backend
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert_rel({"t": a}, {"t": b}, 1e-5)


def test_unbatched_input():
    m = make(num_layers=2)
    x = torch.randn(9, 5)
    want = run(m, "reference", x)
    for backend in FAST:
        assert_rel(run(m, backend, x), want, 1e-5)


def test_lstm2h_packed_matches_reference():
    m = make(num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 11, 5)
    lengths = [11, 3, 7, 1]
    hx = states(m, 4)
    want = run(m, "reference", x, hx, packed_lengths=lengths)
    got = run(m, "lstm2h", x, hx, packed_lengths=lengths)
    assert_rel(got, want, 1e-5)


def test_frozen_parameters_and_input_without_grad():
    """Only some inputs need gradients: the Function must still give those right (needs_input_grad)."""
    m = make(num_layers=2, bidirectional=True)
    for name, p in m.named_parameters():
        p.requires_grad_(name.endswith("_l1"))
    x = torch.randn(12, 16, 5)
    m.backend = "reference"
    m(x)[0].pow(2).sum().backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m.zero_grad(set_to_none=True)
    skip_unless_native()
    m.backend = "native"
    m(x)[0].pow(2).sum().backward()
    assert m.last_backend == "native"
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert_rel({n: p.grad}, {n: want[n]}, 1e-5)
        else:
            assert p.grad is None


def test_native_backward_twice_with_retain_graph():
    skip_unless_native()
    m = make()
    x = torch.randn(8, 16, 5)
    m.backend = "reference"
    m(x)[0].sum().backward()
    want = m.weight_hh_l0.grad.clone()
    m.zero_grad(set_to_none=True)
    m.backend = "native"
    y = m(x)[0].sum()
    y.backward(retain_graph=True)
    y.backward()
    assert_rel({"w": m.weight_hh_l0.grad}, {"w": 2 * want}, 1e-5)


# ------------------------------------------------------------------------------------------------------------
# float64: gradcheck of each backend's layer function (all inputs and parameters at once)
# ------------------------------------------------------------------------------------------------------------


SPEC2 = LayerSpec(KINDS["lstm"], 2, 2)  # the paper's cell, H = 2


def _layer_inputs(D: int, bias: bool, T=4, B=3, I=3, H=2):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.7).requires_grad_()

    weights = [(r(8 * H, I), r(8 * H, H), r(8 * H) if bias else None, r(8 * H) if bias else None) for _ in range(D)]
    return r(T, B, I), r(D, B, H), r(D, B, 2 * H), weights


def _as_weights(flat, template):
    """Rebuild DirectionWeights from a flat list of tensors, following ``template``'s None entries."""
    it = iter(flat)
    return [DirectionWeights(*(next(it) if w is not None else None for w in ws0)) for ws0 in template]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("D,bias", [(1, True), (2, True), (2, False)])
def test_gradcheck_float64(backend, D, bias):
    x, h0, c0, weights = _layer_inputs(D, bias)
    flat = [w for ws in weights for w in ws if w is not None]
    impl = BACKENDS[backend]

    def fn(x, h0, c0, *flat):
        y, (h_n, c_n) = impl.forward_layer(SPEC2, x, (h0, c0), _as_weights(flat, weights), None)
        return y, h_n, c_n

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *flat))


def test_gradcheck_lstm2h_packed():
    x, h0, c0, weights = _layer_inputs(2, True, T=4, B=3)
    batch_sizes = torch.tensor([3, 2, 2, 1])
    data = x[:, :3].detach()
    data = torch.cat([data[t, : int(b)] for t, b in enumerate(batch_sizes)]).requires_grad_()
    flat = [w for ws in weights for w in ws]

    def fn(data, h0, c0, *flat):
        y, (h_n, c_n) = lstm2h.BACKEND.forward_layer(SPEC2, data, (h0, c0), _as_weights(flat, weights),
                                                     batch_sizes)
        return y, h_n, c_n

    assert torch.autograd.gradcheck(fn, (data, h0, c0, *flat))


# ------------------------------------------------------------------------------------------------------------
# Property test: random shapes, layers, directions, layouts, packed lengths, initial states
# ------------------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    T=st.integers(1, 50), B=st.integers(1, 8), I=st.integers(1, 6), H=st.sampled_from([1, 2, 5, 16]),
    num_layers=st.integers(1, 2), bidirectional=st.booleans(), batch_first=st.booleans(), bias=st.booleans(),
    packed=st.booleans(), with_state=st.booleans(), seed=st.integers(0, 2**16), data=st.data(),
)
def test_property_all_backends_match_reference(T, B, I, H, num_layers, bidirectional, batch_first, bias, packed,
                                               with_state, seed, data):
    m = make(I, H, num_layers, dtype=torch.float64, seed=seed, bidirectional=bidirectional,
             batch_first=batch_first, bias=bias)
    torch.manual_seed(seed + 1)
    x = torch.randn(B, T, I, dtype=torch.float64) if batch_first else torch.randn(T, B, I, dtype=torch.float64)
    lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if packed else None
    hx = states(m, B, seed) if with_state else None
    want = run(m, "reference", x, hx, lengths)
    for backend in ["auto", *FAST]:
        got = run(m, backend, x, hx, lengths)
        assert_rel(got, want, 1e-9)


# ------------------------------------------------------------------------------------------------------------
# "auto": what it picks, and that it falls back to a backend that computes the case exactly
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_native(monkeypatch):
    """The order "auto" falls back to where the compiled "native" backend (tried first on the CPU, tested in
    tests/test_native.py) is unavailable."""
    monkeypatch.setattr(BACKENDS["native"], "supports", lambda *args: "not built")


@pytest.mark.parametrize("B", [1, 256])
def test_auto_without_native_runs_the_vendor_kernel_on_cpu(no_native, B):
    m = make(hidden_size=64)
    m(torch.randn(2, B, 5))
    assert m.last_backend == "lstm2h"
    with torch.no_grad():
        m(torch.randn(2, B, 5))
    assert m.last_backend == "lstm2h"


@pytest.mark.parametrize("H", [16, 6])
def test_auto_runs_packed_input_through_the_vendor_kernel(H):
    m = make(hidden_size=H, num_layers=2, bidirectional=True)
    x = torch.randn(6, 20, 5)
    lengths = torch.randint(1, 7, (20,))
    want = run(m, "reference", x, packed_lengths=lengths)
    got = run(m, "auto", x, packed_lengths=lengths)
    assert got["backend"] == "lstm2h"
    assert_rel(got, want, 1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_backends_that_interleave_paths_refuse_identical_paths(backend):
    m = make(hidden_size=16, init="identical", backend=backend)
    with pytest.raises(ValueError, match=f"backend='{backend}'.*paths are identical"):
        m(torch.randn(2, 256, 5))
    with torch.no_grad():  # the refusal reads the parameters now: once the paths differ, it runs
        m.weight_hh_l0[0, 0] += 1.0
    m(torch.randn(2, 256, 5))
    assert m.last_backend == backend


@pytest.mark.parametrize("packed", [False, True])
def test_auto_keeps_identical_paths_bitwise_identical(packed):
    """With init="identical" the upper and lower gradients are equal, bit for bit."""
    H, B = 16, 256  # "native" takes dense input (if built), "lstm2h" would take packed input
    m = make(hidden_size=H, num_layers=2, bidirectional=True, init="identical")
    x = torch.randn(5, B, 5)
    inp = pack_padded_sequence(x, torch.randint(1, 6, (B,)), enforce_sorted=False) if packed else x
    out, (_, c_n) = m(inp)
    assert m.last_backend != "lstm2h"
    y = pad_packed_sequence(out)[0] if packed else out
    ((y * torch.randn(y.shape)).sum() + c_n.square().sum()).backward()  # a loss symmetric in the paths
    for name, p in m.named_parameters():
        assert torch.equal(p.grad[: 4 * H], p.grad[4 * H:]), name
    assert torch.equal(c_n[..., :H], c_n[..., H:])


def test_auto_float64_is_exact(no_native):
    m = make(hidden_size=16, dtype=torch.float64, num_layers=2)
    x = torch.randn(4, 256, 5, dtype=torch.float64)
    want = run(m, "reference", x)
    got = run(m, "auto", x)
    assert got["backend"] == "lstm2h"
    assert_rel(got, want, 1e-12)


def test_auto_float16_and_autocast_run_where_the_kernels_can():
    """float16 and CPU autocast never reach "native" (float32/64 only); they run wherever torch's LSTM kernel
    can run them on this CPU (a one-time probe), else on the reference loop -- never a oneDNN error."""
    B = 64
    m = make(hidden_size=64, dtype=torch.float16)
    x = torch.randn(2, B, 5)
    m(x.half())
    assert m.last_backend in ("lstm2h", "reference")
    m = make(hidden_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x)
    assert y.dtype == torch.bfloat16 and m.last_backend in ("lstm2h", "reference")
    m(x)
    assert m.last_backend == ("native" if native.available() else "lstm2h")


def test_auto_falls_back_to_reference_where_nothing_else_runs():
    m = make(device="meta")
    out, (_, c_n) = m(torch.empty(5, 20, 5, device="meta"))
    assert m.last_backend == "reference"
    assert out.shape == (5, 20, 16) and c_n.shape == (1, 20, 32)


def test_explicit_backend_that_cannot_run_raises():
    m = make(backend="native")
    x = pack_padded_sequence(torch.randn(4, 3, 5), [4, 2, 1])
    with pytest.raises(ValueError, match="backend='native'.*packed"):
        m(x)


def test_backend_names():
    assert set(available_backends()) == {"auto", "reference", "lstm2h", "native"}
    assert "lstm2h" not in available_backends("gru")
    with pytest.raises(ValueError, match="lstm2h"):
        CerebralLSTM(3, 4, backend="cudnn")
    with pytest.raises(TypeError, match="backend"):
        CerebralLSTM(3, 4, backend=None)


def test_backends_share_state_dict():
    m = make(num_layers=2, bidirectional=True)
    keys = {k: v.clone() for k, v in m.state_dict().items()}
    for backend in FAST:
        run(m, backend, torch.randn(4, 16, 5))
        assert m.state_dict().keys() == keys.keys()
        assert all(torch.equal(m.state_dict()[k], v) for k, v in keys.items())


# ------------------------------------------------------------------------------------------------------------
# Dropout is drawn by the layer, so every backend sees the same noise under the same seed
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", *FAST])
def test_dropout_identical_across_backends(backend):
    m = make(num_layers=3, dropout=0.5, bidirectional=True).train()
    x = torch.randn(6, 16, 5)
    want = run(m, "reference", x, seed=123)
    got = run(m, backend, x, seed=123)
    assert_rel(got, want, 1e-5)
    other = run(m, backend, x, seed=124)  # and the noise is really there
    assert not torch.allclose(other["output"], want["output"])


# ------------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; the CPU tests above never depend on these)
# ------------------------------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_lstm2h_matches_reference(packed):
    m = make(num_layers=2, bidirectional=True, device="cuda")
    x = torch.randn(9, 4, 5, device="cuda")
    lengths = [9, 4, 6, 1] if packed else None
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want = run(m, "reference", x, packed_lengths=lengths)
        got = run(m, "auto", x, packed_lengths=lengths)
    assert got["backend"] == "lstm2h"
    assert_rel(got, want, 1e-5)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    m = make(num_layers=2, device="cuda")
    x = torch.randn(9, 4, 5, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        m.backend = "reference"
        want, _ = m(x)
        m.backend = "auto"
        with torch.autocast("cuda", dtype=dtype):
            got, _ = m(x)
            got.float().sum().backward()
    assert m.last_backend == "lstm2h"
    assert got.dtype in (dtype, torch.float32)  # whether cuDNN's LSTM runs in low precision is torch's call
    assert (got.float() - want).abs().max().item() < 3e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


def test_prepare_reports_the_optional_compiled_backend():
    from cerebral_rnn.backends import native, prepare

    ready = prepare()
    assert set(ready) == {"native"}
    assert (ready["native"] is None) == native.available()


def test_prepare_gives_the_reason_when_native_is_disabled():
    import os
    import subprocess
    import sys

    code = "import cerebral_rnn, json; print(json.dumps(cerebral_rnn.backends.prepare()))"
    env = {**os.environ, "CEREBRAL_RNN_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "disabled by CEREBRAL_RNN_NATIVE=0" in out.stdout
