"""The experiment schema: pydantic models with unknown keys rejected."""

from __future__ import annotations

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
    name: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class ScheduleConfig(Strict):
    name: Literal["poly", "cosine", "constant"] = "poly"
    warmup_steps: int = Field(0, ge=0)
    power: PositiveFloat = 0.9
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


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
    num_workers: int = Field(0, ge=0)
    # Which weights the test split scores: the last step's, or those of the best validation
    # evaluation by `select_metric` (default: the first task's primary metric). Never the test split.
    select: Literal["final", "best_val"] = "final"
    select_metric: str | None = None


class LossConfig(Strict):
    weighting: str = "fixed"
    weights: dict[str, float] | None = None
    edge_pos_weight: float = Field(0.95, gt=0, lt=1)


class TrackingConfig(Strict):
    uri: str | None = None


class VariantConfig(Strict):
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)


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
    # Δm reference: the variant whose runs are the single-task baseline.
    reference_variant: str = "single_task"

    @model_validator(mode="after")
    def _unique_variants(self) -> Experiment:
        names = [v.name for v in self.variants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(sorted(dup))}")
        return self


class TrialConfig(Sections):
    """One trial: an experiment's sections with one variant's overrides applied, and one seed."""

    experiment: str
    variant: str
    seed: int

    @property
    def key(self) -> str:
        """Stable human-readable identity of the trial within the output folder."""
        return f"{self.experiment}/{self.variant}/seed{self.seed}"
