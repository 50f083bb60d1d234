"""The study's command line and its running: --seeds lists, --dry-run, --report-only, the --out lock, Ctrl-C,
a fast --help, the defects of earlier versions (each test failed before its fix), and Ray tasks computing
exactly what the local pool computes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cerebral_rnn.cli import build_parser, main, reproduce_config
from cerebral_rnn.study import corpus as C
from cerebral_rnn.study import report as R
from cerebral_rnn.study import runner as RU

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--hidden", "6", "--embedding", "4", "--seq-len", "8", "--batch-size", "8", "--lr", "0.01", "--patience",
        "0", "--jobs", "1", "--threads", "1", "--quiet"]
ADDING = ["--task", "adding", "--length", "5", "--examples", "200", "--batch-size", "16", "--hidden", "4",
          "--patience", "0", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(C.load_default().text[5000:7400], encoding="utf-8")
    return path


def run_cli(*args: str) -> int:
    return main(["reproduce", *args])


def strip(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in R.read_csv(str(path))]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


# -- flags ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("20-23", [20, 21, 22, 23]), ("1,5,7", [1, 5, 7]),
                                         ("0-1,9", [0, 1, 9])])
def test_seeds_take_a_count_a_range_or_a_list(text, seeds):
    cfg = reproduce_config(build_parser().parse_args(["reproduce", "--seeds", text]))
    assert RU.seed_list(cfg["seeds"]) == seeds


@pytest.mark.parametrize("text", ["0", "5-3", "a", "1,1", "-2"])
def test_bad_seeds_are_refused_with_the_flag_named(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--seeds", text])
    assert "--seeds" in capsys.readouterr().err


def test_seeds_must_stay_below_the_tuning_seeds():
    with pytest.raises(ValueError, match=r"--seeds: seeds must lie in \[0, 10000\)"):
        RU.seed_list([3, 10_000])


def test_help_is_fast_imports_no_torch_and_shows_every_preset_value():
    code = ("import sys, time; t = time.perf_counter()\n"
            "from cerebral_rnn.cli import main\n"
            "try:\n    main(['reproduce', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True).stdout
    *_, torch_loaded, seconds = out.split("TORCH")[1].split()
    assert torch_loaded == "False" and float(seconds) < 2.0
    for preset in ("quick:", "tuned:", "decide:", "paper:"):
        assert preset in out
    assert "seeds=48" in out and "min_effect=0.02" in out and "epochs=500" in out


# -- the defects of earlier versions ---------------------------------------------------------------------------


def test_resume_with_epochs_equal_to_what_a_cut_run_has_done_finishes_it(corpus, tmp_path):
    common = ["--corpus", str(corpus), "--seeds", "2", "--models", "lstm,cerebral", *TINY]
    # cut after 3 epochs of the first run (cap 5), then resumed with --epochs 3: that run must end at the cap
    assert run_cli(*common, "--epochs", "5", "--out", str(tmp_path / "cut"), "--stop-after-epochs", "3") == 3
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "cut"), "--resume") == 0
    runs = [r for r in R.read_csv(str(tmp_path / "cut" / "runs.csv")) if r["phase"] == "final"]
    assert len(runs) == 4 and all(r["epochs"] == 3 and r["stopped"] == "cap" for r in runs)
    assert run_cli(*common, "--epochs", "3", "--out", str(tmp_path / "full")) == 0
    assert R.read_csv(str(tmp_path / "cut" / "runs.csv")) == R.read_csv(str(tmp_path / "full" / "runs.csv"))


def test_a_nan_validation_loss_never_becomes_the_best(corpus, tmp_path, monkeypatch):
    from cerebral_rnn.study.tasks.charlm import TASK

    real = TASK.evaluate
    calls = {"n": 0}

    def evaluate(model, split, device, chunk=512):
        calls["n"] += 1
        out = real(model, split, device, chunk)
        if calls["n"] == 1:  # the first validation pass (epoch 1) is NaN
            return {k: math.nan for k in out}
        return out

    monkeypatch.setattr(TASK, "evaluate", evaluate)
    assert run_cli("--corpus", str(corpus), "--seeds", "1", "--models", "lstm", "--epochs", "3",
                   "--out", str(tmp_path / "nan"), *TINY) == 0
    (run,) = R.read_csv(str(tmp_path / "nan" / "runs.csv"))
    metrics = R.read_csv(str(tmp_path / "nan" / "metrics.csv"))
    assert math.isnan(metrics[0]["val_loss"]) and run["best_epoch"] > 1
    assert run["best_val_loss"] == min(m["val_loss"] for m in metrics[1:])


def test_the_loss_sum_is_all_reduced_on_the_process_group_device(monkeypatch):
    from cerebral_rnn.study.distributed import Dist, sum_over_ranks

    seen = []

    def all_reduce(t):
        seen.append(t.device)
        t.mul_(2)  # as two ranks holding the same value

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    # a stand-in for a CUDA rank: a device other than the tensor's own (nccl only takes CUDA tensors)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device: (seen.append(("to", str(device))), self)[1])
    out = sum_over_ranks(torch.tensor([1.0, 2.0]), Dist(0, 2, torch.device("cuda", 0)))
    assert ("to", "cuda:0") in seen and out.tolist() == [2.0, 4.0]


# -- dry run, report only, lock ----------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["reproduce", "--corpus", str(corpus), "--seeds", "0-2", "--models", "lstm,cerebral", "--tune", "2",
                 "--epochs", "4", "--out", str(out), "--dry-run", *[a for a in TINY if a != "--quiet"]]) == 0
    text = capsys.readouterr().out
    assert "2 arms, 2 tuning trials and 3 final seeds each (10 runs)" in text
    assert "lstm" in text and "cerebral" in text and "s/epoch" in text
    assert not out.exists()


def test_report_only_rebuilds_the_summary_from_disk_over_seeds_of_several_invocations(corpus, tmp_path):
    out = tmp_path / "split"
    common = ["--corpus", str(corpus), "--models", "lstm,cerebral", "--epochs", "2", *TINY]
    assert run_cli(*common, "--seeds", "0-1", "--out", str(out)) == 0
    assert run_cli(*common, "--seeds", "2-3", "--out", str(out), "--resume") == 0
    assert run_cli(*common, "--seeds", "0-3", "--out", str(tmp_path / "whole")) == 0
    (out / "summary.md").unlink()
    assert main(["reproduce", "--report-only", "--out", str(out), "--quiet"]) == 0
    summary = (out / "summary.md").read_text()
    assert "Seeds 0–3 (4;" in summary
    finals = [r for r in R.read_csv(str(out / "runs.csv")) if r["phase"] == "final"]
    whole = [r for r in R.read_csv(str(tmp_path / "whole" / "runs.csv")) if r["phase"] == "final"]
    assert finals == whole  # the same runs, whichever invocation trained them
    m = json.loads((out / "manifest.json").read_text())
    assert [i["mode"] for i in m["invocations"]] == ["run", "run", "report"]
    with pytest.raises(SystemExit):
        main(["reproduce", "--report-only", "--out", str(tmp_path / "nothing-here"), "--quiet"])


def test_a_second_reproduce_into_the_same_out_is_refused(corpus, tmp_path):
    from cerebral_rnn.study.reproduce import OutLock

    out = tmp_path / "locked"
    with OutLock(str(out)):
        with pytest.raises(SystemExit) as e:
            run_cli("--corpus", str(corpus), "--seeds", "1", "--models", "lstm", "--epochs", "1", "--out", str(out),
                    *TINY)
        assert e.value.code == 2
    assert not (out / "manifest.json").exists()
    assert run_cli("--corpus", str(corpus), "--seeds", "1", "--models", "lstm", "--epochs", "1", "--out", str(out),
                   *TINY) == 0  # released


def _start_cli(args: list[str]) -> subprocess.Popen:
    """The CLI in a child process of its own group, with Python's Ctrl-C handler as a terminal gives it, even
    where the tests run in a background job (such a job inherits SIGINT ignored, and Python installs no handler)."""
    cli = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from cerebral_rnn.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", cli, *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_ctrl_c_stops_cleanly_with_one_line_and_resume_continues(corpus, tmp_path):
    out = tmp_path / "int"
    args = ["reproduce", "--corpus", str(corpus), "--seeds", "4", "--models", "lstm,cerebral", "--epochs", "40",
            *[a for a in TINY if a not in ("--quiet",)], "--jobs", "2", "--out", str(out)]
    proc = _start_cli(args)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ckpts = list((out / "checkpoints").glob("*-seed*.pt")) if (out / "checkpoints").exists() else []
            if len(ckpts) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and err.count("--resume") == 1
    assert main(["reproduce", *args[1:], "--resume", "--quiet"]) == 0
    assert len([r for r in R.read_csv(str(out / "runs.csv")) if r["phase"] == "final"]) == 8


def _spawned_workers(parent: int) -> list[int]:
    """The pids of ``parent``'s children that run multiprocessing's spawn_main (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            out.append(int(entry))
    return out


def test_ctrl_c_while_the_workers_start_prints_no_traceback(corpus, tmp_path):
    """A Ctrl-C while the pool's workers are still starting (importing torch, before their initializer) stops the
    run with the one line and no worker traceback: they start with Ctrl-C ignored."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc to see the workers start")
    out = tmp_path / "early"
    args = ["reproduce", "--corpus", str(corpus), "--seeds", "2", "--models", "lstm,cerebral", "--epochs", "40",
            *[a for a in TINY if a not in ("--quiet",)], "--jobs", "2", "--out", str(out)]
    proc = _start_cli(args)
    deadline = time.monotonic() + 120
    ignored = []
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ignored:
            for pid in _spawned_workers(proc.pid):  # first seen within milliseconds of its start
                try:
                    with open(f"/proc/{pid}/status") as f:
                        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
                except (OSError, StopIteration):
                    continue
                ignored.append(bool(mask >> (signal.SIGINT - 1) & 1))
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)  # the parent has spawned its workers; they are still importing
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ignored and all(ignored), "a worker started with Ctrl-C not ignored (it is still importing torch)"
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("--resume") == 1, err


# -- Ray -------------------------------------------------------------------------------------------------------


def test_ray_tasks_give_exactly_the_local_pool_numbers(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cerebral-rnn[ray]')")
    common = [*ADDING, "--seeds", "2", "--models", "lstm,cerebral", "--epochs", "2", "--tune", "2"]
    assert run_cli(*common, "--jobs", "2", "--out", str(tmp_path / "pool")) == 0
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": SRC}})
        assert run_cli(*common, "--jobs", "2", "--executor", "ray", "--out", str(tmp_path / "ray")) == 0
    finally:
        ray.shutdown()
    assert strip(tmp_path / "ray" / "metrics.csv") == strip(tmp_path / "pool" / "metrics.csv")
    assert R.read_csv(str(tmp_path / "ray" / "runs.csv")) == R.read_csv(str(tmp_path / "pool" / "runs.csv"))
    ray_manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert ray_manifest["config"]["executor"] == "ray"


def test_the_recurrent_layers_regularisers_join_the_search_space_for_every_arm(tmp_path):
    from cerebral_rnn.study import checkpoint as CK
    from cerebral_rnn.study import model as M

    out = tmp_path / "rec"
    arms = "lstm,cerebral,lstm-x2,lstmp"
    assert run_cli(*ADDING, "--jobs", "1", "--seeds", "1", "--models", arms, "--epochs", "1", "--tune", "2",
                   "--tune-recurrent", "--out", str(out)) == 0
    tu = json.loads((out / "manifest.json").read_text())["tuning"]
    settings = {a: [(t["rnn_weight_dropout"], t["recurrent_dropout"], t["zoneout"]) for t in tu["trials"][a]]
                for a in arms.split(",")}
    assert len({tuple(v) for v in settings.values()}) == 1  # the same draws for every arm
    assert all(0 < w < 0.5 and 0 < r < 0.5 and 0 < z < 0.5 for w, r, z in settings["lstm"])
    for arm in arms.split(","):
        ckpt = CK.load_checkpoint(str(out / "checkpoints" / f"{arm}-seed0.pt"))
        rnn = M.model_rnn(M.build_model(ckpt["model_config"]))
        inner = getattr(rnn, "lstm", rnn)  # lstm-x2 wraps an LSTM
        chosen = tu["chosen"][arm]
        assert inner.regularisers.weight_dropout == pytest.approx(chosen["rnn_weight_dropout"])
        assert inner.regularisers.recurrent_dropout == pytest.approx(chosen["recurrent_dropout"])
        assert inner.regularisers.zoneout_h == pytest.approx(chosen["zoneout"])
        assert inner.regularisers.zoneout_c == pytest.approx(chosen["zoneout"])  # every arm here has a c
        assert not inner.regularisers.layer_norm


def test_fixed_zoneout_and_layer_norm_reach_every_arm_and_the_tables(tmp_path):
    from cerebral_rnn.study import checkpoint as CK
    from cerebral_rnn.study import model as M

    out = tmp_path / "fixed"
    arms = "lstm,lstm2,cerebral,lstm-x2,lstmp,gru,cerebral-gru,cerebral-peephole"
    assert run_cli(*ADDING, "--jobs", "1", "--seeds", "1", "--models", arms, "--epochs", "1", "--zoneout", "0.2",
                   "--layer-norm", "--out", str(out)) == 0
    for arm in arms.split(","):
        ckpt = CK.load_checkpoint(str(out / "checkpoints" / f"{arm}-seed0.pt"))
        assert ckpt["model_config"]["rnn_regularisers"] == {"zoneout": 0.2, "layer_norm": True}
        rnn = M.model_rnn(M.build_model(ckpt["model_config"]))
        regs = getattr(rnn, "lstm", rnn).regularisers  # lstm-x2 wraps an LSTM
        assert regs.layer_norm and regs.zoneout_h == 0.2
        assert regs.zoneout_c == (0.0 if "gru" in arm else 0.2)
        names = [n for n, _ in rnn.named_parameters()]
        assert any("ln_" in n for n in names), names  # the layer's own gains and shifts exist
    rows = R.read_csv(str(out / "runs.csv"))
    assert {(r["zoneout"], r["layer_norm"]) for r in rows} == {(0.2, True)}
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert cfg["zoneout"] == 0.2 and cfg["layer_norm"] is True


def test_runs_of_the_previous_version_still_resume():
    old = {"phase": "final", "arm": "lstm", "seed": 0, "lr": 0.003, "forget_bias": None, "trial": None,
           "input_dropout": 0.0, "output_dropout": 0.0, "weight_decay": 0.0}
    spec = RU.RunSpec.make("final", "lstm", 0, {"lr": 0.003})
    from dataclasses import asdict

    assert RU.same_spec(old, asdict(spec))
    assert not RU.same_spec(old, asdict(RU.RunSpec.make("final", "lstm", 0, {"lr": 0.003,
                                                                             "recurrent_dropout": 0.1})))
    for on in ({"zoneout": 0.1}, {"layer_norm": True}):
        assert not RU.same_spec(old, asdict(RU.RunSpec.make("final", "lstm", 0, {"lr": 0.003, **on})))


@pytest.mark.parametrize("flag, value, message", [
    ("--input-dropout", "1.0", "expected a probability in [0, 1), got 1.0"),
    ("--recurrent-dropout", "-0.1", "expected a probability in [0, 1), got -0.1"),
    ("--zoneout", "1", "expected a probability in [0, 1), got 1"),
    ("--weight-decay", "x", "expected a number >= 0, got 'x'"),
    ("--weight-decay-range", "1e-2,1e-3", "expected LOW,HIGH with 0 < LOW < HIGH"),
])
def test_bad_regularisation_flags_name_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", flag, value])
    err = capsys.readouterr().err
    assert flag in err and message in err


def test_a_storage_that_cannot_be_opened_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "st"
    with pytest.raises(SystemExit) as e:
        run_cli(*ADDING, "--jobs", "1", "--seeds", "1", "--models", "lstm", "--epochs", "1", "--tune", "1",
                "--storage", "nosuchdb://x", "--out", str(out))
    assert e.value.code == 2 and "--storage: cannot open 'nosuchdb://x'" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()  # nothing was written or trained
