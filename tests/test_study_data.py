"""The study's data: the default corpus, contiguous and stratified splits, data order, and the data of the
classify, adding and copy tasks (generation, CSV reading and its errors, metrics)."""

from __future__ import annotations

import hashlib
import math
import sys
from collections import Counter

import pytest
import torch

from cerebral_rnn.study import corpus as C
from cerebral_rnn.study import data as D
from cerebral_rnn.study.tasks import adding as AD
from cerebral_rnn.study.tasks import classify as CL
from cerebral_rnn.study.tasks import copy as CP

# -- charlm: corpus and contiguous split ----------------------------------------------------------------------


def test_default_corpus_is_pydoc_topics_in_sorted_key_order():
    from pydoc_data.topics import topics

    c = C.load_default()
    assert c.text == "".join(topics[k] for k in sorted(topics))
    assert c.sha256 == hashlib.sha256(c.text.encode()).hexdigest()
    assert c.describe()["python_version"] == sys.version.split()[0]
    assert len(c.text) > 100_000


def test_contiguous_90_5_5_split_vocab_and_windows(tmp_path):
    text = C.load_default().text[5000:9000]
    text = text[:3900] + "é€" + text[3900:]  # only in the test part (the last 5%)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    c = C.load_corpus(str(tmp_path / "t.txt"))
    s = C.split(c, seq_len=8, batch_size=8)
    n = len(text)
    a, b = int(n * 0.9), int(n * 0.95)  # computed here, independently
    assert s.vocab.chars[0] == C.UNKNOWN and s.vocab.chars[1:] == sorted(set(text[:a]))
    assert (s.train.numel(), s.val.numel(), s.test.numel()) == (a, b - a, n - b)
    assert s.vocab.decode(s.train[:50]) == text[:50] and s.val_text == text[a:b]
    assert s.vocab.decode(s.test) == "".join(ch if ch in s.vocab.index else "\N{REPLACEMENT CHARACTER}"
                                             for ch in text[b:])
    assert "€" not in s.vocab.index and int((s.test == 0).sum()) >= 1
    w = C.windows(s.train, 8)
    assert w.shape == ((a - 1) // 8, 9)
    assert torch.equal(w[1], s.train[8:17]) and torch.equal(w[0, -1], w[1, 0])  # consecutive, overlap of one
    s2 = C.split(c, seq_len=8, batch_size=8, fractions=(0.8, 0.1, 0.1))
    assert s2.train.numel() == int(n * 0.8) and s2.val.numel() == int(n * 0.9) - int(n * 0.8)


def test_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="--corpus: file not found"):
        C.load_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="--corpus: file is empty"):
        C.load_corpus(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n ")
    with pytest.raises(ValueError, match="--corpus: file holds only whitespace"):
        C.load_corpus(str(blank))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café crème ".encode("latin-1") * 400)
    with pytest.raises(ValueError, match="--encoding"):
        C.load_corpus(str(latin))
    assert "crème" in C.load_corpus(str(latin), encoding="latin-1").text
    with pytest.raises(ValueError, match="--encoding: unknown text encoding"):
        C.load_corpus(str(latin), encoding="no-such-codec")
    with pytest.raises(ValueError, match="--corpus: not a regular file"):
        C.load_corpus(str(tmp_path))
    short = tmp_path / "short.txt"
    short.write_text("hello world, " * 10)
    with pytest.raises(ValueError, match="--corpus: text too short: 130 characters.*--split 90/5/5"):
        C.split(C.load_corpus(str(short)), seq_len=20, batch_size=64)


def test_parse_split():
    assert D.parse_split("90/5/5") == (0.9, 0.05, 0.05)
    assert D.parse_split("80/10/10") == (0.8, 0.1, 0.1)
    for bad in ("90/10", "90/5/6", "100/0/0", "a/b/c", "-10/55/55"):
        with pytest.raises(ValueError, match=f"--split: expected three positive percentages.*got '{bad}'"):
            D.parse_split(bad)


def test_stratified_split_keeps_class_proportions():
    labels = [0] * 50 + [1] * 30 + [2] * 20 + [3] * 3
    tr, va, te = D.stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert sorted(tr + va + te) == list(range(len(labels))) and not (set(tr) & set(va) or set(va) & set(te))
    for part, frac in ((va, 0.1), (te, 0.1)):
        counts = Counter(labels[i] for i in part)
        for c, n in Counter(labels).items():
            assert counts[c] == round(n * frac)  # 5, 3, 2, 0
    assert (tr, va, te) == D.stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert (tr, va, te) != D.stratified_split(labels, (0.8, 0.1, 0.1), seed=1)


def test_data_order_depends_on_seed_and_epoch_only():
    a = D.epoch_order(100, seed=1, epoch=3)
    assert torch.equal(a, D.epoch_order(100, seed=1, epoch=3))
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, D.epoch_order(100, seed=1, epoch=4))
    assert not torch.equal(a, D.epoch_order(100, seed=2, epoch=3))


# -- classify -------------------------------------------------------------------------------------------------------


def base_cfg(**kw):
    cfg = {"split": (0.8, 0.1, 0.1), "csv": None, "text_column": None, "label_column": None, "digits_rows": False,
           "encoding": "utf-8", "vocab_size": 50, "max_words": 6, "embedding": 4, "batch_size": 4}
    cfg.update(kw)
    return cfg


def test_digits_pixel_by_pixel_and_row_by_row():
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn (study extra) is needed for the digits")
    from sklearn.datasets import load_digits

    d = load_digits()
    data = CL.TASK.load(base_cfg())
    tr = data.payload["train"]
    assert data.io == {"kind": "features", "features": 1, "outputs": 10, "readout": "final"}
    n = sum(len(data.payload[k].y) for k in ("train", "val", "test"))
    assert n == len(d.target) == 1797 and tr.x.shape[1:] == (64, 1)
    i = 0  # training example 0 is some digit image: its 64 steps are its pixels in reading order, / 16
    matches = [j for j in range(len(d.target)) if torch.equal(torch.tensor(d.images[j] / 16.0, dtype=torch.float32)
                                                              .reshape(64, 1), tr.x[i])]
    assert matches and int(d.target[matches[0]]) == int(tr.y[i])
    rows = CL.TASK.load(base_cfg(digits_rows=True))
    assert rows.io["features"] == 8 and rows.payload["train"].x.shape[1:] == (8, 8)
    assert torch.equal(rows.payload["train"].x.reshape(-1, 64), tr.x.reshape(-1, 64))  # same split
    for k, frac in (("val", 0.1), ("test", 0.1)):
        counts = torch.bincount(data.payload[k].y, minlength=10)
        expected = torch.tensor([round(int(c) * frac) for c in torch.bincount(torch.tensor(d.target))])
        assert torch.equal(counts, expected)
    assert sklearn.__version__


def test_macro_f1_matches_scikit_learn():
    pytest.importorskip("sklearn", reason="scikit-learn (study extra) is the reference")
    from sklearn.metrics import accuracy_score, f1_score

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g)
    p = torch.where(torch.rand(200, generator=g) < 0.6, y, torch.randint(0, 5, (200,), generator=g))  # class 4
    acc, f1 = CL.accuracy_and_macro_f1(y, p)
    assert acc == pytest.approx(100 * accuracy_score(y.numpy(), p.numpy()))
    assert f1 == pytest.approx(100 * f1_score(y.numpy(), p.numpy(), average="macro"))


REVIEWS = [("a great film, great acting", "pos"), ("awful. just awful!", "neg"), ("fine I guess", "meh")]


def write_csv(path, rows, header=("review", "sentiment")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_csv_words_vocabulary_and_stratified_split(tmp_path):
    rows = [(f"{t} take {i} it's", y) for i in range(20) for t, y in REVIEWS]
    path = write_csv(tmp_path / "r.csv", rows)
    data = CL.TASK.load(base_cfg(csv=path, text_column="review", label_column="sentiment", max_words=4))
    # words among the first 4 of the training texts: a great film | awful just take | fine i guess, + pad, unk
    assert data.io == {"kind": "tokens", "vocab": 2 + 9, "embedding": 4, "outputs": 3, "readout": "final"}
    assert data.describe["class_names"] == ["meh", "neg", "pos"]
    assert CL.tokenize("A great film, it's GREAT!") == ["a", "great", "film", "it's", "great"]
    for k in ("train", "val", "test"):
        assert torch.bincount(data.payload[k].y, minlength=3).tolist() == (
            [16, 16, 16] if k == "train" else [2, 2, 2])
    seqs = data.payload["train"].ids
    assert all(1 <= len(s) <= 4 for s in seqs)  # first --max-words words, at least one symbol
    x, lengths, _y = CL.TASK.batch(data.payload["train"], torch.tensor([0, 1, 2]))
    assert x.shape == (int(lengths.max()), 3) and lengths.tolist() == [len(seqs[i]) for i in range(3)]
    for b in range(3):  # padding (0) only beyond each length
        assert torch.all(x[lengths[b]:, b] == CL.PAD) and torch.all(x[:lengths[b], b] != CL.PAD)


@pytest.mark.parametrize("case,fragment", [
    ("missing_text_column", "--text-column: column 'text' is not in .*'review', 'sentiment'"),
    ("missing_label_column", "--label-column: column 'label' is not in"),
    ("one_class", "--label-column: column 'sentiment' of .* has only one class \\('pos'\\)"),
    ("empty_text", "--csv: .* line 3: empty text in column 'review'"),
    ("not_utf8", "--csv: .* is not valid utf-8 text"),
    ("missing_file", "--csv: file not found"),
    ("no_rows", "--csv: .* has a header but no data rows"),
    ("too_few_rows", "--csv: .* has 4 rows: too few"),
])
def test_bad_csv_gives_a_clear_error_naming_it(tmp_path, case, fragment):
    path = tmp_path / "bad.csv"
    cols = {"text_column": "review", "label_column": "sentiment"}
    if case == "missing_text_column":
        cols["text_column"] = "text"
        write_csv(path, REVIEWS)
    elif case == "missing_label_column":
        cols["label_column"] = "label"
        write_csv(path, REVIEWS)
    elif case == "one_class":
        write_csv(path, [("good", "pos"), ("great", "pos")])
    elif case == "empty_text":
        write_csv(path, [("good", "pos"), ("   ", "neg")])
    elif case == "not_utf8":
        path.write_bytes("review,sentiment\ncafé crème,pos\n".encode("latin-1"))
    elif case == "no_rows":
        write_csv(path, [])
    elif case == "too_few_rows":
        write_csv(path, [("good", "pos"), ("bad", "neg"), ("ok", "pos"), ("meh", "neg")])
    path = str(path) if case != "missing_file" else str(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=fragment):
        CL.TASK.load(base_cfg(csv=path, **cols))


def test_classify_flag_combinations(tmp_path):
    with pytest.raises(ValueError, match="--text-column: only used with --csv"):
        CL.TASK.load(base_cfg(text_column="review"))
    path = write_csv(tmp_path / "r.csv", REVIEWS * 10)
    with pytest.raises(ValueError, match="--digits-rows: only used without --csv"):
        CL.TASK.load(base_cfg(csv=path, text_column="review", label_column="sentiment", digits_rows=True))
    with pytest.raises(ValueError, match="--csv: also pass --text-column and --label-column"):
        CL.TASK.load(base_cfg(csv=path))


# -- adding and copy ------------------------------------------------------------------------------------------------


def test_adding_data_and_its_trivial_baseline():
    g = torch.Generator().manual_seed(0)
    x, y = AD.generate(20_000, 30, g)
    assert x.shape == (20_000, 30, 2) and y.shape == (20_000,)
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2)
    assert torch.all(markers[:, :15].sum(1) == 1) and torch.all(markers[:, 15:].sum(1) == 1)  # one per half
    assert torch.all((x[..., 0] >= 0) & (x[..., 0] < 1))
    torch.testing.assert_close(y, (x[..., 0] * markers).sum(1))
    assert float(((y - 1.0) ** 2).mean()) == pytest.approx(1 / 6, abs=0.005)  # predicting 1: var of U+U
    assert AD.BASELINE_MSE == pytest.approx(0.1667, abs=1e-4)
    x2, _ = AD.generate(20_000, 30, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="--length: expected at least 2"):
        AD.generate(3, 1, g)


def test_copy_data_and_its_memoryless_baseline():
    T = 15
    x, y = CP.generate(5000, T, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5000, T + 20)
    assert torch.all((x[:, :10] >= 1) & (x[:, :10] <= 8))
    assert torch.all(x[:, 10:T + 9] == 0) and torch.all(x[:, T + 9] == 9) and torch.all(x[:, T + 10:] == 0)
    assert torch.all(y[:, :T + 10] == 0) and torch.equal(y[:, -10:], x[:, :10])
    # the memoryless strategy: blank with certainty, then uniform over the 8 data symbols
    logp = torch.full((T + 20, 10), -math.inf)
    logp[:T + 10, 0] = 0.0
    logp[T + 10:, 1:9] = -math.log(8)
    ce = float(-logp.gather(1, y.t()).mean())
    assert ce == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-6) == pytest.approx(CP.baseline_ce(T))


def test_synthetic_tasks_generate_from_the_seed():
    cfg = {"split": (0.8, 0.1, 0.1), "examples": 100, "length": 6, "batch_size": 8, "embedding": 4}
    for task in (AD.TASK, CP.TASK):
        data = task.load(cfg)
        s0, s0b, s1 = task.splits(data, cfg, 0), task.splits(data, cfg, 0), task.splits(data, cfg, 1)
        assert torch.equal(s0.train[0], s0b.train[0]) and not torch.equal(s0.train[0], s1.train[0])
        assert (task.size(s0.train), task.size(s0.val), task.size(s0.test)) == (80, 10, 10)
    for task in (AD.TASK, CP.TASK):
        with pytest.raises(ValueError, match="--examples: 9 examples give a train/validation/test split of "
                                             "\\(7, 1, 1\\)"):
            task.load({**cfg, "examples": 9})  # fewer training examples than --batch-size
