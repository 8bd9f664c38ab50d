"""The balancer contract: scaled task losses in, gradients filled, the applied weights out.

A trial's loss is built in two stages. First every task's loss (its deep-supervision terms joined to it) is
multiplied by its fixed scale `loss.weights` (the published weights: semseg 1, normals 10, edge 50, ...), so
every balancer sees losses of the magnitudes the paper trained with. Then the balancer (`loss.weighting`)
turns those scaled losses into gradients: loss-based balancers by one backward pass of a weighted sum,
gradient-based ones by aggregating the per-task gradients of the shared parameters.

`backward(losses)` fills `.grad` and returns the weight it gave each scaled loss; the trainer logs
`weight × scale`, the multiplier of each task's raw loss, as `train/weight/<task>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from mtbench.errors import MtbenchError

SharedParameters = Literal["encoder", "several_tasks"]
SHARED_PARAMETERS: tuple[str, ...] = ("encoder", "several_tasks")


class Balancer(nn.Module):
    """Base class: the tasks, their fixed scales (a buffer, so checkpoints hold them) and the contract.

    Subclasses set the class flags and implement `backward`. `after_step(recompute)` runs after the
    optimiser step; `recompute()` returns the scaled losses of the same batch under the new weights
    (no gradient), which only FAMO reads. Learnable balancer weights are `nn.Parameter`s stepped by the
    trial's optimiser (uncertainty, GradNorm) or state the balancer updates itself (FAMO); both live in
    `state_dict()`, so a resumed trial continues exactly.
    """

    # equal weighting ignores the scales (every raw loss weight 1); every other balancer applies them.
    uses_scales: ClassVar[bool] = True
    # Gradient-based balancers need the model's shared parameters (`attach`).
    needs_model: ClassVar[bool] = False
    # Whether a data-parallel trial gives the same update as one process on the global batch.
    data_parallel: ClassVar[bool] = True

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        values = [float(scales[t]) if self.uses_scales else 1.0 for t in self.tasks]
        self.register_buffer("scales", torch.tensor(values))
        self.register_buffer("last_weights", torch.ones(len(self.tasks)))

    @property
    def name(self) -> str:
        """The registry name (set by `build_balancer`)."""
        return getattr(self, "_name", type(self).__name__)

    def scale(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Multiply each task's loss by its fixed scale."""
        check_losses(self.tasks, losses)
        return {t: self.scales[i] * losses[t] for i, t in enumerate(self.tasks)}

    def attach(self, model: nn.Module) -> None:
        """Find the model's shared parameters (gradient-based balancers); a no-op for loss-based ones."""

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Fill `.grad` from the scaled `losses`; return the (T,) weights applied to them."""
        raise NotImplementedError

    def after_step(self, recompute: Callable[[], dict[str, Tensor]]) -> None:
        """Update after the optimiser step (FAMO); most balancers have nothing to do."""

    def task_weights(self) -> dict[str, float]:
        """The multiplier of each task's raw loss at the last step: balancer weight × fixed scale."""
        values = (self.last_weights * self.scales).tolist()
        return dict(zip(self.tasks, values, strict=True))

    def record(self, weights: Tensor) -> Tensor:
        """Keep `weights` (detached) for logging and return them."""
        self.last_weights.copy_(weights.detach().to(self.last_weights))
        return weights


def check_data_parallel(balancer: Balancer, processes: int) -> None:
    """Refuse a balancer that would not give one process's update on the global batch under DDP."""
    if processes > 1 and not balancer.data_parallel:
        raise MtbenchError(f"balancer {balancer.name!r} is not supported in a {processes}-process trial: each "
                           "process would weight its own losses or gradients, so the update would differ from one "
                           "process on the global batch. Run it in one process (one GPU), or use fixed, equal, "
                           "uncertainty or rlw.")


def check_losses(tasks: tuple[str, ...], losses: Mapping[str, Tensor]) -> None:
    """Refuse a loss dict whose tasks differ from the balancer's."""
    if set(losses) != set(tasks):
        raise ValueError(f"balancer expects losses for {sorted(tasks)}; got {sorted(losses)}")


def stacked(tasks: tuple[str, ...], losses: Mapping[str, Tensor]) -> Tensor:
    """The (T,) tensor of the losses in task order."""
    return torch.stack([losses[t] for t in tasks])


def check_scales(tasks: tuple[str, ...], weights: Mapping[str, float] | None) -> dict[str, float]:
    """`loss.weights` as a scale per task (1 for a task it does not name), each finite and >= 0."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise MtbenchError(f"loss weights name task(s) {', '.join(map(repr, unknown))} that this run does "
                           f"not train (its tasks: {', '.join(tasks)}). Remove them from `loss.weights`.")
    for t, w in weights.items():
        if not (isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
            raise MtbenchError(f"loss weight of {t!r} must be a finite number >= 0; got {w!r}.")
    return {t: float(weights.get(t, 1.0)) for t in tasks}


def shared_parameters(model: nn.Module, losses: Mapping[str, Tensor] | None, how: SharedParameters,
                      balancer: str) -> list[nn.Parameter]:
    """The parameters a gradient balancer aggregates over.

    `encoder`: the model's `backbone` (every multi-task model has one; the decoders of MTI-Net, PAD-Net,
    DeMT and InvPT, although several tasks reach them, then get the plain sum of the task gradients).
    `several_tasks`: every trainable parameter that more than one task's loss reaches, found from the
    first batch's losses (`losses`) by one gradient pass per task.
    """
    backbone = getattr(model, "backbone", None)
    if how == "encoder":
        if not isinstance(backbone, nn.Module):
            raise MtbenchError(f"balancer {balancer!r} aggregates the gradients of the shared encoder, but model "
                               f"{type(model).__name__} has no shared encoder (no `backbone`; e.g. single_task "
                               "trains one network per task). Use a loss-based balancer (fixed, equal, "
                               "uncertainty, dwa, rlw, gls, famo) for this model.")
        return [p for p in backbone.parameters() if p.requires_grad]
    assert losses is not None
    params = [p for p in model.parameters() if p.requires_grad]
    reached = torch.zeros(len(params), dtype=torch.long)
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        reached += torch.tensor([g is not None for g in grads], dtype=torch.long)
    shared = [p for p, n in zip(params, reached.tolist(), strict=True) if n > 1]
    if not shared:
        raise MtbenchError(f"balancer {balancer!r} with shared: several_tasks: no parameter of "
                           f"{type(model).__name__} is reached by more than one task's loss.")
    return shared
