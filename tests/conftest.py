import pytest
import torch

# The tensors here are tiny: one thread is faster than two (and the CI machines are shared).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global seed (parameter init draws from it)."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
