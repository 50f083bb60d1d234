"""Small helpers shared by the tests (no assertions here)."""

from __future__ import annotations

import torch

from cerebral_rnn import (
    CerebralGRU,
    CerebralGRUCell,
    CerebralLSTM,
    CerebralLSTMCell,
    CerebralPeepholeLSTM,
    CerebralPeepholeLSTMCell,
)

# the Cerebral layer and one-step cell of each kind
LAYERS = {"lstm": CerebralLSTM, "peephole": CerebralPeepholeLSTM, "gru": CerebralGRU}
CELLS = {"lstm": CerebralLSTMCell, "peephole": CerebralPeepholeLSTMCell, "gru": CerebralGRUCell}


def random_states(m, batch: int, seed: int = 2):
    """A random (h_0, c_0) for CerebralLSTM ``m``: h_0 (L*D, B, H), c_0 (L*D, B, 2H), in m's dtype."""
    g = torch.Generator().manual_seed(seed)
    LD, H = m.num_layers * m.num_directions, m.hidden_size
    dtype = m.weight_ih_l0.dtype
    return (torch.randn(LD, batch, H, generator=g, dtype=dtype),
            torch.randn(LD, batch, 2 * H, generator=g, dtype=dtype))
