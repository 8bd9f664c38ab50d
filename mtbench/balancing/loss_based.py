"""Loss-based balancers: one backward pass of a weighted sum of the scaled task losses.

Each weights the scaled losses L_t (mtbench.balancing.base) and backpropagates Σ_t λ_t L_t (+ a regulariser
where the method has one). GradNorm also reads the gradient norms of the last shared layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mtbench.balancing.base import Balancer, SharedParameters, shared_parameters, stacked
from mtbench.balancing.registry import register_balancer
from mtbench.errors import MtbenchError


def weighted_backward(balancer: Balancer, losses: Mapping[str, Tensor], weights: Tensor,
                      extra: Tensor | None = None) -> Tensor:
    """Backpropagate Σ_t weights_t · L_t (+ extra) and record the weights."""
    total = (weights * stacked(balancer.tasks, losses)).sum()
    (total if extra is None else total + extra).backward()
    return balancer.record(weights)


class Fixed(Balancer):
    """Σ_t L_t of the scaled losses: the fixed published weights (`loss.weights`) alone."""

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        return weighted_backward(self, losses, torch.ones_like(self.scales))


class Equal(Fixed):
    """Σ_t L_t of the raw losses: every task weight 1, `loss.weights` not applied (LibMTL's EW)."""

    uses_scales = False


class Uncertainty(Balancer):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018), learnable log-variances.

    total = Σ_t exp(−s_t) · L_t + s_t, with s_t = log σ_t² initialised to 0 (all weights 1). This is the
    form of the authors' example code (yaringal/multi-task-learning-example:
    multi-task-learning-example.ipynb::CustomMultiLossLayer.multi_loss), without the paper's 1/2 factors
    for regression tasks; LibMTL's `LibMTL/weighting/UW.py::UW` uses L/(2 exp s) + s/2, which is half of
    this: the optimal s_t = log L_t is the same and the network's gradients are scaled by 1/2 there.
    The trial's optimiser steps s (it is an nn.Parameter).
    """

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float]) -> None:
        super().__init__(tasks, scales)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        s = self.log_vars
        return weighted_backward(self, losses, torch.exp(-s), extra=s.sum())


class DynamicWeightAverage(Balancer):
    """DWA (Liu, Johns & Davison, CVPR 2019, MTAN): λ_t = T · softmax_t(r_t / τ), r_t = L̄_t(e−1) / L̄_t(e−2).

    L̄_t(e) is task t's mean loss over epoch e (`period` steps, default the trial's steps per epoch); the
    first two epochs use λ = 1. τ = `temperature` (2 in the paper). The epoch sums and the last two means
    are buffers, so a resumed trial continues the same averages (lorenmt/mtan: im2im_pred/utils.py::
    multi_task_trainer, `lambda_weight`).
    """

    data_parallel = False  # each process would average its own losses

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float], *, period: int,
                 temperature: float = 2.0) -> None:
        super().__init__(tasks, scales)
        if period < 1 or temperature <= 0:
            raise MtbenchError(f"dwa: period must be >= 1 and temperature > 0; got {period}, {temperature}.")
        self.period, self.temperature = int(period), float(temperature)
        self.register_buffer("epoch_sum", torch.zeros(len(self.tasks)))
        self.register_buffer("epoch_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("means", torch.zeros(2, len(self.tasks)))  # epochs e-2, e-1
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def current_weights(self) -> Tensor:
        if int(self.epochs) < 2:
            return torch.ones_like(self.scales)
        ratio = self.means[1] / self.means[0].clamp_min(torch.finfo(self.means.dtype).tiny)
        return len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        weights = weighted_backward(self, losses, self.current_weights())
        self.epoch_sum += stacked(self.tasks, losses).detach()
        self.epoch_steps += 1
        if int(self.epoch_steps) == self.period:
            self.means.copy_(torch.stack([self.means[1], self.epoch_sum / self.period]))
            self.epochs += 1
            self.epoch_sum.zero_()
            self.epoch_steps.zero_()
        return weights


class RandomLossWeighting(Balancer):
    """RLW (Lin et al., TMLR 2022): λ = T · softmax(z), z ~ N(0, I) drawn afresh every step (Σ_t λ_t = T).

    The draws come from a generator seeded by the trial's seed and the step count (buffers), so every
    process of a data-parallel trial and a resumed trial draw the same weights.
    """

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float]) -> None:
        super().__init__(tasks, scales)
        self.register_buffer("seed", torch.tensor(torch.initial_seed() % 2**62, dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        # mod 2**64: manual_seed takes 64 bits, and the seed buffer may be any initial seed below 2**62
        generator = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + int(self.draws)) % 2**64)
        self.draws += 1
        z = torch.randn(len(self.tasks), generator=generator).to(self.scales)
        return weighted_backward(self, losses, len(self.tasks) * torch.softmax(z, dim=0))


class GeometricLoss(Balancer):
    """GLS (Chennupati et al., CVPR-W 2019): minimise the geometric mean (Π_t L_t)^(1/T).

    Its gradient weights each loss by λ_t = (Π L)^(1/T) / (T · L_t), which are the weights logged. Losses
    are floored at 1e-12 so that a batch without labels for a task (loss 0) does not give NaN.
    """

    data_parallel = False  # the geometric mean of each process's losses is not the global batch's

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        values = stacked(self.tasks, losses).clamp_min(1e-12)
        total = torch.exp(torch.log(values).mean())
        total.backward()
        return self.record((total / (len(self.tasks) * values)).detach())


class FAMO(Balancer):
    """FAMO (Liu et al., NeurIPS 2023): fast adaptive multitask optimisation, O(1) per step.

    Task logits w (z = softmax(w)) weight the log-losses: the network minimises Σ_t z_t log(L_t − m_t) / c,
    c = Σ_t z_t / (L_t − m_t) (no gradient), i.e. λ_t = z_t / (c (L_t − m_t)); m = 0 as in the authors'
    default. After the optimiser step, a second forward pass on the same batch gives the new losses and
    w takes one Adam step (lr `lr`, L2 `gamma`) along −Jᵀδ, δ_t = log(L_t^before) − log(L_t^after)
    (Cranial-XIX/FAMO: methods/weight_methods.py::FAMO.get_weighted_loss, ::FAMO.update). The second
    pass runs in training mode, as the authors', so BatchNorm statistics see the batch twice. w, Adam's
    moments and the last losses are buffers: checkpoints hold them.
    """

    data_parallel = False  # each process would step w on its own losses

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float], *, lr: float = 0.025,
                 gamma: float = 0.001) -> None:
        super().__init__(tasks, scales)
        self.lr, self.gamma = float(lr), float(gamma)
        n = len(self.tasks)
        for name in ("logits", "adam_m", "adam_v", "prev_losses"):
            self.register_buffer(name, torch.zeros(n))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        values = stacked(self.tasks, losses)
        self.prev_losses.copy_(values.detach())
        z = torch.softmax(self.logits, dim=0)
        gap = values + 1e-8
        c = (z / gap.detach()).sum()
        (torch.log(gap) * z / c).sum().backward()
        return self.record(z / (c * gap.detach()))

    def after_step(self, recompute: Callable[[], dict[str, Tensor]]) -> None:
        with torch.no_grad():
            after = stacked(self.tasks, recompute()).detach().to(self.logits)
        delta = torch.log(self.prev_losses + 1e-8) - torch.log(after + 1e-8)
        z = torch.softmax(self.logits, dim=0)
        grad = z * delta - z * (z * delta).sum() + self.gamma * self.logits  # softmax Jacobianᵀ δ + L2
        self.adam_steps += 1
        t = int(self.adam_steps)
        self.adam_m.mul_(0.9).add_(0.1 * grad)
        self.adam_v.mul_(0.999).add_(0.001 * grad * grad)
        m_hat, v_hat = self.adam_m / (1 - 0.9**t), self.adam_v / (1 - 0.999**t)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))


class GradNorm(Balancer):
    """GradNorm (Chen et al., ICML 2018): learn λ so that the tasks' gradient norms train at equal rates.

    G_t = ‖∇_W λ_t L_t‖ on W, the last shared layer (the last matrix or kernel of the shared parameters);
    r_t = L̃_t / mean(L̃), L̃_t = L_t / L_t(step 0); the target Ḡ · r_t^α is a constant, and λ gets the
    gradient of Σ_t |G_t − Ḡ r_t^α|, sign(G_t − target_t) · ‖∇_W L_t‖. The trial's optimiser steps λ (an
    nn.Parameter, initialised to 1); after each step λ is renormalised to Σ_t λ_t = T. α = `alpha` (1.5,
    the paper's NYUv2 setting). One extra backward pass per task, through the shared layer only.
    """

    needs_model = True
    data_parallel = False

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float], *, alpha: float = 1.5,
                 shared: SharedParameters = "encoder") -> None:
        super().__init__(tasks, scales)
        if shared not in ("encoder", "several_tasks"):
            raise MtbenchError(f"option shared={shared!r}: use 'encoder' or 'several_tasks'.")
        self.alpha, self.shared = float(alpha), shared
        self.weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))
        self._model: list[nn.Module] = []  # not a submodule: the balancer's state is its own
        self._layer: list[nn.Parameter] = []

    def attach(self, model: nn.Module) -> None:
        self._model = [model]
        if self.shared == "encoder":
            self._layer = last_layer(shared_parameters(model, None, "encoder", "gradnorm"))

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        values = stacked(self.tasks, losses)
        if not self._layer:
            self._layer = last_layer(shared_parameters(self._model[0], losses, "several_tasks", "gradnorm"))
        norms = torch.stack([torch.linalg.vector_norm(torch.autograd.grad(v, self._layer, retain_graph=True)[0])
                             for v in values])
        # L_t(0): each task's first non-zero loss (a first batch without a task's labels gives 0).
        self.initial_losses.copy_(torch.where(self.initial_losses > 0, self.initial_losses, values.detach()))
        rate = torch.where(self.initial_losses > 0, values.detach() / self.initial_losses.clamp_min(1e-12), 1.0)
        lam = self.weights.detach()
        target = (lam * norms).mean() * (rate / rate.mean()) ** self.alpha
        weights = weighted_backward(self, losses, lam)
        self.weights.grad = torch.sign(lam * norms - target) * norms
        return weights

    def after_step(self, recompute: Callable[[], dict[str, Tensor]]) -> None:
        with torch.no_grad():
            w = self.weights.clamp_min(1e-6)
            self.weights.copy_(len(self.tasks) * w / w.sum())


def last_layer(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The last matrix or kernel (dim >= 2) of `params`: GradNorm's W."""
    kernels = [p for p in params if p.dim() >= 2]
    if not kernels:
        raise MtbenchError("gradnorm: the shared parameters hold no matrix or kernel to measure gradients on.")
    return [kernels[-1]]


register_balancer("fixed", Fixed)
register_balancer("equal", Equal)
register_balancer("uncertainty", Uncertainty)
register_balancer("dwa", DynamicWeightAverage)
register_balancer("rlw", RandomLossWeighting)
register_balancer("gls", GeometricLoss)
register_balancer("famo", FAMO)
register_balancer("gradnorm", GradNorm)
