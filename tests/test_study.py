"""The study harness: corpus, arms, training/resume, DDP, report and the ``cerebral-rnn`` command line.

Everything runs on a tiny corpus with tiny models so the whole file takes well under two minutes on 2 cores.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cerebral_rnn.cli import main
from cerebral_rnn.study import corpus as C
from cerebral_rnn.study import models as M
from cerebral_rnn.study import report as R
from cerebral_rnn.study import train as T

SRC = str(Path(__file__).resolve().parents[1] / "src")
ARMS = list(M.ARMS)
TINY = ["--hidden", "6", "--embedding", "4", "--seq-len", "8", "--batch-size", "8", "--lr", "0.01", "--threads", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """~2400 characters of real text from the default corpus, plus a non-ASCII character in the validation part."""
    text = C.load_default().text[5000:7400]
    text = text[:2300] + "é€" + text[2300:]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*args: str) -> int:
    return main(["reproduce", *args])


def rows_without_seconds(path: Path) -> list[tuple]:
    return [(r["model"], r["seed"], r["epoch"], r["train_loss"], r["val_loss"], r["val_bpc"])
            for r in R.read_metrics_csv(str(path))]


# -- corpus ------------------------------------------------------------------------------------------------


def test_default_corpus_is_pydoc_topics_in_sorted_key_order():
    from pydoc_data.topics import topics

    c = C.load_default()
    assert c.text == "".join(topics[k] for k in sorted(topics))
    assert c.sha256 == hashlib.sha256(c.text.encode()).hexdigest()
    assert c.describe()["python_version"] == sys.version.split()[0]
    assert len(c.text) > 100_000


def test_split_vocab_and_windows(tiny_corpus):
    c = C.load_corpus(str(tiny_corpus))
    s = C.split(c, seq_len=8, batch_size=8)
    cut = int(len(c.text) * 0.9)
    assert s.vocab.chars[0] == C.UNKNOWN and s.vocab.chars[1:] == sorted(set(c.text[:cut]))
    assert s.train.numel() == cut and s.val.numel() == len(c.text) - cut
    assert s.vocab.decode(s.train[:50]) == c.text[:50]
    # characters seen only in the validation part map to the unknown symbol
    assert "€" not in s.vocab.index and int((s.val == 0).sum()) >= 1
    w = C.windows(s.train, 8)
    assert w.shape == ((cut - 1) // 8, 9)
    assert torch.equal(w[1], s.train[8:17]) and torch.equal(w[0, -1], w[1, 0])  # consecutive, overlap of one


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
    with pytest.raises(ValueError, match="--corpus: text too short: 130 characters"):
        C.split(C.load_corpus(str(short)), seq_len=20, batch_size=64)


def test_corpus_errors_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa" * 1000)
    with pytest.raises(SystemExit) as e:
        run_cli("--corpus", str(bad), "--out", str(tmp_path / "o"), *TINY)
    assert e.value.code == 2
    assert "--encoding" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


# -- arms and parameter matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("V,E,H", [(87, 32, 128), (40, 8, 16), (200, 16, 5)])
def test_parameter_counts_match_the_built_models(V, E, H):
    for arm in ARMS:
        cfg = M.model_config(arm, V, E, H)
        model = M.build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == M.count_parameters(arm, V, E, cfg["width"])


@pytest.mark.parametrize("V,E,H", [(87, 32, 128), (40, 8, 16), (200, 16, 5)])
def test_matched_width_is_the_closest_by_brute_force(V, E, H):
    def real_count(width):  # independent of the formula: build the model and count
        return sum(p.numel() for p in M.build_model(
            {"arm": "lstm-matched", "vocab_size": V, "embedding": E, "hidden": H, "width": width}).parameters())

    target = sum(p.numel() for p in M.build_model(M.model_config("cerebral", V, E, H)).parameters())
    w = M.matched_width(V, E, H)
    assert w > H  # the Cerebral RNN has twice the single LSTM's weights at the same H
    gaps = {x: abs(real_count(x) - target) for x in range(max(1, w - 3), w + 4)}
    assert gaps[w] == min(gaps.values())
    assert M.model_config("lstm-matched", V, E, H)["width"] == w


def test_unknown_arm_lists_valid_names():
    with pytest.raises(ValueError, match="--models: unknown model 'gru'.*cerebral-identical"):
        M.check_arms(["lstm", "gru"])
    with pytest.raises(ValueError, match="listed twice"):
        M.check_arms(["lstm", "lstm"])


def test_arms_use_the_public_layers():
    from cerebral_rnn import LSTM, CerebralLSTM

    kinds = {a: M.build_model(M.model_config(a, 30, 4, 6)).rnn for a in ARMS}
    assert isinstance(kinds["lstm"], LSTM) and kinds["lstm"].num_layers == 1
    assert isinstance(kinds["lstm2"], LSTM) and kinds["lstm2"].num_layers == 2
    assert isinstance(kinds["cerebral"], CerebralLSTM) and kinds["cerebral"].init == "distinct"
    assert kinds["cerebral-identical"].init == "identical"


# -- training, outputs, resume --------------------------------------------------------------------------------


def test_end_to_end_outputs(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--corpus", str(tiny_corpus), "--epochs", "2", "--seeds", "2", "--out", str(out), *TINY) == 0
    assert capsys.readouterr().err == ""  # --quiet
    for name in ("manifest.json", "metrics.csv", "summary.md", "loss_curves.png", "samples.txt"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["model", "seed", "epoch", "train_loss", "val_loss", "val_bpc", "seconds"]
        rows = list(reader)
    assert len(rows) == len(ARMS) * 2 * 2
    assert {(r[0], r[1], r[2]) for r in rows} == {(a, str(s), str(e)) for a in ARMS for s in (0, 1) for e in (1, 2)}
    for r in R.read_metrics_csv(str(out / "metrics.csv")):
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
        assert 0 < r["train_loss"] < 10 and r["seconds"] > 0

    m = json.loads((out / "manifest.json").read_text())
    text = tiny_corpus.read_text(encoding="utf-8")
    assert m["corpus"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert m["corpus"]["characters"] == len(text) and m["corpus"]["source"] == str(tiny_corpus)
    assert m["corpus"]["python_version"] == sys.version.split()[0]
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["python"] == sys.version.split()[0]
    assert m["seeds"] == [0, 1] and m["status"] == "complete"
    assert m["data"]["vocab_size"] == len(set(text[: int(len(text) * 0.9)])) + 1
    assert m["config"]["hidden"] == 6 and m["config"]["seq_len"] == 8 and m["config"]["models"] == ARMS
    for arm in ARMS:
        assert m["arms"][arm]["parameters"] == M.count_parameters(arm, m["data"]["vocab_size"], 4,
                                                                  m["arms"][arm]["width"])
    # Symmetry (DESIGN.md): identical paths stay identical under deterministic training; distinct ones differ.
    # (bitwise equality can be lost to rounding: the two paths are different rows of one GEMM)
    assert m["symmetry_max_path_difference"]["cerebral-identical"] < 1e-5
    assert m["symmetry_max_path_difference"]["cerebral"] > 1e-2

    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    for arm in ARMS:
        assert f"| `{arm}` |" in summary
        assert f"=== {arm} (seed" in (out / "samples.txt").read_text()
    assert summary.count("(paper's claim;") == 3

    for ckpt_path in sorted((out / "checkpoints").glob("*.pt")):
        ckpt = torch.load(ckpt_path, weights_only=True)  # only tensors, dicts, lists, numbers, strings
        assert ckpt["format"] == T.CHECKPOINT_FORMAT and ckpt["vocab"][0] == C.UNKNOWN
    last = torch.load(out / "checkpoints" / "cerebral-seed1.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["metrics"]) == 2 and "optimizer" in last and "rng" in last
    best = torch.load(out / "checkpoints" / "cerebral-seed1-best.pt", weights_only=True)
    assert best["val_loss"] == min(r["val_loss"] for r in last["metrics"])

    # generate from a checkpoint
    assert main(["generate", "--checkpoint", str(out / "checkpoints" / "lstm-seed0-best.pt"),
                 "--prime", "The ", "--length", "30", "--temperature", "0.7", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("The ") and len(printed.rstrip("\n")) == 34
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(out / "checkpoints" / "lstm-seed0.pt"), "--prime", "€€€"])
    assert "--prime: none of the characters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(out / "metrics.csv"), "--prime", "a"])
    assert "--checkpoint" in capsys.readouterr().err

    # a second run into the same folder without --resume is refused; with --resume it skips finished arms
    with pytest.raises(SystemExit):
        run_cli("--corpus", str(tiny_corpus), "--epochs", "2", "--seeds", "2", "--out", str(out), *TINY)
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    before = (out / "metrics.csv").read_text()
    assert run_cli("--corpus", str(tiny_corpus), "--epochs", "2", "--seeds", "2", "--out", str(out), "--resume",
                   *TINY[:-1]) == 0
    assert (out / "metrics.csv").read_text() == before  # nothing retrained, seconds included
    assert "finished earlier (2 epochs), skipped" in capsys.readouterr().err
    # resuming with another config is refused, naming what differs
    with pytest.raises(SystemExit):
        run_cli("--corpus", str(tiny_corpus), "--epochs", "3", "--out", str(out), "--resume", *TINY[:1], "7",
                *TINY[2:])
    assert "--resume: the config differs" in (err := capsys.readouterr().err) and "hidden: 6" in err


def test_generate_is_reproducible(tiny_corpus, tmp_path):
    out = tmp_path / "g"
    run_cli("--corpus", str(tiny_corpus), "--epochs", "1", "--seeds", "1", "--models", "cerebral", "--out",
            str(out), *TINY)
    model, vocab = R.model_from_checkpoint(T.load_checkpoint(str(out / "checkpoints" / "cerebral-seed0.pt")))
    a = R.generate(model, vocab, "the", 40, 1.0, seed=5)
    assert a == R.generate(model, vocab, "the", 40, 1.0, seed=5) and len(a) == 40
    assert C.UNKNOWN not in set(a) and "\N{REPLACEMENT CHARACTER}" not in a
    with pytest.raises(ValueError, match="--temperature"):
        R.generate(model, vocab, "the", 5, 0.0)
    with pytest.raises(ValueError, match="--prime"):
        R.generate(model, vocab, "", 5, 1.0)


def test_resume_after_stop_equals_uninterrupted(tiny_corpus, tmp_path):
    common = ["--corpus", str(tiny_corpus), "--seeds", "2", "--models", "cerebral,lstm2", *TINY]
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "full")) == 0
    # stopped in the middle of the second seed of the first arm, then resumed
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "cut"), "--stop-after-epochs", "4") == 3
    assert len(R.read_metrics_csv(str(tmp_path / "cut" / "metrics.csv"))) == 4
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "cut"), "--resume") == 0
    # a shorter run extended with --resume --epochs
    assert run_cli(*common, "--epochs", "1", "--out", str(tmp_path / "ext")) == 0
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "ext"), "--resume") == 0
    full = rows_without_seconds(tmp_path / "full" / "metrics.csv")
    assert len(full) == 12
    assert rows_without_seconds(tmp_path / "cut" / "metrics.csv") == full  # exact equality
    assert rows_without_seconds(tmp_path / "ext" / "metrics.csv") == full
    a = torch.load(tmp_path / "full" / "checkpoints" / "cerebral-seed1.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "cerebral-seed1.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # resuming with fewer epochs than already done is refused
    with pytest.raises(SystemExit):
        run_cli(*common, "--epochs", "2", "--out", str(tmp_path / "ext"), "--resume")


def test_sigkill_mid_run_then_resume(tiny_corpus, tmp_path):
    args = ["--corpus", str(tiny_corpus), "--seeds", "1", "--models", "cerebral", "--epochs", "30", *TINY[:-1]]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cerebral_rnn.cli", "reproduce", *args, "--quiet", "--out",
                             str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.csv"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 1 + 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(R.read_metrics_csv(str(metrics)))
    assert 3 <= done < 30
    ckpt = torch.load(out / "checkpoints" / "cerebral-seed0.pt", weights_only=True)  # not torn
    assert ckpt["epoch"] in (done, done + 1)
    (out / "checkpoints" / "cerebral-seed0.pt.tmp99999").write_bytes(b"torn")  # as if killed inside a save
    assert run_cli(*args, "--quiet", "--out", str(out), "--resume") == 0
    assert run_cli(*args, "--quiet", "--out", str(tmp_path / "clean")) == 0
    resumed = rows_without_seconds(metrics)
    assert len(resumed) == 30 and resumed == rows_without_seconds(tmp_path / "clean" / "metrics.csv")
    assert not list(out.rglob("*.tmp*"))


def test_data_order_depends_on_seed_and_epoch_only():
    a = T.epoch_order(100, seed=1, epoch=3)
    assert torch.equal(a, T.epoch_order(100, seed=1, epoch=3))
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, T.epoch_order(100, seed=1, epoch=4))
    assert not torch.equal(a, T.epoch_order(100, seed=2, epoch=3))


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.rand(3), np.random.normal(), random.gauss(0, 1)  # python's gauss caches a value
    state = T.rng_state(torch.device("cpu"))
    T.atomic_save({"rng": state}, str(tmp_path / "r.pt"))
    expected = (torch.rand(5), np.random.normal(size=5), [random.gauss(0, 1) for _ in range(3)])
    T.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(5), expected[0])
    assert np.array_equal(np.random.normal(size=5), expected[1])
    assert [random.gauss(0, 1) for _ in range(3)] == expected[2]
    assert not list(tmp_path.glob("*.tmp*"))


# -- multiple processes ----------------------------------------------------------------------------------------


def test_two_processes_match_one(tiny_corpus, tmp_path):
    args = ["--corpus", str(tiny_corpus), "--seeds", "1", "--models", "cerebral,lstm", "--epochs", "2", *TINY]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "cerebral_rnn.cli", "reproduce", *args, "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert run_cli(*args, "--out", str(tmp_path / "one")) == 0
    ddp = R.read_metrics_csv(str(tmp_path / "ddp" / "metrics.csv"))
    one = R.read_metrics_csv(str(tmp_path / "one" / "metrics.csv"))
    assert [(r["model"], r["epoch"]) for r in ddp] == [(r["model"], r["epoch"]) for r in one] and len(one) == 4
    for a, b in zip(ddp, one):
        for k in ("train_loss", "val_loss"):
            assert a[k] == pytest.approx(b[k], abs=1e-5, rel=0)
    assert json.loads((tmp_path / "ddp" / "manifest.json").read_text())["world_size"] == 2


# -- report ------------------------------------------------------------------------------------------------


def synthetic_rows(values: dict[str, list[float]], epochs: int = 2) -> list[dict]:
    """Rows whose last-epoch train loss per seed is given; val loss = train + 0.1."""
    rows = []
    for arm, finals in values.items():
        for seed, final in enumerate(finals):
            for e in range(1, epochs + 1):
                tl = final + (epochs - e) * 0.5
                rows.append({"model": arm, "seed": seed, "epoch": e, "train_loss": tl, "val_loss": tl + 0.1,
                             "val_bpc": (tl + 0.1) / math.log(2), "seconds": 1.0})
    return rows


def claim(lines: list[str], fragment: str) -> str:
    (line,) = [ln for ln in lines if fragment in ln]
    return line


def test_claims_follow_the_metrics():
    rows = synthetic_rows({"cerebral": [1.0, 1.1], "lstm": [1.5, 1.6], "lstm2": [1.05, 1.2],
                           "cerebral-identical": [0.8, 0.9]})
    lines = R.claim_lines(rows)
    one = claim(lines, "`cerebral` vs `lstm`)")
    assert "**SUPPORTED**" in one and "1.050 vs 1.550" in one and "+0.500" in one and "beyond the seed spread" in one
    two = claim(lines, "`cerebral` vs `lstm2`)")
    assert "**SUPPORTED**" in two and "within the seed spread" in two
    init = claim(lines, "`cerebral` vs `cerebral-identical`)")
    assert "**NOT SUPPORTED**" in init and "-0.200" in init
    assert "not evaluated" in claim(lines, "as many parameters")

    flipped = R.claim_lines(synthetic_rows({"cerebral": [1.5, 1.6], "lstm": [1.0, 1.1]}))
    assert "**NOT SUPPORTED**" in claim(flipped, "`cerebral` vs `lstm`)")
    one_seed = R.claim_lines(synthetic_rows({"cerebral": [1.0], "lstm": [1.2]}))
    assert "spread unknown (one seed)" in claim(one_seed, "`cerebral` vs `lstm`)")

    c = R.compare(rows, "cerebral", "lstm", "best_val_bpc")
    assert c["supported"] and c["difference"] == pytest.approx(0.5 / math.log(2))


def test_per_seed_uses_the_last_epoch_and_the_best_validation():
    rows = synthetic_rows({"lstm": [1.0, 2.0]}, epochs=3)
    rows.append({"model": "lstm", "seed": 0, "epoch": 4, "train_loss": 0.9, "val_loss": 5.0,
                 "val_bpc": 5.0 / math.log(2), "seconds": 3.0})
    s = R.per_seed(rows, "lstm")
    assert s["final_train_loss"] == [0.9, 2.0]
    assert s["best_val_loss"] == pytest.approx([1.1, 2.1])
    assert s["epochs"] == [4, 3] and s["seconds"] == [1.5, 1.0]


def test_metrics_csv_round_trip_is_exact():
    rows = synthetic_rows({"cerebral": [1 / 3, 2 / 7]})
    text = R.metrics_csv(rows)
    assert text.splitlines()[0] == ",".join(R.METRIC_COLUMNS)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"metrics-{os.getpid()}.csv"
    path.write_text(text)
    try:
        back = R.read_metrics_csv(str(path))
    finally:
        path.unlink()
    assert sorted(back, key=lambda r: (r["seed"], r["epoch"])) == sorted(rows, key=lambda r: (r["seed"], r["epoch"]))


# -- command line ------------------------------------------------------------------------------------------


def test_cli_argument_errors(tmp_path, capsys):
    for args, fragment in ((["--models", "lstm,gru"], "--models: unknown model 'gru'; valid names: lstm, lstm2"),
                           (["--epochs", "0"], "argument --epochs: expected a positive integer"),
                           (["--lr", "-1"], "argument --lr: expected a positive number"),
                           (["--preset", "huge"], "argument --preset: invalid choice"),
                           (["--device", "tpu"], "argument --device: invalid choice")):
        with pytest.raises(SystemExit) as e:
            run_cli(*args, "--out", str(tmp_path / "x"))
        assert e.value.code == 2
        assert fragment in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            run_cli("--device", "cuda", "--out", str(tmp_path / "x"))
        assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--corpus", "--encoding", "--preset", "--epochs", "--seeds", "--hidden", "--embedding",
                 "--seq-len", "--batch-size", "--lr", "--models", "--out", "--resume", "--device", "--quiet"):
        assert flag in text
    assert "cerebral-identical" in text and "--stop-after-epochs" not in text


def test_presets_and_overrides():
    from cerebral_rnn.cli import PRESETS, build_parser, reproduce_config

    cfg = reproduce_config(build_parser().parse_args(["reproduce"]))
    assert cfg["epochs"] == PRESETS["quick"]["epochs"] and cfg["seeds"] >= 2 and cfg["models"] == ARMS
    cfg = reproduce_config(build_parser().parse_args(["reproduce", "--preset", "paper", "--epochs", "7"]))
    assert cfg["epochs"] == 7 and cfg["seq_len"] == 20 and cfg["max_chars"] is None
    assert PRESETS["paper"]["epochs"] == 500 and PRESETS["paper"]["seq_len"] == 20


def test_plain_log_lines_when_not_a_terminal(tiny_corpus, tmp_path, capsys):
    run_cli("--corpus", str(tiny_corpus), "--epochs", "1", "--seeds", "1", "--models", "lstm", "--out",
            str(tmp_path / "log"), *TINY[:-1])
    err = capsys.readouterr().err
    assert "[lstm seed 0] epoch 1/1 train" in err and "done in" in err


def test_study_imports_only_the_public_api():
    import ast

    root = Path(SRC) / "cerebral_rnn"
    public = {"LSTM", "CerebralLSTM", "RNN", "StackedRNN", "__version__",
              "backends"}  # cerebral_rnn.backends.prepare(): build compiled backends before timing
    for path in (root / "study").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cerebral_rnn"):
                assert node.module == "cerebral_rnn" and {a.name for a in node.names} <= public, (path, node.module)
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                raise AssertionError(f"{path}: relative import outside study: {ast.dump(node)}")
    for path in root.rglob("*.py"):  # nothing in the library imports the study
        if "study" in path.parts or path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            assert not any("study" in n for n in names), path
