"""`mtbench data check`: verify a dataset tree before a long run, and say exactly what is wrong.

Every split id must have every file its tasks read, labels must have the image's size and legal
values, and the tree must be the archive the loader expects (a PASCAL-Context root given as NYUD,
an archive unpacked one folder too deep, a re-upload without normals or saliency are named as such).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mtbench.data import nyud, pascal_context
from mtbench.data.tree import BadSampleError, check_root, ids_hash, read_split
from mtbench.errors import MtbenchError
from mtbench.tasks import resolve_tasks

CHECKABLE = ("nyud", "pascal_context")
SPLITS = ("train", "val")
# What a wholly missing folder means, per dataset and file key, where the dataset knows more than "incomplete".
MISSING_HINTS: dict[str, dict[str, str]] = {"pascal_context": pascal_context.MISSING_HINTS}
INCOMPLETE = "the archive is incomplete; unpack the full archive, or leave that task out of dataset.tasks"


@dataclass
class CheckReport:
    """What `check_tree` found: variant, ids per split, image sizes, and every problem."""

    dataset: str
    root: Path
    variant: str
    tasks: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    id_hashes: dict[str, str] = field(default_factory=dict)
    image_sizes: Counter[str] = field(default_factory=Counter)
    missing: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> key -> ids
    examples: dict[tuple[str, str], Path] = field(default_factory=dict)  # (split, key) -> a missing path
    bad: list[str] = field(default_factory=list)  # one message per bad sample (file, id, what)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad and not any(self.missing.values())

    @property
    def fingerprint(self) -> str:
        sizes = ",".join(sorted(self.image_sizes)) if len(self.image_sizes) <= 3 else "varies"
        splits = ":".join(f"{s}={n}:ids-{self.id_hashes[s]}" for s, n in self.counts.items())
        return f"{self.dataset}:{self.variant}:{sizes}:{splits}"

    def problems(self, limit: int = 10) -> list[str]:
        """Human-readable problems, whole missing folders first (the re-upload case)."""
        out: list[str] = []
        for split, by_key in self.missing.items():
            for key, ids in by_key.items():
                total = self.counts[split]
                what = f"all {total}" if len(ids) == total else f"{len(ids)} of {total}"
                example = self.examples.get((split, key), "")
                out.append(f"{split}: {what} ids have no {key} file (e.g. id {ids[0]!r}: {example})"
                           + (f" — {key_hint(self.dataset, key)}" if len(ids) == total else ""))
        out.extend(self.bad[:limit])
        if len(self.bad) > limit:
            out.append(f"... and {len(self.bad) - limit} more bad samples")
        return out


def key_hint(dataset: str, key: str) -> str:
    """What a wholly missing folder means and what to do."""
    return MISSING_HINTS.get(dataset, {}).get(key, INCOMPLETE)


def check_tree(name: str, root: str | Path, *, tasks: Sequence[str] | None = None, full: bool = True,
               progress: Callable[[str, int, int], None] | None = None) -> CheckReport:
    """Check dataset `name` at `root`: files of every id (and with `full`, every sample read and validated)."""
    if name not in CHECKABLE:
        raise MtbenchError(f"mtbench data check: unknown dataset {name!r}; valid: {', '.join(CHECKABLE)} "
                           "(synthetic datasets have no files).")
    path = check_root(root, name)
    task_tuple = tuple(resolve_tasks(name, None if tasks is None else list(tasks)))
    if name == "nyud":
        variant = nyud.detect_variant(path)
        ids_of = {s: read_split(path / "gt_sets" / f"{s}.txt", name, path) for s in SPLITS}
        find_missing = partial(nyud.missing_files, path, variant, task_tuple)
        read = partial(nyud.read_sample, path, variant, task_tuple)
        file_of = lambda key, i: nyud.VARIANTS[variant][key].path(path, i)  # noqa: E731
    else:
        pascal_context.check_layout(path)
        variant = "PASCAL_MT"
        ids_of = {s: read_split(path / "ImageSets" / "Context" / f"{s}.txt", name, path) for s in SPLITS}
        find_missing = partial(pascal_context.missing_files, path, task_tuple)
        read = partial(pascal_context.read_sample, path, task_tuple)
        file_of = lambda key, i: pascal_context.file_spec(path, key, i).path(path, i)  # noqa: E731
    report = CheckReport(dataset=name, root=path, variant=variant, tasks=task_tuple)
    for split, ids in ids_of.items():
        report.counts[split] = len(ids)
        report.id_hashes[split] = ids_hash(ids)
        duplicates = [i for i, n in Counter(ids).items() if n > 1]
        if duplicates:
            report.bad.append(f"{split}: split file lists {len(duplicates)} ids twice (e.g. {duplicates[0]!r})")
        report.missing[split] = missing = find_missing(ids)
        report.examples.update({(split, key): file_of(key, absent[0]) for key, absent in missing.items()})
        if not full:
            continue
        unreadable = {i for absent in missing.values() for i in absent}
        todo = [i for i in ids if i not in unreadable]
        for done, sample_id in enumerate(todo, 1):
            try:
                raw = read(sample_id)
                report.image_sizes["x".join(map(str, raw["rgb"].shape[:2]))] += 1
            except BadSampleError as err:
                report.bad.append(str(err))
            if progress is not None:
                progress(split, done, len(todo))
    overlap = set(ids_of["train"]) & set(ids_of["val"])
    if overlap:
        report.bad.append(f"{len(overlap)} ids are in both train and val (e.g. {sorted(overlap)[0]!r})")
    return report
