"""Weight conversions: nn.LSTM <-> LSTM, and CerebralLSTM <-> its equivalent nn.LSTM(2H) (identity A).

The expected LSTM(2H) weights are built here by hand, element by element, from the description in docs/notes.md:
gate rows interleaved per gate ``[i_U; i_L | f_U; f_L | g_U; g_L | o_U; o_L]``, recurrent weight
``[W_hh, W_hh]``, and for layers above the first, each direction's H input columns repeated (the layer below
emits [y_U, y_L]).
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import (
    LSTM,
    CerebralLSTM,
    cerebral_from_lstm2h,
    cerebral_output_from_lstm2h,
    cerebral_state_to_lstm2h,
    cerebral_to_lstm2h,
    lstm_from_torch,
    lstm_to_torch,
)

F64 = torch.float64


def sd_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------
# nn.LSTM <-> LSTM
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"num_layers": 3, "bidirectional": True, "dropout": 0.2},
                                {"bias": False, "batch_first": True}, {"dtype": F64}])
def test_lstm_round_trip_exact(kw):
    ref = nn.LSTM(3, 4, **kw).eval()
    ours = lstm_from_torch(ref)
    assert isinstance(ours, LSTM) and sd_equal(ours, ref) and not ours.training
    for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional", "dropout"):
        assert getattr(ours, k) == getattr(ref, k), k
    back = lstm_to_torch(ours)
    assert type(back) is nn.LSTM and sd_equal(back, ref) and not back.training
    x = torch.randn(5, 2, 3, dtype=ref.weight_ih_l0.dtype)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-6, rtol=0)
    # copies, not views
    with torch.no_grad():
        ours.weight_ih_l0.add_(1)
    assert not torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)


def test_lstm_conversion_errors():
    with pytest.raises(TypeError, match="module"):
        lstm_from_torch(LSTM(3, 4))
    with pytest.raises(TypeError, match="module"):
        lstm_to_torch(nn.LSTM(3, 4))


# ---------------------------------------------------------------------------------------------------------
# CerebralLSTM <-> nn.LSTM(2H)
# ---------------------------------------------------------------------------------------------------------


def hand_lstm2h_state_dict(m: CerebralLSTM) -> dict:
    H, D = m.hidden_size, m.num_directions
    out = {}
    for layer in range(m.num_layers):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx).detach(), getattr(m, "weight_hh" + sfx).detach()
            cols_in = w_ih.shape[1] * (2 if layer else 1)
            W_ih = torch.empty(8 * H, cols_in, dtype=w_ih.dtype)
            W_hh = torch.empty(8 * H, 2 * H, dtype=w_ih.dtype)
            biases = {n: getattr(m, n + sfx).detach() for n in ("bias_ih", "bias_hh")} if m.bias else {}
            B2 = {n: torch.empty(8 * H, dtype=w_ih.dtype) for n in biases}
            for gate in range(4):  # i, f, g, o
                for path in range(2):  # upper, lower
                    for j in range(H):
                        src = path * 4 * H + gate * H + j  # Cerebral row
                        dst = gate * 2 * H + path * H + j  # LSTM(2H) row
                        W_hh[dst, :H] = w_hh[src]
                        W_hh[dst, H:] = w_hh[src]
                        if layer == 0:
                            W_ih[dst] = w_ih[src]
                        else:
                            for dd in range(D):
                                block = w_ih[src, dd * H:(dd + 1) * H]
                                W_ih[dst, dd * 2 * H: dd * 2 * H + H] = block
                                W_ih[dst, dd * 2 * H + H: (dd + 1) * 2 * H] = block
                        for n in biases:
                            B2[n][dst] = biases[n][src]
            out["weight_ih" + sfx] = W_ih
            out["weight_hh" + sfx] = W_hh
            for n in biases:
                out[n + sfx] = B2[n]
    return out


CONFIGS = [
    {},
    {"num_layers": 2},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 3, "bidirectional": True},
    {"num_layers": 2, "bias": False, "batch_first": True},
    {"num_layers": 2, "bidirectional": True, "dtype": F64},
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_cerebral_to_lstm2h_is_the_hand_built_lstm(kw):
    m = CerebralLSTM(3, 4, **kw)
    ref = cerebral_to_lstm2h(m)
    assert type(ref) is nn.LSTM
    assert (ref.input_size, ref.hidden_size, ref.num_layers) == (3, 8, m.num_layers)
    assert (ref.bias, ref.batch_first, ref.bidirectional) == (m.bias, m.batch_first, m.bidirectional)
    expected = hand_lstm2h_state_dict(m)
    got = ref.state_dict()
    assert list(got) == [n for n, _ in ref.named_parameters()] and set(got) == set(expected)
    for k in expected:
        assert got[k].dtype == m.weight_ih_l0.dtype
        assert torch.equal(got[k], expected[k]), k


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("init", ["distinct", "identical"])
def test_cerebral_lstm2h_round_trip_exact(kw, init):
    m = CerebralLSTM(3, 4, init=init, forget_bias=1.0, **kw).eval()
    back = cerebral_from_lstm2h(cerebral_to_lstm2h(m), init=init)
    assert type(back) is CerebralLSTM and sd_equal(back, m) and not back.training
    assert back.init == init
    for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional"):
        assert getattr(back, k) == getattr(m, k), k


def test_cerebral_to_lstm2h_keeps_training_flag():
    m = CerebralLSTM(3, 4)
    assert cerebral_to_lstm2h(m).training
    assert not cerebral_to_lstm2h(m.eval()).training


def test_cerebral_from_lstm2h_rejects_untied():
    with pytest.raises(ValueError, match="weight_hh_l0"):
        cerebral_from_lstm2h(nn.LSTM(3, 8))  # random recurrent weights are not [W, W]
    # tied recurrent weights but an upper layer that does not repeat its input columns
    ref = cerebral_to_lstm2h(CerebralLSTM(3, 4, num_layers=2, bidirectional=True))
    with torch.no_grad():
        ref.weight_ih_l1_reverse[0, 0] += 1.0
    with pytest.raises(ValueError, match="weight_ih_l1_reverse"):
        cerebral_from_lstm2h(ref)
    ref = cerebral_to_lstm2h(CerebralLSTM(3, 4, num_layers=2))
    with torch.no_grad():
        ref.weight_hh_l1[3, 4] += 1.0  # second copy differs
    with pytest.raises(ValueError, match="weight_hh_l1"):
        cerebral_from_lstm2h(ref)


def test_cerebral_conversion_errors():
    with pytest.raises(ValueError, match="hidden_size"):
        cerebral_from_lstm2h(nn.LSTM(3, 7))
    with pytest.raises(ValueError, match="proj_size"):
        cerebral_from_lstm2h(nn.LSTM(3, 8, proj_size=4))  # P must be < H = 8 / 2
    with pytest.raises(TypeError, match="module"):
        cerebral_from_lstm2h(LSTM(3, 8))
    with pytest.raises(TypeError, match="module"):
        cerebral_to_lstm2h(nn.LSTM(3, 8))


@pytest.mark.parametrize("packed", [False, True])
def test_documented_pipeline_reproduces_cerebral(packed):
    """cerebral_state_to_lstm2h -> nn.LSTM(2H) -> cerebral_output_from_lstm2h gives CerebralLSTM's result."""
    m = CerebralLSTM(3, 4, num_layers=2, bidirectional=True)
    ref = cerebral_to_lstm2h(m)
    x = torch.randn(5, 3, 3)
    inp = pack_padded_sequence(x, [2, 5, 4], enforce_sorted=False) if packed else x
    h0, c0 = torch.randn(4, 3, 4), torch.randn(4, 3, 8)
    h0_2, c0_2 = cerebral_state_to_lstm2h(h0, c0)
    assert torch.equal(h0_2[..., :4], h0) and torch.equal(h0_2[..., 4:], torch.zeros_like(h0))
    assert torch.equal(c0_2, c0)
    y, (h, c) = m(inp, (h0, c0))
    y2, (h2, c2) = cerebral_output_from_lstm2h(*ref(inp, (h0_2, c0_2)), hidden_size=4)
    if packed:
        assert torch.equal(y.batch_sizes, y2.batch_sizes)
        assert torch.equal(y.unsorted_indices, y2.unsorted_indices)
        y, y2 = y.data, y2.data
    assert y2.shape == y.shape and h2.shape == h.shape and c2.shape == c.shape
    for a, b in ((y, y2), (h, h2), (c, c2)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_cerebral_output_from_lstm2h_folds_halves():
    H = 3
    y = torch.randn(5, 2, 2 * 2 * H)  # bidirectional LSTM(2H) output
    h_n, c_n = torch.randn(4, 2, 2 * H), torch.randn(4, 2, 2 * H)
    out, (h, c) = cerebral_output_from_lstm2h(y, (h_n, c_n), H)
    expected = torch.cat([y[..., 0:3] + y[..., 3:6], y[..., 6:9] + y[..., 9:12]], -1)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(h, h_n[..., :3] + h_n[..., 3:], atol=0, rtol=0)
    assert c is c_n
