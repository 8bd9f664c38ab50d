"""Image-id lists on which published boundary odsF is computed (SEISM's `gt_sets/<db>/test_new.txt`).

`pascal_context_test_new.txt`: the 2,498 PASCAL-Context val images with boundary ground truth in SEISM (of
the 5,105 val images); `nyud_test_new.txt`: the 654 NYUD-v2 test (val) images. Both as kept in
prismformore/Boundary-Detection-Evaluation-Tools, which `pr_curves_base.m` evaluates with `gt_set = 'test_new'`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from mtbench.errors import MtbenchError

_FILES = {"nyud": "nyud_test_new.txt", "pascal_context": "pascal_context_test_new.txt"}


@cache
def _read(name: str) -> tuple[str, ...]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def edge_eval_ids(dataset: str) -> list[str]:
    """Return the ids of the images whose boundaries SEISM scores on `dataset` ('nyud' or 'pascal_context'),
    in the list's order. Synthetic datasets have no such list: score all of their images."""
    if dataset not in _FILES:
        raise MtbenchError(f"no boundary evaluation list for dataset {dataset!r}; lists exist for "
                           f"{', '.join(_FILES)} (the real archives; synthetic sets are scored whole).")
    return list(_read(_FILES[dataset]))
