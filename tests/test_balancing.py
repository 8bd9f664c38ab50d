"""Loss balancers (mtbench.balancing) against their formulas on toy problems with known answers, then in trials.

Toy problems first: the gradient of each task on a shared parameter vector is chosen by hand, so PCGrad, MGDA,
GradNorm, ... have closed-form answers. Every TorchJD balancer is checked against TorchJD's own `jac_to_grad`
on a Jacobian computed here with plain torch.autograd. The trial-level tests train the quickstart's models
with every registered balancer, resume stateful balancers exactly, and check the user errors.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
import yaml
from conftest import EXPERIMENTS
from torch import nn
from torchjd import aggregation
from torchjd.autojac import jac_to_grad

from mtbench.balancing import build_balancer
from mtbench.balancing.base import check_data_parallel
from mtbench.errors import MtbenchError
from mtbench.registry import WEIGHTINGS

JACOBIAN_BALANCERS = ("upgrad", "mgda", "pcgrad", "cagrad", "nashmtl", "imtlg", "aligned_mtl", "dualproj", "graddrop")
# TorchJD's aggregators built here, independently of mtbench's table (CAGrad's c = 0.4 is mtbench's documented default).
REFERENCE_AGGREGATORS = {
    "upgrad": lambda n: aggregation.UPGrad(), "mgda": lambda n: aggregation.MGDA(),
    "pcgrad": lambda n: aggregation.PCGrad(), "cagrad": lambda n: aggregation.CAGrad(c=0.4),
    "nashmtl": lambda n: aggregation.NashMTL(n_tasks=n), "imtlg": lambda n: aggregation.IMTLG(),
    "aligned_mtl": lambda n: aggregation.AlignedMTL(), "dualproj": lambda n: aggregation.DualProj(),
    "graddrop": lambda n: aggregation.GradDrop(),
}


@pytest.fixture(autouse=True, scope="module")
def torch_settings():
    """One intra-op thread (these models are tiny: two threads only fight over a busy machine's cores); the
    deterministic-algorithms switch that building a trial turns on is put back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def leaves(*values: float) -> dict[str, torch.Tensor]:
    """Losses as leaf tensors named a, b, c, ... (their .grad is then d total / d L_t)."""
    return {chr(ord("a") + i): torch.tensor(float(v), requires_grad=True) for i, v in enumerate(values)}


def grads_of(losses: dict[str, torch.Tensor]) -> list[float]:
    return [losses[t].grad.item() for t in sorted(losses)]


class ChosenGradients(nn.Module):
    """Features θ = W·1 of a 'backbone' nn.Linear(1, d) with no bias; task t's loss is c_t · θ.

    So ∇_W L_t = c_t exactly: the per-task gradients of the shared parameters are the rows of `c`.
    """

    def __init__(self, c: list[list[float]]) -> None:
        super().__init__()
        c_ = torch.tensor(c)
        self.tasks = tuple(chr(ord("a") + i) for i in range(len(c_)))
        self.backbone = nn.Linear(1, c_.shape[1], bias=False)
        self.register_buffer("c", c_)
        nn.init.ones_(self.backbone.weight)  # θ = 1

    def forward(self) -> dict[str, torch.Tensor]:
        theta = self.backbone(torch.ones(1, 1))[0]
        return {t: self.c[i] @ theta for i, t in enumerate(self.tasks)}


def aggregate_chosen(name: str, c: list[list[float]]) -> tuple[torch.Tensor, dict[str, float]]:
    """The shared .grad that balancer `name` gives for task gradients `c`, and its task weights."""
    model = ChosenGradients(c)
    balancer = build_balancer(name, tasks=model.tasks, weights=None)
    balancer.attach(model)
    balancer.backward(balancer.scale(model()))
    return model.backbone.weight.grad[:, 0], balancer.task_weights()


# --- TorchJD balancers: closed forms on two chosen gradients ---

def test_pcgrad_projects_each_conflicting_gradient_on_the_others_normal_plane_and_sums():
    # TorchJD's PCGrad (torchjd/aggregation/_pcgrad.py) sums the projected gradients (Yu et al., Algorithm 1).
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert g1 @ g2 < 0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # [0.5, 0.5]
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1  # [0, 1]
    grad, weights = aggregate_chosen("pcgrad", [g1.tolist(), g2.tolist()])
    assert torch.allclose(grad, p1 + p2) and torch.allclose(grad, torch.tensor([0.5, 1.5]))
    # d = 2 g1 + 1.5 g2: the weights of the Jacobian's rows
    assert weights == pytest.approx({"a": 2.0, "b": 1.5})
    # no conflict: nothing is projected, the gradients are summed
    grad, _ = aggregate_chosen("pcgrad", [[1.0, 0.0], [1.0, 2.0]])
    assert torch.allclose(grad, torch.tensor([2.0, 2.0]))


def min_norm_point(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    alpha = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    alpha = min(max(alpha, 0.0), 1.0)
    return alpha * g1 + (1 - alpha) * g2


@pytest.mark.parametrize(("g1", "g2", "by_hand"), [
    ([1.0, 0.0], [-1.0, 1.0], [0.2, 0.4]),       # α = 3 / 5
    ([2.0, -1.0, 0.5], [-0.5, 1.5, 1.0], None),  # α = 5.5 / 12.75
    ([1.0, 0.0], [2.0, 0.5], [1.0, 0.0]),        # α = 2.25 / 1.25, clipped to 1: d = g1
    ([3.0, 1.0], [0.2, 0.1], [0.2, 0.1]),        # α < 0, clipped to 0: d = g2
])
def test_mgda_is_the_min_norm_point_of_the_two_gradients(g1, g2, by_hand):
    # TorchJD's MGDA weights are the convex coefficients themselves (they sum to 1; no rescaling).
    expected = min_norm_point(torch.tensor(g1), torch.tensor(g2))
    if by_hand is not None:
        assert torch.allclose(expected, torch.tensor(by_hand))
    grad, weights = aggregate_chosen("mgda", [g1, g2])
    assert torch.allclose(grad, expected, atol=1e-4), (grad, expected)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)


# --- TorchJD balancers: the same aggregation as TorchJD's jac_to_grad on a Jacobian computed by hand ---

class ThreeTasks(nn.Module):
    """A linear encoder, a neck that tasks a and b share, one linear head per task (c reads the encoder)."""

    tasks = ("a", "b", "c")

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 6)
        self.neck = nn.Linear(6, 5)
        self.heads = nn.ModuleDict({"a": nn.Linear(5, 2), "b": nn.Linear(5, 2), "c": nn.Linear(6, 2)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        neck = self.neck(features)
        return {"a": self.heads["a"](neck), "b": self.heads["b"](neck), "c": self.heads["c"](features)}


def three_task_losses(model: ThreeTasks) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=generator)
    targets = {"a": torch.randn(8, 2, generator=generator) + 2.0, "b": -torch.randn(8, 2, generator=generator) - 2.0,
               "c": torch.randn(8, 2, generator=generator)}
    preds = model(x)
    return {t: ((preds[t] - targets[t]) ** 2).mean() for t in model.tasks}


@pytest.mark.parametrize("shared", ["encoder", "several_tasks"])
@pytest.mark.parametrize("name", JACOBIAN_BALANCERS)
def test_jacobian_balancer_equals_jac_to_grad_on_the_hand_computed_jacobian(name, shared):
    torch.manual_seed(0)
    model = ThreeTasks()
    scales = {"a": 2.0, "b": 1.0, "c": 0.5}
    balancer = build_balancer(name, tasks=model.tasks, weights=scales, options={"shared": shared})
    balancer.attach(model)
    scaled = balancer.scale(three_task_losses(model))

    shared_params = list(model.backbone.parameters())
    if shared == "several_tasks":  # every parameter that more than one task reaches: the encoder and the neck
        shared_params += list(model.neck.parameters())
    shared_ids = {id(p) for p in shared_params}
    others = [p for p in model.parameters() if id(p) not in shared_ids]
    per_task = [torch.autograd.grad(scaled[t], shared_params, retain_graph=True, allow_unused=True)
                for t in model.tasks]  # task c does not reach the neck: a zero row
    clones = [p.detach().clone().requires_grad_(True) for p in shared_params]
    for i, clone in enumerate(clones):
        clone.jac = torch.stack([torch.zeros_like(clone) if g[i] is None else g[i] for g in per_task])
    plain = torch.autograd.grad(sum(scaled.values()), others, retain_graph=True)

    torch.manual_seed(123)  # PCGrad's permutations and GradDrop's draws: the same in both
    expected_weights = jac_to_grad(clones, REFERENCE_AGGREGATORS[name](len(model.tasks)))
    torch.manual_seed(123)
    weights = balancer.backward(scaled)

    for p, clone in zip(shared_params, clones, strict=True):
        assert torch.allclose(p.grad, clone.grad, rtol=1e-4, atol=1e-6), (name, shared, p.grad - clone.grad)
    for p, g in zip(others, plain, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)
    if name == "graddrop":  # no task weights: nothing logged, the returned weights are placeholders
        assert expected_weights is None and balancer.task_weights() == {}
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    else:
        assert torch.allclose(weights, expected_weights, rtol=1e-4, atol=1e-6)
        logged = balancer.task_weights()
        for i, t in enumerate(model.tasks):
            assert logged[t] == pytest.approx(expected_weights[i].item() * scales[t], rel=1e-4, abs=1e-6)


# --- loss-based balancers ---

def test_dwa_weights_are_t_softmax_of_the_last_two_epoch_mean_ratios():
    period, tau = 2, 2.0
    dwa = build_balancer("dwa", tasks=("a", "b", "c"), weights=None, options={"period": period, "temperature": tau})
    epochs = [[(4.0, 1.0, 2.0), (2.0, 1.0, 4.0)],   # epoch 1: means 3, 1, 3
              [(1.0, 1.0, 6.0), (2.0, 1.0, 6.0)],   # epoch 2: means 1.5, 1, 6
              [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]]   # epoch 3: weighted by the ratios of epochs 2 / 1
    ratio = [1.5 / 3.0, 1.0 / 1.0, 6.0 / 3.0]
    exps = [math.exp(r / tau) for r in ratio]
    expected = [3 * e / sum(exps) for e in exps]
    for e, steps in enumerate(epochs, start=1):
        for values in steps:
            losses = leaves(*values)
            weights = dwa.backward(dwa.scale(losses))
            want = [1.0, 1.0, 1.0] if e < 3 else expected
            assert weights.tolist() == pytest.approx(want, rel=1e-6), (e, values)
            assert grads_of(losses) == pytest.approx(want, rel=1e-6)
    assert sum(expected) == pytest.approx(3.0)


def test_uncertainty_gradients_scales_and_state_dict():
    uw = build_balancer("uncertainty", tasks=("a", "b"), weights=None)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
    losses = leaves(2.0, 0.5)
    weights = uw.backward(uw.scale(losses))
    # total = Σ exp(-s_t) L_t + s_t: ∂/∂L_t = exp(-s_t), ∂/∂s_t = 1 - exp(-s_t) L_t
    assert grads_of(losses) == pytest.approx([0.5, 1.0])
    assert uw.log_vars.grad.tolist() == pytest.approx([0.0, 0.5], abs=1e-7)
    assert weights.tolist() == pytest.approx([0.5, 1.0])

    # loss.weights are accepted: they scale the losses first, and the logged weight is exp(-s) × scale
    scaled = build_balancer("uncertainty", tasks=("a", "b"), weights={"a": 3.0, "b": 10.0})
    with torch.no_grad():
        scaled.log_vars.copy_(uw.log_vars)
    assert scaled.scales.tolist() == [3.0, 10.0]
    losses = leaves(2.0, 0.5)
    scaled.backward(scaled.scale(losses))
    assert grads_of(losses) == pytest.approx([1.5, 10.0])
    assert scaled.log_vars.grad.tolist() == pytest.approx([1 - 0.5 * 6.0, 1 - 5.0])
    assert scaled.task_weights() == pytest.approx({"a": 1.5, "b": 10.0})

    # state_dict round trip: the log-variances and scales come back exactly
    again = build_balancer("uncertainty", tasks=("a", "b"), weights={"a": 3.0, "b": 10.0})
    again.load_state_dict(scaled.state_dict())
    assert torch.equal(again.log_vars, scaled.log_vars) and torch.equal(again.scales, scaled.scales)
    assert set(scaled.state_dict()) == {"scales", "last_weights", "log_vars"}


def test_uncertainty_with_loss_weights_is_an_accepted_config():
    from mtbench.config import expand_trials, load_experiment

    trials = expand_trials(load_experiment(EXPERIMENTS / "quickstart.yaml", ["loss.weighting=uncertainty"]))
    assert trials and all(t.loss.weighting == "uncertainty" and t.loss.weights["edge"] == 50.0 for t in trials)


def test_gradnorm_target_lambda_gradient_and_renormalisation():
    # ∇_W L_a = [3, 4] (norm 5), ∇_W L_b = [0, 1] (norm 1); W = [1, 1] gives L = [7, 1].
    model = ChosenGradients([[3.0, 4.0], [0.0, 1.0]])
    gn = build_balancer("gradnorm", tasks=("a", "b"), weights=None, options={"alpha": 1.5})
    gn.attach(model)
    norms = torch.tensor([5.0, 1.0])

    gn.backward(gn.scale(model()))
    # step 0: every loss ratio is 1, so r = 1 and the target is the mean G = mean(λ ‖∇L‖) = 3
    assert gn.initial_losses.tolist() == [7.0, 1.0]
    assert gn.weights.grad.tolist() == pytest.approx([5.0, -1.0])  # sign(G - 3) · ‖∇_W L_t‖
    assert model.backbone.weight.grad[:, 0].tolist() == pytest.approx([3.0, 5.0])  # λ = 1: Σ ∇L_t

    # an optimiser step moved λ; after_step renormalises to Σλ = T
    with torch.no_grad():
        gn.weights.copy_(torch.tensor([1.5, 0.3]))
    gn.after_step(lambda: {})
    assert gn.weights.tolist() == pytest.approx([2 * 1.5 / 1.8, 2 * 0.3 / 1.8])
    assert float(gn.weights.detach().sum()) == pytest.approx(2.0)

    # step 1 with new losses: W = [0.5, 1] gives L = [5.5, 1]
    with torch.no_grad():
        model.backbone.weight.copy_(torch.tensor([[0.5], [1.0]]))
    model.backbone.weight.grad = None
    lam = gn.weights.detach().clone()
    gn.backward(gn.scale(model()))
    loss_ratio = torch.tensor([5.5 / 7.0, 1.0 / 1.0])
    r = loss_ratio / loss_ratio.mean()
    g = lam * norms
    target = g.mean() * r ** 1.5
    assert (g - target).abs().min() > 1e-3  # no tie: the sign is meaningful
    assert gn.weights.grad.tolist() == pytest.approx((torch.sign(g - target) * norms).tolist())
    assert model.backbone.weight.grad[:, 0].tolist() == pytest.approx((lam[0] * torch.tensor([3.0, 4.0]) +
                                                                      lam[1] * torch.tensor([0.0, 1.0])).tolist())
    assert gn.task_weights() == pytest.approx(dict(zip("ab", lam.tolist(), strict=True)))


def test_rlw_weights_sum_to_t_repeat_under_a_seed_and_change_every_step():
    torch.manual_seed(5)
    first = build_balancer("rlw", tasks=("a", "b", "c"), weights=None)
    torch.manual_seed(5)
    second = build_balancer("rlw", tasks=("a", "b", "c"), weights=None)
    seen = []
    for _ in range(4):
        w1 = first.backward(first.scale(leaves(1.0, 2.0, 3.0)))
        w2 = second.backward(second.scale(leaves(1.0, 2.0, 3.0)))
        assert float(w1.sum()) == pytest.approx(3.0) and (w1 > 0).all()
        assert torch.equal(w1, w2)
        seen.append(w1.tolist())
    assert all(seen[i] != seen[i + 1] for i in range(len(seen) - 1))


@pytest.mark.parametrize("seed", [2**64 - 1, 2**62 - 1, 10**14, 0])
def test_rlw_draws_for_any_process_seed(seed):
    # torch's initial seed is a random 64-bit number unless the process seeds it; RLW must draw under any.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rlw = build_balancer("rlw", tasks=("a", "b"), weights=None)
    weights = rlw.backward(rlw.scale(leaves(1.0, 2.0)))
    assert float(weights.sum()) == pytest.approx(2.0)


def test_famo_weights_and_one_adam_step_on_the_logits():
    lr, gamma = 0.025, 0.001
    famo = build_balancer("famo", tasks=("a", "b", "c"), weights=None)
    assert (famo.lr, famo.gamma) == (lr, gamma)

    # weights: λ_t = z_t / (c L_t), z = softmax(logits), c = Σ z_t / L_t; they are d total / d L_t
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.2, -0.1, 0.5]))
    losses = leaves(2.0, 0.5, 1.0)
    weights = famo.backward(famo.scale(losses))
    z = torch.softmax(torch.tensor([0.2, -0.1, 0.5]), dim=0)
    values = torch.tensor([2.0, 0.5, 1.0])
    expected = z / ((z / values).sum() * values)
    assert weights.tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert grads_of(losses) == pytest.approx(expected.tolist(), rel=1e-6)

    # the first after_step from logits 0: m̂ = g, v̂ = g², so the step is lr · g / (|g| + 1e-8)
    famo = build_balancer("famo", tasks=("a", "b", "c"), weights=None)
    before, after = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 1.5])
    famo.backward(famo.scale(leaves(*before.tolist())))
    famo.after_step(lambda: dict(zip("abc", after, strict=True)))
    delta = torch.log(before + 1e-8) - torch.log(after + 1e-8)
    z = torch.full((3,), 1 / 3)
    g = z * delta - z * (z * delta).sum()  # softmax Jacobianᵀ δ (+ γ · logits = 0)
    assert famo.logits.tolist() == pytest.approx((-lr * g / (g.abs() + 1e-8)).tolist(), rel=1e-5)

    # later steps: torch's Adam with coupled L2 weight decay γ on w, fed the same gradient
    w = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([w], lr=lr, weight_decay=gamma)
    w.grad = g.clone()
    adam.step()
    for before, after in [([1.0, 0.5, 1.5], [0.8, 0.6, 1.2]), ([0.8, 0.6, 1.2], [0.9, 0.3, 1.0])]:
        before_, after_ = torch.tensor(before), torch.tensor(after)
        famo.backward(famo.scale(leaves(*before)))
        famo.after_step(lambda after_=after_: dict(zip("abc", after_, strict=True)))
        delta = torch.log(before_ + 1e-8) - torch.log(after_ + 1e-8)
        z = torch.softmax(w.detach(), dim=0)
        w.grad = z * delta - z * (z * delta).sum()
        adam.step()
        assert torch.allclose(famo.logits, w.detach(), rtol=1e-5, atol=1e-8)
    assert int(famo.adam_steps) == 3


def test_gls_weights_are_the_geometric_mean_over_t_times_each_loss():
    gls = build_balancer("gls", tasks=("a", "b", "c"), weights=None)
    losses = leaves(1.0, 2.0, 4.0)
    weights = gls.backward(gls.scale(losses))
    # (Π L)^(1/3) = 2; λ_t = 2 / (3 L_t)
    assert weights.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 6])
    assert grads_of(losses) == pytest.approx([2 / 3, 1 / 3, 1 / 6])


def test_equal_ignores_loss_weights_and_fixed_applies_them():
    scales = {"a": 2.0, "b": 5.0}
    equal = build_balancer("equal", tasks=("a", "b"), weights=scales)
    losses = leaves(1.0, 3.0)
    equal.backward(equal.scale(losses))
    assert equal.scales.tolist() == [1.0, 1.0] and grads_of(losses) == [1.0, 1.0]
    assert equal.task_weights() == {"a": 1.0, "b": 1.0}

    fixed = build_balancer("fixed", tasks=("a", "b"), weights=scales)
    losses = leaves(1.0, 3.0)
    weights = fixed.backward(fixed.scale(losses))
    assert weights.tolist() == [1.0, 1.0] and grads_of(losses) == [2.0, 5.0]
    assert fixed.task_weights() == {"a": 2.0, "b": 5.0}  # weight × scale

    # a task loss.weights does not name gets scale 1
    assert build_balancer("fixed", tasks=("a", "b"), weights={"a": 4.0}).task_weights() == {"a": 4.0, "b": 1.0}
    # task_weights() is the last weights times the scales, for any balancer
    gls = build_balancer("gls", tasks=("a", "b"), weights={"a": 2.0, "b": 8.0})
    gls.backward(gls.scale(leaves(1.0, 1.0)))  # scaled losses 2 and 8: λ = 4 / (2 · [2, 8])
    assert gls.task_weights() == pytest.approx({"a": 1.0 * 2.0, "b": 0.25 * 8.0})


# --- errors a user can make ---

def test_missing_optional_extra_names_the_pip_command(monkeypatch):
    import torchjd._mixins

    real = torchjd._mixins.find_spec
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "cvxpy" else real(name))
    with pytest.raises(MtbenchError, match="balancer 'cagrad'") as err:
        build_balancer("cagrad", tasks=("a", "b"), weights=None)
    assert 'pip install "torchjd[cagrad]"' in str(err.value)


@pytest.mark.parametrize("name", ["gradnorm", "upgrad"])
def test_a_misspelt_shared_option_is_refused(name):
    with pytest.raises(MtbenchError, match="option shared='encodr': use 'encoder' or 'several_tasks'"):
        build_balancer(name, tasks=("a", "b"), weights=None, options={"shared": "encodr"})


def test_balancers_that_weight_per_process_are_refused_in_a_data_parallel_trial():
    tasks = ("a", "b")
    refused = set()
    for name in WEIGHTINGS.names():
        balancer = build_balancer(name, tasks=tasks, weights=None)
        check_data_parallel(balancer, 1)
        try:
            check_data_parallel(balancer, 2)
        except MtbenchError as err:
            assert f"balancer {name!r} is not supported in a 2-process trial" in str(err)
            refused.add(name)
    # what the message recommends is exactly what is allowed
    assert set(WEIGHTINGS.names()) - refused == {"fixed", "equal", "uncertainty", "rlw"}
    assert set(JACOBIAN_BALANCERS) | {"gradnorm", "dwa", "gls", "famo"} <= refused


def watch_of(balancer, tasks=("a", "b")):
    from mtbench.engine.trainer import FiniteWatch

    return FiniteWatch(balancer, list(tasks), lambda step: 0.1 * step, 5, torch.device("cpu"))


def test_non_finite_balancer_weights_stop_the_trial_naming_the_balancer():
    from mtbench.engine.trainer import NonFiniteLossError

    uw = build_balancer("uncertainty", tasks=("a", "b"), weights=None)
    final = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    watch = watch_of(uw)
    watch.observe(torch.tensor(3.0), final, torch.tensor([1.0, 1.0]))
    watch.observe(torch.tensor(3.0), final, torch.tensor([math.nan, 1.0]))  # step 6
    watch.observe(torch.tensor(math.nan), final, torch.tensor([math.nan, 1.0]))  # later steps do not replace it
    with pytest.raises(NonFiniteLossError, match=r"balancer 'uncertainty' gave non-finite task weights \[nan, 1.0\] "
                                                 r"at step 6 \(lr 0.6\)"):
        watch.check()
    # the real thing: log-variances driven to -inf make exp(-s) infinite while the losses stay finite
    with torch.no_grad():
        uw.log_vars.fill_(-math.inf)
    scaled = uw.scale(leaves(1.0, 2.0))
    weights = uw.backward(scaled)
    watch = watch_of(uw)
    watch.observe(torch.stack(list(scaled.values())).sum(), final, weights)
    with pytest.raises(NonFiniteLossError, match="balancer 'uncertainty' gave non-finite task weights"):
        watch.check()
    finite = watch_of(uw)
    finite.observe(torch.tensor(3.0), final, torch.tensor([1.0, 1.0]))
    finite.check()  # finite: no error


def test_a_non_finite_task_loss_is_named_with_its_step():
    from mtbench.engine.trainer import NonFiniteLossError

    watch = watch_of(build_balancer("fixed", tasks=("a", "b"), weights=None))
    watch.observe(torch.tensor(math.inf), {"a": torch.tensor(1.0), "b": torch.tensor(math.inf)}, torch.ones(2))
    with pytest.raises(NonFiniteLossError, match=r"the loss of task b became inf at step 5 \(lr 0.5\)"):
        watch.check()


def run_cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`mtbench <args>` through the console script's entry point, in this process: (exit code, stderr)."""
    from mtbench import cli

    monkeypatch.setattr(sys, "argv", ["mtbench", *args])
    with pytest.raises(SystemExit) as exited:  # any other exception would be a traceback
        cli.main()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "needles"), [
    (["loss.weighting=upgrd"], ["unknown balancer 'upgrd'", "Did you mean 'upgrad'"]),
    (["loss.weighting=dwa", "loss.options={temprature: 1.0}"],
     ["unknown option 'temprature' for balancer 'dwa'", "Did you mean 'temperature'",
      "Its options: period, temperature"]),
    (["loss.weighting=upgrad"], ["balancer 'upgrad' aggregates the gradients of the shared encoder",
                                 "model 'single_task' has none"]),
], ids=["unknown-balancer", "bad-option", "single-task-model"])
def test_bad_balancer_config_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys, overrides, needles):
    monkeypatch.chdir(tmp_path)
    args = [a for o in overrides for a in ("-o", o)]
    code, err = run_cli_in_process(monkeypatch, capsys, "run", str(EXPERIMENTS / "quickstart.yaml"), "--smoke", *args)
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err
    flat = " ".join(err.split())
    for needle in needles:
        assert needle in flat, err
    assert not (tmp_path / "runs").exists()


# --- trials: every balancer trains the quickstart's multi-task models; stateful ones resume exactly ---

QUICKSTART_MULTI_TASK = ("shared_encoder", "demt")


def quickstart_variants(tmp_path) -> str:
    """The quickstart with its multi-task variants only (gradient balancers refuse single_task)."""
    data = yaml.safe_load((EXPERIMENTS / "quickstart.yaml").read_text())
    data["variants"] = [v for v in data["variants"] if v["name"] in QUICKSTART_MULTI_TASK]
    assert [v["name"] for v in data["variants"]] == list(QUICKSTART_MULTI_TASK)
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def smoke_trials(name: str, tmp_path, monkeypatch) -> list:
    """The quickstart's multi-task trials under `--smoke` with balancer `name`, smaller still: 2 steps of batch 2
    at 32x32."""
    from mtbench.config import expand_trials, load_experiment, loading

    monkeypatch.setattr(loading, "SMOKE_DATASET_OPTIONS", {"height": 32, "width": 32, "num_train": 4, "num_val": 2,
                                                           "num_test": 2})
    monkeypatch.setattr(loading, "SMOKE_TRAIN", {"steps": 2, "batch_size": 2, "eval_batch_size": 2, "eval_every": 2,
                                                 "checkpoint_every": 2})
    trials = expand_trials(load_experiment(quickstart_variants(tmp_path), [f"loss.weighting={name}"], smoke=True))
    assert [t.variant for t in trials] == list(QUICKSTART_MULTI_TASK)
    return trials


def train(cfg, folder) -> tuple[object, dict[int, dict[str, float]]]:
    """Build `cfg` the way a trial does and fit it (no evaluation, checkpoints or tracking); the metrics logged."""
    from mtbench.engine import distributed
    from mtbench.engine.trainer import fit
    from mtbench.engine.trial import build, train_loader_for

    env = distributed.env_from()
    trial = build(cfg, env, torch.device("cpu"), folder)
    logged: dict[int, dict[str, float]] = {}
    fit(trial.model, trial.balancer, trial.task_losses, train_loader_for(cfg, trial.datasets["train"], 0, env),
        trial.optimizer, cfg.train, device=trial.device, start_step=0, evaluate_fn=lambda step: None,
        checkpoint_fn=lambda step: None, log_fn=lambda metrics, step: logged.setdefault(step, metrics),
        steps_per_epoch=len(trial.datasets["train"]) // cfg.train.batch_size)
    return trial, logged


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_balancer_trains_the_quickstart_models_and_logs_its_weights(name, tmp_path, monkeypatch):
    for cfg in smoke_trials(name, tmp_path, monkeypatch):
        trial, logged = train(cfg, tmp_path / cfg.variant)
        metrics = logged[cfg.train.steps]
        weights = {k.removeprefix("train/weight/"): v for k, v in metrics.items() if k.startswith("train/weight/")}
        if name == "graddrop":
            assert weights == {}, cfg.variant
        else:
            assert set(weights) == set(trial.tasks), cfg.variant
            assert all(math.isfinite(v) for v in weights.values()), (cfg.variant, weights)
        assert math.isfinite(metrics["train/loss_total"])


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm"])
def test_grad_clip_bounds_the_network_gradient_alone(name, tmp_path, monkeypatch):
    """train.grad_clip (5 in the quickstart) clips the network's gradient. The balancer's own parameters neither
    count in that norm nor are scaled by it: GradNorm's λ gradient is that of GradNorm's own objective, and
    clipping the log-variances with the network would slow them by the network's gradient norm under SGD."""
    cfg = smoke_trials(name, tmp_path, monkeypatch)[0]
    assert cfg.train.grad_clip == 5.0
    clipped: list[list[torch.Tensor]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, *args, **kwargs):
        clipped.append(list(parameters))
        return clip(clipped[-1], *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    trial, _ = train(cfg, tmp_path / "clip")
    network = {id(p) for p in trial.model.parameters() if p.requires_grad}
    assert len(clipped) == cfg.train.steps
    for parameters in clipped:
        assert {id(p) for p in parameters} == network


class Interrupted(Exception):
    """Stands for the process being killed right after a checkpoint."""


RESUME = """
name: resume_BALANCER
dataset: {name: synthetic_nyud, tasks: [semseg, depth, normals],
          options: {height: 32, width: 32, num_train: 8, num_val: 2, num_test: 4}}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 6, batch_size: 2, eval_batch_size: 4, eval_every: 100, checkpoint_every: 3,
        optimizer: {lr: 0.002}, schedule: {warmup_steps: 1}}
loss: {weighting: BALANCER, weights: {semseg: 1.0, depth: 1.0, normals: 10.0}}
seeds: [0]
"""


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One sqlite store for the resume tests (creating one costs seconds)."""
    from mtbench import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlruns.db"
    tracking.ensure_store(uri)
    return uri


# DWA's epoch sums and means, FAMO's logits and Adam moments, the log-variances (and their optimiser state);
# PCGrad draws its projection order from the global RNG, which the checkpoint restores.
@pytest.mark.parametrize(("name", "options"), [("dwa", {"period": 2}), ("famo", {}), ("uncertainty", {}),
                                               ("pcgrad", {})])
def test_stateful_balancer_resumes_exactly(name, options, tmp_path, monkeypatch, tracking_uri):
    from mtbench.config import expand_trials, load_experiment
    from mtbench.engine import trial as trial_module
    from mtbench.engine.checkpoint import load_checkpoint
    from mtbench.engine.trial import run_trial

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trial_module, "log_predictions", lambda trial, tracker: None)  # figures: half the time
    path = tmp_path / "resume.yaml"
    path.write_text(RESUME.replace("BALANCER", name))

    def config(output: str):
        overrides = [f"output_dir={tmp_path / output}", f"tracking.uri={tracking_uri}",
                     f"loss.options={yaml.safe_dump(options, default_flow_style=True).strip()}"]
        return expand_trials(load_experiment(path, overrides))[0]

    straight = run_trial(config("straight"))
    assert straight.status == "FINISHED"

    save = trial_module.save_trial_checkpoint

    def save_then_die(trial, step):
        save(trial, step)
        if step == 3:
            raise Interrupted

    monkeypatch.setattr(trial_module, "save_trial_checkpoint", save_then_die)
    cfg = config("killed")
    with pytest.raises(Interrupted):
        run_trial(cfg)
    folder = trial_module.trial_dir(cfg)
    assert (folder / "last.pt").is_file() and not (folder / "result.json").exists()
    state = load_checkpoint(folder / "last.pt")
    assert int(state["step"]) == 3 and "balancer" in state
    monkeypatch.setattr(trial_module, "save_trial_checkpoint", save)

    resumed = run_trial(cfg, resume=True)
    assert resumed.status == "FINISHED" and resumed.run_id == state["run_id"]
    assert resumed.metrics == straight.metrics
