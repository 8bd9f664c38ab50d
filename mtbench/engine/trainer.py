"""The training loop: one function that reads top to bottom (detectron2's plain_train_net)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mtbench.balancing import Balancer
from mtbench.config.schema import ScheduleConfig, TrainConfig
from mtbench.engine import stopping
from mtbench.engine.batching import to_device
from mtbench.engine.distributed import average_gradients, unwrap
from mtbench.engine.evaluate import autocast
from mtbench.errors import MtbenchError


class NonFiniteLossError(MtbenchError):
    """A task's loss became NaN or infinite: the trial stops and its run is marked FAILED."""


def lr_at(step: int, base_lr: float, schedule: ScheduleConfig, total_steps: int,
          steps_per_epoch: int | None = None) -> float:
    """Learning rate at `step`: linear warm-up, then poly or cosine decay to min_lr_ratio * base.

    Warm-up is per step. With `schedule.per == "epoch"` the decay takes the progress of the first step of
    the step's epoch (`steps_per_epoch` steps each): constant within an epoch, it changes once per epoch, and
    for total_steps = E epochs poly gives base * (1 - e / E) ** power in epoch e = 0..E-1, as MTI-Net's
    `SimonVandenhende/Multi-Task-Learning-PyTorch: utils/common_config.py::adjust_learning_rate`.
    """
    if step < schedule.warmup_steps:
        return base_lr * (step + 1) / schedule.warmup_steps
    if schedule.per == "epoch":
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError(f"train.schedule.per: epoch needs steps_per_epoch >= 1, got {steps_per_epoch}")
        step = max(schedule.warmup_steps, step // steps_per_epoch * steps_per_epoch)
    progress = (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps)
    floor = base_lr * schedule.min_lr_ratio
    if schedule.name == "poly":
        return floor + (base_lr - floor) * (1 - progress) ** schedule.power
    if schedule.name == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr


def build_optimizer(modules: list[nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled decay), Adam or SGD (coupled L2: weight_decay * p added to the gradient).

    `decay_on: kernels` decays matrices and kernels only (dim >= 2), never norms and biases (nanoGPT's rule);
    `decay_on: all` decays every parameter (one group), as the released optimizers that get all parameters:
    `yangyangxu0/DeMT: src/model/pl_model.py::MultiTaskModel.configure_optimizers` (SGD) and
    `SimonVandenhende/Multi-Task-Learning-PyTorch: utils/common_config.py::get_optimizer` (Adam).
    """
    opt = cfg.optimizer
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if opt.decay_on == "all":
        groups = [{"params": params, "weight_decay": opt.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr)
    return torch.optim.AdamW(groups, lr=opt.lr)


def auxiliary_losses(model: nn.Module, task_losses: dict[str, nn.Module],
                     batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Deep supervision: for each task, the sum of its losses on the model's intermediate predictions.

    A model with deep supervision fills `model.auxiliary` (mtbench.protocols.MultiTaskModel) in its training
    forward with {name: {task: pred}} (e.g. MTI-Net's per-scale initial predictions, InvPT's per-stage
    ones); predictions smaller than the label are upsampled bilinearly first. The terms join their task's
    loss, so the fixed scale and the balancer weight them like the final prediction's.
    """
    totals: dict[str, torch.Tensor] = {}
    for preds in (unwrap(model).auxiliary or {}).values():
        for task, pred in preds.items():
            if task not in task_losses:
                raise MtbenchError(
                    f"the model predicts auxiliary task {task!r} for deep supervision, but this trial does not "
                    f"load its labels (its tasks: {', '.join(task_losses)}). Add {task!r} to dataset.tasks, or "
                    "drop it from the model's auxiliary_tasks option.")
            target = batch[task]
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            term = task_losses[task](pred.float(), target)
            totals[task] = term if task not in totals else totals[task] + term
    return totals


def batch_losses(model: nn.Module, task_losses: dict[str, nn.Module], batch: dict[str, Any], *,
                 device: torch.device, amp: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward `batch`; return each task's loss on the final prediction and its deep-supervision terms."""
    with autocast(device, amp):
        preds = model(batch["image"])
    final = {t: fn(preds[t].float(), batch[t]) for t, fn in task_losses.items()}
    return final, auxiliary_losses(model, task_losses, batch)


def joined(final: dict[str, torch.Tensor], auxiliary: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each task's final loss plus its deep-supervision terms."""
    return {t: v + auxiliary[t] if t in auxiliary else v for t, v in final.items()}


class FiniteWatch:
    """Catches a NaN or infinite loss or balancer weight on the device, with no host sync per step.

    `observe` (every step) keeps, on the device, the first step whose total loss, task losses or weights were
    not finite and those values; `check` reads them (one sync) and stops the trial naming the step and the task
    or the balancer. `fit` checks at every logging, validation and checkpoint step and at the end, before
    anything is evaluated or saved: a diverged trial stops at most a logging interval (10 steps) later.
    """

    def __init__(self, balancer: Balancer, tasks: list[str], lr_at_step: Callable[[int], float], start_step: int,
                 device: torch.device) -> None:
        self.balancer, self.tasks, self.lr_at_step = balancer, tasks, lr_at_step
        self.step = torch.tensor(start_step, device=device)
        self.first_bad = torch.tensor(-1, device=device)
        self.values: torch.Tensor | None = None  # total, task losses, weights at first_bad

    def observe(self, total: torch.Tensor, final: dict[str, torch.Tensor], weights: torch.Tensor) -> None:
        values = torch.cat([total.detach().reshape(1), torch.stack([final[t].detach() for t in self.tasks]),
                            weights.detach().reshape(-1).to(total.dtype)])
        first = (self.first_bad < 0) & ~torch.isfinite(values).all()
        self.first_bad = torch.where(first, self.step, self.first_bad)
        self.values = values if self.values is None else torch.where(first, values, self.values)
        self.step += 1

    def check(self) -> None:
        """Raise NonFiniteLossError if a step was not finite (one host sync)."""
        step = int(self.first_bad)
        if step < 0:
            return
        values = self.values.tolist()
        total, losses, weights = values[0], values[1:1 + len(self.tasks)], values[1 + len(self.tasks):]
        lr = self.lr_at_step(step)
        bad = [t for t, v in zip(self.tasks, losses, strict=True) if not math.isfinite(v)]
        if not math.isfinite(total) or bad:
            raise NonFiniteLossError(
                f"the loss of task {', '.join(bad or ['(the weighted total)'])} became "
                f"{next((v for v in losses if not math.isfinite(v)), total)} at step {step} (lr {lr:.3g}). "
                "Lower train.optimizer.lr, set train.grad_clip, or check the labels of that task.")
        raise NonFiniteLossError(
            f"balancer {self.balancer.name!r} gave non-finite task weights {weights} at step {step} (lr {lr:.3g}). "
            "Lower train.optimizer.lr, set train.grad_clip, or use another loss.weighting.")


def step_metrics(total: torch.Tensor, lr: float, final: dict[str, torch.Tensor],
                 auxiliary: dict[str, torch.Tensor], balancer: Balancer) -> dict[str, float]:
    """What a logging step records: the scaled total, lr, each task's final loss, the scaled deep-supervision
    sum and each task's weight (`Balancer.task_weights`). Each .item() is a device sync: only every few steps."""
    scales = dict(zip(balancer.tasks, balancer.scales.tolist(), strict=True))
    metrics = {"train/loss_total": total.item(), "train/lr": lr,
               **{f"train/loss/{t}": v.item() for t, v in final.items()},
               **{f"train/weight/{t}": w for t, w in balancer.task_weights().items()}}
    if auxiliary:
        metrics["train/loss_auxiliary"] = sum(scales[t] * v.item() for t, v in auxiliary.items())
    return metrics


def train_step(model: nn.Module, balancer: Balancer, task_losses: dict[str, nn.Module], batch: dict[str, Any],
               optimizer: torch.optim.Optimizer, *, device: torch.device, amp: bool,
               clipped: list[nn.Parameter] | None = None, grad_clip: float | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step on `batch` (the step `fit` takes; the benchmarks time this one).

    The task losses (deep supervision joined), scaled by `loss.weights`; the balancer fills the gradients
    (mtbench.balancing.base); `clipped` (the network's parameters, not a balancer's own) are clipped to
    `grad_clip`; the optimiser steps; the balancer updates (FAMO, GradNorm). Returns the scaled total, each
    task's final loss, the deep-supervision terms and the balancer's weights, all on the device (no sync).
    """
    final, auxiliary = batch_losses(model, task_losses, batch, device=device, amp=amp)
    scaled = balancer.scale(joined(final, auxiliary))
    total = torch.stack(list(scaled.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    weights = balancer.backward(scaled)
    average_gradients(balancer)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(clipped, grad_clip)
    optimizer.step()
    balancer.after_step(lambda: balancer.scale(joined(*batch_losses(model, task_losses, batch, device=device,
                                                                    amp=amp))))
    return total, final, auxiliary, weights


def fit(model: nn.Module, balancer: Balancer, task_losses: dict[str, nn.Module], loader: Any,
        optimizer: torch.optim.Optimizer, cfg: TrainConfig, *, device: torch.device, start_step: int,
        evaluate_fn: Callable[[int], None], checkpoint_fn: Callable[[int], None],
        log_fn: Callable[[dict[str, float], int], None], progress: Any = None,
        steps_per_epoch: int | None = None) -> None:
    """Train from `start_step` to `cfg.steps`, evaluating, checkpointing and logging at intervals.

    `loader` yields exactly the batches of steps start_step..steps-1 (StepBatchSampler), `steps_per_epoch`
    of them per epoch (needed by `train.schedule.per: epoch`). Each step is `train_step`.
    """
    model.train()
    amp = cfg.amp and device.type == "cuda"
    task_id = progress.add_task("train", total=cfg.steps, completed=start_step) if progress else None
    step = start_step
    # Starting the loader draws its workers' base seed from the global RNG: undo that draw, so the steps see
    # the stream of the checkpoint a resumed trial restored (PCGrad's and GradDrop's draws, dropout).
    rng = torch.get_rng_state()
    batches = iter(loader)
    torch.set_rng_state(rng)
    watch = FiniteWatch(balancer, list(task_losses), lambda k: lr_at(k, cfg.optimizer.lr, cfg.schedule, cfg.steps,
                                                                       steps_per_epoch), start_step, device)

    clipped = [p for p in model.parameters() if p.requires_grad]  # the network's, not a balancer's own

    def checked_checkpoint(k: int) -> None:
        watch.check()
        checkpoint_fn(k)

    # A stop signal mid-step waits for the step's end and checkpoints it (single-process trials: see stopping).
    with stopping.training_steps(enabled=not dist.is_initialized()):
        for batch in batches:
            lr = lr_at(step, cfg.optimizer.lr, cfg.schedule, cfg.steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            total, final, auxiliary, weights = train_step(model, balancer, task_losses, to_device(batch, device),
                                                          optimizer, device=device, amp=amp, clipped=clipped,
                                                          grad_clip=cfg.grad_clip)
            watch.observe(total, final, weights)
            step += 1
            logs = step % 10 == 0 or step == cfg.steps
            evaluates = step % cfg.eval_every == 0 and step != cfg.steps
            saved = step % cfg.checkpoint_every == 0 or step == cfg.steps
            if logs or evaluates or saved:  # nothing diverged is logged, evaluated or saved
                watch.check()
            if logs:
                log_fn(step_metrics(total, lr, final, auxiliary, balancer), step)
                if task_id is not None:
                    progress.update(task_id, description=f"train loss {total.item():.3f}")
            if evaluates:
                evaluate_fn(step)
            if saved:
                checkpoint_fn(step)
            stopping.at_step_end(step, checked_checkpoint, saved=saved)  # SIGTERM, SLURM's USR2: stop here
            if task_id is not None:
                progress.update(task_id, completed=step)
    if task_id is not None:
        progress.remove_task(task_id)
