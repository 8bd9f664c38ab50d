"""Experiment configuration: schema, YAML loading with `base:` and overrides, trial expansion."""

from mtbench.config.loading import expand_trials, load_experiment
from mtbench.config.schema import Experiment, TrialConfig

__all__ = ["Experiment", "TrialConfig", "expand_trials", "load_experiment"]
