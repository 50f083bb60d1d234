"""cerebral-rnn: the Cerebral LSTM (Kumar 2020), its family, and friends, with torch.nn.LSTM's contract."""

# The public names load on first use (PEP 562), so that tools which need none of them (``cerebral-rnn
# reproduce --help``) start without importing torch.
_WHERE = {
    **dict.fromkeys(("RNNCell", "LSTMCell", "GRUCell", "CerebralLSTMCell", "CerebralPeepholeLSTMCell",
                     "CerebralGRUCell"), "cells"),
    **dict.fromkeys(("RNN", "LSTM", "GRU", "CerebralLSTM", "CerebralPeepholeLSTM", "CerebralGRU"), "layers"),
    "StackedRNN": "stack",
    "available_backends": "backends",
    **dict.fromkeys(("lstm_from_torch", "lstm_to_torch", "cerebral_to_lstm2h", "cerebral_from_lstm2h",
                     "cerebral_state_to_lstm2h", "cerebral_output_from_lstm2h"), "convert"),
}
_SUBMODULES = ("backends", "cells", "convert", "init", "kinds", "layers", "layout", "stack")

__version__ = "0.1.0"

__all__ = [
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "CerebralLSTMCell",
    "CerebralPeepholeLSTMCell",
    "CerebralGRUCell",
    "RNN",
    "LSTM",
    "GRU",
    "CerebralLSTM",
    "CerebralPeepholeLSTM",
    "CerebralGRU",
    "StackedRNN",
    "available_backends",
    "lstm_from_torch",
    "lstm_to_torch",
    "cerebral_to_lstm2h",
    "cerebral_from_lstm2h",
    "cerebral_state_to_lstm2h",
    "cerebral_output_from_lstm2h",
    "backends",
    "convert",
    "init",
    "kinds",
    "__version__",
]


def __getattr__(name: str):
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
