"""Optuna studies over an experiment's config (`search:` in the YAML). Only this module imports optuna.

Each Optuna trial is one mtbench trial and one MLflow run, tagged with the study and trial number and
nested under one parent run for the study. Validation results are reported to the pruner at every
evaluation; a pruned trial's run ends KILLED and tagged `mtbench.pruned`. Storage: a sqlite file by
default, `journal:<path>` (JournalFileBackend, for a shared filesystem) or any SQLAlchemy URL. Local
workers (`launcher.workers`) are processes on the same storage that share out the remaining trials,
so together they finish exactly `n_trials` (COMPLETE + PRUNED); with `launcher: slurm` the workers are
the tasks of one job array (the storage must be reachable from the nodes). Rerunning the command
continues the study: trials left RUNNING by a killed process are marked FAIL and replaced (do not run two
coordinators of one study at once).
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import yaml

from mtbench import locks, tracking
from mtbench.config.loading import set_dotted, validate
from mtbench.config.schema import Experiment, ParamSpec, Sections, TrialConfig
from mtbench.errors import MtbenchError
from mtbench.metrics import metric_direction

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Tags of a study's parent run that let `mtbench report` reopen the study.
TAG_STORAGE = "mtbench.study_storage"  # storage_spec(exp)
TAG_OBJECTIVE = "mtbench.study_objective"  # search.objective
TAG_DIRECTION = "mtbench.study_direction"  # maximize | minimize


def study_name(exp: Experiment) -> str:
    return exp.search.study_name or exp.name


def storage_spec(exp: Experiment) -> str:
    """The study's storage as an absolute spec: sqlite:///path (default), journal:path or the given URL.

    The parent MLflow run records it, so `mtbench report` can reopen the study from any directory.
    """
    spec = exp.search.storage
    if spec is None:
        return f"sqlite:///{(Path(exp.output_dir) / exp.name / 'optuna.db').resolve()}"
    if spec.startswith("journal:"):
        return f"journal:{Path(spec[len('journal:'):]).expanduser().resolve()}"
    return spec


def open_storage(exp: Experiment | str) -> Any:
    """Open the study's storage (an Experiment's, or a `storage_spec`); a failure is a user error.

    The folders of the default sqlite file and of a journal file are created; a database URL is used as given.
    """
    spec = storage_spec(exp) if isinstance(exp, Experiment) else exp
    try:
        if spec.startswith("journal:"):
            path = Path(spec[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if isinstance(exp, Experiment) and exp.search.storage is None:
            Path(spec[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(spec)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy/driver errors come in many types
        raise MtbenchError(f"search.storage: cannot open {spec!r} "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Give a "
                           "writable sqlite:///path, journal:/shared/path.log, or a reachable database URL.") from None


def study_id(exp: Experiment) -> int:
    """The storage's id of the experiment's study (optuna-dashboard's URLs name studies by it).

    A study not run yet is a user error, and its storage is not created here (an sqlite or journal file that
    does not exist is reported, not made empty).
    """
    spec, name = storage_spec(exp), study_name(exp)
    not_yet = (f"no Optuna study {name!r} in {spec!r} yet: run the study first (`mtbench run EXP.yaml` with "
               f"experiment {exp.name!r}), or check search.storage and search.study_name.")
    path = spec[len("sqlite:///"):] if spec.startswith("sqlite:///") else (
        spec[len("journal:"):] if spec.startswith("journal:") else None)
    if path is not None and not Path(path).is_file():
        raise MtbenchError(not_yet)
    try:
        return open_storage(spec).get_study_id_from_name(name)
    except KeyError:
        raise MtbenchError(not_yet) from None


def study_trials(spec: str, name: str) -> tuple[Any, dict[str, float]]:
    """Trials of study `name` in storage `spec` (DataFrame: number, value, state) and the parameter
    importances (fANOVA, seed 0; empty when fewer than two trials completed or nothing varied)."""
    import pandas as pd

    if spec.startswith("sqlite:///") and not Path(spec[len("sqlite:///"):]).is_file():
        raise MtbenchError(f"the Optuna storage {spec!r} no longer exists (moved or deleted)")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(spec))
    except KeyError:
        raise MtbenchError(f"no Optuna study {name!r} in {spec!r}; was the storage moved or the study "
                           "deleted?") from None
    trials = pd.DataFrame([(t.number, t.value if t.value is not None else math.nan, t.state.name)
                           for t in study.get_trials(deepcopy=False)], columns=["number", "value", "state"])
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # too few complete trials, or a space with one point
        importances = {}
    return trials, {k: float(v) for k, v in importances.items()}


def reference_metrics(exp: Experiment) -> dict[str, float]:
    """The Δm reference of a delta_m objective: a published row or the values given in the config."""
    ref = exp.search.reference
    if isinstance(ref, dict):
        return dict(ref)
    if not str(ref).startswith("published:"):
        raise MtbenchError(f"search.reference: {ref!r} must be published:<row> or a mapping of metric values.")
    from mtbench.report.published import published_row

    return published_row(str(ref)[len("published:"):]).metrics


def objective_value(exp: Experiment, metrics: dict[str, float], reference: dict[str, float] | None) -> float:
    """The study's objective from one validation's metrics."""
    if exp.search.objective != "delta_m":
        if exp.search.objective not in metrics:
            raise MtbenchError(f"search.objective: validation logs no {exp.search.objective!r}; it logs "
                               f"{', '.join(sorted(metrics))}.")
        return metrics[exp.search.objective]
    from mtbench.metrics import delta_m
    from mtbench.tasks import get_task, resolve_tasks

    tasks = [t for t in resolve_tasks(exp.dataset.name, exp.dataset.tasks)
             if get_task(t).primary_metric in metrics and get_task(t).primary_metric in reference]
    if not tasks:
        raise MtbenchError("search.reference: no task's primary metric is both validated and in the reference.")
    return delta_m(metrics, reference, tasks=tasks)


def direction(exp: Experiment) -> str:
    """The configured direction, or the objective metric's own (mIoU up, rmse down; Δm up)."""
    if exp.search.direction is not None:
        return exp.search.direction
    if exp.search.objective == "delta_m":
        return "maximize"
    try:
        higher_is_better = metric_direction(exp.search.objective)
    except MtbenchError:
        raise MtbenchError(f"search.objective: {exp.search.objective!r} is not a known metric; give "
                           "search.direction (maximize/minimize) or a metric like semseg/mIoU.") from None
    return "maximize" if higher_is_better else "minimize"


def sampler_for(exp: Experiment) -> optuna.samplers.BaseSampler:
    seed = exp.seeds[0]
    if exp.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if exp.search.sampler == "grid":
        space = {}
        for key, spec in exp.search.space.items():
            if spec.type == "categorical":
                space[key] = list(spec.choices)
            elif spec.type == "int":
                space[key] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
            else:
                raise MtbenchError(f"search.sampler: grid needs categorical or int parameters; {key!r} is a float "
                                   "range (give it `choices`, or use the tpe/random sampler).")
        return optuna.samplers.GridSampler(space, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner_for(exp: Experiment) -> optuna.pruners.BasePruner:
    if exp.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if exp.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=exp.train.eval_every, max_resource=exp.train.steps)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, key: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def trial_config(exp: Experiment, params: dict[str, Any], number: int) -> TrialConfig:
    """The mtbench trial of Optuna trial `number`: the base config with `params` set, the first seed."""
    data = copy.deepcopy(exp.model_dump(include=set(Sections.model_fields)))
    for key, value in params.items():
        set_dotted(data, key, value, where=f"search.space {key!r}")
    trial = dict(data, experiment=exp.name, variant=f"trial{number:04d}", seed=exp.seeds[0],
                 reference_variant=exp.reference_variant, changes=params)
    return validate(TrialConfig, trial, f"search trial {number}")


def check_space(exp: Experiment) -> None:
    """Every search key must be a config key: build one trial at the low end of every range."""
    sample = {k: (s.choices[0] if s.type == "categorical" else (int(s.low) if s.type == "int" else s.low))
              for k, s in exp.search.space.items()}
    trial_config(exp, sample, 0)


def objective(exp: Experiment, parent_run_id: str, trial: optuna.Trial) -> float:
    """Run one study trial through the engine; report each validation to Optuna, which may prune it."""
    from mtbench.engine.trial import PrunedTrial, run_trial  # the report reads studies without the engine

    params = {key: suggest(trial, key, spec) for key, spec in exp.search.space.items()}
    cfg = trial_config(exp, params, trial.number)
    last: dict[str, float] = {}

    reference = reference_metrics(exp) if exp.search.objective == "delta_m" else None

    def on_validate(step: int, metrics: dict[str, float]) -> None:
        last["value"] = objective_value(exp, metrics, reference)
        trial.report(last["value"], step)
        if step < exp.train.steps and trial.should_prune():
            raise PrunedTrial(f"pruned at step {step}")

    tags = {tracking.TAG_STUDY: study_name(exp), tracking.TAG_STUDY_TRIAL: str(trial.number),
            tracking.TAG_PARENT: parent_run_id}
    try:
        run_trial(cfg, resume=False, extra_tags=tags, on_validate=on_validate)
    except PrunedTrial:
        raise optuna.TrialPruned() from None
    return last["value"]


def worker(exp_json: str, parent_run_id: str, n: int, threads: int) -> None:
    """One worker process: run `n` trials of the study (loaded from its storage)."""
    import torch

    from mtbench.engine.trainer import NonFiniteLossError

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp = Experiment.model_validate_json(exp_json)
    study = optuna.load_study(study_name=study_name(exp), storage=open_storage(exp), sampler=sampler_for(exp),
                              pruner=pruner_for(exp))
    study.optimize(lambda t: objective(exp, parent_run_id, t), n_trials=n,
                   catch=(NonFiniteLossError,))


def fail_stale_trials(exp: Experiment, study: optuna.Study, storage: Any) -> int:
    """Trials left RUNNING by a killed process will never finish: mark them FAIL so they are replaced.

    A RUNNING trial whose folder's trial lock a live process holds is training (another `mtbench run` of the
    same study, or its SLURM job): it is left alone. (FrozenTrial exposes its storage id only as `_trial_id`;
    Optuna has no public call for this.)
    """
    from mtbench.engine.trial import LOCK, trial_dir

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING
             and not locks.held(trial_dir(trial_config(exp, {}, t.number)) / LOCK)]
    for t in stale:
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def study_description(exp: Experiment) -> str:
    """The study parent run's description: what it tunes, towards what (expand it to see its trials)."""
    return (f"Optuna study {study_name(exp)!r}: {exp.search.n_trials} trials tuning "
            f"{', '.join(exp.search.space)} for {exp.search.objective} ({direction(exp)}). Expand to see the trials.")


def parent_run(exp: Experiment, uri: str) -> str:
    """The study's parent MLflow run: reused when the study continues, else created."""
    name = study_name(exp)
    existing = tracking.find_runs(uri, exp.name, {tracking.TAG_STUDY: name, tracking.TAG_STUDY_PARENT: "true"})
    if existing:
        return existing[0]
    tracker = tracking.Tracker.start(uri, exp.name, f"study-{name}",
                                     {tracking.TAG_STUDY: name, tracking.TAG_STUDY_PARENT: "true",
                                      tracking.TAG_KIND: "study", tracking.TAG_EXPERIMENT: exp.name,
                                      TAG_STORAGE: storage_spec(exp), TAG_OBJECTIVE: exp.search.objective,
                                      TAG_DIRECTION: direction(exp), tracking.TAG_NOTE: study_description(exp)})
    return tracker.run_id


def run_study(exp: Experiment, *, fresh: bool = False, console: Any = None, report_dir: str = "reports") -> str:
    """Create or continue the study, run the remaining trials on `launcher.workers` processes, summarise."""
    check_space(exp)
    if exp.search.objective == "delta_m":
        reference_metrics(exp)  # an unknown published row fails now, not in the first trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(exp)
    name = study_name(exp)
    if fresh:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    study = optuna.create_study(study_name=name, storage=storage, direction=direction(exp),
                                sampler=sampler_for(exp), pruner=pruner_for(exp), load_if_exists=True)
    stale = fail_stale_trials(exp, study, storage)
    done = len([t for t in study.get_trials(deepcopy=False) if t.state in FINISHED_STATES])
    remaining = max(0, exp.search.n_trials - done)
    from mtbench.sweep.launchers import prepare_experiment, run_calls_on_slurm  # the report needs no engine

    uri = tracking.resolve_tracking_uri(exp.tracking.uri)
    tracking.check_tracking_uri(uri)
    prepare_experiment(exp)
    parent = parent_run(exp, uri)
    if console is not None:
        console.print(f"[bold]{exp.name}[/]: study {name!r}, {done} of {exp.search.n_trials} trials finished"
                      + (f", {stale} stale RUNNING marked FAIL" if stale else "")
                      + f"; running {remaining} on {exp.launcher.workers} worker(s).")
    workers = min(exp.launcher.workers, remaining)
    shares = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)] if workers else []
    if exp.launcher.name == "slurm" and workers:

        tracking.ensure_store(uri)
        run_calls_on_slurm(worker, [(exp.model_dump_json(), parent, n, exp.launcher.cpus_per_task) for n in shares],
                           exp.launcher, Path(exp.output_dir) / exp.name / "slurm")
    elif workers == 1:
        worker(exp.model_dump_json(), parent, remaining, max(1, os.cpu_count() or 1))
    elif workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(worker, exp.model_dump_json(), parent, n, threads) for n in shares]
            for future in futures:
                future.result()
    return summarise(exp, study_name=name, storage=storage, parent=parent, uri=uri, report_dir=report_dir)


def summarise(exp: Experiment, *, study_name: str, storage: Any, parent: str, uri: str, report_dir: str) -> str:
    """Counts per state, the best trial; its config is written to reports/<name>/best_config.yaml."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and not math.isnan(t.value)]
    lines = [f"study {study_name!r}: " + ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)]
    tracker = tracking.Tracker(tracking._client(uri), parent)
    if complete:
        best = study.best_trial
        cfg = trial_config(exp, best.params, best.number)
        out = Path(report_dir) / exp.name / "best_config.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        lines.append(f"best: trial {best.number}, val {exp.search.objective} = {best.value:.4g}, params "
                     f"{best.params}; config written to {out}")
        tracker.log_metrics({f"best/val/{exp.search.objective}": best.value}, best.number)
        tracker.set_tags({"mtbench.best_trial": str(best.number)})
        tracker.log_artifact(out)
    tracker.set_tags({f"mtbench.trials_{k.lower()}": str(v) for k, v in counts.items()})
    tracker.end("FINISHED" if counts["COMPLETE"] + counts["PRUNED"] >= exp.search.n_trials else "KILLED")
    return "\n".join(lines)
