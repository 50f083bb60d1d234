"""The model every arm is put into: input encoder -> the arm's RNN -> linear head, the same for every arm.

A task describes its input and output once (``io``): the input is ``{"kind": "tokens", "vocab": V,
"embedding": E}`` (an ``nn.Embedding(V, E)`` feeds the RNN) or ``{"kind": "features", "features": F}`` (F
numbers per step feed the RNN directly); ``outputs`` is the head's size; ``readout`` is ``"steps"`` (the head
reads the RNN output at every step: language modelling, copy) or ``"final"`` (the head reads the final hidden
state ``h_n`` of the last layer: classification, adding; with packed input that is each sequence's state at its
own length).

Model-level regularisation, the same for every arm (a tuning setting, see :mod:`.tuner`): ``input_dropout``
drops features of the encoder's output (the embedding, or the raw features) before the RNN, ``output_dropout``
drops features of the RNN's output (or of ``h_n`` with readout "final") before the head; both are
``nn.Dropout`` (inverted dropout, active in training only). Weight decay is the optimizer's (AdamW).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from . import arms as _arms

READOUTS = ("steps", "final")


def check_io(io: dict) -> dict:
    kind = io.get("kind")
    if kind == "tokens":
        keys = ("vocab", "embedding")
    elif kind == "features":
        keys = ("features",)
    else:
        raise ValueError(f"io: expected kind 'tokens' or 'features', got {kind!r}")
    for k in (*keys, "outputs"):
        if not isinstance(io.get(k), int) or io[k] < 1:
            raise ValueError(f"io: expected a positive int {k}, got {io.get(k)!r}")
    if io.get("readout") not in READOUTS:
        raise ValueError(f"io: expected readout in {READOUTS}, got {io.get('readout')!r}")
    return io


def input_size(io: dict) -> int:
    return io["embedding"] if io["kind"] == "tokens" else io["features"]


def count_parameters(arm: str, io: dict, width: int) -> int:
    """Whole model: encoder (V x E for tokens, none for features) + RNN + head (out x K weights, K biases)."""
    a = _arms.ARMS[arm]
    encoder = io["vocab"] * io["embedding"] if io["kind"] == "tokens" else 0
    out = a.output_size(width)
    return encoder + a.count(input_size(io), width) + out * io["outputs"] + io["outputs"]


def matched_width(arm: str, io: dict, hidden: int) -> int:
    """Width for ``arm`` whose whole model has the parameter count closest to that of its ``match`` arm at
    hidden size ``hidden`` (ties go to the smaller width)."""
    a = _arms.ARMS[arm]
    target = count_parameters(a.match, io, hidden)
    best, best_gap = 1, None
    for width in range(1, 4 * hidden + 8):
        gap = abs(count_parameters(arm, io, width) - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = width, gap
    return best


def check_dropout(p, name: str) -> float:
    """A dropout probability in [0, 1); ValueError naming ``name`` otherwise."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p < 1.0):
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")
    return float(p)


def model_config(arm: str, io: dict, hidden: int, task: str, forget_bias: float | None = None,
                 input_dropout: float = 0.0, output_dropout: float = 0.0, rnn_regularisers: dict | None = None) -> dict:
    """Everything needed to rebuild an arm's model (stored in every checkpoint). ``forget_bias`` is dropped
    (None) for an arm without a forget gate."""
    _arms.check_arms([arm])
    check_io(io)
    a = _arms.ARMS[arm]
    width = matched_width(arm, io, hidden) if a.match else hidden
    config = {"task": task, "arm": arm, "io": dict(io), "hidden": hidden, "width": width,
              "forget_bias": forget_bias if a.forget_gate else None,
              "input_dropout": check_dropout(input_dropout, "--input-dropout"),
              "output_dropout": check_dropout(output_dropout, "--output-dropout")}
    if rnn_regularisers:  # the recurrent layer's own (weight_dropout, recurrent_dropout, ...); absent when off
        config["rnn_regularisers"] = dict(rnn_regularisers)
    return config


class SeqModel(nn.Module):
    """encoder -> RNN -> linear head.

    ``forward(x, state=None, lengths=None) -> (out, state)``. ``x``: (L, N) token ids or (L, N, F) features;
    with ``lengths`` (N,) the sequences are packed (``pack_padded_sequence``, any order) so padding never
    enters the recurrence. ``out``: (L, N, K) with readout "steps", (N, K) with readout "final".
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = dict(config)
        io, arm = config["io"], _arms.ARMS[config["arm"]]
        self.readout = io["readout"]
        self.encoder = nn.Embedding(io["vocab"], io["embedding"]) if io["kind"] == "tokens" else nn.Identity()
        self.input_dropout = nn.Dropout(config.get("input_dropout", 0.0))
        regs = config.get("rnn_regularisers") or {}
        self.rnn = arm.build(input_size(io), config["width"], config.get("forget_bias"), **regs)
        self.output_dropout = nn.Dropout(config.get("output_dropout", 0.0))
        self.head = nn.Linear(arm.output_size(config["width"]), io["outputs"])

    def forward(self, x: Tensor, state=None, lengths: Tensor | None = None):
        e = self.input_dropout(self.encoder(x))  # (L, N, E)
        if lengths is not None:
            if self.readout != "final":
                raise ValueError("lengths: packed input needs readout 'final' (the head reads h_n)")
            e = pack_padded_sequence(e, lengths.cpu(), enforce_sorted=False)
        y, state = self.rnn(e, state)
        if self.readout == "final":
            return self.head(self.output_dropout(_arms.final_hidden(state))), state  # (N, K)
        return self.head(self.output_dropout(y)), state  # (L, N, K)


def build_model(config: dict) -> SeqModel:
    return SeqModel(config)


def model_rnn(model: nn.Module) -> nn.Module:
    """The RNN inside a model (under DistributedDataParallel too)."""
    return getattr(model, "module", model).rnn


def path_difference(model: nn.Module) -> float | None:
    return _arms.path_difference(model_rnn(model))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
