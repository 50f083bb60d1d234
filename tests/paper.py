"""Independent references for the tests: nothing here imports cerebral_rnn.

* A float64 transcription of the Cerebral LSTM's equations (Kumar 2020, eqs. 1-11), written from eight
  separate weight matrices, each acting on the concatenation ``[h(t-1), x(t)]``, and eight biases.
* :func:`to_documented_layout`: those matrices placed by hand into the documented storage layout
  (rows upper i, f, g, o then lower i, f, g, o; ``weight_ih`` the x columns, ``weight_hh`` the h columns).
* A float64 loop over layers and directions (nn.LSTM's stacking rules) built on that step.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def sigma(z):
    return 1.0 / (1.0 + torch.exp(-z))


def random_paper_params(input_size: int, hidden_size: int, gen: torch.Generator, bias: bool = True,
                        scale: float = 0.6) -> dict[str, torch.Tensor]:
    """Eight (H, H + I) matrices ``W{path}{gate}`` on ``[h, x]`` and eight (H,) biases ``b{path}{gate}``.

    path: ``u`` (upper) / ``l`` (lower); gate: ``f`` forget, ``i`` input, ``c`` candidate (Ctmp),
    ``o`` output.
    """
    H, I = hidden_size, input_size
    P = {}
    for path in "ul":
        for gate in "fico":
            P[f"W{path}{gate}"] = scale * torch.randn(H, H + I, generator=gen, dtype=F64)
            P[f"b{path}{gate}"] = (scale * torch.randn(H, generator=gen, dtype=F64) if bias
                                   else torch.zeros(H, dtype=F64))
    return P


def paper_step(x, h, UC, LC, P):
    """One step of the paper's equations. x (B, I), h (B, H), UC (B, H), LC (B, H) -> h, UC, LC."""
    hx = torch.cat([h, x], dim=-1)  # [h(t-1), x(t)]

    def lin(name):
        return hx @ P["W" + name].T + P["b" + name]

    Uf = sigma(lin("uf"))
    Lf = sigma(lin("lf"))
    Ui = sigma(lin("ui"))
    Li = sigma(lin("li"))
    UCtmp = torch.tanh(lin("uc"))
    LCtmp = torch.tanh(lin("lc"))
    UC = Uf * UC + Ui * UCtmp
    LC = Lf * LC + Li * LCtmp
    Uo = sigma(lin("uo"))
    Lo = sigma(lin("lo"))
    h = Uo * torch.tanh(UC) + Lo * torch.tanh(LC)
    return h, UC, LC


# The documented row order of the 8H dimension: upper i, f, g(=Ctmp), o, then lower i, f, g, o.
DOCUMENTED_ROWS = [("u", "i"), ("u", "f"), ("u", "c"), ("u", "o"),
                   ("l", "i"), ("l", "f"), ("l", "c"), ("l", "o")]


def to_documented_layout(P, hidden_size: int, gen: torch.Generator, dtype=F64):
    """``(weight_ih (8H, I), weight_hh (8H, H), bias_ih (8H,), bias_hh (8H,))`` of the paper's parameters.

    ``W [h, x] = W[:, :H] h + W[:, H:] x``, so the first H columns go to ``weight_hh`` and the rest to
    ``weight_ih``. The bias is split at random between ``bias_ih`` and ``bias_hh`` (their sum is the bias).
    """
    H = hidden_size
    W = torch.cat([P[f"W{p}{g}"] for p, g in DOCUMENTED_ROWS], dim=0)
    b = torch.cat([P[f"b{p}{g}"] for p, g in DOCUMENTED_ROWS], dim=0)
    b_hh = 0.3 * torch.randn(b.shape, generator=gen, dtype=F64)
    b_ih = b - b_hh
    return tuple(t.clone().to(dtype) for t in (W[:, H:], W[:, :H], b_ih, b_hh))


def paper_sequence(x, layers, h0, c0):
    """nn.LSTM's stacking over :func:`paper_step`.

    ``x`` (T, B, I); ``layers[l][d]`` the paper parameters of layer l, direction d (1 = reverse in time);
    ``h0`` (L*D, B, H), ``c0`` (L*D, B, 2H) with ``c = [UC | LC]``. Returns output (T, B, D*H), h_n, c_n.
    """
    T = x.shape[0]
    D = len(layers[0])
    H = h0.shape[-1]
    inp = x
    hn, cn = [], []
    for l, dirs in enumerate(layers):
        outs = []
        for d, P in enumerate(dirs):
            k = l * D + d
            h, UC, LC = h0[k], c0[k][:, :H], c0[k][:, H:]
            ys = [None] * T
            for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                h, UC, LC = paper_step(inp[t], h, UC, LC, P)
                ys[t] = h
            outs.append(torch.stack(ys))
            hn.append(h)
            cn.append(torch.cat([UC, LC], dim=-1))
        inp = torch.cat(outs, dim=-1)
    return inp, torch.stack(hn), torch.stack(cn)
