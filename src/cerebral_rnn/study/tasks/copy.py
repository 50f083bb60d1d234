"""Task ``copy``: the copy memory problem as in Arjovsky, Shah & Bengio 2016 ("Unitary Evolution RNNs").

Ten symbols: 0 is the blank, 1–8 data symbols, 9 the delimiter. An input is 10 data symbols drawn uniformly
from 1–8, then T − 1 blanks (T = ``--length``), the delimiter, then 10 blanks: T + 20 steps. The target is
T + 10 blanks followed by the 10 data symbols. Model: embedding → RNN → linear head over the 10 symbols at
every step; loss and metric: cross-entropy in nats per step, averaged over all T + 20 steps. Predicting blanks
and then a uniform choice of the 8 data symbols scores 10·ln 8 / (T + 20) (the memoryless baseline). Also
reported: recall accuracy, the percentage of the 10 recalled symbols whose most likely prediction is right; a
run *succeeds* when its test recall accuracy is at least 99%.

The data are generated from the seed, as for the adding task (``DATA_SEED + s``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .adding import checked_split_sizes, generated_splits
from .base import Metric, Splits, Task, TaskData

DATA_SEED = 8_000_000
BLANK, DELIMITER, SYMBOLS, RECALL = 0, 9, 10, 10
SUCCESS_RECALL = 99.0


def baseline_ce(length: int) -> float:
    return RECALL * math.log(8) / (length + 2 * RECALL)


def generate(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (n, T + 20) symbol ids."""
    if length < 1:
        raise ValueError(f"--length: expected at least 1 blank for the copy task, got {length}")
    data = torch.randint(1, 9, (n, RECALL), generator=generator)
    total = length + 2 * RECALL
    x = torch.full((n, total), BLANK, dtype=torch.long)
    x[:, :RECALL] = data
    x[:, RECALL + length - 1] = DELIMITER
    y = torch.full((n, total), BLANK, dtype=torch.long)
    y[:, -RECALL:] = data
    return x, y


class Copy(Task):
    name = "copy"
    description = "copy memory problem"
    columns = ("recall_accuracy",)
    primary = Metric("loss", "cross-entropy per step", "nats/step", higher_is_better=False)
    loss_label = "nats/step"
    keys = ("length", "examples", "embedding")

    def default_delta(self, cfg: dict) -> float:
        return 0.05 * baseline_ce(cfg["length"])  # 5% of the memoryless baseline

    def load(self, cfg: dict) -> TaskData:
        sizes = checked_split_sizes(cfg)
        if cfg["length"] < 1:
            raise ValueError(f"--length: expected at least 1 blank for the copy task, got {cfg['length']}")
        io = {"kind": "tokens", "vocab": SYMBOLS, "embedding": cfg["embedding"], "outputs": SYMBOLS,
              "readout": "steps"}
        describe = {"length": cfg["length"], "steps": cfg["length"] + 2 * RECALL,
                    "examples_per_seed": cfg["examples"], "train_examples": sizes[0], "val_examples": sizes[1],
                    "test_examples": sizes[2], "data_seed": f"{DATA_SEED} + seed",
                    "baseline_ce": baseline_ce(cfg["length"])}
        return TaskData(io, describe, sizes)

    def splits(self, data: TaskData, cfg: dict, seed: int) -> Splits:
        return generated_splits(generate, DATA_SEED + seed, data, cfg)

    def size(self, split) -> int:
        return int(split[0].shape[0])

    def batch(self, split, idx):
        return split[0][idx].t(), split[1][idx].t()  # (T + 20, B) each

    def loss(self, model, batch, device):
        x, y = (t.to(device) for t in batch)
        logits, _ = model(x)  # (T + 20, B, 10)
        return F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1)), int(y.numel())

    @torch.no_grad()
    def evaluate(self, model, split, device, chunk: int = 512) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, correct, n = 0.0, 0, self.size(split)
        for start in range(0, n, chunk):
            x, y = (t.to(device) for t in self.batch(split, torch.arange(start, min(n, start + chunk))))
            logits, _ = model(x)
            total += float(F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1), reduction="sum"))
            correct += int((logits[-RECALL:].argmax(-1) == y[-RECALL:]).sum())
        model.train(was_training)
        steps = split[0].shape[1]
        return {"loss": total / (n * steps), "recall_accuracy": 100 * correct / (n * RECALL)}

    def success(self, metrics: dict[str, float]) -> bool | None:
        return metrics["recall_accuracy"] >= SUCCESS_RECALL

    def success_rule(self) -> str:
        return f"test recall accuracy ≥ {SUCCESS_RECALL:g}%"

    def intro(self, cfg: dict, data: TaskData) -> str:
        d = data.describe
        return (f"Copy memory problem: 10 data symbols (from 8), T = {cfg['length']} blanks with the delimiter "
                f"last, recall the 10 symbols ({d['steps']} steps); embedding {cfg['embedding']} → RNN → linear "
                f"head over the 10 symbols at every step. Each seed generates {cfg['examples']} sequences "
                f"(train/validation/test {d['train_examples']}/{d['val_examples']}/{d['test_examples']}). Loss "
                f"and metric: cross-entropy in nats per step over all steps (lower is better); the memoryless "
                f"baseline 10·ln 8/(T + 20) = {d['baseline_ce']:.4f}; a run succeeds when its test recall "
                f"accuracy ≥ {SUCCESS_RECALL:g}%.")


TASK = Copy()
