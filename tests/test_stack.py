"""StackedRNN: layers added one by one, mixing kinds; checked against running the same layers by hand."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from cerebral_rnn import LSTM, RNN, CerebralLSTM, StackedRNN


def build():
    return (StackedRNN(3)
            .add_layer("cerebral", 4, bidirectional=True)
            .add_layer("lstm", 5, num_layers=2)
            .add_layer("rnn", 2, nonlinearity="relu"))


def test_mixed_kinds_and_sizes():
    net = build()
    kinds = [type(layer) for layer in net.layers]
    assert kinds == [CerebralLSTM, LSTM, RNN]
    assert [layer.input_size for layer in net.layers] == [3, 8, 5]  # bidirectional layer feeds D*H = 8
    assert net.layers[1].num_layers == 2 and net.layers[2].nonlinearity == "relu"
    assert net.output_size == 2
    assert StackedRNN(7).output_size == 7


def test_equals_layers_by_hand():
    net = build()
    x = torch.randn(6, 2, 3)
    out, states = net(x)
    y0, s0 = net.layers[0](x)
    y1, s1 = net.layers[1](y0)
    y2, s2 = net.layers[2](y1)
    assert torch.equal(out, y2) and out.shape == (6, 2, 2)
    assert len(states) == 3
    for got, exp in zip(states[:2], (s0, s1)):
        assert isinstance(got, tuple) and all(torch.equal(a, b) for a, b in zip(got, exp))
    assert torch.equal(states[2], s2)
    assert states[0][1].shape == (2, 2, 8)  # Cerebral c_n: (D, B, 2H)


def test_states_in_and_out():
    net = build()
    x = torch.randn(6, 2, 3)
    _, states = net(x)
    out, _states2 = net(x, states)
    y0, _ = net.layers[0](x, states[0])
    y1, _ = net.layers[1](y0, states[1])
    y2, _ = net.layers[2](y1, states[2])
    assert torch.equal(out, y2)
    # None for one layer: zeros for that layer
    out3, _ = net(x, [states[0], None, states[2]])
    y1z, _ = net.layers[1](y0)
    assert torch.equal(out3, net.layers[2](y1z, states[2])[0])
    # splitting a sequence and carrying the states reproduces the whole sequence (unidirectional layers)
    net = StackedRNN(3).add_layer("cerebral", 4, num_layers=2).add_layer("lstm", 5).add_layer("rnn", 2)
    whole, final = net(x)
    first, mid = net(x[:3])
    second, final2 = net(x[3:], mid)
    torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-6, rtol=0)
    for a, b in zip([*final2[0], *final2[1], final2[2]], [*final[0], *final[1], final[2]]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batch_first_unbatched_and_packed():
    net = StackedRNN(3, batch_first=True).add_layer("cerebral", 4).add_layer("lstm", 5)
    assert all(layer.batch_first for layer in net.layers)
    x = torch.randn(2, 6, 3)
    out, _ = net(x)
    assert out.shape == (2, 6, 5)
    single, _ = net(x[1])  # unbatched (L, H_in)
    torch.testing.assert_close(single, out[1], atol=1e-6, rtol=0)
    packed = pack_padded_sequence(x, [4, 6], batch_first=True, enforce_sorted=False)
    pout, states = net(packed)
    assert isinstance(pout, PackedSequence)
    _alone, alone_states = net(x[0, :4])
    torch.testing.assert_close(states[1][0][:, 0], alone_states[1][0], atol=1e-6, rtol=0)


def test_dropout_between_layers_training_only():
    net = StackedRNN(3, dropout=0.5).add_layer("cerebral", 4).add_layer("rnn", 3)
    x = torch.randn(6, 2, 3)
    net.eval()
    y_eval, _ = net(x)
    assert torch.equal(net(x)[0], y_eval)
    net.train()
    torch.manual_seed(3)
    y_train, _ = net(x)
    assert not torch.allclose(y_train, y_eval)
    torch.manual_seed(3)
    y0, _ = net.layers[0](x)
    y_hand, _ = net.layers[1](torch.nn.functional.dropout(y0, 0.5, training=True))
    torch.testing.assert_close(y_train, y_hand, atol=1e-6, rtol=0)
    # packed: dropout on the data only
    packed = pack_padded_sequence(x, [6, 3])
    out, _ = net(packed)
    assert isinstance(out, PackedSequence) and torch.equal(out.batch_sizes, packed.batch_sizes)
    # after the last layer there is no dropout
    one = StackedRNN(3, dropout=0.5).add_layer("lstm", 4)
    assert torch.equal(one(x)[0], one.eval()(x)[0])


def test_factory_options_and_float64():
    net = StackedRNN(3, dtype=torch.float64).add_layer("cerebral", 4, init="identical").add_layer(
        "lstm", 2, dtype=torch.float32)
    assert net.layers[0].weight_ih_l0.dtype == torch.float64 and net.layers[0].init == "identical"
    assert net.layers[1].weight_ih_l0.dtype == torch.float32


def test_errors():
    with pytest.raises(ValueError, match="kind.*rnn.*lstm.*gru.*cerebral.*cerebral-peephole.*cerebral-gru"):
        StackedRNN(3).add_layer("transformer", 4)
    with pytest.raises(TypeError, match="input_size"):
        StackedRNN(3).add_layer("lstm", 4, input_size=3)
    with pytest.raises(TypeError, match="batch_first"):
        StackedRNN(3).add_layer("lstm", 4, batch_first=True)
    with pytest.raises(RuntimeError, match="add_layer"):
        StackedRNN(3)(torch.randn(2, 1, 3))
    net = StackedRNN(3).add_layer("lstm", 4).add_layer("rnn", 4)
    with pytest.raises(ValueError, match="states"):
        net(torch.randn(2, 1, 3), [None])
    with pytest.raises(ValueError, match="states"):
        net(torch.randn(2, 1, 3), "none")
    with pytest.raises(ValueError, match="dropout"):
        StackedRNN(3, dropout=1.5)
    with pytest.raises(ValueError, match="input_size"):
        StackedRNN(0)
    with pytest.raises(ValueError, match="hidden_size"):
        StackedRNN(3).add_layer("cerebral", 0)
    with pytest.raises(TypeError, match="batch_first"):
        StackedRNN(3, batch_first=1)
