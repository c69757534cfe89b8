"""The process group a training job runs in: one process, or one rank of a torchrun launch.

A job is a rank of a distributed run when torchrun started it (its environment carries RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT); otherwise it is a single process. The
world size is placement, never part of what the job computes: the spec fixes the global batch
and `accumulation` derives how many micro-batches each rank runs per optimizer step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


class DistributedError(RuntimeError):
    """A launch or world size the job cannot run with; the message says what to change."""


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DistributedError("training.resources.device is 'cuda' but no CUDA device is visible to this process")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DistributedError("training.resources.device is 'mps' but MPS is not available on this machine")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    strategy: str  # none (one process) | ddp | fsdp2

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def share(self, value):
        """Rank 0's JSON-able value on every rank (decisions that must not diverge)."""
        if not self.distributed:
            return value
        data = json.dumps(value).encode() if self.main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, 0)
        buf = torch.zeros(int(size), dtype=torch.uint8, device=self.device)
        if self.main:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, 0)
        return json.loads(bytes(buf.cpu().tolist()).decode())

    def close(self, clean: bool = True) -> None:
        """Leave the process group without the gloo shutdown deadlock.

        A gloo worker thread destroys each finished collective's work, which drops Python tensors
        and so needs the GIL; the process group's destructor (run when the DDP reducer is freed)
        joins those threads while the freeing thread holds the GIL. Seen here: a rank hung for
        good in ~ProcessGroupGloo after training. So every rank first waits for all collectives
        (barrier), then sleeps (GIL released) until the workers have dropped their finished work,
        and only then is the group destroyed and the model freed. `clean=False` (a rank leaving on
        an error, whose peers may be stuck in a collective it will never join) skips the barrier."""
        if self.distributed:
            if clean:
                dist.barrier()
                time.sleep(0.2)
            dist.destroy_process_group()


def join(resources: dict) -> World:
    """This process's place: a rank of the torchrun launch that started it, or the only process."""
    device_type, strategy = resources["device"], resources["strategy"]
    if not under_torchrun():
        return World(0, 1, pick_device(device_type), "none")
    if device_type not in BACKENDS:
        raise DistributedError(f"training.resources.device '{device_type}' has no torch.distributed backend; "
                               "use cpu (gloo) or cuda (nccl), or run one process")
    rank, size, local = (int(os.environ[n]) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = pick_device(device_type, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(BACKENDS[device_type], device_id=device if device.type == "cuda" else None)
    return World(rank, size, device, strategy if size > 1 else "none")


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: global_batch / (world_size x micro_batch)."""
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        micros = global_batch // micro_batch if global_batch % micro_batch == 0 else 0
        sizes = [w for w in range(1, micros + 1) if micros % w == 0]
        raise DistributedError(
            f"the global batch of {global_batch} sequences (training.micro_batch x grad_accum x resources.nproc x "
            f"nodes) does not split into {world_size} processes x micro_batch {micro_batch}: launch a world size "
            f"that divides {micros} ({', '.join(map(str, sizes))}), or change training.micro_batch")
    return global_batch // per_pass
