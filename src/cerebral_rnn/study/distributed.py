"""One process, or a torchrun process group (gloo on CPU, nccl on CUDA) for DistributedDataParallel.

Under ``torchrun`` the runs go one after another and every global batch is split into equal contiguous shards,
one per rank; DistributedDataParallel averages the gradients, so N processes compute what one computes at the
same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def setup_distributed(device: str) -> Dist:
    """One process, or (under torchrun: WORLD_SIZE > 1) a process group: gloo on CPU, nccl on CUDA."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(rank, world, dev)


def sum_over_ranks(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """All-reduce (sum) a CPU tensor over the process group, on the group's device (nccl takes only CUDA
    tensors); returned on the CPU."""
    on_device = values.to(dist.device)
    torch.distributed.all_reduce(on_device)
    return on_device.cpu()
