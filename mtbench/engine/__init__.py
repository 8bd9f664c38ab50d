"""Training and evaluation of one trial."""

from mtbench.engine.trial import TrialResult, run_trial

__all__ = ["TrialResult", "run_trial"]
