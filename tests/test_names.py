"""Names a user types: backend names per layer class (what available_backends lists is what the class runs),
a bad backend set on a layer, kind names, and whole-module pickling with plain attributes."""

from __future__ import annotations

import io

import pytest
import torch

from cerebral_rnn import (
    GRU,
    LSTM,
    RNN,
    CerebralGRU,
    CerebralLSTM,
    CerebralLSTMCell,
    CerebralPeepholeLSTM,
    available_backends,
)

LAYERS = [RNN, LSTM, GRU, CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU]


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_every_backend_listed_for_a_class_runs_it(cls):
    x = torch.randn(5, 3, 4)
    for name in available_backends(cls):
        torch.manual_seed(0)
        m = cls(4, 6, backend=name)
        y, _ = m(x)
        assert y.shape == (5, 3, 6)
        y.sum().backward()
        if hasattr(m, "last_backend") and name != "auto":
            assert m.last_backend == name  # it ran the named backend, not a fallback


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_a_bad_backend_attribute_is_a_value_error_naming_it(cls):
    m = cls(4, 6)
    with pytest.raises(ValueError, match=r"backend: expected one of .*, got 'nope'"):
        m.backend = "nope"
    with pytest.raises(TypeError, match="backend: expected a str"):
        m.backend = 3
    m.backend = "reference"
    assert m.backend == "reference"


def test_one_path_layers_list_what_they_accept():
    for cls in (LSTM, GRU):  # the native kernels with one path compute these two
        assert available_backends(cls) == ["auto", "torch", "native", "reference"]
        assert available_backends(cls.KIND) == available_backends(cls)  # the kind's name means its class
        assert cls(4, 6, backend="native").backend == "native"
    assert available_backends(RNN) == available_backends("rnn") == ["auto", "torch", "reference"]
    with pytest.raises(ValueError, match="native"):
        RNN(4, 6, backend="native")
    assert available_backends("lstm") == ["auto", "torch", "native", "reference"]
    assert available_backends(CerebralLSTM) == available_backends("cerebral") == ["auto", "reference", "lstm2h",
                                                                                 "native"]
    assert available_backends(CerebralGRU(4, 6)) == available_backends("cerebral-gru") == ["auto", "reference",
                                                                                          "native"]


def test_unknown_kind_names_are_refused():
    with pytest.raises(ValueError, match=r"kind: expected one of \['rnn', 'lstm', 'gru', 'cerebral', "
                                         r"'cerebral-peephole', 'cerebral-gru'\].*got 'peephole'"):
        available_backends("peephole")
    with pytest.raises(TypeError, match="kind"):
        available_backends(torch.nn.LSTM)


# the one name of each kind, written out here: the layer and cell classes, StackedRNN, the backends' kinds and
# the study's arms must all use these
NAMES = {"rnn": (RNN, "RNNCell"), "lstm": (LSTM, "LSTMCell"), "gru": (GRU, "GRUCell"),
         "cerebral": (CerebralLSTM, "CerebralLSTMCell"),
         "cerebral-peephole": (CerebralPeepholeLSTM, "CerebralPeepholeLSTMCell"),
         "cerebral-gru": (CerebralGRU, "CerebralGRUCell")}


def test_one_name_per_kind_everywhere():
    import cerebral_rnn
    from cerebral_rnn.backends import BACKENDS
    from cerebral_rnn.kinds import KINDS
    from cerebral_rnn.stack import LAYER_KINDS
    from cerebral_rnn.study.arms import ARMS

    assert list(KINDS) == list(NAMES) == list(LAYER_KINDS)
    for name, (cls, cell) in NAMES.items():
        assert KINDS[name].name == name and cls.KIND == name and LAYER_KINDS[name] is cls
        assert cls(3, 4).kind_name == name and getattr(cerebral_rnn, cell)(3, 4).kind_name == name
        assert cerebral_rnn.StackedRNN(3).add_layer(name, 4).layers[0].kind_name == name
    assert BACKENDS["native"].kinds == ("lstm", "gru", "cerebral", "cerebral-peephole", "cerebral-gru")
    assert BACKENDS["lstm2h"].kinds == ("cerebral",)
    for arm in ARMS.values():
        assert arm.kind in NAMES, arm.name
        if arm.name in NAMES:
            assert arm.kind == arm.name


@pytest.mark.parametrize("cls", [CerebralLSTM, CerebralPeepholeLSTM, CerebralGRU], ids=lambda c: c.__name__)
def test_widths_come_from_the_kind(cls):
    m = cls(3, 5, num_paths=3)
    G = {"cerebral": 4, "cerebral-peephole": 4, "cerebral-gru": 3}[cls.KIND]
    assert m.weight_hh_l0.shape == (3 * G * 5, 5)
    if cls is CerebralPeepholeLSTM:
        assert m.peephole_l0.shape == (3 * 3 * 5,)  # w_ci, w_cf, w_co per path


def test_a_module_pickled_with_an_earlier_kind_name_loads_with_the_one_name():
    m = CerebralGRU(4, 6)
    m.__dict__["kind_name"] = "gru"  # what earlier versions stored on the instance
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([CerebralGRU]):
        loaded = torch.load(buf, weights_only=True)
    assert loaded.kind_name == "cerebral-gru" and loaded.kind.name == "cerebral-gru"
    x = torch.randn(3, 2, 4)
    assert torch.equal(m(x)[0], loaded(x)[0])


@pytest.mark.parametrize("make", [lambda: CerebralLSTM(4, 6), lambda: CerebralGRU(4, 6, num_paths=3),
                                  lambda: CerebralPeepholeLSTM(4, 6), lambda: CerebralLSTMCell(4, 6)],
                         ids=["CerebralLSTM", "CerebralGRU-K3", "Peephole", "Cell"])
def test_a_whole_module_loads_with_weights_only_when_its_class_is_allowlisted(make):
    m = make()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([type(m)]):
        loaded = torch.load(buf, weights_only=True)
    x = torch.randn(2, 4) if isinstance(m, CerebralLSTMCell) else torch.randn(3, 2, 4)
    with torch.no_grad():
        a, b = m(x), loaded(x)
    assert torch.equal(a[0], b[0])
    plain = (str, int, float, bool, type(None), list, tuple, dict, set, torch.Tensor)
    assert all(isinstance(v, plain) or k.startswith("_") for k, v in vars(loaded).items())


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "CerebralLSTMCell", "CerebralPeepholeLSTMCell",
                                 "CerebralGRUCell"])
def test_cells_take_nn_lstmcells_positional_arguments(cls):
    import cerebral_rnn

    cell_cls = getattr(cerebral_rnn, cls)
    cell = cell_cls(4, 6, False, torch.device("cpu"), torch.float64)  # nn.LSTMCell(I, H, bias, device, dtype)
    assert cell.weight_ih.dtype == torch.float64 and cell.bias_ih is None
    with pytest.raises(TypeError):
        cell_cls(4, 6, True, None, None, "identical")  # the Cerebral arguments are keywords only
