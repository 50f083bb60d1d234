"""Task ``charlm``: character-level language modelling, the paper's experiment.

The corpus (default CPython's ``pydoc_data.topics``, or ``--corpus PATH``) is split contiguously into
train/validation/test (90/5/5 by default); the vocabulary comes from the training part (characters seen only
later map to an unknown symbol). Each part is cut into non-overlapping windows of ``seq_len + 1`` characters,
each run from a zero state; the loss is the mean per-character cross-entropy (nats) over a window's
``seq_len`` predicted characters, and the metric is bits per character (loss / ln 2). Model: embedding ->
RNN -> linear head over the vocabulary at every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import corpus as _corpus
from .base import Metric, Splits, Task, TaskData


class CharLM(Task):
    name = "charlm"
    description = "character-level language model"
    columns = ("bpc",)
    primary = Metric("bpc", "bits per character", "bpc", higher_is_better=False)
    loss_label = "nats/char"
    keys = ("corpus", "encoding", "max_chars", "seq_len", "embedding")
    default_split = (0.9, 0.05, 0.05)

    def default_delta(self, cfg: dict) -> float:
        return 0.01

    def load(self, cfg: dict) -> TaskData:
        corpus = _corpus.load_corpus(cfg["corpus"], cfg["encoding"], cfg["max_chars"])
        s = _corpus.split(corpus, cfg["seq_len"], cfg["batch_size"], cfg["split"])
        wins = {k: _corpus.windows(getattr(s, k), cfg["seq_len"]) for k in ("train", "val", "test")}
        V = len(s.vocab)
        describe = {"corpus": corpus.describe(), "vocab_size": V,
                    **{f"{k}_characters": int(getattr(s, k).numel()) for k in ("train", "val", "test")},
                    **{f"{k}_windows": int(w.shape[0]) for k, w in wins.items()},
                    "unknown_in_val": int((s.val == 0).sum()), "unknown_in_test": int((s.test == 0).sum())}
        io = {"kind": "tokens", "vocab": V, "embedding": cfg["embedding"], "outputs": V, "readout": "steps"}
        return TaskData(io, describe, {"splits": s, "windows": wins, "corpus": corpus})

    def splits(self, data: TaskData, cfg: dict, seed: int) -> Splits:
        w = data.payload["windows"]
        return Splits(w["train"], w["val"], w["test"])

    def size(self, split) -> int:
        return int(split.shape[0])

    def batch(self, split, idx):
        return split[idx].t()  # (L+1, B)

    def loss(self, model, batch, device):
        batch = batch.to(device)
        logits, _ = model(batch[:-1])  # (L, B, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1:].reshape(-1))
        return loss, batch[1:].numel()

    @torch.no_grad()
    def evaluate(self, model, split, device, chunk: int = 512) -> dict[str, float]:
        """Mean per-character cross-entropy (nats) and bits per character over all windows."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, split.shape[0], chunk):
            batch = split[start:start + chunk].t().to(device)  # (L+1, b)
            logits, _ = model(batch[:-1])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1:].reshape(-1),
                                           reduction="sum"))
            count += batch[1:].numel()
        model.train(was_training)
        loss = total / count
        return {"loss": loss, "bpc": loss / math.log(2)}

    def intro(self, cfg: dict, data: TaskData) -> str:
        c, d = data.describe["corpus"], data.describe
        return (f"Character-level language model (embedding {cfg['embedding']} → RNN → linear head over "
                f"{d['vocab_size']} symbols), windows of {cfg['seq_len']} characters. Corpus `{c['source']}` "
                f"({c['characters']} characters, sha256 `{c['sha256'][:16]}…`, Python {c['python_version']}); "
                f"contiguous train/validation/test split {d['train_characters']}/{d['val_characters']}/"
                f"{d['test_characters']} characters. Loss: per-character cross-entropy (nats); metric: bits per "
                f"character (bpc, lower is better).")


TASK = CharLM()
