"""The study harness on the charlm task: outputs, checkpoints, early stopping, the held-out test, resume (also
after SIGKILL), parallel runs, DDP, generate and the ``cerebral-rnn`` command line. The statistics, the arms,
the data and the other tasks have their own files (tests/test_study_*.py).

Everything runs on a tiny corpus with tiny models so the study tests take well under two minutes on 2 cores.
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
import torch.nn.functional as F

from cerebral_rnn.cli import main
from cerebral_rnn.study import arms as A
from cerebral_rnn.study import checkpoint as T
from cerebral_rnn.study import corpus as C
from cerebral_rnn.study import model as M
from cerebral_rnn.study import report as R
from cerebral_rnn.study.tasks.charlm import TASK as CHARLM

SRC = str(Path(__file__).resolve().parents[1] / "src")
ARMS = list(A.DEFAULT_ARMS)  # what reproduce trains unless --models says otherwise


def tiny(quiet: bool = True, **flags: str) -> list[str]:
    """Tiny-model flags; keyword arguments override them (``patience="2"`` -> ``--patience 2``)."""
    values = {"hidden": "6", "embedding": "4", "seq_len": "8", "batch_size": "8", "lr": "0.01", "patience": "0",
              "jobs": "1", "threads": "1", **flags}
    out = [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", v)]
    return out + (["--quiet"] if quiet else [])


TINY = tiny()


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """~2400 characters of real text from the default corpus, plus non-ASCII characters in the test part."""
    text = C.load_default().text[5000:7400]
    text = text[:2350] + "é€" + text[2350:]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*args: str) -> int:
    return main(["reproduce", *args])


def rows_without_seconds(path: Path) -> list[tuple]:
    return [tuple(v for k, v in r.items() if k != "seconds") for r in R.read_csv(str(path))]


def test_corpus_errors_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa" * 1000)
    with pytest.raises(SystemExit) as e:
        run_cli("--corpus", str(bad), "--out", str(tmp_path / "o"), *TINY)
    assert e.value.code == 2
    assert "--encoding" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


# -- training, outputs, resume --------------------------------------------------------------------------------


def test_end_to_end_outputs(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--corpus", str(tiny_corpus), "--epochs", "2", "--seeds", "2", "--out", str(out), *TINY) == 0
    assert capsys.readouterr().err == ""  # --quiet
    for name in ("manifest.json", "metrics.csv", "runs.csv", "summary.md", "loss_curves.png", "samples.txt"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["model", "seed", "epoch", "train_loss", "val_loss", "val_bpc", "seconds"]
        rows = list(reader)
    assert len(rows) == len(ARMS) * 2 * 2
    assert {(r[0], r[1], r[2]) for r in rows} == {(a, str(s), str(e)) for a in ARMS for s in (0, 1) for e in (1, 2)}
    metrics = R.read_csv(str(out / "metrics.csv"))
    for r in metrics:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
        assert 0 < r["train_loss"] < 10 and r["seconds"] > 0

    # the second table: one row per run, its best epoch taken from the per-epoch rows
    runs = R.read_csv(str(out / "runs.csv"))
    assert len(runs) == len(ARMS) * 2 and {r["phase"] for r in runs} == {"final"}
    for r in runs:
        epochs = [m for m in metrics if m["model"] == r["model"] and m["seed"] == r["seed"]]
        best = min(epochs, key=lambda m: (m["val_loss"], m["epoch"]))
        assert (r["best_epoch"], r["best_val_loss"], r["best_val_bpc"]) == (best["epoch"], best["val_loss"],
                                                                           best["val_bpc"])
        assert r["final_train_loss"] == epochs[-1]["train_loss"] and r["epochs"] == 2 and r["stopped"] == "cap"
        assert r["test_bpc"] == pytest.approx(r["test_loss"] / math.log(2), rel=1e-12) and r["lr"] == 0.01

    m = json.loads((out / "manifest.json").read_text())
    text = tiny_corpus.read_text(encoding="utf-8")
    assert m["corpus"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert m["corpus"]["characters"] == len(text) and m["corpus"]["source"] == str(tiny_corpus)
    assert m["corpus"]["python_version"] == sys.version.split()[0]
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["python"] == sys.version.split()[0]
    assert m["seeds"] == [0, 1] and m["status"] == "complete" and m["task"] == "charlm"
    assert m["data"]["vocab_size"] == len(set(text[: int(len(text) * 0.9)])) + 1
    assert m["config"]["hidden"] == 6 and m["config"]["seq_len"] == 8 and m["config"]["models"] == ARMS
    assert m["config"]["split"] == [0.9, 0.05, 0.05] and m["min_effect"] == 0.01
    io = {"kind": "tokens", "vocab": m["data"]["vocab_size"], "embedding": 4, "outputs": m["data"]["vocab_size"],
          "readout": "steps"}
    for arm in ARMS:
        assert m["arms"][arm]["parameters"] == M.count_parameters(arm, io, m["arms"][arm]["width"])
    assert len(m["runs"]) == len(ARMS) * 2 and len(m["claims"]) == 6
    # Symmetry: identical paths stay identical under deterministic training; distinct ones differ.
    assert m["symmetry_max_path_difference"]["cerebral-identical"] < 1e-5
    assert m["symmetry_max_path_difference"]["cerebral"] > 1e-2

    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    for arm in ARMS:
        assert f"| `{arm}` |" in summary
        assert f"=== {arm} (seed" in (out / "samples.txt").read_text()
    claim_rows = [ln for ln in summary.splitlines() if ln.startswith("| ") and " vs `" in ln]
    assert len(claim_rows) == 6 and sum("*(ours)*" in ln for ln in claim_rows) == 3
    assert all(("**INCONCLUSIVE**" in ln or "**SUPPORTED**" in ln or "**CONTRADICTED**" in ln) for ln in claim_rows)
    assert "Verdicts are about the **test bits per character**" in summary and "final train loss d" in summary

    for ckpt_path in sorted((out / "checkpoints").glob("*.pt")):
        ckpt = torch.load(ckpt_path, weights_only=True)  # only tensors, dicts, lists, numbers, strings
        assert ckpt["format"] == T.CHECKPOINT_FORMAT and ckpt["task_info"]["vocab"][0] == C.UNKNOWN
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

    # a second run into the same folder without --resume is refused; with --resume it skips finished runs
    with pytest.raises(SystemExit):
        run_cli("--corpus", str(tiny_corpus), "--epochs", "2", "--seeds", "2", "--out", str(out), *TINY)
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    before = (out / "metrics.csv").read_text(), (out / "runs.csv").read_text()
    assert run_cli("--corpus", str(tiny_corpus), "--epochs", "2", "--seeds", "2", "--out", str(out), "--resume",
                   *tiny(quiet=False)) == 0
    assert ((out / "metrics.csv").read_text(), (out / "runs.csv").read_text()) == before  # nothing retrained
    err = capsys.readouterr().err
    assert "finished earlier (2 epochs, cap stop), skipped" in err
    assert "cerebral vs lstm: " in err and "on test bpc" in err  # the verdicts, printed
    # resuming with another config is refused, naming what differs
    with pytest.raises(SystemExit):
        run_cli("--corpus", str(tiny_corpus), "--epochs", "3", "--out", str(out), "--resume", *tiny(hidden="7"))
    assert "--resume: the config differs" in (err := capsys.readouterr().err) and "hidden: 6" in err


def test_test_metric_is_measured_on_the_best_validation_weights(tiny_corpus, tmp_path):
    out = tmp_path / "best"
    assert run_cli("--corpus", str(tiny_corpus), "--epochs", "4", "--seeds", "1", "--models", "cerebral,lstm-x2",
                   "--out", str(out), *TINY) == 0
    text = tiny_corpus.read_text(encoding="utf-8")
    test_text = text[int(len(text) * 0.95):]  # the last 5%, cut here independently
    for r in R.read_csv(str(out / "runs.csv")):
        ckpt = torch.load(out / "checkpoints" / f"{r['model']}-seed0-best.pt", weights_only=True)
        assert ckpt["epoch"] == r["best_epoch"]
        model = M.build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
        model.eval()
        index = {ch: i for i, ch in enumerate(ckpt["task_info"]["vocab"])}
        ids = torch.tensor([index.get(ch, 0) for ch in test_text])
        n = (len(ids) - 1) // 8
        wins = torch.stack([ids[k * 8:k * 8 + 9] for k in range(n)]).t()  # (9, n)
        with torch.no_grad():
            logits, _ = model(wins[:-1])
            loss = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), wins[1:].reshape(-1)))
        assert r["test_loss"] == pytest.approx(loss, rel=1e-5)
    summary = (out / "summary.md").read_text()  # one seed: no interval, so no verdict but INCONCLUSIVE
    assert "`cerebral` vs `lstm-x2`: INCONCLUSIVE because 1 paired seed: an interval needs at least 2" \
        in summary


def test_early_stopping_follows_the_validation_curve(tiny_corpus, tmp_path):
    out = tmp_path / "es"
    assert run_cli("--corpus", str(tiny_corpus), "--epochs", "25", "--seeds", "2", "--models", "lstm,cerebral",
                   "--out", str(out), *tiny(lr="0.05", patience="2")) == 0
    metrics = R.read_csv(str(out / "metrics.csv"))
    stops = []
    for r in R.read_csv(str(out / "runs.csv")):
        val = [m["val_loss"] for m in metrics if m["model"] == r["model"] and m["seed"] == r["seed"]]
        best = val.index(min(val)) + 1
        assert r["best_epoch"] == best and r["epochs"] == len(val)
        # never improved for 2 epochs after the best; stopped exactly then, or at the cap
        assert r["epochs"] - best <= 2
        if r["stopped"] == "early":
            assert r["epochs"] == best + 2 and r["epochs"] < 25
        else:
            assert r["stopped"] == "cap" and r["epochs"] == 25
        stops.append(r["stopped"])
    assert "early" in stops  # lr 0.05 on 2000 characters overfits within 25 epochs


def test_resume_after_stop_equals_uninterrupted(tiny_corpus, tmp_path):
    common = ["--corpus", str(tiny_corpus), "--seeds", "2", "--models", "cerebral,lstm2", *tiny(patience="2")]
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "full")) == 0
    # stopped in the middle of the second seed of the first arm, then resumed
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "cut"), "--stop-after-epochs", "4") == 3
    assert len(R.read_csv(str(tmp_path / "cut" / "metrics.csv"))) == 4
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "cut"), "--resume") == 0
    # a shorter run extended with --resume --epochs (a run that hit the cap trains on)
    assert run_cli(*common, "--epochs", "1", "--out", str(tmp_path / "ext")) == 0
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "ext"), "--resume") == 0
    full = rows_without_seconds(tmp_path / "full" / "metrics.csv")
    assert len(full) == 12
    assert rows_without_seconds(tmp_path / "cut" / "metrics.csv") == full  # exact equality
    assert rows_without_seconds(tmp_path / "ext" / "metrics.csv") == full
    assert R.read_csv(str(tmp_path / "cut" / "runs.csv")) == R.read_csv(str(tmp_path / "full" / "runs.csv"))
    assert R.read_csv(str(tmp_path / "ext" / "runs.csv")) == R.read_csv(str(tmp_path / "full" / "runs.csv"))
    a = torch.load(tmp_path / "full" / "checkpoints" / "cerebral-seed1.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "cerebral-seed1.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # resuming with fewer epochs than already done is refused
    with pytest.raises(SystemExit):
        run_cli(*common, "--epochs", "2", "--out", str(tmp_path / "ext"), "--resume")


def test_sigkill_mid_run_then_resume(tiny_corpus, tmp_path):
    args = ["--corpus", str(tiny_corpus), "--seeds", "1", "--models", "cerebral", "--epochs", "30", *tiny(quiet=False)]
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
    done = len(R.read_csv(str(metrics)))
    assert 3 <= done < 30
    ckpt = torch.load(out / "checkpoints" / "cerebral-seed0.pt", weights_only=True)  # not torn
    assert ckpt["epoch"] in (done, done + 1)
    (out / "checkpoints" / "cerebral-seed0.pt.tmp99999").write_bytes(b"torn")  # as if killed inside a save
    assert run_cli(*args, "--quiet", "--out", str(out), "--resume") == 0
    assert run_cli(*args, "--quiet", "--out", str(tmp_path / "clean")) == 0
    resumed = rows_without_seconds(metrics)
    assert len(resumed) == 30 and resumed == rows_without_seconds(tmp_path / "clean" / "metrics.csv")
    assert not list(out.rglob("*.tmp*"))


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


def test_parallel_runs_equal_sequential_runs(tiny_corpus, tmp_path):
    common = ["--corpus", str(tiny_corpus), "--seeds", "2", "--models", "cerebral,lstm", "--epochs", "3"]
    assert run_cli(*common, *tiny(jobs="1"), "--out", str(tmp_path / "one")) == 0
    assert run_cli(*common, *tiny(jobs="2"), "--out", str(tmp_path / "two")) == 0
    assert rows_without_seconds(tmp_path / "two" / "metrics.csv") == rows_without_seconds(
        tmp_path / "one" / "metrics.csv")
    assert R.read_csv(str(tmp_path / "two" / "runs.csv")) == R.read_csv(str(tmp_path / "one" / "runs.csv"))
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["jobs"] == 2


def test_two_processes_match_one(tiny_corpus, tmp_path):
    args = ["--corpus", str(tiny_corpus), "--seeds", "1", "--models", "cerebral,lstm", "--epochs", "2", *TINY]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "cerebral_rnn.cli", "reproduce", *args, "--jobs", "2", "--out",
                          str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert run_cli(*args, "--out", str(tmp_path / "one")) == 0
    ddp = R.read_csv(str(tmp_path / "ddp" / "metrics.csv"))
    one = R.read_csv(str(tmp_path / "one" / "metrics.csv"))
    assert [(r["model"], r["epoch"]) for r in ddp] == [(r["model"], r["epoch"]) for r in one] and len(one) == 4
    for a, b in zip(ddp, one):
        for k in ("train_loss", "val_loss"):
            assert a[k] == pytest.approx(b[k], abs=1e-5, rel=0)
    for a, b in zip(R.read_csv(str(tmp_path / "ddp" / "runs.csv")), R.read_csv(str(tmp_path / "one" / "runs.csv"))):
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5, rel=0)
    m = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["jobs"] == 1  # under torchrun the runs go one after another


# -- report ------------------------------------------------------------------------------------------------


def test_metrics_csv_round_trip_is_exact(tmp_path):
    rows = [{"model": "cerebral", "seed": s, "epoch": e, "train_loss": 1 / 3 + e, "val_loss": 2 / 7 + s,
             "val_bpc": (2 / 7 + s) / math.log(2), "seconds": 0.1 * e} for s in (0, 1) for e in (1, 2)]
    path = tmp_path / "m.csv"
    path.write_text(R.metrics_csv(rows, CHARLM))
    assert path.read_text().splitlines()[0] == ",".join(R.metric_columns(CHARLM))
    assert R.read_csv(str(path)) == rows


# -- command line ------------------------------------------------------------------------------------------


def test_cli_argument_errors(tmp_path, capsys):
    for args, fragment in ((["--models", "lstm,nope"], "--models: unknown model 'nope'; valid names: lstm, lstm2"),
                           (["--epochs", "0"], "argument --epochs: expected a positive integer"),
                           (["--lr", "-1"], "argument --lr: expected a positive number"),
                           (["--preset", "huge"], "argument --preset: invalid choice"),
                           (["--device", "tpu"], "argument --device: invalid choice"),
                           (["--task", "nlp"], "argument --task: invalid choice"),
                           (["--split", "90/10"], "argument --split: expected three positive percentages"),
                           (["--lr-range", "0.1,0.01"], "argument --lr-range: expected LOW,HIGH with 0 < LOW < HIGH"),
                           (["--patience", "-1"], "argument --patience: expected an integer >= 0"),
                           (["--min-effect", "-0.1"], "argument --min-effect: expected a number >= 0"),
                           (["--length", "10"], "--length: a flag of --task adding, not of --task charlm"),
                           (["--task", "adding", "--corpus", "x"], ("--corpus: a flag of --task charlm, not of "
                                                                   "--task adding")),
                           (["--task", "classify", "--seq-len", "5"], "--seq-len: a flag of --task charlm")):
        with pytest.raises(SystemExit) as e:
            run_cli(*args, "--out", str(tmp_path / "x"))
        assert e.value.code == 2
        assert fragment in capsys.readouterr().err, args
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            run_cli("--device", "cuda", "--out", str(tmp_path / "x"))
        assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--corpus", "--encoding", "--preset", "--epochs", "--patience", "--seeds", "--hidden",
                 "--embedding", "--seq-len", "--batch-size", "--lr", "--split", "--models", "--tune", "--lr-range",
                 "--tune-forget-bias", "--min-effect", "--csv", "--text-column", "--label-column", "--vocab-size",
                 "--max-words", "--digits-rows", "--length", "--examples", "--out", "--resume", "--device", "--jobs",
                 "--threads", "--quiet"):
        assert flag in text, flag
    assert "lstm-x2" in text and "lstmp" in text and "--stop-after-epochs" not in text


def test_presets_and_overrides():
    from cerebral_rnn.cli import PRESETS, build_parser, reproduce_config

    cfg = reproduce_config(build_parser().parse_args(["reproduce"]))
    assert cfg["task"] == "charlm" and cfg["preset"] == "quick"
    assert cfg["epochs"] == PRESETS["quick"]["charlm"]["epochs"] and cfg["seeds"] >= 3 and cfg["models"] == ARMS
    assert cfg["patience"] > 0 and cfg["tune"] == 0 and cfg["split"] == (0.9, 0.05, 0.05)
    for task in ("charlm", "classify", "adding", "copy"):
        assert PRESETS["tuned"][task]["tune"] > 0 and PRESETS["paper"][task]["tune"] > 0
        assert PRESETS["decide"][task]["tune"] == 8 and PRESETS["decide"][task]["seeds"] >= 40
        for key in ("hidden", "epochs", "patience", "batch_size", "lr"):  # decide trains on quick's setting
            assert PRESETS["decide"][task][key] == PRESETS["quick"][task][key]
        # quick stays unregularised (its committed numbers); the tuned presets search dropout and weight decay
        assert PRESETS["quick"][task]["input_dropout"] == PRESETS["quick"][task]["weight_decay"] == 0
        assert PRESETS["tuned"][task]["dropout_max"] > 0 and PRESETS["tuned"][task]["weight_decay_range"]
        assert PRESETS["paper"][task]["seeds"] == 5 and PRESETS["quick"][task]["seeds"] >= 3
    cfg = reproduce_config(build_parser().parse_args(["reproduce", "--preset", "paper", "--epochs", "7"]))
    assert cfg["epochs"] == 7 and cfg["seq_len"] == 20 and cfg["max_chars"] is None and cfg["tune_forget_bias"]
    # the paper preset's forget-bias tuning can be switched off
    cfg = reproduce_config(build_parser().parse_args(["reproduce", "--preset", "paper", "--no-tune-forget-bias"]))
    assert cfg["tune_forget_bias"] is False
    assert PRESETS["decide"]["charlm"]["min_effect"] == 0.02 and PRESETS["quick"]["charlm"]["min_effect"] is None
    assert PRESETS["paper"]["charlm"]["epochs"] == 500 and PRESETS["paper"]["charlm"]["seq_len"] == 20
    cfg = reproduce_config(build_parser().parse_args(["reproduce", "--task", "classify", "--split", "70/15/15",
                                                      "--tune", "3", "--lr-range", "1e-3,1e-2"]))
    assert cfg["split"] == (0.7, 0.15, 0.15) and cfg["tune"] == 3 and cfg["lr_range"] == (1e-3, 1e-2)


def test_plain_log_lines_when_not_a_terminal(tiny_corpus, tmp_path, capsys):
    run_cli("--corpus", str(tiny_corpus), "--epochs", "1", "--seeds", "1", "--models", "lstm", "--out",
            str(tmp_path / "log"), *tiny(quiet=False))
    err = capsys.readouterr().err
    assert "[lstm seed 0] epoch 1/1 train" in err and "done in" in err and "cap stop after 1 epochs" in err


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


def test_study_imports_only_the_public_api():
    import ast

    root = Path(SRC) / "cerebral_rnn"
    import cerebral_rnn

    # the package's __all__, and backends (cerebral_rnn.backends.prepare(): build compiled backends before timing)
    public = set(cerebral_rnn.__all__) | {"__version__", "backends"}
    for path in (root / "study").rglob("*.py"):
        depth = len(path.relative_to(root / "study").parts)  # 1 in study/, 2 in study/tasks/
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cerebral_rnn"):
                assert node.module == "cerebral_rnn" and {a.name for a in node.names} <= public, (path, node.module)
            if isinstance(node, ast.ImportFrom) and node.level > depth:
                raise AssertionError(f"{path}: relative import outside study: {ast.dump(node)}")
    for path in root.rglob("*.py"):  # nothing in the library imports the study
        if "study" in path.parts or path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            assert not any("study" in n for n in names), path
