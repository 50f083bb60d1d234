"""torch.ao.quantization.quantize_dynamic on a model holding the library's layers: the rest is quantized, the
layers stay float and say so (a warning), and compute exactly what they computed before."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

from cerebral_rnn import GRU, LSTM, CerebralGRU, CerebralLSTM, CerebralLSTMCell, CerebralPeepholeLSTM

QLinear = torch.ao.nn.quantized.dynamic.Linear
pytestmark = pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")


class Tagger(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _engine_or_skip():
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("fbgemm", "x86", "qnnpack")):
        pytest.skip(f"no quantized engine in this torch build: {engines}")


@pytest.mark.parametrize("make", [lambda: CerebralLSTM(4, 8), lambda: CerebralPeepholeLSTM(4, 8),
                                  lambda: CerebralGRU(4, 8, num_paths=3), lambda: LSTM(4, 8), lambda: GRU(4, 8)],
                         ids=["CerebralLSTM", "Peephole", "CerebralGRU-K3", "LSTM", "GRU"])
@pytest.mark.parametrize("spec", [{nn.LSTM, nn.Linear}, None], ids=["lstm-and-linear", "default-spec"])
def test_quantize_dynamic_warns_and_leaves_the_layer_float(make, spec):
    _engine_or_skip()
    torch.manual_seed(0)
    model = Tagger(make()).eval()
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        rnn_before = model.rnn(x)[0]
    with pytest.warns(UserWarning, match=f"{type(model.rnn).__name__} stays in floating point"):
        q = quantize_dynamic(model, spec) if spec is not None else quantize_dynamic(model)
    assert isinstance(q.head, QLinear)  # the rest of the model was quantized as asked
    assert type(q.rnn) is type(model.rnn) and q.rnn.weight_hh_l0.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(q.rnn(x)[0], rnn_before)
        assert q(x).shape == (5, 2, 3)
    assert not hasattr(q.rnn, "qconfig")  # torch removed what it set


def test_the_layer_named_in_the_spec_warns_too():
    _engine_or_skip()
    model = Tagger(CerebralLSTM(4, 8)).eval()
    with pytest.warns(UserWarning, match="CerebralLSTM stays in floating point"):
        quantize_dynamic(model, {CerebralLSTM: default_dynamic_qconfig, nn.Linear: default_dynamic_qconfig})


def test_quantizing_only_linear_layers_says_nothing():
    _engine_or_skip()
    model = nn.Sequential(CerebralLSTMCell(4, 8), nn.Identity())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_dynamic(Tagger(CerebralLSTM(4, 8)).eval(), {nn.Linear})
        quantize_dynamic(model, {nn.Linear})
    assert not [w for w in caught if "stays in floating point" in str(w.message)]


def test_a_cell_warns():
    _engine_or_skip()
    with pytest.warns(UserWarning, match="CerebralLSTMCell stays in floating point"):
        quantize_dynamic(nn.Sequential(CerebralLSTMCell(4, 8)), {nn.LSTMCell})
