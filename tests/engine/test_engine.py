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


def test_checkpoints_keep_the_previous_one_and_fall_back_to_it(tmp_path):
    from mtbench.engine.checkpoint import load_resume_checkpoint, previous_path

    path = tmp_path / "last.pt"
    assert load_resume_checkpoint(path) is None
    for step in (1, 2, 3):
        save_checkpoint(path, {"step": step}, keep_previous=True)
    assert load_checkpoint(path)["step"] == 3 and load_checkpoint(previous_path(path))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]
    path.write_bytes(path.read_bytes()[:20])  # truncated by a crash or a full disk
    with pytest.warns(UserWarning, match="Resuming from the previous checkpoint .* \\(step 2\\)"):
        assert load_resume_checkpoint(path)["step"] == 2
    previous_path(path).write_bytes(b"garbage")
    with pytest.raises(MtbenchError, match="no readable checkpoint to resume from: .*Rerun with --fresh"):
        load_resume_checkpoint(path)


def test_a_full_disk_is_one_message_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    from mtbench.engine import checkpoint

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(MtbenchError, match=r"no space left on the device of .* needs about 0\.0 MiB"):
        save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(10)})
    assert list(tmp_path.iterdir()) == []


def test_a_second_holder_of_a_trial_lock_is_told_who_holds_it(tmp_path):
    import subprocess
    import sys

    from mtbench.locks import Busy, exclusive

    lock = tmp_path / ".trial.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from mtbench.locks import exclusive\n"
        f"with exclusive(Path({str(lock)!r}), wait=False, what='t'):\n"
        "    print('held', flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"trial x is in use by process {holder.pid} on"), \
                exclusive(lock, wait=False, what="trial x"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive(lock, wait=False, what="trial x"):  # released when its holder died, even by SIGKILL
        pass


def test_weight_decay_only_on_kernels():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer([model], TrainConfig(optimizer={"name": "adamw", "weight_decay": 0.05}))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and len(decayed["params"]) == 1
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


def test_auxiliary_losses_join_their_task_summed_over_intermediate_predictions():
    from torch import nn

    from mtbench.engine.trainer import auxiliary_losses, joined

    class Deep(nn.Module):
        auxiliary = {"scale_1": {"depth": torch.full((1, 1, 2, 2), 3.0)}, "scale_2": {"depth": torch.ones(1, 1, 1, 1)}}

    l1 = nn.L1Loss()
    batch = {"depth": torch.full((1, 1, 4, 4), 2.0)}
    # |3 - 2| = 1 and |1 - 2| = 1 (the 1x1 map is upsampled to 4x4 first): 2 for depth, added to its final loss,
    # so the task's fixed scale and the balancer weight both (as MTINetLoss/PADNetLoss weight them).
    auxiliary = auxiliary_losses(Deep(), {"depth": l1}, batch)
    assert auxiliary["depth"].item() == pytest.approx(2.0)
    assert joined({"depth": torch.tensor(0.25)}, auxiliary)["depth"].item() == pytest.approx(2.25)

    class Shallow(nn.Module):
        auxiliary: dict = {}

    assert auxiliary_losses(Shallow(), {"depth": l1}, batch) == {}


def test_auxiliary_task_without_labels_is_a_clear_error():
    """PAD-Net/MTI-Net auxiliary-only tasks need their labels in the trial: named, not a bare KeyError."""
    from torch import nn

    from mtbench.engine.trainer import auxiliary_losses
    from mtbench.errors import MtbenchError

    class Deep(nn.Module):
        auxiliary = {"initial": {"depth": torch.ones(1, 1, 2, 2), "edge": torch.zeros(1, 1, 2, 2)}}

    batch = {"depth": torch.full((1, 1, 2, 2), 2.0)}
    with pytest.raises(MtbenchError, match="auxiliary task 'edge'.*Add 'edge' to dataset.tasks"):
        auxiliary_losses(Deep(), {"depth": nn.L1Loss()}, batch)


# ---- released-recipe options: per-epoch schedule, Adam with coupled L2, decay on every parameter, SyncBN ----


def test_lr_poly_per_epoch_steps_once_per_epoch():
    # 10 steps, 3 per epoch: the progress of each epoch's first step (0, 3, 6, 9) / 10, held for the epoch.
    s = ScheduleConfig(name="poly", power=1.0, per="epoch")
    assert [lr_at(k, 1.0, s, 10, steps_per_epoch=3) for k in range(10)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.7, 0.7, 0.7, 0.4, 0.4, 0.4, 0.1])
    # MTI-Net: 4 epochs of 5 steps, poly 0.9 -> base * (1 - e / 4) ** 0.9 in epoch e.
    s = ScheduleConfig(name="poly", power=0.9, per="epoch")
    assert [lr_at(k, 2.0, s, 20, steps_per_epoch=5) for k in (0, 4, 5, 9, 10, 19)] == pytest.approx(
        [2.0, 2.0, 2.0 * 0.75 ** 0.9, 2.0 * 0.75 ** 0.9, 2.0 * 0.5 ** 0.9, 2.0 * 0.25 ** 0.9])
    # The default (per step) is unchanged: step 3 of 10 has progress 0.3.
    assert lr_at(3, 1.0, ScheduleConfig(name="poly", power=1.0), 10, steps_per_epoch=3) == pytest.approx(0.7)
    assert lr_at(4, 1.0, ScheduleConfig(name="poly", power=1.0), 10) == pytest.approx(0.6)


def test_lr_per_epoch_keeps_warmup_per_step_and_needs_the_epoch_length():
    # Warm-up 2 steps, 3 steps per epoch, 10 steps: steps 0, 1 warm up (0.5, 1.0); step 2 is in epoch 0, whose
    # decay starts at the end of warm-up (progress 0); epoch 1 (steps 3-5) from step 3: (3 - 2) / 8 = 0.125.
    s = ScheduleConfig(name="poly", power=1.0, warmup_steps=2, per="epoch")
    assert [lr_at(k, 1.0, s, 10, steps_per_epoch=3) for k in range(7)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.875, 0.875, 0.5])
    c = ScheduleConfig(name="cosine", per="epoch")
    assert lr_at(5, 1.0, c, 10, steps_per_epoch=5) == pytest.approx(0.5)  # cos(pi / 2): epoch 1 starts at 5/10
    assert lr_at(9, 1.0, c, 10, steps_per_epoch=5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_at(5, 1.0, c, 10)


def _linear_at(weight: float, bias: float, grad: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(weight)
        layer.bias.fill_(bias)
    layer.weight.grad, layer.bias.grad = torch.full((1, 1), grad), torch.full((1,), grad)
    return layer


@pytest.mark.parametrize(("name", "decay_on", "weight", "bias"), [
    # Adam, coupled L2: g' = g + wd * p = -0.1 + 0.1 * 2 = 0.1; the first step moves by lr * g' / (|g'| + eps),
    # so the kernel goes 2 -> 1.9 against its raw gradient; the bias (not decayed) follows g: 2 -> 2.1.
    ("adam", "kernels", 1.9, 2.1),
    ("adam", "all", 1.9, 1.9),  # decay_on all: the bias is decayed too
    # AdamW, decoupled: p * (1 - lr * wd) - lr * g / (|g| + eps) = 2 * 0.99 + 0.1 = 2.08.
    ("adamw", "kernels", 2.08, 2.1),
    ("adamw", "all", 2.08, 2.08),
    # SGD, coupled L2: p - lr * (g + wd * p) = 2 - 0.1 * 0.1 = 1.99; bias without decay: 2 + 0.01.
    ("sgd", "kernels", 1.99, 2.01),
    ("sgd", "all", 1.99, 1.99),
])
def test_first_optimizer_step_matches_the_hand_formula(name, decay_on, weight, bias):
    layer = _linear_at(2.0, 2.0, -0.1)
    opt = build_optimizer([layer], TrainConfig(optimizer={"name": name, "lr": 0.1, "weight_decay": 0.1,
                                                          "decay_on": decay_on}))
    opt.step()
    assert layer.weight.item() == pytest.approx(weight, abs=1e-6)
    assert layer.bias.item() == pytest.approx(bias, abs=1e-6)


def test_adam_is_torch_adam_with_coupled_weight_decay():
    # Three steps of build_optimizer's adam = torch.optim.Adam(weight_decay=wd) on the same gradients.
    torch.manual_seed(0)
    ours, ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer([ours], TrainConfig(optimizer={"name": "adam", "lr": 0.01, "weight_decay": 0.5,
                                                         "decay_on": "all"}))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    torch_adam = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.5)
    for _ in range(3):
        x = torch.randn(4, 3)
        for model, optimizer in ((ours, opt), (ref, torch_adam)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b)


def test_decay_on_all_puts_norms_and_biases_in_the_decayed_group():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer([model], TrainConfig(optimizer={"name": "sgd", "weight_decay": 5e-4, "decay_on": "all"}))
    (group,) = opt.param_groups
    assert group["weight_decay"] == 5e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}  # conv bias, BN weight and bias


def test_sync_bn_on_cpu_is_a_clear_error_before_the_trial_starts():
    from mtbench.engine.distributed import DistEnv, check_sync_bn

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    with pytest.raises(MtbenchError, match=r"train.sync_bn needs GPUs: this 2-process trial runs on cpu \(gloo\)"):
        check_sync_bn(True, DistEnv(rank=0, world_size=2), cpu)
    check_sync_bn(True, DistEnv(), cpu)  # a single-process trial ignores it
    check_sync_bn(False, DistEnv(rank=0, world_size=2), cpu)
    check_sync_bn(True, DistEnv(rank=1, world_size=2, local_rank=0), cuda)


def test_sync_bn_conversion_keeps_the_parameters_the_optimizer_holds():
    """wrap's conversion changes the trial's model in place and keeps its parameters, buffers and state_dict
    keys, so the optimizer built before it, evaluation and checkpoints all still see the same tensors."""
    from mtbench.engine.distributed import DistEnv, wrap

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert wrap(model, DistEnv(), torch.device("cpu"), sync_bn=True) is model  # single process: unchanged
    assert isinstance(model[1], torch.nn.BatchNorm2d)
    params, buffers, keys = list(model.parameters()), list(model.buffers()), list(model.state_dict())
    assert torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) is model
    assert isinstance(model[1], torch.nn.SyncBatchNorm)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert all(a is b for a, b in zip(model.buffers(), buffers, strict=True))
    assert list(model.state_dict()) == keys
