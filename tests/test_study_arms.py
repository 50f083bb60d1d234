"""The study's arms: the registry, parameter counts and matching, and the control arms' equations against
independent references written here (float64 time loops) and against torch's and the library's layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cerebral_rnn import GRU, LSTM, CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM
from cerebral_rnn.study import arms as A
from cerebral_rnn.study import model as M

ARMS = list(A.ARMS)
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
IO_TOKENS = {"kind": "tokens", "vocab": 40, "embedding": 8, "outputs": 40, "readout": "steps"}
IO_FEATURES = {"kind": "features", "features": 3, "outputs": 5, "readout": "final"}


def test_the_registry_holds_the_paper_control_and_family_arms():
    assert ARMS == ["lstm", "lstm2", "cerebral", "cerebral-identical", "lstm-matched", "lstm-x2", "lstmp",
                    "cerebral-k3", "cerebral-peephole", "gru", "cerebral-gru"]
    for a in A.ARMS.values():
        assert a.description and callable(a.build)
    # reproduce trains the paper's and the control arms unless --models names others
    assert A.DEFAULT_ARMS == ("lstm", "lstm2", "cerebral", "cerebral-identical", "lstm-matched", "lstm-x2", "lstmp")
    from cerebral_rnn.cli import build_parser
    assert build_parser().parse_args(["reproduce"]).models == ",".join(A.DEFAULT_ARMS)


@pytest.mark.parametrize("io", [IO_TOKENS, IO_FEATURES, {**IO_TOKENS, "vocab": 87, "embedding": 32}])
@pytest.mark.parametrize("H", [5, 16])
def test_parameter_counts_match_the_built_models(io, H):
    for arm in ARMS:
        cfg = M.model_config(arm, io, H, "t")
        model = M.build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == M.count_parameters(arm, io, cfg["width"]), arm


@pytest.mark.parametrize("io,H", [(IO_TOKENS, 16), (IO_FEATURES, 5), ({**IO_TOKENS, "vocab": 87,
                                                                       "embedding": 32}, 128)])
def test_matched_width_is_the_closest_by_brute_force(io, H):
    def real_count(arm, width):  # independent of the formulas: build the model and count
        return sum(p.numel() for p in M.build_model({"task": "t", "arm": arm, "io": io, "hidden": H,
                                                     "width": width}).parameters())

    target = real_count("cerebral", H)
    w = M.matched_width("lstm-matched", io, H)
    assert w > H  # the Cerebral RNN has twice the single LSTM's weights at the same H
    gaps = {x: abs(real_count("lstm-matched", x) - target) for x in range(max(1, w - 3), w + 4)}
    assert gaps[w] == min(gaps.values())
    assert M.model_config("lstm-matched", io, H, "t")["width"] == w


def test_unknown_arm_lists_valid_names():
    with pytest.raises(ValueError, match="--models: unknown model 'nope'.*cerebral-identical.*lstmp"):
        A.check_arms(["lstm", "nope"])
    with pytest.raises(ValueError, match="listed twice"):
        A.check_arms(["lstm", "lstm"])
    with pytest.raises(ValueError, match="already registered"):
        A.register(A.ARMS["lstm"])
    with pytest.raises(TypeError, match="arm: expected an Arm"):
        A.register("lstm")


def test_arms_use_the_public_layers():
    rnns = {a: M.build_model(M.model_config(a, IO_TOKENS, 6, "t")).rnn for a in ARMS}
    assert isinstance(rnns["lstm"], LSTM) and rnns["lstm"].num_layers == 1
    assert isinstance(rnns["lstm2"], LSTM) and rnns["lstm2"].num_layers == 2
    assert isinstance(rnns["cerebral"], CerebralLSTM) and rnns["cerebral"].init == "distinct"
    assert rnns["cerebral-identical"].init == "identical"
    assert type(rnns["lstmp"]) is nn.LSTM and rnns["lstmp"].hidden_size == 12 and rnns["lstmp"].proj_size == 6
    assert isinstance(rnns["lstm-x2"], A.DoubledLSTM)
    assert isinstance(rnns["cerebral-k3"], CerebralLSTM) and rnns["cerebral-k3"].num_paths == 3
    assert isinstance(rnns["cerebral-peephole"], CerebralPeepholeLSTM) and rnns["cerebral-peephole"].num_paths == 2
    assert type(rnns["gru"]) is GRU and rnns["gru"].hidden_size == 6
    assert isinstance(rnns["cerebral-gru"], CerebralGRU) and rnns["cerebral-gru"].init == "distinct"
    assert not A.ARMS["gru"].forget_gate and not A.ARMS["cerebral-gru"].forget_gate


@pytest.mark.parametrize("layer", [lambda init: CerebralLSTM(3, 5, num_paths=3, init=init),
                                   lambda init: CerebralPeepholeLSTM(3, 5, init=init),
                                   lambda init: CerebralGRU(3, 5, init=init),
                                   lambda init: CerebralLSTM(3, 5, proj_size=2, init=init)])
def test_path_difference_is_zero_exactly_for_identical_paths(layer):
    assert A.path_difference(layer("identical")) == 0.0
    distinct = layer("distinct")
    assert A.path_difference(distinct) > 0.0
    with torch.no_grad():  # make every path a copy of path 0 by hand: the gap closes
        for name, p in distinct.named_parameters():
            if not name.startswith("weight_hr"):
                blocks = p.view(distinct.num_paths, -1)
                blocks[1:] = blocks[:1]
    assert A.path_difference(distinct) == 0.0
    with torch.no_grad():
        distinct.bias_hh_l0[-1] += 0.25  # one element of the last path
    assert A.path_difference(distinct) == pytest.approx(0.25)
    assert A.path_difference(LSTM(3, 5)) is None


# -- lstm-x2 ------------------------------------------------------------------------------------------------------


def lstm_doubled_reference(x, w_ih, w_hh, b_ih, b_hh, h, c):
    """An LSTM whose output and recurrent input is h = 2·o·tanh(c), written out (float64)."""
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = (x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = 2 * torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


def test_lstm_x2_equals_an_lstm_with_doubled_output():
    torch.manual_seed(3)
    m = A.ARMS["lstm-x2"].build(4, 7, None).double()
    x, h0, c0 = torch.randn(9, 3, 4, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64), \
        torch.randn(1, 3, 7, dtype=torch.float64)
    w = m.lstm
    ref_y, ref_h, ref_c = lstm_doubled_reference(x, w.weight_ih_l0, w.weight_hh_l0, w.bias_ih_l0, w.bias_hh_l0,
                                                 h0[0], c0[0])
    y, (h, c) = m(x, (h0, c0))
    torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-12)
    torch.testing.assert_close(h[0], ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c[0], ref_c, rtol=0, atol=1e-12)
    y0, _ = m(x)  # zero state
    torch.testing.assert_close(y0, lstm_doubled_reference(x, w.weight_ih_l0, w.weight_hh_l0, w.bias_ih_l0,
                                                          w.bias_hh_l0, 0 * h0[0], 0 * c0[0])[0], rtol=0, atol=1e-12)
    # its gradients reach the stored weights (2 W_hh is computed from W_hh in the graph)
    y.sum().backward()
    assert w.weight_hh_l0.grad is not None and w.weight_hh_l0.grad.abs().sum() > 0


def test_lstm_x2_is_cerebral_identical():
    """A Cerebral LSTM with both paths equal to an LSTM's weights computes lstm-x2 with those weights."""
    torch.manual_seed(4)
    x2 = A.DoubledLSTM(5, 16).double()
    cer = CerebralLSTM(5, 16, init="identical", dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(cer, name).copy_(torch.cat([getattr(x2.lstm, name)] * 2))
    x = torch.randn(12, 4, 5, dtype=torch.float64)
    y1, (h1, _) = x2(x)
    y2, (h2, _) = cer(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(h1, h2, rtol=0, atol=1e-12)


def test_lstm_x2_packed_input_gives_each_sequence_its_own_final_state():
    torch.manual_seed(5)
    m = A.DoubledLSTM(3, 6).double()
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    y, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    y, _ = pad_packed_sequence(y)
    w = m.lstm
    for b, n in enumerate(lengths.tolist()):
        ref_y, ref_h, ref_c = lstm_doubled_reference(x[:n, b:b + 1], w.weight_ih_l0, w.weight_hh_l0, w.bias_ih_l0,
                                                     w.bias_hh_l0, torch.zeros(1, 6, dtype=torch.float64),
                                                     torch.zeros(1, 6, dtype=torch.float64))
        torch.testing.assert_close(y[:n, b], ref_y[:, 0], rtol=0, atol=1e-12)
        torch.testing.assert_close(h[0, b], ref_h[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(c[0, b], ref_c[0], rtol=0, atol=1e-12)


# -- lstmp ----------------------------------------------------------------------------------------------------------


def lstmp_reference(x, w_ih, w_hh, b_ih, b_hh, w_hr, r, c):
    """LSTM with a projection (Sak et al. 2014), written out: gates read r(t-1) = W_hr (o ⊙ tanh c)."""
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = (x[t] @ w_ih.T + b_ih + r @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        r = (torch.sigmoid(o) * torch.tanh(c)) @ w_hr.T
        ys.append(r)
    return torch.stack(ys), r, c


def test_lstmp_equals_the_projected_lstm_equations():
    torch.manual_seed(6)
    m = A.ARMS["lstmp"].build(4, 5, None).double()  # nn.LSTM(4, 10, proj_size=5)
    x = torch.randn(8, 3, 4, dtype=torch.float64)
    y, (h, c) = m(x)
    assert y.shape == (8, 3, 5) and h.shape == (1, 3, 5) and c.shape == (1, 3, 10)
    ref_y, ref_h, ref_c = lstmp_reference(x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0,
                                          m.weight_hr_l0, torch.zeros(3, 5, dtype=torch.float64),
                                          torch.zeros(3, 10, dtype=torch.float64))
    torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-12)
    torch.testing.assert_close(h[0], ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c[0], ref_c, rtol=0, atol=1e-12)
    # and it is torch's nn.LSTM(E, 2H, proj_size=H): a state_dict copy into a fresh one computes the same
    theirs = nn.LSTM(4, 10, proj_size=5).double()
    theirs.load_state_dict(m.state_dict())
    torch.testing.assert_close(theirs(x)[0], y, rtol=0, atol=0)


def test_lstmp_with_projection_fixed_to_identity_pair_is_a_cerebral_lstm():
    """Cerebral(H) = LSTM(2H) with per-gate interleaved [upper; lower] rows and W_hr = [I I]: the model class
    of `lstmp` contains the Cerebral LSTM."""
    torch.manual_seed(7)
    H, E = 6, 4
    cer = CerebralLSTM(E, H, dtype=torch.float64)
    p = A.ARMS["lstmp"].build(E, H, None).double()

    def interleave(w):  # rows [U i f g o | L i f g o] -> [i_U; i_L | f_U; f_L | g_U; g_L | o_U; o_L]
        up, low = w[:4 * H], w[4 * H:]
        return torch.cat([torch.cat([up[k * H:(k + 1) * H], low[k * H:(k + 1) * H]]) for k in range(4)])

    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(p, name).copy_(interleave(getattr(cer, name)))
        p.weight_hr_l0.copy_(torch.cat([torch.eye(H), torch.eye(H)], dim=1))
    x = torch.randn(10, 3, E, dtype=torch.float64)
    y1, (h1, c1) = cer(x)
    y2, (h2, c2) = p(x)
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-12)
    torch.testing.assert_close(h2, h1, rtol=0, atol=1e-12)
    torch.testing.assert_close(c2, c1, rtol=0, atol=1e-12)  # c = [UC | LC] in both


@pytest.mark.parametrize("arm", [a for a in ARMS if A.ARMS[a].forget_gate])
def test_forget_bias_sets_the_forget_rows(arm):
    rnn = A.ARMS[arm].build(3, 4, 1.0)
    gate = 8 if arm == "lstmp" else 4  # rows per gate block
    for name, p in rnn.named_parameters():
        if name.startswith(("bias_ih", "lstm.bias_ih")):
            blocks = p.detach().view(-1, gate)  # (4 or 8 blocks, rows): i, f, g, o (twice for Cerebral)
            for k in range(blocks.shape[0]):
                assert torch.all(blocks[k] == 1.0) == (k % 4 == 1), (name, k)
        if name.startswith(("bias_hh", "lstm.bias_hh")):
            assert torch.all(p.detach().view(-1, gate)[1] == 0.0)


# -- any nn.Module with nn.LSTM's calling convention can be an arm -----------------------------------------------


@pytest.fixture
def gru_arm():
    arm = A.register(A.Arm("test-gru", "torch GRU, hidden H", lambda i, w, fb: nn.GRU(i, w), forget_gate=False))
    yield arm
    del A.ARMS["test-gru"]


def test_a_torch_gru_registered_as_an_arm_reads_each_sequences_final_state(gru_arm):
    io = {"kind": "tokens", "vocab": 12, "embedding": 4, "outputs": 3, "readout": "final"}
    cfg = M.model_config("test-gru", io, 5, "classify", forget_bias=1.0)
    assert cfg["forget_bias"] is None  # no forget gate: dropped
    model = M.build_model(cfg).double()
    assert M.count_parameters("test-gru", io, 5) == sum(p.numel() for p in model.parameters())
    seqs = [torch.tensor([3, 4, 5, 6]), torch.tensor([7]), torch.tensor([1, 2, 9])]
    x = nn.utils.rnn.pad_sequence(seqs)  # (4, 3), padded with 0
    out, h_n = model(x, lengths=torch.tensor([4, 1, 3]))
    for b, s in enumerate(seqs):  # alone, unpadded: the same logits
        alone, _ = model(s.view(-1, 1), lengths=torch.tensor([len(s)]))
        torch.testing.assert_close(out[b], alone[0], rtol=0, atol=1e-12)
    # and the head really reads h_n of each sequence at its own length
    torch.testing.assert_close(out, model.head(h_n[-1]), rtol=0, atol=0)


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_packs_variable_lengths_without_padding_entering(arm):
    torch.manual_seed(8)
    io = {"kind": "tokens", "vocab": 12, "embedding": 4, "outputs": 3, "readout": "final"}
    model = M.build_model(M.model_config(arm, io, 16, "classify")).eval()
    seqs = [torch.tensor([3, 4, 5, 6, 2]), torch.tensor([7, 1]), torch.tensor([1, 2, 9])]
    x = nn.utils.rnn.pad_sequence(seqs)
    with torch.no_grad():
        out, _ = model(x, lengths=torch.tensor([5, 2, 3]))
        for b, s in enumerate(seqs):
            alone, _ = model(s.view(-1, 1))  # dense, no padding at all
            torch.testing.assert_close(out[b], alone[0], rtol=1e-5, atol=1e-6)
