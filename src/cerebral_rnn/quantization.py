"""``torch.ao.quantization`` and the library's layers: they stay floating point, and say so.

``torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear})`` swaps the modules of the types it names
for int8 versions through its module mapping; the library's layers and cells (``CerebralLSTM``, ``LSTM``, ...)
are not ``torch.nn.LSTM`` subclasses and have no int8 version, so they stay in floating point. Rather than let
that pass silently, every layer and cell warns when torch's quantization preparation (``propagate_qconfig_``,
which ``quantize_dynamic``, ``prepare`` and ``quantize`` run) reaches it while asking for recurrent layers to be
quantized: a qconfig given to the layer itself (its class or its name in the spec, or a parent's), or a spec
that names one of torch's recurrent classes.

The rest of the model is quantized as asked; the layers compute exactly what they computed before.
"""

from __future__ import annotations

import sys
import warnings

from torch import nn

# torch's recurrent modules: a spec naming one of them asks for recurrent layers to be quantized
_TORCH_RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
_PROPAGATE = "_propagate_qconfig_helper"  # torch.ao.quantization.quantize's function that sets module.qconfig


def _spec_being_propagated(depth: int = 8):
    """The ``qconfig_dict`` of the ``propagate_qconfig_`` call setting an attribute now, if there is one."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name == _PROPAGATE:
            return frame.f_locals.get("qconfig_dict")
        frame = frame.f_back
    return None


class StaysFloat:
    """For the layer and cell classes (before ``nn.Module`` in the bases): warns when ``qconfig`` is set."""

    def __setattr__(self, name: str, value) -> None:
        if name == "qconfig":  # torch.ao.quantization preparing the model: this module stays float, and says so
            note_qconfig(self, value)
        super().__setattr__(name, value)


def note_qconfig(module: nn.Module, qconfig) -> None:
    """Called when ``module.qconfig`` is set: warn if quantization was asked of this floating-point layer."""
    spec = _spec_being_propagated()
    asked = qconfig is not None or (isinstance(spec, dict) and any(t in spec for t in _TORCH_RECURRENT))
    if asked:
        warnings.warn(f"{type(module).__name__} stays in floating point under torch.ao.quantization: cerebral-rnn "
                      "has no int8 version of its layers and cells, and quantize_dynamic swaps only the modules "
                      "its mapping names (torch.nn.LSTM is not this class). The rest of the model is quantized "
                      "as asked; this layer computes exactly what it computed before.", UserWarning, stacklevel=3)
