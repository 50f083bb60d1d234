"""The habits of ``torch.nn.LSTM`` users, kept: gradients wherever nn.LSTM has them, autocast, nn.LSTM-shaped
zero states, proj_size, jit.trace with its default checks, a clear error from jit.script, and a small copy of
pytorch/examples' word_language_model training loop run unchanged with nn.LSTM and with CerebralLSTM.

References are independent of the code under test: torch.nn.LSTM (directly, or as the exact LSTM(K*H)
equivalent built by ``cerebral_to_lstm2h``, whose own exactness is tested in test_convert.py/test_family*.py).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from cerebral_rnn import (
    GRU,
    LSTM,
    RNN,
    CerebralGRU,
    CerebralLSTM,
    CerebralPeepholeLSTM,
    cerebral_output_from_lstm2h,
    cerebral_state_to_lstm2h,
    cerebral_to_lstm2h,
    lstm_from_torch,
)

# ------------------------------------------------------------------------------------------------------------
# Gradients wherever nn.LSTM has them: one predicate counts the input, the initial state and the weights
# ------------------------------------------------------------------------------------------------------------


def _lstm2h_grads(m: CerebralLSTM, x, h0, c0, wants: dict):
    """Gradients of the same loss through the exact nn.LSTM(2H) equivalent (the independent reference)."""
    ref = cerebral_to_lstm2h(m)
    for p in ref.parameters():
        p.requires_grad_(wants["weights"])
    x2 = x.detach().clone().requires_grad_(wants["x"])
    h02 = h0.detach().clone().requires_grad_(wants["h0"])
    c02 = c0.detach().clone().requires_grad_(wants["c0"])
    y2, st2 = ref(x2, cerebral_state_to_lstm2h(h02, c02))
    y, (h_n, c_n) = cerebral_output_from_lstm2h(y2, st2, m.hidden_size)
    loss = y.square().sum() + h_n.sum() + c_n.sum()
    inputs = [t for t, w in ((x2, wants["x"]), (h02, wants["h0"]), (c02, wants["c0"])) if w]
    return torch.autograd.grad(loss, inputs) if inputs else ()


@pytest.mark.parametrize("B", [3, 64], ids=["small-batch", "large-batch"])  # auto's choices differ by work
@pytest.mark.parametrize("combo", list(itertools.product([False, True], repeat=4))[1:],
                         ids=lambda c: "".join(n for n, w in zip(("x", "h", "c", "W"), c) if w) or "none")
def test_every_combination_of_what_requires_grad(combo, B):
    want_x, want_h0, want_c0, want_w = combo
    torch.manual_seed(0)
    m = CerebralLSTM(5, 64, num_layers=2)
    for p in m.parameters():
        p.requires_grad_(want_w)
    x = torch.randn(7, B, 5).requires_grad_(want_x)
    h0 = torch.randn(2, B, 64).requires_grad_(want_h0)
    c0 = torch.randn(2, B, 128).requires_grad_(want_c0)
    y, (h_n, c_n) = m(x, (h0, c0))
    assert y.requires_grad and h_n.requires_grad and c_n.requires_grad
    loss = y.square().sum() + h_n.sum() + c_n.sum()
    leaves = [t for t, w in ((x, want_x), (h0, want_h0), (c0, want_c0)) if w]
    got = torch.autograd.grad(loss, leaves) if leaves else ()
    want = _lstm2h_grads(m, x, h0, c0, {"x": want_x, "h0": want_h0, "c0": want_c0, "weights": want_w})
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * w.abs().max().item())


def test_nothing_requires_grad_gives_outputs_without_grad():
    m = CerebralLSTM(5, 64, num_layers=2).requires_grad_(False)
    y, (h_n, c_n) = m(torch.randn(7, 64, 5))
    assert not (y.requires_grad or h_n.requires_grad or c_n.requires_grad)


def test_frozen_network_with_learnable_initial_state_trains_the_state():
    """The reported failure: frozen weights, input without grad, a learnable h_0/c_0 (e.g. a learned initial
    state): nn.LSTM gives h_0 and c_0 their gradients."""
    torch.manual_seed(0)
    m = CerebralLSTM(5, 64).requires_grad_(False)
    h0 = nn.Parameter(torch.zeros(1, 1, 64))
    c0 = nn.Parameter(torch.zeros(1, 1, 128))
    x = torch.randn(9, 32, 5)
    y, _ = m(x, (h0.expand(1, 32, 64), c0.expand(1, 32, 128)))
    y.sum().backward()
    assert h0.grad is not None and c0.grad is not None
    assert h0.grad.abs().sum() > 0 and c0.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------------
# Autocast: a lower-precision activation is accepted and computed as torch's LSTM computes it
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_cpu_autocast_bfloat16(input_dtype, packed):
    """Under CPU autocast torch's fused LSTM casts its input, states and weights to the autocast dtype and returns
    that dtype; so does a CerebralLSTM. Reference: the exact nn.LSTM(2H) equivalent, cast to bfloat16 (no
    autocast: some CPUs' oneDNN cannot run its autocast path), on the same bfloat16-rounded input."""
    torch.manual_seed(0)
    m = CerebralLSTM(6, 16, num_layers=2, bidirectional=True)
    x = torch.randn(8, 4, 6).to(input_dtype)
    lengths = [8, 5, 3, 1]
    inp = nn.utils.rnn.pack_padded_sequence(x, lengths) if packed else x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = m(inp)
    y = nn.utils.rnn.pad_packed_sequence(out)[0] if packed else out
    assert y.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    ref = cerebral_to_lstm2h(m).to(torch.bfloat16)
    inp_ref = nn.utils.rnn.pack_padded_sequence(x.bfloat16(), lengths) if packed else x.bfloat16()
    y2, st2 = ref(inp_ref)
    y2 = nn.utils.rnn.pad_packed_sequence(y2)[0] if packed else y2
    want, (want_h, want_c) = cerebral_output_from_lstm2h(y2, st2, 16)
    for a, b in ((y, want), (h_n, want_h), (c_n, want_c)):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
    # gradients reach the float32 parameters, in float32
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


def test_dtype_mismatch_without_autocast_still_raises():
    m = CerebralLSTM(6, 16)
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32 .*got torch.bfloat16"):
        m(torch.randn(3, 2, 6).bfloat16())


# ------------------------------------------------------------------------------------------------------------
# nn.LSTM-shaped cell states
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,K", [(CerebralLSTM, 2), (CerebralLSTM, 3), (CerebralPeepholeLSTM, 2)])
@pytest.mark.parametrize("batched", [True, False])
def test_zero_state_of_h_features_equals_no_state(cls, K, batched):
    torch.manual_seed(0)
    m = cls(4, 6, num_layers=2, bidirectional=True, num_paths=K)
    w = m.weight_ih_l0
    x = torch.randn(5, 3, 4) if batched else torch.randn(5, 4)
    shape = (4, 3, 6) if batched else (4, 6)
    y0, (h0_n, c0_n) = m(x)
    y1, (h1_n, c1_n) = m(x, (w.new_zeros(shape), w.new_zeros(shape)))  # what nn.LSTM code builds
    assert torch.equal(y0, y1) and torch.equal(h0_n, h1_n) and torch.equal(c0_n, c1_n)
    assert c1_n.shape[-1] == K * 6


def test_state_of_h_features_starts_every_path_from_it():
    torch.manual_seed(0)
    m = CerebralLSTM(4, 6, num_paths=3)
    x, h0 = torch.randn(5, 3, 4), torch.randn(1, 3, 6)
    c0 = torch.randn(1, 3, 6, requires_grad=True)
    y, _ = m(x, (h0, c0))
    c0_full = c0.detach().repeat(1, 1, 3).requires_grad_()
    y_full, _ = m(x, (h0, c0_full))
    torch.testing.assert_close(y, y_full, rtol=0, atol=0)
    y.sum().backward()
    y_full.sum().backward()
    torch.testing.assert_close(c0.grad, c0_full.grad.unflatten(-1, (3, 6)).sum(-2))


# ------------------------------------------------------------------------------------------------------------
# proj_size
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_proj_size_matches_torch(bidirectional):
    torch.manual_seed(0)
    theirs = nn.LSTM(5, 8, num_layers=2, proj_size=3, bidirectional=bidirectional, dtype=torch.float64)
    for backend in ("auto", "reference"):
        ours = lstm_from_torch(theirs)
        ours.backend = backend
        x = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
        (y1, (h1, c1)), (y2, (h2, c2)) = ours(x), theirs(x)
        assert y1.shape == (6, 2, 3 * (1 + bidirectional)) and c1.shape[-1] == 8
        for a, b in ((y1, y2), (h1, h2), (c1, c2)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        g1 = torch.autograd.grad(y1.sum() + c1.sum(), [x, *ours.parameters()])
        g2 = torch.autograd.grad(y2.sum() + c2.sum(), [x, *theirs.parameters()])
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cerebral_proj_size_projects_the_sum_of_the_paths():
    """h = W_hr (sum over paths of o_k tanh c_k): the exact LSTM(K*H, proj_size=P) with W_hr tiled K times."""
    torch.manual_seed(0)
    m = CerebralLSTM(5, 8, num_layers=2, proj_size=3, dtype=torch.float64)
    assert m.weight_hr_l0.shape == (3, 8) and m.weight_hh_l1.shape == (64, 3) and m.weight_ih_l1.shape == (64, 3)
    ref = cerebral_to_lstm2h(m)
    assert ref.proj_size == 3 and ref.hidden_size == 16
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    y, (h_n, c_n) = m(x)
    y2, (h2, c2) = ref(x)
    assert y.shape == (6, 2, 3) and h_n.shape == (2, 2, 3) and c_n.shape == (2, 2, 16)
    for a, b in ((y, y2), (h_n, h2), (c_n, c2)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# TorchScript
# ------------------------------------------------------------------------------------------------------------

LAYERS = [
    lambda: CerebralLSTM(3, 4, num_layers=2, bidirectional=True),
    lambda: CerebralLSTM(3, 4, num_paths=3, proj_size=2),
    lambda: CerebralPeepholeLSTM(3, 4),
    lambda: CerebralGRU(3, 4, num_layers=2),
    lambda: LSTM(3, 4, num_layers=2),
    lambda: GRU(3, 4),
    lambda: RNN(3, 4),
]


@pytest.mark.parametrize("make", LAYERS, ids=lambda f: type(f()).__name__)
def test_jit_trace_passes_its_default_checks(make):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(5, 2, 3)
    traced = torch.jit.trace(m, (x,))  # check_trace=True: traced again and compared; raises if they differ
    x2 = torch.randn(5, 2, 3)
    for a, b in zip(torch.utils._pytree.tree_leaves(traced(x2)), torch.utils._pytree.tree_leaves(m(x2))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", LAYERS, ids=lambda f: type(f()).__name__)
def test_jit_script_says_why_not(make):
    with pytest.raises(TypeError, match=r"cannot be scripted.*torch.jit.trace, torch.export.export or torch.compile"):
        torch.jit.script(make())


# ------------------------------------------------------------------------------------------------------------
# A real client: pytorch/examples' word_language_model pattern, written here in small
# ------------------------------------------------------------------------------------------------------------


class RNNModel(nn.Module):
    """Encoder -> recurrent module -> decoder, with the example's own init_hidden (nn.LSTM-shaped zeros)."""

    def __init__(self, rnn_cls, ntoken=30, ninp=16, nhid=24, nlayers=2, dropout=0.2, **kw):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = rnn_cls(ninp, nhid, nlayers, dropout=dropout, **kw)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history (the example's helper)."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i: i + seq_len], source[i + 1: i + 1 + seq_len].reshape(-1)


def _train_word_lm(rnn_cls, tmp_path=None, **kw) -> list[float]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    corpus = torch.randperm(30, generator=gen).repeat(60)  # a fixed cycle: each next word is predictable
    train = batchify(corpus, 10)
    model = RNNModel(rnn_cls, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _epoch in range(3):
        model.train()
        hidden = model.init_hidden(10)
        total, n = 0.0, 0
        for i in range(0, train.size(0) - 1, 12):  # truncated BPTT over windows of 12
            data, targets = get_batch(train, i, 12)
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = nn.functional.cross_entropy(output.view(-1, 30), targets)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            total, n = total + loss.item(), n + 1
        losses.append(total / n)
    model.eval()
    with torch.no_grad():
        hidden = model.init_hidden(10)
        data, _ = get_batch(train, 0, 12)
        output, hidden = model(data, hidden)
        assert output.shape == (data.shape[0], 10, 30)
    if tmp_path is not None:
        # the example's own save and load: the whole model, loaded with weights_only and its classes allowlisted
        path = tmp_path / "model.pt"
        with open(path, "wb") as f:
            torch.save(model, f)
        with open(path, "rb") as f, torch.serialization.safe_globals([RNNModel, rnn_cls, nn.Dropout, nn.Embedding,
                                                                       nn.Linear]):
            loaded = torch.load(f, weights_only=True)
        with torch.no_grad():
            again, _ = loaded(data, loaded.init_hidden(10))
        assert torch.equal(again, output)
    return losses


@pytest.mark.parametrize("rnn_cls,kw", [(nn.LSTM, {}), (CerebralLSTM, {}), (CerebralLSTM, {"num_paths": 3}),
                                        (CerebralPeepholeLSTM, {})], ids=["nn.LSTM", "Cerebral", "Cerebral-K3",
                                                                          "Peephole"])
def test_word_language_model_pattern_runs_unchanged(rnn_cls, kw, tmp_path):
    losses = _train_word_lm(rnn_cls, tmp_path, **kw)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5, losses  # it learns (Adam for a short test; the example uses SGD)


# ------------------------------------------------------------------------------------------------------------
# Older torch: the shims in cerebral_rnn._compat answer where a newer API is missing
# ------------------------------------------------------------------------------------------------------------


def test_compat_shims_without_the_newer_apis(monkeypatch):
    """The shims see a torch without is_exporting, is_compiling and get_autocast_dtype (torch itself keeps
    them: it needs them internally)."""
    import types
    import warnings

    from cerebral_rnn import _compat

    class OldTorch(types.SimpleNamespace):
        def __getattr__(self, name):
            if name == "get_autocast_dtype":
                raise AttributeError(name)
            return getattr(torch, name)

    old = OldTorch(compiler=types.SimpleNamespace(), is_autocast_enabled=lambda *a: (
        torch.is_autocast_cpu_enabled() if not a else (_ for _ in ()).throw(TypeError("no device argument"))))
    monkeypatch.setattr(_compat, "torch", old)
    assert _compat.is_exporting() is False and _compat.is_compiling() is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the older spellings are deprecated in newer torch
        assert not _compat.autocast_enabled("cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _compat.autocast_enabled("cpu") and _compat.autocast_dtype("cpu") == torch.bfloat16
            y, _ = CerebralLSTM(3, 4)(torch.randn(2, 1, 3))
    assert y.dtype == torch.bfloat16
