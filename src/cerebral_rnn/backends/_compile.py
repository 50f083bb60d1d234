"""Running a backend under ``torch.compile`` and ``torch.export``.

``torch.export`` must trace every op into one graph, so it gets backends made of traceable ops only (``lstm2h``:
one ``aten.lstm`` per layer; ``reference``: the unrolled loop). ``torch.compile`` does not need one graph: there
a backend runs eagerly behind a graph break (``torch.compiler.disable``), which keeps the fast kernels (and
sidesteps inductor's lowering of ``mkldnn_rnn_layer``, which fails in torch 2.13).
"""

from __future__ import annotations

import torch

from .._compat import is_compiling, is_exporting


def exporting() -> bool:
    """True while ``torch.export`` or jit tracing/scripting records the model."""
    return bool(is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting())


def compiling_eagerly() -> bool:
    """True under ``torch.compile`` but not under ``torch.export``: then backends run behind a graph break."""
    return is_compiling() and not exporting()


@torch.compiler.disable
def eager(fn, *args):
    """``fn(*args)`` run eagerly: a graph break under ``torch.compile``."""
    return fn(*args)


def run_eager_under_compile(fn, *args):
    """``fn(*args)``; under ``torch.compile`` (not export) as an eager call behind a graph break."""
    if compiling_eagerly():
        return eager(fn, *args)
    return fn(*args)
