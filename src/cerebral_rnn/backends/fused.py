r"""``"fused"`` backend: a CPU ``autograd.Function`` with a native 8H x H recurrence and hand-written BPTT.

Per direction, forward:

* one GEMM for the input projection of all steps, bias included: ``G = X W_ih^T + b``  (T, B, 8H);
* one GEMM per step for the recurrence, accumulated in place: ``G[t] += h_{t-1} W_hh^T``;
* the pointwise part (Kumar 2020, eqs. 1-11) in a handful of in-place passes.

Inside the call the gate rows are reordered (a copy of the weights, never the stored parameters) to
``[o_U o_L | i_U i_L | f_U f_L | g_U g_L]``, and the candidate rows ``g`` are scaled by 2, so that one
``sigmoid_`` covers all 8H gates (``tanh(a) = 2 sigmoid(2a) - 1``; torch's CPU tanh is ~5x slower than its
sigmoid), and the 2H-wide ``i, f, g`` of both paths line up with the cell state ``[UC | LC]``:
``C_t = f * C_{t-1} + i * tanh(a_g)`` is one pass over both paths. The cell state is carried as ``S = -2 C``
(exact, a power of two), so that ``o * tanh(C) = o - 2 o sigmoid(S)`` needs no tanh either; ``h_t`` sums the
two paths. A step is 8 ops: the GEMM and 7 pointwise passes.

Backward: every factor of the gate gradients that does not depend on the incoming gradient is computed over
all steps at once (vectorised), so that the time loop only does one GEMM and four small in-place passes:

.. code-block:: text

    dh_t   = dy_t + dG_{t+1} W_hh                    (one GEMM per step)
    dC_t   = dC_{t+1} * f_{t+1} + [dh_t, dh_t] * o_t (1 - tanh^2 C_t)
    dG_t   = [dh_t, dh_t | dC_t | dC_t | dC_t] * [o'tanh C | g i' | C_{t-1} f' | i g']   (' = derivative)

and the weight gradients are one GEMM over all steps: ``[dW_ih | dW_hh] = dG^T [X | H_prev]``.
Dense input only (a reverse direction walks the steps backwards); packed input and ``torch.export`` are left
to other backends (``supports`` says why), and so are layers whose two paths are identical (its pointwise passes
treat both paths' rows as one array, whose vectorised loop may round a scalar tail differently). Under
``torch.compile`` it runs eagerly behind a graph break.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._compile import exporting, run_eager_under_compile
from ._rules import dense_cpu_reason, identical_paths_reason, needs_grad

_CACHE: dict[tuple[int, str, torch.dtype], tuple[Tensor, Tensor]] = {}
_INFER_ROWS = 512  # rows (steps x batch) of the input projection per chunk in inference


def fused_gate_order(hidden_size: int, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Row indices taking stored rows (U i,f,g,o, L i,f,g,o) to the call's layout ``U o,i,f,g, L o,i,f,g``, and
    the row scale (1, or 2 for the candidate rows g: ``tanh(a) = 2 sigmoid(2a) - 1``)."""
    H = hidden_size
    key = (H, str(device), dtype)
    hit = _CACHE.get(key)
    if hit is None:
        blocks = [path * 4 + gate for path in (0, 1) for gate in (3, 0, 1, 2)]  # paths U, L; gates o, i, f, g
        order = torch.cat([torch.arange(H, device=device) + H * blk for blk in blocks])
        scale = torch.ones(8 * H, device=device, dtype=dtype)
        scale[3 * H:4 * H] = scale[7 * H:] = 2.0
        hit = _CACHE[key] = (order, scale)
    return hit


class _MatmulAdd:
    """``x @ weight.T + add`` for a weight used at every step: oneDNN with the weight packed once per call
    (``torch.ops.mkldnn._linear_pointwise``, the op inductor uses; up to 1.5x faster than ``addmm`` at H=512
    on our CPU), or ``torch.addmm`` where oneDNN is unavailable (float64, builds without it, or if the op
    fails)."""

    _mkldnn_ok: bool | None = None  # None: not tried yet in this process

    def __init__(self, weight: Tensor, rows: int) -> None:
        self.weight = weight  # (out, in)
        self.packed = None
        if (weight.dtype == torch.float32 and weight.device.type == "cpu" and _MatmulAdd._mkldnn_ok is not False
                and torch.backends.mkldnn.is_available()):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
                probe = torch.zeros(rows, weight.shape[1], dtype=weight.dtype)
                torch.ops.mkldnn._linear_pointwise.binary(probe, torch.zeros(rows, weight.shape[0]), self.packed,
                                                          None, "add")
                _MatmulAdd._mkldnn_ok = True
            except (RuntimeError, AttributeError, NotImplementedError):
                _MatmulAdd._mkldnn_ok = False
                self.packed = None

    def __call__(self, x: Tensor, add: Tensor) -> Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.packed, None, "add")
        return torch.addmm(add, x, self.weight.t())


def _step(g: Tensor, h: Tensor, mm: _MatmulAdd, s_prev: Tensor, s: Tensor, tmp: Tensor, y: Tensor) -> Tensor:
    """One step, in place, in 8 ops. ``g`` (B, 8H): input projection in, sigmoid activations out (layout o, i, f,
    g; the g rows are pre-scaled by 2 so that ``2 sigmoid - 1 = tanh(a_g)``). The cell state is carried as
    ``S = -2 C`` (exact: a power of two), so that ``sigmoid(S) = sigmoid(-2C)`` and
    ``tanh(C) = 1 - 2 sigmoid(-2C)``: no tanh at all (it is ~5x slower than sigmoid on the CPU). Writes ``s``
    (B, 2H) and ``y`` (B, H)."""
    B, H2 = s.shape
    H = H2 // 2
    torch.sigmoid(mm(h, g), out=g)  # g + h W_hh^T, then one pass over all 8H gates
    gv = g.view(B, 2, 4, H)  # paths U, L; gates o, i, f, g
    o, i, f, s_g = gv[:, :, 0], gv[:, :, 1], gv[:, :, 2], gv[:, :, 3]  # (B, 2, H) each
    sv, tv = s.view(B, 2, H), tmp.view(B, 2, H)
    torch.mul(f, s_prev.view(B, 2, H), out=sv)  # -2 [f * C(t-1)  ...
    sv.addcmul_(i, s_g, value=-4.0).add_(i, alpha=2.0)  # ... + i * (2 s_g - 1)], both paths at once
    torch.sigmoid(s, out=tmp)  # sigmoid(-2C)
    torch.addcmul(o, o, tv, value=-2.0, out=tv)  # o * tanh(C) = o - 2 o sigmoid(-2C)
    return torch.add(tv[:, 0], tv[:, 1], out=y)  # h = Uo*tanh(UC) + Lo*tanh(LC)


def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _forward_train(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None,
                   reverse: bool):
    """Forward keeping what backward needs: returns y (T, B, H), h_n, c_n, G (activations), S = -2 C."""
    T, B, _ = x.shape
    H = h0.shape[-1]
    G = torch.empty(T, B, 8 * H, dtype=x.dtype, device=x.device)  # (T, B, 8H)
    _project(x, w_ih, b, G)
    S = torch.empty(T + 1, B, 2 * H, dtype=x.dtype, device=x.device)  # (T+1, B, 2H): -2 C, c_0 at one end
    Y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)  # (T, B, H)
    tmp = torch.empty(B, 2 * H, dtype=x.dtype, device=x.device)
    mm = _MatmulAdd(w_hh, B)
    cn, cp = (0, 1) if reverse else (1, 0)  # c_t = S[t + cn] / -2, c_{t-1} = S[t + cp] / -2
    torch.mul(c0, -2.0, out=S[T if reverse else 0])
    h = h0
    for t in _steps(T, reverse):
        h = _step(G[t], h, mm, S[t + cp], S[t + cn], tmp, Y[t])
    return Y, h, S[0 if reverse else T] * -0.5, G, S


def _project(x: Tensor, w_ih: Tensor, b: Tensor | None, out: Tensor) -> None:
    """``out = x W_ih^T + b`` as one GEMM; ``x`` (n, B, I), ``out`` (n, B, 8H)."""
    x2 = x.reshape(-1, x.shape[-1])
    out2 = out.view(x2.shape[0], -1)
    if b is None:
        torch.mm(x2, w_ih.t(), out=out2)
    else:
        torch.addmm(b, x2, w_ih.t(), out=out2)


def _forward_infer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None,
                   reverse: bool):
    """Forward without autograd: the input projection in chunks of steps into one reused buffer."""
    T, B, _ = x.shape
    H = h0.shape[-1]
    n = max(1, min(T, _INFER_ROWS // B))
    G = torch.empty(n, B, 8 * H, dtype=x.dtype, device=x.device)  # (n, B, 8H)
    Y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    s_c = c0 * -2.0  # (B, 2H): -2 C, updated in place
    tmp = torch.empty(B, 2 * H, dtype=x.dtype, device=x.device)
    mm = _MatmulAdd(w_hh, B)
    h = h0
    starts = range(0, T, n)
    for s in (reversed(starts) if reverse else starts):
        e = min(s + n, T)
        _project(x[s:e], w_ih, b, G[: e - s])
        for t in _steps(e - s, reverse):
            h = _step(G[t], h, mm, s_c, s_c, tmp, Y[s + t])
    return Y, h.clone(), s_c.mul_(-0.5)


class CerebralFusedFunction(torch.autograd.Function):
    """One direction of one layer. Weights are already in the call's gate layout (see module docstring)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b, reverse: bool):
        Y, h_n, c_n, G, S = _forward_train(x, h0, c0, w_ih, w_hh, b, reverse)
        ctx.reverse = reverse
        ctx.has_bias = b is not None
        ctx.G, ctx.S = G, S  # intermediates (not inputs or outputs) for backward
        ctx.save_for_backward(x, h0, w_ih, w_hh, Y)
        return Y, h_n.clone(), c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_n, dc_n):
        x, h0, w_ih, w_hh, Y = ctx.saved_tensors
        G, S = ctx.G, ctx.S
        reverse = ctx.reverse
        T, B, I = x.shape
        H = h0.shape[-1]
        Gv = G.view(T, B, 2, 4, H)  # paths U, L; gates o, i, f, g
        o, i, f, s_g = Gv[..., 0, :], Gv[..., 1, :], Gv[..., 2, :], Gv[..., 3, :]  # (T, B, 2, H)
        Sn, Sp = (S[:T], S[1:]) if reverse else (S[1:], S[:T])  # -2 c_t, -2 c_{t-1}   (T, B, 2H)
        Sn, Sp = Sn.view(T, B, 2, H), Sp.view(T, B, 2, H)

        # Factors of dG that do not depend on the incoming gradient, over all steps at once.
        dG = torch.addcmul(G, G, G, value=-1.0)  # s (1 - s)   (T, B, 8H)
        dGv = dG.view(T, B, 2, 4, H)
        K = torch.mul(s_g, 2.0).sub_(1.0)  # tanh(a_g)   (T, B, 2, H)
        dGv[..., 1, :].mul_(K)  # i' tanh(a_g)
        dGv[..., 2, :].mul_(Sp).mul_(-0.5)  # f' C_{t-1}
        dGv[..., 3, :].mul_(i).mul_(2.0)  # i d tanh(a_g)/d(2 a_g)
        torch.sigmoid(Sn, out=K).mul_(-2.0).add_(1.0)  # tanh(C_t) = 1 - 2 sigmoid(-2 C_t)
        dGv[..., 0, :].mul_(K)  # o' tanh(C)
        K.mul_(K)
        torch.addcmul(o, o, K, value=-1.0, out=K)  # o (1 - tanh^2 C): dC_t per unit dh_t

        dY = dY.contiguous()  # an expanded gradient (loss = y.sum()) would be copied at every step
        dh = dh_n.clone()  # (B, H)
        mm = _MatmulAdd(w_hh.t().contiguous(), B)  # dG_{t+1} W_hh
        dc = dc_n.clone()  # (B, 2H)
        dcv = dc.view(B, 2, H)
        t_next = None
        for t in _steps(T, not reverse):
            if t_next is None:
                dh.add_(dY[t])
            else:
                dh = mm(dG[t_next], dY[t])  # dh_t = dy_t + dG_{t+1} W_hh
                dcv.mul_(f[t_next])
            dcv.addcmul_(dh.unsqueeze(1), K[t])
            dGv[t, :, :, 0].mul_(dh.unsqueeze(1))  # (B, 2, H) * (B, 1, H)
            dGv[t, :, :, 1:].mul_(dcv.unsqueeze(2))  # (B, 2, 3, H) * (B, 2, 1, H)
            t_next = t
        needs = ctx.needs_input_grad
        dh0 = torch.mm(dG[t_next], w_hh) if needs[1] else None
        dc0 = dcv.mul_(f[t_next]).view(B, 2 * H) if needs[2] else None

        dG2 = dG.view(T * B, 8 * H)
        dx = torch.mm(dG2, w_ih).view(T, B, I) if needs[0] else None
        dw_ih = dw_hh = db = None
        if needs[3] or needs[4] or (ctx.has_bias and needs[5]):
            # All weight and bias gradients in one GEMM per path over all steps: dG_p^T [X | H_prev | 1]. One
            # GEMM per path (same shapes, same kernel), not one over all 8H rows, so that identical paths get
            # bitwise identical gradients (docs/notes.md, symmetry): a single GEMM/column sum rounds rows
            # differently depending on their position.
            h_prev = torch.cat([Y[1:], h0.unsqueeze(0)]) if reverse else torch.cat([h0.unsqueeze(0), Y[:-1]])
            xh1 = torch.cat([x, h_prev, torch.ones_like(h_prev[..., :1])], dim=-1).view(T * B, I + H + 1)
            dG2 = dG.view(T * B, 8 * H)
            dw = torch.empty(8 * H, I + H + 1, dtype=x.dtype, device=x.device)
            for p in range(2):
                torch.mm(dG2[:, p * 4 * H:(p + 1) * 4 * H].t(), xh1, out=dw[p * 4 * H:(p + 1) * 4 * H])
            dw_ih, dw_hh, db = dw[:, :I], dw[:, I:I + H], dw[:, I + H]
            db = db if ctx.has_bias else None
        return dx, dh0, dc0, dw_ih, dw_hh, db, None


class FusedBackend:
    """Native 8H x H recurrence with hand-written BPTT: two-path LSTM layers (the paper's Cerebral LSTM), CPU,
    float32/float64, dense input, distinct paths."""

    name = "fused"
    kinds = ("lstm",)

    def supports(self, spec, x: Tensor, batch_sizes, weights, states) -> str | None:
        if spec.kind.name != "lstm" or spec.paths != 2 or spec.proj_size:
            return "only two-path LSTM layers without proj_size (the paper's Cerebral LSTM)"
        reason = dense_cpu_reason(x, batch_sizes, weights)
        if reason is not None:
            return reason
        if exporting():
            return "torch.export / jit tracing cannot record its custom autograd.Function"
        # Its pointwise passes run over both paths' rows at once, and ATen's vectorised loops finish a tensor
        # with a scalar tail: identical paths could be rounded differently.
        return identical_paths_reason(spec, weights)

    def forward_layer(self, spec, x, states, weights, batch_sizes):
        return run_eager_under_compile(self._forward_layer, x, states, weights)

    def _forward_layer(self, x, states, weights):
        h0, c0 = states
        H = h0.shape[-1]
        order, scale = fused_gate_order(H, x.device, x.dtype)
        x = x.contiguous()
        grad = needs_grad(x, states, weights)
        ys, hs, cs = [], [], []
        for d, w in enumerate(weights):
            w_ih = w.w_ih.index_select(0, order) * scale[:, None]  # (8H, I) in the call's layout
            w_hh = w.w_hh.index_select(0, order) * scale[:, None]  # (8H, H)
            b = None
            biases = [bb for bb in (w.b_ih, w.b_hh) if bb is not None]
            if biases:
                b = (biases[0] + biases[1] if len(biases) == 2 else biases[0]).index_select(0, order) * scale
            if grad:
                y, h_n, c_n = CerebralFusedFunction.apply(x, h0[d], c0[d], w_ih, w_hh, b, d == 1)
            else:
                y, h_n, c_n = _forward_infer(x, h0[d], c0[d], w_ih, w_hh, b, d == 1)
            ys.append(y)
            hs.append(h_n)
            cs.append(c_n)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
        return y, (torch.stack(hs), torch.stack(cs))


BACKEND = FusedBackend()
