"""The training loop of the study: every arm x seed, evaluation, checkpoints and resume, DDP under torchrun.

Data order: the training part is cut into non-overlapping windows of ``seq_len + 1`` characters; each epoch
shuffles them with a generator seeded by ``(seed, epoch)`` alone, so every arm sees the same windows in the same
order, and a resumed run sees what an uninterrupted one would have. Each window starts from a zero state; the
loss is the mean cross-entropy over the window's ``seq_len`` predicted characters. The last incomplete batch
of an epoch is dropped. Under ``torchrun`` every global batch is split into equal contiguous shards, one per
rank (a deterministic DistributedSampler), and DistributedDataParallel averages the gradients, so a run on N
processes computes what one process computes at the same global batch.

Checkpoints (``checkpoints/<arm>-seed<s>.pt``) are written after every epoch through a temporary file and
``os.replace``: model, optimizer, RNG states and metrics so far, only tensors, dicts, lists, numbers and
strings, so they load with ``torch.load(..., weights_only=True)``. ``<arm>-seed<s>-best.pt`` holds the
weights of the epoch with the lowest validation loss.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cerebral_rnn import backends as _backends

from . import corpus as _corpus
from . import models as _models

CHECKPOINT_FORMAT = 1

# Settings that change what is computed: a resumed run must use the same ones as the run it continues.
TRAINING_KEYS = ("corpus", "encoding", "max_chars", "hidden", "embedding", "seq_len", "batch_size", "lr", "clip")


class StopRequested(Exception):
    """Raised by the ``stop_after_epochs`` test hook: stops a run as if it had been killed after an epoch."""


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
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model_config" not in ckpt:
        raise ValueError(f"--checkpoint: {path} is not a cerebral-rnn study checkpoint")
    return ckpt


def checkpoint_paths(out: str, arm: str, seed: int) -> tuple[str, str]:
    base = os.path.join(out, "checkpoints", f"{arm}-seed{seed}")
    return base + ".pt", base + "-best.pt"


# -- one arm x seed ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, wins: torch.Tensor, device: torch.device, chunk: int = 512) -> float:
    """Mean per-character cross-entropy (nats) over all windows, each from a zero state."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, wins.shape[0], chunk):
        batch = wins[start:start + chunk].t().to(device)  # (L+1, b)
        logits, _ = model(batch[:-1])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1:].reshape(-1),
                                       reduction="sum"))
        count += batch[1:].numel()
    model.train(was_training)
    return total / count


def epoch_order(num_windows: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of training windows for this epoch: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_windows, generator=g)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """tqdm bars on a terminal, plain log lines otherwise, nothing with ``quiet`` (or on ranks other than 0)."""

    def __init__(self, enabled: bool, total_runs: int) -> None:
        self.enabled = enabled
        self.bars = enabled and sys.stderr.isatty()
        self.tqdm = None
        if self.bars:
            try:
                from tqdm.auto import tqdm
                self.tqdm = tqdm
            except ImportError:  # the study extra is not installed: fall back to log lines
                self.bars = False
        self.runs = self.tqdm(total=total_runs, desc="arms", position=0, unit="run") if self.bars else None

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

    def batches(self, total: int):
        if self.bars:
            return self.tqdm(total=total, desc="batches", position=2, leave=False, unit="batch")
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
    splits: _corpus.Splits
    train_windows: torch.Tensor  # (W, L+1)
    val_windows: torch.Tensor
    dist: Dist
    progress: _Progress
    on_epoch: callable  # called (rank 0) after each epoch with no arguments: rewrite metrics.csv
    stop_after_epochs: int | None = None
    epochs_done_here: int = 0


def train_one(ctx: RunContext, arm: str, seed: int, resume: bool) -> dict:
    """Train (or continue) one arm with one seed; returns {"metrics": [...], "config": ..., "path_gap": ...}."""
    cfg, dist, device = ctx.cfg, ctx.dist, ctx.dist.device
    last_path, best_path = checkpoint_paths(ctx.out, arm, seed)
    vocab = ctx.splits.vocab
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    config = _models.model_config(arm, len(vocab), cfg["embedding"], cfg["hidden"])
    model = _models.build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    metrics: list[dict] = []
    start, best_val = 0, math.inf
    if resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path)
        if ckpt["model_config"] != config:
            raise ValueError(f"--resume: {last_path} holds a model {ckpt['model_config']}, this run builds {config}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"], device)
        metrics, start, best_val = list(ckpt["metrics"]), int(ckpt["epoch"]), float(ckpt["best_val_loss"])
        if start > cfg["epochs"]:
            raise ValueError(f"--epochs: {arm} seed {seed} already has {start} epochs in {ctx.out}; "
                             f"pass --epochs {start} or more to resume it")
    name = f"{arm} seed {seed}"
    if start >= cfg["epochs"]:
        ctx.progress.log(f"[{name}] finished earlier ({start} epochs), skipped")
        return {"metrics": metrics, "config": config, "path_gap": _models.path_difference(model)}
    if start:
        ctx.progress.log(f"[{name}] resuming after epoch {start}")

    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    B, W = cfg["batch_size"], ctx.train_windows.shape[0]
    shard = B // dist.world
    batches = W // B  # the last incomplete batch is dropped
    epochs_bar = ctx.progress.epochs(name, start, cfg["epochs"])
    for epoch in range(start, cfg["epochs"]):
        t0 = time.perf_counter()
        net.train()
        order = epoch_order(W, seed, epoch)
        total = torch.zeros(2, dtype=torch.float64)  # (sum of per-batch mean losses x chars, chars), this rank
        bar = ctx.progress.batches(batches)
        for b in range(batches):
            idx = order[b * B + dist.rank * shard: b * B + (dist.rank + 1) * shard]
            batch = ctx.train_windows[idx].t().to(device)  # (L+1, B/world)
            logits, _ = net(batch[:-1])  # (L, B/world, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks: the mean over the global batch
            if cfg["clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            optimizer.step()
            total[0] += float(loss.detach()) * batch[1:].numel()
            total[1] += batch[1:].numel()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if dist.active:
            torch.distributed.all_reduce(total)
        train_loss = float(total[0] / total[1])
        val_loss = evaluate(model, ctx.val_windows, device)
        seconds = time.perf_counter() - t0
        row = {"model": arm, "seed": seed, "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
               "val_bpc": val_loss / math.log(2), "seconds": seconds}
        metrics.append(row)
        state_cpu = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if dist.main:
            if val_loss < best_val:
                atomic_save({"format": CHECKPOINT_FORMAT, "kind": "best", "arm": arm, "seed": seed,
                             "epoch": epoch + 1, "val_loss": val_loss, "model_config": config,
                             "vocab": vocab.chars, "model": state_cpu}, best_path)
            best_val = min(best_val, val_loss)
            atomic_save({"format": CHECKPOINT_FORMAT, "kind": "last", "arm": arm, "seed": seed, "epoch": epoch + 1,
                         "model_config": config, "vocab": vocab.chars, "study_config": training_config(cfg),
                         "model": state_cpu, "optimizer": optimizer.state_dict(), "rng": rng_state(device),
                         "metrics": metrics, "best_val_loss": best_val}, last_path)
            ctx.on_epoch(arm, seed, metrics)
        else:
            best_val = min(best_val, val_loss)
        dist.barrier()
        if epochs_bar is not None:
            epochs_bar.update(1)
            epochs_bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        else:
            ctx.progress.log(f"[{name}] epoch {epoch + 1}/{cfg['epochs']} train {train_loss:.4f} "
                             f"val {val_loss:.4f} ({row['val_bpc']:.3f} bpc) {seconds:.1f}s")
        ctx.epochs_done_here += 1
        if ctx.stop_after_epochs is not None and ctx.epochs_done_here >= ctx.stop_after_epochs:
            raise StopRequested(f"stopped after {ctx.epochs_done_here} epochs (stop_after_epochs)")
    if epochs_bar is not None:
        epochs_bar.close()
        last = metrics[-1]
        ctx.progress.log(f"[{name}] {last['epoch']} epochs: train {last['train_loss']:.4f} "
                         f"val {last['val_loss']:.4f} ({last['val_bpc']:.3f} bpc)")
    return {"metrics": metrics, "config": config, "path_gap": _models.path_difference(model)}


def training_config(cfg: dict) -> dict:
    return {k: cfg[k] for k in TRAINING_KEYS}


# -- the whole study ---------------------------------------------------------------------------------------------

SAMPLE_LENGTH, SAMPLE_TEMPERATURE, SAMPLE_PRIME_CHARS = 400, 0.8, 40


def _package_versions() -> dict:
    import platform
    from importlib import metadata

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                "platform": platform.platform()}
    for dist_name in ("cerebral-rnn", "tqdm", "matplotlib"):
        try:
            versions[dist_name] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            versions[dist_name] = None
    from cerebral_rnn import __version__

    versions["cerebral_rnn (imported)"] = __version__
    return versions


def _remove_stale_temporaries(out: str) -> None:
    """Temporary files left by a process killed inside atomic_save / atomic_write_text."""
    for folder in (out, os.path.join(out, "checkpoints")):
        for name in os.listdir(folder):
            stem, _, suffix = name.rpartition(".tmp")
            if stem and suffix.isdigit():
                os.remove(os.path.join(folder, name))


def _check_previous_run(out: str, resume: bool, cfg: dict, corpus_sha: str) -> None:
    import json

    manifest = os.path.join(out, "manifest.json")
    ckpt_dir = os.path.join(out, "checkpoints")
    has_ckpts = os.path.isdir(ckpt_dir) and any(n.endswith(".pt") for n in os.listdir(ckpt_dir))
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
    prev, now = dict(old["config"]), training_config(cfg)
    diffs = [f"{k}: {prev.get(k)!r} in the manifest, {now[k]!r} now" for k in TRAINING_KEYS if prev.get(k) != now[k]]
    if old["corpus"]["sha256"] != corpus_sha:
        diffs.append(f"corpus sha256: {old['corpus']['sha256'][:16]}… in the manifest, {corpus_sha[:16]}… now")
    if diffs:
        raise ValueError(f"--resume: the config differs from the run in {out} ({'; '.join(diffs)}); "
                         f"resume with the same settings or choose another --out")


def reproduce(cfg: dict, out: str, resume: bool = False, quiet: bool = False,
              stop_after_epochs: int | None = None) -> dict:
    """Run the study described by ``cfg`` into ``out``; returns {"rows": metrics rows, "info": summary info}.

    ``cfg`` keys: corpus (path or None), encoding, max_chars (None for all), hidden, embedding, seq_len,
    batch_size, lr, clip, epochs, seeds (how many: seeds 0..n-1), models (arm names), device, threads (None:
    torch's default).
    """
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    try:
        return _reproduce(cfg, out, resume, quiet, stop_after_epochs)
    finally:
        torch.set_num_threads(threads)


def _reproduce(cfg: dict, out: str, resume: bool, quiet: bool, stop_after_epochs: int | None) -> dict:
    import json

    from . import report as _report

    t_start = time.perf_counter()
    _models.check_arms(list(cfg["models"]))
    try:
        import matplotlib  # noqa: F401 - needed at the end for loss_curves.png; fail before training, not after
    except ImportError:
        raise ValueError("reproduce: matplotlib is missing; install the study extra: "
                         "pip install 'cerebral-rnn[study]'") from None
    dist = setup_distributed(cfg["device"])
    if cfg["batch_size"] % dist.world:
        raise ValueError(f"--batch-size: {cfg['batch_size']} is not divisible by the {dist.world} processes")
    corpus = _corpus.load_corpus(cfg["corpus"], cfg["encoding"], cfg["max_chars"])
    splits = _corpus.split(corpus, cfg["seq_len"], cfg["batch_size"])
    # Compiled backends are built on first use (once per machine): do it here, outside every epoch's timing.
    compiled_backends = _backends.prepare() if cfg["device"] == "cpu" else {}
    train_w = _corpus.windows(splits.train, cfg["seq_len"])
    val_w = _corpus.windows(splits.val, cfg["seq_len"])
    _check_previous_run(out, resume, cfg, corpus.sha256)
    dist.barrier()  # every rank has looked at --out before rank 0 writes into it
    seeds = list(range(cfg["seeds"]))
    arms = list(cfg["models"])
    V = len(splits.vocab)
    configs = {a: _models.model_config(a, V, cfg["embedding"], cfg["hidden"]) for a in arms}
    params = {a: _models.count_parameters(a, V, cfg["embedding"], c["width"]) for a, c in configs.items()}
    train_chars = (train_w.shape[0] // cfg["batch_size"]) * cfg["batch_size"] * cfg["seq_len"]
    manifest = {
        "command": "cerebral-rnn reproduce", "argv": sys.argv, "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {**cfg, "models": arms}, "seeds": seeds, "world_size": dist.world,
        "torch_threads": torch.get_num_threads(), "compiled_backends": compiled_backends,
        "versions": _package_versions(), "corpus": corpus.describe(),
        "data": {"vocab_size": V, "train_characters": int(splits.train.numel()),
                 "val_characters": int(splits.val.numel()), "train_windows": int(train_w.shape[0]),
                 "val_windows": int(val_w.shape[0]), "train_characters_per_epoch": int(train_chars),
                 "unknown_in_val": int((splits.val == 0).sum())},
        "arms": {a: {"description": _models.ARMS[a], "width": configs[a]["width"], "parameters": params[a]}
                 for a in arms},
    }
    manifest_path = os.path.join(out, "manifest.json")
    if dist.main:
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        _remove_stale_temporaries(out)
        atomic_write_text(json.dumps(manifest, indent=2) + "\n", manifest_path)
    dist.barrier()

    store: dict[tuple[str, int], list[dict]] = {}
    metrics_path = os.path.join(out, "metrics.csv")

    def on_epoch(arm: str, seed: int, metrics: list[dict]) -> None:
        store[(arm, seed)] = list(metrics)
        atomic_write_text(_report.metrics_csv([r for m in store.values() for r in m]), metrics_path)

    progress = _Progress(enabled=not quiet and dist.main, total_runs=len(arms) * len(seeds))
    ctx = RunContext(cfg, out, splits, train_w, val_w, dist, progress, on_epoch, stop_after_epochs)
    # Metrics of runs finished or started earlier, so metrics.csv is whole from the first epoch on.
    if resume:
        for arm in arms:
            for seed in seeds:
                path = checkpoint_paths(out, arm, seed)[0]
                if os.path.exists(path):
                    store[(arm, seed)] = list(load_checkpoint(path)["metrics"])
    gaps: dict[str, list[float]] = {}
    try:
        for arm in arms:
            for seed in seeds:
                result = train_one(ctx, arm, seed, resume)
                store[(arm, seed)] = result["metrics"]
                if result["path_gap"] is not None:
                    gaps.setdefault(arm, []).append(result["path_gap"])
                progress.run_done()
    finally:
        progress.close()
    rows = [r for m in store.values() for r in m]
    info = {"arms": arms, "seeds": seeds, "params": params, "widths": {a: c["width"] for a, c in configs.items()},
            "train_chars_per_epoch": train_chars, "config": cfg, "corpus": corpus.describe(), "vocab_size": V,
            "path_gaps": gaps, "wall_seconds": time.perf_counter() - t_start, "world_size": dist.world}
    if dist.main:
        atomic_write_text(_report.metrics_csv(rows), metrics_path)
        _report.plot_curves(rows, os.path.join(out, "loss_curves.png"), arms)
        atomic_write_text(_samples(out, arms, seeds, splits), os.path.join(out, "samples.txt"))
        info["wall_seconds"] = time.perf_counter() - t_start
        atomic_write_text(_report.summary_markdown(rows, info), os.path.join(out, "summary.md"))
        manifest.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        wall_seconds_this_invocation=info["wall_seconds"],
                        symmetry_max_path_difference={a: max(v) for a, v in gaps.items()})
        atomic_write_text(json.dumps(manifest, indent=2) + "\n", manifest_path)
        progress.log(f"done in {info['wall_seconds']:.0f} s; outputs in {out}")
    dist.barrier()
    return {"rows": rows, "info": info}


def _samples(out: str, arms: list[str], seeds: list[int], splits: _corpus.Splits) -> str:
    """Text from each arm's best checkpoint (lowest validation loss over its seeds)."""
    from . import report as _report

    prime = splits.val_text[:SAMPLE_PRIME_CHARS]
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
