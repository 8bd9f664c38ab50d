"""Data-parallel trials: one process per GPU (torchrun or SLURM tasks), torch.distributed with DDP.

The process group comes from the environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or SLURM's
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID when a job runs several tasks. Each step's global batch
(mtbench.engine.batching) is cut into equal contiguous shards, one per rank; DDP averages the gradients,
which equals the gradient of the global batch when every loss is a mean over the same number of
elements per shard (no ignored pixels) and the model has no batch statistics: BatchNorm normalises each
shard with its own statistics, so a BN model trains differently from one process on the same global batch,
unless `train.sync_bn` turns it into SyncBatchNorm (GPUs only), which shares them. Rank 0 alone tracks,
evaluates and writes checkpoints, inside `on_main`: the one place where ranks synchronise, so that every
rank passes the same points by construction.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mtbench.errors import MtbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a data-parallel trial (world_size 1: a plain single-process trial)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the process's rank from torchrun's variables, else from SLURM's when the job has several tasks."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return DistEnv(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0)))
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        return DistEnv(int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]),
                       int(environ.get("SLURM_LOCALID", 0)))
    return DistEnv()


def setup(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, NCCL on GPUs); returns this rank's device."""
    if not env.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size)
    return device


def wrap(model: torch.nn.Module, env: DistEnv, device: torch.device, *, sync_bn: bool = False) -> torch.nn.Module:
    """DDP around `model` in a data-parallel trial (the same module: evaluation uses it unwrapped).

    With `sync_bn` its BatchNorm layers become SyncBatchNorm first, in place, keeping their parameters and
    buffers (so the optimizer and checkpoints still hold them), as DeMT trains
    (`yangyangxu0/DeMT: config/t-nyud/swin/baselinemt_tiny_demt.yaml::trainer.sync_batchnorm`, Lightning's
    convert_sync_batchnorm). A single-process trial ignores it.
    """
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        check_sync_bn(sync_bn, env, device)
        # Replaces the BatchNorm children in place; the new layers hold the same Parameter and buffer objects.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_sync_bn(sync_bn: bool, env: DistEnv, device: torch.device) -> None:
    """Refuse `train.sync_bn` in a data-parallel trial on CPUs: PyTorch's SyncBatchNorm needs CUDA and NCCL
    (it raises on CPU tensors under gloo), so say so before the trial starts rather than at its first step."""
    if sync_bn and env.enabled and device.type != "cuda":
        raise MtbenchError(f"train.sync_bn needs GPUs: this {env.world_size}-process trial runs on {device.type} "
                           "(gloo), where PyTorch's SyncBatchNorm does not work. Run it on GPUs (NCCL), or set "
                           "train.sync_bn: false (each process then normalises its own shard).")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (the model itself when not wrapped)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def average_gradients(module: torch.nn.Module) -> None:
    """Average the gradients of `module`'s parameters over the processes (a no-op in one process).

    For what DDP does not wrap: a balancer's learnable weights (uncertainty's log-variances), so every
    process steps them alike. Every rank calls it at the same point of every step, like DDP's own all-reduce.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


class RankFailed(RuntimeError):
    """Rank 0 failed with an error that could not be sent to the other ranks as it was."""


def on_main(env: DistEnv, fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 alone while the other ranks wait, then end every rank the way rank 0 ended.

    Returns fn's value on rank 0 and None elsewhere. When fn raises on rank 0, the same exception is raised
    on every rank (a pruned trial, a user error), so no rank waits for a rank that has left. Every
    synchronisation of a trial goes through here: ranks that call the same code pass the same points.
    """
    if not env.enabled:
        return fn()
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except BaseException as err:  # sent to the other ranks, then raised here too
            error = err
    message: list[BaseException | None] = [_picklable(error)]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise message[0]
    return result


def _picklable(error: BaseException | None) -> BaseException | None:
    try:
        pickle.dumps(error)
        return error
    except Exception:  # an exception holding locks, tensors on a device, ...
        return RankFailed(f"rank 0 failed: {type(error).__name__}: {error}")


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, env: DistEnv) -> None:
    if batch_size % env.world_size:
        raise MtbenchError(f"train.batch_size {batch_size} is the global batch of a {env.world_size}-process "
                           f"trial and must be divisible by {env.world_size}.")


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's contiguous shard of every global batch of `batches`."""

    def __init__(self, batches: Sampler[list[int]], env: DistEnv) -> None:
        self.batches, self.env = batches, env

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            per = len(batch) // self.env.world_size
            yield batch[self.env.rank * per:(self.env.rank + 1) * per]

    def __len__(self) -> int:
        return len(self.batches)
