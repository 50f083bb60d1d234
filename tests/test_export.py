"""Deployment: a model holding a CerebralLSTM (default backend) under torch.export and torch.compile."""

from __future__ import annotations

import torch
from helpers import skip_unless_native
from torch import nn

from cerebral_rnn import CerebralLSTM

H = 64
B_INFER = 256
B_TRAIN = 64


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = CerebralLSTM(4, H, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * H, 3)

    def forward(self, x):
        y, (_, c_n) = self.rnn(x)
        return self.head(y), c_n


def _reference(model: Tagger, x):
    model.rnn.backend = "reference"
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.rnn.backend = "auto"


def test_torch_export_matches_eager():
    torch.manual_seed(0)
    model = Tagger().eval()
    skip_unless_native()
    x = torch.randn(B_INFER, 5, 4)  # eager "auto" picks "native", which export cannot record
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("lstm" in t for t in targets), targets  # identity A: one aten.lstm per layer
    got = program.module()(x)
    want = _reference(model, x)
    with torch.no_grad():
        eager = model(x)
    assert model.rnn.last_backend == "native"
    for g, w, e in zip(got, want, eager):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_torch_compile_matches_reference_forward_and_backward():
    """torch.compile runs the layer eagerly behind a graph break, with its fast CPU kernel. batch_first: the
    layer hands the compiled head a contiguous output (a transposed one made torch 2.13's compiled backward
    corrupt the heap, see layers.py)."""
    skip_unless_native()
    torch.manual_seed(0)
    model = Tagger().train()
    compiled = torch.compile(model)
    x = torch.randn(B_TRAIN, 5, 4)
    out, c_n = compiled(x)
    assert model.rnn.last_backend == "native"  # runs eagerly behind a graph break
    (out.square().sum() + c_n.sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.rnn.backend = "reference"
    out_ref, c_ref = model(x)
    (out_ref.square().sum() + c_ref.sum()).backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        # float32 sums in a different order: 1e-5 relative to the gradient's largest entry
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-5 * p.grad.abs().max().item())
