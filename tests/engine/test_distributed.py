"""Data-parallel trials on 2 CPU processes (gloo): same loss and gradients as one process on the global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mtbench.balancing import build_balancer
from mtbench.engine.distributed import DistEnv, ShardedBatchSampler, env_from
from mtbench.losses import build_task_loss

TASKS = ("semseg", "depth")


class NoBatchStats(nn.Module):
    """A small dense-prediction net without BatchNorm (BN would normalise each shard on its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({"semseg": nn.Conv2d(8, 6, 1), "depth": nn.Conv2d(8, 1, 1)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {t: head(features) for t, head in self.heads.items()}


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(4, 3, 8, 10, generator=g),
            "semseg": torch.randint(0, 6, (4, 8, 10), generator=g),  # no ignored pixel: equal counts per shard
            "depth": torch.rand(4, 1, 8, 10, generator=g) + 0.5}


def loss_and_grads(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    losses = {t: build_task_loss(t, dataset="synthetic_nyud") for t in TASKS}
    preds = model(batch["image"])
    balancer = build_balancer("fixed", tasks=TASKS, weights={"semseg": 1.0, "depth": 2.0})
    scaled = balancer.scale({t: losses[t](preds[t], batch[t]) for t in TASKS})
    balancer.backward(scaled)
    return sum(v.item() for v in scaled.values()), [p.grad.clone() for p in model.parameters()]


def rank_main(rank: int, world: int, store: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(NoBatchStats())
    env = DistEnv(rank, world, rank)
    shard = next(iter(ShardedBatchSampler([list(range(4))], env)))
    batch = {k: v[shard] for k, v in global_batch().items()}
    loss, grads = loss_and_grads(model, batch)
    summed = torch.tensor([loss])
    torch.distributed.all_reduce(summed)
    if rank == 0:
        torch.save({"loss": summed.item() / world, "grads": grads}, out)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    torch.manual_seed(0)
    expected_loss, expected_grads = loss_and_grads(NoBatchStats(), global_batch())
    out = tmp_path / "rank0.pt"
    mp.spawn(rank_main, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-6)
    for g, e in zip(got["grads"], expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


def test_rank_comes_from_torchrun_or_slurm_and_batches_shard_contiguously():
    assert env_from({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == DistEnv(1, 2, 1)
    assert env_from({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}) == DistEnv(3, 4, 1)
    assert env_from({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == DistEnv()  # one task: no process group
    assert list(ShardedBatchSampler([[5, 6, 7, 8]], DistEnv(1, 2, 1))) == [[7, 8]]


def torchrun_two_ranks(folder: Path, name: str, steps: int, args: list[str], port: int
                      ) -> tuple[subprocess.CompletedProcess[str], str]:
    """Write a tiny experiment `name` to folder/d.yaml and run `torchrun --nproc_per_node 2 <args>` there."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    (folder / "d.yaml").write_text(f"""name: {name}
dataset: {{name: synthetic_nyud, options: {{height: 32, width: 48, num_train: 16, num_val: 4, num_test: 4}}}}
model: {{name: shared_encoder, backbone: tiny}}
train: {{steps: {steps}, batch_size: 4, eval_batch_size: 4, eval_every: 2, checkpoint_every: 2}}
""")
    uri = f"sqlite:///{folder}/mlruns.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", f"from mtbench import tracking; tracking.ensure_store('{uri}')"],
                   check=True, env=env)
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), *args], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, uri


@pytest.mark.slow
def test_trial_runs_on_two_processes_through_torchrun(tmp_path):
    _, uri = torchrun_two_ranks(tmp_path, "ddp", 4, ["-m", "mtbench.cli", "run", "d.yaml"], port=29611)
    from mtbench import tracking

    runs = tracking.load_runs(uri, "ddp")
    assert len(runs) == 1 and list(runs["status"]) == ["FINISHED"] and runs["semseg/mIoU"].notna().all()


PRUNE_SCRIPT = """
import os
from pathlib import Path
from mtbench.config.loading import expand_trials, load_experiment
from mtbench.engine.trial import PrunedTrial, run_trial

def prune(step, metrics):
    raise PrunedTrial(f"pruned at step {step}")

trial = expand_trials(load_experiment("d.yaml"))[0]
try:
    run_trial(trial, on_validate=prune)
except PrunedTrial as err:
    Path(f"rank{os.environ['RANK']}.txt").write_text(str(err))
"""


@pytest.mark.slow
def test_pruned_trial_ends_on_every_rank(tmp_path):
    """Rank 0 alone validates; when its hook prunes the trial, rank 1 must stop too instead of waiting forever."""
    (tmp_path / "prune.py").write_text(PRUNE_SCRIPT)
    _, uri = torchrun_two_ranks(tmp_path, "ddp_prune", 6, ["prune.py"], port=29613)
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text() == "pruned at step 2"
    from mtbench import tracking

    runs = tracking.load_runs(uri, "ddp_prune")
    assert list(runs["status"]) == ["KILLED"] and runs["pruned"].tolist() == [True]
