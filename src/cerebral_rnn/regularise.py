r"""Regularisers inside the recurrent layers: weight dropout, recurrent dropout, zoneout, layer norm.

Every layer class takes them as keywords (each off by default, which leaves the layer's numbers, its
``state_dict`` and its backends exactly as without them). With :math:`K` paths of a kind, for each layer and
direction:

- ``weight_dropout=p`` (DropConnect, Wan et al. 2013; AWD-LSTM): in training, each forward call draws one
  Bernoulli mask :math:`M` over ``weight_hh`` and uses :math:`W_{hh} \odot M / (1 - p)` at every step of the call.
  At eval the weight is untouched. The masked weight is an ordinary weight to the backends, so every backend
  runs it.
- ``recurrent_dropout=p`` (variational dropout of the state, Gal & Ghahramani 2016): in training, each forward
  call draws one mask :math:`m` per sequence (batch row) and unit of :math:`h`, scaled by :math:`1/(1-p)`, and
  every step's recurrent product reads :math:`W_{hh} (m \odot h_{t-1})`; the state that is carried and returned
  is unmasked.
- ``zoneout=p`` or ``(p_h, p_c)`` for the LSTM kinds (Krueger et al. 2017): in training, every unit of
  :math:`h` (and of each path's :math:`c`) keeps its previous value with probability :math:`p`, a fresh mask at
  every step: :math:`h_t = d_t \odot h_{t-1} + (1 - d_t) \odot \tilde h_t`. At eval the expectation:
  :math:`h_t = p\,h_{t-1} + (1-p)\,\tilde h_t`, and likewise for :math:`c`. :math:`\tilde h` is the un-zoned update;
  for a Cerebral layer zoneout acts on the combined :math:`h` and on each path's :math:`c`.
- ``layer_norm=True`` (Ba et al. 2016, in haste's LayerNormLSTM form): for each path k,
  :math:`a_k = \mathrm{LN}(W_{ih,k} x) + \mathrm{LN}(W_{hh,k} h_{t-1}) + b_k`, each LN over the path's whole gate
  block (4H rows for the LSTM kinds, 3H for GRU) with :math:`\epsilon = 10^{-5}` and its own gain (init 1) and
  shift (init 0); LSTM kinds output :math:`h_k = o_k \tanh(\mathrm{LN}(c_k))` (one more gain and shift per path;
  the carried :math:`c_k` is not normalised); GRU's :math:`n` reads :math:`r \odot (\mathrm{LN}(W_{hn} h) + b_{hn})`.
  Parameters ``ln_ih_weight_l{k}``, ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}`` (K·G·H each)
  and, for the LSTM kinds, ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}`` (K·H), with ``_reverse`` for the second
  direction.

**Masks come from torch's generator and are drawn by the layer** (:meth:`draw_masks`, in a documented order),
never by a backend, so ``torch.manual_seed(s)`` gives the same masks, and the same numbers to rounding, on every
backend, and a test can draw the masks a call will use. Drawn only in training, only for the regularisers that
are on; per layer, per direction: the weight mask, the recurrent-dropout mask, the zoneout masks of h, then of c.

**Identical paths** (``init="identical"``). Recurrent dropout and zoneout of ``h`` act on the shared ``h``: the
paths stay bitwise identical. Weight dropout and zoneout of ``c`` draw a mask per path, which separates them,
unless ``paths_share_masks=True`` (one mask used by every path).

**Backends.** Weight dropout runs on every backend. Recurrent dropout, zoneout and layer norm run on ``native``
too (dense CPU input, float32/float64, training and eval: forward and BPTT in C++, inside the time loop: the
masked :math:`h` of the next step is written by the step that stores :math:`h`, the zoneout masks are read where
the step stores :math:`h` and :math:`c`; at eval recurrent dropout changes nothing and the layer runs
unregularised). Layer norm has a loop of its own there: per step every path's recurrent product (the register-blocked
kernel), then per batch row the normalisations and the step; the input side is normalised after its GEMM (every
step in training, a chunk of steps at a time at eval); the BPTT mirrors it and sums the gains' and shifts'
gradients as it goes.
Where ``native`` cannot run (packed input, CUDA, other dtypes), the ``reference`` backend runs them (any kind,
K, dtype, device, packed input, directions, layers). ``backend="auto"`` picks the first of these that computes
the call; a named backend that cannot refuses with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

LN_EPS = 1e-5


def _probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")
    return float(p)


@dataclass(frozen=True)
class Regularisers:
    """A layer's regularisers (all off by default)."""

    weight_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    layer_norm: bool = False
    paths_share_masks: bool = False

    @property
    def in_step(self) -> bool:
        """True when the time loop itself changes (recurrent dropout, zoneout, layer norm)."""
        return bool(self.recurrent_dropout or self.zoneout_h or self.zoneout_c or self.layer_norm)

    @property
    def any(self) -> bool:
        return bool(self.weight_dropout) or self.in_step


def check_regularisers(kind, weight_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0, layer_norm=False,
                       paths_share_masks=False, layer_norm_supported: bool = True) -> Regularisers:
    """Validate the regularisers' keywords for a layer of ``kind``; ValueError / TypeError naming the argument."""
    wd = _probability("weight_dropout", weight_dropout)
    rd = _probability("recurrent_dropout", recurrent_dropout)
    if isinstance(zoneout, (tuple, list)):
        if not kind.has_cell:
            raise ValueError(f"zoneout: a pair (p_h, p_c) needs a kind with a cell state c; {kind.name!r} has none "
                             f"(pass one probability for h), got {zoneout!r}")
        if len(zoneout) != 2:
            raise ValueError(f"zoneout: expected p or a pair (p_h, p_c), got {zoneout!r}")
        zh, zc = _probability("zoneout", zoneout[0]), _probability("zoneout", zoneout[1])
    else:
        zh = _probability("zoneout", zoneout)
        zc = zh if kind.has_cell else 0.0
    if not isinstance(layer_norm, bool):
        raise TypeError(f"layer_norm: expected a bool, got {type(layer_norm).__name__}")
    if layer_norm and not layer_norm_supported:
        raise ValueError(f"layer_norm: not available for the {kind.name!r} kind")
    if not isinstance(paths_share_masks, bool):
        raise TypeError(f"paths_share_masks: expected a bool, got {type(paths_share_masks).__name__}")
    return Regularisers(wd, rd, zh, zc, layer_norm, paths_share_masks)


class StepRegs(NamedTuple):
    """What the time loop of one direction needs (see the module docstring); None: off.

    ``h_mask`` (B, out): recurrent-dropout mask, already scaled; ``zone_h`` (T, B, out) and ``zone_c``
    (T, B, K·H): boolean masks, True where a unit keeps its previous value (training); ``p_h``, ``p_c``: the
    zoneout probabilities (used as the expectation at eval, where the masks are None); ``ln``: the layer-norm
    parameters ``(ih_w, ih_b, hh_w, hh_b, c_w, c_b)`` (the c pair None for kinds without a cell).
    """

    h_mask: Tensor | None = None
    zone_h: Tensor | None = None
    zone_c: Tensor | None = None
    p_h: float = 0.0
    p_c: float = 0.0
    ln: tuple | None = None
    training: bool = False


class DirectionMasks(NamedTuple):
    """The masks one direction of one layer draws in a training call (None where a regulariser is off)."""

    weight: Tensor | None  # (K G H, out), scaled by 1 / (1 - p)
    h: Tensor | None  # (B, out), scaled by 1 / (1 - p)
    zone_h: Tensor | None  # (T, B, out) bool: keep the previous value
    zone_c: Tensor | None  # (T, B, K H) bool


def _below(shape, p: float, device) -> Tensor:
    """Bool ``shape``: True with probability p (to 2^-32), independently, from torch's generator: each 63-bit
    draw of ``random_()`` gives two 31-bit uniforms k (its two 32-bit halves without their top bits), True where
    k < round(p 2^31). Half the generator's calls of ``torch.rand(shape) < p``, the step that dominated the cost
    of zoneout's per-step masks."""
    n = math.prod(shape)
    bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_().view(torch.int32)[:n]
    return torch.lt(bits.bitwise_and_(0x7FFFFFFF), round(p * 2**31)).view(shape)


def _bernoulli_keep(shape, p: float, like: Tensor) -> Tensor:
    """1 / (1 - p) with probability 1 - p, else 0 (inverted dropout)."""
    return torch.logical_not(_below(shape, p, like.device)).to(like.dtype) / (1 - p)


def draw_direction(regs: Regularisers, spec, T: int, B: int, like: Tensor) -> DirectionMasks:
    """Draw one direction's masks from torch's generator, in the documented order."""
    K, H, out = spec.paths, spec.hidden_size, spec.out_size
    rows = spec.kind.gate_blocks * H
    weight = h = zone_h = zone_c = None
    if regs.weight_dropout:
        if regs.paths_share_masks:
            weight = torch.cat([_bernoulli_keep((rows, out), regs.weight_dropout, like)] * K, 0)
        else:
            weight = _bernoulli_keep((K * rows, out), regs.weight_dropout, like)
    if regs.recurrent_dropout:
        h = _bernoulli_keep((B, out), regs.recurrent_dropout, like)
    if regs.zoneout_h:
        zone_h = _below((T, B, out), regs.zoneout_h, like.device)
    if regs.zoneout_c:
        if regs.paths_share_masks:
            zone_c = _below((T, B, H), regs.zoneout_c, like.device).repeat(1, 1, K)
        else:
            zone_c = _below((T, B, K * H), regs.zoneout_c, like.device)
    return DirectionMasks(weight, h, zone_h, zone_c)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """LN over the last dimension, ε = 1e-5 (biased variance, as ``torch.nn.LayerNorm``)."""
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)
