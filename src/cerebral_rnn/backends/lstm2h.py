"""``"lstm2h"`` backend: identity A (DESIGN.md) through torch's fused LSTM op.

A Cerebral LSTM of hidden size H is exactly a standard LSTM of hidden size 2H with gate rows interleaved per
gate, recurrent weight ``[W_hh, W_hh]``, initial state ``([h_0, 0], [UC_0 | LC_0])`` and output
``y[..., :H] + y[..., H:]`` (see :mod:`cerebral_rnn.convert`). This backend builds those weights inside the
call, as differentiable functions of the stored parameters (:func:`~cerebral_rnn.convert.lstm2h_weights`), and
runs one ``torch._VF.lstm`` call per layer with both directions: oneDNN on the CPU, cuDNN on CUDA, packed input
natively, autocast on CUDA. It costs twice the recurrent FLOPs of a native 8H x H recurrence, but its pointwise
part is fused, so it wins where time goes into per-step overheads (small H or small batch) and on the GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._compile import run_eager_under_compile
from ._rules import unaligned_reason


def _lstm2h_weights(*args, **kwargs):
    # Imported lazily: convert imports layers, which imports the backends package.
    from ..convert import lstm2h_weights

    return lstm2h_weights(*args, **kwargs)


class LSTM2HBackend:
    """Cerebral LSTM as LSTM(2H) through ``torch._VF.lstm`` (identity A); dense and packed input."""

    name = "lstm2h"

    def supports(self, x: Tensor, batch_sizes, weights, training) -> str | None:
        if not x.is_floating_point():
            return f"dtype {x.dtype} is not a floating-point type"
        if x.device.type not in ("cpu", "cuda"):
            return f"device type {x.device.type!r} is not 'cpu' or 'cuda'"
        if batch_sizes is not None and x.device.type == "cpu":  # torch's packed CPU LSTM kernel needs aligned paths
            reason = unaligned_reason(weights[0][1].shape[1])
            if reason is not None:
                return f"packed input on the CPU: {reason}"
        return None

    def forward_layer(self, x, h0, c0, weights, batch_sizes):
        return run_eager_under_compile(self._forward_layer, x, h0, c0, weights, batch_sizes)

    def _forward_layer(self, x, h0, c0, weights, batch_sizes):
        H = h0.shape[-1]
        D = len(weights)
        has_biases = weights[0][2] is not None
        flat: list[Tensor] = []
        for w_ih, w_hh, b_ih, b_hh in weights:
            flat += _lstm2h_weights(w_ih, w_hh, b_ih, b_hh, H)  # input is this layer's (already folded) x
        hx = (torch.cat([h0, torch.zeros_like(h0)], dim=-1), c0)  # h_0' = [h_0, 0]   (D, B, 2H)
        # ``train`` only decides whether the op keeps what its backward needs (cuDNN's backward refuses a
        # forward run with train=False); dropout inside the op is 0, the layer draws dropout itself.
        train = torch.is_grad_enabled()
        if batch_sizes is None:
            y, h_n, c_n = torch._VF.lstm(x, hx, flat, has_biases, 1, 0.0, train, D == 2, False)
        else:
            y, h_n, c_n = torch._VF.lstm(x, batch_sizes, hx, flat, has_biases, 1, 0.0, train, D == 2)
        # Fold each direction's 2H outputs: h = Uo*tanh(UC) + Lo*tanh(LC).
        y = y.unflatten(-1, (D, 2, H)).sum(-2).flatten(-2)  # (T, B, D*H) or (N, D*H)
        h_n = h_n.unflatten(-1, (2, H)).sum(-2)  # (D, B, H)
        return y, h_n, c_n


BACKEND = LSTM2HBackend()
