"""The arms of the comparison: a character-level language model (embedding -> RNN -> linear head over the
vocabulary) whose RNN differs by arm. Parameter counts and parameter matching live here too."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cerebral_rnn import LSTM, CerebralLSTM

ARMS = {
    "lstm": "single LSTM, hidden H",
    "lstm2": "two-stacked LSTM, hidden H per layer",
    "cerebral": "Cerebral LSTM, hidden H, init distinct",
    "cerebral-identical": "Cerebral LSTM, hidden H, init identical",
    "lstm-matched": "single LSTM whose width gives the parameter count closest to cerebral's",
}


def check_arms(names: list[str]) -> list[str]:
    """Validate a list of arm names (as given to ``--models``); duplicates are an error."""
    if not names:
        raise ValueError(f"--models: expected at least one of {list(ARMS)}")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"--models: unknown model {unknown[0]!r}; valid names: {', '.join(ARMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--models: a model is listed twice: {','.join(names)}")
    return names


def rnn_parameters(arm: str, embedding: int, width: int) -> int:
    """Parameters of the arm's RNN alone, for input size ``embedding`` and hidden size ``width``."""
    E, H = embedding, width
    def lstm_layer(inp: int) -> int:  # W_ih (4H x inp), W_hh (4H x H), b_ih and b_hh (4H each)
        return 4 * H * (inp + H) + 8 * H

    if arm in ("lstm", "lstm-matched"):
        return lstm_layer(E)
    if arm == "lstm2":
        return lstm_layer(E) + lstm_layer(H)
    if arm in ("cerebral", "cerebral-identical"):
        return 2 * lstm_layer(E)  # two paths, each an LSTM's worth of weights
    raise ValueError(f"arm: unknown model {arm!r}; valid names: {', '.join(ARMS)}")


def count_parameters(arm: str, vocab_size: int, embedding: int, width: int) -> int:
    """Whole model: embedding (V x E) + RNN + head (width x V weights, V biases)."""
    V = vocab_size
    return V * embedding + rnn_parameters(arm, embedding, width) + width * V + V


def matched_width(vocab_size: int, embedding: int, hidden: int) -> int:
    """Width of a single LSTM whose whole model has the parameter count closest to the Cerebral model of
    hidden size ``hidden`` (ties go to the smaller width)."""
    target = count_parameters("cerebral", vocab_size, embedding, hidden)
    best, best_gap = 1, None
    for width in range(1, 4 * hidden + 8):
        gap = abs(count_parameters("lstm-matched", vocab_size, embedding, width) - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = width, gap
    return best


def model_config(arm: str, vocab_size: int, embedding: int, hidden: int) -> dict:
    """Everything needed to rebuild an arm's model (stored in every checkpoint)."""
    check_arms([arm])
    width = matched_width(vocab_size, embedding, hidden) if arm == "lstm-matched" else hidden
    return {"arm": arm, "vocab_size": vocab_size, "embedding": embedding, "hidden": hidden, "width": width}


class CharLM(nn.Module):
    """embedding -> RNN -> linear head over the vocabulary. ``forward(x (L, B), state) -> (logits, state)``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = dict(config)
        arm, V, E, W = config["arm"], config["vocab_size"], config["embedding"], config["width"]
        self.embed = nn.Embedding(V, E)
        if arm in ("lstm", "lstm-matched"):
            self.rnn = LSTM(E, W)
        elif arm == "lstm2":
            self.rnn = LSTM(E, W, num_layers=2)
        elif arm == "cerebral":
            self.rnn = CerebralLSTM(E, W, init="distinct")
        elif arm == "cerebral-identical":
            self.rnn = CerebralLSTM(E, W, init="identical")
        else:
            raise ValueError(f"arm: unknown model {arm!r}; valid names: {', '.join(ARMS)}")
        self.head = nn.Linear(W, V)

    def forward(self, x: Tensor, state=None):
        y, state = self.rnn(self.embed(x), state)  # (L, B, W)
        return self.head(y), state  # (L, B, V)


def build_model(config: dict) -> CharLM:
    return CharLM(config)


def path_difference(model: nn.Module) -> float | None:
    """For a Cerebral model: max |upper - lower| over every RNN parameter (rows 0:4H against 4H:8H).
    Zero means the two paths are still identical (the Symmetry fact of DESIGN.md). None for other arms."""
    rnn = getattr(model, "rnn", None)
    if not isinstance(rnn, CerebralLSTM):
        return None
    gap = 0.0
    with torch.no_grad():
        for p in rnn.parameters():
            half = p.shape[0] // 2
            gap = max(gap, float((p[:half] - p[half:]).abs().max()))
    return gap
