"""Task ``classify``: sequence classification; metrics accuracy and macro-F1 (in percent).

Embedded default: scikit-learn's ``load_digits`` (1,797 handwritten digits, 8 x 8 pixels, 10 classes; ships with
the package, nothing is downloaded), read pixel by pixel as a 64-step sequence of one feature (a small
sequential MNIST), or row by row as 8 steps of 8 features (``--digits-rows``); pixels scaled to [0, 1].

``--csv PATH --text-column C --label-column C``: a user's labelled text (e.g. movie reviews). Words are the
lower-cased ``\\w+`` runs (an apostrophe inside a word is kept); the vocabulary is the ``--vocab-size`` most
frequent words of the training split (ties alphabetical), every other word maps to an unknown symbol;
each text keeps its first ``--max-words`` words. Sequences of different lengths are packed
(``pack_padded_sequence``), so no padding enters the recurrence; any number of classes (the labels' distinct
values, sorted).

Both: a stratified train/validation/test split (80/10/10 by default, the same for every seed); the head reads
the final hidden state ``h_n``; the loss is the cross-entropy.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import os
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import data as _data
from .base import Metric, Splits, Task, TaskData

SPLIT_SEED = 0  # the stratified split is the same for every seed of a run
PAD, UNKNOWN = 0, 1
WORD = re.compile(r"\w+(?:'\w+)*")


# -- metrics --------------------------------------------------------------------------------------------------


def accuracy_and_macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro-F1, both in percent. F1 of a class = 2 TP / (2 TP + FP + FN); the macro average is
    over the classes present in ``y_true`` or ``y_pred`` (as scikit-learn's ``f1_score(average="macro")``)."""
    y_true, y_pred = y_true.long().view(-1), y_pred.long().view(-1)
    acc = float((y_true == y_pred).double().mean()) * 100
    f1s = []
    for c in torch.unique(torch.cat([y_true, y_pred])).tolist():
        tp = int(((y_pred == c) & (y_true == c)).sum())
        fp = int(((y_pred == c) & (y_true != c)).sum())
        fn = int(((y_pred != c) & (y_true == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return acc, 100 * sum(f1s) / len(f1s)


# -- the two data sources ---------------------------------------------------------------------------------------


@dataclass
class Dense:
    """Fixed-length sequences: x (N, T, F) floats, y (N,) class ids."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Ragged:
    """Variable-length token sequences: ids (list of (T_i,) tensors), y (N,) class ids."""

    ids: list
    y: torch.Tensor


def load_digits_sequences(rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as sequences: (1797, 64, 1) pixel by pixel, or (1797, 8, 8) row by row."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("--task classify: scikit-learn is missing; install the study extra: "
                         "pip install 'cerebral-rnn[study]'") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (N, 8, 8), pixels in [0, 1]
    x = x if rows else x.reshape(-1, 64, 1)
    return x, torch.tensor(d.target, dtype=torch.long)


def tokenize(text: str) -> list[str]:
    return WORD.findall(text.lower())


def read_labelled_csv(path: str, text_column: str, label_column: str, encoding: str = "utf-8"
                      ) -> tuple[list[str], list[str], str]:
    """Texts and labels of a CSV with a header row, and the file's sha256. Every problem is a ValueError
    naming the flag: ``--csv`` (missing, not a file, not ``encoding`` text, no rows, an empty text or label),
    ``--text-column`` / ``--label-column`` (not in the header), ``--label-column`` (fewer than 2 classes)."""
    raw, text = _data.read_text_file(path, "--csv", encoding)
    reader = csv.DictReader(_io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = reader.fieldnames or []
    for flag, col in (("--text-column", text_column), ("--label-column", label_column)):
        if col not in header:
            raise ValueError(f"{flag}: column {col!r} is not in {path} (its columns: "
                             f"{', '.join(repr(h) for h in header) or 'none, the file is empty'})")
    texts, labels = [], []
    for line, row in enumerate(reader, start=2):
        t, y = row.get(text_column), row.get(label_column)
        if t is None or not t.strip():
            raise ValueError(f"--csv: {path} line {line}: empty text in column {text_column!r}")
        if y is None or not y.strip():
            raise ValueError(f"--csv: {path} line {line}: empty label in column {label_column!r}")
        texts.append(t)
        labels.append(y.strip())
    if not texts:
        raise ValueError(f"--csv: {path} has a header but no data rows")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"--label-column: column {label_column!r} of {path} has only one class "
                         f"({classes[0]!r}); classification needs at least 2")
    return texts, labels, hashlib.sha256(raw).hexdigest()


def build_vocab(token_lists: list[list[str]], size: int) -> list[str]:
    """The ``size`` most frequent words (ties alphabetical), after the padding and unknown symbols."""
    counts = Counter(w for toks in token_lists for w in toks)
    words = sorted(counts, key=lambda w: (-counts[w], w))[:size]
    return ["<pad>", "<unk>", *words]


# -- the task ----------------------------------------------------------------------------------------------------


class Classify(Task):
    name = "classify"
    description = "sequence classification"
    columns = ("accuracy", "macro_f1")
    primary = Metric("accuracy", "accuracy", "%", higher_is_better=True)
    loss_label = "nats/example"
    keys = ("csv", "text_column", "label_column", "encoding", "vocab_size", "max_words", "digits_rows",
            "embedding")
    default_split = (0.8, 0.1, 0.1)

    def default_delta(self, cfg: dict) -> float:
        return 0.5  # percentage points of accuracy

    def load(self, cfg: dict) -> TaskData:
        fr = cfg["split"]
        if cfg.get("csv") is None:
            for flag in ("text_column", "label_column"):
                if cfg.get(flag):
                    raise ValueError(f"--{flag.replace('_', '-')}: only used with --csv")
            x, y = load_digits_sequences(bool(cfg.get("digits_rows")))
            tr, va, te = _data.stratified_split(y.tolist(), fr, SPLIT_SEED)
            parts = {k: Dense(x[i], y[i]) for k, i in (("train", tr), ("val", va), ("test", te))}
            T, Fe = x.shape[1], x.shape[2]
            io = {"kind": "features", "features": int(Fe), "outputs": 10, "readout": "final"}
            describe = {"source": "sklearn.datasets.load_digits",
                        "reading": "row by row" if cfg.get("digits_rows") else "pixel by pixel",
                        "steps": int(T), "features_per_step": int(Fe), "examples": len(y), "classes": 10,
                        "class_names": [str(i) for i in range(10)]}
        else:
            if cfg.get("digits_rows"):
                raise ValueError("--digits-rows: only used without --csv (it reads the digits row by row)")
            if not cfg.get("text_column") or not cfg.get("label_column"):
                raise ValueError("--csv: also pass --text-column and --label-column")
            texts, labels, sha = read_labelled_csv(cfg["csv"], cfg["text_column"], cfg["label_column"],
                                                   cfg.get("encoding") or "utf-8")
            classes = sorted(set(labels))
            y = torch.tensor([classes.index(v) for v in labels], dtype=torch.long)
            tr, va, te = _data.stratified_split(y.tolist(), fr, SPLIT_SEED)
            if not tr or not va or not te:
                raise ValueError(f"--csv: {cfg['csv']} has {len(texts)} rows: too few for a train/validation/"
                                 f"test split of {_data.format_split(fr)} (each part needs at least one row)")
            tokens = [tokenize(t)[:cfg["max_words"]] for t in texts]
            vocab = build_vocab([tokens[i] for i in tr], cfg["vocab_size"])
            index = {w: i for i, w in enumerate(vocab)}
            ids = [torch.tensor([index.get(w, UNKNOWN) for w in toks] or [UNKNOWN], dtype=torch.long)
                   for toks in tokens]
            parts = {k: Ragged([ids[j] for j in i], y[i]) for k, i in (("train", tr), ("val", va), ("test", te))}
            io = {"kind": "tokens", "vocab": len(vocab), "embedding": cfg["embedding"], "outputs": len(classes),
                  "readout": "final"}
            lengths = [len(t) for t in ids]
            describe = {"source": os.path.abspath(cfg["csv"]), "sha256": sha, "text_column": cfg["text_column"],
                        "label_column": cfg["label_column"], "examples": len(texts), "classes": len(classes),
                        "class_names": classes, "vocab_size": len(vocab), "max_words": cfg["max_words"],
                        "mean_words": sum(lengths) / len(lengths),
                        "truncated": sum(len(tokenize(t)) > cfg["max_words"] for t in texts)}
        describe.update({f"{k}_examples": len(v.y) for k, v in parts.items()},
                        class_counts={k: torch.bincount(v.y, minlength=io["outputs"]).tolist()
                                      for k, v in parts.items()})
        return TaskData(io, describe, parts)

    def splits(self, data: TaskData, cfg: dict, seed: int) -> Splits:
        p = data.payload
        return Splits(p["train"], p["val"], p["test"])

    def size(self, split) -> int:
        return int(split.y.shape[0])

    def batch(self, split, idx):
        if isinstance(split, Dense):
            return split.x[idx].transpose(0, 1), None, split.y[idx]  # (T, B, F)
        seqs = [split.ids[int(i)] for i in idx]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        x = torch.nn.utils.rnn.pad_sequence(seqs, padding_value=PAD)  # (T_max, B), padding never reaches the RNN
        return x, lengths, split.y[idx]

    def _logits(self, model, batch, device):
        x, lengths, y = batch
        logits, _ = model(x.to(device), lengths=lengths)
        return logits, y.to(device)

    def loss(self, model, batch, device):
        logits, y = self._logits(model, batch, device)
        return F.cross_entropy(logits, y), int(y.numel())

    @torch.no_grad()
    def evaluate(self, model, split, device, chunk: int = 256) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, preds = 0.0, []
        n = self.size(split)
        for start in range(0, n, chunk):
            logits, y = self._logits(model, self.batch(split, torch.arange(start, min(n, start + chunk))), device)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(-1).cpu())
        model.train(was_training)
        acc, f1 = accuracy_and_macro_f1(split.y, torch.cat(preds))
        return {"loss": total / n, "accuracy": acc, "macro_f1": f1}

    def intro(self, cfg: dict, data: TaskData) -> str:
        d = data.describe
        split = f"{d['train_examples']}/{d['val_examples']}/{d['test_examples']}"
        if cfg.get("csv") is None:
            what = (f"scikit-learn's digits read {d['reading']} ({d['steps']} steps of {d['features_per_step']} "
                    f"feature(s), pixels scaled to [0, 1]; 10 classes)")
            head = "RNN → linear head on the final hidden state"
        else:
            what = (f"`{d['source']}` (sha256 `{d['sha256'][:16]}…`), text column `{d['text_column']}`, label "
                    f"column `{d['label_column']}`, {d['classes']} classes, vocabulary of {d['vocab_size']} "
                    f"symbols (the {cfg['vocab_size']} most frequent training words, padding, unknown), the first "
                    f"{d['max_words']} words of each text ({d['truncated']} truncated, mean {d['mean_words']:.1f} "
                    f"words), packed sequences")
            head = f"embedding {cfg['embedding']} → RNN → linear head on the final hidden state"
        return (f"Sequence classification ({head}) on {what}; stratified train/validation/test split {split} "
                f"examples. Loss: cross-entropy (nats per example); metrics: accuracy (the verdicts' metric, "
                f"higher is better) and macro-F1, in percent.")


TASK = Classify()
