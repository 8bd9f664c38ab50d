"""What a host sync every training step costs: the old per-step `torch.isfinite(total)` check against FiniteWatch.

    python benchmarks/bench_step_sync.py [--model demt] [--dataset nyud] [--amp] [--steps 30] [--rounds 3]
        [--backbone tiny --size 64x80 --batch 2]   (defaults: the model's published setting, mtbench.bench)

Two loops take the same training steps (`mtbench.bench.prepare_step`: `train_step` on one random batch):
- per-step sync (`fit` before issue 18): after every step, `bool(torch.isfinite(total))` waits for the device;
- FiniteWatch (`fit` now): every step `observe`s on the device, `check` reads it every 10 steps (fit's logging).
Each loop is timed over `--steps` steps with one synchronisation at its end; the rounds alternate the loops so
that drift hits both. Prints ms per step of each, and the ratio FiniteWatch / per-step sync (below 1: saving).
On a CPU there is nothing to wait for and the ratio is ~1. Outside the test suite: measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mtbench.bench import parse_size, prepare_step, published_setting
from mtbench.engine.trainer import FiniteWatch
from mtbench.tasks import resolve_tasks

LOG_EVERY = 10  # fit checks the watch at its logging steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demt")
    parser.add_argument("--dataset", default="nyud")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--size", default=None, help="HxW (default: the recipe's)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    setting = published_setting(args.model, args.dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tasks = resolve_tasks(args.dataset, list(setting.tasks) if setting.tasks else None)
    prepared = prepare_step(args.model, args.dataset, tasks=tasks, backbone=args.backbone or setting.backbone,
                            size=parse_size(args.size) if args.size else setting.size,
                            batch=args.batch or setting.batch, options=dict(setting.options),
                            optimizer_name=setting.optimizer, amp=args.amp, compiled=False, device=device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def per_step_sync() -> None:
        for _ in range(args.steps):
            total, _, _, _ = prepared.step()
            if not bool(torch.isfinite(total)):
                raise SystemExit("non-finite loss")

    def finite_watch() -> None:
        watch = FiniteWatch(prepared.balancer, list(tasks), lambda step: 0.0, 0, device)
        for i in range(args.steps):
            total, final, _, weights = prepared.step()
            watch.observe(total, final, weights)
            if (i + 1) % LOG_EVERY == 0:
                watch.check()

    loops = {"per-step sync": per_step_sync, "FiniteWatch": finite_watch}
    for loop in loops.values():  # warm-up: allocations, optimizer state, cuDNN autotuning
        loop()
    synchronize()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            synchronize()
            started = time.perf_counter()
            loop()
            synchronize()
            times[name].append((time.perf_counter() - started) / args.steps)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ratio = ms["FiniteWatch"] / ms["per-step sync"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model} on {args.dataset}, {name}, {'bf16' if args.amp else 'fp32'}: per-step sync "
          f"{ms['per-step sync']:.1f} ms/step, FiniteWatch {ms['FiniteWatch']:.1f} ms/step, ratio {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dataset": args.dataset, "device": name, "amp": args.amp,
                       "steps": args.steps, "rounds": args.rounds, "ms_per_step": ms, "ratio": ratio,
                       "seconds_per_step": times}, f, indent=2)


if __name__ == "__main__":
    main()
