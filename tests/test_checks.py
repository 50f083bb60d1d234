"""Argument checks: each bad input raises the documented error type, naming the argument."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from cerebral_rnn import LSTM, RNN, CerebralLSTM, CerebralLSTMCell, LSTMCell, RNNCell

LAYERS = [RNN, LSTM, CerebralLSTM]
CELLS = [RNNCell, LSTMCell, CerebralLSTMCell]


# ---------------------------------------------------------------------------------------------------------
# Constructors
# ---------------------------------------------------------------------------------------------------------

BAD_INTS = [(0, ValueError), (-2, ValueError), (2.0, TypeError), ("3", TypeError), (True, TypeError),
            (None, TypeError)]


@pytest.mark.parametrize("cls", LAYERS + CELLS)
@pytest.mark.parametrize("arg", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value,exc", BAD_INTS)
def test_bad_sizes(cls, arg, value, exc):
    kw = {"input_size": 3, "hidden_size": 4, arg: value}
    with pytest.raises(exc, match=arg):
        cls(**kw)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("value,exc", BAD_INTS)
def test_bad_num_layers(cls, value, exc):
    with pytest.raises(exc, match="num_layers"):
        cls(3, 4, num_layers=value)


def test_numpy_ints_are_accepted():
    import numpy as np
    m = CerebralLSTM(np.int64(3), np.int32(4), num_layers=np.int64(2))
    assert (m.input_size, m.hidden_size, m.num_layers) == (3, 4, 2) and type(m.hidden_size) is int


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("value,exc", [(-0.1, ValueError), (1.5, ValueError), ("0.1", TypeError),
                                       (True, TypeError), (float("nan"), ValueError)])
def test_bad_dropout(cls, value, exc):
    with pytest.raises(exc, match="dropout"):
        cls(3, 4, num_layers=2, dropout=value)


@pytest.mark.parametrize("cls", LAYERS)
def test_dropout_bounds_accepted_and_single_layer_warning(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(3, 4, num_layers=2, dropout=0.0)
        cls(3, 4, num_layers=2, dropout=1.0)
        cls(3, 4, num_layers=2, dropout=1)
    with pytest.warns(UserWarning, match="dropout.*num_layers=1"):
        cls(3, 4, dropout=0.2)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("arg", ["bias", "batch_first", "bidirectional"])
def test_bad_bools(cls, arg):
    with pytest.raises(TypeError, match=arg):
        cls(3, 4, **{arg: 1})


def test_bad_cell_bias():
    for cls in CELLS:
        with pytest.raises(TypeError, match="bias"):
            cls(3, 4, bias="yes")


@pytest.mark.parametrize("cls", [CerebralLSTM, CerebralLSTMCell])
def test_unknown_init(cls):
    with pytest.raises(ValueError, match=r"init.*\['distinct', 'identical'\].*'orthogonal'"):
        cls(3, 4, init="orthogonal")
    with pytest.raises(TypeError, match="init"):
        cls(3, 4, init=1)


@pytest.mark.parametrize("cls", [RNN, RNNCell])
def test_unknown_nonlinearity(cls):
    with pytest.raises(ValueError, match="nonlinearity.*tanh.*relu"):
        cls(3, 4, nonlinearity="sigmoid")


def test_unknown_backend_lists_valid_names():
    from cerebral_rnn import available_backends

    names = available_backends()
    assert names[0] == "auto" and "reference" in names
    with pytest.raises(ValueError, match="backend") as info:
        CerebralLSTM(3, 4, backend="cudnn-magic")
    assert all(repr(n) in str(info.value) for n in names) and "cudnn-magic" in str(info.value)
    with pytest.raises(TypeError, match="backend"):
        CerebralLSTM(3, 4, backend=None)
    for cls in (RNN, LSTM):
        with pytest.raises(ValueError, match=r"backend.*'auto'.*'torch'.*'reference'.*'fast'"):
            cls(3, 4, backend="fast")
        with pytest.raises(TypeError, match="backend"):
            cls(3, 4, backend=0)


# ---------------------------------------------------------------------------------------------------------
# Layer forward
# ---------------------------------------------------------------------------------------------------------


def state_for(cls, LD, B, H, c_width=None):
    h = torch.zeros(LD, B, H) if B else torch.zeros(LD, H)
    if cls is RNN:
        return h
    cw = c_width or (2 * H if cls is CerebralLSTM else H)
    return h, (torch.zeros(LD, B, cw) if B else torch.zeros(LD, cw))


@pytest.mark.parametrize("cls", LAYERS)
def test_forward_bad_input(cls):
    m = cls(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input.*1-D"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match="input.*4-D"):
        m(torch.randn(2, 2, 2, 3))
    with pytest.raises(ValueError, match="input.*input_size=3.*got 5"):
        m(torch.randn(6, 2, 5))
    with pytest.raises(ValueError, match="input.*input_size=3"):
        m(torch.randn(6, 5))
    with pytest.raises(TypeError, match="input.*dtype.*float64"):
        m(torch.randn(6, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="input.*dtype"):
        m(torch.ones(6, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="input.*list"):
        m([[0.0, 1.0, 2.0]])
    with pytest.raises(TypeError, match="input"):
        m(None)
    with pytest.raises(ValueError, match="input.*input_size=3"):
        m(pack_padded_sequence(torch.randn(4, 2, 5), [4, 2]))
    with pytest.raises(TypeError, match="input.*dtype"):
        m(pack_padded_sequence(torch.randn(4, 2, 3, dtype=torch.float64), [4, 2]))


@pytest.mark.parametrize("cls", [LSTM, CerebralLSTM])
def test_forward_bad_states(cls):
    m = cls(3, 4, num_layers=2, bidirectional=True)  # L*D = 4
    x = torch.randn(6, 2, 3)
    cw = 8 if cls is CerebralLSTM else 4
    good_h, good_c = torch.zeros(4, 2, 4), torch.zeros(4, 2, cw)
    m(x, (good_h, good_c))
    for bad_h in (torch.zeros(2, 2, 4), torch.zeros(4, 3, 4), torch.zeros(4, 2, 8), torch.zeros(4, 4)):
        with pytest.raises(ValueError, match=r"h_0: expected shape \(4, 2, 4\)"):
            m(x, (bad_h, good_c))
    bad_cs = [torch.zeros(2, 2, cw), torch.zeros(4, 1, cw), torch.zeros(4, 2, cw + 1), torch.zeros(4, 2, 3)]
    for bad_c in bad_cs:
        with pytest.raises(ValueError, match=rf"c_0: expected shape \(4, 2, {cw}\)"):
            m(x, (good_h, bad_c))
    with pytest.raises(TypeError, match="h_0.*dtype"):
        m(x, (good_h.double(), good_c))
    with pytest.raises(TypeError, match="c_0.*dtype"):
        m(x, (good_h, good_c.half()))
    with pytest.raises(TypeError, match="h_0.*Tensor"):
        m(x, ([0.0], good_c))
    with pytest.raises(TypeError, match="hx"):
        m(x, good_h)  # a tensor where a tuple (h_0, c_0) is expected
    with pytest.raises(TypeError, match="hx.*length 3"):
        m(x, (good_h, good_c, good_c))


@pytest.mark.parametrize("cls", LAYERS)
def test_forward_batched_unbatched_mismatch(cls):
    m = cls(3, 4)
    with pytest.raises(ValueError, match=r"h_0: expected shape \(1, 4\) for unbatched input"):
        m(torch.randn(6, 3), state_for(cls, 1, 2, 4))
    with pytest.raises(ValueError, match=r"h_0: expected shape \(1, 2, 4\) for batched input"):
        m(torch.randn(6, 2, 3), state_for(cls, 1, 0, 4))
    if cls is not RNN:
        cw = 8 if cls is CerebralLSTM else 4
        h_ok = torch.zeros(1, 4)
        with pytest.raises(ValueError, match="c_0.*unbatched"):
            m(torch.randn(6, 3), (h_ok, torch.zeros(1, 2, cw)))


@pytest.mark.parametrize("cls", LAYERS)
def test_forward_packed_state_batch(cls):
    m = cls(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), [5, 2, 1])
    with pytest.raises(ValueError, match=r"h_0: expected shape \(1, 3, 4\)"):
        m(packed, state_for(cls, 1, 2, 4))
    m(packed, state_for(cls, 1, 3, 4))


def test_rnn_bad_state():
    m = RNN(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="h_0"):
        m(torch.randn(6, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(TypeError, match="h_0.*dtype"):
        m(torch.randn(6, 2, 3), torch.zeros(2, 2, 4, dtype=torch.float64))


def test_error_messages_say_expected_and_got():
    m = CerebralLSTM(3, 4)
    with pytest.raises(ValueError) as info:
        m(torch.randn(6, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)))
    msg = str(info.value)
    # both accepted shapes: a cell state per path (2H) or one for every path (H, as nn.LSTM's), and what came
    assert "c_0" in msg and "expected" in msg and "(1, 2, 8)" in msg and "(1, 2, 4)" in msg and "(1, 2, 5)" in msg


# ---------------------------------------------------------------------------------------------------------
# Cell forward
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS)
def test_cell_bad_input(cls):
    cell = cls(3, 4)
    with pytest.raises(ValueError, match="input.*0-D"):
        cell(torch.tensor(1.0))
    with pytest.raises(ValueError, match="input.*3-D"):
        cell(torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match="input.*input_size=3.*got 5"):
        cell(torch.randn(2, 5))
    with pytest.raises(TypeError, match="input.*dtype"):
        cell(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="input.*Tensor"):
        cell([1.0, 2.0, 3.0])


@pytest.mark.parametrize("cls", CELLS)
def test_cell_bad_state(cls):
    cell = cls(3, 4)
    x = torch.randn(2, 3)
    cw = {RNNCell: 4, LSTMCell: 4, CerebralLSTMCell: 8}[cls]

    def hx(h, c):
        return h if cls is RNNCell else (h, c)

    cell(x, hx(torch.zeros(2, 4), torch.zeros(2, cw)))
    with pytest.raises(ValueError, match=r"h: expected shape \(2, 4\)"):
        cell(x, hx(torch.zeros(3, 4), torch.zeros(2, cw)))
    with pytest.raises(ValueError, match=r"h: expected shape \(2, 4\)"):
        cell(x, hx(torch.zeros(4), torch.zeros(2, cw)))  # unbatched state, batched input
    with pytest.raises(ValueError, match=r"h: expected shape \(4,\)"):
        cell(x[0], hx(torch.zeros(1, 4), torch.zeros(cw)))  # batched state, unbatched input
    with pytest.raises(TypeError, match="h.*dtype"):
        cell(x, hx(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, cw)))
    if cls is not RNNCell:
        with pytest.raises(ValueError, match=rf"c: expected shape \(2, {cw}\)"):
            bad_c = torch.zeros(2, cw + 4 if cls is LSTMCell else 6)  # neither H nor 2H
            cell(x, (torch.zeros(2, 4), bad_c))
        with pytest.raises(TypeError, match="hx"):
            cell(x, torch.zeros(2, 4))
        with pytest.raises(TypeError, match="c.*Tensor"):
            cell(x, (torch.zeros(2, 4), None))


@pytest.mark.parametrize("cls", LAYERS)
def test_forward_empty_sequence_and_device(cls):
    with pytest.raises(ValueError, match="input.*sequence length"):
        cls(3, 4)(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match="input.*sequence length"):
        cls(3, 4, batch_first=True)(torch.randn(2, 0, 3))
    with pytest.raises(ValueError, match="input.*sequence length"):
        cls(3, 4)(torch.randn(0, 3))
    out, _ = cls(3, 4, batch_first=True)(torch.randn(0, 5, 3))  # an empty batch is fine, as in torch.nn
    assert out.shape == (0, 5, 4)
    with pytest.raises(ValueError, match="input.*cpu"):
        cls(3, 4)(torch.randn(5, 2, 3, device="meta"))
