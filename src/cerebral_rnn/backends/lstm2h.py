"""``"lstm2h"`` backend: a K-path LSTM layer as one standard LSTM of hidden size K*H, through torch's fused op.

A layer of K LSTM paths of hidden size H is exactly a standard LSTM of hidden size K*H with gate rows
interleaved per gate, recurrent weight ``[W_hh, ..., W_hh]``, initial state ``([h_0, 0, ...], [c_1 | ... | c_K])``
and output summed over the K blocks (with ``proj_size``: ``W_hr`` tiled K times instead, see
:mod:`cerebral_rnn.layout`). This backend builds those weights inside the call, as differentiable functions of
the stored parameters, and runs one ``torch._VF.lstm`` call per layer with every direction: oneDNN on the CPU,
cuDNN on CUDA, packed input natively. Without a projection it costs K times the recurrent FLOPs of a native
K-path recurrence (its recurrent weight is K*H wide), but its pointwise part is fused, so it wins where time
goes into per-step overheads and on the GPU.

It interleaves the paths inside one kernel, so it cannot promise that identical paths (``init="identical"``)
stay bitwise identical: it refuses such layers (``"auto"`` then picks a backend that computes every path
alike). It also refuses a dtype that torch's LSTM kernel cannot run on this machine (found by a one-time probe:
e.g. oneDNN has no float16 LSTM primitive on some CPUs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kinds import KINDS
from ..layout import fold_paths, vendor_initial_state, vendor_lstm_weights
from ._compile import exporting, run_eager_under_compile
from ._rules import identical_paths_reason

_PROBED: dict[tuple[str, torch.dtype], str | None] = {}


def _probe(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run torch's LSTM op once on a tiny input of this device type and dtype; the error, or None. Cached."""
    key = (device.type, dtype)
    if key not in _PROBED:
        try:
            with torch.autocast(device.type, enabled=False), torch.inference_mode(False), torch.enable_grad():
                x = torch.zeros(2, 1, 2, device=device, dtype=dtype)
                hx = (torch.zeros(1, 1, 2, device=device, dtype=dtype),) * 2
                flat = [torch.zeros(8, 2, device=device, dtype=dtype, requires_grad=True),
                        torch.zeros(8, 2, device=device, dtype=dtype), torch.zeros(8, device=device, dtype=dtype),
                        torch.zeros(8, device=device, dtype=dtype)]
                y, _, _ = torch._VF.lstm(x, hx, flat, True, 1, 0.0, True, False, False)
                y.sum().backward()
            _PROBED[key] = None
        except RuntimeError as exc:  # e.g. "could not create a primitive descriptor for the LSTM forward ..."
            _PROBED[key] = f"torch's LSTM kernel cannot run {dtype} on this {device.type}: {str(exc)[:120]}"
    return _PROBED[key]


class LSTM2HBackend:
    """K-path LSTM as LSTM(K*H) through ``torch._VF.lstm``; dense and packed input, CPU and CUDA."""

    name = "lstm2h"
    # the multi-path kinds whose paths are torch's LSTM (the one-path LSTM layer runs torch's op itself)
    kinds = tuple(name for name, kind in KINDS.items() if kind.lstm_paths and kind.paths > 1)

    def supports(self, spec, x: Tensor, batch_sizes, weights, states) -> str | None:
        if not spec.kind.lstm_paths:
            return f"kind {spec.kind.name!r} has no standard-LSTM identity"
        if not x.is_floating_point():
            return f"dtype {x.dtype} is not a floating-point type"
        if x.device.type not in ("cpu", "cuda"):
            return f"device type {x.device.type!r} is not 'cpu' or 'cuda'"
        if not exporting():
            reason = _probe(x.device, x.dtype)
            if reason is not None:
                return reason
        return identical_paths_reason(spec, weights)

    def forward_layer(self, spec, x, states, weights, batch_sizes):
        return run_eager_under_compile(self._forward_layer, spec, x, states, weights, batch_sizes)

    @staticmethod
    def _forward_layer(spec, x, states, weights, batch_sizes):
        h0, c0 = states
        K, H, D = spec.paths, spec.hidden_size, len(weights)
        flat: list[Tensor] = []
        for w in weights:
            flat += vendor_lstm_weights(w, spec)  # input is this layer's (already folded) x
        hx = vendor_initial_state(h0, c0, K, projected=bool(spec.proj_size))
        # ``train`` only decides whether the op keeps what its backward needs (cuDNN's backward refuses a
        # forward run with train=False); dropout inside the op is 0, the layer draws dropout itself. While jit
        # tracing it is a constant, so that the traced graph does not depend on the grad mode.
        train = torch.is_grad_enabled() if not torch.jit.is_tracing() else False
        has_biases = weights[0].b_ih is not None
        if batch_sizes is None:
            y, h_n, c_n = torch._VF.lstm(x, hx, flat, has_biases, 1, 0.0, train, D == 2, False)
        else:
            y, h_n, c_n = torch._VF.lstm(x, batch_sizes, hx, flat, has_biases, 1, 0.0, train, D == 2)
        if not spec.proj_size:
            y, h_n = fold_paths(y, H, K), fold_paths(h_n, H, K)  # h = sum of the paths' o * tanh(c)
        return y, (h_n, c_n)


BACKEND = LSTM2HBackend()
