"""How long `mtbench report` takes as a sweep grows, and where the time goes.

`python benchmarks/bench_report.py --variants 10 --seeds 3 --evals 10` logs variants x seeds FINISHED
runs (4 NYUD tasks, `evals` validation points each) into a fresh sqlite store, then times one
`build_report` with its phases wrapped: reading the runs, the metric histories for the validation
curves, aggregation, tables, figures and the MLflow report run. The baseline is reading the runs
alone (`tracking.load_runs`), measured in the same process; the ratio says what the report adds to
it. Imports (torch/timm for model defaults, matplotlib) are timed apart, once per process. Outside the
test suite: measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import mtbench.report as report
from mtbench import tracking
from mtbench.report import tables

TASK_METRICS = {"semseg/mIoU": 40.0, "depth/rmse": 0.6, "normals/mean": 20.0, "edge/odsF": 70.0}


def log_sweep(uri: str, variants: int, seeds: int, evals: int) -> None:
    """Log `variants` x `seeds` trial runs the way the engine tags them, with noisy metrics."""
    rng = np.random.default_rng(0)
    for v in range(variants):
        name = "single_task" if v == 0 else f"v{v}@lr={10 ** -(v % 4 + 2)}"
        for seed in range(seeds):
            tags = {tracking.TAG_VARIANT: name, tracking.TAG_SEED: str(seed), tracking.TAG_MODEL: "demt",
                    tracking.TAG_DATASET: "nyud", tracking.TAG_DATASET_VARIANT: "NYUDv2",
                    tracking.TAG_CHECKPOINT: "final"}
            tracker = tracking.Tracker.start(uri, "bench", f"{name}-seed{seed}", tags)
            tracker.log_params({"model.name": "demt", "train.optimizer.lr": 10 ** -(v % 4 + 2), "seed": seed,
                                "cost/params_M": 32.07, "cost/gflops_fvcore": 121.26 + v,
                                "cost/input_size": "448x576"})
            metrics = {k: m * (1 + 0.05 * rng.standard_normal()) for k, m in TASK_METRICS.items()}
            for step in range(1, evals + 1):
                tracker.log_metrics({f"val/{k}": m * step / evals for k, m in metrics.items() if k != "edge/odsF"}
                                    | {"val/edge/loss_bce": 0.1 / step}, step * 100)
            tracker.log_metrics({f"test/{k}": m for k, m in metrics.items()}, evals * 100)
            tracker.end()


def timed(phases: dict[str, float], name: str, fn):  # noqa: ANN001, ANN202 - a generic wrapper
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        uri = f"sqlite:///{root}/mlruns.db"
        log_sweep(uri, args.variants, args.seeds, args.evals)
        tracking.load_runs(uri, "bench")  # warm MLflow's imports and the store before timing
        start = time.perf_counter()
        import mtbench.models  # noqa: F401 - model defaults for the ablation layout (torch, timm)
        import mtbench.report.figures  # noqa: F401 - matplotlib, seaborn
        imports = time.perf_counter() - start
        start = time.perf_counter()
        tracking.load_runs(uri, "bench")
        baseline = time.perf_counter() - start

        phases: dict[str, float] = defaultdict(float)
        for module, name, label in ((report, "collect_runs", "read runs"), (tracking, "metric_history", "histories"),
                                    (report, "summarize", "aggregate"), (tables, "to_latex", "tables"),
                                    (tables, "to_markdown", "tables"), (tracking, "log_report", "MLflow report run")):
            setattr(module, name, timed(phases, label, getattr(module, name)))
        from mtbench.report import figures

        figures.write_figures = timed(phases, "figures", figures.write_figures)
        start = time.perf_counter()
        report.build_report(uri, ["bench"], out_dir=Path(root) / "reports")
        total = time.perf_counter() - start
    phases["other"] = total - sum(phases.values())
    runs = args.variants * args.seeds
    print(json.dumps({"runs": runs, "val_points_per_run": args.evals, "load_runs_s": round(baseline, 3),
                      "report_s": round(total, 3), "imports_before_s": round(imports, 3),
                      "ratio_to_load_runs": round(total / baseline, 1),
                      "phases_s": {k: round(v, 3) for k, v in phases.items()}},
                     indent=2))


if __name__ == "__main__":
    main()
