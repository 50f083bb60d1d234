"""What the CPU kernels (``fused``, ``native``) compute exactly: the checks their ``supports`` share."""

from __future__ import annotations

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float64)

# Identical paths (init="identical") must get bitwise identical gradients (DESIGN.md, symmetry). Vectorised
# kernels round a value differently depending on where it sits relative to the SIMD width (a scalar tail, a
# column reduction), so the two paths' rows must sit at offsets that are multiples of the widest vector,
# 16 float32 (AVX-512). Measured: at hidden sizes 5, 13, 24, 40, "fused" (dense) or torch's packed LSTM kernel
# (under "lstm2h") let identical paths drift apart by 1 ulp, then O(1) within 20 Adam steps; at multiples of 16
# (16 to 128) they stayed bitwise identical. Backends that rely on it refuse other sizes.
PATH_ALIGN = 16


def unaligned_reason(hidden_size: int) -> str | None:
    if hidden_size % PATH_ALIGN:
        return (f"hidden_size {hidden_size} is not a multiple of {PATH_ALIGN}: vectorised kernels would round the "
                "two paths differently and break the bitwise symmetry of init='identical' (DESIGN.md)")
    return None


def dense_cpu_reason(x: Tensor, batch_sizes: Tensor | None, weights) -> str | None:
    """Why a dense float32/float64 CPU kernel cannot run this call exactly, or None if it can."""
    if batch_sizes is not None:
        return "packed input is not supported"
    if x.device.type != "cpu":
        return f"device {x.device} is not the CPU"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} is not float32 or float64"
    if torch.is_autocast_enabled("cpu"):
        return "CPU autocast is enabled"
    return unaligned_reason(weights[0][1].shape[1])
