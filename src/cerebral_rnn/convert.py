r"""Weight conversions.

* :func:`lstm_from_torch` / :func:`lstm_to_torch`: our :class:`~cerebral_rnn.LSTM` and ``torch.nn.LSTM`` share
  parameter names, shapes and gate order, so conversion copies the state_dict.
* :func:`cerebral_to_lstm2h`: the exact equivalent ``torch.nn.LSTM`` of a :class:`~cerebral_rnn.CerebralLSTM`
  (DESIGN.md, identity A). A Cerebral LSTM of hidden size H is a standard LSTM of hidden size 2H whose hidden
  state is ``h' = [Uo*tanh(UC), Lo*tanh(LC)]`` (so ``h = h'[:H] + h'[H:]``) and whose cell state is
  ``[UC | LC]``:

  - gate rows interleaved per gate: ``[i_U; i_L | f_U; f_L | g_U; g_L | o_U; o_L]``;
  - recurrent weight ``[W_hh, W_hh]`` (8H x 2H, the same block twice), because ``W_hh h = W_hh h'_U + W_hh h'_L``;
  - layers above the first read ``[y'_U, y'_L]`` per direction, so their input weight repeats each
    direction's H columns twice;
  - initial state ``h_0' = [h_0, 0]``, ``c_0' = c_0``; read back with :func:`cerebral_output_from_lstm2h`.

  It is exact without dropout (``eval()`` or ``dropout=0``): dropout on the 2H-wide output is another model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .layers import LSTM, CerebralLSTM

__all__ = [
    "lstm_from_torch",
    "lstm_to_torch",
    "cerebral_to_lstm2h",
    "cerebral_from_lstm2h",
    "cerebral_state_to_lstm2h",
    "cerebral_output_from_lstm2h",
    "lstm2h_gate_order",
    "lstm2h_weights",
]

_CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional")


def _param_like(module: nn.Module) -> dict:
    p = next(module.parameters())
    return {"device": p.device, "dtype": p.dtype}


def lstm_from_torch(module: nn.LSTM) -> LSTM:
    """Our :class:`~cerebral_rnn.LSTM` with ``module``'s configuration and a copy of its weights."""
    if not isinstance(module, nn.LSTM):
        raise TypeError(f"module: expected torch.nn.LSTM, got {type(module).__name__}")
    if module.proj_size:
        raise ValueError(f"module: LSTM with proj_size={module.proj_size} is not supported, expected 0")
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


def lstm2h_gate_order(hidden_size: int, device=None) -> Tensor:
    """Row indices that take Cerebral rows (U i,f,g,o, L i,f,g,o) to LSTM(2H) rows (i_U, i_L, f_U, f_L, ...)."""
    H = hidden_size
    blocks = [torch.arange(H, device=device) + H * (path * 4 + gate) for gate in range(4) for path in range(2)]
    return torch.cat(blocks)


def lstm2h_weights(w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, hidden_size: int,
                   input_directions: int = 0) -> list[Tensor]:
    """The LSTM(2H) weights of one Cerebral layer/direction, as differentiable functions of its weights.

    ``input_directions``: 0 for the first layer (input read as is); otherwise the number of directions of the
    layer below, whose 2H-wide outputs per direction are read, so each direction's H input columns repeat.
    Returns ``[w_ih', w_hh', b_ih', b_hh']`` (biases omitted when None).
    """
    H = hidden_size
    order = lstm2h_gate_order(H, w_ih.device)
    w_ih2 = w_ih.index_select(0, order)
    if input_directions:
        cols = [w_ih2[:, d * H:(d + 1) * H] for d in range(input_directions)]
        w_ih2 = torch.cat([c for col in cols for c in (col, col)], dim=1)
    w_hh2 = w_hh.index_select(0, order)
    out = [w_ih2, torch.cat([w_hh2, w_hh2], dim=1)]
    out += [b.index_select(0, order) for b in (b_ih, b_hh) if b is not None]
    return out


def cerebral_to_lstm2h(module: CerebralLSTM) -> nn.LSTM:
    """The exact equivalent ``torch.nn.LSTM(input_size, 2H, num_layers, ...)`` of a CerebralLSTM (a copy).

    Feed it :func:`cerebral_state_to_lstm2h` of the Cerebral initial state and read its results with
    :func:`cerebral_output_from_lstm2h`. Exact without dropout (the copy has ``dropout=0``).
    """
    if not isinstance(module, CerebralLSTM):
        raise TypeError(f"module: expected CerebralLSTM, got {type(module).__name__}")
    H, D = module.hidden_size, module.num_directions
    out = nn.LSTM(module.input_size, 2 * H, module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  bidirectional=module.bidirectional, **_param_like(module))
    with torch.no_grad():
        for layer in range(module.num_layers):
            for d, ws in enumerate(module.layer_weights(layer)):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
                for name, value in zip(names, lstm2h_weights(*ws, H, input_directions=D if layer else 0)):
                    getattr(out, name + suffix).copy_(value)
    out.train(module.training)
    return out


def cerebral_from_lstm2h(module: nn.LSTM, init: str = "distinct") -> CerebralLSTM:
    """Inverse of :func:`cerebral_to_lstm2h`. Raises ``ValueError`` if ``module`` is not of that tied form."""
    if not isinstance(module, nn.LSTM):
        raise TypeError(f"module: expected torch.nn.LSTM, got {type(module).__name__}")
    if module.hidden_size % 2 or module.proj_size:
        raise ValueError(f"module: expected an even hidden_size and proj_size=0, got hidden_size="
                         f"{module.hidden_size}, proj_size={module.proj_size}")
    H = module.hidden_size // 2
    D = 2 if module.bidirectional else 1
    out = CerebralLSTM(module.input_size, H, module.num_layers, bias=module.bias, batch_first=module.batch_first,
                       bidirectional=module.bidirectional, init=init, **_param_like(module))
    inverse = torch.argsort(lstm2h_gate_order(H))
    with torch.no_grad():
        for layer in range(module.num_layers):
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                w_ih2 = getattr(module, "weight_ih" + suffix)[inverse]
                w_hh2 = getattr(module, "weight_hh" + suffix)[inverse]
                if not torch.equal(w_hh2[:, :H], w_hh2[:, H:]):
                    raise ValueError(f"module: weight_hh{suffix} is not of the form [W, W]; not a Cerebral LSTM")
                if layer:
                    blocks = w_ih2.split(H, dim=1)
                    if any(not torch.equal(blocks[2 * k], blocks[2 * k + 1]) for k in range(D)):
                        raise ValueError(f"module: weight_ih{suffix} does not repeat its input columns in pairs")
                    w_ih2 = torch.cat(blocks[::2], dim=1)
                getattr(out, "weight_ih" + suffix).copy_(w_ih2)
                getattr(out, "weight_hh" + suffix).copy_(w_hh2[:, :H])
                if module.bias:
                    getattr(out, "bias_ih" + suffix).copy_(getattr(module, "bias_ih" + suffix)[inverse])
                    getattr(out, "bias_hh" + suffix).copy_(getattr(module, "bias_hh" + suffix)[inverse])
    out.train(module.training)
    return out


def cerebral_state_to_lstm2h(h_0: Tensor, c_0: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM(2H) initial state of a Cerebral initial state: ``([h_0, 0], c_0)``."""
    return torch.cat([h_0, torch.zeros_like(h_0)], dim=-1), c_0


def cerebral_output_from_lstm2h(output, state: tuple[Tensor, Tensor], hidden_size: int):
    """Read a Cerebral result from the LSTM(2H) result: sums the two H-wide halves of every direction.

    ``output``: a tensor (..., D*2H) or a PackedSequence; ``state``: ``(h_n, c_n)`` of the LSTM(2H).
    Returns ``(output, (h_n, c_n))`` shaped as CerebralLSTM's.
    """
    H = hidden_size

    def fold(y: Tensor) -> Tensor:
        return y.unflatten(-1, (-1, 2, H)).sum(-2).flatten(-2)

    h_n, c_n = state
    if isinstance(output, PackedSequence):
        output = output._replace(data=fold(output.data))
    else:
        output = fold(output)
    return output, (fold(h_n), c_n)
