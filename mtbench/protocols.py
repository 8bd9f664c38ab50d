"""What the registries hold: the interfaces a backbone, model, dataset, meter and loss balancer provide.

Each is a `typing.Protocol`; tests/test_protocols.py builds every registered entry and checks it against
its protocol, so a newcomer reads here what a new entry must provide and the test says what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class FeatureBackbone(Protocol):
    """`forward(image (B, 3, H, W)) -> [NCHW map]`, one map per entry of `channels` and `reductions`.

    A "pyramid" backbone returns maps at strides 4, 8, 16, 32; a "tokens" backbone (ViT) returns maps
    all at its patch stride (BackboneEntry.kind).
    """

    channels: list[int]
    reductions: list[int]

    def __call__(self, x: Tensor) -> list[Tensor]: ...


@runtime_checkable
class MultiTaskModel(Protocol):
    """`forward(image (B, 3, H, W)) -> {task: (B, C_t, H, W) logits or raw regression}` at input size.

    `auxiliary` holds the deep-supervision predictions of the last training forward, {name: {task:
    (B, C_t, h, w)}} at any size (the trainer upsamples them to the label and weights them like the final
    ones); it is empty in eval mode and for models without deep supervision.
    """

    tasks: tuple[str, ...]
    auxiliary: dict[str, dict[str, Tensor]]

    def __call__(self, image: Tensor) -> dict[str, Tensor]: ...


@runtime_checkable
class TaskDataset(Protocol):
    """A split of Samples (DESIGN.md): `dataset[i] -> {"image", "meta", task: label}`.

    `variant` names the archive (NYUD_MT, NYUDv2, PASCAL_MT, synthetic ...); `fingerprint` identifies
    variant, image size, split size, id list and transform; `skipped` lists ids dropped by
    `skip_missing`; `augment_seed` seeds the random augmentation of every draw (each trial seed sets it).
    """

    tasks: tuple[str, ...]
    variant: str
    fingerprint: str
    skipped: list[str]
    augment_seed: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@runtime_checkable
class Meter(Protocol):
    """reset / update(pred, target) / compute over a split; a tensor state that processes can merge.

    `variant` is the name the meter was built under ("reference", or e.g. "invpt"); `metric_variant` the
    suffix of its metric keys (None for the reference definition and its aliases).
    """

    task: str
    variant: str
    metric_variant: str | None

    def reset(self) -> None: ...

    def close(self) -> None: ...

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def state_tensors(self) -> dict[str, Tensor]: ...

    def load_state_tensors(self, state: dict[str, Tensor]) -> None: ...


@runtime_checkable
class LossBalancer(Protocol):
    """Turns the scaled task losses into gradients (mtbench.balancing.base states the contract).

    `scale(losses)` applies the fixed `loss.weights`; `backward(scaled)` fills `.grad` and returns the (T,)
    weights it applied; `after_step(recompute)` runs after the optimiser step; `task_weights()` is what is
    logged. An `nn.Module`, so that learnable weights reach the optimiser and all state the checkpoint.
    """

    tasks: tuple[str, ...]

    def scale(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]: ...

    def attach(self, model: Any) -> None: ...

    def backward(self, losses: Mapping[str, Tensor]) -> Tensor: ...

    def after_step(self, recompute: Any) -> None: ...

    def task_weights(self) -> dict[str, float]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...
