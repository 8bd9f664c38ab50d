"""Datasets read from a tree of files: split lists, decoding with errors that name the file and id,
fingerprints, and the torch Dataset that turns raw arrays into Samples through a protocol transform.

A tree dataset describes its files as `FileSpec`s (folder, extension, reader) per key and converts each
task's file with a decoder of its own; `TreeDataset` does the rest. Raw arrays follow the conventions of
`mtbench.data.transforms` (uint8 RGB `rgb`, class maps uint8 with `mtbench.tasks.IGNORE` = ignore, depth
metres with 0 = invalid, normals with zero = invalid).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image
from torch.utils.data import Dataset

from mtbench.errors import MtbenchError

Reader = Callable[[Path], np.ndarray]

# The split file each split reads: papers report the val split, so `test` reads it too.
SPLIT_FILES = {"train": "train", "val": "val", "test": "val"}


class BadSampleError(MtbenchError):
    """A file of one sample is missing, unreadable or holds illegal values."""


@dataclass(frozen=True)
class FileSpec:
    """Where one key of a sample lives (`<root>/<folder>/<id><ext>`) and how its file is read."""

    folder: str
    ext: str
    read: Reader

    def path(self, root: Path, sample_id: str) -> Path:
        return root / self.folder / f"{sample_id}{self.ext}"


@dataclass(frozen=True)
class Source:
    """The file one label was read from, its sample id and the image size: what a decoder's checks name."""

    sample_id: str
    path: Path
    size: tuple[int, int]

    def check_shape(self, array: np.ndarray, channels: int | None) -> None:
        check_shape(self.sample_id, self.path, array, self.size, channels)

    def check_range(self, values: np.ndarray, legal: str, ok: np.ndarray | bool) -> None:
        check_range(self.sample_id, self.path, values, legal, ok)


# Converts what a FileSpec's reader returned into the task's raw array, checking shape and legal values.
Decoder = Callable[[Any, Source], np.ndarray]


# ------------------------------------------------------------------------------------- readers
def read_rgb(path: Path) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB (PIL decodes JPEG and PNG; grey or RGBA files are converted).

    PIL, not torchvision.io: the latter decodes 480x640 JPEGs ~1.3x as fast, but decoding is ~1 ms of
    a sample's ~20 ms read and torchvision deprecated its decoders in 0.29 (benchmarks/bench_loading.py).
    """
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_png(path: Path) -> np.ndarray:
    """A PNG as stored: (H, W) for label maps (palette PNGs give their indices, the class ids),
    (H, W, 3) for RGB-encoded maps; values untouched."""
    with Image.open(path) as img:
        return np.asarray(img)


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def read_mat(path: Path) -> dict[str, Any]:
    return scipy.io.loadmat(path)


def load(spec_path: Path, reader: Callable[[Path], Any], sample_id: str) -> Any:
    """Read one file; a missing or corrupt file is a BadSampleError naming the file and the id."""
    if not spec_path.is_file():
        raise BadSampleError(f"sample {sample_id!r}: file {spec_path} is missing. Check the tree with "
                             f"`mtbench data check`, or restore the file from the archive.")
    try:
        return reader(spec_path)
    except Exception as err:  # noqa: BLE001 - any decoder failure means a corrupt file
        raise BadSampleError(f"sample {sample_id!r}: cannot read {spec_path} ({type(err).__name__}: {err}). "
                             "The file is corrupt or truncated; restore it from the archive.") from None


def check_shape(sample_id: str, path: Path, array: np.ndarray, size: tuple[int, int], channels: int | None) -> None:
    """A label must have the image's height and width (and `channels` trailing channels if given)."""
    want = size if channels is None else (*size, channels)
    if tuple(array.shape) != want:
        raise BadSampleError(f"sample {sample_id!r}: {path} has shape {tuple(array.shape)}, expected {want} "
                             "(the image's size). The label belongs to another image or the tree mixes archives.")


def check_range(sample_id: str, path: Path, values: np.ndarray, legal: str, ok: np.ndarray | bool) -> None:
    """Refuse a label with values outside its legal set, naming the file and an offending value."""
    if not np.all(ok):
        bad = np.asarray(values)[~np.asarray(ok)] if not isinstance(ok, bool) else np.asarray(values).ravel()
        raise BadSampleError(f"sample {sample_id!r}: {path} holds {bad.ravel()[0].item()!r}, outside the legal values "
                             f"({legal}). The file is corrupt or belongs to another dataset.")


# --------------------------------------------------------------------------------------- splits
def read_split(path: Path, dataset: str, root: Path) -> list[str]:
    """Ids of a split file (one per line, blank lines ignored)."""
    if not path.is_file():
        raise MtbenchError(f"{dataset}: split file {path} is missing. Check the tree with "
                           f"`mtbench data check {dataset} --root {root}`.")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise MtbenchError(f"{dataset}: split file {path} lists no ids.")
    return ids


def split_file(dataset: str, split: str) -> str:
    """The split file `split` reads (SPLIT_FILES); an unknown split is a user error naming the valid ones."""
    if split not in SPLIT_FILES:
        raise MtbenchError(f"{dataset}: unknown split {split!r}; valid: {', '.join(SPLIT_FILES)} (test reads "
                           "val.txt, the split papers report).")
    return SPLIT_FILES[split]


def ids_hash(ids: Sequence[str]) -> str:
    """Short hash of an id list (order-sensitive, as the split files are)."""
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


def check_root(root: str | Path | None, dataset: str) -> Path:
    if root is None:
        raise MtbenchError(f"dataset {dataset!r} reads files: set dataset.root to the folder holding it "
                           f"(README 'Datasets' says where to get it), or use synthetic_{dataset.split('_')[0]}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MtbenchError(f"dataset {dataset!r}: root {path} does not exist or is not a folder. Set "
                           "dataset.root to the unpacked archive (README 'Datasets').")
    return path


def drop_missing(ids: list[str], missing: dict[str, list[str]], *, skip: bool, dataset: str, split: str,
                 root: Path, example: Callable[[str, str], Path],
                 variant: str | None = None) -> tuple[list[str], list[str]]:
    """Ids to use and ids skipped: with files missing, an error naming one (or, with `skip`, drop them)."""
    if not missing:
        return ids, []
    if not skip:
        key, absent = next(iter(missing.items()))
        where = f"{dataset} ({variant})" if variant else dataset
        raise BadSampleError(f"{where}: {len(absent)} of {len(ids)} {split} ids have no {key} file, e.g. "
                             f"{example(key, absent[0])} (id {absent[0]!r}). Run `mtbench data check {dataset} "
                             f"--root {root}`, or set dataset.options.skip_missing: true to drop them.")
    skipped = sorted({i for absent in missing.values() for i in absent})
    dropped = set(skipped)
    return [i for i in ids if i not in dropped], skipped


# -------------------------------------------------------------------------------------- dataset
class TreeDataset(Dataset):
    """Samples of one split of a tree: `read_raw(id)` -> raw arrays -> `transform` -> Sample.

    Indices past `len(self)` are draws of later epochs (`index // len` is the epoch, see
    mtbench.engine.batching): the random augmentation of a draw is seeded by (augment_seed, epoch, index),
    so a resumed trial sees exactly the batches an uninterrupted one would. A `mtbench.protocols.TaskDataset`.
    """

    tasks: tuple[str, ...]
    variant: str
    skipped: list[str]
    augment_seed: int

    def __init__(self, *, name: str, root: Path, split: str, tasks: tuple[str, ...], ids: list[str],
                 read_raw: Callable[[str], dict[str, np.ndarray]], transform: Callable, variant: str,
                 image_size: str, skipped: Sequence[str] = ()) -> None:
        self.name, self.root, self.split, self.tasks = name, root, split, tasks
        self.ids, self.read_raw, self.transform = ids, read_raw, transform
        self.variant, self.image_size = variant, image_size
        self.augment_seed = 0  # a trial sets its seed here (mtbench.engine.trial)
        self.skipped = list(skipped)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Indices past len are draws of later epochs, so iteration must stop at len explicitly.
        return (self[i] for i in range(len(self)))

    @property
    def fingerprint(self) -> str:
        """Dataset, archive variant, image size, split size and a hash of its ids (+ skipped ids)."""
        skipped = f":skipped{len(self.skipped)}" if self.skipped else ""
        return (f"{self.name}:{self.variant}:{self.image_size}:{self.split}={len(self.ids)}:"
                f"ids-{ids_hash(self.ids)}{skipped}:{getattr(self.transform, 'name', 'raw')}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, index = divmod(int(index), len(self.ids))
        sample_id = self.ids[index]
        raw = self.read_raw(sample_id)
        h, w = raw["rgb"].shape[:2]
        rng = np.random.default_rng([self.augment_seed, epoch, index, zlib.crc32(self.split.encode())])
        sample = self.transform(raw, rng)
        sample["meta"] = {"id": sample_id, "size": (h, w)}
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, variant={self.variant!r}, split={self.split!r}, "
                f"n={len(self.ids)}, tasks={self.tasks})")
