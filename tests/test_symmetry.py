"""``init="identical"``: the paths of a layer stay bitwise identical under training, on any CPU.

With identical parameters every path of a Cerebral layer receives the same gradient at every step, so in exact
arithmetic the paths never separate. In floating point they stay identical only if every operation treats the
paths alike; the library promises it by construction (per-path matrix products and pointwise steps), and the
backends that cannot promise it (they interleave the paths in one kernel) refuse such layers. These tests train
for 20 Adam steps and compare the paths bit for bit, through ``auto`` and through every named backend that
accepts the case (a named backend that refuses is skipped with its reason; where the native extension cannot be
built its tests are skipped, and fail under CEREBRAL_RNN_REQUIRE_NATIVE=1). CI runs this file a second time
with the AVX2 code paths forced (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2).

H = 1, 4, 5, 24, 128: sizes whose gate blocks do and do not fill the 8- and 16-float SIMD registers.
"""

from __future__ import annotations

import pytest
import torch
from helpers import CELLS, LAYERS, skip_unless_native
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cerebral_rnn import (
    CerebralLSTM,
    available_backends,
)

PER_PATH = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "peephole")

# (kind, paths, H): every kind at the sizes that matter; the widest size only for the paper's cell
CASES = ([("lstm", 2, H) for H in (1, 4, 5, 24, 128)] + [("lstm", 3, H) for H in (1, 5, 24)]
         + [("peephole", 2, H) for H in (1, 5, 24)] + [("gru", 2, H) for H in (1, 4, 5, 24)])


def paths_equal(t: torch.Tensor, paths: int) -> bool:
    blocks = t.chunk(paths, dim=0)
    return all(torch.equal(blocks[0], b) for b in blocks[1:])


def per_path(name: str) -> bool:
    return name.split("_l")[0] in PER_PATH


def run(m, x, lengths):
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, state = m(inp)
    y = pad_packed_sequence(out, total_length=x.shape[0])[0] if lengths is not None else out
    c = state[1] if isinstance(state, tuple) else None
    return y, c


def train_and_check(m, paths: int, H: int, B: int, lengths_gen, steps: int = 20) -> None:
    head = torch.nn.Linear(m.hidden_size * m.num_directions, 1)
    opt = torch.optim.Adam(list(m.parameters()) + list(head.parameters()), lr=0.05)
    gen = torch.Generator().manual_seed(7)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for step in range(steps):
        x = torch.randn(6, B, 3, generator=gen)
        lengths = lengths_gen(gen) if lengths_gen is not None else None
        y, c = run(m, x, lengths)
        if step == 0 and m.backend != "auto":
            assert m.last_backend == m.backend
        loss = ((head(y) - torch.randn(6, B, 1, generator=gen)) ** 2).mean()
        if c is not None:
            loss = loss + 0.1 * c.pow(2).mean()  # symmetric in the paths
        opt.zero_grad()
        loss.backward()
        for name, p in m.named_parameters():
            if per_path(name):
                assert paths_equal(p.grad, paths), f"step {step}: grad of {name} differs between paths"
        opt.step()
    for name, p in m.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not train"
        if per_path(name):
            assert paths_equal(p.detach(), paths), f"{name} differs between paths after {steps} steps"
    if c is not None:  # every path's cell state is the same: h = K o tanh(c)
        assert paths_equal(c.detach().movedim(-1, 0), paths)


# The backends that run identical paths: auto, reference, and native on dense input. lstm2h refuses
# them (their shared kernels may round the paths differently) and native refuses packed input: both tested below.
RUNS = [(kind, paths, H, backend, packed) for kind, paths, H in CASES for packed in (False, True)
        for backend in ("auto", "reference", "native")
        if backend in available_backends(LAYERS[kind]) and not (backend == "native" and packed)]


@pytest.mark.parametrize("kind,paths,H,backend,packed", RUNS, ids=lambda v: str(v))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_identical_paths_stay_identical_under_adam(kind, paths, H, backend, packed, num_layers):
    B = 32 if H >= 24 else 12  # enough work per step that auto would consider its fast CPU kernels
    m = LAYERS[kind](3, H, num_layers=num_layers, bidirectional=True, dropout=0.3 if num_layers > 1 else 0.0,
                     num_paths=paths, init="identical", backend=backend)
    lengths = (lambda g: torch.randint(1, 7, (B,), generator=g).tolist()) if packed else None
    if backend == "native":
        skip_unless_native()
    train_and_check(m, paths, H, B, lengths)


@pytest.mark.parametrize("backend", ["lstm2h"])
@pytest.mark.parametrize("H", [5, 128])
def test_shared_kernel_backends_refuse_identical_paths(backend, H):
    m = CerebralLSTM(3, H, init="identical", backend=backend)
    with pytest.raises(ValueError, match=f"backend='{backend}' cannot run this input: the layer's paths are "
                                         "identical"):
        m(torch.randn(4, 32, 3))
    with torch.no_grad():  # paths no longer equal: nothing to keep identical, the backend runs the layer
        m.weight_hh_l0[0, 0] += 1e-3
    m(torch.randn(4, 32, 3))
    assert m.last_backend == backend


def test_native_refuses_packed_input_and_auto_falls_back():
    skip_unless_native()
    x = pack_padded_sequence(torch.randn(5, 3, 2), [5, 3, 1])
    with pytest.raises(ValueError, match="backend='native' cannot run this input: packed input is not supported"):
        CerebralLSTM(2, 4, backend="native")(x)
    m = CerebralLSTM(2, 4, init="identical")
    m(x)
    assert m.last_backend == "reference"


@pytest.mark.parametrize("kind", ["lstm", "peephole", "gru"])
@pytest.mark.parametrize("H", [1, 5, 24])
def test_identical_cell_paths_stay_identical(kind, H):
    m = CELLS[kind](3, H, init="identical")
    head = torch.nn.Linear(H, 1)
    opt = torch.optim.Adam(list(m.parameters()) + list(head.parameters()), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        state, loss = None, 0.0
        for _t in range(5):
            state = m(torch.randn(12, 3, generator=gen), state)
            h = state[0] if isinstance(state, tuple) else state
            loss = loss + head(h).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in m.named_parameters():
        assert paths_equal(p.detach(), 2), name
