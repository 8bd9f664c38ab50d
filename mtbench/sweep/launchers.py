"""Launchers run a list of trials: `local` (in order, or N worker processes) or `slurm` (submitit job array).

Every launcher first asks the tracking store which trials already FINISHED (by `TrialConfig.id`) and
skips them; the others resume from their last checkpoint unless `fresh`. So an interrupted sweep —
Ctrl-C, a killed process, a cancelled job — continues by running the same command again. Only this
module imports submitit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbench import locks, tracking
from mtbench.config.schema import Experiment, LauncherConfig, TrialConfig
from mtbench.engine import stopping
from mtbench.engine.trainer import NonFiniteLossError
from mtbench.engine.trial import LOCK, TrialResult, run_trial, trial_dir, trial_lock_name
from mtbench.errors import MtbenchError, Preempted
from mtbench.locks import Busy

Update = Callable[[TrialConfig, str, str], None]  # (trial, state, detail) -> None, for live displays
Tags = dict[str, str]  # extra tags for every trial run of one launch (the parent run a grid nests under)


@dataclass
class SweepPlan:
    """The trials of a sweep split into those already FINISHED in the tracking store and those to run."""

    done: list[tuple[TrialConfig, TrialResult]] = field(default_factory=list)
    todo: list[TrialConfig] = field(default_factory=list)
    busy: list[TrialConfig] = field(default_factory=list)  # another live process holds the trial's lock
    records: dict[str, tracking.TrialRecord] = field(default_factory=dict)


def plan_sweep(trials: list[TrialConfig], *, fresh: bool = False) -> SweepPlan:
    """Look every trial up in its tracking store; FINISHED ones are done unless `fresh`."""
    plan = SweepPlan()
    stores: dict[tuple[str, str], dict[str, tracking.TrialRecord]] = {}
    for trial in trials:
        store = (tracking.resolve_tracking_uri(trial.tracking.uri), trial.experiment)
        if store not in stores:
            stores[store] = tracking.trial_records(*store)
        record = stores[store].get(trial.id)
        if record is not None:
            plan.records[trial.id] = record
        if record is not None and record.status == "FINISHED" and not fresh:
            plan.done.append((trial, TrialResult(key=trial.key, variant=trial.variant, seed=trial.seed,
                                                 run_id=record.run_id, status="FINISHED", metrics=record.metrics)))
        elif locks.held(trial_dir(trial) / LOCK):
            plan.busy.append(trial)
        else:
            plan.todo.append(trial)
    return plan


def prepare_experiment(exp: Experiment) -> None:
    """Set the experiment up in the tracking store for browsing (tracking.prepare_experiment): model-training
    view, the YAML's description, a runs-table view with the test split's primary metrics of its tasks."""
    from mtbench.tasks import TASKS, resolve_tasks

    tasks = resolve_tasks(exp.dataset.name, exp.dataset.tasks)
    tracking.prepare_experiment(tracking.resolve_tracking_uri(exp.tracking.uri), exp.name, description=exp.description,
                                metric_keys=[f"{tracking.TEST_PREFIX}{TASKS[t].primary_metric}" for t in tasks])


def run_one(trial: TrialConfig, *, fresh: bool, progress: Any = None, tags: Tags | None = None) -> TrialResult:
    """Run one trial; a diverged or misconfigured trial becomes a FAILED result, one another process is
    training a SKIPPED one, not an exception."""
    try:
        return run_trial(trial, resume=not fresh, progress=progress, extra_tags=tags)
    except Busy as err:  # another coordinator trains it now
        return skipped(trial, err)
    except (NonFiniteLossError, MtbenchError) as err:
        return TrialResult(key=trial.key, variant=trial.variant, seed=trial.seed, run_id="", status="FAILED",
                           metrics={"error": str(err)})


def skipped(trial: TrialConfig, busy: Busy) -> TrialResult:
    """The result of a trial another process trains now (its lock is held): SKIPPED, with who holds it."""
    return TrialResult(key=trial.key, variant=trial.variant, seed=trial.seed, run_id="", status="SKIPPED",
                       metrics={"error": str(busy)})


def state_of(result: TrialResult) -> str:
    """A finished trial's state for live displays."""
    return {"FINISHED": "done", "SKIPPED": "skipped"}.get(result.status, "failed")


def launch(trials: list[TrialConfig], launcher: LauncherConfig, *, fresh: bool = False, progress: Any = None,
           update: Update | None = None, wait_for_jobs: bool = True, parent: str | None = None) -> list[TrialResult]:
    """Run the trials that are not FINISHED yet where `launcher` says; return every trial's result.

    With `parent` (a grid), the trials this call runs nest under one new parent run of that name.
    """
    for uri in {tracking.resolve_tracking_uri(t.tracking.uri) for t in trials}:
        tracking.ensure_store(uri)
    plan = plan_sweep(trials, fresh=fresh)
    for trial, result in plan.done:
        if update is not None:
            update(trial, "done", f"skipped: FINISHED run {result.run_id}")
    busy = [skipped(t, locks.busy(trial_dir(t) / LOCK, trial_lock_name(t))) for t in plan.busy]
    for trial in plan.busy:
        if update is not None:
            update(trial, "skipped", "trained by another process")
    with parent_run(plan.todo, parent) as tags:
        if launcher.name == "slurm":
            results = launch_slurm(plan.todo, launcher, fresh=fresh, update=update, wait_for_jobs=wait_for_jobs,
                                   tags=tags)
        elif launcher.workers > 1 and len(plan.todo) > 1:
            results = launch_workers(plan.todo, launcher.workers, fresh=fresh, update=update, tags=tags)
        else:
            results = launch_local(plan.todo, fresh=fresh, progress=progress, update=update, tags=tags)
    by_key = {r.key: r for r in [*(r for _, r in plan.done), *busy, *results]}
    return [by_key[t.key] for t in trials if t.key in by_key]


@contextmanager
def parent_run(trials: list[TrialConfig], name: str | None) -> Iterator[Tags]:
    """A parent run for `trials` (none without a `name` or trials): yields the tags that nest a run under it,
    and ends it FINISHED, or KILLED/FAILED with the launch."""
    if name is None or not trials:
        yield {}
        return
    first = trials[0]
    tracker = tracking.Tracker.start(
        tracking.resolve_tracking_uri(first.tracking.uri), first.experiment, name,
        {tracking.TAG_SWEEP_PARENT: "true", tracking.TAG_KIND: "sweep", tracking.TAG_EXPERIMENT: first.experiment,
         tracking.TAG_NOTE: f"{len(trials)} trials of {first.experiment} run by one `mtbench run` (expand to see "
                            f"them): {', '.join(sorted({t.variant for t in trials}))}."})
    status = "FAILED"
    try:
        yield {tracking.TAG_PARENT: tracker.run_id}
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def launch_local(trials: list[TrialConfig], *, fresh: bool = False, progress: Any = None,
                 update: Update | None = None, tags: Tags | None = None) -> list[TrialResult]:
    """Run `trials` in order in this process."""
    results = []
    task_id = progress.add_task("trials", total=len(trials)) if progress is not None else None
    for cfg in trials:
        if task_id is not None:
            progress.update(task_id, description=f"trial {cfg.key}")
        if update is not None:
            update(cfg, "running", "")
        result = run_one(cfg, fresh=fresh, progress=progress, tags=tags)
        results.append(result)
        if update is not None:
            update(cfg, state_of(result), result.run_id)
        if task_id is not None:
            progress.advance(task_id)
    return results


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def launch_workers(trials: list[TrialConfig], workers: int, *, fresh: bool = False,
                   update: Update | None = None, tags: Tags | None = None) -> list[TrialResult]:
    """Run `trials` in `workers` parallel processes (spawned; CPU threads split between them)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    results: list[TrialResult] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(run_one, cfg, fresh=fresh, tags=tags): cfg for cfg in trials}
        for cfg in list(pending.values())[:workers]:
            if update is not None:
                update(cfg, "running", "")
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                cfg = pending.pop(future)
                result = future.result()
                results.append(result)
                if update is not None:
                    update(cfg, state_of(result), result.run_id)
    return results


# ------------------------------------------------------------------------------------------ SLURM
def slurm_folder(trial: TrialConfig) -> Path:
    """Where submitit keeps a sweep's job scripts, pickles and logs: <output_dir>/<experiment>/slurm."""
    return Path(trial.output_dir) / trial.experiment / "slurm"


class SlurmTrial:
    """A trial as a submitit job: on preemption or time limit it requeues and resumes from its checkpoint."""

    def __init__(self, trial_json: str, fresh: bool, tags: Tags | None = None) -> None:
        self.trial_json, self.fresh, self.tags = trial_json, fresh, tags

    def __call__(self) -> TrialResult:
        """Run the trial. Errors propagate: the job ends FAILED and the sweep reports its SLURM log's tail.

        Preemption and time limits (USR2, which submitit handles by calling `checkpoint` and requeuing) first
        finish the running step and checkpoint it, then close the run KILLED, then requeue: a requeued trial
        loses no step. SIGTERM (which SLURM sends before USR2 or SIGKILL, and submitit ignores) checkpoints
        the running step and trains on.
        """
        import signal

        trial = TrialConfig.model_validate_json(self.trial_json)
        requeue = signal.getsignal(signal.SIGUSR2)

        def preempted(signum: int, frame: Any) -> None:
            raise Preempted()

        ignore_term = signal.signal(signal.SIGTERM, stopping.deferred(None))
        signal.signal(signal.SIGUSR2, stopping.deferred(preempted))
        try:
            return run_trial(trial, resume=not self.fresh, extra_tags=self.tags)
        except Busy as err:  # another coordinator's job or process trains this trial now
            return skipped(trial, err)
        except Preempted:
            if not callable(requeue):  # not in submitit's job environment (a test calling the job in-process)
                raise
            requeue(signal.SIGUSR2, None)  # submitit: `checkpoint` below, `scontrol requeue`, exit
            raise
        finally:
            signal.signal(signal.SIGUSR2, requeue)
            signal.signal(signal.SIGTERM, ignore_term)

    def checkpoint(self) -> Any:
        """submitit calls this on SIGUSR2 (preemption, time limit): requeue the same trial, resuming."""
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrial(self.trial_json, fresh=False, tags=self.tags))


def slurm_executor(folder: Path, launcher: LauncherConfig) -> Any:
    """A submitit SlurmExecutor configured from `launcher`; bad options are a user error before submission."""
    if shutil.which("sbatch") is None:
        raise MtbenchError("launcher: slurm needs SLURM's `sbatch` on PATH, which is not found here. Run on a "
                           "cluster login node, or use launcher.name: local.")
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    params: dict[str, Any] = {"timeout_min": launcher.time_min, "cpus_per_task": launcher.cpus_per_task,
                              "slurm_array_parallelism": launcher.array_parallelism, "nodes": 1,
                              # One task per GPU: each joins the trial's process group (mtbench.engine.distributed).
                              "tasks_per_node": max(1, launcher.gpus_per_node)}
    for key, value in (("slurm_partition", launcher.partition), ("slurm_account", launcher.account),
                       ("slurm_qos", launcher.qos), ("mem_gb", launcher.mem_gb)):
        if value is not None:
            params[key] = value
    if launcher.gpus_per_node:
        params["gpus_per_node"] = launcher.gpus_per_node
    if launcher.sbatch:
        params["slurm_additional_parameters"] = dict(launcher.sbatch)
    if launcher.setup:
        params["slurm_setup"] = list(launcher.setup)
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError) as err:
        raise MtbenchError(f"launcher: submitit rejects the SLURM options ({err}). Check launcher.* and "
                           "launcher.sbatch keys (sbatch long option names without '--').") from None
    return executor


def launch_slurm(trials: list[TrialConfig], launcher: LauncherConfig, *, fresh: bool = False,
                 update: Update | None = None, wait_for_jobs: bool = True, poll_s: float = 2.0,
                 tags: Tags | None = None) -> list[TrialResult]:
    """Submit the trials as one job array; with `wait_for_jobs`, follow them to the end."""
    if not trials:
        return []
    folder = slurm_folder(trials[0])
    folder.mkdir(parents=True, exist_ok=True)
    executor = slurm_executor(folder, launcher)
    try:
        with executor.batch():
            jobs = [executor.submit(SlurmTrial(t.model_dump_json(), fresh, tags)) for t in trials]
    except Exception as err:  # noqa: BLE001 - sbatch's refusal reaches us as several exception types
        raise MtbenchError(f"launcher: sbatch refused the job array ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:600]}). Check launcher.partition/account/qos and the "
                           "launcher.sbatch keys.") from None
    record_jobs(folder, {t.id: job.job_id for t, job in zip(trials, jobs, strict=True)})
    for trial, job in zip(trials, jobs, strict=True):
        if update is not None:
            update(trial, "submitted", f"job {job.job_id}")
    if not wait_for_jobs:
        return []
    return follow_jobs(trials, jobs, update=update, poll_s=poll_s)


def record_jobs(folder: Path, job_ids: dict[str, str]) -> None:
    """Remember trial id -> SLURM job id (for `mtbench status`), merged with earlier submissions."""
    path = folder / "jobs.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    known.update(job_ids)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(path)


def follow_jobs(trials: list[TrialConfig], jobs: list[Any], *, update: Update | None = None,
                poll_s: float = 2.0) -> list[TrialResult]:
    """Poll submitit jobs until all are done; a failed job's result carries its SLURM log tail."""
    results: dict[str, TrialResult] = {}
    seen: dict[str, str] = {}
    while len(results) < len(jobs):
        for trial, job in zip(trials, jobs, strict=True):
            if trial.key in results:
                continue
            detail = f"job {job.job_id}"
            if job.done():
                results[trial.key] = job_result(trial, job)
                state = state_of(results[trial.key])
                detail += f", run {results[trial.key].run_id}" if results[trial.key].run_id else ""
            else:
                state = str(job.state).lower()
            if update is not None and seen.get(trial.key) != state:
                update(trial, state, detail)
                seen[trial.key] = state
        if len(results) < len(jobs):
            time.sleep(poll_s)
    return [results[t.key] for t in trials]


def job_result(trial: TrialConfig, job: Any) -> TrialResult:
    """The TrialResult a finished job returned, or a FAILED one with the tail of the job's logs."""
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - submitit raises several kinds for failed/cancelled jobs
        tail = log_tail(job)
        return TrialResult(key=trial.key, variant=trial.variant, seed=trial.seed, run_id="", status="FAILED",
                           metrics={"error": f"SLURM job {job.job_id} {type(err).__name__}: "
                                             f"{str(err).splitlines()[0] if str(err) else ''}\n{tail}"})


def log_tail(job: Any, lines: int = 15) -> str:
    """Last lines of a job's stderr (then stdout) log, for the failure report."""
    for reader in (job.stderr, job.stdout):
        try:
            text = reader() or ""
        except Exception:  # noqa: BLE001 - a missing log file is not worth a second failure
            text = ""
        if text.strip():
            return "log tail:\n" + "\n".join(text.strip().splitlines()[-lines:])
    return "(no SLURM log)"


def attach(trials: list[TrialConfig], *, update: Update | None = None, poll_s: float = 2.0) -> list[TrialResult]:
    """Re-attach to a sweep's SLURM jobs (recorded at submission) and follow the unfinished ones."""
    plan = plan_sweep(trials)
    known = {}
    if trials and (slurm_folder(trials[0]) / "jobs.json").is_file():
        known = json.loads((slurm_folder(trials[0]) / "jobs.json").read_text())
    for trial, result in plan.done:
        if update is not None:
            update(trial, "done", f"run {result.run_id}")
    follow = [t for t in plan.todo if t.id in known]
    for trial in plan.todo:
        if trial.id not in known and update is not None:
            update(trial, "not submitted", "")
    if not follow:
        return [r for _, r in plan.done]
    import submitit

    jobs = [submitit.SlurmJob(folder=slurm_folder(t) / "%j", job_id=known[t.id]) for t in follow]
    return [*(r for _, r in plan.done), *follow_jobs(follow, jobs, update=update, poll_s=poll_s)]


def run_calls_on_slurm(fn: Callable[..., Any], calls: list[tuple[Any, ...]], launcher: LauncherConfig,
                       folder: Path, poll_s: float = 2.0) -> None:
    """Run `fn(*args)` for each args tuple as one SLURM job array and wait (e.g. Optuna study workers).

    A failed job is a MtbenchError carrying the tail of its SLURM log.
    """
    folder.mkdir(parents=True, exist_ok=True)
    executor = slurm_executor(folder, launcher)
    try:
        with executor.batch():
            jobs = [executor.submit(fn, *args) for args in calls]
    except Exception as err:  # noqa: BLE001 - sbatch's refusal reaches us as several exception types
        raise MtbenchError(f"launcher: sbatch refused the job array ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:600]}).") from None
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - submitit raises several kinds for failed/cancelled jobs
            raise MtbenchError(f"SLURM job {job.job_id} failed ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})\n{log_tail(job)}") from None
