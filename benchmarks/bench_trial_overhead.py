"""What the harness adds to a trial: time from launch to the first training step, and tracking calls per step.

`python benchmarks/bench_trial_overhead.py --steps 40` runs one tiny trial in this process (synthetic_nyud
32x48, `tiny` backbone) with the phases timed by wrapping the engine's functions, and the MLflow calls
counted by wrapping `mtbench.tracking.Tracker`. Reports seconds from `run_trial` to the first training
step (datasets, model, fvcore count, MLflow run and params), seconds per training step, the final
evaluation, and tracking calls per training step. Outside the test suite: measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from mtbench import tracking
from mtbench.config import expand_trials, load_experiment
from mtbench.engine import trainer, trial

EXPERIMENT = """name: overhead
dataset: {{name: synthetic_nyud, options: {{height: 32, width: 48, num_train: 64, num_val: 8, num_test: 8}},
          tasks: [semseg, depth, normals]}}
model: {{name: shared_encoder, backbone: tiny}}
train: {{steps: {steps}, batch_size: 2, eval_batch_size: 8, eval_every: 100000, checkpoint_every: 100000}}
tracking: {{uri: "sqlite:///{root}/mlruns.db"}}
output_dir: {root}/runs
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    stamps: dict[str, float] = {}
    calls: Counter[str] = Counter()

    original_fit = trainer.fit

    def timed_fit(*a, **kw):
        stamps["fit_start"] = time.perf_counter()
        result = original_fit(*a, **kw)
        stamps["fit_end"] = time.perf_counter()
        return result

    trial.fit = timed_fit
    for name in ("log_metrics", "log_params", "set_tags", "log_dict", "log_figure", "log_artifact"):
        method = getattr(tracking.Tracker, name)

        def counted(self, *a, _method=method, _name=name, **kw):
            calls[_name] += 1
            return _method(self, *a, **kw)

        setattr(tracking.Tracker, name, counted)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.yaml"
        path.write_text(EXPERIMENT.format(steps=args.steps, root=tmp))
        cfg = expand_trials(load_experiment(path))[0]
        tracking.ensure_store(cfg.tracking.uri)
        start = time.perf_counter()
        trial.run_trial(cfg)
        end = time.perf_counter()
    train_s = stamps["fit_end"] - stamps["fit_start"]
    print(json.dumps({
        "launch_to_first_step_s": round(stamps["fit_start"] - start, 3),
        "train_s_per_step": round(train_s / args.steps, 4),
        "after_training_s": round(end - stamps["fit_end"], 3),
        "total_s": round(end - start, 3),
        "tracking_calls": dict(calls),
        "tracking_calls_per_step": round(sum(calls.values()) / args.steps, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
