"""The training loop every task shares: runs (arm x seed, and tuning trials), early stopping, the test metric,
checkpoints and resume, tuning, parallel runs, DDP under torchrun.

**A run** trains one arm with one seed and one setting (learning rate, input and output dropout, AdamW's weight
decay, optional forget-gate bias). The seed
sets the initial weights (torch, numpy and Python generators seeded with it) and the data order: each epoch
shuffles the training examples with a generator seeded by ``(seed, epoch)`` alone, so every arm sees the same
examples in the same order, and a resumed run sees what an uninterrupted one would have. The last incomplete
batch of an epoch is dropped. After each epoch the validation split is evaluated; **early stopping**: the run
ends when the validation loss has not improved for ``patience`` epochs (0: never), or at ``epochs`` (the cap).
The **test** split is evaluated once, when a final run ends, on the weights of its best validation epoch.

**Tuning** (``tune`` = N > 0): one Optuna study per arm, the same search space, sampler and N trials for every
arm (see :mod:`.tuner`); trial t uses seed ``TUNE_SEED0 + t``, never a final seed, under the same cap and
early-stopping rule. Each arm's trial with the lowest best validation loss (ties: the earlier trial) sets the
arm's setting for its final seeds. The test split is never looked at while tuning.

**Checkpoints** (``checkpoints/<arm>-seed<s>.pt``; tuning: ``checkpoints/tune/<arm>-trial<t>.pt``) are written
after every epoch through a temporary file and ``os.replace``: model, optimizer, RNG states, metrics, early-
stopping state and, once the run has ended, its result; only tensors, dicts, lists, numbers and strings, so
they load with ``torch.load(..., weights_only=True)``. ``<arm>-seed<s>-best.pt`` holds the weights of a final
run's best validation epoch.

**Parallel runs** (``jobs`` > 1): runs are independent, so up to ``jobs`` of them train at once in worker
processes (spawned, ``threads`` torch threads each, default 1); each computes exactly what it computes alone.
A worker whose parent has died stops before its next epoch. **DDP**: under ``torchrun`` the runs go one after
another and every global batch is split into equal contiguous shards, one per rank; DistributedDataParallel
averages the gradients, so N processes compute what one computes at the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from cerebral_rnn import backends as _backends

from . import arms as _arms
from . import data as _data
from . import model as _model
from . import tuner as _tuner
from .task import Task, TaskData, get_task

CHECKPOINT_FORMAT = 3
TUNE_SEED0 = _tuner.TUNE_SEED0  # tuning trial t trains with seed TUNE_SEED0 + t; final seeds must stay below it

# Settings that change what is computed: a resumed run must use the same ones as the run it continues
# (the task adds its own: Task.keys). --epochs, --seeds, --models, --jobs and --threads may change.
COMMON_KEYS = ("task", "hidden", "batch_size", "lr", "clip", "split", "patience", "tune", "lr_range",
               "tune_forget_bias", "input_dropout", "output_dropout", "weight_decay", "dropout_max",
               "weight_decay_range")

_LSTMP_WARNING = "LSTM with projections is not supported with oneDNN"  # torch's note, once per process


class StopRequested(Exception):
    """Raised by the ``stop_after_epochs`` test hook: stops a run as if it had been killed after an epoch."""


def training_keys(task: Task) -> tuple[str, ...]:
    return COMMON_KEYS + tuple(k for k in task.keys if k not in COMMON_KEYS)


def training_config(cfg: dict, task: Task) -> dict:
    return json.loads(json.dumps({k: cfg.get(k) for k in training_keys(task)}))


# -- distributed ---------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def setup_distributed(device: str) -> Dist:
    """One process, or (under torchrun: WORLD_SIZE > 1) a process group: gloo on CPU, nccl on CUDA."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(rank, world, dev)


# -- checkpoints and RNG states --------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    """torch (CPU and, on CUDA, the device), numpy and Python RNG states as weights_only-loadable values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or a run killed at
    any moment) sees the old file or the new one, never a torn one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Load a study checkpoint (weights_only); ValueError naming the path when it is not one."""
    if not os.path.isfile(path):
        raise ValueError(f"--checkpoint: file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise ValueError(f"--checkpoint: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt:
        raise ValueError(f"--checkpoint: {path} is not a cerebral-rnn study checkpoint")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--checkpoint: {path} has checkpoint format {ckpt.get('format')}, this version reads "
                         f"format {CHECKPOINT_FORMAT}; start a new run in another --out")
    return ckpt


# -- runs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``phase`` "final" (seed 0..n-1) or "tune" (``trial`` t, seed TUNE_SEED0 + t)."""

    phase: str
    arm: str
    seed: int
    lr: float
    forget_bias: float | None = None
    trial: int | None = None
    input_dropout: float = 0.0
    output_dropout: float = 0.0
    weight_decay: float = 0.0

    @property
    def name(self) -> str:
        if self.phase == "tune":
            return f"{self.arm} trial {self.trial}"
        return f"{self.arm} seed {self.seed}"

    def paths(self, out: str) -> tuple[str, str | None]:
        """(last checkpoint, best-weights checkpoint or None for a tuning trial)."""
        if self.phase == "tune":
            return os.path.join(out, "checkpoints", "tune", f"{self.arm}-trial{self.trial}.pt"), None
        base = os.path.join(out, "checkpoints", f"{self.arm}-seed{self.seed}")
        return base + ".pt", base + "-best.pt"

    def setting(self) -> dict:
        return {k: getattr(self, k) for k in _tuner.SETTING_KEYS}

    @classmethod
    def make(cls, phase: str, arm: str, seed: int, setting: dict, trial: int | None = None) -> RunSpec:
        return cls(phase, arm, seed, float(setting["lr"]), setting.get("forget_bias"), trial,
                   float(setting.get("input_dropout", 0.0)), float(setting.get("output_dropout", 0.0)),
                   float(setting.get("weight_decay", 0.0)))


def checkpoint_paths(out: str, arm: str, seed: int) -> tuple[str, str]:
    return RunSpec("final", arm, seed, 0.0).paths(out)


def seed_list(seeds) -> list[int]:
    """The final seeds: an int N (seeds 0..N-1) or a list of distinct ints in [0, TUNE_SEED0)."""
    if isinstance(seeds, bool):
        raise ValueError(f"--seeds: expected a count or a list of seeds, got {seeds!r}")
    out = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not out:
        raise ValueError("--seeds: expected at least one seed")
    bad = [s for s in out if not 0 <= s < TUNE_SEED0]
    if bad:
        raise ValueError(f"--seeds: seeds must lie in [0, {TUNE_SEED0}) (tuning trials use seeds from "
                         f"{TUNE_SEED0} on), got {bad[0]}")
    if len(set(out)) != len(out):
        raise ValueError(f"--seeds: a seed is listed twice: {out}")
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """tqdm bars on a terminal (one process), plain log lines otherwise, nothing with ``quiet``."""

    def __init__(self, enabled: bool, total_runs: int, bars: bool = True) -> None:
        self.enabled = enabled
        self.bars = enabled and bars and sys.stderr.isatty()
        self.tqdm = None
        if self.bars:
            try:
                from tqdm.auto import tqdm
                self.tqdm = tqdm
            except ImportError:  # the study extra is not installed: fall back to log lines
                self.bars = False
        self.runs = self.tqdm(total=total_runs, desc="runs", position=0, unit="run") if self.bars else None

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bars:
            self.tqdm.write(msg, file=sys.stderr)
        else:
            _log(msg)

    def epochs(self, name: str, start: int, total: int):
        if self.bars:
            return self.tqdm(total=total, initial=start, desc=name, position=1, leave=False, unit="epoch")
        return None

    def run_done(self) -> None:
        if self.runs is not None:
            self.runs.update(1)

    def close(self) -> None:
        if self.runs is not None:
            self.runs.close()


@dataclass
class RunContext:
    cfg: dict
    out: str
    task: Task
    data: TaskData
    dist: Dist
    progress: _Progress
    on_epoch: object = None  # called (rank 0) after each epoch with (spec, metrics): rewrite metrics.csv
    stop_after_epochs: int | None = None
    epochs_done_here: int = 0
    parent_pid: int | None = None  # in a worker: stop when the parent is gone
    _splits: dict = field(default_factory=dict)

    def splits(self, seed: int):
        if seed not in self._splits:
            if len(self._splits) > 4:
                self._splits.clear()
            self._splits[seed] = self.task.splits(self.data, self.cfg, seed)
        return self._splits[seed]


def _check_parent(ctx: RunContext) -> None:
    if ctx.parent_pid is not None and os.getppid() != ctx.parent_pid:
        os._exit(1)  # the parent was killed: a later --resume may already be writing these checkpoints


def _metric_row(spec: RunSpec, epoch: int, train_loss: float, val: dict, seconds: float, task: Task) -> dict:
    row = {"model": spec.arm, "seed": spec.seed, "epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"]}
    row.update({f"val_{c}": val[c] for c in task.columns})
    row["seconds"] = seconds
    if spec.phase == "tune":
        row = {"trial": spec.trial, "lr": spec.lr, "forget_bias": spec.forget_bias, **row}
    return row


def train_one(ctx: RunContext, spec: RunSpec, resume: bool) -> dict:
    """Train (or continue, or just report) one run. Returns {"spec", "config", "metrics", "result",
    "path_gap"}; ``result`` (rank 0; None elsewhere) = {"stopped": "early" | "cap", "epochs", "best_epoch",
    "best_val": {...}, "final_train_loss", and for final runs "test": {...} and "success"}."""
    cfg, dist, device, task = ctx.cfg, ctx.dist, ctx.dist.device, ctx.task
    last_path, best_path = spec.paths(ctx.out)
    splits = ctx.splits(spec.seed)
    _model.seed_everything(spec.seed)
    config = _model.model_config(spec.arm, ctx.data.io, cfg["hidden"], task.name, spec.forget_bias,
                                 spec.input_dropout, spec.output_dropout)
    model = _model.build_model(config).to(device)
    # AdamW: decoupled weight decay (with weight_decay 0 every step is Adam's)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    metrics: list[dict] = []
    start, best_val, best_epoch, bad, stopped, result = 0, math.inf, 0, 0, None, None
    best_vals: dict = {}
    if resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path)
        if ckpt["model_config"] != config:
            raise ValueError(f"--resume: {last_path} holds a model {ckpt['model_config']}, this run builds {config}")
        if ckpt["spec"] != asdict(spec):
            raise ValueError(f"--resume: {last_path} was trained with {ckpt['spec']}, this run asks for "
                             f"{asdict(spec)} (did the tuning settings or --epochs change?)")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], device)
        metrics, start = list(ckpt["metrics"]), int(ckpt["epoch"])
        best_val, best_epoch, bad = float(ckpt["best_val_loss"]), int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
        best_vals, stopped, result = dict(ckpt["best_val"]), ckpt["stopped"], ckpt["result"]
        if start > cfg["epochs"]:
            raise ValueError(f"--epochs: {spec.name} already has {start} epochs in {ctx.out}; "
                             f"pass --epochs {start} or more to resume it")
        if stopped == "cap" and start < cfg["epochs"]:
            stopped, result = None, None  # a larger cap: train on
        elif stopped is None and start == cfg["epochs"]:
            # cut off after its last epoch under this cap, before it was finished: finish it now
            stopped = "cap"
            if dist.main:
                result = _finish(ctx, spec, config, metrics, stopped, best_epoch, best_vals, best_path, model)
                ckpt.update(stopped=stopped, result=result)
                atomic_save(ckpt, last_path)
    if stopped is not None:
        ctx.progress.log(f"[{spec.name}] finished earlier ({start} epochs, {stopped} stop), skipped")
        return {"spec": asdict(spec), "config": config, "metrics": metrics, "result": result,
                "path_gap": _model.path_difference(model)}
    if start:
        ctx.progress.log(f"[{spec.name}] resuming after epoch {start}")

    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    B, N = cfg["batch_size"], task.size(splits.train)
    shard = B // dist.world
    batches = N // B  # the last incomplete batch is dropped
    epochs_bar = ctx.progress.epochs(spec.name, start, cfg["epochs"])
    patience = cfg["patience"]
    for epoch in range(start, cfg["epochs"]):
        _check_parent(ctx)
        t0 = time.perf_counter()
        net.train()
        order = _data.epoch_order(N, spec.seed, epoch)
        total = torch.zeros(2, dtype=torch.float64)  # (sum of per-batch mean losses x count, count), this rank
        for b in range(batches):
            idx = order[b * B + dist.rank * shard: b * B + (dist.rank + 1) * shard]
            loss, count = task.loss(net, task.batch(splits.train, idx), device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks: the mean over the global batch
            if cfg["clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            optimizer.step()
            total[0] += float(loss.detach()) * count
            total[1] += count
        if dist.active:
            total = sum_over_ranks(total, dist)
        train_loss = float(total[0] / total[1])
        val = task.evaluate(model, splits.val, device)
        seconds = time.perf_counter() - t0
        row = _metric_row(spec, epoch + 1, train_loss, val, seconds, task)
        metrics.append(row)
        improved = math.isfinite(val["loss"]) and val["loss"] < best_val  # NaN or inf never improves
        if improved:
            best_val, best_epoch, bad, best_vals = val["loss"], epoch + 1, 0, dict(val)
        else:
            bad += 1
        if patience and bad >= patience:
            stopped = "early"
        elif epoch + 1 == cfg["epochs"]:
            stopped = "cap"
        state_cpu = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if dist.main:
            _check_parent(ctx)
            if improved and best_path is not None:
                atomic_save({"format": CHECKPOINT_FORMAT, "kind": "best", "arm": spec.arm, "seed": spec.seed,
                             "epoch": epoch + 1, "val_loss": val["loss"], "val": dict(val), "model_config": config,
                             "task_info": _task_info(ctx), "model": state_cpu}, best_path)
            if stopped is not None:
                result = _finish(ctx, spec, config, metrics, stopped, best_epoch, best_vals, best_path, model)
            atomic_save({"format": CHECKPOINT_FORMAT, "kind": "last", "arm": spec.arm, "seed": spec.seed,
                         "epoch": epoch + 1, "spec": asdict(spec), "model_config": config,
                         "task_info": _task_info(ctx), "study_config": training_config(cfg, task),
                         "model": state_cpu, "optimizer": optimizer.state_dict(), "rng": rng_state(device),
                         "metrics": metrics, "best_val_loss": best_val, "best_epoch": best_epoch,
                         "bad_epochs": bad, "best_val": best_vals, "stopped": stopped, "result": result},
                        last_path)
            if ctx.on_epoch is not None:
                ctx.on_epoch(spec, metrics)
        dist.barrier()
        if epochs_bar is not None:
            epochs_bar.update(1)
            epochs_bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val['loss']:.3f}")
        else:
            extra = "".join(f" {c} {val[c]:.3f}" for c in task.columns)
            ctx.progress.log(f"[{spec.name}] epoch {epoch + 1}/{cfg['epochs']} train {train_loss:.4f} "
                             f"val {val['loss']:.4f}{extra} {seconds:.1f}s")
        ctx.epochs_done_here += 1
        if ctx.stop_after_epochs is not None and ctx.epochs_done_here >= ctx.stop_after_epochs:
            raise StopRequested(f"stopped after {ctx.epochs_done_here} epochs (stop_after_epochs)")
        if stopped is not None:
            break
    if epochs_bar is not None:
        epochs_bar.close()
    if stopped is not None and result is not None:
        msg = (f"[{spec.name}] {stopped} stop after {len(metrics)} epochs: best validation loss "
               f"{result['best_val']['loss']:.4f} at epoch {result['best_epoch']}")
        if "test" in result:
            msg += f"; test {task.primary.key} {result['test'][task.primary.key]:.4f}"
        ctx.progress.log(msg)
    return {"spec": asdict(spec), "config": config, "metrics": metrics, "result": result,
            "path_gap": _model.path_difference(model)}


def sum_over_ranks(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """All-reduce (sum) a CPU tensor over the process group, on the group's device (nccl takes only CUDA
    tensors); returned on the CPU."""
    on_device = values.to(dist.device)
    torch.distributed.all_reduce(on_device)
    return on_device.cpu()


def _task_info(ctx: RunContext) -> dict:
    """What a checkpoint needs beyond the weights: the task, and for charlm the vocabulary."""
    info = {"task": ctx.task.name}
    if ctx.task.name == "charlm":
        info["vocab"] = ctx.data.payload["splits"].vocab.chars
    return info


def _finish(ctx: RunContext, spec: RunSpec, config: dict, metrics: list[dict], stopped: str, best_epoch: int,
            best_vals: dict, best_path: str | None, model: nn.Module) -> dict:
    """The run's result; for a final run the test metrics, measured once on its best-validation weights."""
    result = {"stopped": stopped, "epochs": len(metrics), "best_epoch": best_epoch, "best_val": dict(best_vals),
              "final_train_loss": metrics[-1]["train_loss"]}
    if spec.phase == "final" and (best_epoch == 0 or best_path is None or not os.path.exists(best_path)):
        # the validation loss was never finite: no best weights to test
        result["test"] = {"loss": math.nan, **{c: math.nan for c in ctx.task.columns}}
        result["success"] = None
        result["diverged"] = True
    elif spec.phase == "final":
        best = _model.build_model(config).to(ctx.dist.device)
        best.load_state_dict(load_checkpoint(best_path)["model"])
        test = ctx.task.evaluate(best, ctx.splits(spec.seed).test, ctx.dist.device)
        result["test"] = test
        result["success"] = ctx.task.success(test)
    return result


# -- parallel runs -------------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(cfg: dict, out: str, quiet: bool, parent_pid: int) -> None:
    torch.set_num_threads(cfg.get("threads") or 1)
    warnings.filterwarnings("ignore", message=_LSTMP_WARNING)
    task = get_task(cfg["task"])
    data = task.load(cfg)
    if cfg["device"] == "cpu":
        _backends.prepare()
    _WORKER["ctx"] = RunContext(cfg, out, task, data, Dist(), _Progress(not quiet, 0, bars=False),
                                parent_pid=parent_pid)


def _worker_run(spec: RunSpec, resume: bool) -> dict:
    return train_one(_WORKER["ctx"], spec, resume)


def run_all(ctx: RunContext, specs: list[RunSpec], resume: bool, jobs: int, quiet: bool, on_done,
            cost: dict | None = None) -> None:
    """Train every run of ``specs``: one after another in this process, or ``jobs`` at a time in spawned
    worker processes, seed by seed (trial by trial), the costliest arm first within each (``cost``: arm -> a
    size, e.g. its parameter count): a study cut off early holds complete pairs of the seeds it reached. ``on_done(result)`` is called here, in the parent, as each run
    ends. The order changes no result: every run is independent and seeded."""
    if jobs <= 1 or ctx.dist.active or ctx.stop_after_epochs is not None or len(specs) <= 1:
        for spec in specs:
            on_done(train_one(ctx, spec, resume))
        return
    if cost:  # round by round (a seed, or a trial, of every arm), the costliest arm first in each round
        rounds = {k: i for i, k in enumerate(dict.fromkeys(s.trial if s.phase == "tune" else s.seed for s in specs))}
        specs = sorted(specs, key=lambda s: (rounds[s.trial if s.phase == "tune" else s.seed], -cost.get(s.arm, 0)))
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    mp = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(specs)), mp_context=mp, initializer=_worker_init,
                             initargs=(ctx.cfg, ctx.out, quiet, os.getpid())) as pool:
        pending = {pool.submit(_worker_run, spec, resume) for spec in specs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    on_done(f.result())
        except BaseException:
            for f in pending:
                f.cancel()
            raise


# -- the whole study ---------------------------------------------------------------------------------------------

SAMPLE_LENGTH, SAMPLE_TEMPERATURE, SAMPLE_PRIME_CHARS = 400, 0.8, 40


def _package_versions() -> dict:
    import platform
    from importlib import metadata

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count()}
    for dist_name in ("cerebral-rnn", "tqdm", "matplotlib", "scipy", "scikit-learn"):
        try:
            versions[dist_name] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            versions[dist_name] = None
    from cerebral_rnn import __version__

    versions["cerebral_rnn (imported)"] = __version__
    return versions


def _remove_stale_temporaries(out: str) -> None:
    """Temporary files left by a process killed inside atomic_save / atomic_write_text."""
    for folder in (out, os.path.join(out, "checkpoints"), os.path.join(out, "checkpoints", "tune")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            stem, _, suffix = name.rpartition(".tmp")
            if stem and suffix.isdigit():
                os.remove(os.path.join(folder, name))


def _check_previous_run(out: str, resume: bool, cfg: dict, task: Task, data_id: str | None) -> None:
    manifest = os.path.join(out, "manifest.json")
    ckpt_dir = os.path.join(out, "checkpoints")
    has_ckpts = os.path.isdir(ckpt_dir) and any(n.endswith(".pt") for _, _, fs in os.walk(ckpt_dir) for n in fs)
    if not resume:
        if os.path.exists(manifest) or has_ckpts:
            raise ValueError(f"--out: {out} already holds a run; pass --resume to continue it, or choose another "
                             f"--out")
        return
    if not os.path.exists(manifest):
        if has_ckpts:
            raise ValueError(f"--resume: {out} has checkpoints but no manifest.json; cannot check the config")
        return
    with open(manifest, encoding="utf-8") as f:
        old = json.load(f)
    prev, now = dict(old.get("config", {})), training_config(cfg, task)
    diffs = [f"{k}: {prev.get(k)!r} in the manifest, {now[k]!r} now" for k in now if prev.get(k) != now[k]]
    if old.get("data_id") != data_id:
        diffs.append(f"data: {str(old.get('data_id'))[:16]}… in the manifest, {str(data_id)[:16]}… now")
    if diffs:
        raise ValueError(f"--resume: the config differs from the run in {out} ({'; '.join(diffs)}); "
                         f"resume with the same settings or choose another --out")


def _data_id(task: Task, data: TaskData) -> str:
    """A fingerprint of the task's data (corpus or CSV sha256, or the generated data's description)."""
    import hashlib

    return hashlib.sha256(json.dumps(data.describe, sort_keys=True, default=str).encode()).hexdigest()


def reproduce(cfg: dict, out: str, resume: bool = False, quiet: bool = False,
              stop_after_epochs: int | None = None) -> dict:
    """Run the study described by ``cfg`` into ``out``; returns {"runs": run results, "info": summary info}.

    ``cfg`` keys (see ``cerebral-rnn reproduce --help``): task, the task's own keys, split (three fractions),
    hidden, embedding, batch_size, lr, clip, epochs (the cap), patience, seeds (how many: seeds 0..n-1),
    models (arm names), tune (trials per arm, 0 = none), lr_range, tune_forget_bias, min_effect (None: the
    task's default), jobs, device, threads (None: torch's default; 1 in worker processes).
    """
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LSTMP_WARNING)
            return _reproduce(cfg, out, resume, quiet, stop_after_epochs)
    finally:
        torch.set_num_threads(threads)


def _reproduce(cfg: dict, out: str, resume: bool, quiet: bool, stop_after_epochs: int | None) -> dict:
    from . import report as _report

    t_start = time.perf_counter()
    task = get_task(cfg["task"])
    arms = _arms.check_arms(list(cfg["models"]))
    seeds = seed_list(cfg["seeds"])
    if cfg["tune"]:
        lo, hi = cfg["lr_range"]
        if not (0 < lo < hi):
            raise ValueError(f"--lr-range: expected 0 < LOW < HIGH, got {lo},{hi}")
    try:
        import matplotlib  # noqa: F401 - needed at the end for loss_curves.png; fail before training, not after
    except ImportError:
        raise ValueError("reproduce: matplotlib is missing; install the study extra: "
                         "pip install 'cerebral-rnn[study]'") from None
    dist = setup_distributed(cfg["device"])
    if cfg["batch_size"] % dist.world:
        raise ValueError(f"--batch-size: {cfg['batch_size']} is not divisible by the {dist.world} processes")
    data = task.load(cfg)
    data_id = _data_id(task, data)
    # Compiled backends are built on first use (once per machine): do it here, outside every epoch's timing.
    compiled_backends = _backends.prepare() if cfg["device"] == "cpu" else {}
    _check_previous_run(out, resume, cfg, task, data_id)
    dist.barrier()  # every rank has looked at --out before rank 0 writes into it
    io = data.io
    configs = {a: _model.model_config(a, io, cfg["hidden"], task.name) for a in arms}
    params = {a: _model.count_parameters(a, io, c["width"]) for a, c in configs.items()}
    delta = cfg["min_effect"] if cfg.get("min_effect") is not None else task.default_delta(cfg)
    jobs = 1 if dist.active else max(1, int(cfg.get("jobs") or 1))
    manifest = {
        "command": "cerebral-rnn reproduce", "argv": sys.argv, "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": task.name,
        "config": {**cfg, "models": arms}, "seeds": seeds, "world_size": dist.world, "jobs": jobs,
        "torch_threads": torch.get_num_threads() if jobs == 1 else (cfg.get("threads") or 1),
        "compiled_backends": compiled_backends, "versions": _package_versions(), "data": data.describe,
        "data_id": data_id, "min_effect": delta,
        "arms": {a: {"description": _arms.ARMS[a].description, "width": configs[a]["width"],
                     "parameters": params[a]} for a in arms},
    }
    if task.name == "charlm":
        manifest["corpus"] = data.describe["corpus"]
    manifest_path = os.path.join(out, "manifest.json")

    def write_manifest() -> None:
        if dist.main:
            atomic_write_text(json.dumps(manifest, indent=2, default=str) + "\n", manifest_path)

    if dist.main:
        os.makedirs(os.path.join(out, "checkpoints", "tune"), exist_ok=True)
        _remove_stale_temporaries(out)
    write_manifest()
    dist.barrier()

    store: dict[tuple, list[dict]] = {}  # (phase, arm, seed) -> per-epoch rows
    results: dict[tuple, dict] = {}  # (phase, arm, seed) -> run result
    gaps: dict[str, list[float]] = {}
    paths = {k: os.path.join(out, f"{k}.csv") for k in ("metrics", "tuning_metrics", "runs")}

    def write_tables() -> None:
        if not dist.main:
            return
        rows = [r for (ph, _, _), m in store.items() if ph == "final" for r in m]
        atomic_write_text(_report.metrics_csv(rows, task), paths["metrics"])
        if cfg["tune"]:
            trows = [r for (ph, _, _), m in store.items() if ph == "tune" for r in m]
            atomic_write_text(_report.metrics_csv(trows, task, tuning=True), paths["tuning_metrics"])
        atomic_write_text(_report.runs_csv(list(results.values()), task, params), paths["runs"])

    def on_epoch(spec: RunSpec, metrics: list[dict]) -> None:
        store[(spec.phase, spec.arm, spec.seed)] = list(metrics)
        write_tables()

    n_runs = len(arms) * (len(seeds) + cfg["tune"])
    progress = _Progress(enabled=not quiet and dist.main, total_runs=n_runs, bars=jobs == 1)
    ctx = RunContext(cfg, out, task, data, dist, progress, on_epoch if jobs == 1 else None, stop_after_epochs)

    def on_done(res: dict) -> None:
        spec = res["spec"]
        key = (spec["phase"], spec["arm"], spec["seed"])
        store[key] = list(res["metrics"])
        if res["result"] is not None:
            results[key] = {"spec": spec, "result": res["result"], "width": res["config"]["width"]}
        if spec["phase"] == "final" and res["path_gap"] is not None:
            gaps.setdefault(spec["arm"], []).append(res["path_gap"])
        write_tables()
        progress.run_done()

    try:
        # 1. tuning: one Optuna study per arm, the same N settings for every arm
        chosen: dict[str, dict] = {}
        fixed = {k: cfg.get(k, 0.0) for k in ("lr", "input_dropout", "output_dropout", "weight_decay")}
        if cfg["tune"]:
            fp = _tuner.fingerprint(training_config(cfg, task), data_id)
            settings = _tuner.trial_settings(arms, cfg, out, fp) if dist.main else None
            if dist.active:
                box = [settings]
                torch.distributed.broadcast_object_list(box, src=0)
                settings = box[0]
            specs = [RunSpec.make("tune", a, s["seed"], s, s["trial"]) for a in arms for s in settings[a]]
            progress.log(f"tuning: {cfg['tune']} trials per arm, {len(specs)} runs")
            run_all(ctx, specs, resume, jobs, quiet, on_done, params)
            trials = {a: [] for a in arms}
            for (ph, a, _), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[1]["spec"]["trial"])):
                if ph == "tune":
                    rr = r["result"]
                    trials[a].append({**{k: r["spec"][k] for k in ("trial", "seed", *_tuner.SETTING_KEYS)},
                                      "epochs": rr["epochs"], "stopped": rr["stopped"],
                                      "best_epoch": rr["best_epoch"], "best_val": rr["best_val"]})
            if dist.main:
                _tuner.record(trials, cfg, out, fp)
                for a in arms:
                    if not trials[a]:
                        raise ValueError(f"tuning: no trial of arm {a!r} finished (all {cfg['tune']} were cut "
                                         f"off?); continue with --resume")
                    best = _tuner.choose(trials[a])
                    chosen[a] = {**{k: best[k] for k in _tuner.SETTING_KEYS}, "trial": best["trial"]}
            if dist.active:  # every rank trains with rank 0's choice
                box = [chosen]
                torch.distributed.broadcast_object_list(box, src=0)
                chosen = box[0]
            manifest["tuning"] = {"trials_per_arm": cfg["tune"], "search_space": _tuner.describe_space(cfg),
                                  "sampler": f"optuna.samplers.QMCSampler(scramble=True, seed={_tuner.SAMPLER_SEED})",
                                  "storage": _tuner.storage_url(cfg, out), "fingerprint": fp,
                                  "lr_range": list(cfg["lr_range"]), "forget_bias_tuned": bool(cfg["tune_forget_bias"]),
                                  "trials": trials, "chosen": chosen}
            write_manifest()
        else:
            chosen = {a: {**fixed, "forget_bias": None, "trial": None} for a in arms}
        # 2. the final seeds, each arm with its setting
        specs = [RunSpec.make("final", a, s, chosen[a]) for a in arms for s in seeds]
        if resume:  # metrics of runs finished or started earlier, so metrics.csv is whole from the start
            for spec in specs:
                p = spec.paths(out)[0]
                if os.path.exists(p):
                    store[(spec.phase, spec.arm, spec.seed)] = list(load_checkpoint(p)["metrics"])
        run_all(ctx, specs, resume, jobs, quiet, on_done, params)
    finally:
        progress.close()
    info = {"task": task, "arms": arms, "seeds": seeds, "params": params,
            "widths": {a: c["width"] for a, c in configs.items()}, "config": cfg, "data": data,
            "path_gaps": gaps, "world_size": dist.world, "jobs": jobs, "chosen": chosen,
            "tuning": manifest.get("tuning"), "min_effect": delta}
    final_results = [r for (ph, _, _), r in results.items() if ph == "final"]
    if dist.main:
        write_tables()
        rows = [r for (ph, _, _), m in store.items() if ph == "final" for r in m]
        _report.plot_curves(rows, os.path.join(out, "loss_curves.png"), arms, task)
        if task.name == "charlm":
            atomic_write_text(_samples(out, arms, seeds, data), os.path.join(out, "samples.txt"))
        info["wall_seconds"] = time.perf_counter() - t_start
        info["claims_png"] = os.path.join(out, "claims.png")
        text, claims = _report.summary_markdown(rows, final_results, info)
        atomic_write_text(text, os.path.join(out, "summary.md"))
        manifest.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        wall_seconds_this_invocation=info["wall_seconds"],
                        symmetry_max_path_difference={a: max(v) for a, v in gaps.items()},
                        runs=sorted(final_results, key=lambda r: (r["spec"]["arm"], r["spec"]["seed"])),
                        claims=claims)
        write_manifest()
        progress.log(f"done in {info['wall_seconds']:.0f} s; outputs in {out}")
        for line in _report.verdict_lines(claims):
            progress.log(line)
    dist.barrier()
    return {"runs": final_results, "info": info}


def _samples(out: str, arms: list[str], seeds: list[int], data: TaskData) -> str:
    """Text from each arm's best checkpoint (lowest validation loss over its seeds)."""
    from . import report as _report

    prime = data.payload["splits"].val_text[:SAMPLE_PRIME_CHARS]
    parts = [(f"Samples: prime = the first {len(prime)} characters of the validation part, "
              f"{SAMPLE_LENGTH} characters sampled at temperature {SAMPLE_TEMPERATURE}, seed 0.\n")]
    for arm in arms:
        best = None
        for seed in seeds:
            path = checkpoint_paths(out, arm, seed)[1]
            if os.path.exists(path):
                ckpt = load_checkpoint(path)
                if best is None or ckpt["val_loss"] < best["val_loss"]:
                    best = ckpt
        if best is None:
            continue
        model, vocab = _report.model_from_checkpoint(best)
        text = _report.generate(model, vocab, prime, SAMPLE_LENGTH, SAMPLE_TEMPERATURE, seed=0)
        parts.append(f"=== {arm} (seed {best['seed']}, epoch {best['epoch']}, val loss {best['val_loss']:.4f}) "
                     f"===\n{prime}{text}\n")
    return "\n".join(parts)
