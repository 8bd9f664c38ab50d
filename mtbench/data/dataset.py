"""The synthetic datasets as torch Datasets of Samples, and their registered builders.

`synthetic_nyud` (semseg, depth, normals, edge) and `synthetic_pascal` (semseg, human_parts, sal,
normals, edge) are rendered on the fly by `mtbench.data.synthetic`, so they need no files: they are
the default dataset of tests, examples and smoke runs. A sample depends only on (dataset, seed,
split, index), never on access order, worker or process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mtbench.data.synthetic import GENERATOR_VERSION, PRESETS, SPLITS, render_scene
from mtbench.errors import MtbenchError
from mtbench.registry import DATASETS
from mtbench.tasks import TASKS, resolve_tasks

# The image is normalised with the ImageNet statistics that timm's pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(rgb: np.ndarray) -> torch.Tensor:
    """Turn an (H, W, 3) uint8 RGB array into a (3, H, W) float32 tensor normalised as ImageNet."""
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return image.sub_(mean).div_(std)


def to_sample_tensor(task: str, array: np.ndarray) -> torch.Tensor:
    """Convert one task's (H, W[, C]) generator array to its Sample tensor (DESIGN.md contract): a class map
    to a long (H, W) map, a dense map to a float (target_channels, H, W) one."""
    if task not in TASKS:
        raise ValueError(f"no Sample conversion for task {task!r}")
    spec = TASKS[task]
    if spec.is_class_map:
        return torch.from_numpy(array.astype(np.int64))
    if spec.target_channels > 1:
        # astype copies: cached arrays are read-only
        return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32, order="C"))
    return torch.from_numpy(array.astype(np.float32)[None])


class SyntheticMultiTask(Dataset):
    """Rendered scenes of one preset and split, as Samples holding `image`, `meta` and `tasks`.

    `render(index)` gives the generator's raw arrays (uint8 `rgb` included), e.g. to write an
    on-disk layout. With `cache=True` (the default) rendered arrays are kept in memory for the process
    (`_RENDERED`), so later epochs and later trials with the same data do not render them again.
    A `mtbench.protocols.TaskDataset`: `variant` is the preset's name, nothing is ever `skipped`, and
    `augment_seed` is accepted but unused, since rendered samples are not augmented.
    """

    tasks: tuple[str, ...]
    variant: str
    skipped: list[str]
    augment_seed: int

    def __init__(self, preset: str, *, split: str, tasks: Sequence[str], size: int, height: int,
                 width: int, seed: int = 0, cache: bool = False) -> None:
        if preset not in PRESETS:
            raise MtbenchError(f"unknown synthetic preset {preset!r}; valid: {', '.join(PRESETS)}.")
        if split not in SPLITS:
            raise MtbenchError(f"unknown split {split!r} for dataset {preset!r}; valid splits: "
                               f"{', '.join(SPLITS)}.")
        for option, value, low in (("size", size, 0), ("height", height, 8), ("width", width, 8),
                                   ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise MtbenchError(f"option {option!r} of dataset {preset!r} must be an integer "
                                   f">= {low}, got {value!r}.")
        self.name, self.split, self.tasks = preset, split, tuple(resolve_tasks(preset, list(tasks)))
        self.size, self.height, self.width, self.seed = size, height, width, seed
        self.variant, self.skipped, self.augment_seed = preset, [], 0
        self._cache = cache

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Indices past len are draws of later epochs, so iteration must stop at len explicitly.
        return (self[i] for i in range(len(self)))

    @property
    def fingerprint(self) -> str:
        """What identifies this data exactly: preset, generator version, seed, image size and split size."""
        return (f"{self.name}:generator-v{GENERATOR_VERSION}:seed{self.seed}:{self.height}x{self.width}:"
                f"{self.split}={self.size}")

    def render(self, index: int) -> dict[str, np.ndarray]:
        """Return the generator's arrays for `index` (see mtbench.data.synthetic for layouts)."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        index %= self.size
        key = (self.name, self.split, index, self.seed, self.height, self.width)
        if self._cache and key in _RENDERED:
            return _RENDERED[key]
        arrays = render_scene(self.name, self.split, index, seed=self.seed, height=self.height,
                              width=self.width)
        if self._cache:
            keep(key, arrays)
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        index %= self.size  # draws of later epochs (mtbench.engine.batching) read the same scene
        arrays = self.render(index)
        sample: dict[str, Any] = {"image": normalize_image(arrays["rgb"])}
        for task in self.tasks:
            sample[task] = to_sample_tensor(task, arrays[task])
        sample["meta"] = {"id": f"{self.name}-{self.split}-{index % self.size:06d}",
                          "size": (self.height, self.width)}
        return sample

    def __repr__(self) -> str:
        return (f"SyntheticMultiTask({self.name!r}, split={self.split!r}, tasks={self.tasks}, "
                f"size={self.size}, height={self.height}, width={self.width}, seed={self.seed})")


# Rendered scenes kept for the process (every dataset object and trial with the same preset, split, seed and
# size reads the same arrays: the quickstart's six trials render each scene once, not once per epoch and trial),
# up to RENDER_CACHE_BYTES; read-only, since samples are built from copies.
RENDER_CACHE_BYTES = 1 << 30
_RENDERED: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}
_rendered_bytes = 0


def keep(key: tuple[Any, ...], arrays: dict[str, np.ndarray]) -> None:
    """Add one scene's arrays to the process's render cache while it has room."""
    global _rendered_bytes
    size = sum(a.nbytes for a in arrays.values())
    if _rendered_bytes + size > RENDER_CACHE_BYTES:
        return
    for array in arrays.values():
        array.setflags(write=False)
    _RENDERED[key] = arrays
    _rendered_bytes += size


def _build(preset: str, *, root: str | Path | None, split: str, tasks: Sequence[str] | None,
           protocol: str | None, sizes: dict[str, int], height: int, width: int, seed: int,
           cache: bool) -> SyntheticMultiTask:
    del root  # rendered on the fly: there is nothing to read
    if protocol is not None:
        raise MtbenchError(f"dataset {preset!r} supports only protocol=None (ground truth at its "
                           f"rendered size), got {protocol!r}.")
    return SyntheticMultiTask(preset, split=split, tasks=resolve_tasks(preset, _task_list(tasks)),
                              size=sizes.get(split, 0), height=height, width=width, seed=seed, cache=cache)


def _task_list(tasks: Sequence[str] | None) -> list[str] | None:
    return None if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)


@DATASETS.register("synthetic_nyud")
def synthetic_nyud(*, root: str | Path | None = None, split: str, tasks: Sequence[str] | None = None,
                   protocol: str | None = None, num_train: int = 800, num_val: int = 200,
                   num_test: int = 200, height: int = 96, width: int = 128, seed: int = 0,
                   cache: bool = True) -> SyntheticMultiTask:
    """Rendered indoor rooms with NYUD's tasks (semseg, depth, normals, edge); `root` is ignored.

    `seed` picks the scenes (it is the dataset's seed, not the training seed); `height`/`width`
    are the rendered size; `num_*` the split sizes.
    """
    return _build("synthetic_nyud", root=root, split=split, tasks=tasks, protocol=protocol,
                  sizes={"train": num_train, "val": num_val, "test": num_test}, height=height,
                  width=width, seed=seed, cache=cache)


@DATASETS.register("synthetic_pascal")
def synthetic_pascal(*, root: str | Path | None = None, split: str, tasks: Sequence[str] | None = None,
                     protocol: str | None = None, num_train: int = 800, num_val: int = 200,
                     num_test: int = 200, height: int = 96, width: int = 128, seed: int = 0,
                     cache: bool = True) -> SyntheticMultiTask:
    """Rendered scenes with people and PASCAL-Context's tasks (semseg, human_parts, sal, normals,
    edge); `root` is ignored. Options as for `synthetic_nyud`.
    """
    return _build("synthetic_pascal", root=root, split=split, tasks=tasks, protocol=protocol,
                  sizes={"train": num_train, "val": num_val, "test": num_test}, height=height,
                  width=width, seed=seed, cache=cache)
