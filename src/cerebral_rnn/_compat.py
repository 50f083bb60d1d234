"""The few torch APIs that changed between the versions this package accepts, each behind one function.

The package declares ``torch>=2.1`` and is tested with torch 2.13. Newer APIs are used where they exist and
replaced by their older spelling (or a safe answer) where they do not:

* ``torch.compiler.is_exporting`` (newer torch): older torch cannot tell export from compile; there we answer
  False, so ``torch.export`` of a model with a Cerebral layer hits the graph break that ``torch.compile`` uses
  and fails with torch's error, while eager use, ``torch.compile`` and ``torch.jit.trace`` work.
* ``torch.compiler.is_compiling`` (torch >= 2.3) falls back to ``torch._dynamo.is_compiling``.
* ``torch._C._functorch.peek_interpreter_stack`` tells whether a ``torch.func`` transform (grad, vmap, jacrev,
  ...) is running; where it is missing we answer False.
* ``torch.is_autocast_enabled(device_type)`` / ``torch.get_autocast_dtype(device_type)`` (torch >= 2.4) fall back
  to the per-device functions of older torch.
"""

from __future__ import annotations

import torch


def is_exporting() -> bool:
    fn = getattr(torch.compiler, "is_exporting", None)
    return bool(fn()) if fn is not None else False


def is_compiling() -> bool:
    fn = getattr(torch.compiler, "is_compiling", None)
    if fn is None:
        from torch import _dynamo

        fn = _dynamo.is_compiling
    return bool(fn())


def autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled())


def autocast_dtype(device_type: str) -> torch.dtype:
    fn = getattr(torch, "get_autocast_dtype", None)
    if fn is not None:
        return fn(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def under_functorch() -> bool:
    """True inside a ``torch.func`` transform (grad, vmap, jacrev, ...): the compiled kernels and torch's fused
    RNN ops have no rules for them, the reference loop (plain torch ops) has."""
    try:
        from torch._C._functorch import peek_interpreter_stack
    except ImportError:
        return False
    return peek_interpreter_stack() is not None
