"""Has the balancer contract made the default `fixed` training step slower? Old path vs new, one process.

The old step (before mtbench.balancing): losses -> Σ w_t L_t -> isfinite -> backward -> step. The new step:
the same forward through `batch_losses`, `Balancer.scale`, `Balancer.backward`, `FiniteWatch` (one host
sync, as before). Both run the quickstart's shared encoder and DeMT (mixer_width 64) on synthetic_nyud
64x80, batch 8, interleaved so that machine noise hits both alike; the ratio new/old is what to read.

    python benchmarks/bench_fixed_overhead.py [--repeats 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mtbench.balancing import build_balancer
from mtbench.config.schema import TrainConfig
from mtbench.data import build_dataset
from mtbench.engine.batching import collate
from mtbench.engine.trainer import FiniteWatch, batch_losses, build_optimizer, joined
from mtbench.losses import build_task_loss
from mtbench.models import build_model
from mtbench.tasks import DATASET_TASKS

WEIGHTS = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}


def setup(model_name: str, options: dict) -> tuple:
    torch.manual_seed(0)
    dataset = "synthetic_nyud"
    tasks = DATASET_TASKS[dataset]
    data = build_dataset(dataset, root=None, split="train", tasks=list(tasks), height=64, width=80, num_train=16)
    batch = collate([data[i] for i in range(8)])
    model = build_model(model_name, tasks=tasks, dataset=dataset, backbone="tiny", **options).train()
    losses = {t: build_task_loss(t, dataset=dataset) for t in tasks}
    balancer = build_balancer("fixed", tasks=tasks, weights=WEIGHTS)
    optimizer = build_optimizer([model, balancer], TrainConfig(optimizer={"lr": 1e-4}))
    return model, losses, balancer, optimizer, batch


def old_step(model, losses, balancer, optimizer, batch) -> None:
    preds = model(batch["image"])
    total = torch.stack([WEIGHTS[t] * fn(preds[t].float(), batch[t]) for t, fn in losses.items()]).sum()
    if not torch.isfinite(total):
        raise RuntimeError("non-finite")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def new_step(model, losses, balancer, optimizer, batch) -> None:
    final, auxiliary = batch_losses(model, losses, batch, device=torch.device("cpu"), amp=False)
    scaled = balancer.scale(joined(final, auxiliary))
    total = torch.stack(list(scaled.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    weights = balancer.backward(scaled)
    watch = FiniteWatch(balancer, list(losses), lambda step: 0.0, 0, torch.device("cpu"))
    watch.observe(total, final, weights)
    watch.check()  # fit checks every 10 steps; one step here keeps the old step's single check
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for name, options in (("shared_encoder", {}), ("demt", {"mixer_width": 64})):
        parts = setup(name, options)
        for step in (old_step, new_step, old_step, new_step):  # warm-up
            step(*parts)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for label, step in (("old", old_step), ("new", new_step)):
                start = time.perf_counter()
                step(*parts)
                times[label].append(time.perf_counter() - start)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        rows.append({"model": name, "old_ms": round(old * 1e3, 2), "new_ms": round(new * 1e3, 2),
                     "ratio": round(new / old, 3)})
        print(f"{name:15s} old {old * 1e3:8.2f} ms  new {new * 1e3:8.2f} ms  new/old {new / old:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": "cpu", "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
