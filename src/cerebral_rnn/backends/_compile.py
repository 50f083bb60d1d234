"""Running a backend under ``torch.compile`` and ``torch.export``.

``torch.export`` must trace every op into one graph, so it gets backends made of traceable ops only (``lstm2h``:
one ``aten.lstm`` per layer; ``reference``: the unrolled loop). ``torch.compile`` does not need one graph: there
a backend runs eagerly behind a graph break (``torch.compiler.disable``), which keeps the fast kernels (and
sidesteps inductor's lowering of ``mkldnn_rnn_layer``, which fails in torch 2.13).
"""

from __future__ import annotations

import torch


def exporting() -> bool:
    """True while ``torch.export`` or jit tracing/scripting records the model."""
    return bool(torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting())


@torch.compiler.disable
def _eager(fn, *args):
    return fn(*args)


def run_eager_under_compile(fn, *args):
    """``fn(*args)``; under ``torch.compile`` (not export) as an eager call behind a graph break."""
    if torch.compiler.is_compiling() and not exporting():
        return _eager(fn, *args)
    return fn(*args)
