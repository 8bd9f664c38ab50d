"""Trial ids are a hash of the resolved config: refactoring the code must not change them (resume and the
tracking store find trials by id). These ids were printed by `mtbench run EXP --dry-run` before the
contracts refactor; a change here re-runs every user's finished trials."""

from __future__ import annotations

import pytest
from conftest import EXPERIMENTS

from mtbench.config.loading import expand_trials, load_experiment

PINNED = {
    "quickstart": {
        "quickstart/single_task/seed0": "dd75fa9e8779", "quickstart/single_task/seed1": "7c215a431759",
        "quickstart/shared_encoder/seed0": "7fa78d378c3b", "quickstart/shared_encoder/seed1": "8452d7372d85",
        "quickstart/demt/seed0": "a8e4e05dc9a4", "quickstart/demt/seed1": "7bbdad6c3295"},
    "tiny_invpt": {"tiny_invpt/invpt/seed0": "7b0ddf27b138"},
    "tiny_mtinet": {"tiny_mtinet/mtinet/seed0": "b2378cc2baad", "tiny_mtinet/padnet/seed0": "957cfea517b3"},
}


# Config changes made to the files since the ids were pinned (each changes the numbers, so the ids, on purpose):
# undone here, the ids must come out as pinned.
SINCE_PINNED = {"quickstart": ["train.channels_last=false"]}  # quickstart.yaml turned channels-last on


@pytest.mark.parametrize("experiment", sorted(PINNED))
def test_trial_ids_are_stable(experiment):
    trials = expand_trials(load_experiment(EXPERIMENTS / f"{experiment}.yaml", SINCE_PINNED.get(experiment)))
    assert {t.key: t.id for t in trials} == PINNED[experiment]
