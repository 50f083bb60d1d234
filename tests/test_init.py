"""Initialisation: "distinct" / "identical" paths, forget-gate bias, bounds, determinism, path symmetry."""

import math

import pytest
import torch

from cerebral_rnn import LSTM, CerebralLSTM, CerebralLSTMCell, LSTMCell, init

H = 5


def halves(p):
    return p[: p.shape[0] // 2], p[p.shape[0] // 2:]


@pytest.mark.parametrize("make", [lambda s: CerebralLSTM(3, H, num_layers=2, bidirectional=True, init=s),
                                  lambda s: CerebralLSTMCell(3, H, init=s)])
def test_identical_and_distinct(make):
    m = make("identical")
    for name, p in m.named_parameters():
        upper, lower = halves(p)
        assert torch.equal(upper, lower), name
        assert init.paths_equal(p)
    m = make("distinct")
    for name, p in m.named_parameters():
        upper, lower = halves(p)
        assert not torch.equal(upper, lower), name
        assert not init.paths_equal(p)


# That identical paths stay identical under training (dense, packed, cells, dropout between layers, every
# backend, every kind, both ISAs) is tested in tests/test_symmetry.py.


@pytest.mark.parametrize("forget_bias", [1.0, -2.5, 0])
def test_forget_bias_rows(forget_bias):
    m = CerebralLSTM(3, H, num_layers=2, bidirectional=True, forget_bias=forget_bias)
    bound = 1 / math.sqrt(H)
    for layer in range(2):
        for sfx in ("", "_reverse"):
            b_ih, b_hh = getattr(m, f"bias_ih_l{layer}{sfx}"), getattr(m, f"bias_hh_l{layer}{sfx}")
            for path in range(2):
                for gate in range(4):  # i, f, g, o
                    rows = slice(path * 4 * H + gate * H, path * 4 * H + (gate + 1) * H)
                    if gate == 1:
                        assert torch.all(b_ih[rows] == forget_bias) and torch.all(b_hh[rows] == 0)
                    else:
                        assert b_ih[rows].abs().max() <= bound and b_hh[rows].abs().max() <= bound
                        assert b_ih[rows].std() > 0
    cell = CerebralLSTMCell(3, H, forget_bias=forget_bias, init="identical")
    for path in range(2):
        f = slice(path * 4 * H + H, path * 4 * H + 2 * H)
        assert torch.all(cell.bias_ih[f] == forget_bias) and torch.all(cell.bias_hh[f] == 0)
    assert init.paths_equal(cell.bias_ih) and init.paths_equal(cell.bias_hh)
    for lstm in (LSTM(3, H, 2, forget_bias=forget_bias), LSTMCell(3, H, forget_bias=forget_bias)):
        b_ih = lstm.bias_ih_l1 if isinstance(lstm, LSTM) else lstm.bias_ih
        b_hh = lstm.bias_hh_l1 if isinstance(lstm, LSTM) else lstm.bias_hh
        assert torch.all(b_ih[H:2 * H] == forget_bias) and torch.all(b_hh[H:2 * H] == 0)
        assert b_ih[:H].std() > 0 and b_ih[2 * H:].std() > 0


def test_forget_bias_accepts_numpy_scalars():
    import numpy as np

    for value in (np.float32(1.5), np.float64(1.5), np.int64(2)):
        m = CerebralLSTM(3, H, forget_bias=value)
        assert torch.all(m.bias_ih_l0[H:2 * H] == float(value)) and type(m.forget_bias) is float


def test_forget_bias_without_bias_is_ignored():
    m = CerebralLSTM(3, H, bias=False, forget_bias=1.0)
    assert not [n for n, _ in m.named_parameters() if "bias" in n]


@pytest.mark.parametrize("bad,exc", [(float("nan"), ValueError), (float("inf"), ValueError),
                                     (True, TypeError),
                                     ("1", TypeError)])
def test_forget_bias_errors(bad, exc):
    for cls in (CerebralLSTM, LSTM, CerebralLSTMCell, LSTMCell):
        with pytest.raises(exc, match="forget_bias"):
            cls(3, H, forget_bias=bad)


@pytest.mark.parametrize("cls", [CerebralLSTM, LSTM, CerebralLSTMCell, LSTMCell])
def test_same_seed_same_parameters_and_bounds(cls):
    torch.manual_seed(3)
    a = cls(3, 16)
    torch.manual_seed(3)
    b = cls(3, 16)
    c = cls(3, 16)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), n
        assert not torch.equal(p, r), n
        assert p.abs().max() <= 1 / 4  # U(-1/sqrt(H), 1/sqrt(H))
        assert p.abs().max() > 0.2  # and it fills the range


def test_reset_parameters_redraws_with_scheme():
    m = CerebralLSTM(3, H, init="identical")
    before = m.weight_ih_l0.detach().clone()
    m.reset_parameters()
    assert not torch.equal(before, m.weight_ih_l0) and init.paths_equal(m.weight_ih_l0)


def test_scheme_errors():
    assert init.SCHEMES == ("distinct", "identical")
    with pytest.raises(ValueError, match="init.*distinct.*identical"):
        CerebralLSTM(3, H, init="same")
    with pytest.raises(TypeError, match="init"):
        CerebralLSTM(3, H, init=None)
    with pytest.raises(ValueError, match="init"):
        CerebralLSTMCell(3, H, init="xavier")
    with pytest.raises(ValueError, match="init"):
        init.init_cerebral_(torch.empty(8, 2), torch.empty(8, 1), None, None, 1, scheme="bogus")


@pytest.mark.parametrize("paths", [2, 3])
def test_make_paths_identical_in_place(paths):
    """Every path's block of rows becomes a copy of the first path's, in place, for each tensor given (None
    skipped); the first block is left as it was. Checked row block by row block with torch.equal against copies
    taken before the call."""
    w, b = torch.randn(4 * paths, 3), torch.randn(4 * paths)
    w_before, b_before = w.clone(), b.clone()
    init.make_paths_identical_(w, None, b, paths=paths)  # returns nothing: the tensors given are changed
    for t, before in ((w, w_before), (b, b_before)):
        rows, first = t.reshape(paths, 4, *t.shape[1:]), before[:4]
        assert not torch.equal(before[4:8], first)  # the call had something to copy
        for k in range(paths):
            assert torch.equal(rows[k], first), k
