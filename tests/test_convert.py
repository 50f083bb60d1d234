"""Weight conversions: nn.LSTM <-> LSTM, and CerebralLSTM <-> its equivalent nn.LSTM(2H) (identity A).

The expected LSTM(2H) weights are built by hand, element by element, from the description in docs/notes.md
(tests/helpers.py's ``hand_lstm2h_state_dict``): gate rows interleaved per gate
``[i_U; i_L | f_U; f_L | g_U; g_L | o_U; o_L]``, recurrent weight ``[W_hh, W_hh]``, and for layers above the
first, each direction's H input columns repeated (the layer below emits [y_U, y_L]). The documented pipeline
is checked against the paper's equations (tests/paper.py, float64).
"""

import pytest
import torch
from helpers import hand_lstm2h_state_dict
from paper import paper_sequence, random_paper_params, to_documented_layout
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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


def load_paper(m: CerebralLSTM, layers, gen: torch.Generator) -> None:
    """Load the paper's parameters ``layers[l][d]`` (tests/paper.py) into two-path CerebralLSTM ``m``."""
    with torch.no_grad():
        for l, dirs in enumerate(layers):
            for d, P in enumerate(dirs):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                values = to_documented_layout(P, m.hidden_size, gen, dtype=m.weight_ih_l0.dtype)
                for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), values):
                    getattr(m, name + sfx).copy_(value)


@pytest.mark.parametrize("packed", [False, True])
def test_documented_pipeline_reproduces_cerebral(packed, gen):
    """cerebral_to_lstm2h + cerebral_state_to_lstm2h -> nn.LSTM(2H) -> cerebral_output_from_lstm2h, and the
    CerebralLSTM itself, both against the paper's equations (tests/paper.py's float64 loop, each sequence run
    alone over its own length), float64 to 1e-12: outputs and final states; packed outputs keep the input's
    packing."""
    H, lengths = 4, [2, 5, 4] if packed else [5, 5, 5]
    layers = [[random_paper_params(3 if l == 0 else 2 * H, H, gen) for _ in range(2)] for l in range(2)]
    m = CerebralLSTM(3, H, num_layers=2, bidirectional=True, dtype=F64)
    load_paper(m, layers, gen)
    ref = cerebral_to_lstm2h(m)
    x = torch.randn(5, 3, 3, generator=gen, dtype=F64)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    h0 = torch.randn(4, 3, H, generator=gen, dtype=F64)
    c0 = torch.randn(4, 3, 2 * H, generator=gen, dtype=F64)
    h0_2, c0_2 = cerebral_state_to_lstm2h(h0, c0)
    assert torch.equal(h0_2[..., :H], h0) and torch.equal(h0_2[..., H:], torch.zeros_like(h0))
    assert torch.equal(c0_2, c0)
    results = {"CerebralLSTM": m(inp, (h0, c0)),
               "pipeline": cerebral_output_from_lstm2h(*ref(inp, (h0_2, c0_2)), hidden_size=H)}
    expected = [paper_sequence(x[:n, b:b + 1], layers, h0[:, b:b + 1], c0[:, b:b + 1])
                for b, n in enumerate(lengths)]
    for what, (y, (h, c)) in results.items():
        if packed:
            assert torch.equal(y.batch_sizes, inp.batch_sizes) and torch.equal(y.unsorted_indices,
                                                                                 inp.unsorted_indices), what
            y = pad_packed_sequence(y, total_length=5)[0]
        assert y.shape == (5, 3, 2 * H) and h.shape == (4, 3, H) and c.shape == (4, 3, 2 * H), what
        for b, (n, (y_ref, h_ref, c_ref)) in enumerate(zip(lengths, expected)):
            for name, got, want in (("output", y[:n, b], y_ref[:, 0]), ("h_n", h[:, b], h_ref[:, 0]),
                                    ("c_n", c[:, b], c_ref[:, 0])):
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0,
                                           msg=lambda s, what=what, name=name, b=b: f"{what} {name}[{b}]: {s}")


def test_cerebral_output_from_lstm2h_folds_halves():
    H = 3
    y = torch.randn(5, 2, 2 * 2 * H)  # bidirectional LSTM(2H) output
    h_n, c_n = torch.randn(4, 2, 2 * H), torch.randn(4, 2, 2 * H)
    out, (h, c) = cerebral_output_from_lstm2h(y, (h_n, c_n), H)
    expected = torch.cat([y[..., 0:3] + y[..., 3:6], y[..., 6:9] + y[..., 9:12]], -1)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(h, h_n[..., :3] + h_n[..., 3:], atol=0, rtol=0)
    assert c is c_n
