"""Every registered dataset is a `mtbench.protocols.TaskDataset`, with its attributes declared on the class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mtbench.data import build_dataset
from mtbench.data.layouts import write_layout
from mtbench.protocols import TaskDataset
from mtbench.registry import DATASETS
from mtbench.tasks import DATASET_TASKS

H, W = 32, 48
SYNTHETIC = {"num_train": 3, "num_val": 2, "num_test": 2, "height": H, "width": W}
# Registered dataset -> the tree layout it reads (None: rendered, no files).
LAYOUT = {"synthetic_nyud": None, "synthetic_pascal": None, "nyud": "nyudv2", "pascal_context": "pascal_context"}
ATTRIBUTES = {"tasks": tuple, "variant": str, "fingerprint": str, "skipped": list, "augment_seed": int}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("protocol")
    for layout in {layout for layout in LAYOUT.values() if layout is not None}:
        write_layout(layout, base / layout, 6, height=H, width=W, seed=0)
    return {name: base / layout for name, layout in LAYOUT.items() if layout is not None}


def build(name: str, roots: dict[str, Path], split: str, **options: Any) -> Any:
    if LAYOUT[name] is None:
        return build_dataset(name, split=split, **SYNTHETIC, **options)
    return build_dataset(name, root=roots[name], split=split, **options)


def declared(cls: type, attribute: str) -> bool:
    """An attribute is declared when a class of the MRO annotates it or defines it (a property)."""
    return any(attribute in vars(c).get("__annotations__", {}) or attribute in vars(c) for c in cls.__mro__)


def test_every_registered_dataset_is_covered() -> None:
    assert set(DATASETS.names()) == set(LAYOUT)


@pytest.mark.parametrize(("name", "protocol"), [(name, None) for name in sorted(LAYOUT)]
                         + [(name, "atrc") for name in sorted(LAYOUT) if LAYOUT[name] is not None])
def test_dataset_satisfies_the_task_dataset_protocol(roots, name: str, protocol: str | None) -> None:
    options = {} if protocol is None else {"protocol": protocol, "crop_size": (24, 32), "pad_to": (H, W)}
    ds = build(name, roots, "train", **options)
    assert isinstance(ds, TaskDataset)
    assert set(ATTRIBUTES) == set(TaskDataset.__annotations__)
    for attribute, kind in ATTRIBUTES.items():
        assert isinstance(getattr(ds, attribute), kind), attribute
        assert declared(type(ds), attribute), f"{type(ds).__name__} does not declare {attribute!r}"
    assert ds.tasks == DATASET_TASKS[name] and all(isinstance(t, str) for t in ds.tasks)
    assert ds.skipped == [] and ds.variant and ds.fingerprint
    assert isinstance(len(ds), int) and len(ds) > 0
    sample = ds[0]
    assert isinstance(sample, dict) and isinstance(sample["image"], torch.Tensor) and "meta" in sample
    assert set(sample) == {"image", "meta", *ds.tasks}


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_setting_augment_seed_is_harmless_without_augmentation(roots, name: str) -> None:
    ds = build(name, roots, "val")
    before = ds[0]
    ds.augment_seed = 7
    after = ds[0]
    assert ds.augment_seed == 7 and before["meta"] == after["meta"]
    assert all(torch.equal(before[key], after[key]) for key in ("image", *ds.tasks))


@pytest.mark.parametrize("name", ["nyud", "pascal_context"])
def test_augment_seed_picks_the_augmentation_of_a_tree_dataset(roots, name: str) -> None:
    ds = build(name, roots, "train", protocol="atrc", crop_size=(24, 32), pad_to=(H, W))
    draws = []
    for seed in (0, 0, 1):
        ds.augment_seed = seed
        draws.append(ds[0]["image"])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
