"""What every task shares about data: train/validation/test fractions, contiguous and stratified splits, and
the per-epoch order of the training examples."""

from __future__ import annotations

import codecs
import math
import os

import torch


def read_text_file(path: str, flag: str, encoding: str, *, empty_ok: bool = True) -> tuple[bytes, str]:
    """A user's text file as (raw bytes, decoded text); every failure is a ValueError naming ``flag`` (the file's
    option: missing, not a regular file, empty unless ``empty_ok``, not ``encoding`` text) or ``--encoding``."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"--encoding: unknown text encoding {encoding!r}") from None
    if not os.path.exists(path):
        raise ValueError(f"{flag}: file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: not a regular file: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw and not empty_ok:
        raise ValueError(f"{flag}: file is empty: {path}")
    try:
        return raw, raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag}: {path} is not valid {encoding} text (byte {e.start}: {e.reason}); pass "
                         f"--encoding with the file's encoding, e.g. --encoding latin-1") from None


def parse_split(text: str) -> tuple[float, float, float]:
    """``"90/5/5"`` -> (0.9, 0.05, 0.05): three positive percentages summing to 100 (``--split``)."""
    parts = str(text).split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values) or abs(sum(values) - 100) > 1e-9:
        raise ValueError(f"--split: expected three positive percentages TRAIN/VAL/TEST summing to 100, e.g. "
                         f"90/5/5, got {text!r}")
    return values[0] / 100, values[1] / 100, values[2] / 100


def format_split(fractions) -> str:
    return "/".join(f"{100 * f:g}" for f in fractions)


def contiguous_bounds(n: int, fractions) -> tuple[int, int]:
    """Cut points (a, b) of a sequence of length n: train [0, a), validation [a, b), test [b, n)."""
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    return a, b


def stratified_split(labels: list[int], fractions, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Indices (sorted) of a stratified train/validation/test split: the examples of each class are shuffled
    with a generator seeded by ``seed`` and cut so that each split holds round(fraction x class size) of
    them (validation and test rounded, the rest to training)."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train, val, test = [], [], []
    for c in sorted(by_class):
        idx = by_class[c]
        perm = [idx[int(j)] for j in torch.randperm(len(idx), generator=g)]
        n_val, n_test = round(len(idx) * fractions[1]), round(len(idx) * fractions[2])
        val += perm[:n_val]
        test += perm[n_val:n_val + n_test]
        train += perm[n_val + n_test:]
    return sorted(train), sorted(val), sorted(test)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of training examples for this epoch: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=g)
