"""Text sources, the character vocabulary, the train/validation/test split and the windows fed to the models.

The default corpus is CPython's ``pydoc_data.topics`` (the dict's values joined in sorted-key order): real
English prose that ships with every Python, so nothing is downloaded. Its text differs between Python
versions, hence the version and the sha256 in every manifest.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from . import data as _data

UNKNOWN = ""  # vocabulary entry 0: characters never seen in the training part map here
DEFAULT_CORPUS = "pydoc_data.topics"


@dataclass
class Corpus:
    text: str
    source: str  # a file path, or DEFAULT_CORPUS
    encoding: str
    sha256: str  # of the text encoded as UTF-8

    def describe(self) -> dict:
        return {"source": self.source, "encoding": self.encoding, "sha256": self.sha256,
                "characters": len(self.text), "python_version": sys.version.split()[0]}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_default() -> Corpus:
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    return Corpus(text, DEFAULT_CORPUS, "utf-8", _sha256(text))


def load_file(path: str, encoding: str = "utf-8") -> Corpus:
    """Read a text file; every failure is a ValueError naming ``--corpus`` or ``--encoding``."""
    _, text = _data.read_text_file(path, "--corpus", encoding, empty_ok=False)
    if not text.strip():
        raise ValueError(f"--corpus: file holds only whitespace: {path}")
    return Corpus(text, os.path.abspath(path), encoding, _sha256(text))


def load_corpus(path: str | None = None, encoding: str = "utf-8", max_chars: int | None = None) -> Corpus:
    """The default corpus when ``path`` is None, else the file; optionally only its first ``max_chars``."""
    corpus = load_default() if path is None else load_file(path, encoding)
    if max_chars is not None and len(corpus.text) > max_chars:
        text = corpus.text[:max_chars]
        corpus = Corpus(text, corpus.source, corpus.encoding, _sha256(text))
    return corpus


class Vocab:
    """Characters of the training part, sorted; index 0 is the unknown symbol."""

    def __init__(self, chars: list[str]) -> None:
        if not chars or chars[0] != UNKNOWN:
            raise ValueError("vocab: expected the unknown symbol '' first")
        self.chars = list(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls([UNKNOWN, *sorted(set(text))])

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.index.get(ch, 0) for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] if int(i) != 0 else "\N{REPLACEMENT CHARACTER}" for i in ids)


@dataclass
class TextSplits:
    vocab: Vocab
    train: Tensor  # (N_train,) character ids
    val: Tensor  # (N_val,)
    test: Tensor  # (N_test,)
    val_text: str


def split(corpus: Corpus, seq_len: int, batch_size: int, fractions=(0.9, 0.05, 0.05)) -> TextSplits:
    """Contiguous train/validation/test split (``fractions``, default 90/5/5); vocabulary from the training
    part; checks there is enough text for one training batch and one validation and test window."""
    n = len(corpus.text)
    a, b = _data.contiguous_bounds(n, fractions)
    need_train = batch_size * seq_len + 1  # one full batch of windows
    if a < need_train or b - a < seq_len + 1 or n - b < seq_len + 1:
        need = max(math.ceil(need_train / fractions[0]), math.ceil((seq_len + 1) / fractions[1]),
                   math.ceil((seq_len + 1) / fractions[2])) + 1
        raise ValueError(f"--corpus: text too short: {n} characters; with --seq-len {seq_len}, --batch-size "
                         f"{batch_size} and --split {_data.format_split(fractions)} about {need} are needed "
                         f"(one training batch of windows, one validation and one test window)")
    train_text, val_text, test_text = corpus.text[:a], corpus.text[a:b], corpus.text[b:]
    vocab = Vocab.from_text(train_text)
    return TextSplits(vocab, vocab.encode(train_text), vocab.encode(val_text), vocab.encode(test_text), val_text)


def windows(ids: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping windows of ``seq_len + 1`` ids (input = first L, target = last L): (W, L + 1)."""
    count = (ids.numel() - 1) // seq_len
    starts = torch.arange(count) * seq_len
    return ids[starts.unsqueeze(1) + torch.arange(seq_len + 1)]  # (W, L+1)
