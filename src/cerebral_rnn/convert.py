r"""Weight conversions.

* :func:`lstm_from_torch` / :func:`lstm_to_torch`: our :class:`~cerebral_rnn.LSTM` and ``torch.nn.LSTM`` share
  parameter names, shapes and gate order (``proj_size`` included), so conversion copies the state_dict.
* :func:`cerebral_to_lstm2h`: the exact equivalent ``torch.nn.LSTM`` of a :class:`~cerebral_rnn.CerebralLSTM`
  with K paths (the name is for the paper's K = 2). A K-path Cerebral LSTM of hidden size H is a standard LSTM
  of hidden size K*H whose hidden state is ``h' = [o_1 tanh(c_1), ..., o_K tanh(c_K)]`` (so ``h`` is the sum of
  its K blocks) and whose cell state is ``[c_1 | ... | c_K]`` (:mod:`cerebral_rnn.layout`):

  - gate rows interleaved per gate: ``[i_1; ...; i_K | f_1; ... | g_1; ... | o_1; ...; o_K]``;
  - recurrent weight ``[W_hh, ..., W_hh]`` (4KH x KH, the same block K times), because
    ``W_hh h = sum_k W_hh h'_k``;
  - layers above the first read ``[y'_1, ..., y'_K]`` per direction, so their input weight repeats each
    direction's H columns K times;
  - initial state ``h_0' = [h_0, 0, ..., 0]``, ``c_0' = c_0``; read back with :func:`cerebral_output_from_lstm2h`;
  - with ``proj_size = P``: ``torch.nn.LSTM(I, K*H, proj_size=P)`` with ``W_hr' = [W_hr, ..., W_hr]``; its
    hidden state is the Cerebral one, so no tiling of ``W_hh``, no zero padding and no folding.

  It is exact without dropout (``eval()`` or ``dropout=0``): dropout on the K*H-wide output is another model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .layers import LSTM, CerebralLSTM
from .layout import fold_paths, lstm_gate_order, vendor_initial_state, vendor_lstm_weights

__all__ = [
    "lstm_from_torch",
    "lstm_to_torch",
    "cerebral_to_lstm2h",
    "cerebral_from_lstm2h",
    "cerebral_state_to_lstm2h",
    "cerebral_output_from_lstm2h",
]

_CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional", "proj_size")


def _param_like(module: nn.Module) -> dict:
    p = next(module.parameters())
    return {"device": p.device, "dtype": p.dtype}


def lstm_from_torch(module: nn.LSTM) -> LSTM:
    """Our :class:`~cerebral_rnn.LSTM` with ``module``'s configuration and a copy of its weights."""
    if not isinstance(module, nn.LSTM):
        raise TypeError(f"module: expected torch.nn.LSTM, got {type(module).__name__}")
    out = LSTM(**{k: getattr(module, k) for k in _CONFIG}, dropout=module.dropout, **_param_like(module))
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out


def lstm_to_torch(module: LSTM) -> nn.LSTM:
    """A ``torch.nn.LSTM`` with ``module``'s configuration and a copy of its weights."""
    if not isinstance(module, LSTM):
        raise TypeError(f"module: expected cerebral_rnn.LSTM, got {type(module).__name__}")
    out = nn.LSTM(**{k: getattr(module, k) for k in _CONFIG}, dropout=module.dropout, **_param_like(module))
    out.load_state_dict(module.state_dict())
    out.train(module.training)
    return out


def cerebral_to_lstm2h(module: CerebralLSTM) -> nn.LSTM:
    """The exact equivalent ``torch.nn.LSTM(input_size, K*H, num_layers, proj_size=P, ...)`` of a CerebralLSTM
    with K paths (a copy).

    Feed it :func:`cerebral_state_to_lstm2h` of the Cerebral initial state and read its results with
    :func:`cerebral_output_from_lstm2h`. Exact without dropout (the copy has ``dropout=0``).
    """
    if not isinstance(module, CerebralLSTM):
        raise TypeError(f"module: expected CerebralLSTM, got {type(module).__name__}")
    spec, D = module.spec, module.num_directions
    K, H = spec.paths, spec.hidden_size
    out = nn.LSTM(module.input_size, K * H, module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  bidirectional=module.bidirectional, proj_size=module.proj_size, **_param_like(module))
    tile_inputs = D if not module.proj_size else 0  # upper layers read the K*H-wide outputs per direction
    with torch.no_grad():
        for layer in range(module.num_layers):
            for d, w in enumerate(module.layer_weights(layer)):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
                names += ["weight_hr"] if module.proj_size else []
                values = vendor_lstm_weights(w, spec, input_directions=tile_inputs if layer else 0)
                for name, value in zip(names, values):
                    getattr(out, name + suffix).copy_(value)
    out.train(module.training)
    return out


def cerebral_from_lstm2h(module: nn.LSTM, init: str = "distinct", num_paths: int = 2) -> CerebralLSTM:
    """Inverse of :func:`cerebral_to_lstm2h` for ``num_paths`` paths. Raises ``ValueError`` if ``module`` is not
    of that tied form."""
    if not isinstance(module, nn.LSTM):
        raise TypeError(f"module: expected torch.nn.LSTM, got {type(module).__name__}")
    K, P = num_paths, module.proj_size
    if module.hidden_size % K:
        raise ValueError(f"module: expected a hidden_size divisible by num_paths={K}, got {module.hidden_size}")
    H = module.hidden_size // K
    if P and P >= H:
        raise ValueError(f"module: expected proj_size < hidden_size / num_paths = {H}, got proj_size={P}")
    D = 2 if module.bidirectional else 1
    out = CerebralLSTM(module.input_size, H, module.num_layers, bias=module.bias, batch_first=module.batch_first,
                       bidirectional=module.bidirectional, proj_size=P, init=init, num_paths=K,
                       **_param_like(module))
    inverse = torch.argsort(lstm_gate_order(H, K))

    def tied(t: Tensor, width: int) -> bool:  # columns of the form [A, A, ..., A] (K blocks of ``width``)
        blocks = t.split(width, dim=1)
        return all(torch.equal(blocks[0], b) for b in blocks[1:])

    with torch.no_grad():
        for layer in range(module.num_layers):
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                w_ih2 = getattr(module, "weight_ih" + suffix)[inverse]
                w_hh2 = getattr(module, "weight_hh" + suffix)[inverse]
                if P:
                    w_hr2 = getattr(module, "weight_hr" + suffix)
                    if not tied(w_hr2, H):
                        raise ValueError(f"module: weight_hr{suffix} is not of the form [W, ..., W]; "
                                         "not a Cerebral LSTM")
                    getattr(out, "weight_hr" + suffix).copy_(w_hr2[:, :H])
                elif not tied(w_hh2, H):
                    raise ValueError(f"module: weight_hh{suffix} is not of the form [W, ..., W]; not a Cerebral LSTM")
                if layer and not P:
                    per_dir = w_ih2.split(K * H, dim=1)
                    if not all(tied(block, H) for block in per_dir):
                        raise ValueError(f"module: weight_ih{suffix} does not repeat its input columns "
                                         f"{K} times per direction")
                    w_ih2 = torch.cat([block[:, :H] for block in per_dir], dim=1)
                getattr(out, "weight_ih" + suffix).copy_(w_ih2)
                getattr(out, "weight_hh" + suffix).copy_(w_hh2 if P else w_hh2[:, :H])
                if module.bias:
                    getattr(out, "bias_ih" + suffix).copy_(getattr(module, "bias_ih" + suffix)[inverse])
                    getattr(out, "bias_hh" + suffix).copy_(getattr(module, "bias_hh" + suffix)[inverse])
    out.train(module.training)
    return out


def cerebral_state_to_lstm2h(h_0: Tensor, c_0: Tensor, num_paths: int = 2, proj_size: int = 0,
                             hidden_size: int | None = None) -> tuple[Tensor, Tensor]:
    """The LSTM(K*H) initial state of a Cerebral initial state: ``([h_0, 0, ..., 0], c_0)`` (``(h_0, c_0)`` with
    a projection).

    ``c_0`` may have K*H features, or H (one cell state for every path, as CerebralLSTM accepts): it is then
    repeated for every path. H is ``h_0``'s width without a projection; with ``proj_size`` pass ``hidden_size``.
    """
    H = hidden_size if hidden_size is not None else (None if proj_size else h_0.shape[-1])
    if H is not None and num_paths > 1 and c_0.shape[-1] == H:
        c_0 = c_0.repeat(*([1] * (c_0.dim() - 1)), num_paths)
    return vendor_initial_state(h_0, c_0, num_paths, projected=bool(proj_size))


def cerebral_output_from_lstm2h(output, state: tuple[Tensor, Tensor], hidden_size: int, num_paths: int = 2,
                                proj_size: int = 0):
    """Read a Cerebral result from the LSTM(K*H) result: sums the K H-wide blocks of every direction (nothing
    to do with a projection).

    ``output``: a tensor (..., D*K*H) or a PackedSequence; ``state``: ``(h_n, c_n)`` of the LSTM(K*H).
    Returns ``(output, (h_n, c_n))`` shaped as CerebralLSTM's.
    """
    if proj_size:
        return output, state

    def fold(y: Tensor) -> Tensor:
        return fold_paths(y, hidden_size, num_paths)

    h_n, c_n = state
    if isinstance(output, PackedSequence):
        output = output._replace(data=fold(output.data))
    else:
        output = fold(output)
    return output, (fold(h_n), c_n)
