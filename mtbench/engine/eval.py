"""`mtbench eval`: score given weights on a split without training, as one MLflow run of kind `eval`.

The trial is built by the same `build` as a training trial (datasets, model, meters from its TrialConfig alone),
the weights are loaded strictly (`mtbench.models.load_weights`), and the split is scored by the same `score` as
a trial's final test, edge odsF included; so a trial's own `last.pt` gives exactly the test metrics of the run
that wrote it (on CPU). Everything a user can get wrong is checked before the run starts: a failed eval logs
nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbench import tracking
from mtbench.config.loading import select_trials
from mtbench.config.schema import TrialConfig
from mtbench.engine import distributed
from mtbench.engine.trial import (
    BuiltTrial,
    TrialResult,
    build,
    closed_on_error,
    log_predictions,
    resolve_device,
    run_params,
    run_tags,
    score,
    trial_dir,
)
from mtbench.errors import MtbenchError
from mtbench.models import WeightsReport, load_weights
from mtbench.profiling import measure_cost

SPLITS = ("test", "val")
REPORT_JSON = "weights_report.json"
REPORT_TEXT = "weights_report.txt"


@dataclass(kw_only=True)
class EvalResult(TrialResult):
    """A TrialResult (what the CLI's results table reads) plus the split scored and the weights report."""

    split: str
    weights: WeightsReport


def check_split(split: str) -> None:
    """Refuse a split that eval cannot score (the train split has augmentation; no metrics are defined on it)."""
    if split not in SPLITS:
        raise MtbenchError(f"--split {split!r}: eval scores one of {', '.join(SPLITS)}.")


def pick_trial(trials: list[TrialConfig], *, variant: str | None = None, seed: int | None = None) -> TrialConfig:
    """The trial that `variant` and `seed` name among an experiment's trials; without them its only trial."""
    chosen = select_trials(trials, variant=variant, seed=seed)
    if len(chosen) == 1:
        return chosen[0]
    listed = ", ".join(f"{t.variant} seed {t.seed}" for t in trials)
    raise MtbenchError(f"experiment {trials[0].experiment!r} has {len(chosen)} trials that match: {listed}. Name "
                       "one with --variant NAME and --seed K.")


def evaluate_weights(cfg: TrialConfig, weights: str | Path, *, split: str = "test", progress: Any = None,
                     converter: str | None = None) -> EvalResult:
    """Build `cfg`'s trial, load `weights` into its model, score `split` and log it as one eval run.

    The run is in the trial's MLflow experiment with the trial's tags and params, `<split>/...` metrics,
    GFLOPs, prediction images and the weights report; it is started only once the weights have loaded.
    """
    started = time.time()
    check_split(split)
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    tracking.check_tracking_uri(uri)
    trial = build(cfg, distributed.DistEnv(), resolve_device(cfg.train.device), trial_dir(cfg))
    report = load_weights(trial.model, weights, converter=converter,
                          expect={"model": cfg.model.name, "backbone": cfg.model.backbone,
                                  "dataset": cfg.dataset.name, "tasks": list(trial.tasks)})
    cost = measure_cost(trial.model, trial.img_size)
    tracker = tracking.Tracker.start(uri, cfg.experiment, f"eval-{cfg.variant}-seed{cfg.seed}",
                                     eval_tags(trial, report, split))
    with closed_on_error(tracker):
        tracker.log_params(run_params(trial, cost))
        tracker.log_dict(cfg.model_dump(), "config.yaml")
        metrics = score(trial, split, progress=progress)
        step = report.step or 0
        tracker.log_metrics({f"{split}/{k}": v for k, v in metrics.items()}, step)
        log_predictions(trial, tracker, split)
        tracker.log_text(report.summary() + "\n", REPORT_TEXT)
        tracker.log_dict(report.as_dict(), REPORT_JSON)
        result = EvalResult(key=cfg.key, variant=cfg.variant, seed=cfg.seed, run_id=tracker.run_id,
                            status="FINISHED", split=split, weights=report, metrics=metrics,
                            wall_time_s=time.time() - started)
        tracker.log_metrics({"wall_time_s": result.wall_time_s}, step)
        tracker.log_dict({"split": split, "checkpoint": "weights", "weights": report.path, "sha256": report.sha256,
                          "weights_step": report.step, **metrics}, "final_metrics.json")
        tracker.end("FINISHED")
    return result


def eval_tags(trial: BuiltTrial, report: WeightsReport, split: str) -> dict[str, str]:
    """A trial run's tags (experiment, variant, seed, metric variants, ...) plus what marks and traces an eval."""
    return {**run_tags(trial), tracking.TAG_CHECKPOINT: "weights", tracking.TAG_EVAL: "true", tracking.TAG_KIND: "eval",
            tracking.TAG_EVAL_WEIGHTS: str(Path(report.path).resolve()), tracking.TAG_EVAL_SHA256: report.sha256,
            tracking.TAG_EVAL_FORMAT: report.converter or report.source, tracking.TAG_EVAL_SPLIT: split,
            "mtbench.eval.trained_as": json.dumps(report.trained_as) if report.trained_as else "unknown"}
