"""Argument checks shared by cells and layers. Each error names the argument, what was expected, what was got."""

from __future__ import annotations

import numbers
import warnings

from torch import Tensor


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def check_dropout(dropout, num_layers: int) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout: expected a float in [0, 1], got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= float(dropout) <= 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1], got {dropout}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            f"dropout={dropout} with num_layers=1 has no effect: dropout is applied between layers only",
            UserWarning,
            stacklevel=3,
        )
    return float(dropout)


def check_like(name: str, t: Tensor, ref: Tensor, any_float: bool = False) -> None:
    """``t`` must be a tensor with ``ref``'s dtype (any floating dtype with ``any_float``, e.g. under autocast)
    and device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if any_float:
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor (autocast is on), got dtype {t.dtype}")
    elif t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (the parameters' dtype), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} (the parameters' device), got {t.device}")


def check_cell_input(x: Tensor, input_size: int, ref: Tensor) -> bool:
    """Check a cell's input; return True when batched (2-D)."""
    check_like("input", x, ref)
    if x.dim() not in (1, 2):
        raise ValueError(f"input: expected a 1-D (unbatched) or 2-D (batched) tensor, got {x.dim()}-D "
                         f"with shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"input: expected last dimension input_size={input_size}, got {x.shape[-1]} "
                         f"(shape {tuple(x.shape)})")
    return x.dim() == 2


def check_state(name: str, s: Tensor, expected: tuple[int, ...], ref: Tensor) -> None:
    check_like(name, s, ref)
    if tuple(s.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(s.shape)}")
