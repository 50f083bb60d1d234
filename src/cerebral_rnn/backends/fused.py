r"""``"fused"`` backend: a CPU ``autograd.Function`` with a native 8H x H recurrence and hand-written BPTT.

Per direction, forward:

* one GEMM for the input projection of all steps, bias included: ``G = X W_ih^T + b``  (T, B, 8H);
* one GEMM per step for the recurrence, accumulated in place: ``G[t] += h_{t-1} W_hh^T``;
* the pointwise part (Kumar 2020, eqs. 1-11) in a handful of in-place passes.

Inside the call the gate rows are reordered (a copy of the weights, never the stored parameters) to
``[o_U o_L | i_U i_L | f_U f_L | g_U g_L]``, so that one ``sigmoid_`` covers the 6H sigmoid gates, one ``tanh_``
the 2H candidate gates, and the 2H-wide ``i, f, g`` of both paths line up with the cell state ``[UC | LC]``:
``C_t = f * C_{t-1} + i * g`` is one pass over both paths, and ``h_t = (o * tanh(C_t))`` summed over the paths.

Backward: every factor of the gate gradients that does not depend on the incoming gradient is computed over
all steps at once (vectorised), so that the time loop only does one GEMM and four small in-place passes:

.. code-block:: text

    dh_t   = dy_t + dG_{t+1} W_hh                    (one GEMM per step)
    dC_t   = dC_{t+1} * f_{t+1} + [dh_t, dh_t] * o_t (1 - tanh^2 C_t)
    dG_t   = [dh_t, dh_t | dC_t | dC_t | dC_t] * [o'tanh C | g i' | C_{t-1} f' | i g']   (' = derivative)

and the weight gradients are one GEMM each over all steps: ``dW_ih = dG^T X``, ``dW_hh = dG^T H_prev``.
Dense input only (a reverse direction walks the steps backwards); packed input, autocast and tracing/compiling
are left to other backends (``supports`` says why).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_DTYPES = (torch.float32, torch.float64)
_ORDER_CACHE: dict[tuple[int, str], Tensor] = {}


def fused_gate_order(hidden_size: int, device=None) -> Tensor:
    """Row indices taking stored rows (U i,f,g,o, L i,f,g,o) to the call's layout ``o_U o_L i_U i_L f_U f_L g_U g_L``."""
    H = hidden_size
    key = (H, str(device))
    order = _ORDER_CACHE.get(key)
    if order is None:
        blocks = [path * 4 + gate for gate in (3, 0, 1, 2) for path in (0, 1)]  # gates o, i, f, g; paths U, L
        order = torch.cat([torch.arange(H, device=device) + H * blk for blk in blocks])
        _ORDER_CACHE[key] = order
    return order


def _forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b: Tensor | None, reverse: bool):
    """The forward pass; returns y (T, B, H), h_n, c_n and what backward needs (G activated, C with c_0)."""
    T, B, I = x.shape
    H = h0.shape[-1]
    x2 = x.reshape(T * B, I)
    G = torch.empty(T, B, 8 * H, dtype=x.dtype, device=x.device)  # pre-activations, then activations
    if b is None:
        torch.mm(x2, w_ih.t(), out=G.view(T * B, 8 * H))
    else:
        torch.addmm(b, x2, w_ih.t(), out=G.view(T * B, 8 * H))
    C = torch.empty(T + 1, B, 2 * H, dtype=x.dtype, device=x.device)  # cell states [UC | LC], c_0 at one end
    Y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    tmp = torch.empty(B, 2 * H, dtype=x.dtype, device=x.device)
    w_hh_t = w_hh.t()  # (H, 8H)
    cn, cp = (0, 1) if reverse else (1, 0)  # c_t = C[t + cn], c_{t-1} = C[t + cp]
    C[T if reverse else 0] = c0
    h = h0
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        g = G[t]  # (B, 8H)
        g.addmm_(h, w_hh_t)
        g[:, : 6 * H].sigmoid_()  # o, i, f of both paths
        g[:, 6 * H:].tanh_()  # candidates g of both paths
        c = C[t + cn]
        torch.mul(g[:, 4 * H: 6 * H], C[t + cp], out=c)  # f * C_{t-1}
        c.addcmul_(g[:, 2 * H: 4 * H], g[:, 6 * H:])  # + i * g
        torch.tanh(c, out=tmp)
        tmp.mul_(g[:, : 2 * H])  # o * tanh(C) per path
        h = torch.add(tmp[:, :H], tmp[:, H:], out=Y[t])  # h = Uo*tanh(UC) + Lo*tanh(LC)
    return Y, h, C[0 if reverse else T], G, C


class CerebralFusedFunction(torch.autograd.Function):
    """One direction of one layer. Weights are already in the call's gate layout (see module docstring)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b, reverse: bool):
        Y, h_n, c_n, G, C = _forward(x, h0, c0, w_ih, w_hh, b, reverse)
        ctx.reverse = reverse
        ctx.has_bias = b is not None
        ctx.G, ctx.C = G, C  # intermediates, used once by backward
        ctx.save_for_backward(x, h0, w_ih, w_hh, Y)
        return Y, h_n.clone(), c_n.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_n, dc_n):
        x, h0, w_ih, w_hh, Y = ctx.saved_tensors
        G, C = ctx.G, ctx.C
        if G is None:
            raise RuntimeError("CerebralFusedFunction: backward called twice (use the 'reference' or 'lstm2h' "
                               "backend for retain_graph=True)")
        ctx.G = ctx.C = None
        reverse = ctx.reverse
        T, B, I = x.shape
        H = h0.shape[-1]
        H2 = 2 * H
        o, i, f, g = G[..., :H2], G[..., H2:2 * H2], G[..., 2 * H2:3 * H2], G[..., 3 * H2:]  # (T, B, 2H)
        Cn, Cp = (C[:T], C[1:]) if reverse else (C[1:], C[:T])  # c_t, c_{t-1}   (T, B, 2H)

        # Factors of dG that do not depend on the incoming gradient, over all steps at once.
        dG = torch.empty_like(G)  # (T, B, 8H)
        torch.addcmul(G[..., : 3 * H2], G[..., : 3 * H2], G[..., : 3 * H2], value=-1,
                      out=dG[..., : 3 * H2])  # s (1 - s) for o, i, f
        K = torch.tanh(Cn)  # (T, B, 2H)
        dG[..., :H2].mul_(K)  # o' tanh(C)
        dG[..., H2:2 * H2].mul_(g)  # i' g
        dG[..., 2 * H2:3 * H2].mul_(Cp)  # f' C_{t-1}
        dGg = dG[..., 3 * H2:]
        torch.mul(g, g, out=dGg)
        torch.addcmul(i, i, dGg, value=-1, out=dGg)  # i (1 - g^2)
        K.mul_(K)
        torch.addcmul(o, o, K, value=-1, out=K)  # o (1 - tanh^2 C): dC from dh

        dh = dh_n.clone()  # (B, H)
        dc = dc_n.clone()  # (B, 2H)
        order = range(T) if reverse else range(T - 1, -1, -1)
        t_next = None
        for t in order:
            if t_next is None:
                dh.add_(dY[t])
            else:
                torch.addmm(dY[t], dG[t_next], w_hh, out=dh)  # dh_t = dy_t + dG_{t+1} W_hh
                dc.mul_(f[t_next])
            dc.view(B, 2, H).addcmul_(dh.unsqueeze(1), K[t].view(B, 2, H))
            dG[t, :, :H2].view(B, 2, H).mul_(dh.unsqueeze(1))
            dG[t, :, H2:].view(B, 3, H2).mul_(dc.unsqueeze(1))
            t_next = t
        needs = ctx.needs_input_grad
        dh0 = torch.mm(dG[t_next], w_hh) if needs[1] else None
        dc0 = dc.mul_(f[t_next]) if needs[2] else None

        dG2 = dG.view(T * B, 8 * H)
        dx = torch.mm(dG2, w_ih).view(T, B, I) if needs[0] else None
        dw_ih = torch.mm(dG2.t(), x.reshape(T * B, I)) if needs[3] else None
        dw_hh = None
        if needs[4]:
            h_prev = torch.cat([Y[1:], h0.unsqueeze(0)]) if reverse else torch.cat([h0.unsqueeze(0), Y[:-1]])
            dw_hh = torch.mm(dG2.t(), h_prev.view(T * B, H))
        db = dG2.sum(0) if ctx.has_bias and needs[5] else None
        return dx, dh0, dc0, dw_ih, dw_hh, db, None


class FusedBackend:
    """Native 8H x H recurrence with hand-written BPTT, CPU, float32/float64, dense input."""

    name = "fused"

    def supports(self, x: Tensor, batch_sizes, weights, training) -> str | None:
        if batch_sizes is not None:
            return "packed input is not supported"
        if x.device.type != "cpu":
            return f"device {x.device} is not the CPU"
        if x.dtype not in _DTYPES:
            return f"dtype {x.dtype} is not float32 or float64"
        if torch.is_autocast_enabled("cpu"):
            return "CPU autocast is enabled"
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return "tracing/compiling (torch.export, torch.compile, jit) does not see inside its time loop"
        return None

    def forward_layer(self, x, h0, c0, weights, batch_sizes):
        H = h0.shape[-1]
        order = fused_gate_order(H, x.device)
        x = x.contiguous()
        ys, hs, cs = [], [], []
        for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            biases = [bb for bb in (b_ih, b_hh) if bb is not None]
            b = None
            if biases:
                b = (biases[0] + biases[1] if len(biases) == 2 else biases[0]).index_select(0, order)
            y, h_n, c_n = CerebralFusedFunction.apply(x, h0[d], c0[d], w_ih.index_select(0, order),
                                                       w_hh.index_select(0, order), b, d == 1)
            ys.append(y)
            hs.append(h_n)
            cs.append(c_n)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
        return y, torch.stack(hs), torch.stack(cs)


BACKEND = FusedBackend()
