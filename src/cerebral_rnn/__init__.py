"""cerebral-rnn: the Cerebral LSTM (Kumar 2020), its family, and friends, with torch.nn.LSTM's contract."""

from . import backends, convert, init, kinds
from .backends import available_backends
from .cells import (
    CerebralGRUCell,
    CerebralLSTMCell,
    CerebralPeepholeLSTMCell,
    GRUCell,
    LSTMCell,
    RNNCell,
)
from .convert import (
    cerebral_from_lstm2h,
    cerebral_output_from_lstm2h,
    cerebral_state_to_lstm2h,
    cerebral_to_lstm2h,
    lstm_from_torch,
    lstm_to_torch,
)
from .layers import GRU, LSTM, RNN, CerebralGRU, CerebralLSTM, CerebralPeepholeLSTM
from .stack import StackedRNN

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
