"""The ``native`` backend (compiled C++ inference loop) against the ``reference`` backend.

The extension is built on first use (tens of seconds the first time, then loaded from torch's extensions
cache); every test here is skipped, with the build error as the reason, where it cannot be built.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_states
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import CerebralLSTM
from cerebral_rnn.backends import BACKENDS, native, select_backend

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"native extension unavailable: {native.unavailable_reason()}")


def make(input_size=5, hidden_size=16, num_layers=1, dtype=torch.float32, seed=0, **kw) -> CerebralLSTM:
    torch.manual_seed(seed)
    return CerebralLSTM(input_size, hidden_size, num_layers, dtype=dtype, **kw).eval()


states = random_states


def infer(m: CerebralLSTM, backend: str, x, hx=None):
    m.backend = backend
    with torch.no_grad():
        out, (h_n, c_n) = m(x, hx)
    return {"output": out, "h_n": h_n, "c_n": c_n}


def assert_rel(got: dict, want: dict, tol: float) -> None:
    """Each tensor within ``tol`` of the reference, relative to the reference's largest magnitude."""
    for key, ref in want.items():
        val = got[key]
        assert val.shape == ref.shape, key
        scale = max(ref.abs().max().item(), 1e-3)
        err = (val - ref).abs().max().item()
        assert err <= tol * scale, f"{key}: max error {err:.3g} > {tol} x {scale:.3g}"


@pytest.fixture(params=["small", "addmm", "onednn"])
def gemm(request, monkeypatch):
    """Each recurrent GEMM path of the backend, whatever the batch size."""
    b = native.BACKEND
    monkeypatch.setattr(b, "small_max_work", 1 << 30 if request.param == "small" else 0)
    monkeypatch.setattr(b, "onednn", request.param == "onednn")
    return request.param


@pytest.mark.parametrize("H", [16, 32, 48])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_reference(H, num_layers, bidirectional, batch_first, with_state, gemm):
    m = make(hidden_size=H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    T, B = 13, 6
    x = torch.randn(B, T, 5) if batch_first else torch.randn(T, B, 5)
    hx = states(m, B) if with_state else None
    want = infer(m, "reference", x, hx)
    got = infer(m, "native", x, hx)
    assert m.last_backend == "native"
    assert_rel(got, want, 1e-5)


@pytest.mark.parametrize("T,B", [(3, 1), (300, 5), (40, 70)])  # 300 x 5 > chunk_rows: several projection chunks
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference_default_paths(T, B, bias):
    m = make(hidden_size=64, num_layers=2, bidirectional=True, bias=bias)
    x = torch.randn(T, B, 5)
    hx = states(m, B)
    assert_rel(infer(m, "native", x, hx), infer(m, "reference", x, hx), 1e-5)


def test_float64_is_exact():
    m = make(hidden_size=32, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(9, 7, 5, dtype=torch.float64)
    hx = states(m, 7)
    assert_rel(infer(m, "native", x, hx), infer(m, "reference", x, hx), 1e-12)


def test_large_gate_values_saturate():
    """Pre-activations far outside the exp argument range give 0/1 gates, not inf or NaN."""
    m = make(hidden_size=16)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(300.0)
    x = torch.randn(8, 4, 5) * 10
    got, want = infer(m, "native", x), infer(m, "reference", x)
    assert all(torch.isfinite(v).all() for v in got.values())
    assert_rel(got, want, 1e-5)


def test_refuses_what_it_cannot_compute():
    b = BACKENDS["native"]
    m = make(hidden_size=16)
    x = torch.randn(4, 3, 5)
    spec, weights = m.spec, m.layer_weights(0)
    states = (torch.zeros(1, 3, 16), torch.zeros(1, 3, 32))
    assert "inference only" in b.supports(spec, x, None, weights, states)  # parameters require grad
    with torch.no_grad():
        assert b.supports(spec, x, None, weights, states) is None
        assert "packed" in b.supports(spec, x.view(-1, 5), torch.tensor([4, 4, 4]), weights, states)
        assert "float32 or float64" in b.supports(spec, x.half(), None, weights, states)
    identical = make(hidden_size=24, init="identical")
    with torch.no_grad(), pytest.raises(ValueError, match="paths are identical"):
        identical.backend = "native"
        identical(x)
    m.backend = "native"
    with pytest.raises(ValueError, match="backend='native'.*inference only"):
        m(x)
    with torch.no_grad(), pytest.raises(ValueError, match="backend='native'.*packed"):
        m(pack_padded_sequence(x, [4, 2, 1]))


def test_build_failure_is_remembered(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", "the C++ extension could not be built: no compiler")
    m = make(hidden_size=16)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        reason = BACKENDS["native"].supports(m.spec, x, None, m.layer_weights(0), (torch.zeros(1, 3, 16),) * 2)
        assert "could not be built" in reason
        m(x)
    assert m.last_backend == "lstm2h"  # auto falls back


def test_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", None)
    monkeypatch.setenv("CEREBRAL_RNN_NATIVE", "0")
    assert not native.available()
    assert "CEREBRAL_RNN_NATIVE=0" in native._ERROR


@pytest.mark.parametrize("B", [1, 64, 256])
def test_auto_picks_native_in_inference(B):
    m = make(hidden_size=64)
    x = torch.randn(3, B, 5)
    with torch.no_grad():
        m(x)
    assert m.last_backend == "native"
    m(x)  # autograd recording: never native
    assert m.last_backend != "native"
    with torch.no_grad():
        m(pack_padded_sequence(x, [3] * B))
    assert m.last_backend == "lstm2h"
    states = (torch.zeros(1, B, 64), torch.zeros(1, B, 128))
    with torch.no_grad():
        assert select_backend("auto", m.spec, x, None, m.layer_weights(0), states).name == "native"


def test_unbatched_input_and_expanded_state():
    m = make(hidden_size=16, num_layers=2, bidirectional=True)
    x = torch.randn(6, 5)
    hx = (torch.randn(4, 16), torch.randn(1, 32).expand(4, 32))  # an expanded (stride 0) c_0
    got = infer(m, "native", x, hx)
    assert m.last_backend == "native"
    assert_rel(got, infer(m, "reference", x, hx), 1e-5)


@pytest.mark.parametrize("B", [3, 64])  # the small-batch kernel and the pointwise pass split across threads
def test_two_threads_match_reference(B):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # conftest runs everything else on one thread
    try:
        H = 64
        m = make(hidden_size=H, num_layers=2, bidirectional=True)
        x = torch.randn(6, B, 5)
        hx = states(m, B)
        got = infer(m, "native", x, hx)
        assert m.last_backend == "native"
        assert_rel(got, infer(m, "reference", x, hx), 1e-5)
    finally:
        torch.set_num_threads(threads)
