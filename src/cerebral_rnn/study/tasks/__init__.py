"""The study's tasks: the base types (:mod:`.base`), one module per task, and the registry.

- ``charlm``: character-level language model, the paper's experiment (:mod:`.charlm`);
- ``classify``: sequence classification, the embedded digits read pixel by pixel, or a user's CSV (:mod:`.classify`);
- ``adding``, ``copy``: synthetic long-memory problems (:mod:`.adding`, :mod:`.copy`).
"""

from __future__ import annotations

from .adding import TASK as _ADDING
from .base import Metric, Splits, Task, TaskData
from .charlm import TASK as _CHARLM
from .classify import TASK as _CLASSIFY
from .copy import TASK as _COPY

TASKS: dict[str, Task] = {t.name: t for t in (_CHARLM, _CLASSIFY, _ADDING, _COPY)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)

__all__ = ["TASKS", "TASK_NAMES", "Metric", "Splits", "Task", "TaskData", "get_task"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"--task: expected one of {list(TASKS)}, got {name!r}")
    return TASKS[name]
