"""Read experiment YAML: `base:` inheritance, `-o key.path=value` overrides, validation, --smoke."""

from __future__ import annotations

import copy
import difflib
import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mtbench.config.schema import Experiment, Sections, TrialConfig, VariantConfig
from mtbench.errors import MtbenchError
from mtbench.tasks import DATASET_FAMILY

# What --smoke swaps in: the synthetic stand-in of the same dataset family, a tiny backbone, tiny
# images and a few steps, so any experiment file runs end to end on a CPU in about a minute.
SMOKE_DATASET = {"nyud": "synthetic_nyud", "pascal_context": "synthetic_pascal"}
SMOKE_DATASET_OPTIONS = {"height": 64, "width": 64, "num_train": 16, "num_val": 8, "num_test": 8}
SMOKE_TRAIN = {"steps": 4, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2, "checkpoint_every": 2}


def read_yaml(path: Path) -> dict[str, Any]:
    """Load one YAML mapping, with errors that name the file."""
    if not path.is_file():
        raise MtbenchError(f"experiment file {str(path)!r} does not exist. "
                           "Check the path; examples live in experiments/.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise MtbenchError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        raise MtbenchError(f"{path}: the file is empty (or only comments). An experiment needs at least a "
                           "`dataset:` and a `model:` section; see experiments/quickstart.yaml.")
    if not isinstance(data, dict):
        raise MtbenchError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    return data


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Merge `child` over `base`: dicts merge recursively; lists and scalars replace."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read `path` and the chain of `base:` files it names (relative to the including file)."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(str(p.name) for p in (*_seen, path))
        raise MtbenchError(f"{path}: `base:` files include each other in a cycle ({chain}).")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise MtbenchError(f"{path}: `base:` must be one relative file path, got {base!r}.")
    return deep_merge(load_raw(path.parent / base, (*_seen, path)), data)


def set_dotted(data: dict[str, Any], dotted: str, value: Any, *, where: str) -> None:
    """Set `data[a][b][c] = value` for the key path 'a.b.c', creating dicts on the way."""
    keys = dotted.split(".")
    if not all(keys):
        raise MtbenchError(f"{where}: {dotted!r} is not a key path like train.steps.")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise MtbenchError(f"{where}: cannot set {dotted!r}: {key!r} holds a value, not a section.")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split a CLI override 'key.path=value'; the value is read as YAML (so 3, 1e-3, [a, b] work)."""
    if "=" not in text:
        raise MtbenchError(f"override {text!r} must look like key.path=value, e.g. -o train.steps=200.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def smoke_backbone(model: str) -> str:
    """The tiny backbone that model `model` declares for smoke runs (`tiny`, or `vit_test` for InvPT)."""
    from mtbench.models import MODELS

    return MODELS.get(model).smoke_backbone if model in MODELS else "tiny"


def apply_smoke(data: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a raw experiment turned into its --smoke version (see SMOKE_*)."""
    data = copy.deepcopy(data)
    dataset = data.setdefault("dataset", {})
    name = dataset.get("name", "synthetic_nyud")
    family = DATASET_FAMILY.get(name)
    if family is None:
        raise MtbenchError(f"--smoke: unknown dataset {name!r}; valid: {', '.join(DATASET_FAMILY)}.")
    dataset.update(name=SMOKE_DATASET[family], root=None, protocol=None, options=dict(SMOKE_DATASET_OPTIONS))
    model = data.setdefault("model", {})
    model.update(backbone=smoke_backbone(model.get("name", "")), pretrained=False)
    train = data.setdefault("train", {})
    train.update(SMOKE_TRAIN)
    train.setdefault("schedule", {})["warmup_steps"] = 1
    data["seeds"] = list(data.get("seeds") or [0])[:1]
    # One grid point, a two-trial study, run here: the smoke checks the sweep's wiring, not its size.
    data["grid"] = {k: list(v)[:1] for k, v in (data.get("grid") or {}).items()
                    if not k.startswith(("model.backbone", "model.pretrained", "dataset.", "train.steps"))}
    if isinstance(data.get("search"), dict):
        data["search"] = {**data["search"], "n_trials": min(2, int(data["search"].get("n_trials", 2)))}
    # Here, one process; the file's SLURM settings stay for `--smoke --launcher slurm` (a check of the cluster setup).
    data["launcher"] = {**(data.get("launcher") or {}), "name": "local", "workers": 1}
    variants = data.get("variants") or []
    for variant in variants.values() if isinstance(variants, dict) else variants:
        overrides = (variant.get("overrides") if "name" in (variant or {}) else variant) or {}
        for key in [k for k in overrides if k.startswith(("model.backbone", "model.pretrained",
                                                          "dataset.", "train."))]:
            del overrides[key]
        if "model.name" in overrides:
            overrides["model.backbone"] = smoke_backbone(str(overrides["model.name"]))
    return data


def _did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Suggest the closest valid key for an unknown key at `loc` in `model`."""
    node: Any = model
    for part in loc[:-1]:
        field = getattr(node, "model_fields", {}).get(part)
        if field is None:
            return ""
        node = field.annotation
    fields = list(getattr(node, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
    return f" Did you mean {close[0]!r}?" if close else f" Valid keys here: {', '.join(fields)}."


def format_validation_error(err: ValidationError, model: type[BaseModel], where: str) -> str:
    """Turn a pydantic error into lines that say which key, what is wrong and how to fix it."""
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}.{_did_you_mean(model, loc)}")
        else:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}{shown}")
    return f"{where}: invalid experiment config:\n  " + "\n  ".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise MtbenchError(format_validation_error(err, model, where)) from None


def check_override_takes_effect(data: dict[str, Any], key: str, where: str) -> None:
    """Refuse a command-line override that every variant (or the grid) sets again, so it would change nothing."""
    def covers(other: str) -> bool:
        return key == other or key.startswith(other + ".")

    variants = [v for v in data.get("variants") or [] if isinstance(v, dict)]
    setters = [next((k for k in (v.get("overrides") or {}) if covers(k)), None) for v in variants]
    if variants and all(setters):
        names = ", ".join(str(v.get("name")) for v in variants)
        raise MtbenchError(f"{where}: has no effect: every variant ({names}) sets {min(setters, key=len)} itself. "
                           "Change it in the variants' overrides in the file instead.")
    swept = [k for k in data.get("grid") or {} if covers(k)]
    if swept:
        raise MtbenchError(f"{where}: has no effect: the grid sweeps {swept[0]}. Change the grid's values in the "
                           "file instead.")


def load_experiment(path: str | Path, overrides: list[str] | None = None, *, smoke: bool = False) -> Experiment:
    """Load, merge, override and validate an experiment file; every trial is validated too."""
    path = Path(path)
    data = load_raw(path)
    data.setdefault("name", path.stem)
    if smoke:  # first: the user's -o (and --launcher, --workers) apply on top of the smoke settings
        data = apply_smoke(data)
    for text in overrides or []:
        key, value = parse_override(text)
        check_override_takes_effect(data, key, where=f"-o {text}")
        set_dotted(data, key, value, where=f"-o {text}")
    experiment = validate(Experiment, data, str(path))
    for trial in expand_trials(experiment, where=str(path)):
        check_names(trial, where=f"{path}: variant {trial.variant!r}")
    return experiment


def check_select_metric(trial: TrialConfig) -> None:
    """The checkpoint-selection metric must be one the trial's validation meters log: a key that the
    reference meter of one of its tasks declares (edge: `edge/loss_bce`; odsF is a test-only meter)."""
    import mtbench.metrics  # noqa: F401  (registers meters)
    from mtbench.registry import METERS
    from mtbench.tasks import resolve_tasks

    key = trial.train.select_metric
    if key is None:
        return
    tasks = resolve_tasks(trial.dataset.name, trial.dataset.tasks)
    valid = [k for t in tasks for k in METERS.get(t).directions]
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MtbenchError(f"train.select_metric: {key!r} is not a validation metric of this trial.{hint} "
                           f"Valid: {', '.join(valid)}.")


def check_names(trial: TrialConfig, where: str) -> None:
    """Check every registry name and model option of a trial now, not minutes into a sweep."""
    import mtbench.data  # noqa: F401  (registers datasets)
    from mtbench.balancing import build_balancer
    from mtbench.models import backbone_entry, check_model_options
    from mtbench.registry import DATASETS, MODELS
    from mtbench.tasks import resolve_tasks

    try:
        DATASETS.get(trial.dataset.name)
        tasks = resolve_tasks(trial.dataset.name, trial.dataset.tasks)
        MODELS.get(trial.model.name)
        backbone_entry(trial.model.backbone)
        balancer = build_balancer(trial.loss.weighting, tasks=tasks, weights=trial.loss.weights,
                                  options=trial.loss.options)
        if getattr(balancer, "shared", None) == "encoder" and not MODELS.get(trial.model.name).shared_encoder:
            raise MtbenchError(f"balancer {trial.loss.weighting!r} aggregates the gradients of the shared encoder, "
                               f"but model {trial.model.name!r} has none (one network per task). Use a loss-based "
                               "balancer for it (fixed, equal, uncertainty, dwa, rlw, gls, famo), or override "
                               "loss.weighting in that variant.")
        check_model_options(trial.model.name, trial.model.options)
        check_select_metric(trial)
        check_protocol(trial)
        check_loss_options(trial)
    except MtbenchError as err:
        raise MtbenchError(f"{where}: {err}") from None


def check_loss_options(trial: TrialConfig) -> None:
    """`loss.task_options` names tasks of this trial and options (and values) their losses take: build each loss."""
    from mtbench.losses import build_task_loss
    from mtbench.tasks import resolve_tasks

    tasks = resolve_tasks(trial.dataset.name, trial.dataset.tasks)
    unknown = [t for t in trial.loss.task_options if t not in tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], tasks, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MtbenchError(f"loss.task_options names task(s) {', '.join(map(repr, unknown))} that this trial does "
                           f"not train.{hint} Its tasks: {', '.join(tasks)}.")
    options = trial.loss.task_loss_options()
    for task in tasks:
        try:
            build_task_loss(task, dataset=trial.dataset.name, **options.get(task, {}))
        except MtbenchError as err:
            raise MtbenchError(f"loss.task_options: {err}") from None


def check_protocol(trial: TrialConfig) -> None:
    """A known protocol for datasets on disk; no model selection on a split that is also the test split."""
    from mtbench.data import DEFAULT_PROTOCOL
    from mtbench.data.transforms import PROTOCOLS

    name = trial.dataset.name
    if name not in DEFAULT_PROTOCOL:
        if trial.dataset.protocol is not None:
            raise MtbenchError(f"dataset.protocol: {name} is rendered at its final size and takes no protocol "
                               f"(got {trial.dataset.protocol!r}); remove dataset.protocol.")
        return
    if trial.dataset.protocol is not None and trial.dataset.protocol not in PROTOCOLS:
        raise MtbenchError(f"dataset.protocol: unknown protocol {trial.dataset.protocol!r}; valid: "
                           f"{', '.join(PROTOCOLS)}.")
    if trial.train.select == "best_val":
        raise MtbenchError(f"train.select: best_val on {name} would pick the checkpoint on the split the test "
                           "metrics come from (the published protocol has no separate validation split); use "
                           "train.select: final.")


def expand_trials(experiment: Experiment, where: str = "experiment") -> list[TrialConfig]:
    """One TrialConfig per (variant, grid point, seed); no variants means one variant named after the model.

    A grid point's variant name appends its values, e.g. `demt@lr=0.001,mixer_width=128`.
    """
    base = experiment.model_dump(include=set(Sections.model_fields))
    variants = experiment.variants or [VariantConfig(name=experiment.model.name)]
    points = grid_points(experiment.grid)
    trials = []
    for variant in variants:
        for point in points:
            data = copy.deepcopy(base)
            for key, value in {**variant.overrides, **point}.items():
                set_dotted(data, key, value, where=f"{where}: variant {variant.name!r}")
            name = f"{variant.name}@{grid_label(point)}" if point else variant.name
            for seed in experiment.seeds:
                trial = dict(data, experiment=experiment.name, variant=name, seed=seed,
                             reference_variant=experiment.reference_variant, changes={**variant.overrides, **point})
                trials.append(validate(TrialConfig, trial, f"{where}: variant {name!r}"))
    return trials


def select_trials(trials: list[TrialConfig], *, variant: str | None = None, seed: int | None = None,
                  ) -> list[TrialConfig]:
    """The trials of `variant` and `seed` (None: any); naming none of the experiment's trials is a user error."""
    chosen = [t for t in trials if (variant is None or t.variant == variant) and (seed is None or t.seed == seed)]
    if chosen:
        return chosen
    listed = ", ".join(f"{t.variant} seed {t.seed}" for t in trials)
    name = trials[0].experiment if trials else "?"
    variants = sorted({t.variant for t in trials})
    if variant is not None and variant not in variants:
        close = difflib.get_close_matches(variant, variants, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise MtbenchError(f"experiment {name!r} has no variant {variant!r}.{hint} Its trials: {listed}.")
    raise MtbenchError(f"experiment {name!r} has no trial with seed {seed}"
                       + (f" in variant {variant!r}" if variant else "") + f". Its trials: {listed}.")


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of a grid as {dotted key: value} dicts, in key order ([{}] for no grid)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def grid_label(point: dict[str, Any]) -> str:
    """`lr=0.001,mixer_width=128`: last key components, or the whole key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in point]
    names = [short if last.count(short) == 1 else key for short, key in zip(last, point, strict=True)]
    return ",".join(f"{n}={str(v).replace('/', '_')}" for n, v in zip(names, point.values(), strict=True))

