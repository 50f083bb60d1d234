"""One run: an arm trained with one seed and one setting, early-stopped, checkpointed, resumable.

**A run** trains one arm with one seed and one setting (learning rate, input and output dropout, AdamW's weight
decay, optional forget-gate bias). The seed sets the initial weights (torch, numpy and Python generators seeded
with it) and the data order: each epoch shuffles the training examples with a generator seeded by
``(seed, epoch)`` alone, so every arm sees the same examples in the same order, and a resumed run sees what an
uninterrupted one would have. The last incomplete batch of an epoch is dropped. After each epoch the validation
split is evaluated; **early stopping**: the run ends when the validation loss has not improved for
``patience`` epochs (0: never), or at ``epochs`` (the cap); a non-finite validation loss never counts as an
improvement. The **test** split is evaluated once, when a final run ends, on the weights of its best validation
epoch (a run whose validation loss was never finite has no test metrics: NaN, marked ``diverged``).
Checkpoints: :mod:`.checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import data as _data
from . import model as _model
from . import tuner as _tuner
from .checkpoint import CHECKPOINT_FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state
from .distributed import Dist, sum_over_ranks
from .progress import Progress
from .tasks import Task, TaskData

TUNE_SEED0 = _tuner.TUNE_SEED0  # tuning trial t trains with seed TUNE_SEED0 + t; final seeds must stay below it

COMMON_KEYS = ("task", "hidden", "batch_size", "lr", "clip", "split", "patience", "tune", "lr_range",
               "tune_forget_bias", "input_dropout", "output_dropout", "weight_decay", "dropout_max",
               "weight_decay_range")
# Settings that change what is computed: a resumed run must use the same ones as the run it continues (the task
# adds its own: Task.keys). --epochs, --seeds, --models, --jobs and --threads may change.

_LSTMP_WARNING = "LSTM with projections is not supported with oneDNN"  # torch's note, once per process


class StopRequested(Exception):
    """Raised by the ``stop_after_epochs`` test hook: stops a run as if it had been killed after an epoch."""


def training_keys(task: Task) -> tuple[str, ...]:
    return COMMON_KEYS + tuple(k for k in task.keys if k not in COMMON_KEYS)


# Keys of later versions, left out of the training config while off, so that the runs of earlier versions
# still resume (and keep their tuning studies' fingerprints).
OPTIONAL_KEYS = {"tune_recurrent": False, "rnn_weight_dropout": 0.0, "recurrent_dropout": 0.0, "zoneout": 0.0,
                 "layer_norm": False}


def training_config(cfg: dict, task: Task) -> dict:
    out = {k: cfg.get(k) for k in training_keys(task)}
    out.update({k: cfg[k] for k, off in OPTIONAL_KEYS.items() if cfg.get(k, off) not in (off, None)})
    return json.loads(json.dumps(out))


def same_spec(old: dict, new: dict) -> bool:
    """A checkpoint's spec against this run's; fields that a later version added count only when they are on."""
    return old == {k: v for k, v in new.items() if k in old or v not in (0.0, None)}


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
    rnn_weight_dropout: float = 0.0  # the recurrent layer's own regularisers (cerebral_rnn.regularise)
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    layer_norm: bool = False

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
                   float(setting.get("weight_decay", 0.0)), float(setting.get("rnn_weight_dropout", 0.0)),
                   float(setting.get("recurrent_dropout", 0.0)), float(setting.get("zoneout", 0.0)),
                   bool(setting.get("layer_norm", False)))

    def rnn_regularisers(self) -> dict:
        """The recurrent layer's regularisers that are on (an empty dict: none, the model of earlier versions)."""
        return {k: v for k, v in (("weight_dropout", self.rnn_weight_dropout),
                                  ("recurrent_dropout", self.recurrent_dropout), ("zoneout", self.zoneout),
                                  ("layer_norm", self.layer_norm)) if v}


def checkpoint_paths(out: str, arm: str, seed: int) -> tuple[str, str]:
    return RunSpec("final", arm, seed, 0.0).paths(out)


def seed_list(seeds) -> list[int]:
    """The final seeds: an int N (seeds 0..N-1) or a list of distinct ints in [0, TUNE_SEED0)."""
    if isinstance(seeds, bool):
        raise TypeError(f"--seeds: expected a count or a list of seeds, got {seeds!r}")
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


@dataclass
class RunContext:
    cfg: dict
    out: str
    task: Task
    data: TaskData
    dist: Dist
    progress: Progress
    on_epoch: object = None  # called (rank 0) after each epoch with (spec, metrics): rewrite metrics.csv
    stop_after_epochs: int | None = None
    epochs_done_here: int = 0
    parent_pid: int | None = None  # in a worker: stop when the parent is gone
    report_only: bool = False  # train nothing: report what finished
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
        row = {"trial": spec.trial, **spec.setting(), **row}
    return row


def _build(ctx: RunContext, spec: RunSpec):
    """The run's model config, its model (seeded with the run's seed) and its optimizer."""
    _model.seed_everything(spec.seed)
    config = _model.model_config(spec.arm, ctx.data.io, ctx.cfg["hidden"], ctx.task.name, spec.forget_bias,
                                 spec.input_dropout, spec.output_dropout, spec.rnn_regularisers())
    model = _model.build_model(config).to(ctx.dist.device)
    # AdamW: decoupled weight decay (with weight_decay 0 every step is Adam's)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    return config, model, optimizer


def train_one(ctx: RunContext, spec: RunSpec, resume: bool) -> dict:
    """Train (or continue, or just report) one run. Returns {"spec", "config", "metrics", "result",
    "path_gap"}; ``result`` (rank 0; None elsewhere) = {"stopped": "early" | "cap", "epochs", "best_epoch",
    "best_val": {...}, "final_train_loss", and for final runs "test": {...} and "success"}."""
    cfg, dist, device, task = ctx.cfg, ctx.dist, ctx.dist.device, ctx.task
    last_path, best_path = spec.paths(ctx.out)
    splits = ctx.splits(spec.seed)
    config, model, optimizer = _build(ctx, spec)
    metrics: list[dict] = []
    start, best_val, best_epoch, bad, stopped, result = 0, math.inf, 0, 0, None, None
    best_vals: dict = {}
    if resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path)
        if ckpt["model_config"] != config:
            raise ValueError(f"--resume: {last_path} holds a model {ckpt['model_config']}, this run builds {config}")
        if not same_spec(ckpt["spec"], asdict(spec)):
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
    if ctx.report_only and (stopped is None or result is None):  # not finished: nothing to report
        return {"spec": asdict(spec), "config": config, "metrics": metrics, "result": None, "path_gap": None}
    if stopped is not None:
        if not ctx.report_only:
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


def time_one_epoch(ctx: RunContext, spec: RunSpec) -> float:
    """Seconds of one training epoch plus one validation pass of ``spec``'s model, as a run does it (nothing
    is written); for ``--dry-run``'s estimate."""
    cfg, task, device = ctx.cfg, ctx.task, ctx.dist.device
    splits = ctx.splits(spec.seed)
    _, model, optimizer = _build(ctx, spec)
    B, N = cfg["batch_size"], task.size(splits.train)
    t0 = time.perf_counter()
    model.train()
    order = _data.epoch_order(N, spec.seed, 0)
    for b in range(N // B):
        loss, _ = task.loss(model, task.batch(splits.train, order[b * B:(b + 1) * B]), device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["clip"] > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        optimizer.step()
    task.evaluate(model, splits.val, device)
    return time.perf_counter() - t0
