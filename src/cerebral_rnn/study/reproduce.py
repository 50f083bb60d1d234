"""The whole study: tuning (one Optuna study per arm), the final seeds, the report.

``reproduce(cfg, out)`` checks the config and ``--out``, loads the task's data, tunes every arm with the same
budget (:mod:`.tuner`), trains every arm's final seeds with its chosen setting (:mod:`.runner`, run by
:mod:`.executor`), and writes ``manifest.json``, ``metrics.csv``, ``runs.csv``, ``summary.md``, ``claims.png``,
``loss_curves.png`` and, for charlm, ``samples.txt`` (:mod:`.report`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

from cerebral_rnn import backends as _backends

from . import arms as _arms
from . import model as _model
from . import tuner as _tuner
from .checkpoint import atomic_write_text, load_checkpoint, remove_stale_temporaries
from .distributed import setup_distributed
from .executor import run_all
from .progress import Progress
from .runner import (
    _LSTMP_WARNING,
    RunContext,
    RunSpec,
    StopRequested,
    checkpoint_paths,
    seed_list,
    training_config,
)
from .tasks import Task, TaskData, get_task

__all__ = ["StopRequested", "reproduce"]


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


class OutLock:
    """An exclusive lock on ``--out`` (``fcntl.flock`` on ``<out>/.lock``) held while a study writes there, so that
    two ``reproduce`` commands never write into one folder at once. The kernel drops it when the process ends,
    so a killed run leaves no stale lock. Where ``fcntl`` does not exist (Windows) it does nothing."""

    def __init__(self, out: str) -> None:
        self.path, self.file = os.path.join(out, ".lock"), None

    def __enter__(self) -> OutLock:  # noqa: PYI034
        try:
            import fcntl
        except ImportError:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise ValueError(f"--out: {os.path.dirname(self.path)} is being written by another reproduce command "
                             f"({holder}); wait for it to finish or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None


def final_seeds_on_disk(out: str, arms: list[str]) -> list[int]:
    """Seeds of the final runs whose checkpoints lie in ``<out>/checkpoints`` for any of ``arms``."""
    import re

    folder = os.path.join(out, "checkpoints")
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(r"^(?P<arm>.+)-seed(?P<seed>\d+)\.pt$")
    seeds = set()
    for name in os.listdir(folder):
        m = pattern.match(name)
        if m and m["arm"] in arms:
            seeds.add(int(m["seed"]))
    return sorted(seeds)


def _check_previous_run(out: str, resume: bool, cfg: dict, task: Task, data_id: str | None) -> None:
    """--out and --resume against what is in ``out``; with ``data_id`` None only the config is compared (the
    data's fingerprint is checked again once the data is loaded)."""
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
    if data_id is not None and old.get("data_id") != data_id:
        diffs.append(f"data: {str(old.get('data_id'))[:16]}… in the manifest, {str(data_id)[:16]}… now")
    if diffs:
        raise ValueError(f"--resume: the config differs from the run in {out} ({'; '.join(diffs)}); "
                         f"resume with the same settings or choose another --out")


def _data_id(task: Task, data: TaskData) -> str:
    """A fingerprint of the task's data (corpus or CSV sha256, or the generated data's description)."""
    import hashlib

    return hashlib.sha256(json.dumps(data.describe, sort_keys=True, default=str).encode()).hexdigest()


def reproduce(cfg: dict, out: str, resume: bool = False, quiet: bool = False,
              stop_after_epochs: int | None = None, mode: str = "run") -> dict:
    """Run the study described by ``cfg`` into ``out``; returns {"runs": run results, "info": summary info}.

    ``mode``: "run" (train what is not finished, then report), "report" (train nothing: rebuild the summary
    from the runs finished in ``out``, over every final seed found there) or "plan" (write nothing: print the
    runs and an estimate of their time from one timed epoch of each arm; returns {"plan": ...}).

    ``cfg`` keys (see ``cerebral-rnn reproduce --help``): task, the task's own keys, split (three fractions),
    hidden, embedding, batch_size, lr, clip, epochs (the cap), patience, seeds (how many: seeds 0..n-1),
    models (arm names), tune (trials per arm, 0 = none), lr_range, tune_forget_bias, min_effect (None: the
    task's default), jobs, device, threads (None: torch's default; 1 in worker processes), input_dropout,
    output_dropout, weight_decay (fixed settings), dropout_max, weight_decay_range, storage (tuning), executor
    ("local" or "ray"), address (Ray).
    """
    if mode not in ("run", "report", "plan"):
        raise ValueError(f"mode: expected 'run', 'report' or 'plan', got {mode!r}")
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LSTMP_WARNING)
            if mode == "plan":
                return _plan(cfg, out, resume, quiet)
            # under torchrun the ranks share --out: rank 0 holds the lock for them
            lock = OutLock(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
            with lock:
                return _reproduce(cfg, out, resume or mode == "report", quiet, stop_after_epochs, mode == "report")
    finally:
        torch.set_num_threads(threads)


def _check_config(cfg: dict) -> tuple[Task, list[str], list[int]]:
    """Everything about the config that can be checked before any data is loaded or code compiled."""
    task = get_task(cfg["task"])
    arms = _arms.check_arms(list(cfg["models"]))
    seeds = seed_list(cfg["seeds"])
    if cfg["tune"]:
        lo, hi = cfg["lr_range"]
        if not (0 < lo < hi):
            raise ValueError(f"--lr-range: expected 0 < LOW < HIGH, got {lo},{hi}")
        _tuner.check_installed()
        _tuner.check_storage(cfg.get("storage"))
    for key in ("input_dropout", "output_dropout"):
        _model.check_dropout(cfg.get(key, 0.0), "--" + key.replace("_", "-"))
    if (cfg.get("executor") or "local") == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--executor ray: Ray is missing; install it: pip install 'cerebral-rnn[ray]'") from None
    try:
        import matplotlib  # noqa: F401 - needed at the end for loss_curves.png; fail before training, not after
    except ImportError:
        raise ValueError("reproduce: matplotlib is missing; install the study extra: "
                         "pip install 'cerebral-rnn[study]'") from None
    return task, arms, seeds


def _reproduce(cfg: dict, out: str, resume: bool, quiet: bool, stop_after_epochs: int | None,
               report_only: bool = False) -> dict:
    from . import report as _report

    t_start = time.perf_counter()
    if report_only:  # nothing trains: one process reads every run (worker processes would train what is unfinished)
        cfg = {**cfg, "executor": "local", "jobs": 1}
    task, arms, seeds = _check_config(cfg)
    dist = setup_distributed(cfg["device"])
    if cfg["batch_size"] % dist.world:
        raise ValueError(f"--batch-size: {cfg['batch_size']} is not divisible by the {dist.world} processes")
    _check_previous_run(out, resume, cfg, task, None)  # the config, before the data load and any compile
    if report_only:
        if not os.path.exists(os.path.join(out, "manifest.json")):
            raise ValueError(f"--report-only: {out} holds no study (no manifest.json)")
        seeds = sorted(set(final_seeds_on_disk(out, arms)))
        if not seeds:
            raise ValueError(f"--report-only: {out} holds no final run of the arms {', '.join(arms)}")
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
    started_here = manifest["started"]
    shown_jobs = jobs  # what the summary says of how the runs were trained
    previous = {}
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            previous = json.load(f)
    if report_only:  # the run's own record of how it was made stays as it was
        for k in ("argv", "started", "compiled_backends", "versions", "jobs", "torch_threads", "world_size"):
            if k in previous:
                manifest[k] = previous[k]
        shown_jobs = previous.get("jobs", jobs)

    def write_manifest() -> None:
        if dist.main:
            atomic_write_text(json.dumps(manifest, indent=2, default=str) + "\n", manifest_path)

    if dist.main:
        os.makedirs(os.path.join(out, "checkpoints", "tune"), exist_ok=True)
        remove_stale_temporaries(out)
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
    progress = Progress(enabled=not quiet and dist.main and not report_only, total_runs=n_runs)
    ctx = RunContext(cfg, out, task, data, dist, progress, on_epoch if jobs == 1 else None, stop_after_epochs,
                     report_only=report_only)

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
        fixed = {k: cfg.get(k) or 0.0 for k in ("lr", "input_dropout", "output_dropout", "weight_decay",
                                                "rnn_weight_dropout", "recurrent_dropout", "zoneout")}
        fixed["layer_norm"] = bool(cfg.get("layer_norm"))
        if cfg["tune"]:
            fp = _tuner.fingerprint(training_config(cfg, task), data_id)
            settings = _tuner.trial_settings(arms, cfg, out, fp, ask=not report_only) if dist.main else None
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
                    if not trials[a] and report_only:
                        continue
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
        specs = [RunSpec.make("final", a, s, chosen[a]) for a in arms for s in seeds if a in chosen]
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
            "path_gaps": gaps, "world_size": dist.world, "jobs": shown_jobs, "chosen": chosen,
            "tuning": manifest.get("tuning"), "min_effect": delta}
    final_results = [r for (ph, _, _), r in results.items() if ph == "final"]
    if dist.main:
        write_tables()
        rows = [r for (ph, _, _), m in store.items() if ph == "final" for r in m]
        _report.plot_curves(rows, os.path.join(out, "loss_curves.png"), arms, task)
        if task.name == "charlm":
            atomic_write_text(_samples(out, arms, seeds, data), os.path.join(out, "samples.txt"))
        info["wall_seconds"] = time.perf_counter() - t_start
        earlier = previous.get("invocations")
        if earlier is None and "wall_seconds_this_invocation" in previous:  # a manifest of an earlier version
            earlier = [{"mode": "run", "wall_seconds": previous["wall_seconds_this_invocation"]}]
        info["invocations"] = [i for i in earlier or [] if i.get("mode") == "run"]
        if not report_only:
            info["invocations"].append({"wall_seconds": info["wall_seconds"]})
        info["claims_png"] = os.path.join(out, "claims.png")
        text, claims = _report.summary_markdown(rows, final_results, info)
        atomic_write_text(text, os.path.join(out, "summary.md"))
        invocations = list(earlier or []) + [{
            "started": started_here, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": info["wall_seconds"], "mode": "report" if report_only else "run"}]
        manifest.update(status="complete", finished=invocations[-1]["finished"], invocations=invocations,
                        wall_seconds_this_invocation=info["wall_seconds"],
                        symmetry_max_path_difference={a: max(v) for a, v in gaps.items()},
                        runs=sorted(final_results, key=lambda r: (r["spec"]["arm"], r["spec"]["seed"])),
                        claims=claims)
        write_manifest()
        if not quiet:
            print(f"done in {info['wall_seconds']:.0f} s; outputs in {out}", file=sys.stderr, flush=True)
            for line in _report.verdict_lines(claims):
                print(line, file=sys.stderr, flush=True)
    dist.barrier()
    return {"runs": final_results, "info": info}


def _plan(cfg: dict, out: str, resume: bool, quiet: bool) -> dict:
    """--dry-run: the runs the study would train, and their time estimated from one timed epoch of each arm
    (this process, ``threads`` threads); nothing is written."""
    from .distributed import Dist
    from .progress import Progress as _P
    from .runner import time_one_epoch

    task, arms, seeds = _check_config(cfg)
    _check_previous_run(out, resume, cfg, task, None)
    data = task.load(cfg)
    if cfg["device"] == "cpu":
        _backends.prepare()
    ctx = RunContext(cfg, out, task, data, Dist(), _P(False, 0))
    setting = {k: cfg.get(k, 0.0) for k in ("lr", "input_dropout", "output_dropout", "weight_decay")}
    jobs = max(1, int(cfg.get("jobs") or 1))
    rows, total = [], 0.0
    for arm in arms:
        seconds = time_one_epoch(ctx, RunSpec.make("final", arm, seeds[0], setting))
        runs = cfg["tune"] + len(seeds)
        per_run = seconds * cfg["epochs"]
        total += per_run * runs
        rows.append({"arm": arm, "tuning_runs": cfg["tune"], "final_runs": len(seeds), "epoch_seconds": seconds,
                     "run_seconds_at_most": per_run})
    lines = [(f"plan: task {task.name}, {len(arms)} arms, {cfg['tune']} tuning trials and {len(seeds)} final seeds "
             f"each ({len(arms) * (cfg['tune'] + len(seeds))} runs), at most {cfg['epochs']} epochs per run, "
             f"{jobs} at a time, into {out}"),
             f"{'arm':<20} {'runs':>5} {'s/epoch':>8} {'≤ s/run':>8}"]
    for r in rows:
        lines.append(f"{r['arm']:<20} {r['tuning_runs'] + r['final_runs']:>5} {r['epoch_seconds']:>8.2f} "
                     f"{r['run_seconds_at_most']:>8.0f}")
    lines.append(f"at most {total / jobs / 60:.0f} min of wall time with {jobs} run(s) at a time if every run "
                 f"reached the cap (early stopping usually ends runs sooner; with {jobs} at a time each epoch can "
                 f"be slower than timed here, alone)")
    if not quiet:
        print("\n".join(lines))
    return {"plan": rows, "total_seconds_at_most": total, "jobs": jobs, "text": "\n".join(lines)}


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
