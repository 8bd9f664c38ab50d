"""Launchers run a list of trials; `local` runs them one after another in this process."""

from __future__ import annotations

from typing import Any

from mtbench.config.schema import TrialConfig
from mtbench.engine import TrialResult, run_trial
from mtbench.engine.trainer import NonFiniteLossError


def launch_local(trials: list[TrialConfig], *, resume: bool = False, progress: Any = None) -> list[TrialResult]:
    """Run `trials` in order; a trial whose loss diverges is recorded as FAILED and the rest go on."""
    results = []
    task_id = progress.add_task("trials", total=len(trials)) if progress is not None else None
    for cfg in trials:
        if task_id is not None:
            progress.update(task_id, description=f"trial {cfg.key}")
        try:
            results.append(run_trial(cfg, resume=resume, progress=progress))
        except NonFiniteLossError as err:
            results.append(TrialResult(key=cfg.key, variant=cfg.variant, seed=cfg.seed, run_id="", status="FAILED",
                                       metrics={"error": str(err)}))
        if task_id is not None:
            progress.advance(task_id)
    return results
