"""Each task end to end from the command line on tiny data (classify on the digits and on a CSV, adding, copy),
tuning with an equal budget per arm, and an arm that is any nn.Module with nn.LSTM's calling convention."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cerebral_rnn.cli import main
from cerebral_rnn.study import arms as A
from cerebral_rnn.study import checkpoint as T
from cerebral_rnn.study import model as M
from cerebral_rnn.study import report as R
from cerebral_rnn.study import tuner as TU
from cerebral_rnn.study.tasks import classify as CL

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ["--hidden", "4", "--patience", "0", "--jobs", "1", "--threads", "1", "--quiet"]
SOME = "cerebral,lstm,lstm-x2"


def run_cli(*args: str) -> int:
    return main(["reproduce", *args])


def check_outputs(out, task: str, arms: list[str], seeds: int, epochs: int) -> tuple[dict, list[dict], str]:
    for name in ("manifest.json", "metrics.csv", "runs.csv", "summary.md", "loss_curves.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == task and m["status"] == "complete" and m["config"]["models"] == arms
    metrics = R.read_csv(str(out / "metrics.csv"))
    assert {(r["model"], r["seed"], r["epoch"]) for r in metrics} == {
        (a, s, e) for a in arms for s in range(seeds) for e in range(1, epochs + 1)}
    runs = R.read_csv(str(out / "runs.csv"))
    assert len(runs) == len(arms) * seeds and all(r["test_loss"] is not None for r in runs)
    summary = (out / "summary.md").read_text()
    assert f"# Cerebral LSTM study — task `{task}`" in summary
    for arm in arms:
        assert f"| `{arm}` |" in summary
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "samples.txt").exists()
    return m, runs, summary


def test_classify_digits_end_to_end(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (study extra) holds the embedded digits")
    out = tmp_path / "digits"
    assert run_cli("--task", "classify", "--digits-rows", "--epochs", "2", "--seeds", "2", "--models", SOME,
                   "--batch-size", "64", "--out", str(out), *FAST) == 0
    m, runs, summary = check_outputs(out, "classify", SOME.split(","), 2, 2)
    assert m["data"]["source"] == "sklearn.datasets.load_digits" and m["data"]["reading"] == "row by row"
    assert m["min_effect"] == 0.5 and m["config"]["split"] == [0.8, 0.1, 0.1]
    assert list(R.read_csv(str(out / "metrics.csv"))[0]) == ["model", "seed", "epoch", "train_loss", "val_loss",
                                                            "val_accuracy", "val_macro_f1", "seconds"]
    # the test accuracy, recomputed here from the best checkpoint and the held-out digits
    data = CL.TASK.load({"split": (0.8, 0.1, 0.1), "csv": None, "digits_rows": True})
    test = data.payload["test"]
    for r in runs:
        ckpt = T.load_checkpoint(str(out / "checkpoints" / f"{r['model']}-seed{r['seed']}-best.pt"))
        model = M.build_model(ckpt["model_config"]).eval()
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            pred = model(test.x.transpose(0, 1))[0].argmax(-1)
        assert r["test_accuracy"] == pytest.approx(100 * float((pred == test.y).double().mean()), abs=1e-9)
        assert 0 <= r["test_macro_f1"] <= 100
    assert "Verdicts are about the **test accuracy** (%, higher is better)" in summary
    with pytest.raises(SystemExit):  # generate is for charlm checkpoints only
        main(["generate", "--checkpoint", str(out / "checkpoints" / "lstm-seed0-best.pt"), "--prime", "a"])


def reviews_csv(path) -> str:
    """90 short 'reviews' of 1 to 8 words plus 'film', 3 classes."""
    words = {"pos": ["great", "good", "fine", "superb"], "neg": ["awful", "bad", "poor", "dull"],
             "mixed": ["odd", "uneven", "so-so", "strange"]}
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(90):
        label = list(words)[i % 3]
        n = int(torch.randint(1, 9, (), generator=g))  # 1..8 words: variable lengths
        rows.append((" ".join(words[label][int(j)] for j in torch.randint(0, 4, (n,), generator=g)) + " film",
                     label))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "review", "sentiment"])
        w.writerows((i, t, y) for i, (t, y) in enumerate(rows))
    return str(path)


CSV_ARGS = ["--task", "classify", "--text-column", "review", "--label-column", "sentiment", "--epochs", "2",
            "--batch-size", "8", "--embedding", "4", "--vocab-size", "20"]


def test_classify_csv_end_to_end_with_packing(tmp_path):
    path = reviews_csv(tmp_path / "reviews.csv")
    out = tmp_path / "csv"
    assert run_cli(*CSV_ARGS, "--csv", path, "--seeds", "2", "--models", "cerebral,lstm", "--out", str(out),
                   *FAST) == 0
    m, _runs, summary = check_outputs(out, "classify", ["cerebral", "lstm"], 2, 2)
    assert m["data"]["classes"] == 3 and m["data"]["class_names"] == ["mixed", "neg", "pos"]
    assert m["data"]["train_examples"] == 72 and m["data"]["test_examples"] == 9
    assert "packed sequences" in summary
    with pytest.raises(SystemExit):
        run_cli("--task", "classify", "--csv", path, "--text-column", "text", "--label-column", "sentiment",
                "--out", str(tmp_path / "bad"), *FAST)


def test_classify_csv_under_torchrun_matches_one_process(tmp_path):
    """DDP with packed variable-length sequences: two processes compute what one computes."""
    path = reviews_csv(tmp_path / "reviews.csv")
    args = [*CSV_ARGS, "--csv", path, "--seeds", "1", "--models", "cerebral,lstm", *FAST]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "cerebral_rnn.cli", "reproduce", *args, "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert run_cli(*args, "--out", str(tmp_path / "one")) == 0
    ddp, one = (R.read_csv(str(tmp_path / k / "runs.csv")) for k in ("ddp", "one"))
    assert len(one) == 2 and [r["model"] for r in ddp] == [r["model"] for r in one]
    for a, b in zip(ddp, one):
        for k in ("final_train_loss", "best_val_loss", "test_loss"):
            assert a[k] == pytest.approx(b[k], abs=1e-5, rel=0)
        assert a["test_accuracy"] == b["test_accuracy"]


@pytest.mark.parametrize("task,extra,metric_cols", [
    ("adding", [], []),
    ("copy", ["--embedding", "4"], ["val_recall_accuracy"]),
])
def test_synthetic_tasks_end_to_end_and_resume(tmp_path, task, extra, metric_cols):
    common = ["--task", task, "--length", "6", "--examples", "300", "--batch-size", "16", "--epochs", "3",
              "--seeds", "2", "--models", SOME, *extra, *FAST]
    assert run_cli(*common, "--out", str(tmp_path / "full")) == 0
    m, runs, summary = check_outputs(tmp_path / "full", task, SOME.split(","), 2, 3)
    assert list(R.read_csv(str(tmp_path / "full" / "metrics.csv"))[0]) == [
        "model", "seed", "epoch", "train_loss", "val_loss", *metric_cols, "seconds"]
    assert all(isinstance(r["success"], bool) for r in runs) and "| successes |" in summary
    if task == "adding":
        assert all(r["success"] == (r["test_loss"] < 0.01) for r in runs)
        assert m["min_effect"] == 0.01
    else:
        assert all(r["success"] == (r["test_recall_accuracy"] >= 99) for r in runs)
        assert m["min_effect"] == pytest.approx(0.05 * 10 * math.log(8) / 26)
    # interrupted after 4 epochs, resumed: the same numbers
    assert run_cli(*common, "--out", str(tmp_path / "cut"), "--stop-after-epochs", "4") == 3
    assert run_cli(*common, "--out", str(tmp_path / "cut"), "--resume") == 0

    def strip(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in R.read_csv(str(path))]

    assert strip(tmp_path / "cut" / "metrics.csv") == strip(tmp_path / "full" / "metrics.csv")
    assert R.read_csv(str(tmp_path / "cut" / "runs.csv")) == R.read_csv(str(tmp_path / "full" / "runs.csv"))


def test_tuning_gives_every_arm_the_same_budget(tmp_path):
    import optuna

    out = tmp_path / "tuned"
    arms = ["cerebral", "lstm"]
    assert run_cli("--task", "adding", "--length", "5", "--examples", "200", "--batch-size", "16", "--epochs", "3",
                   "--seeds", "2", "--models", ",".join(arms), "--tune", "3", "--lr-range", "1e-3,3e-2",
                   "--dropout-max", "0.3", "--weight-decay-range", "1e-5,1e-2", "--tune-forget-bias",
                   "--out", str(out), *FAST) == 0
    m = json.loads((out / "manifest.json").read_text())
    tu = m["tuning"]
    assert tu["trials_per_arm"] == 3 and tu["lr_range"] == [1e-3, 3e-2] and tu["forget_bias_tuned"]
    keys = ("lr", "input_dropout", "output_dropout", "weight_decay", "forget_bias", "rnn_weight_dropout",
            "recurrent_dropout", "zoneout", "layer_norm", "seed")
    settings = {arm: [tuple(t[k] for k in keys) for t in tu["trials"][arm]] for arm in arms}
    assert settings["cerebral"] == settings["lstm"]  # the same settings for every arm
    for lr, din, dout, wd, fb, rwd, rd, zo, ln, _ in settings["lstm"]:
        assert rwd == rd == zo == 0.0 and ln is False  # not tuned without --tune-recurrent; LN never
        assert 1e-3 <= lr <= 3e-2 and 0 <= din <= 0.3 and 0 <= dout <= 0.3 and 1e-5 <= wd <= 1e-2
        assert fb in (0.0, 1.0)
    assert len(set(settings["lstm"])) == 3
    assert {s[-1] for s in settings["lstm"]}.isdisjoint(m["seeds"])  # tuning seeds are not final seeds
    runs = R.read_csv(str(out / "runs.csv"))
    storage = f"sqlite:///{out / 'tuning.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert len(names) == 2 and all(n.startswith("cerebral-rnn:") for n in names)
    for arm in arms:
        trials = [r for r in runs if r["phase"] == "tune" and r["model"] == arm]
        assert sorted(tuple(r[k] for k in keys) for r in trials) == sorted(settings[arm])  # same budget
        assert all(r["test_loss"] is None for r in trials)  # tuning never looks at the test split
        best = min(trials, key=lambda r: (r["best_val_loss"], r["trial"]))
        assert tu["chosen"][arm] == {**{k: best[k] for k in keys[:-1]}, "trial": best["trial"]}
        finals = [r for r in runs if r["phase"] == "final" and r["model"] == arm]
        assert len(finals) == 2 and all(tuple(r[k] for k in keys[:-1]) == tuple(best[k] for k in keys[:-1])
                                        for r in finals)
        # the arm's Optuna study holds its trials, each scored by its best validation loss
        (name,) = [n for n in names if f":{arm}:" in n]
        study = optuna.load_study(study_name=name, storage=storage)
        scores = {t.number: t.value for t in study.trials}
        assert scores == {r["trial"]: pytest.approx(r["best_val_loss"]) for r in trials}
        assert study.best_trial.number == best["trial"]
    tm = R.read_csv(str(out / "tuning_metrics.csv"))
    assert {(r["model"], r["trial"]) for r in tm} == {(a, t) for a in arms for t in range(3)}
    summary = (out / "summary.md").read_text()
    assert "## Tuning" in summary and summary.count("| `cerebral` | ") == 3 + 1 + 2  # trials, arms, runs
    assert "QMCSampler" in summary


def test_tuning_draws_cover_the_search_space_and_resume_with_the_same_settings(tmp_path):
    from cerebral_rnn.study import tuner

    cfg = {"tune": 64, "lr": 1e-3, "lr_range": (1e-4, 1e-2), "dropout_max": 0.5, "weight_decay_range": (1e-6, 1e-2),
           "tune_forget_bias": True}
    s = tuner.trial_settings(["a", "b"], cfg, str(tmp_path), "f" * 64)
    assert s["a"] == s["b"]  # the same sampler, seed and space: the same settings for every arm
    lrs = [x["lr"] for x in s["a"]]
    below = [sum(lr < 10 ** e for lr in lrs) / len(lrs) for e in (-3.5, -3, -2.5)]
    assert below == pytest.approx([0.25, 0.5, 0.75], abs=0.05)  # log-uniform over [1e-4, 1e-2], evenly covered
    drops = [x["input_dropout"] for x in s["a"]]
    assert min(drops) >= 0 and max(drops) <= 0.5 and sum(d < 0.25 for d in drops) == pytest.approx(32, abs=4)
    assert {x["forget_bias"] for x in s["a"]} == {0.0, 1.0}
    assert [x["seed"] for x in s["a"][:3]] == [TU.TUNE_SEED0, TU.TUNE_SEED0 + 1, TU.TUNE_SEED0 + 2]
    assert tuner.trial_settings(["a"], cfg, str(tmp_path), "f" * 64)["a"] == s["a"]  # resumed: the stored trials
    # without dropout_max / weight_decay_range those settings keep cfg's fixed values
    fixed = tuner.trial_settings(["c"], {**cfg, "tune": 2, "dropout_max": 0, "weight_decay_range": None,
                                         "input_dropout": 0.1, "weight_decay": 0.0}, str(tmp_path), "e" * 64)
    assert all(x["input_dropout"] == 0.1 and x["weight_decay"] == 0.0 for x in fixed["c"])


def test_any_rnn_module_with_the_lstm_calling_convention_can_be_an_arm(tmp_path):
    """An arm is a registry entry; here torch's own GRU (state: a tensor, no forget gate) runs a whole study."""
    A.register(A.Arm("test-gru", "torch GRU, hidden H", lambda i, w, fb: torch.nn.GRU(i, w), forget_gate=False))
    try:
        out = tmp_path / "gru"
        assert run_cli("--task", "adding", "--length", "5", "--examples", "200", "--batch-size", "16", "--epochs",
                       "2", "--seeds", "2", "--models", "test-gru,lstm", "--tune", "1", "--tune-forget-bias",
                       "--out", str(out), *FAST) == 0
        runs = [r for r in R.read_csv(str(out / "runs.csv")) if r["phase"] == "final"]
        assert {r["model"] for r in runs} == {"test-gru", "lstm"} and all(r["test_loss"] > 0 for r in runs)
        m = json.loads((out / "manifest.json").read_text())
        io = {"kind": "features", "features": 2, "outputs": 1, "readout": "final"}
        assert m["arms"]["test-gru"]["parameters"] == sum(p.numel() for p in M.build_model(
            M.model_config("test-gru", io, 4, "adding")).parameters())
    finally:
        del A.ARMS["test-gru"]
