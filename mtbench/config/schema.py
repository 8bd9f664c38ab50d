"""The experiment schema: pydantic models with unknown keys rejected."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator


class Strict(BaseModel):
    """Base for every config section: unknown keys are an error, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class DatasetConfig(Strict):
    name: str = "synthetic_nyud"
    root: str | None = None
    tasks: list[str] | None = None
    # Training/eval transforms (mtbench.data.transforms): atrc | mtinet; None = the dataset's default
    # (atrc for nyud and pascal_context; synthetic datasets have none).
    protocol: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(Strict):
    name: str = "shared_encoder"
    backbone: str = "resnet18"
    # False, True (timm weights, needs the network) or a local checkpoint path.
    pretrained: bool | str = False
    options: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(Strict):
    # adamw: decoupled weight decay; adam and sgd: coupled L2 (weight_decay * param added to the gradient),
    # as torch.optim.Adam/SGD in the released MTI-Net, PAD-Net and InvPT (adam) and DeMT (sgd) code.
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    # Which parameters weight_decay applies to: kernels (dim >= 2; never norms and biases) or all of them,
    # as the released DeMT (SGD) and MTI-Net (Adam) optimizers that get model.parameters() in one group.
    decay_on: Literal["kernels", "all"] = "kernels"


class ScheduleConfig(Strict):
    name: Literal["poly", "cosine", "constant"] = "poly"
    warmup_steps: int = Field(0, ge=0)
    power: PositiveFloat = 0.9
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    # How often the poly/cosine factor changes: every step, or once per epoch (len(train set) // batch_size
    # steps, last partial batch dropped), as MTI-Net's utils/common_config.py::adjust_learning_rate.
    per: Literal["step", "epoch"] = "step"


class TrainConfig(Strict):
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 8
    eval_batch_size: PositiveInt = 16
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: PositiveFloat | None = None
    eval_every: PositiveInt = 500
    checkpoint_every: PositiveInt = 100
    amp: bool = True
    device: str = "auto"
    # Worker processes of the data loaders, and of the final test's boundary matching (odsF; 0: in the trial's
    # process). Results do not depend on it.
    num_workers: int = Field(0, ge=0)
    # Which weights the test split scores: the last step's, or those of the best validation
    # evaluation by `select_metric` (default: the first task's primary metric). Never the test split.
    select: Literal["final", "best_val"] = "final"
    select_metric: str | None = None
    # Data-parallel trials on GPUs: BatchNorm -> SyncBatchNorm, so statistics span the global batch (released
    # DeMT: trainer.sync_batchnorm). A single-process trial ignores it; on CPUs (gloo) it is an error.
    sync_bn: bool = False
    # torch.compile the model that trains (mtbench.bench.compile_model; checkpoints and evaluation use the
    # uncompiled module). A model torch.compile cannot handle fails the trial with the reason.
    compile: bool = False
    # Weights in channels-last memory format: convolutions then run in oneDNN's and cuDNN's preferred layout
    # (about 10% faster training steps of the quickstart's models on a CPU). Changes floating-point order only.
    channels_last: bool = False


class LossConfig(Strict):
    # The balancer (mtbench.balancing) and its options; `weights` are the fixed scales every balancer but
    # `equal` applies first (the published weights).
    weighting: str = "fixed"
    options: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, float] | None = None
    edge_pos_weight: float = Field(0.95, gt=0, lt=1)
    # {task: {option: value}} for mtbench.losses.build_task_loss, e.g. {normals: {normalize_by: elements}};
    # names are checked against the trial's tasks and each loss's options when the config is loaded.
    task_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_pos_weight(self) -> LossConfig:
        given = self.task_options.get("edge", {})
        if "pos_weight" in given and self.edge_pos_weight != LossConfig.model_fields["edge_pos_weight"].default:
            raise ValueError(f"the edge loss's pos_weight is given twice: loss.edge_pos_weight "
                             f"{self.edge_pos_weight} and loss.task_options.edge.pos_weight {given['pos_weight']}; "
                             "keep one of them")
        return self

    def task_loss_options(self) -> dict[str, dict[str, Any]]:
        """Loss options per task: `task_options`, with `edge_pos_weight` as the edge loss's `pos_weight`
        unless `task_options` gives it (then edge_pos_weight must be left at its default)."""
        options = {task: dict(opts) for task, opts in self.task_options.items()}
        options["edge"] = {"pos_weight": self.edge_pos_weight, **options.get("edge", {})}
        return options


class TrackingConfig(Strict):
    uri: str | None = None
    # How long the store may be away before a trial gives up (its metrics are kept meanwhile; the trial then
    # stops with its checkpoint, resumable by rerunning). Not part of the trial id.
    outage_s: float = Field(300.0, gt=0)


class VariantConfig(Strict):
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class ParamSpec(Strict):
    """One dimension of an Optuna search space on a dotted config key."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if self.low >= self.high:
            raise ValueError(f"bounds are inverted or empty: low {self.low} >= high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, got {self.low}")
        return self


class SearchConfig(Strict):
    """An Optuna study over the experiment's base config (mtbench.sweep.search)."""

    # A validation metric as logged, e.g. "semseg/mIoU" (read from val/<objective>), or "delta_m": Δm in
    # percent against `reference` over the tasks whose primary metric both have.
    objective: str
    # For delta_m: "published:<row>" (mtbench/report/data/published_results.yaml) or {metric key: value}.
    reference: str | dict[str, float] | None = None
    # Default: the metric's own direction (higher mIoU, lower rmse).
    direction: Literal["maximize", "minimize"] | None = None
    space: dict[str, ParamSpec] = Field(min_length=1)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    n_trials: PositiveInt = 10
    # None: sqlite file <output_dir>/<experiment>/optuna.db; "journal:<path>": a JournalFileBackend
    # file for a shared filesystem; otherwise any SQLAlchemy URL (e.g. postgresql://...).
    storage: str | None = None
    study_name: str | None = None


    @model_validator(mode="after")
    def _reference(self) -> SearchConfig:
        if self.objective == "delta_m" and self.reference is None:
            raise ValueError("objective delta_m needs `reference`: published:<row> or {metric: value, ...}")
        return self


class LauncherConfig(Strict):
    """Where trials run: here (`local`, N worker processes) or on SLURM through submitit."""

    name: Literal["local", "slurm"] = "local"
    workers: PositiveInt = 1
    # SLURM (submitit's SlurmExecutor); every trial is one array task.
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: PositiveInt = 60
    cpus_per_task: PositiveInt = 2
    mem_gb: PositiveFloat | None = None
    gpus_per_node: int = Field(0, ge=0)
    array_parallelism: PositiveInt = 16
    # Extra `#SBATCH --key=value` lines as {key: value}, and shell lines run before each trial.
    sbatch: dict[str, Any] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list)


class Sections(Strict):
    """Everything one trial is built from (shared by Experiment and TrialConfig)."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str = "runs"

    @model_validator(mode="after")
    def _eval_fits(self) -> Sections:
        if self.train.schedule.warmup_steps >= self.train.steps:
            raise ValueError(f"train.schedule.warmup_steps ({self.train.schedule.warmup_steps}) must be "
                             f"smaller than train.steps ({self.train.steps})")
        return self


class Experiment(Sections):
    """An experiment file: shared sections, named model variants and the seeds to run."""

    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    variants: list[VariantConfig] = Field(default_factory=list)
    # Cartesian product of dotted config keys -> value lists, applied on top of every variant.
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: SearchConfig | None = None
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    # Δm reference: the variant whose runs are the single-task baseline.
    reference_variant: str = "single_task"

    @model_validator(mode="before")
    @classmethod
    def _variants_as_mapping(cls, data: Any) -> Any:
        """`variants: {name: {overrides}}` is accepted as well as a list of {name, overrides}."""
        if isinstance(data, dict) and isinstance(data.get("variants"), dict):
            data = {**data, "variants": [{"name": k, "overrides": v or {}} for k, v in data["variants"].items()]}
        return data

    @model_validator(mode="after")
    def _unique_variants(self) -> Experiment:
        names = [v.name for v in self.variants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(sorted(dup))}")
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid: {', '.join(empty)} has no values; give at least one value per key")
        if self.search is not None and (self.grid or self.variants):
            raise ValueError("search: an Optuna study runs over the base config; remove `grid` and `variants` "
                             "(or put the study in its own experiment file)")
        return self


# Config keys that do not decide a trial's numbers: where results go and how they are read.
NOT_IDENTITY = ("output_dir", "tracking", "reference_variant", "changes")
# Options added after trial ids were first published, each with the value that reproduces the behaviour from
# before it existed: at that value the key is left out of a trial's identity, so existing trials keep their
# ids (the tracking store and resume find them by id). A new option is added here with its neutral value.
ID_NEUTRAL: dict[str, Any] = {
    "train.optimizer.decay_on": "kernels",
    "train.schedule.per": "step",
    "train.sync_bn": False,
    "train.compile": False,
    "train.channels_last": False,
    "loss.task_options": {},
    "loss.options": {},
}


def _without_neutral(dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` without the ID_NEUTRAL keys that hold their neutral value."""
    for dotted, neutral in ID_NEUTRAL.items():
        *parents, leaf = dotted.split(".")
        node = dump
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            del node[leaf]
    return dump


class TrialConfig(Sections):
    """One trial: an experiment's sections with one variant's overrides applied, and one seed."""

    experiment: str
    variant: str
    seed: int
    # The experiment's Δm reference row, recorded on the run for `mtbench report`; changes no result.
    reference_variant: str = "single_task"
    # What this trial sets over the experiment's base config (its variant's overrides and grid point, a study
    # trial's parameters), for the run's description; changes no result.
    changes: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable human-readable identity of the trial within the output folder."""
        return f"{self.experiment}/{self.variant}/seed{self.seed}"

    def identity(self) -> dict[str, Any]:
        """The config that decides the trial's numbers: everything but where results go and how they are read."""
        return _without_neutral(self.model_dump(exclude=set(NOT_IDENTITY)))

    @property
    def id(self) -> str:
        """Stable id: a hash of `identity()`."""
        payload = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]
