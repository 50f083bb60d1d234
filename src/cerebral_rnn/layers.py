r"""Sequence layers with ``torch.nn.LSTM``'s contract.

``RNN``, ``LSTM``, ``GRU`` (one path: torch's equations, run by torch's fused ops) and the Cerebral family:
``CerebralLSTM`` (Kumar 2020; ``num_paths`` LSTM paths), ``CerebralPeepholeLSTM`` and ``CerebralGRU``. Each is a
:class:`_RNNBase` over one cell kind of :mod:`cerebral_rnn.kinds`: the same parameters, checks, layer stacking,
directions, packing and state handling; only the kind and the backends differ.

Symbols: N batch size, L sequence length, D = 2 if bidirectional else 1, H_in input size, H hidden size,
K number of paths, P proj_size, H_out = P if P > 0 else H.

Inputs may be ``(L, N, H_in)`` (``(N, L, H_in)`` with ``batch_first=True``), unbatched ``(L, H_in)``, or a
``PackedSequence``; the output has the same form. Final states are taken at each sequence's own length.
Dropout is applied between layers in training only. Under autocast (CPU or CUDA) a layer with float32
parameters computes in the autocast dtype, casting its input, states and weights, as torch's fused LSTM does.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends as _backends
from . import init as _init
from . import regularise as _reg
from ._checks import check_bool, check_dropout, check_like, check_positive_int
from ._compat import autocast_dtype, autocast_enabled, under_functorch
from .backends._compile import compiling_eagerly, eager
from .backends._rules import needs_grad
from .kinds import KINDS, CellKind, HasKind, rnn_kind
from .layout import DirectionWeights, LayerSpec
from .quantization import StaysFloat
from .regularise import DirectionMasks, Regularisers, StepRegs

__all__ = ["RNN", "LSTM", "GRU", "CerebralLSTM", "CerebralPeepholeLSTM", "CerebralGRU"]


def _check_proj_size(proj_size, hidden_size: int, kind: CellKind) -> int:
    if isinstance(proj_size, bool) or not isinstance(proj_size, int):
        raise TypeError(f"proj_size: expected an int >= 0, got {type(proj_size).__name__} {proj_size!r}")
    if proj_size < 0:
        raise ValueError(f"proj_size: expected an int >= 0 (0 disables the projection), got {proj_size}")
    if proj_size and not kind.projection:
        raise ValueError(f"proj_size: only LSTM kinds project their output, got proj_size={proj_size}")
    if proj_size and proj_size >= hidden_size:
        raise ValueError(f"proj_size: expected less than hidden_size={hidden_size}, got {proj_size}")
    return int(proj_size)


def _autocast_dtype(x: Tensor, params_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a layer computes in under autocast (None when autocast is off for x's device): the autocast
    dtype for float32 parameters (as torch's fused LSTM casts them), else the parameters' own dtype."""
    device_type = x.device.type
    if not x.is_floating_point() or device_type not in ("cpu", "cuda") or not autocast_enabled(device_type):
        return None
    if params_dtype == torch.float32:
        return autocast_dtype(device_type)
    return params_dtype


@contextmanager
def _shape_checks():
    """Around argument checks: while jit tracing, a shape compared with a size is recorded as a constant, which
    is what a check means, so torch's TracerWarning about it is silenced (and only there)."""
    if not torch.jit.is_tracing():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


class _RNNBase(HasKind, StaysFloat, nn.Module):
    """Shared constructor, parameters, checks and forward driver over one cell kind."""

    _backend_names: tuple[str, ...] = ("auto", "torch", "reference")
    KIND: str  # the layer's kind: a key of cerebral_rnn.kinds.KINDS

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, num_paths: int = 1,
                 proj_size: int = 0, device=None, dtype=None, regularisers: Regularisers | None = None) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.num_paths = check_positive_int("num_paths", num_paths)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.dropout = check_dropout(dropout, num_layers)
        self.proj_size = _check_proj_size(proj_size, hidden_size, self.kind)
        kw = {"device": device, "dtype": dtype}
        spec, D = self.spec, self.num_directions
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else spec.out_size * D
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (spec.rows, layer_input), "weight_hh": (spec.rows, spec.out_size)}
                if bias:
                    shapes.update(bias_ih=(spec.rows,), bias_hh=(spec.rows,))
                if self.kind.peephole:
                    shapes["peephole"] = (self.kind.peephole_size(hidden_size, self.num_paths),)
                if self.proj_size:
                    shapes["weight_hr"] = (self.proj_size, hidden_size)
                names = []
                for name, shape in shapes.items():
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **kw)))
                    names.append(name + suffix)
                self._all_weights.append(names)
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        # plain values (a pickled module then needs no allowlisted class); read through ``regularisers``
        self._regularisers: dict = dataclasses.asdict(regularisers if regularisers is not None else Regularisers())
        if self.regularisers.layer_norm:  # gains and shifts, kept out of nn.LSTM's weight lists
            gate_rows = self.kind.gate_blocks * hidden_size * self.num_paths
            for layer in range(num_layers):
                for direction in range(D):
                    suffix = f"_l{layer}" + ("_reverse" if direction else "")
                    sizes = {"ln_ih": gate_rows, "ln_hh": gate_rows}
                    if self.kind.has_cell:
                        sizes["ln_c"] = hidden_size * self.num_paths
                    for name, n in sizes.items():
                        setattr(self, f"{name}_weight{suffix}", nn.Parameter(torch.empty(n, **kw)))
                        setattr(self, f"{name}_bias{suffix}", nn.Parameter(torch.empty(n, **kw)))

    # -- description --------------------------------------------------------------------------------------

    @property
    def regularisers(self) -> Regularisers:
        """The layer's weight dropout, recurrent dropout, zoneout and layer norm (:mod:`cerebral_rnn.regularise`)."""
        return Regularisers(**self._regularisers)

    @property
    def backend(self) -> str:
        """The backend name (``"auto"`` or one of ``available_backends(type(self))``); setting it validates."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = self._check_backend(name)

    def _check_backend(self, name) -> str:
        if not isinstance(name, str):
            raise TypeError(f"backend: expected a str, got {type(name).__name__}")
        if name not in self._backend_names:
            raise ValueError(f"backend: expected one of {list(self._backend_names)}, got {name!r}")
        return name

    @property
    def spec(self) -> LayerSpec:
        return LayerSpec(self.kind, self.num_paths, self.hidden_size, self.proj_size)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h_0", "c_0") if self.kind.has_cell else ("h_0",)

    def layer_weights(self, layer: int) -> list[DirectionWeights]:
        """The parameters of each direction of ``layer`` (absent ones None)."""
        out = []
        for direction in range(self.num_directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            out.append(DirectionWeights(*(getattr(self, n + suffix, None) for n in
                                          ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "peephole", "weight_hr"))))
        return out

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction, the parameters in ``torch.nn.LSTM``'s order."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``torch.nn.LSTM``."""

    def reset_parameters(self) -> None:
        scheme = getattr(self, "init", "distinct")
        forget = getattr(self, "forget_bias", None)
        for layer in range(self.num_layers):
            for w in self.layer_weights(layer):
                _init.init_cerebral_(w.w_ih, w.w_hh, w.b_ih, w.b_hh, self.hidden_size, scheme=scheme,
                                     forget_bias=forget, paths=self.num_paths, peephole=w.peephole,
                                     gate_blocks=self.kind.gate_blocks, forget_gate=self.kind.forget_gate)
                if w.w_hr is not None:
                    _init.uniform_((w.w_hr,), self.hidden_size)
        if self.regularisers.layer_norm:
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if name.startswith("ln_"):
                        p.fill_(1.0 if "_weight" in name else 0.0)

    def _ln_params(self, layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        names = ["ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias"]
        out = [getattr(self, n + suffix) for n in names]
        if self.kind.has_cell:
            out += [getattr(self, "ln_c_weight" + suffix), getattr(self, "ln_c_bias" + suffix)]
        else:
            out += [None, None]
        return tuple(out)

    def draw_masks(self, seq_len: int, batch_size: int) -> list[list[DirectionMasks]]:
        """The masks a training call on input of ``seq_len`` steps and ``batch_size`` sequences draws from
        torch's generator, per layer and direction, in the order the call draws them (see
        :mod:`cerebral_rnn.regularise`): seed the generator, call this, seed it again, and the call uses these."""
        regs, ref = self.regularisers, self.weight_hh_l0
        return [[_reg.draw_direction(regs, self.spec, seq_len, batch_size, ref) for _ in range(self.num_directions)]
                for _ in range(self.num_layers)]

    def _step_regs(self, layer: int, masks: list[DirectionMasks] | None, cast) -> list[StepRegs] | None:
        """Per direction, what the time loop needs; None when the step is unregularised (also in eval with only
        recurrent dropout on, which then changes nothing)."""
        regs = self.regularisers
        if not regs.in_step:
            return None
        if not self.training and not (regs.zoneout_h or regs.zoneout_c or regs.layer_norm):
            return None
        out = []
        for d in range(self.num_directions):
            m = masks[d] if masks is not None else None
            ln = self._ln_params(layer, d) if regs.layer_norm else None
            if ln is not None and cast is not None:
                ln = tuple(t if t is None else t.to(cast) for t in ln)
            h_mask = m.h if m is not None else None
            if h_mask is not None and cast is not None:
                h_mask = h_mask.to(cast)
            out.append(StepRegs(h_mask, m.zone_h if m is not None else None, m.zone_c if m is not None else None,
                                regs.zoneout_h, regs.zoneout_c, ln, self.training))
        return out

    def _masked_weights(self, weights: list[DirectionWeights], masks: list[DirectionMasks] | None):
        if masks is None or not self.regularisers.weight_dropout:
            return weights
        return [w._replace(w_hh=w.w_hh * m.weight.to(w.w_hh.dtype)) for w, m in zip(weights, masks)]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        r = self.regularisers
        for name, value in (("weight_dropout", r.weight_dropout), ("recurrent_dropout", r.recurrent_dropout),
                            ("zoneout", (r.zoneout_h, r.zoneout_c) if self.kind.has_cell else r.zoneout_h),
                            ("layer_norm", r.layer_norm), ("paths_share_masks", r.paths_share_masks)):
            if value not in (0.0, False, (0.0, 0.0)):
                s += f", {name}={value}"
        return s

    def __prepare_scriptable__(self):
        raise TypeError(
            f"torch.jit.script: {type(self).__name__} cannot be scripted: its forward chooses a backend for each "
            "call in Python (and TorchScript is deprecated); use torch.jit.trace, torch.export.export or "
            "torch.compile instead, which all run it")

    # -- forward driver ----------------------------------------------------------------------------------

    def _check_input(self, input, compute_dtype):
        ref = self.weight_ih_l0
        if isinstance(input, PackedSequence):
            x, batch_sizes, sorted_indices, unsorted_indices = input
            check_like("input", x, ref, any_float=compute_dtype is not None)
            if x.dim() != 2:
                raise ValueError(f"input: expected PackedSequence data of 2 dimensions, got {x.dim()}")
            if x.shape[-1] != self.input_size:
                raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                                 f"got {x.shape[-1]} (packed data shape {tuple(x.shape)})")
            return x, batch_sizes, sorted_indices, unsorted_indices, True
        if not isinstance(input, Tensor):
            raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
        check_like("input", input, ref, any_float=compute_dtype is not None)
        if input.dim() not in (2, 3):
            raise ValueError(f"input: expected a 2-D (unbatched) or 3-D (batched) tensor, got {input.dim()}-D "
                             f"with shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input: expected last dimension input_size={self.input_size}, "
                             f"got {input.shape[-1]} (shape {tuple(input.shape)})")
        batched = input.dim() == 3
        if input.shape[1 if batched and self.batch_first else 0] == 0:
            raise ValueError(f"input: expected a sequence length > 0, got shape {tuple(input.shape)}")
        if not batched:
            x = input.unsqueeze(1)
        elif self.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        return x, None, None, None, batched

    def _initial_states(self, hx, x: Tensor, batch: int, batched: bool, sorted_indices, compute_dtype):
        LD, spec = self.num_layers * self.num_directions, self.spec
        widths = [spec.out_size] + ([spec.cell_size] if self.kind.has_cell else [])
        if hx is None:
            return [x.new_zeros(LD, batch, w) for w in widths]
        names = self.state_names
        if len(names) == 1:
            if isinstance(hx, (tuple, list)):
                raise TypeError(f"hx: expected a Tensor h_0, got a {type(hx).__name__} of length {len(hx)}")
            hx = (hx,)
        elif not isinstance(hx, (tuple, list)) or len(hx) != len(names):
            raise TypeError(f"hx: expected a tuple ({', '.join(names)}), got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        kind_word = "batched" if batched else "unbatched"
        states = []
        for name, s, w in zip(names, hx, widths):
            check_like(name, s, self.weight_ih_l0, any_float=compute_dtype is not None)
            shape = (LD, batch, w) if batched else (LD, w)
            if name == "c_0" and self.num_paths > 1:
                one = shape[:-1] + (self.hidden_size,)  # nn.LSTM's shape: one cell state for every path
                if tuple(s.shape) == one:
                    s = s.repeat(*([1] * (s.dim() - 1)), self.num_paths)
                elif tuple(s.shape) != shape:
                    raise ValueError(f"{name}: expected shape {shape} (a cell state per path) or {one} (one for "
                                     f"every path, as torch.nn.LSTM's) for {kind_word} input, got {tuple(s.shape)}")
            elif tuple(s.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape} for {kind_word} input, got {tuple(s.shape)}")
            if not batched:
                s = s.unsqueeze(1)
            if sorted_indices is not None:
                s = s.index_select(1, sorted_indices)
            states.append(s)
        return states

    def _run_layer(self, layer: int, x: Tensor, batch_sizes: Tensor | None, states: list[Tensor], cast,
                   masks: list[DirectionMasks] | None = None):
        raise NotImplementedError

    def _layer_weights_as(self, layer: int, dtype: torch.dtype | None) -> list[DirectionWeights]:
        weights = self.layer_weights(layer)
        if dtype is None or dtype == self.weight_ih_l0.dtype:
            return weights
        return [DirectionWeights(*(t if t is None else t.to(dtype) for t in w)) for w in weights]

    def forward(self, input, hx=None):
        # Under torch.compile the whole layer runs eagerly behind one graph break (its backends choose kernels
        # from parameter values and run C++ or oneDNN code that inductor cannot lower); torch.export and jit
        # tracing record it op by op (backends.select_backend then picks traceable backends).
        if compiling_eagerly():
            return eager(self._forward_contiguous, input, hx)
        return self._forward(input, hx)

    def _forward_contiguous(self, input, hx):
        # With torch 2.13, a transposed (batch_first) tensor coming out of a graph break into a compiled
        # nn.Linear corrupted the heap in the compiled backward (aborts or NaN in most runs, also with
        # torch.nn.LSTM in place of this layer); a contiguous output did not. See docs/backends.md, "Deployment".
        output, state = self._forward(input, hx)
        return (output.contiguous() if isinstance(output, Tensor) else output), state

    def _forward(self, input, hx=None):
        data = input.data if isinstance(input, PackedSequence) else input
        compute_dtype = _autocast_dtype(data, self.weight_ih_l0.dtype) if isinstance(data, Tensor) else None
        with _shape_checks():
            x, batch_sizes, sorted_indices, unsorted_indices, batched = self._check_input(input, compute_dtype)
            batch = int(batch_sizes[0]) if batch_sizes is not None else x.shape[1]
            states0 = self._initial_states(hx, x, batch, batched, sorted_indices, compute_dtype)
        if compute_dtype is not None:
            x = x.to(compute_dtype)
            states0 = [s.to(compute_dtype) for s in states0]
        D = self.num_directions
        masks = None
        if self.training and self.regularisers.any:  # drawn first, in the documented order
            masks = self.draw_masks(len(batch_sizes) if batch_sizes is not None else x.shape[0], batch)
        finals: list[list[Tensor]] = [[] for _ in states0]
        with torch.autocast(x.device.type, enabled=False) if compute_dtype is not None else nullcontext():
            for layer in range(self.num_layers):
                # (one layer: the states as they are; a slice per call costs ~10 us, a small layer's whole step)
                layer_states = states0 if self.num_layers == 1 else [s[layer * D:(layer + 1) * D] for s in states0]
                x, layer_finals = self._run_layer(layer, x, batch_sizes, layer_states, compute_dtype,
                                                  masks[layer] if masks is not None else None)
                for acc, f in zip(finals, layer_finals):
                    acc.append(f)
                if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                    x = F.dropout(x, self.dropout, training=True)
        out_states = [torch.cat(f, dim=0) if len(f) > 1 else f[0] for f in finals]
        if batch_sizes is not None:
            output = PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                out_states = [s.index_select(1, unsorted_indices) for s in out_states]
        elif not batched:
            output = x.squeeze(1)
            out_states = [s.squeeze(1) for s in out_states]
        else:
            output = x.transpose(0, 1) if self.batch_first else x
        return output, (out_states[0] if len(out_states) == 1 else tuple(out_states))


class _TorchOpBase(_RNNBase):
    """One-path layers: torch's fused op (``"torch"``), the reference loop, and for the LSTM and GRU the native
    loop (``"native"``; ``"auto"`` picks native or torch's op)."""

    _op_name: str

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_backend: str | None = None

    def _native_layer(self, x, batch_sizes, states, weights, step_regs):
        """The native backend's output for this layer, or None where it does not run it: ``backend="native"``
        (raising where it cannot), or ``"auto"`` where native computes the call and is the faster route
        (:meth:`~cerebral_rnn.backends.native.NativeBackend.beats_torch`; always with recurrent dropout,
        zoneout or layer norm, which torch's op cannot run)."""
        if "native" not in self._backend_names or self.backend not in ("auto", "native"):
            return None
        native = _backends.BACKENDS["native"]
        spec = self.spec
        if self.backend == "native":
            reason = ("torch.func transforms (grad, vmap, ...) run only the reference backend" if under_functorch()
                      else native.supports(spec, x, batch_sizes, weights, states))
            if reason is not None:
                raise ValueError(f"backend='native' cannot run this input: {reason}; use backend='auto', "
                                 "'torch' or 'reference'")
        elif under_functorch() or not (
                step_regs is not None or native.beats_torch(spec, x, needs_grad(x, states, weights))):
            return None
        elif not _backends.native.available() or native.supports(spec, x, batch_sizes, weights, states) is not None:
            return None  # torch's op (or the reference loop, with step regularisers) computes it
        self.last_backend = "native"
        out, final = native.forward_layer(spec, x, tuple(states), weights, batch_sizes, step_regs=step_regs)
        return out, tuple(final)

    def _run_layer(self, layer, x, batch_sizes, states, cast, masks=None):
        weights = self._masked_weights(self._layer_weights_as(layer, cast), masks)
        step_regs = self._step_regs(layer, masks, cast)
        if step_regs is not None and self.backend == "torch":
            raise ValueError("backend='torch' cannot run recurrent dropout, zoneout or layer norm (torch's fused op "
                             "has no such step); use backend='auto' or 'reference'")
        result = self._native_layer(x, batch_sizes, states, weights, step_regs)
        if result is not None:
            return result
        # torch's fused op has no torch.func (vmap) rules: under a transform "auto" runs the reference loop
        if self.backend == "reference" or step_regs is not None or (self.backend == "auto" and under_functorch()):
            from .backends.reference import run_layer

            self.last_backend = "reference"
            return run_layer(self.spec, x, batch_sizes, tuple(states), weights, step_regs)
        self.last_backend = "torch"
        op = getattr(torch._VF, self._op_name)
        flat = [t for w in weights for t in w.tensors()]
        hx = states[0] if len(states) == 1 else tuple(states)
        if batch_sizes is None:
            out = op(x, hx, flat, self.bias, 1, 0.0, self.training, self.bidirectional, False)
        else:
            out = op(x, batch_sizes, hx, flat, self.bias, 1, 0.0, self.training, self.bidirectional)
        return out[0], tuple(out[1:])


class RNN(_TorchOpBase):
    r"""Elman RNN with ``torch.nn.RNN``'s contract: :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    Args: as ``torch.nn.RNN`` — ``input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None``; ``backend`` (keyword):
    ``"auto"``/``"torch"`` (torch's fused op, the same function) or ``"reference"`` (the time loop of
    :mod:`cerebral_rnn.backends.reference`).

    Inputs: ``input`` (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence;
    ``h_0`` (D*num_layers, N, H) or (D*num_layers, H), zeros when omitted.
    Outputs: ``output`` (L, N, D*H) (same form as the input), ``h_n`` (D*num_layers, N, H).

    Parameters: ``weight_ih_l{k}[_reverse]`` (H, H_in or D*H), ``weight_hh_l{k}[_reverse]`` (H, H),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (H,), from U(-1/sqrt(H), 1/sqrt(H)).

    >>> out, h_n = RNN(10, 20, num_layers=2)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    KIND = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: str = "auto", weight_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout=0.0, layer_norm: bool = False) -> None:
        regs = _reg.check_regularisers(rnn_kind(nonlinearity), weight_dropout, recurrent_dropout, zoneout,
                                       layer_norm)
        self.nonlinearity = nonlinearity  # read by ``kind`` while the parameters are made
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype, regularisers=regs)
        self._op_name = f"rnn_{nonlinearity}"
        self.backend = backend
        self.reset_parameters()

    @property
    def kind(self) -> CellKind:
        """The ``rnn`` kind with this layer's nonlinearity."""
        return rnn_kind(self.nonlinearity)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.nonlinearity == "tanh" else ", nonlinearity='relu'")


class LSTM(_TorchOpBase):
    r"""LSTM with ``torch.nn.LSTM``'s contract, equations, gate order and parameter names, ``proj_size`` included.

    :math:`i, f, g, o` from ``W_ih x + b_ih + W_hh h + b_hh`` (rows i, f, g, o), :math:`c' = \sigma(f) c +
    \sigma(i) \tanh(g)`, :math:`h' = \sigma(o) \tanh(c')` (projected, :math:`h' \leftarrow W_{hr} h'`, with
    ``proj_size > 0``). ``backend="torch"`` runs torch's fused LSTM op (oneDNN on CPU, cuDNN on GPU);
    ``"native"`` the library's compiled CPU loop (the Cerebral kernels with one path, no ``proj_size``);
    ``"reference"`` the library's Python time loop; all compute the same function (tested against
    ``torch.nn.LSTM`` to rounding). ``"auto"`` runs native on the CPU where it is the faster
    (:meth:`~cerebral_rnn.backends.native.NativeBackend.beats_torch`: training, and inference at H <= 256 with
    AVX2 or B <= 16 with AVX-512) or where a step regulariser is on, torch's op otherwise; ``last_backend``
    says which ran. ``forget_bias`` (keyword) sets the forget-gate rows of ``bias_ih`` (``bias_hh``'s to 0).

    Inputs: ``input`` as :class:`RNN`; ``(h_0, c_0)``: (D*num_layers, N, H_out) and (D*num_layers, N, H)
    (unbatched: drop N). Outputs: ``output`` (L, N, D*H_out), ``(h_n, c_n)`` shaped as ``(h_0, c_0)``.

    Parameters: ``weight_ih_l{k}[_reverse]`` (4H, H_in or D*H_out), ``weight_hh_l{k}[_reverse]`` (4H, H_out),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (4H,), with ``proj_size``
    ``weight_hr_l{k}[_reverse]`` (P, H); rows i, f, g, o.

    >>> out, (h_n, c_n) = LSTM(10, 20, num_layers=2)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
    """

    KIND = "lstm"
    _op_name = "lstm"
    _backend_names = ("auto", "torch", "native", "reference")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, forget_bias: float | None = None, backend: str = "auto",
                 weight_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout=0.0, layer_norm: bool = False) -> None:
        regs = _reg.check_regularisers(KINDS[self.KIND], weight_dropout, recurrent_dropout, zoneout, layer_norm)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype, regularisers=regs)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.backend = backend
        self.reset_parameters()


class GRU(_TorchOpBase):
    r"""GRU with ``torch.nn.GRU``'s contract, equations, gate order (r, z, n) and parameter names.

    :math:`r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr})`, :math:`z` likewise,
    :math:`n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))`, :math:`h' = (1 - z) \odot n + z \odot h`.
    ``backend="torch"`` runs torch's fused GRU op, ``"native"`` the library's compiled CPU loop (the Cerebral
    GRU's kernels with one path), ``"reference"`` the library's time loop (all the same function, tested
    against ``torch.nn.GRU``). ``"auto"`` runs native on the CPU (0.1-0.9x ``nn.GRU``'s time at every shape
    measured), torch's op where native cannot (packed input, CUDA, other dtypes).

    >>> out, h_n = GRU(10, 20)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape
    (torch.Size([5, 3, 20]), torch.Size([1, 3, 20]))
    """

    KIND = "gru"
    _op_name = "gru"
    _backend_names = ("auto", "torch", "native", "reference")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", weight_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout=0.0, layer_norm: bool = False) -> None:
        regs = _reg.check_regularisers(KINDS[self.KIND], weight_dropout, recurrent_dropout, zoneout, layer_norm)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, regularisers=regs)
        self.backend = backend
        self.reset_parameters()


class _CerebralBase(_RNNBase):
    """K paths of one kind; backends chosen per call (:mod:`cerebral_rnn.backends`)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bias: bool,
                 batch_first: bool, dropout: float, bidirectional: bool, proj_size: int, device, dtype,
                 num_paths: int, init: str, forget_bias, backend: str, regularisers: dict | None = None) -> None:
        regs = _reg.check_regularisers(KINDS[self.KIND], **(regularisers or {}))
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         num_paths=num_paths, proj_size=proj_size, device=device, dtype=dtype, regularisers=regs)
        self.init = _init.check_scheme(init)
        self.forget_bias = _init.check_forget_bias(forget_bias)
        self.backend = backend
        self.last_backend: str | None = None
        self.reset_parameters()

    def _check_backend(self, name) -> str:
        return _backends.get_backend(name, self.kind_name)

    def _run_layer(self, layer, x, batch_sizes, states, cast, masks=None):
        weights = self._masked_weights(self._layer_weights_as(layer, cast), masks)
        spec = self.spec
        step_regs = self._step_regs(layer, masks, cast)
        if step_regs is not None and self.backend in ("auto", "native"):
            # recurrent dropout, zoneout, layer norm: the native backend computes them (forward and BPTT)
            native = _backends.BACKENDS["native"]
            reason = ("torch.func transforms (grad, vmap, ...) run only the reference backend" if under_functorch()
                      else native.supports(spec, x, batch_sizes, weights, states))
            if reason is None:
                self.last_backend = "native"
                return native.forward_layer(spec, x, tuple(states), weights, batch_sizes, step_regs=step_regs)
            if self.backend == "native":
                raise ValueError(f"backend='native' cannot run this input: {reason}; use backend='auto' or "
                                 "'reference'")
        if step_regs is not None:  # what native cannot run: the reference loop
            if self.backend not in ("auto", "reference"):
                raise ValueError(f"backend={self.backend!r} cannot run recurrent dropout, zoneout or layer norm (the "
                                 "reference and native backends compute them); use backend='auto', 'native' or "
                                 "'reference'")
            from .backends.reference import run_layer

            self.last_backend = "reference"
            return run_layer(spec, x, batch_sizes, tuple(states), weights, step_regs)
        backend = _backends.select_backend(self.backend, spec, x, batch_sizes, weights, states)
        self.last_backend = backend.name
        return backend.forward_layer(spec, x, tuple(states), weights, batch_sizes)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        for name, default in (("num_paths", 2), ("init", "distinct"), ("backend", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s


class CerebralLSTM(_CerebralBase):
    r"""Cerebral LSTM layer (Kumar 2020) with ``torch.nn.LSTM``'s contract; ``num_paths`` LSTM paths.

    Each layer and direction runs K = ``num_paths`` LSTM paths (the paper's upper and lower paths for K = 2) that
    read the same ``[h(t-1), x(t)]``; their outputs are added:

    .. math::
        i_k, f_k, g_k, o_k = W_{ih,k} x_t + b_{ih,k} + W_{hh,k} h_{t-1} + b_{hh,k} \qquad (k = 1 \ldots K) \\
        c_{k,t} = \sigma(f_k) \odot c_{k,t-1} + \sigma(i_k) \odot \tanh(g_k) \\
        h_t = \textstyle\sum_k \sigma(o_k) \odot \tanh(c_{k,t}) \qquad (h_t \leftarrow W_{hr} h_t
        \text{ with } \texttt{proj\_size} > 0)

    The cell state carries every path, ``c = [c_1 | ... | c_K]``, so ``c_n`` has K*H features where ``h_n`` has
    H_out; everything else is shaped as in ``torch.nn.LSTM``. A ``c_0`` with H features (the zero state code
    written for ``nn.LSTM`` builds) starts every path from that cell state. ``num_paths=1`` is exactly
    ``torch.nn.LSTM`` (its ``state_dict`` loads into one).

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype:
            as ``torch.nn.LSTM`` (``proj_size``: h is projected to P features after the paths are summed).
        num_paths: K (keyword; default 2, the paper's cell).
        init: ``"distinct"`` (default, paths drawn independently) or ``"identical"`` (every path a copy of the
            first at start). See :mod:`cerebral_rnn.init`.
        forget_bias: optional forget-gate bias of every path.
        backend: ``"auto"`` (default) or a name from :func:`cerebral_rnn.backends.available_backends`. The
            backend that ran the last forward is in :attr:`last_backend`.
        weight_dropout, recurrent_dropout, zoneout, layer_norm, paths_share_masks: the regularisers, off by
            default (:mod:`cerebral_rnn.regularise`; the other layer classes take them too).

    Inputs: ``input`` (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence;
    ``(h_0, c_0)``: ``h_0`` (D*num_layers, N, H_out), ``c_0`` (D*num_layers, N, K*H) or (D*num_layers, N, H)
    (unbatched: drop N). Zeros when omitted.

    Outputs: ``output`` (L, N, D*H_out) in the input's form; ``h_n`` (D*num_layers, N, H_out); ``c_n``
    (D*num_layers, N, K*H).

    Parameters: ``weight_ih_l{k}[_reverse]`` (4KH, H_in or D*H_out), ``weight_hh_l{k}[_reverse]`` (4KH, H_out),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (4KH,), with ``proj_size``
    ``weight_hr_l{k}[_reverse]`` (P, H). Rows: path 1's i, f, g, o, then path 2's, ..., H rows each. Drawn from
    U(-1/sqrt(H), 1/sqrt(H)).

    >>> layer = CerebralLSTM(10, 20, num_layers=2)
    >>> out, (h_n, c_n) = layer(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 40]))
    """

    KIND = "cerebral"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, num_paths: int = 2, init: str = "distinct",
                 forget_bias: float | None = None, backend: str = "auto", weight_dropout: float = 0.0, recurrent_dropout: float = 0.0, zoneout=0.0,
                 layer_norm: bool = False, paths_share_masks: bool = False) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, num_paths, init, forget_bias, backend,
                         {"weight_dropout": weight_dropout, "recurrent_dropout": recurrent_dropout, "zoneout": zoneout,
                          "layer_norm": layer_norm, "paths_share_masks": paths_share_masks})


class CerebralPeepholeLSTM(_CerebralBase):
    r"""Cerebral peephole LSTM: K peephole-LSTM paths (Gers & Schmidhuber 2000) reading the same
    ``[h(t-1), x(t)]``, outputs added. The paper's "variants of Cerebral LSTM ... such as peephole LSTM".

    .. math::
        a^{i,f,g,o}_k = W_{ih,k} x_t + b_{ih,k} + W_{hh,k} h_{t-1} + b_{hh,k} \\
        i_k = \sigma(a^i_k + w_{ci,k} \odot c_{k,t-1}) \qquad f_k = \sigma(a^f_k + w_{cf,k} \odot c_{k,t-1}) \\
        c_{k,t} = f_k \odot c_{k,t-1} + i_k \odot \tanh(a^g_k) \qquad
        o_k = \sigma(a^o_k + w_{co,k} \odot c_{k,t}) \\
        h_t = \textstyle\sum_k o_k \odot \tanh(c_{k,t})

    ====================================  ======================  ============================================
    parameter                             shape                   rows
    ====================================  ======================  ============================================
    ``weight_ih_l{k}[_reverse]``          (4KH, H_in or D*H)      path 1 i, f, g, o, then path 2, ... (H each)
    ``weight_hh_l{k}[_reverse]``          (4KH, H)                same
    ``bias_ih_l{k}``, ``bias_hh_l{k}``    (4KH,)                  same
    ``peephole_l{k}[_reverse]``           (3KH,)                  path 1 w_ci, w_cf, w_co, then path 2, ...
    ====================================  ======================  ============================================

    Everything else (arguments, inputs, outputs, ``c = [c_1 | ... | c_K]``, ``init``, ``forget_bias``,
    ``backend``) as :class:`CerebralLSTM`, without ``proj_size``. The peephole weights start from
    U(-1/sqrt(H), 1/sqrt(H)) like every other parameter.

    >>> out, (h_n, c_n) = CerebralPeepholeLSTM(10, 20)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape, c_n.shape
    (torch.Size([5, 3, 20]), torch.Size([1, 3, 20]), torch.Size([1, 3, 40]))
    """

    KIND = "cerebral-peephole"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, num_paths: int = 2, init: str = "distinct", forget_bias: float | None = None,
                 backend: str = "auto", weight_dropout: float = 0.0, recurrent_dropout: float = 0.0, zoneout=0.0,
                 layer_norm: bool = False, paths_share_masks: bool = False) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, num_paths, init, forget_bias, backend,
                         {"weight_dropout": weight_dropout, "recurrent_dropout": recurrent_dropout, "zoneout": zoneout,
                          "layer_norm": layer_norm, "paths_share_masks": paths_share_masks})


class CerebralGRU(_CerebralBase):
    r"""Cerebral GRU: K GRU paths (``torch.nn.GRU``'s equations and gate order r, z, n) reading the same
    ``x(t)`` and ``h(t-1)``; the new state is the *mean* of the paths' updates. The paper's "other recurrent
    cells including gated recurrent units ... after modifying its internal connections similar to our cerebral
    structure".

    .. math::
        r_k = \sigma(W_{ir,k} x_t + b_{ir,k} + W_{hr,k} h_{t-1} + b_{hr,k}) \qquad
        z_k = \sigma(W_{iz,k} x_t + b_{iz,k} + W_{hz,k} h_{t-1} + b_{hz,k}) \\
        n_k = \tanh(W_{in,k} x_t + b_{in,k} + r_k \odot (W_{hn,k} h_{t-1} + b_{hn,k})) \\
        h'_k = (1 - z_k) \odot n_k + z_k \odot h_{t-1} \qquad h_t = \tfrac{1}{K} \textstyle\sum_k h'_k

    Why the mean: each path's update ``h'_k`` is a convex combination of ``n_k`` in (-1, 1) and ``h(t-1)``, so it
    stays in (-1, 1) when ``h(t-1)`` does; so does their mean. Their *sum* (the Cerebral LSTM's rule) would
    feed ``z_k * h(t-1)`` of every path back into the next state, which grows without bound (K = 2: h can double
    at every step where z is near 1). With identical paths the mean is exactly ``torch.nn.GRU``; ``num_paths=1``
    is ``torch.nn.GRU``, and the first path's rows of each parameter are a valid ``nn.GRU`` state_dict.

    Parameters: ``weight_ih_l{k}[_reverse]`` (3KH, H_in or D*H), ``weight_hh_l{k}[_reverse]`` (3KH, H),
    ``bias_ih_l{k}[_reverse]``, ``bias_hh_l{k}[_reverse]`` (3KH,); rows path 1 r, z, n, then path 2, ...
    State: ``h`` only, (D*num_layers, N, H), as ``nn.GRU``: ``output, h_n = layer(input, h_0)``.

    Arguments as ``torch.nn.GRU`` plus ``num_paths``, ``init``, ``backend`` (keywords); no forget gate, so no
    ``forget_bias``.

    >>> out, h_n = CerebralGRU(10, 20)(torch.randn(5, 3, 10))
    >>> out.shape, h_n.shape
    (torch.Size([5, 3, 20]), torch.Size([1, 3, 20]))
    """

    KIND = "cerebral-gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, num_paths: int = 2, init: str = "distinct", backend: str = "auto",
                 weight_dropout: float = 0.0, recurrent_dropout: float = 0.0, zoneout=0.0,
                 layer_norm: bool = False, paths_share_masks: bool = False) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, num_paths, init, None, backend,
                         {"weight_dropout": weight_dropout, "recurrent_dropout": recurrent_dropout, "zoneout": zoneout,
                          "layer_norm": layer_norm, "paths_share_masks": paths_share_masks})


# kind name -> the layer class that runs it (each kind names its class: cerebral_rnn.kinds.CellKind.layer)
LAYER_CLASSES: dict[str, type[_RNNBase]] = {name: globals()[kind.layer] for name, kind in KINDS.items()}
assert all(cls.KIND == name for name, cls in LAYER_CLASSES.items())
