"""Checkpoints and files that survive a kill at any moment.

A run's checkpoints (``checkpoints/<arm>-seed<s>.pt``; tuning: ``checkpoints/tune/<arm>-trial<t>.pt``) are
written after every epoch through a temporary file, fsync and ``os.replace``: model, optimizer, RNG states,
metrics, early-stopping state and, once the run has ended, its result; only tensors, dicts, lists, numbers and
strings, so they load with ``torch.load(..., weights_only=True)``. ``<arm>-seed<s>-best.pt`` holds the weights
of a final run's best validation epoch.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

CHECKPOINT_FORMAT = 3


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


def remove_stale_temporaries(out: str) -> None:
    """Temporary files left by a process killed inside atomic_save / atomic_write_text."""
    for folder in (out, os.path.join(out, "checkpoints"), os.path.join(out, "checkpoints", "tune")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            stem, _, suffix = name.rpartition(".tmp")
            if stem and suffix.isdigit():
                os.remove(os.path.join(folder, name))
