"""Process groups for ``torchrun`` (DistributedDataParallel): NCCL on GPU, gloo on the CPU.

``torchrun --nproc_per_node=N train.py ...`` sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
``init_distributed`` joins the group when WORLD_SIZE > 1. Under ``hydra/launcher=slurm`` with several tasks per
job, submitit's SLURM variables are exported as those same variables first. Rank 0 alone writes metrics,
checkpoints and logs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from normrepro.errors import ConfigError

_RENDEZVOUS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistInfo:
    """This process's rank, world size, local rank and device (one process: rank 0 of 1)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        """More than one process (DDP)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes metrics, checkpoints and logs."""
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (else a single-process DistInfo)."""
    if ("WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
            and int(os.environ.get("SLURM_NTASKS", "1")) > 1):  # hydra/launcher=slurm with tasks_per_node > 1
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if "RANK" in os.environ and "WORLD_SIZE" not in os.environ:
            raise ConfigError("RANK is set but WORLD_SIZE is not: launch several processes with "
                              "torchrun --nproc_per_node=N train.py ...")
        return DistInfo(device=device)
    missing = [k for k in _RENDEZVOUS if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but the rendezvous variables {', '.join(missing)} are missing; "
                          f"launch with torchrun --nproc_per_node=N train.py ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"cannot join the {backend} process group at "
                              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({first})") from None
    return DistInfo(rank, world, local_rank, device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes in place (unchanged without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
