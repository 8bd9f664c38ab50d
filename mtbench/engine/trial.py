"""One trial end to end: data, model, training, evaluation, checkpoints and tracking.

`run_trial(cfg)` needs nothing but its TrialConfig, so a launcher can pickle it to another process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

import mtbench
from mtbench import locks, tracking
from mtbench.balancing import Balancer, build_balancer
from mtbench.balancing.base import check_data_parallel
from mtbench.config.schema import NOT_IDENTITY, TrialConfig, _without_neutral
from mtbench.data import DEFAULT_PROTOCOL, build_dataset
from mtbench.engine import distributed
from mtbench.engine.batching import StepBatchSampler, collate, collate_eval
from mtbench.engine.checkpoint import (
    load_checkpoint,
    load_resume_checkpoint,
    previous_path,
    save_checkpoint,
    write_text_atomic,
)
from mtbench.engine.evaluate import evaluate
from mtbench.engine.trainer import build_optimizer, fit
from mtbench.engine.visualize import prediction_grids
from mtbench.errors import MtbenchError, Preempted, Terminated
from mtbench.losses import build_task_loss
from mtbench.metrics import build_meter, is_reference, metric_direction
from mtbench.models import build_model
from mtbench.profiling import ModelCost, measure_cost
from mtbench.protocols import Meter, TaskDataset
from mtbench.tasks import DATASET_FAMILY, get_task, resolve_tasks

CHECKPOINT = "last.pt"
LOCK = ".trial.lock"
BEST = "best.pt"
RESULT = "result.json"


@dataclass
class TrialResult:
    """What a launcher gets back from a trial (also written to result.json)."""

    key: str
    variant: str
    seed: int
    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    trial_id: str = ""  # TrialConfig.id ("" in result.json files of older versions)


def finished_result(folder: Path, cfg: TrialConfig) -> TrialResult | None:
    """The result.json of this trial in `folder`, if it finished there (the folder of a variant and seed may
    hold a trial of another config, e.g. after `-o train.steps=...`)."""
    path = folder / RESULT
    if not path.is_file():
        return None
    result = TrialResult(**json.loads(path.read_text()))
    return result if result.trial_id in ("", cfg.id) else None


def trial_dir(cfg: TrialConfig) -> Path:
    """Folder of a trial's checkpoint and result: <output_dir>/<experiment>/<variant>/seed<k>."""
    return Path(cfg.output_dir) / cfg.experiment / cfg.variant / f"seed{cfg.seed}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MtbenchError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtbenchError(f"train.device is {name!r} but no CUDA device is available; use auto or cpu.")
    return device


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every generator; on CPU also ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


@functools.cache
def git_commit() -> str:
    """The commit of the mtbench checkout, or 'unknown' for an installed package (not another repo's commit)."""
    package = Path(mtbench.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=package)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != package.parent:
        return "unknown"  # e.g. installed into a virtualenv that lives inside some other git repository
    return lines[1]


@contextlib.contextmanager
def trial_lock(folder: Path, cfg: TrialConfig) -> Iterator[None]:
    """Hold the trial's lock (mtbench.locks); a folder that cannot be created is the output_dir error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MtbenchError(f"output_dir: cannot write to {str(folder)!r} ({err.strerror}). "
                           "Choose a writable folder with -o output_dir=PATH.") from None
    with locks.exclusive(folder / LOCK, wait=False, what=trial_lock_name(cfg)):
        yield


def trial_lock_name(cfg: TrialConfig) -> str:
    """How lock messages name a trial."""
    return f"trial {cfg.key} (id {cfg.id})"


def prepare_output(folder: Path, *, fresh: bool, cfg: TrialConfig) -> None:
    """Create the trial folder (emptied of an earlier attempt unless resuming), or fail clearly if unwritable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MtbenchError(f"output_dir: cannot write to {str(folder)!r} ({err.strerror}). "
                           "Choose a writable folder with -o output_dir=PATH.") from None
    if fresh:
        clear_trial(cfg)


@dataclass
class Selection:
    """Best validation value of the checkpoint-selection metric so far, and its step."""

    metric: str
    higher_is_better: bool
    value: float | None = None
    step: int | None = None

    def improves(self, metrics: dict[str, float]) -> bool:
        value = metrics[self.metric]
        if self.value is None or (value > self.value if self.higher_is_better else value < self.value):
            return True
        return False


def skipped_tags(datasets: dict[str, TaskDataset]) -> dict[str, str]:
    """Tags naming the ids a dataset dropped (`skip_missing`), so no skip goes unrecorded."""
    tags = {}
    for split, dataset in datasets.items():
        if dataset.skipped:
            ids = ",".join(dataset.skipped)
            tags[f"mtbench.skipped_ids.{split}"] = f"{len(dataset.skipped)}: {ids[:4000]}"
    return tags


def selection_for(cfg: TrialConfig, tasks: tuple[str, ...]) -> Selection:
    """The metric that picks the best-on-val checkpoint: configured, or the first task's validation metric."""
    metric = cfg.train.select_metric or get_task(tasks[0]).validation_metric
    return Selection(metric, metric_direction(metric))


class PrunedTrial(Exception):
    """Raised by an `on_validate` hook to stop a trial early (a pruned search trial): run KILLED, tagged."""


@dataclass
class BuiltTrial:
    """What step 1 builds from a TrialConfig; step 2 sets where training starts and the run it logs to."""

    cfg: TrialConfig
    env: distributed.DistEnv
    device: torch.device
    folder: Path
    tasks: tuple[str, ...]
    protocol: str | None
    datasets: dict[str, TaskDataset]
    img_size: tuple[int, int]
    model: torch.nn.Module
    balancer: Balancer
    task_losses: dict[str, torch.nn.Module]
    meters: dict[str, Meter]
    test_meters: dict[str, Meter]
    optimizer: torch.optim.Optimizer
    selection: Selection
    start_step: int = 0
    run_id: str | None = None
    # Wall seconds per phase of this process's part of the trial (build, start, train, validate, test,
    # record), logged as `time/<phase>_s` on the run: where a trial's time goes.
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to `seconds[phase]`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def loader(self, split: str) -> DataLoader:
        """The evaluation loader of `split` (val or test); labels of several sizes stay lists (`collate_eval`)."""
        return DataLoader(self.datasets[split], batch_size=self.cfg.train.eval_batch_size, shuffle=False,
                          collate_fn=collate_eval, num_workers=self.cfg.train.num_workers)


def run_trial(cfg: TrialConfig, *, resume: bool = False, progress: Any = None,
              extra_tags: dict[str, str] | None = None,
              on_validate: Callable[[int, dict[str, float]], None] | None = None) -> TrialResult:
    """Train and test one trial; log it as one MLflow run. With `resume`, continue its last checkpoint.

    Five steps: build, resume, fit, test, record. `extra_tags` go on the run (a study's name and trial
    number, a parent run); `on_validate(step, metrics)` sees every validation's metrics and may raise
    PrunedTrial to stop the trial there (on every rank of a data-parallel trial).

    Model selection only ever looks at the val split: the test split is scored once, at the end, with
    the final weights or (train.select: best_val) the weights of the best validation evaluation.
    """
    started = time.time()
    folder = trial_dir(cfg)
    if resume and (done := finished_result(folder, cfg)) is not None:
        return done
    env = distributed.env_from()
    device = distributed.setup(env, resolve_device(cfg.train.device))
    stack = contextlib.ExitStack()
    try:
        distributed.check_batch(cfg.train.batch_size, env)
        distributed.check_sync_bn(cfg.train.sync_bn, env, device)
        uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
        tracking.check_tracking_uri(uri)
        # One trainer per trial: a second coordinator (another `mtbench run`, SLURM task or Optuna worker)
        # gets locks.Busy here and skips the trial; the lock goes when this process ends, however it ends.
        distributed.on_main(env, lambda: stack.enter_context(trial_lock(folder, cfg)))
        if resume and (done := finished_result(folder, cfg)) is not None:  # finished while we waited
            return done
        distributed.on_main(env, lambda: prepare_output(folder, fresh=not resume, cfg=cfg))
        built = time.perf_counter()
        trial = build(cfg, env, device, folder)
        trial.seconds["build"] = time.perf_counter() - built
        with trial.timed("start"):
            tracker = resume_trial(trial, uri, resume=resume, extra_tags=extra_tags)
        with closed_on_error(tracker):
            fit_trial(trial, tracker, on_validate=on_validate, progress=progress)
            with trial.timed("test"):
                tested = distributed.on_main(env, lambda: test(trial, tracker, progress=progress))
            result = distributed.on_main(env, lambda: record(trial, tracker, tested, started=started))
    finally:
        stack.close()
        distributed.teardown(env)
    # The other ranks of a data-parallel trial only train: rank 0 holds the run and the metrics.
    return result or TrialResult(key=cfg.key, variant=cfg.variant, seed=cfg.seed, run_id="", status="FINISHED")


def build(cfg: TrialConfig, env: distributed.DistEnv, device: torch.device, folder: Path) -> BuiltTrial:
    """Step 1: datasets, model, balancer, losses, meters and optimizer, from the config alone."""
    tasks = resolve_tasks(cfg.dataset.name, cfg.dataset.tasks)
    protocol = cfg.dataset.protocol or DEFAULT_PROTOCOL.get(cfg.dataset.name)
    datasets = {split: build_dataset(cfg.dataset.name, root=cfg.dataset.root, split=split, tasks=list(tasks),
                                     protocol=protocol, **cfg.dataset.options) for split in ("train", "val", "test")}
    datasets["train"].augment_seed = cfg.seed  # each trial seed draws its own augmentations
    if cfg.train.batch_size > len(datasets["train"]):
        raise MtbenchError(f"train.batch_size {cfg.train.batch_size} exceeds the {len(datasets['train'])} training "
                           f"samples of {cfg.dataset.name}: lower train.batch_size, or train on more samples.")
    img_size = tuple(datasets["train"][0]["image"].shape[-2:])
    seed_everything(cfg.seed, device)
    model = build_model(cfg.model.name, tasks=tasks, dataset=cfg.dataset.name, backbone=cfg.model.backbone,
                        pretrained=cfg.model.pretrained, img_size=img_size, **cfg.model.options).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    balancer = build_balancer(cfg.loss.weighting, tasks=tasks, weights=cfg.loss.weights, options=cfg.loss.options,
                              steps_per_epoch=len(datasets["train"]) // cfg.train.batch_size).to(device)
    check_data_parallel(balancer, env.world_size)
    balancer.attach(model)
    loss_options = cfg.loss.task_loss_options()
    task_losses = {t: build_task_loss(t, dataset=cfg.dataset.name, **loss_options.get(t, {})) for t in tasks}
    meters = {t: build_meter(t, dataset=cfg.dataset.name) for t in tasks}
    test_meters = {**meters, **final_test_meters(tasks, cfg.dataset.name)}
    for meter in test_meters.values():  # the test's boundary matching in train.num_workers processes
        meter.use_workers(cfg.train.num_workers)
    return BuiltTrial(cfg=cfg, env=env, device=device, folder=folder, tasks=tasks, protocol=protocol,
                      datasets=datasets, img_size=img_size, model=model, balancer=balancer, task_losses=task_losses,
                      meters=meters, test_meters=test_meters,
                      optimizer=build_optimizer([model, balancer], cfg.train), selection=selection_for(cfg, tasks))


def resume_trial(trial: BuiltTrial, uri: str, *, resume: bool,
                 extra_tags: dict[str, str] | None) -> tracking.Tracker | None:
    """Step 2: load the last checkpoint (with `resume`), then open or reopen the trial's run on rank 0."""
    cfg, path = trial.cfg, trial.folder / CHECKPOINT
    state = load_resume_checkpoint(path) if resume else None
    if state is not None:
        check_same_config(json.loads(state["config"]), cfg, path)
        trial.model.load_state_dict(state["model"])
        if "balancer" in state:
            trial.balancer.load_state_dict(state["balancer"])
        else:  # a checkpoint from before balancers: only uncertainty's log-variances were state
            trial.balancer.load_state_dict(state["weighting"], strict=False)
        trial.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        if trial.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], trial.device)
        trial.start_step, trial.run_id = int(state["step"]), state["run_id"]
        trial.selection.value, trial.selection.step = state["best_value"], state["best_step"]
    return distributed.on_main(trial.env, lambda: start_run(trial, uri, extra_tags))


def start_run(trial: BuiltTrial, uri: str, extra_tags: dict[str, str] | None) -> tracking.Tracker:
    """Open the trial's MLflow run (the checkpoint's run when resuming) with its tags, params and config."""
    cfg = trial.cfg
    cost = measure_cost(trial.model, trial.img_size)
    tags = {**run_tags(trial), **(extra_tags or {})}
    tracker = tracking.Tracker.start(uri, cfg.experiment, f"{cfg.variant}-seed{cfg.seed}", tags, run_id=trial.run_id,
                                     outage_s=cfg.tracking.outage_s)
    trial.run_id = tracker.run_id
    tracker.log_inputs(tracking.dataset_inputs(cfg.dataset.name, trial.datasets))
    # This process holds the trial's lock: any other RUNNING run of it lost its trainer (kill -9, --fresh).
    tracking.close_stale_runs(uri, cfg.experiment, cfg.id, keep=tracker.run_id)
    resolved = cfg.model_dump()
    tracker.log_params(run_params(trial, cost))
    tracker.log_dict(resolved, "config.yaml")
    write_text_atomic(trial.folder / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return tracker


def run_params(trial: BuiltTrial, cost: ModelCost) -> dict[str, object]:
    """The params of a trial's run (and of an eval run): flattened config, cost, tasks, selection metric."""
    return {**tracking.flatten_config(trial.cfg.model_dump(exclude={"changes"})), **cost.as_params(),
            "tasks": ",".join(trial.tasks), "select_metric": trial.selection.metric}


def run_description(cfg: TrialConfig) -> str:
    """The run's description in MLflow's UI: variant, seed, model, backbone, and what differs from the base."""
    differs = ", ".join(f"{k}={v}" for k, v in cfg.changes.items()) or "nothing (the base config)"
    return (f"{cfg.variant}, seed {cfg.seed}: {cfg.model.name} on {cfg.model.backbone}, {cfg.dataset.name}, "
            f"{cfg.train.steps} steps. Differs from the base config: {differs}.")


def run_tags(trial: BuiltTrial) -> dict[str, str]:
    """What every trial run records about where its numbers come from (DESIGN.md conventions)."""
    cfg, datasets = trial.cfg, trial.datasets
    return {tracking.TAG_EXPERIMENT: cfg.experiment, tracking.TAG_KIND: "trial", tracking.TAG_VARIANT: cfg.variant,
            tracking.TAG_SEED: str(cfg.seed), tracking.TAG_MODEL: cfg.model.name,
            tracking.TAG_DATASET: cfg.dataset.name, tracking.TAG_CHECKPOINT: cfg.train.select,
            tracking.TAG_METRIC_VARIANTS: json.dumps({k: m.variant for k, m in trial.test_meters.items()}),
            tracking.TAG_GIT_COMMIT: git_commit(), tracking.TAG_DEVICE: str(trial.device),
            tracking.TAG_TRIAL_ID: cfg.id, tracking.TAG_REFERENCE_VARIANT: cfg.reference_variant,
            "mtbench.dataset_fingerprint": ";".join(d.fingerprint for d in datasets.values()),
            tracking.TAG_DATASET_VARIANT: datasets["test"].variant, tracking.TAG_PROTOCOL: str(trial.protocol),
            **skipped_tags(datasets), "mtbench.version": mtbench.__version__, tracking.TAG_NOTE: run_description(cfg)}


def fit_trial(trial: BuiltTrial, tracker: tracking.Tracker | None, *,
              on_validate: Callable[[int, dict[str, float]], None] | None, progress: Any) -> None:
    """Step 3: train to `train.steps` on every rank, validating and checkpointing on rank 0, then validate."""
    cfg, env = trial.cfg, trial.env
    val_loader = trial.loader("val") if env.is_main else None

    def validate(step: int) -> None:
        with trial.timed("validate"):
            distributed.on_main(env, lambda: validate_on_main(trial, tracker, val_loader, step, on_validate,
                                                              progress))

    def checkpoint(step: int) -> None:
        with trial.timed("checkpoint"):
            distributed.on_main(env, lambda: save_trial_checkpoint(trial, step))

    trained = time.perf_counter()
    model = trial.model
    if cfg.train.compile:  # the compiled module trains; checkpoints and evaluation use trial.model itself
        from mtbench.bench import compile_model

        model = compile_model(model, name=cfg.model.name)
    fit(distributed.wrap(model, env, trial.device, sync_bn=cfg.train.sync_bn), trial.balancer, trial.task_losses,
        train_loader_for(cfg, trial.datasets["train"], trial.start_step, env), trial.optimizer, cfg.train,
        device=trial.device, start_step=trial.start_step, evaluate_fn=validate, checkpoint_fn=checkpoint,
        log_fn=tracker.log_metrics if tracker is not None else lambda metrics, step: None,
        progress=progress if env.is_main else None,
        steps_per_epoch=len(trial.datasets["train"]) // cfg.train.batch_size)  # as StepBatchSampler's epochs
    trial.seconds["train"] = (time.perf_counter() - trained - trial.seconds.get("validate", 0.0)
                              - trial.seconds.get("checkpoint", 0.0))
    validate(cfg.train.steps)


def validate_on_main(trial: BuiltTrial, tracker: tracking.Tracker, loader: DataLoader, step: int,
                     on_validate: Callable[[int, dict[str, float]], None] | None, progress: Any) -> None:
    """Score the val split, log it, keep the best checkpoint (train.select: best_val), call the hook."""
    metrics = evaluate(trial.model, loader, trial.meters, device=trial.device, amp=trial.cfg.train.amp,
                       progress=progress, description=f"val @ {step}")
    tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step)
    selection = trial.selection
    if trial.cfg.train.select == "best_val" and selection.improves(metrics):
        selection.value, selection.step = metrics[selection.metric], step
        save_checkpoint(trial.folder / BEST, {"model": trial.model.state_dict(), "step": step,
                                              "value": selection.value})
    if on_validate is not None:
        on_validate(step, metrics)


def save_trial_checkpoint(trial: BuiltTrial, step: int) -> None:
    """Write everything a resume needs, atomically and durably; the checkpoint before it stays as last.prev.pt."""
    save_checkpoint(trial.folder / CHECKPOINT, {
        "model": trial.model.state_dict(), "balancer": trial.balancer.state_dict(),
        "optimizer": trial.optimizer.state_dict(), "step": step, "rng_torch": torch.get_rng_state(),
        **({"rng_cuda": torch.cuda.get_rng_state(trial.device)} if trial.device.type == "cuda" else {}),
        "best_value": trial.selection.value, "best_step": trial.selection.step, "run_id": trial.run_id,
        "config": json.dumps(trial.cfg.model_dump()), "mtbench_version": mtbench.__version__,
        "git_commit": git_commit()}, keep_previous=True)


@dataclass
class Tested:
    """Step 4's outcome: the test metrics and the step of the weights they were computed with."""

    metrics: dict[str, float]
    step: int


def test(trial: BuiltTrial, tracker: tracking.Tracker, *, progress: Any) -> Tested:
    """Step 4: score the test split once, with the final weights or those of the best validation."""
    cfg = trial.cfg
    step = cfg.train.steps
    if cfg.train.select == "best_val":
        best = load_checkpoint(trial.folder / BEST)
        trial.model.load_state_dict(best["model"])
        step = int(best["step"])
    metrics = score(trial, "test", progress=progress)
    tracker.log_metrics({f"test/{k}": v for k, v in metrics.items()}, cfg.train.steps)
    return Tested(metrics, step)


def score(trial: BuiltTrial, split: str, *, progress: Any) -> dict[str, float]:
    """The metrics of the model's current weights on `split`, with the final test's meters (edge odsF too)."""
    return evaluate(trial.model, trial.loader(split), trial.test_meters, device=trial.device,
                    amp=trial.cfg.train.amp, progress=progress, description=split)


def log_predictions(trial: BuiltTrial, tracker: tracking.Tracker, split: str = "val") -> None:
    """One figure per task of the first images of `split` (image, ground truth, prediction) on the run."""
    for task, figure in prediction_grids(trial.model, trial.loader(split), trial.tasks, device=trial.device).items():
        tracker.log_figure(figure, f"predictions/{task}.png")


def record(trial: BuiltTrial, tracker: tracking.Tracker, tested: Tested, *, started: float) -> TrialResult:
    """Step 5: prediction figures, final metrics and wall time on the run, result.json; run FINISHED."""
    cfg = trial.cfg
    recording = time.perf_counter()
    log_predictions(trial, tracker)
    trial.seconds["record"] = time.perf_counter() - recording
    result = TrialResult(key=cfg.key, variant=cfg.variant, seed=cfg.seed, run_id=tracker.run_id, status="FINISHED",
                         metrics=tested.metrics, wall_time_s=time.time() - started, trial_id=cfg.id)
    tracker.log_metrics({"wall_time_s": result.wall_time_s, "tested_step": tested.step,
                         **{f"time/{phase}_s": v for phase, v in trial.seconds.items()}}, cfg.train.steps)
    tracker.log_dict({"split": "test", "checkpoint": cfg.train.select, "tested_step": tested.step,
                      "select_metric": trial.selection.metric, **tested.metrics}, "final_metrics.json")
    tracker.end("FINISHED")  # first: a result.json beside a run left RUNNING would make reruns skip the trial
    write_text_atomic(trial.folder / RESULT, json.dumps(asdict(result), indent=2))
    return result


@contextmanager
def closed_on_error(tracker: tracking.Tracker | None) -> Iterator[None]:
    """End the run KILLED (pruned: tagged; interrupted) or FAILED when the trial stops with an exception."""
    try:
        yield
    except PrunedTrial:
        if tracker is not None:
            tracker.set_tags({tracking.TAG_PRUNED: "true"})
            tracker.end("KILLED")
        raise
    except BaseException as err:
        if tracker is not None:
            try:
                tracker.set_tags({tracking.TAG_END_REASON: end_reason(err)})
                tracker.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            except Exception as tracking_err:  # the store is gone too: the trial's own error is the one to report
                why = "the tracking store does not answer" if isinstance(tracking_err, MtbenchError) else tracking_err
                warnings.warn(f"could not close run {tracker.run_id} ({why}); it stays RUNNING until the trial is "
                              "rerun.", stacklevel=2)
        raise


def end_reason(err: BaseException) -> str:
    """Why a trial stopped, as the run's `mtbench.end_reason` tag: the signal, or the error and its message."""
    step = getattr(err, "checkpoint_step", None)
    at = f" after step {step}, checkpointed" if step is not None else ""
    if isinstance(err, Preempted):
        return f"preempted (SLURM USR2){at}; the job requeues"
    if isinstance(err, Terminated):
        return f"terminated (SIGTERM){at}"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    return f"{type(err).__name__}: {err}"


def train_loader_for(cfg: TrialConfig, dataset: Any, start_step: int, env: distributed.DistEnv) -> DataLoader:
    """The batches of steps start_step.. (this rank's shard of each global batch in a data-parallel trial)."""
    batches = StepBatchSampler(len(dataset), cfg.train.batch_size, seed=cfg.seed, steps=cfg.train.steps,
                               start=start_step)
    if env.enabled:
        batches = distributed.ShardedBatchSampler(batches, env)
    return DataLoader(dataset, collate_fn=collate, num_workers=cfg.train.num_workers, batch_sampler=batches)


def final_test_meters(tasks: tuple[str, ...], dataset: str) -> dict[str, Meter]:
    """Meters that only the final test runs, keyed `task:variant`: the slow ones and the published variants.

    Slow: `TaskSpec.test_meters`, edge's SEISM boundary evaluation (odsF/oisF/AP: 8-bit maps, NMS, 101
    thresholds; `build` gives it `train.num_workers` worker processes; validation logs the balanced-BCE proxy
    `edge/loss_bce`). Published: every metric variant a published row of this dataset family uses (InvPT's
    `sal:invpt` on PASCAL-Context), so that `mtbench report --with-published` can set that row beside the run.
    """
    variants = {(t, v) for t in tasks for v in get_task(t).test_meters}
    variants |= {(t, v) for t, v in published_variants(dataset) if t in tasks and not is_reference(t, v)}
    return {f"{t}:{v}": build_meter(t, dataset=dataset, variant=v) for t, v in sorted(variants)}


def published_variants(dataset: str) -> set[tuple[str, str]]:
    """(task, meter variant) of every published row on the family of `dataset` (mtbench.report.published)."""
    from mtbench.report.published import published_rows

    return {(t, v) for row in published_rows(DATASET_FAMILY[dataset]) for t, v in row.metric_variants.items()}


def check_same_config(saved: dict[str, Any], current: TrialConfig, path: Path) -> None:
    """Refuse to resume a checkpoint written under another config: its numbers would match neither.

    Only what decides the numbers counts (`TrialConfig.identity`): moving output_dir or the tracking
    store, or naming another Δm reference, does not stop a resume."""
    saved = _without_neutral({k: v for k, v in saved.items() if k not in NOT_IDENTITY})  # as identity() does
    old, new = tracking.flatten_config(saved), tracking.flatten_config(current.identity())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise MtbenchError(f"cannot resume {str(path)!r}: the config changed since it was written ({shown}). "
                           "Rerun with --fresh to start this trial afresh, or restore the old config.")


def clear_trial(cfg: TrialConfig) -> None:
    """Forget a trial's checkpoint and result so that it starts afresh (its MLflow run stays)."""
    folder = trial_dir(cfg)
    for path in (folder / CHECKPOINT, previous_path(folder / CHECKPOINT), folder / BEST, folder / RESULT):
        path.unlink(missing_ok=True)
