"""One trial end to end: data, model, training, evaluation, checkpoints and tracking.

`run_trial(cfg)` needs nothing but its TrialConfig, so a launcher can pickle it to another process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

import mtbench
from mtbench import tracking
from mtbench.config.schema import TrialConfig
from mtbench.data import DEFAULT_PROTOCOL, build_dataset
from mtbench.engine import distributed
from mtbench.engine.batching import StepBatchSampler, collate
from mtbench.engine.checkpoint import load_checkpoint, save_checkpoint, write_text_atomic
from mtbench.engine.evaluate import evaluate
from mtbench.engine.trainer import build_optimizer, fit
from mtbench.engine.visualize import prediction_grids
from mtbench.errors import MtbenchError
from mtbench.losses import build_task_loss
from mtbench.metrics import METRIC_DIRECTIONS, build_meter
from mtbench.models import build_model
from mtbench.profiling import measure_cost
from mtbench.registry import WEIGHTINGS
from mtbench.tasks import get_task, resolve_tasks

CHECKPOINT = "last.pt"
BEST = "best.pt"
RESULT = "result.json"


@dataclass
class TrialResult:
    key: str
    variant: str
    seed: int
    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0


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


def git_commit() -> str:
    """The commit of the mtbench checkout, or 'unknown' outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(mtbench.__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_output(folder: Path) -> None:
    """Create the trial folder, or fail with a clear message when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MtbenchError(f"output_dir: cannot write to {str(folder)!r} ({err.strerror}). "
                           "Choose a writable folder with -o output_dir=PATH.") from None


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


def skipped_tags(datasets: dict[str, Any]) -> dict[str, str]:
    """Tags naming the ids a dataset dropped (`skip_missing`), so no skip goes unrecorded."""
    tags = {}
    for split, dataset in datasets.items():
        if getattr(dataset, "skipped", None):
            ids = ",".join(dataset.skipped)
            tags[f"mtbench.skipped_ids.{split}"] = f"{len(dataset.skipped)}: {ids[:4000]}"
    return tags


def selection_for(cfg: TrialConfig, tasks: tuple[str, ...]) -> Selection:
    """The metric that picks the best-on-val checkpoint: configured, or the first task's primary one."""
    metric = cfg.train.select_metric or get_task(tasks[0]).primary_metric
    if metric == "edge/odsF":  # validation logs only the balanced-BCE proxy of edge
        metric = "edge/loss_bce"
    return Selection(metric, METRIC_DIRECTIONS[metric])


class PrunedTrial(Exception):
    """Raised by an `on_validate` hook to stop a trial early (a pruned search trial): run KILLED, tagged."""


def run_trial(cfg: TrialConfig, *, resume: bool = False, progress: Any = None,
              extra_tags: dict[str, str] | None = None,
              on_validate: Callable[[int, dict[str, float]], None] | None = None) -> TrialResult:
    """Train and test one trial; log it as one MLflow run. With `resume`, continue its last checkpoint.

    `extra_tags` go on the run (a study's name and trial number, a parent run); `on_validate(step,
    metrics)` sees every validation's metrics and may raise PrunedTrial to stop the trial there.

    Model selection only ever looks at the val split: the test split is scored once, at the end, with
    the final weights or (train.select: best_val) the weights of the best validation evaluation.
    """
    started = time.time()
    folder = trial_dir(cfg)
    if resume and (folder / RESULT).is_file():
        return TrialResult(**json.loads((folder / RESULT).read_text()))
    dist_env = distributed.env_from()
    device = distributed.setup(dist_env, resolve_device(cfg.train.device))
    distributed.check_batch(cfg.train.batch_size, dist_env)
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    tracking.check_tracking_uri(uri)
    if dist_env.is_main:
        prepare_output(folder)
        if not resume:
            clear_trial(cfg)
    distributed.barrier(dist_env)

    tasks = resolve_tasks(cfg.dataset.name, cfg.dataset.tasks)
    protocol = cfg.dataset.protocol or DEFAULT_PROTOCOL.get(cfg.dataset.name)
    datasets = {split: build_dataset(cfg.dataset.name, root=cfg.dataset.root, split=split, tasks=list(tasks),
                                     protocol=protocol, **cfg.dataset.options) for split in ("train", "val", "test")}
    if hasattr(datasets["train"], "augment_seed"):
        datasets["train"].augment_seed = cfg.seed  # each trial seed draws its own augmentations
    img_size = tuple(datasets["train"][0]["image"].shape[-2:])
    seed_everything(cfg.seed, device)
    model = build_model(cfg.model.name, tasks=tasks, dataset=cfg.dataset.name, backbone=cfg.model.backbone,
                        pretrained=cfg.model.pretrained, img_size=img_size, **cfg.model.options).to(device)
    weighting = WEIGHTINGS.get(cfg.loss.weighting)(tasks=tasks, weights=cfg.loss.weights).to(device)
    task_losses = {t: build_task_loss(t, dataset=cfg.dataset.name, edge_pos_weight=cfg.loss.edge_pos_weight)
                   for t in tasks}
    meters = {t: build_meter(t, dataset=cfg.dataset.name) for t in tasks}
    test_meters = {**meters, **final_test_meters(tasks, cfg.dataset.name)}
    optimizer = build_optimizer([model, weighting], cfg.train)
    selection = selection_for(cfg, tasks)

    checkpoint_path, best_path = folder / CHECKPOINT, folder / BEST
    state = load_checkpoint(checkpoint_path) if resume and checkpoint_path.is_file() else None
    start_step, run_id = 0, None
    if state is not None:
        check_same_config(json.loads(state["config"]), cfg.model_dump(), checkpoint_path)
        model.load_state_dict(state["model"])
        weighting.load_state_dict(state["weighting"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        start_step, run_id = int(state["step"]), state["run_id"]
        selection.value, selection.step = state["best_value"], state["best_step"]

    if not dist_env.is_main:  # the other ranks of a data-parallel trial only train (no cost count, no run)
        return train_other_rank(cfg, model, weighting, task_losses, optimizer, datasets["train"], device=device,
                                start_step=start_step, env=dist_env)
    cost = measure_cost(model, img_size)
    tags = {tracking.TAG_EXPERIMENT: cfg.experiment, tracking.TAG_VARIANT: cfg.variant,
            tracking.TAG_SEED: str(cfg.seed), tracking.TAG_MODEL: cfg.model.name,
            tracking.TAG_DATASET: cfg.dataset.name, tracking.TAG_CHECKPOINT: cfg.train.select,
            tracking.TAG_METRIC_VARIANTS: json.dumps({t: m.variant for t, m in test_meters.items()}),
            tracking.TAG_GIT_COMMIT: git_commit(), tracking.TAG_DEVICE: str(device),
            tracking.TAG_TRIAL_ID: cfg.id, **(extra_tags or {}),
            "mtbench.dataset_fingerprint": ";".join(d.fingerprint for d in datasets.values()),
            tracking.TAG_DATASET_VARIANT: getattr(datasets["test"], "variant", cfg.dataset.name),
            tracking.TAG_PROTOCOL: str(protocol),
            **skipped_tags(datasets),
            "mtbench.version": mtbench.__version__}
    tracker = tracking.Tracker.start(uri, cfg.experiment, f"{cfg.variant}-seed{cfg.seed}", tags, run_id=run_id)
    resolved = cfg.model_dump()
    tracker.log_params({**tracking.flatten_config(resolved), **cost.as_params(), "tasks": ",".join(tasks),
                        "select_metric": selection.metric})
    tracker.log_dict(resolved, "config.yaml")
    write_text_atomic(folder / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    eval_loaders = {split: DataLoader(datasets[split], batch_size=cfg.train.eval_batch_size, shuffle=False,
                                      collate_fn=collate, num_workers=cfg.train.num_workers)
                    for split in ("val", "test")}
    train_loader = train_loader_for(cfg, datasets["train"], start_step, dist_env)

    def validate(step: int) -> None:
        metrics = evaluate(model, eval_loaders["val"], meters, device=device, amp=cfg.train.amp,
                           progress=progress, description=f"val @ {step}")
        tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step)
        if cfg.train.select == "best_val" and selection.improves(metrics):
            selection.value, selection.step = metrics[selection.metric], step
            save_checkpoint(best_path, {"model": model.state_dict(), "step": step, "value": selection.value})
        if on_validate is not None:
            on_validate(step, metrics)
        distributed.barrier(dist_env)

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "weighting": weighting.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step, "rng_torch": torch.get_rng_state(),
            "best_value": selection.value, "best_step": selection.step,
            "run_id": tracker.run_id, "config": json.dumps(resolved), "mtbench_version": mtbench.__version__,
            "git_commit": tags[tracking.TAG_GIT_COMMIT]})

    try:
        fit(distributed.wrap(model, dist_env, device), weighting, task_losses, train_loader, optimizer, cfg.train,
            device=device, start_step=start_step, evaluate_fn=validate, checkpoint_fn=checkpoint,
            log_fn=tracker.log_metrics, progress=progress)
        validate(cfg.train.steps)
        tested_step = cfg.train.steps
        if cfg.train.select == "best_val":
            best = load_checkpoint(best_path)
            model.load_state_dict(best["model"])
            tested_step = int(best["step"])
        test_metrics = evaluate(model, eval_loaders["test"], test_meters, device=device, amp=cfg.train.amp,
                                progress=progress, description="test")
        tracker.log_metrics({f"test/{k}": v for k, v in test_metrics.items()}, cfg.train.steps)
        for task, figure in prediction_grids(model, eval_loaders["val"], tasks, device=device).items():
            tracker.log_figure(figure, f"predictions/{task}.png")
        result = TrialResult(key=cfg.key, variant=cfg.variant, seed=cfg.seed, run_id=tracker.run_id,
                             status="FINISHED", metrics=test_metrics, wall_time_s=time.time() - started)
        tracker.log_metrics({"wall_time_s": result.wall_time_s, "tested_step": tested_step}, cfg.train.steps)
        tracker.log_dict({"split": "test", "checkpoint": cfg.train.select, "tested_step": tested_step,
                          "select_metric": selection.metric, **test_metrics}, "final_metrics.json")
        write_text_atomic(folder / RESULT, json.dumps(asdict(result), indent=2))
        tracker.end("FINISHED")
        distributed.barrier(dist_env)
        distributed.teardown(dist_env)
    except PrunedTrial:
        tracker.set_tags({tracking.TAG_PRUNED: "true"})
        tracker.end("KILLED")
        raise
    except BaseException as err:
        tracker.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    return result


def train_loader_for(cfg: TrialConfig, dataset: Any, start_step: int, env: distributed.DistEnv) -> DataLoader:
    """The batches of steps start_step.. (this rank's shard of each global batch in a data-parallel trial)."""
    batches = StepBatchSampler(len(dataset), cfg.train.batch_size, seed=cfg.seed, steps=cfg.train.steps,
                               start=start_step)
    if env.enabled:
        batches = distributed.ShardedBatchSampler(batches, env)
    return DataLoader(dataset, collate_fn=collate, num_workers=cfg.train.num_workers, batch_sampler=batches)


def train_other_rank(cfg: TrialConfig, model: torch.nn.Module, weighting: torch.nn.Module,
                     task_losses: dict[str, Any], optimizer: torch.optim.Optimizer, dataset: Any, *,
                     device: torch.device, start_step: int, env: distributed.DistEnv) -> TrialResult:
    """A rank > 0 of a data-parallel trial: train its shards in step with rank 0, which does everything else."""
    fit(distributed.wrap(model, env, device), weighting, task_losses, train_loader_for(cfg, dataset, start_step, env),
        optimizer, cfg.train, device=device, start_step=start_step,
        evaluate_fn=lambda step: distributed.barrier(env), checkpoint_fn=lambda step: None,
        log_fn=lambda metrics, step: None)
    distributed.barrier(env)  # rank 0's final validation
    distributed.barrier(env)  # rank 0's test evaluation and result
    distributed.teardown(env)
    return TrialResult(key=cfg.key, variant=cfg.variant, seed=cfg.seed, run_id="", status="FINISHED",
                       metrics={}, wall_time_s=0.0)


def final_test_meters(tasks: tuple[str, ...], dataset: str) -> dict[str, Any]:
    """Meters that only the final test evaluation runs because they are slow: boundary odsF/oisF/AP.

    The published SEISM protocol (8-bit maps, NMS, 101 thresholds), matched in worker processes;
    validation keeps the balanced-BCE proxy `edge/loss_bce`, which is a loss.
    """
    if "edge" not in tasks:
        return {}
    workers = min(4, os.cpu_count() or 1)
    return {"edge:odsf_nms": build_meter("edge", dataset=dataset, variant="odsf_nms",
                                         num_workers=workers if workers > 1 else 0)}


def check_same_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written under another config: its numbers would match neither."""
    old, new = tracking.flatten_config(saved), tracking.flatten_config(current)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise MtbenchError(f"cannot resume {str(path)!r}: the config changed since it was written ({shown}). "
                           "Run without --resume to start this trial afresh, or restore the old config.")


def clear_trial(cfg: TrialConfig) -> None:
    """Forget a trial's checkpoint and result so that it starts afresh (its MLflow run stays)."""
    for name in (CHECKPOINT, BEST, RESULT):
        (trial_dir(cfg) / name).unlink(missing_ok=True)
