"""The `mtbench` command line: parses, calls library functions, formats output. No logic lives here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from mtbench.errors import MtbenchError, Terminated
from mtbench.progress import progress_bars

if TYPE_CHECKING:
    from mtbench.report import Report

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and ablation harness for multi-task dense prediction.")
# Piped output (CI logs, files) gets a wide console so that metric columns are not cut to "…".
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True)
data_app = typer.Typer(no_args_is_help=True,
                       help="Datasets on disk: write synthetic trees in real layouts, check trees.")
app.add_typer(data_app, name="data")


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file, e.g. experiments/quickstart.yaml.")],
    override: Annotated[list[str] | None, typer.Option("--override", "-o", help="key.path=value (repeatable).")]
    = None,
    smoke: Annotated[bool, typer.Option(help="Synthetic data, tiny backbone, few steps: a CPU check.")] = False,
    resume: Annotated[bool, typer.Option("--resume/--fresh", help="Skip FINISHED trials and continue the others "
                                         "from their checkpoints (default), or start every trial afresh.")] = True,
    dry_run: Annotated[bool, typer.Option(help="Print the trial table (id, variant, seed, status) and exit.")]
    = False,
    launcher: Annotated[str | None, typer.Option(help="local or slurm (overrides launcher.name).")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel local worker processes (launcher.workers).")]
    = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow SLURM jobs to the end, or submit and "
                                       "return (re-attach with `mtbench status`).")] = True,
    variant: Annotated[str | None, typer.Option(help="Run only the trials of this variant.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run only the trials of this seed.")] = None,
) -> None:
    """Run every trial (variant x grid point x seed, or an Optuna study) of an experiment; each is an MLflow run."""
    from mtbench.config import expand_trials, load_experiment
    from mtbench.config.loading import select_trials
    from mtbench.sweep.launchers import prepare_experiment

    overrides = list(override or [])
    if launcher is not None:
        overrides.append(f"launcher.name={launcher}")
    if workers is not None:
        overrides.append(f"launcher.workers={workers}")
    exp = load_experiment(experiment, overrides, smoke=smoke)
    if exp.search is not None:
        from mtbench.sweep.search import run_study

        if dry_run:
            console.print(yaml.safe_dump(exp.search.model_dump(), sort_keys=False))
            return
        with stops_cleanly():
            summary = run_study(exp, fresh=not resume, console=console)
        console.print(summary)
        return
    trials = expand_trials(exp, where=str(experiment))
    if variant is not None or seed is not None:
        trials = select_trials(trials, variant=variant, seed=seed)
    if dry_run:
        print_trial_table(trials, title=f"{exp.name}: {len(trials)} trials (dry run: nothing runs)")
        return
    console.print(f"[bold]{exp.name}[/]: {len(trials)} trials ({len({t.variant for t in trials})} variants x "
                  f"{len({t.seed for t in trials})} seeds) on {exp.launcher.name}"
                  + (f" x {exp.launcher.workers} workers" if exp.launcher.name == "local" and
                     exp.launcher.workers > 1 else ""))
    prepare_experiment(exp)
    with stops_cleanly():
        results = launch_with_display(trials, exp.launcher, fresh=not resume, wait=wait,
                                      parent=f"grid-{exp.name}" if exp.grid else None)
    if not results and not wait:
        console.print(f"Submitted. Follow with `mtbench status {experiment}`.")
        return
    print_results(exp.name, results)


def launch_with_display(trials: list, launcher_cfg: object, *, fresh: bool, wait: bool, parent: str | None) -> list:
    """Run the trials: progress bars for one local process, a live table of trial states otherwise."""
    from rich.live import Live

    from mtbench.sweep.launchers import launch

    if launcher_cfg.name == "local" and launcher_cfg.workers == 1:
        with progress_bars(console) as progress:
            return launch(trials, launcher_cfg, fresh=fresh, progress=progress, parent=parent)
    states: dict[str, tuple[str, str]] = {t.key: ("pending", "") for t in trials}

    def render() -> Table:
        table = Table(title="trials")
        for col in ("trial", "id", "state", "detail"):
            table.add_column(col)
        for t in trials:
            state, detail = states[t.key]
            table.add_row(t.key, t.id, state, detail)
        return table

    with Live(render(), console=console, refresh_per_second=2, transient=False) as live:
        def update(trial: object, state: str, detail: str) -> None:
            states[trial.key] = (state, detail)
            live.update(render())

        return launch(trials, launcher_cfg, fresh=fresh, update=update, wait_for_jobs=wait, parent=parent)


def print_trial_table(trials: list, title: str) -> None:
    """id, variant, seed, what differs from the base config, and the status in the tracking store."""
    from mtbench.sweep.launchers import plan_sweep

    plan = plan_sweep(trials)
    table = Table(title=title)
    for col in ("id", "variant", "seed", "status", "run"):
        table.add_column(col)
    busy = {t.id for t in plan.busy}
    for t in trials:
        record = plan.records.get(t.id)
        state = (record.status if record else "new") + (" (training now: locked)" if t.id in busy else "")
        table.add_row(t.id, t.variant, str(t.seed), state, record.run_id if record else "")
    console.print(table)


def print_results(name: str, results: list, what: str = "primary test metrics") -> None:
    """The primary metric of every task per trial (`what` names the split and weights); exit 2 listing failures."""
    from mtbench.engine.distributed import env_from

    if not env_from().is_main:  # the other processes of a data-parallel run have no metrics to show
        return
    from mtbench.metrics import metric_direction
    from mtbench.tasks import TASK_NAMES, TASKS

    table = Table(title=f"{name}: {what}")
    table.add_column("variant", no_wrap=True)
    table.add_column("seed")
    table.add_column("status")
    logged = {k for r in results for k in r.metrics}
    keys = [TASKS[t].primary_metric for t in TASK_NAMES if TASKS[t].primary_metric in logged]
    for key in keys:
        table.add_column(f"{key} {'↑' if metric_direction(key) else '↓'}", justify="right")
    for r in results:
        values = [f"{r.metrics[k]:.4g}" if k in r.metrics else "" for k in keys]
        table.add_row(r.variant, str(r.seed), r.status, *values)
    console.print(table)
    failed = [r for r in results if r.status != "FINISHED"]
    if failed:
        raise MtbenchError("\n".join(f"trial {r.key} {'skipped' if r.status == 'SKIPPED' else 'failed'}: "
                                     f"{r.metrics.get('error', '')}" for r in failed))
    console.print(f"Browse the runs with `mtbench ui`; tables with `mtbench report --experiment {name}`.")


@app.command()
def status(
    experiment: Annotated[Path, typer.Argument(help="The experiment YAML file the sweep was started from.")],
    override: Annotated[list[str] | None, typer.Option("--override", "-o", help="Same overrides as the run.")]
    = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow unfinished SLURM jobs to the end.")]
    = False,
    smoke: Annotated[bool, typer.Option(help="The trials of `mtbench run EXP --smoke`.")] = False,
) -> None:
    """Show the state of every trial of a sweep; with --wait, re-attach to its SLURM jobs."""
    from mtbench.config import expand_trials, load_experiment

    exp = load_experiment(experiment, list(override or []), smoke=smoke)
    trials = expand_trials(exp, where=str(experiment))
    if not wait:
        print_trial_table(trials, title=f"{exp.name}: {len(trials)} trials")
        return
    from mtbench.sweep.launchers import attach

    results = attach(trials, update=lambda t, state, detail: console.print(f"{t.key}: {state} {detail}"))
    print_results(exp.name, results)


@app.command(name="eval")
def eval_weights(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file that builds the model and data.")],
    weights: Annotated[Path, typer.Option(help="Weights file: an mtbench checkpoint (last.pt, best.pt) or a "
                                               "state dict.")],
    split: Annotated[str, typer.Option(help="Split to score: test or val.")] = "test",
    override: Annotated[list[str] | None, typer.Option("--override", "-o", help="key.path=value (repeatable).")]
    = None,
    variant: Annotated[str | None, typer.Option(help="Which variant of the experiment (default: its only one).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Which seed of the experiment (default: its only one).")] = None,
    smoke: Annotated[bool, typer.Option(help="The --smoke settings of `mtbench run` (for weights it wrote).")]
    = False,
) -> None:
    """Score weights on a split without training; log one MLflow run of kind eval."""
    from mtbench.config import expand_trials, load_experiment
    from mtbench.engine.eval import check_split, evaluate_weights, pick_trial

    check_split(split)
    exp = load_experiment(experiment, list(override or []), smoke=smoke)
    cfg = pick_trial(expand_trials(exp, where=str(experiment)), variant=variant, seed=seed)
    with stops_cleanly(), progress_bars(console) as progress:
        result = evaluate_weights(cfg, weights, split=split, progress=progress)
    console.print(result.weights.summary(), highlight=False)
    console.print(f"[bold]{exp.name}[/]: eval of the weights on the {split} split ({result.wall_time_s:.1f} s)")
    print_results(exp.name, [result], what=f"primary {split} metrics of {Path(weights).name}")
    console.print(f"MLflow eval run {result.run_id} (kind eval: not in `mtbench report` tables).")


def _key_values(items: list[str] | None, option: str) -> dict[str, str]:
    """Parse repeated `key=value` options."""
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MtbenchError(f"{option} {item!r}: write key=value, e.g. {option} mtbench.model=demt.")
        pairs[key] = value
    return pairs


@app.command()
def report(
    experiment: Annotated[list[str] | None, typer.Option("--experiment", "-e", help="MLflow experiment to report "
                                                         "(repeatable: several become one table). Default: the "
                                                         "store's only experiment.")] = None,
    reference: Annotated[str | None, typer.Option(help="Δm reference: a variant of the runs, published:<row> (e.g. "
                                                       "published:DeMT/nyud/Swin-T), or none. Default: the "
                                                       "experiment's reference_variant.")] = None,
    with_published: Annotated[str | None, typer.Option(help="Add the comparable published rows of a dataset: nyud "
                                                            "or pascal (others are listed as not comparable).")]
    = None,
    tag: Annotated[list[str] | None, typer.Option(help="Keep runs with this tag, key=value (repeatable), e.g. "
                                                       "mtbench.dataset_variant=NYUDv2.")] = None,
    query: Annotated[str | None, typer.Option(help="MLflow search filter, e.g. \"params.`train.steps` = '500'\".")]
    = None,
    std: Annotated[bool, typer.Option("--std/--no-std", help="Cells show mean ± std (default) or the mean.")] = True,
    name: Annotated[str | None, typer.Option(help="Report name: folder under --out (default: the experiment "
                                                  "names).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the reports.")] = Path("reports"),
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI "
                                                          "or sqlite:///mlruns.db).")] = None,
    metric_variant: Annotated[list[str] | None, typer.Option(
        help="Show a task's column in this meter variant, TASK=VARIANT (repeatable), e.g. sal=invpt to set "
             "InvPT's published PASCAL row beside the runs.")] = None,
) -> None:
    """Write tables (LaTeX, Markdown, CSV) and figures from the MLflow runs; log them as a report run."""
    from mtbench import tracking
    from mtbench.report import build_report
    from mtbench.report.tables import not_comparable_by_reason

    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_uri(uri)
    with progress_bars(err_console) as progress:
        result = build_report(uri, list(experiment or []), out_dir=out, name=name, reference=reference,
                              tags=_key_values(tag, "--tag"), query=query, with_published=with_published,
                              show_std=std, variants=_key_values(metric_variant, "--metric-variant"),
                              progress=progress)
    table = result.table
    console.print(f"[bold]{table.name}[/]: {int(table.summary['n_seeds'].sum(skipna=True))} seed runs in "
                  f"{int((table.summary['kind'] == 'run').sum())} rows on {table.dataset_variant}; "
                  f"{_delta_note(result)}")
    for path in result.files:
        console.print(f"wrote {path}")
    for figure, why in result.skipped_figures.items():
        console.print(f"no {figure} figure: {why}")
    for why, rows in not_comparable_by_reason(table).items():
        console.print(f"published rows not comparable ({why}): {', '.join(rows)}")
    for r in result.omitted.itertuples():
        console.print(f"not in the table: {r.label} seed {r.seed} {'PRUNED' if r.pruned else r.status} ({r.run_id})")
    console.print(f"MLflow report run {result.run_id} (browse with `mtbench ui`).")


def _delta_note(result: Report) -> str:
    """One line on Δm: what it is measured against, or why there is none."""
    table = result.table
    if table.delta_missing:
        return f"no Δm ({table.delta_missing})"
    return f"Δm against {table.reference.description} over {', '.join(table.delta_tasks)}"


@app.command(name="list")
def list_entries() -> None:
    """List registered models, backbones, datasets, balancers (loss.weighting) and metric variants."""
    import mtbench.balancing  # noqa: F401  (registers the balancers)
    import mtbench.data  # noqa: F401  (registers datasets)
    import mtbench.metrics  # noqa: F401  (registers meters)
    from mtbench.models import model_options
    from mtbench.registry import BACKBONES, DATASETS, METERS, MODELS, WEIGHTINGS

    table = Table(title="mtbench registries")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("details")
    for name in MODELS:
        table.add_row("model", name, ", ".join(f"{k}={v!r}" for k, v in model_options(name).items()))
    for name in BACKBONES:
        table.add_row("backbone", name, f"timm {BACKBONES.get(name).timm_name} ({BACKBONES.get(name).kind})")
    for name in DATASETS:
        table.add_row("dataset", name, (DATASETS.get(name).__doc__ or "").strip().splitlines()[0])
    for name in WEIGHTINGS:
        table.add_row("balancer", name, WEIGHTINGS.get(name).doc.splitlines()[0])
    for name in METERS:
        table.add_row("metric variant", name, (METERS.get(name).build.__doc__ or "").strip().splitlines()[0])
    console.print(table)


@app.command()
def flops(
    model: Annotated[str, typer.Argument(help="Registered model name, e.g. demt.")],
    backbone: Annotated[str, typer.Option(help="Registered backbone name.")] = "swin_tiny",
    dataset: Annotated[str, typer.Option(help="Dataset whose tasks the model predicts.")] = "nyud",
    input_size: Annotated[str, typer.Option(help="Input height x width, e.g. 448x576.")] = "448x576",
    option: Annotated[list[str] | None, typer.Option("--option", help="Model option key=value (repeatable).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Count parameters (per component) and fvcore GFLOPs of a model at batch 1 and a stated input size."""
    import json

    from mtbench.config.loading import parse_override
    from mtbench.profiling import flops_report

    try:
        height, width = (int(v) for v in input_size.lower().split("x"))
    except ValueError:
        raise MtbenchError(f"--input-size {input_size!r} must look like HEIGHTxWIDTH, e.g. 448x576.") from None
    options = dict(parse_override(text) for text in option or [])
    report = flops_report(model, backbone=backbone, dataset=dataset, input_size=(height, width), options=options)
    if as_json:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"{model} / {backbone} / {dataset} at {report['input_size']}, batch 1")
    table.add_column("what")
    table.add_column("value", justify="right")
    for part, count in report["params"].items():
        table.add_row(f"params {part}", f"{count / 1e6:.3f} M")
    table.add_row("GFLOPs", f"{report['gflops']:.2f}")
    console.print(table)
    console.print(f"Convention: {report['convention']}")
    if report.get("uncounted_ops"):
        console.print(f"Not counted (no handle): {report['uncounted_ops']}")


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="Registered model name, e.g. demt.")],
    dataset: Annotated[str, typer.Option(help="Dataset of the published setting: nyud or pascal_context.")],
    batch: Annotated[int | None, typer.Option(help="Batch size (default: the recipe's train.batch_size).")] = None,
    amp: Annotated[str | None, typer.Option(help="bf16 (autocast, CUDA only) or fp32 (default).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model, as train.compile.")]
    = False,
    peak: Annotated[float | None, typer.Option(help="Device peak TFLOP/s for MFU (default: mtbench's table of "
                                                    "GPUs; none on CPU).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the recipe's).")] = None,
    size: Annotated[str | None, typer.Option(help="Input HxW (default: the recipe's), e.g. 448x576.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed steps (the median is reported).")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps first.")] = 3,
    json_path: Annotated[str | None, typer.Option("--json", help="Also write the results as JSON to this file "
                                                                 "(- : print only JSON on stdout).")] = None,
) -> None:
    """Time training steps (forward, backward, optimizer) at a model's published setting: TFLOP/s, MFU, memory."""
    import json

    from mtbench.bench import parse_size, run_bench

    result = run_bench(model, dataset, batch=batch, amp=amp, compiled=compile_, peak=peak, backbone=backbone,
                       size=parse_size(size) if size is not None else None, repeats=repeats, warmup=warmup)
    table = Table(title=f"{model} / {result['backbone']} / {dataset} at {result['input_size']}, batch "
                        f"{result['batch']}, {result['amp']}{', compiled' if compile_ else ''}")
    table.add_column("what")
    table.add_column("value", justify="right")
    memory = result["peak_memory_mib"]
    rows = {"device": result["device_name"], "setting": result["setting_source"]
            + (f" (overridden: {', '.join(result['overridden'])})" if result["overridden"] else ""),
            "step time (median)": f"{result['step_s'] * 1e3:.1f} ms of {result['repeats']}",
            "images/s": f"{result['images_per_s']:.2f}", "GMACs (fvcore, 1 image)": f"{result['gmacs']:.3f}",
            "TFLOP/step (6 x MACs x batch)": f"{result['train_tflop_per_step']:.4g}",
            "TFLOP/s": f"{result['tflops']:.4g}",
            "peak TFLOP/s": f"{result['peak_tflops']:g}" if result["peak_tflops"] else "unknown",
            "MFU": f"{100 * result['mfu']:.2f} %" if result["mfu"] is not None else result["mfu_note"],
            "peak memory": f"{memory:.0f} MiB" if memory is not None else "n/a"}
    for what, value in rows.items():
        table.add_row(what, value)
    out = err_console if json_path == "-" else console
    out.print(table)
    out.print(f"Convention: {result['convention']}. Peak: {result['peak_source']}. Memory: {result['memory_basis']}.")
    if result["uncounted_ops"]:
        out.print(f"TFLOP/s undercounts: fvcore has no handle for {result['uncounted_ops']}")
    if json_path == "-":
        print(json.dumps(result, indent=2))
    elif json_path is not None:
        try:
            Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as err:
            raise MtbenchError(f"--json: cannot write {json_path!r} ({err.strerror}).") from None
        console.print(f"wrote {json_path}")


@data_app.command("synth")
def data_synth(
    layout: Annotated[str, typer.Option(help="On-disk layout: nyud_mt, nyudv2 or pascal_context.")],
    out: Annotated[Path, typer.Option(help="Folder to write (must be missing or empty).")],
    n: Annotated[int, typer.Option("-n", "--num-samples", help="Number of samples, train and val together.")],
    height: Annotated[int | None, typer.Option(help="Image height (default 480 nyud_mt, 425 nyudv2, "
                                                    "375 pascal_context, where sizes vary per image).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width (default 640 / 560 / 500).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic scenes and of the split.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of the samples in the val split.")] = 0.25,
    overwrite: Annotated[bool, typer.Option(help="Replace this layout's folders in a non-empty --out.")] = False,
) -> None:
    """Write the synthetic dataset in the exact file layout of a real archive (to exercise its loader)."""
    from mtbench.data.layouts import write_layout

    s = write_layout(layout, out, n, height=height, width=width, seed=seed, val_fraction=val_fraction,
                     overwrite=overwrite)
    size = f"{s.height}x{s.width}" + (" (varying per image)" if s.varying_size else "")
    console.print(f"wrote {s.layout} to {s.root}: train={s.counts['train']} val={s.counts['val']}, "
                  f"size {size}, seed {s.seed}, {s.seconds:.1f} s")


@data_app.command("check")
def data_check(
    name: Annotated[str, typer.Argument(help="Dataset: nyud or pascal_context.")],
    root: Annotated[Path, typer.Option(help="Folder holding the unpacked archive.")],
    tasks: Annotated[list[str] | None, typer.Option("--task", help="Check only these tasks (repeatable).")] = None,
    quick: Annotated[bool, typer.Option(help="Only check that every file exists; do not read them.")] = False,
) -> None:
    """Verify a dataset tree: files of every id, label sizes and values; print variant, counts, fingerprint."""
    from mtbench.data.check import check_tree
    with progress_bars(err_console) as bar:
        jobs: dict[str, object] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in jobs:
                jobs[split] = bar.add_task(f"reading {split}", total=total)
            bar.update(jobs[split], completed=done)

        report = check_tree(name, root, tasks=tasks, full=not quick, progress=progress)
    table = Table(title=f"{name} at {report.root}")
    table.add_column("split")
    table.add_column("ids", justify="right")
    table.add_column("missing files", justify="right")
    for split, count in report.counts.items():
        missing = len({i for ids in report.missing.get(split, {}).values() for i in ids})
        table.add_row(split, str(count), str(missing))
    console.print(table)
    console.print(f"variant: {report.variant}   tasks: {', '.join(report.tasks)}")
    if report.image_sizes:
        console.print("image sizes: " + ", ".join(f"{s} ({n})" for s, n in report.image_sizes.most_common(5)))
    console.print(f"fingerprint: {report.fingerprint}")
    if not report.ok:
        raise MtbenchError(f"{name} at {report.root} has problems:\n  " + "\n  ".join(report.problems()))
    console.print("[green]ok[/]" + (" (files present; run without --quick to read them)" if quick else ""))


@app.command()
def ui(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="MLflow experiment to open (default: "
                                                   "the one with the most recent run).")] = None,
    study: Annotated[Path | None, typer.Option(help="Experiment YAML with a `search:` section: serve Optuna's "
                                                    "dashboard on its study instead.")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the address in a web browser.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI "
                                                          "or sqlite:///mlruns.db).")] = None,
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: 5000, the dashboard 8080).")] = None,
) -> None:
    """Serve MLflow's UI (or, with --study, Optuna's dashboard) on 127.0.0.1 and print the page to open."""
    import webbrowser

    def announce(address: str) -> None:
        console.print(f"Open {address}  (Ctrl-C stops the server)", soft_wrap=True, highlight=False)
        if open_browser:
            webbrowser.open(address)

    if study is not None:
        from mtbench.config import load_experiment
        from mtbench.sweep.dashboard import serve_dashboard

        raise typer.Exit(serve_dashboard(load_experiment(study), port=port or 8080, ready=announce))
    from mtbench import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    raise typer.Exit(tracking.launch_ui(uri, host="127.0.0.1", port=port or 5000, experiment=experiment,
                                        ready=announce))


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def stops_cleanly() -> Iterator[None]:
    """Ctrl-C or SIGTERM in a command that trains: the open run is already KILLED (trial.closed_on_error);
    say so and how to continue, and exit 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        yield
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        err_console.print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: the trial's run is marked "
                          "KILLED; rerun the same command to continue from its last checkpoint.")
        raise typer.Exit(143 if terminated else 130) from None


def main() -> None:
    """Entry point: user errors print one message and exit 2, without a traceback; SIGTERM stops like Ctrl-C."""
    import signal
    import warnings

    from mtbench.engine import stopping

    # SIGTERM mid-training checkpoints the step it lands in, then stops the trial like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, stopping.deferred(_raise_terminated))
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        app()
    except MtbenchError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:  # main() called in-process (tests, notebooks) leaves the caller's handler as it was
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
