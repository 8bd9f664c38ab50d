"""Gradient-based balancers through TorchJD (the only module that imports torchjd).

Each step computes the Jacobian of the scaled task losses with respect to the shared parameters (one row
per task) and lets a TorchJD aggregator turn it into one gradient; every other parameter gets the plain
sum of the task gradients (torchjd.autojac.mtl_backward, then torchjd.autojac.jac_to_grad). With
`shared: encoder` (default) the Jacobian is taken through the backbone's outputs, so the cross-task
decoders of MTI-Net, PAD-Net, DeMT and InvPT get the plain sum; `shared: several_tasks` aggregates over
every parameter that more than one task's loss reaches (decoders included), at the cost of a Jacobian
the size of those parameters. TorchJD uses torch.vmap over the tasks; `parallel_chunk_size: 1`
differentiates one task at a time (less memory, slower).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtbench.balancing.base import Balancer, SharedParameters, shared_parameters
from mtbench.balancing.registry import register_balancer
from mtbench.errors import MtbenchError

# name -> (torchjd.aggregation class, paper, extra needed, default options)
AGGREGATORS: dict[str, tuple[str, str, str | None, dict[str, Any]]] = {
    "upgrad": ("UPGrad", "Quinton & Rey, 'Jacobian Descent for Multi-Objective Optimization', 2024",
               "quadprog-projector", {}),
    "mgda": ("MGDA", "Désidéri 2012; Sener & Koltun, NeurIPS 2018 (min-norm point of the gradients' hull)",
             None, {}),
    "pcgrad": ("PCGrad", "Yu et al., NeurIPS 2020 (project conflicting gradients)", None, {}),
    "cagrad": ("CAGrad", "Liu et al., NeurIPS 2021 (conflict-averse gradient, c = 0.4 as its NYUv2 runs)",
               "cagrad", {"c": 0.4}),
    "nashmtl": ("NashMTL", "Navon et al., ICML 2022 (Nash bargaining)", "nash-mtl", {}),
    "imtlg": ("IMTLG", "Liu et al., ICLR 2021 (impartial MTL, gradient part)", None, {}),
    "aligned_mtl": ("AlignedMTL", "Senushkin et al., CVPR 2023 (aligned gradients)", None, {}),
    "dualproj": ("DualProj", "Quinton & Rey 2024 (projection onto the dual cone of the gradients)",
                 "quadprog-projector", {}),
    "graddrop": ("GradDrop", "Chen et al., NeurIPS 2020 (gradient sign dropout; no task weights)", None, {}),
}
COMMON_OPTIONS = ("shared", "parallel_chunk_size")
# Aggregator arguments that take tensors or functions, which a YAML file cannot give.
NOT_FROM_CONFIG = frozenset({"n_tasks", "pref_vector", "projector", "f", "leak"})


class JacobianBalancer(Balancer):
    """A TorchJD aggregator over the Jacobian of the scaled task losses w.r.t. the shared parameters.

    The weights returned (and logged) are the aggregator's weights on the Jacobian's rows, where it has
    some (GradDrop has none: nothing is logged for it).
    """

    needs_model = True
    data_parallel = False  # each process would aggregate its own Jacobian

    def __init__(self, tasks: tuple[str, ...], scales: Mapping[str, float], aggregator: Any, *,
                 shared: SharedParameters = "encoder", parallel_chunk_size: int | None = None) -> None:
        super().__init__(tasks, scales)
        if shared not in ("encoder", "several_tasks"):
            raise MtbenchError(f"option shared={shared!r}: use 'encoder' or 'several_tasks'.")
        self.aggregator, self.shared, self.chunk = aggregator, shared, parallel_chunk_size
        self.has_weights = hasattr(aggregator, "weighting")
        self._model: list[nn.Module] = []  # not a submodule: the balancer's state is its own
        self._shared: list[nn.Parameter] = []
        self._features: list[Tensor] = []

    def attach(self, model: nn.Module) -> None:
        self._model = [model]
        if self.shared == "encoder":
            self._shared = shared_parameters(model, None, "encoder", self.name)
            model.backbone.register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._features = [output] if torch.is_tensor(output) else list(output)

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor:
        from torchjd.autojac import backward, jac_to_grad, mtl_backward

        values = [losses[t] for t in self.tasks]
        if self.shared == "encoder":
            # retain_graph: the decoders of MTI-Net, PAD-Net, DeMT and InvPT are shared by several tasks' graphs.
            mtl_backward(values, features=self._features, shared_params=self._shared, retain_graph=True,
                         parallel_chunk_size=self.chunk)
        else:
            if not self._shared:
                self._shared = shared_parameters(self._model[0], losses, "several_tasks", self.name)
            shared_ids = {id(p) for p in self._shared}
            others = [p for p in self._model[0].parameters() if p.requires_grad and id(p) not in shared_ids]
            backward(values, inputs=self._shared, retain_graph=True, parallel_chunk_size=self.chunk)
            grads = torch.autograd.grad(sum(values), others, allow_unused=True)
            for p, g in zip(others, grads, strict=True):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        weights = jac_to_grad(self._shared, self.aggregator)
        self._features = []
        return self.record(weights if weights is not None else torch.ones_like(self.scales))

    def task_weights(self) -> dict[str, float]:
        return super().task_weights() if self.has_weights else {}


def make_aggregator(name: str, n_tasks: int, options: Mapping[str, Any]) -> Any:
    """Build TorchJD's aggregator `name`; a missing optional extra is a clear error with the pip command."""
    try:
        from torchjd import aggregation
    except ImportError:
        raise MtbenchError(f"balancer {name!r} needs TorchJD: pip install torchjd") from None
    cls_name, _, extra, defaults = AGGREGATORS[name]
    cls = getattr(aggregation, cls_name)
    kwargs = {**defaults, **options}
    if "n_tasks" in inspect.signature(cls).parameters:
        kwargs["n_tasks"] = n_tasks
    try:
        return cls(**kwargs)
    except ImportError:
        raise MtbenchError(f"balancer {name!r} needs TorchJD's optional extra: "
                           f'pip install "torchjd[{extra}]"') from None


def aggregator_options(name: str) -> tuple[str, ...]:
    """The constructor options of TorchJD's aggregator for `name` (n_tasks is filled in by mtbench)."""
    try:
        from torchjd import aggregation
    except ImportError:
        return COMMON_OPTIONS
    params = inspect.signature(getattr(aggregation, AGGREGATORS[name][0])).parameters
    return tuple(p for p in params if p not in NOT_FROM_CONFIG) + COMMON_OPTIONS


def jacobian_builder(name: str) -> Callable[..., JacobianBalancer]:
    """The registry builder of aggregator `name`: splits mtbench's options from the aggregator's."""
    def build(tasks: tuple[str, ...], scales: Mapping[str, float], **options: Any) -> JacobianBalancer:
        own = {k: options.pop(k) for k in COMMON_OPTIONS if k in options}
        return JacobianBalancer(tasks, scales, make_aggregator(name, len(tasks), options), **own)

    return build


for _name, (_cls, _paper, _extra, _defaults) in AGGREGATORS.items():
    _needs = f' Needs pip install "torchjd[{_extra}]".' if _extra else ""
    register_balancer(_name, jacobian_builder(_name), options=aggregator_options(_name),
                      doc=f"TorchJD {_cls}: {_paper}.{_needs}")
