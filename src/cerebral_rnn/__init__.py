"""cerebral-rnn: the Cerebral LSTM (Kumar 2020) and friends, with torch.nn.LSTM's contract."""

from . import backends, convert, init
from .backends import available_backends
from .cells import CerebralLSTMCell, LSTMCell, RNNCell
from .convert import (
    cerebral_from_lstm2h,
    cerebral_output_from_lstm2h,
    cerebral_state_to_lstm2h,
    cerebral_to_lstm2h,
    lstm_from_torch,
    lstm_to_torch,
)
from .layers import LSTM, RNN, CerebralLSTM
from .stack import StackedRNN

__version__ = "0.1.0"

__all__ = [
    "RNNCell",
    "LSTMCell",
    "CerebralLSTMCell",
    "RNN",
    "LSTM",
    "CerebralLSTM",
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
    "__version__",
]
