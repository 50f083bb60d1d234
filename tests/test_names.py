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
    for cls in (RNN, LSTM, GRU):
        assert available_backends(cls) == ["auto", "torch", "reference"]
        with pytest.raises(ValueError, match="native"):
            cls(4, 6, backend="native")
    assert available_backends(CerebralLSTM) == available_backends("lstm")
    assert available_backends(CerebralGRU(4, 6)) == available_backends("gru")


def test_unknown_kind_names_are_refused():
    with pytest.raises(ValueError, match=r"kind: expected one of \['lstm', 'peephole', 'gru'"):
        available_backends("cerebral")
    with pytest.raises(TypeError, match="kind"):
        available_backends(torch.nn.LSTM)


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
