"""Where the runs train: here, in a local process pool, or as Ray tasks on a cluster.

Runs are independent (each seeded, each writing only its own checkpoints under ``--out``), so they can train in
any order and anywhere; each computes exactly what it computes alone.

- ``local`` (default): one after another in this process (``jobs`` = 1), or up to ``jobs`` at a time in spawned
  worker processes (``threads`` torch threads each). A worker whose parent has died stops before its next epoch.
- ``ray``: every run is a Ray task (``num_cpus`` = ``threads``) on the cluster at ``--address`` (or
  ``RAY_ADDRESS``; neither: a local cluster of this machine's cores, or ``jobs`` of them). Every node must have
  this package installed and see ``--out`` at the same path (a shared file system), so that ``--resume``
  continues whatever was cut off.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import warnings

import torch

from cerebral_rnn import backends as _backends

from .distributed import Dist
from .progress import Progress
from .runner import _LSTMP_WARNING, RunContext, RunSpec, train_one
from .tasks import get_task

EXECUTORS = ("local", "ray")

_WORKER: dict = {}


def _context(cfg: dict, out: str, quiet: bool, parent_pid: int | None) -> RunContext:
    """A worker's run context: its threads, the task's data (loaded once per worker), the compiled backends."""
    torch.set_num_threads(cfg.get("threads") or 1)
    warnings.filterwarnings("ignore", message=_LSTMP_WARNING)
    task = get_task(cfg["task"])
    data = task.load(cfg)
    if cfg["device"] == "cpu":
        _backends.prepare()
    return RunContext(cfg, out, task, data, Dist(), Progress(not quiet, 0, bars=False), parent_pid=parent_pid)


def _worker_init(cfg: dict, out: str, quiet: bool, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no worker tracebacks
    _WORKER["ctx"] = _context(cfg, out, quiet, parent_pid)


def _worker_run(spec: RunSpec, resume: bool) -> dict:
    return train_one(_WORKER["ctx"], spec, resume)


def _ray_run(cfg: dict, out: str, quiet: bool, spec: RunSpec, resume: bool) -> dict:
    """One run as a Ray task; the context is kept per worker process and config."""
    key = json.dumps([cfg, out, quiet], sort_keys=True, default=str)
    if _WORKER.get("key") != key:
        _WORKER["ctx"], _WORKER["key"] = _context(cfg, out, quiet, None), key
    return train_one(_WORKER["ctx"], spec, resume)


def in_rounds(specs: list[RunSpec], cost: dict | None) -> list[RunSpec]:
    """Round by round (one seed, or one trial, of every arm), the costliest arm first in each round."""
    if not cost:
        return list(specs)
    rounds = {k: i for i, k in enumerate(dict.fromkeys(s.trial if s.phase == "tune" else s.seed for s in specs))}
    return sorted(specs, key=lambda s: (rounds[s.trial if s.phase == "tune" else s.seed], -cost.get(s.arm, 0)))


def run_all(ctx: RunContext, specs: list[RunSpec], resume: bool, jobs: int, quiet: bool, on_done,
            cost: dict | None = None) -> None:
    """Train every run of ``specs`` with the config's executor (``cfg["executor"]``: "local" or "ray").

    Locally: one after another in this process (``jobs`` = 1, under torchrun, or with the test hook), else
    ``jobs`` at a time in spawned worker processes. The runs go seed by seed (trial by trial), the costliest arm
    first within each (``cost``: arm -> a size, e.g. its parameter count): a study cut off early holds complete
    pairs of the seeds it reached. ``on_done(result)`` is called here, in the parent, as each run ends. The
    order changes no result: every run is independent and seeded."""
    executor = ctx.cfg.get("executor") or "local"
    if executor not in EXECUTORS:
        raise ValueError(f"--executor: expected one of {EXECUTORS}, got {executor!r}")
    specs = in_rounds(specs, cost)
    if executor == "ray" and not ctx.dist.active and specs:
        return _run_ray(ctx, specs, resume, jobs, quiet, on_done)
    if jobs <= 1 or ctx.dist.active or ctx.stop_after_epochs is not None or len(specs) <= 1:
        for spec in specs:
            on_done(train_one(ctx, spec, resume))
        return None
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    mp = multiprocessing.get_context("spawn")
    # The pool's helper processes (multiprocessing's resource tracker, with the pool's first lock) and its
    # workers (by the submits) start with Ctrl-C ignored here, so that they inherit it ignored from their first
    # instruction: a Ctrl-C while a worker is still starting (importing torch, before its initializer) would
    # otherwise print that worker's traceback. A Ctrl-C within these lines is dropped.
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(specs)), mp_context=mp, initializer=_worker_init,
                                   initargs=(ctx.cfg, ctx.out, quiet or ctx.progress.bars, os.getpid()))
        pending = {pool.submit(_worker_run, spec, resume) for spec in specs}
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, handler)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(f.result())
    except BaseException:
        # Ctrl-C or a failed run: stop the workers now (every finished epoch is checkpointed)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return None


def ray_init(address: str | None, jobs: int) -> None:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``); with neither, start a local one with
    ``jobs`` CPUs."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray: Ray is missing; install it: pip install 'cerebral-rnn[ray]'") from None
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"address": address} if address else {"num_cpus": jobs, "include_dashboard": False}
    ray.init(log_to_driver=False, configure_logging=False, **kwargs)


def _run_ray(ctx: RunContext, specs: list[RunSpec], resume: bool, jobs: int, quiet: bool, on_done) -> None:
    import ray

    ray_init(ctx.cfg.get("address"), jobs)
    task = ray.remote(num_cpus=ctx.cfg.get("threads") or 1, max_retries=0)(_ray_run)
    pending = [task.remote(ctx.cfg, ctx.out, quiet or ctx.progress.bars, spec, resume) for spec in specs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                on_done(ray.get(ref))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
