"""The report's default Δm reference is the experiment's `reference_variant`, which every run records."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import EXPERIMENTS

from mtbench.config.loading import expand_trials, load_experiment
from mtbench.errors import MtbenchError
from mtbench.report import default_reference
from mtbench.tracking import TAG_REFERENCE_VARIANT


def test_trials_carry_their_experiments_reference_variant():
    trials = expand_trials(load_experiment(EXPERIMENTS / "tiny_mtinet.yaml"))
    assert {t.reference_variant for t in trials} == {"mtinet"}
    assert "reference_variant" not in trials[0].identity()  # not part of the trial id


def test_default_reference_comes_from_the_runs():
    runs = pd.DataFrame({"tags": [{TAG_REFERENCE_VARIANT: "mtinet"}, {TAG_REFERENCE_VARIANT: "mtinet"}]})
    assert default_reference(runs) == "mtinet"
    assert default_reference(pd.DataFrame({"tags": [{}, {}]})) == "single_task"  # runs from before the tag


def test_runs_naming_different_references_need_an_explicit_one():
    runs = pd.DataFrame({"tags": [{TAG_REFERENCE_VARIANT: "mtinet"}, {TAG_REFERENCE_VARIANT: "single_task"}]})
    with pytest.raises(MtbenchError, match=r"different Δm references \(mtinet, single_task\).*--reference"):
        default_reference(runs)
