"""Task ``adding``: the adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015), a test of memory.

Each example is a sequence of T = ``--length`` steps of two features: a value drawn from U[0, 1] and a marker
that is 1 at exactly two steps (one drawn uniformly from the first half, one from the second) and 0 elsewhere.
The target is the sum of the two marked values; the head reads the final hidden state; loss and metric are the
mean squared error. Predicting the constant 1 scores the variance of the sum, 2/12 ≈ 0.167 (the trivial
baseline); a run *succeeds* when its test MSE is below 0.01.

The data are generated from the seed: seed s draws ``--examples`` sequences from a generator seeded with
``DATA_SEED + s`` and splits them train/validation/test (80/10/10 by default), so the arms of one seed see the
same data and every seed sees new data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Metric, Splits, Task, TaskData

DATA_SEED = 7_000_000
BASELINE_MSE = 1 / 6
SUCCESS_MSE = 0.01


def generate(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, T, 2): values and markers; y (n,): the sum of the two marked values."""
    if length < 2:
        raise ValueError(f"--length: expected at least 2 steps for the adding task, got {length}")
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), y


def split_sizes(examples: int, fractions) -> tuple[int, int, int]:
    n_val, n_test = round(examples * fractions[1]), round(examples * fractions[2])
    return examples - n_val - n_test, n_val, n_test


def checked_split_sizes(cfg: dict) -> tuple[int, int, int]:
    """:func:`split_sizes` of ``--examples`` by ``--split``, each part at least one example and training at least
    one batch (a ValueError naming ``--examples`` otherwise)."""
    sizes = split_sizes(cfg["examples"], cfg["split"])
    if min(sizes) < 1 or sizes[0] < cfg["batch_size"]:
        raise ValueError(f"--examples: {cfg['examples']} examples give a train/validation/test split of "
                         f"{sizes}; each part needs at least one and training at least --batch-size "
                         f"{cfg['batch_size']}")
    return sizes


def generated_splits(generate, data_seed: int, data: TaskData, cfg: dict) -> Splits:
    """The examples ``generate(n, length, generator)`` draws from ``data_seed``, cut train / validation / test
    at the sizes in ``data.payload`` (the synthetic tasks: each seed its own data)."""
    g = torch.Generator().manual_seed(data_seed)
    x, y = generate(cfg["examples"], cfg["length"], g)
    a, b = data.payload[0], data.payload[0] + data.payload[1]
    return Splits((x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]))


class Adding(Task):
    name = "adding"
    description = "adding problem"
    columns = ()
    primary = Metric("loss", "mean squared error", "MSE", higher_is_better=False)
    loss_label = "MSE"
    keys = ("length", "examples")

    def default_delta(self, cfg: dict) -> float:
        return 0.01  # the success threshold; 6% of the trivial baseline

    def load(self, cfg: dict) -> TaskData:
        sizes = checked_split_sizes(cfg)
        if cfg["length"] < 2:
            raise ValueError(f"--length: expected at least 2 steps for the adding task, got {cfg['length']}")
        io = {"kind": "features", "features": 2, "outputs": 1, "readout": "final"}
        describe = {"length": cfg["length"], "examples_per_seed": cfg["examples"],
                    "train_examples": sizes[0], "val_examples": sizes[1], "test_examples": sizes[2],
                    "data_seed": f"{DATA_SEED} + seed", "baseline_mse": BASELINE_MSE}
        return TaskData(io, describe, sizes)

    def splits(self, data: TaskData, cfg: dict, seed: int) -> Splits:
        return generated_splits(generate, DATA_SEED + seed, data, cfg)

    def size(self, split) -> int:
        return int(split[1].shape[0])

    def batch(self, split, idx):
        return split[0][idx].transpose(0, 1), split[1][idx]  # (T, B, 2), (B,)

    def loss(self, model, batch, device):
        x, y = batch
        pred, _ = model(x.to(device))  # (B, 1)
        return F.mse_loss(pred.squeeze(-1), y.to(device)), int(y.numel())

    @torch.no_grad()
    def evaluate(self, model, split, device, chunk: int = 1024) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, n = 0.0, self.size(split)
        for start in range(0, n, chunk):
            x, y = self.batch(split, torch.arange(start, min(n, start + chunk)))
            pred, _ = model(x.to(device))
            total += float(F.mse_loss(pred.squeeze(-1), y.to(device), reduction="sum"))
        model.train(was_training)
        return {"loss": total / n}

    def success(self, metrics: dict[str, float]) -> bool | None:
        return metrics["loss"] < SUCCESS_MSE

    def success_rule(self) -> str:
        return f"test MSE < {SUCCESS_MSE}"

    def intro(self, cfg: dict, data: TaskData) -> str:
        d = data.describe
        return (f"Adding problem: sequences of T = {cfg['length']} steps (value in U[0, 1], marker), two marked "
                f"values (one in each half), target their sum; RNN → linear head on the final hidden state. "
                f"Each seed generates {cfg['examples']} sequences (train/validation/test {d['train_examples']}/"
                f"{d['val_examples']}/{d['test_examples']}). Loss and metric: mean squared error (lower is "
                f"better); predicting 1 scores {BASELINE_MSE:.3f} (the trivial baseline); a run succeeds when "
                f"its test MSE < {SUCCESS_MSE}.")


TASK = Adding()
