"""Engine helpers: the schedule, deterministic batches, atomic checkpoints, optimizer groups."""

from __future__ import annotations

import math

import pytest
import torch

from mtbench.config.schema import ScheduleConfig, TrainConfig
from mtbench.engine.batching import StepBatchSampler
from mtbench.engine.checkpoint import load_checkpoint, save_checkpoint
from mtbench.engine.trainer import build_optimizer, lr_at
from mtbench.errors import MtbenchError


def test_lr_warmup_then_poly():
    s = ScheduleConfig(name="poly", warmup_steps=4, power=0.9)
    assert lr_at(0, 1.0, s, 104) == pytest.approx(0.25)  # (0 + 1) / 4
    assert lr_at(3, 1.0, s, 104) == pytest.approx(1.0)
    assert lr_at(4, 1.0, s, 104) == pytest.approx(1.0)  # progress 0
    assert lr_at(54, 1.0, s, 104) == pytest.approx(0.5 ** 0.9)  # progress 50/100


def test_lr_cosine_with_floor():
    s = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=0.1)
    assert lr_at(0, 2.0, s, 100) == pytest.approx(2.0)
    assert lr_at(50, 2.0, s, 100) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(100, 2.0, s, 100) == pytest.approx(0.2)


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatchSampler(10, 3, seed=7, steps=8))
    resumed = list(StepBatchSampler(10, 3, seed=7, steps=8, start=5))
    assert resumed == full[5:]
    assert all(len(b) == 3 for b in full)
    assert sorted(i for b in full[:3] for i in b) == sorted(set(i for b in full[:3] for i in b))  # no repeat in epoch
    assert list(StepBatchSampler(10, 3, seed=8, steps=8)) != full
    # Draws of epoch e are e * 10 + index, so a dataset can seed the augmentation of each draw.
    assert all(0 <= i < 10 for b in full[:3] for i in b) and all(10 <= i < 20 for b in full[3:6] for i in b)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MtbenchError, match="cannot be read"):
        load_checkpoint(path)


def test_weight_decay_only_on_kernels():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer([model], TrainConfig(optimizer={"name": "adamw", "weight_decay": 0.05}))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and len(decayed["params"]) == 1
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


def test_auxiliary_loss_weights_intermediate_predictions_like_final_ones():
    from torch import nn

    from mtbench.engine.trainer import auxiliary_loss

    class Deep(nn.Module):
        auxiliary = {"scale_1": {"depth": torch.full((1, 1, 2, 2), 3.0)}, "scale_2": {"depth": torch.ones(1, 1, 1, 1)}}

    l1 = nn.L1Loss()
    batch = {"depth": torch.full((1, 1, 4, 4), 2.0)}
    # |3 - 2| = 1 and |1 - 2| = 1 (the 1x1 map is upsampled to 4x4 first), each weighted by w_depth = 0.5.
    assert auxiliary_loss(Deep(), {"depth": l1}, {"depth": 0.5}, batch).item() == pytest.approx(1.0)

    class Shallow(nn.Module):
        auxiliary: dict = {}

    assert auxiliary_loss(Shallow(), {"depth": l1}, {"depth": 0.5}, batch) is None


def test_auxiliary_task_without_labels_is_a_clear_error():
    """PAD-Net/MTI-Net auxiliary-only tasks need their labels in the trial: named, not a bare KeyError."""
    from torch import nn

    from mtbench.engine.trainer import auxiliary_loss
    from mtbench.errors import MtbenchError

    class Deep(nn.Module):
        auxiliary = {"initial": {"depth": torch.ones(1, 1, 2, 2), "edge": torch.zeros(1, 1, 2, 2)}}

    batch = {"depth": torch.full((1, 1, 2, 2), 2.0)}
    with pytest.raises(MtbenchError, match="auxiliary task 'edge'.*Add 'edge' to dataset.tasks"):
        auxiliary_loss(Deep(), {"depth": nn.L1Loss()}, {"depth": 1.0}, batch)
