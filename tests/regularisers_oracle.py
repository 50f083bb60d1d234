"""An independent float64 transcription of the regularised Cerebral step (weight dropout, recurrent dropout,
zoneout, layer norm) for one layer and one direction, written from the equations (Wan et al. 2013; Gal &
Ghahramani 2016; Krueger et al. 2017; Ba et al. 2016 in haste's LayerNormLSTM form) and the storage layout,
without the library's code: every gate is computed element by element from named rows, one path at a time.

``params``: the layer's state_dict entries for one layer/direction with the suffix removed (``weight_ih``,
``weight_hh``, ``bias_ih``, ``bias_hh``, optional ``peephole``, ``ln_*``). Masks as drawn by the layer:
``w_mask`` (K G H, H) scaled, ``h_mask`` (B, H) scaled, ``zone_h`` (T, B, H) and ``zone_c`` (T, B, K H) booleans.
"""

from __future__ import annotations

import torch


def _ln(v, g, b, eps=1e-5):
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + eps) * g + b


def _sig(v):
    return 1 / (1 + torch.exp(-v))


def run(kind: str, K: int, H: int, params: dict, x, h0, c0=None, *, w_mask=None, h_mask=None, zone_h=None,
        zone_c=None, p_h=0.0, p_c=0.0, training=True, reverse=False):
    """Outputs (T, B, H) and final (h, c) of one direction in float64."""
    P = {k: v.double() for k, v in params.items()}
    x = x.double()
    G = 3 if kind == "gru" else 4
    W_hh = P["weight_hh"] * (w_mask.double() if w_mask is not None else 1.0)
    T = x.shape[0]
    h = h0.double().clone()
    c = [c0.double()[:, k * H:(k + 1) * H].clone() for k in range(K)] if kind != "gru" else None
    ln = "ln_ih_weight" in P
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_in = h * h_mask.double() if h_mask is not None else h
        outs, new_c = [], []
        for k in range(K):
            rows = slice(k * G * H, (k + 1) * G * H)
            ax = x[t] @ P["weight_ih"][rows].T
            ah = h_in @ W_hh[rows].T
            if ln:
                ax = _ln(ax, P["ln_ih_weight"][rows], P["ln_ih_bias"][rows])
                ah = _ln(ah, P["ln_hh_weight"][rows], P["ln_hh_bias"][rows])
            bx, bh = P["bias_ih"][rows], P["bias_hh"][rows]
            if kind == "gru":
                xr, xz, xn = (ax + bx).split(H, -1)
                hr, hz, hn = (ah + bh).split(H, -1)
                r, z = _sig(xr + hr), _sig(xz + hz)
                n = torch.tanh(xn + r * hn)
                outs.append((1 - z) * n + z * h)
                continue
            a_i, a_f, a_g, a_o = (ax + bx + ah + bh).split(H, -1)
            ck = c[k]
            if kind == "peephole":
                w_ci, w_cf, w_co = P["peephole"][k * 3 * H:(k + 1) * 3 * H].split(H)
                i, f = _sig(a_i + w_ci * ck), _sig(a_f + w_cf * ck)
                cn = f * ck + i * torch.tanh(a_g)
                o = _sig(a_o + w_co * cn)
            else:
                i, f, o = _sig(a_i), _sig(a_f), _sig(a_o)
                cn = f * ck + i * torch.tanh(a_g)
            c_out = cn
            if ln:
                cs = slice(k * H, (k + 1) * H)
                c_out = _ln(cn, P["ln_c_weight"][cs], P["ln_c_bias"][cs])
            outs.append(o * torch.tanh(c_out))
            new_c.append(cn)
        h_new = sum(outs[1:], outs[0])
        if kind == "gru":
            h_new = h_new / K
        if zone_h is not None:
            h_new = torch.where(zone_h[t], h, h_new)
        elif not training:
            h_new = p_h * h + (1 - p_h) * h_new
        if kind != "gru":
            for k in range(K):
                if zone_c is not None:
                    new_c[k] = torch.where(zone_c[t][:, k * H:(k + 1) * H], c[k], new_c[k])
                elif not training:
                    new_c[k] = p_c * c[k] + (1 - p_c) * new_c[k]
            c = new_c
        h = h_new
        ys[t] = h
    return torch.stack(ys), (h, torch.cat(c, -1) if c is not None else None)
