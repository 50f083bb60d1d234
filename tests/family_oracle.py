"""Independent float64 references for the Cerebral family: nothing here imports cerebral_rnn.

Written from the documented equations (the layer docstrings and issue #9), the way tests/paper.py transcribes
the paper's two-path cell:

* every path's parameters are separate tensors, one matrix per gate acting on the concatenation
  ``[h(t-1), x(t)]`` (:func:`random_direction`);
* one step of each kind, path by path, then the combination of the paths (:func:`lstm_step`,
  :func:`peephole_step`, :func:`gru_step`);
* :func:`to_layout`: those tensors placed by hand into the documented storage layout (path k's rows
  ``[k G H, (k + 1) G H)``, in the kind's gate order; ``weight_ih`` the x columns, ``weight_hh`` the h columns);
  :func:`grads_to_layout` places the oracle's gradients the same way;
* :func:`run_sequence`: ``torch.nn.LSTM``'s stacking rules over layers and directions, one sequence at a time
  (a packed batch is each sequence run alone over its own length).

Symbols: I input size, H hidden size, K paths, P proj_size (LSTM kind only), O = P or H (the width of h),
D directions, G gate blocks per path (4 for the LSTM kinds, 3 for the GRU).
"""

from __future__ import annotations

import torch

F64 = torch.float64

# Gate blocks of one path, in the documented storage order.
GATES = {"lstm": ("i", "f", "g", "o"), "peephole": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
HAS_CELL = {"lstm": True, "peephole": True, "gru": False}


def sigma(z):
    return 1.0 / (1.0 + torch.exp(-z))


# ---------------------------------------------------------------------------------------------------------
# Parameters: separate tensors per path and gate
# ---------------------------------------------------------------------------------------------------------


def random_path(kind: str, input_size: int, hidden_size: int, out_size: int, gen: torch.Generator,
                bias: bool = True, scale: float = 0.6) -> dict[str, torch.Tensor]:
    """One path's parameters.

    LSTM kinds: ``W_i, W_f, W_g, W_o`` (H, O + I) on ``[h, x]`` and biases ``b_i, b_f, b_g, b_o`` (H,);
    the peephole kind adds the diagonal weights ``w_ci, w_cf, w_co`` (H,).
    GRU: ``W_r, W_z`` (H, H + I) on ``[h, x]`` with ``b_r, b_z``; the candidate keeps its two halves apart
    because the reset gate multiplies only the recurrent one: ``W_in`` (H, I), ``b_in``, ``W_hn`` (H, H),
    ``b_hn``. Without bias no ``b_*`` entries exist (they count as 0).
    """
    H, I, O = hidden_size, input_size, out_size

    def mat(rows, cols):
        return scale * torch.randn(rows, cols, generator=gen, dtype=F64)

    def vec():
        return scale * torch.randn(H, generator=gen, dtype=F64)

    p = {}
    if kind in ("lstm", "peephole"):
        for g in GATES[kind]:
            p["W_" + g] = mat(H, O + I)
            if bias:
                p["b_" + g] = vec()
        if kind == "peephole":
            for g in ("ci", "cf", "co"):
                p["w_" + g] = vec()
    elif kind == "gru":
        for g in ("r", "z"):
            p["W_" + g] = mat(H, H + I)
            if bias:
                p["b_" + g] = vec()
        p["W_in"], p["W_hn"] = mat(H, I), mat(H, H)
        if bias:
            p["b_in"], p["b_hn"] = vec(), vec()
    else:
        raise ValueError(kind)
    return p


def random_direction(kind: str, paths: int, input_size: int, hidden_size: int, gen: torch.Generator,
                     bias: bool = True, proj_size: int = 0) -> dict:
    """One direction of one layer: ``{"paths": [K path dicts], "W_hr": (P, H) or None}``."""
    O = proj_size or hidden_size
    W_hr = 0.6 * torch.randn(proj_size, hidden_size, generator=gen, dtype=F64) if proj_size else None
    return {"paths": [random_path(kind, input_size, hidden_size, O, gen, bias) for _ in range(paths)],
            "W_hr": W_hr}


def random_layers(kind: str, paths: int, input_size: int, hidden_size: int, num_layers: int, directions: int,
                  gen: torch.Generator, bias: bool = True, proj_size: int = 0) -> list[list[dict]]:
    """``layers[l][d]``; layer l > 0 reads the D*O features of the layer below (nn.LSTM's rule)."""
    O = proj_size or hidden_size
    return [[random_direction(kind, paths, input_size if l == 0 else directions * O, hidden_size, gen, bias,
                              proj_size) for _ in range(directions)] for l in range(num_layers)]


def leaves(layers) -> list[torch.Tensor]:
    """Every parameter tensor of ``layers``, in a fixed order (to differentiate the oracle with respect to)."""
    out = []
    for dirs in layers:
        for d in dirs:
            for p in d["paths"]:
                out += [p[k] for k in sorted(p)]
            if d["W_hr"] is not None:
                out.append(d["W_hr"])
    return out


def requires_grad_(layers):
    for t in leaves(layers):
        t.requires_grad_()
    return layers


def identical_paths(direction: dict) -> dict:
    """A copy of ``direction`` whose every path is the first path (``init="identical"``)."""
    first = direction["paths"][0]
    return {"paths": [dict(first) for _ in direction["paths"]], "W_hr": direction["W_hr"]}


# ---------------------------------------------------------------------------------------------------------
# One step of each kind
# ---------------------------------------------------------------------------------------------------------


def _lin(p, name, hx):
    """``W_name [h, x] + b_name`` (no bias term when the layer has none)."""
    y = hx @ p["W_" + name].T
    return y + p["b_" + name] if "b_" + name in p else y


def lstm_step(x, h, cells, direction):
    """CerebralLSTM, one step. ``x`` (B, I), ``h`` (B, O), ``cells`` K tensors (B, H). Returns ``(h', cells')``.

    Path k: i, f, g, o = W_{.,k} [h, x] + b_{.,k};  c_k' = sigma(f) c_k + sigma(i) tanh(g);
    h' = sum_k sigma(o_k) tanh(c_k');  with proj_size: h' <- W_hr h'.
    """
    hx = torch.cat([h, x], dim=-1)
    total, new_cells = 0.0, []
    for p, c in zip(direction["paths"], cells):
        i, f, g, o = (_lin(p, gate, hx) for gate in "ifgo")
        c = sigma(f) * c + sigma(i) * torch.tanh(g)
        total = total + sigma(o) * torch.tanh(c)
        new_cells.append(c)
    if direction["W_hr"] is not None:
        total = total @ direction["W_hr"].T
    return total, new_cells


def peephole_step(x, h, cells, direction):
    """CerebralPeepholeLSTM, one step (Gers & Schmidhuber 2000 per path).

    a_i, a_f, a_g, a_o = W_{.,k} [h, x] + b_{.,k};  i = sigma(a_i + w_ci c_{t-1});  f = sigma(a_f + w_cf c_{t-1});
    c_t = f c_{t-1} + i tanh(a_g);  o = sigma(a_o + w_co c_t);  h = sum_k o_k tanh(c_k,t).
    """
    hx = torch.cat([h, x], dim=-1)
    total, new_cells = 0.0, []
    for p, c in zip(direction["paths"], cells):
        a_i, a_f, a_g, a_o = (_lin(p, gate, hx) for gate in "ifgo")
        i = sigma(a_i + p["w_ci"] * c)
        f = sigma(a_f + p["w_cf"] * c)
        c = f * c + i * torch.tanh(a_g)
        o = sigma(a_o + p["w_co"] * c)
        total = total + o * torch.tanh(c)
        new_cells.append(c)
    return total, new_cells


def gru_step(x, h, cells, direction):
    """CerebralGRU, one step: torch.nn.GRU's equations per path, then the mean of the paths' updates.

    r = sigma(W_r [h, x] + b_r);  z = sigma(W_z [h, x] + b_z);  n = tanh(W_in x + b_in + r (W_hn h + b_hn));
    h'_k = (1 - z) n + z h;  h' = (1 / K) sum_k h'_k.
    """
    hx = torch.cat([h, x], dim=-1)
    updates = []
    for p in direction["paths"]:
        r, z = sigma(_lin(p, "r", hx)), sigma(_lin(p, "z", hx))
        a_in = x @ p["W_in"].T + p.get("b_in", 0.0)
        a_hn = h @ p["W_hn"].T + p.get("b_hn", 0.0)
        n = torch.tanh(a_in + r * a_hn)
        updates.append((1 - z) * n + z * h)
    return sum(updates) / len(updates), None


STEPS = {"lstm": lstm_step, "peephole": peephole_step, "gru": gru_step}


# ---------------------------------------------------------------------------------------------------------
# The documented storage layout, by hand
# ---------------------------------------------------------------------------------------------------------


def _place(kind: str, direction: dict, hidden_size: int, split_bias) -> dict[str, torch.Tensor]:
    """Parameter name (without the ``_l{k}`` suffix) -> tensor, for one direction.

    Path k (0-based), gate j of the kind's G gates: rows ``[(k G + j) H, (k G + j + 1) H)`` of ``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh``. ``W [h, x] = W[:, :O] h + W[:, O:] x``: the first O columns go to
    ``weight_hh``, the rest to ``weight_ih``. The GRU candidate's ``W_in, b_in`` go to the ``_ih`` tensors and
    ``W_hn, b_hn`` to the ``_hh`` ones. ``split_bias(b) -> (part_ih, part_hh)`` divides a bias that acts on
    ``[h, x]``. Peephole: path k's ``w_ci, w_cf, w_co`` at ``[3 k H + m H, 3 k H + (m + 1) H)``, m = 0, 1, 2.
    """
    H, gates, paths = hidden_size, GATES[kind], direction["paths"]
    G, K = len(gates), len(paths)
    has_bias = any(name.startswith("b_") for name in paths[0])
    O = direction["W_hr"].shape[0] if direction["W_hr"] is not None else H  # the width of h
    I = paths[0][f"W_{gates[0]}"].shape[1] - O  # W acts on [h, x]: O + I columns
    out = {"weight_ih": torch.zeros(K * G * H, I, dtype=F64), "weight_hh": torch.zeros(K * G * H, O, dtype=F64)}
    if has_bias:
        out["bias_ih"] = torch.zeros(K * G * H, dtype=F64)
        out["bias_hh"] = torch.zeros(K * G * H, dtype=F64)
    if kind == "peephole":
        out["peephole"] = torch.zeros(K * 3 * H, dtype=F64)
    for k, p in enumerate(paths):
        for j, gate in enumerate(gates):
            rows = slice((k * G + j) * H, (k * G + j + 1) * H)
            if kind == "gru" and gate == "n":
                out["weight_ih"][rows] = p["W_in"]
                out["weight_hh"][rows] = p["W_hn"]
                if has_bias:
                    out["bias_ih"][rows] = p["b_in"]
                    out["bias_hh"][rows] = p["b_hn"]
                continue
            W = p["W_" + gate]
            out["weight_hh"][rows] = W[:, :O]
            out["weight_ih"][rows] = W[:, O:]
            if has_bias:
                out["bias_ih"][rows], out["bias_hh"][rows] = split_bias(p["b_" + gate])
        if kind == "peephole":
            for m, name in enumerate(("w_ci", "w_cf", "w_co")):
                out["peephole"][(3 * k + m) * H:(3 * k + m + 1) * H] = p[name]
    if direction["W_hr"] is not None:
        out["weight_hr"] = direction["W_hr"].clone()
    return out


def to_layout(kind: str, direction: dict, hidden_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One direction's parameters in the documented layout. A bias on ``[h, x]`` is split at random between
    ``bias_ih`` and ``bias_hh`` (only their sum is the bias)."""

    def split(b):
        part_hh = 0.3 * torch.randn(b.shape, generator=gen, dtype=F64)
        return b - part_hh, part_hh

    with torch.no_grad():
        return _place(kind, direction, hidden_size, split)


def grads_to_layout(kind: str, direction_grads: dict, hidden_size: int) -> dict[str, torch.Tensor]:
    """The oracle's gradients (same structure as a direction) placed like :func:`to_layout`: a bias on
    ``[h, x]`` enters as ``b_ih + b_hh``, so both receive its gradient."""
    return _place(kind, direction_grads, hidden_size, lambda g: (g, g))


def grads_like(layers, grads) -> list[list[dict]]:
    """Rebuild ``layers``' structure from a flat list of gradients in :func:`leaves` order."""
    it = iter(grads)
    out = []
    for dirs in layers:
        out.append([])
        for d in dirs:
            paths = [{k: next(it) for k in sorted(p)} for p in d["paths"]]
            out[-1].append({"paths": paths, "W_hr": next(it) if d["W_hr"] is not None else None})
    return out


def suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def load_into(module, kind: str, layers, hidden_size: int, gen: torch.Generator) -> None:
    """Copy the oracle's parameters into a module with torch.nn.LSTM's parameter names (``weight_ih_l0`` ...;
    ``peephole_l0``; cells: no suffix when ``layers`` is a single direction dict)."""
    with torch.no_grad():
        if isinstance(layers, dict):
            for name, value in to_layout(kind, layers, hidden_size, gen).items():
                getattr(module, name).copy_(value)
            return
        for l, dirs in enumerate(layers):
            for d, direction in enumerate(dirs):
                for name, value in to_layout(kind, direction, hidden_size, gen).items():
                    getattr(module, name + suffix(l, d)).copy_(value)


def layout_grads(kind: str, layers, grads, hidden_size: int) -> dict[str, torch.Tensor]:
    """Full parameter name -> the oracle's gradient in the module's layout."""
    out = {}
    for l, dirs in enumerate(grads_like(layers, grads)):
        for d, direction in enumerate(dirs):
            for name, value in grads_to_layout(kind, direction, hidden_size).items():
                out[name + suffix(l, d)] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# A sequence: nn.LSTM's stacking over layers and directions
# ---------------------------------------------------------------------------------------------------------


def run_sequence(kind: str, x, layers, h0, c0=None, lengths=None, between=None):
    """The whole network on a batch, one sequence at a time.

    ``x`` (T, B, I); ``layers[l][d]`` a direction (d = 1 runs backwards in time); ``h0`` (L*D, B, O);
    ``c0`` (L*D, B, K*H) = ``[c_1 | ... | c_K]`` per layer and direction (LSTM kinds), else None;
    ``lengths`` each sequence's length (None: all T; the padding past it is never read).
    ``between(l, y)`` (optional) transforms layer l's output before layer l + 1 reads it (dropout).

    State index ``l * D + d``; layer l + 1 reads ``[y_forward, y_reverse]``. Returns ``y`` (T, B, D*O), zero
    past each sequence's length, ``h_n`` (L*D, B, O) and ``c_n`` (L*D, B, K*H) (None for the GRU), each
    sequence's final states at its own last step.
    """
    T, B = x.shape[0], x.shape[1]
    lengths = [T] * B if lengths is None else list(lengths)
    D = len(layers[0])
    step = STEPS[kind]
    ys, hns, cns = [], [], []
    for b in range(B):
        inp = x[: lengths[b], b: b + 1]  # (T_b, 1, I): this sequence alone, unpadded
        h_b, c_b = [], []
        for l, dirs in enumerate(layers):
            outs = []
            for d, direction in enumerate(dirs):
                K = len(direction["paths"])
                h = h0[l * D + d, b: b + 1]
                cells = list(c0[l * D + d, b: b + 1].chunk(K, dim=-1)) if HAS_CELL[kind] else None
                order = range(inp.shape[0]) if d == 0 else range(inp.shape[0] - 1, -1, -1)
                y = [None] * inp.shape[0]
                for t in order:
                    h, cells = step(inp[t], h, cells, direction)
                    y[t] = h
                outs.append(torch.cat(y))  # (T_b, O)
                h_b.append(h[0])
                if HAS_CELL[kind]:
                    c_b.append(torch.cat(cells, dim=-1)[0])
            inp = torch.cat(outs, dim=-1).unsqueeze(1)
            if between is not None and l < len(layers) - 1:
                inp = between(l, inp)
        y_b = inp[:, 0]
        ys.append(torch.cat([y_b, y_b.new_zeros(T - y_b.shape[0], y_b.shape[1])]))
        hns.append(torch.stack(h_b))
        if HAS_CELL[kind]:
            cns.append(torch.stack(c_b))
    y = torch.stack(ys, dim=1)
    h_n = torch.stack(hns, dim=1)
    c_n = torch.stack(cns, dim=1) if HAS_CELL[kind] else None
    return y, h_n, c_n
