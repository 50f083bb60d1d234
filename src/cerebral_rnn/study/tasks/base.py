"""What a task is to the shared training loop.

A task loads its data once (``load``), gives each seed its train/validation/test splits (``splits``: the same
for every seed, or generated from the seed for the synthetic tasks), describes the model's input and output
(``data.io``, see :mod:`.model`), cuts a batch of examples (``batch``), computes the training loss of a batch
(``loss``) and the metrics of a whole split (``evaluate``, always with ``"loss"``). Its ``primary`` metric is
the one the verdicts are about (the test metric); early stopping and tuning use the validation loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Metric:
    key: str  # "loss" or one of the task's columns
    label: str  # e.g. "bits per character"
    unit: str  # e.g. "bpc"
    higher_is_better: bool


@dataclass
class Splits:
    train: Any
    val: Any
    test: Any


@dataclass
class TaskData:
    """What ``Task.load`` returns: the model's io (see :mod:`.model`), a manifest description, and anything
    the task keeps for itself (``payload``)."""

    io: dict
    describe: dict
    payload: Any = None


class Task:
    name: str = ""
    description: str = ""
    columns: tuple[str, ...] = ()  # metrics besides "loss", as columns val_<c>, test_<c>
    primary: Metric
    loss_label: str = ""  # unit of the loss, for the summary
    keys: tuple[str, ...] = ()  # config keys that change what is computed (checked on --resume)
    default_split: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def default_delta(self, cfg: dict) -> float:
        raise NotImplementedError

    def load(self, cfg: dict) -> TaskData:
        raise NotImplementedError

    def splits(self, data: TaskData, cfg: dict, seed: int) -> Splits:
        raise NotImplementedError

    def size(self, split) -> int:
        """Number of examples in a split."""
        raise NotImplementedError

    def batch(self, split, idx: torch.Tensor):
        raise NotImplementedError

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, int]:
        """Mean loss of the batch (what is minimised) and the count it is a mean over."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split, device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def success(self, metrics: dict[str, float]) -> bool | None:
        """Whether a run solved the task (adding, copy); None where the notion does not apply."""
        return None

    def success_rule(self) -> str | None:
        return None

    def intro(self, cfg: dict, data: TaskData) -> str:
        """One paragraph for the summary: the task, its data and its metrics."""
        raise NotImplementedError
