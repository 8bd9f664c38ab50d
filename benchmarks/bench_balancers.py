"""Training-step time and memory of every loss balancer, as a ratio to `fixed` on the same model.

`python benchmarks/bench_balancers.py --setting quickstart` (shared_encoder and DeMT, `tiny` backbone, DeMT
mixer_width 64, synthetic_nyud 64x80, batch 8: the quickstart's trials) or `--setting swin` (both on Swin-T,
`swin_tiny` random init, at NYUD's 428x560, batch 2; DeMT with its released options). `--json PATH` writes the
results. Device: CUDA when available, else the CPU; on a CPU that other jobs share, `--threads 1` gives steadier
numbers (two threads that wait on each other make the steps two to three times slower there).

One step is what `mtbench.engine.trainer.fit` does: forward (`batch_losses`), deep-supervision terms joined
(`joined`), fixed scales (`balancer.scale`, the quickstart's `loss.weights`), `balancer.backward`, the finite
check, grad clipping, the AdamW step (`build_optimizer`) and `balancer.after_step` (FAMO's second forward).
Every balancer of `mtbench.registry.WEIGHTINGS` runs with its default options (gradient balancers:
`shared: encoder`), on one synthetic_nyud batch, plus `fixed` a second time ("fixed (again)"): the noise level.
All balancers of a model share one model and one optimizer (one model's memory, whatever the number of
balancers; the weights drift over the steps, which changes no cost); each is attached just before its step
and its backbone hook removed after it. After one untimed step of the model, every balancer takes `--warmup`
untimed steps; then each of `--repeats` rounds times fixed, b1, fixed, b2, ..., fixed (the order of the others
rotated every round), and a balancer's ratio in a round is its step's time over the mean of the two `fixed`
steps around it, so load that drifts during the run (other jobs on a shared machine) cancels; "ratio" is the
median over rounds, "ms/step" the median time. Defaults: quickstart 2 warm-up steps and 7 rounds; swin (a step
takes seconds to tens of seconds on a CPU) no warm-up step per balancer and 1 round, so a balancer's first-call
costs (TorchJD's and cvxpy's set-up, well under a second) are inside its one timed step.

Memory. "Jacobian MiB" is computed, not measured: T x (shared parameters) x 4 bytes, the fp32 Jacobian a
gradient balancer holds (0 for loss-based ones; GradNorm holds one layer's gradient at a time). "step MiB" is
measured: on CUDA the peak allocated during a timed step above what was allocated before it (the largest over
the rounds); on the CPU (`--rss`, default for quickstart) a child process runs each balancer once more and
reports the peak resident set growth during one step after a warm-up step (VmHWM reset through
/proc/self/clear_refs; glibc's MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the resident set).
Also prints the Jacobian of InvPT's ViT-L encoder for 4 (NYUD) and 5 (PASCAL-Context) tasks.
Outside the test suite: measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import mtbench.balancing  # noqa: F401  (registers the balancers)
from mtbench.balancing import Balancer, build_balancer
from mtbench.balancing.jacobian import JacobianBalancer
from mtbench.config.schema import LossConfig, TrainConfig
from mtbench.data import build_dataset
from mtbench.engine.batching import collate, to_device
from mtbench.engine.trainer import FiniteWatch, build_optimizer, train_step
from mtbench.losses import build_task_loss
from mtbench.models import build_backbone, build_model
from mtbench.registry import WEIGHTINGS
from mtbench.tasks import resolve_tasks

DATASET = "synthetic_nyud"
# The quickstart's loss section: ATRC's NYUD scales and the edge loss's positive weight.
LOSS = LossConfig(weights={"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}, edge_pos_weight=0.95)
# The quickstart's optimiser (AdamW, kernels decayed) and clipping; the lr changes no cost.
TRAIN = TrainConfig(optimizer={"name": "adamw", "lr": 1e-4, "weight_decay": 1e-4}, grad_clip=5.0, amp=True)
SETTINGS: dict[str, dict[str, Any]] = {
    "quickstart": {"backbone": "tiny", "size": (64, 80), "batch": 8, "warmup": 2, "repeats": 7, "rss": True,
                   "models": {"shared_encoder": {}, "demt": {"mixer_width": 64}}},
    "swin": {"backbone": "swin_tiny", "size": (428, 560), "batch": 2, "warmup": 0, "repeats": 1, "rss": False,
             "models": {"shared_encoder": {}, "demt": {}}},
}
AGAIN = "fixed (again)"
MIB = 2**20


@dataclass
class Entry:
    """One row: a balancer on the shared model, with what its steps measured."""

    label: str
    balancer: Balancer
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # over the mean of the two `fixed` steps around it
    step_mib: float | None = None

    @property
    def jacobian_bytes(self) -> int:
        if not isinstance(self.balancer, JacobianBalancer):
            return 0
        return len(self.balancer.tasks) * sum(p.numel() * p.element_size() for p in self.balancer._shared)


def synthetic_batch(size: tuple[int, int], batch: int, tasks: tuple[str, ...], device: torch.device) -> dict:
    """One training batch of synthetic_nyud at `size`."""
    data = build_dataset(DATASET, split="train", tasks=list(tasks), num_train=batch, num_val=0, num_test=0,
                         height=size[0], width=size[1])
    return to_device(collate([data[i] for i in range(batch)]), device)


def attached(balancer: Balancer, model: nn.Module) -> list[Any]:
    """`balancer.attach(model)`, returning the handles of the forward hooks it registered on the backbone."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        balancer.attach(model)
        return []
    handles: list[Any] = []
    register = backbone.register_forward_hook
    backbone.register_forward_hook = lambda *a, **k: handles.append(register(*a, **k)) or handles[-1]
    try:
        balancer.attach(model)
    finally:
        del backbone.register_forward_hook
    return handles


def make_step(model: nn.Module, balancer: Balancer, task_losses: dict[str, nn.Module], batch: dict,
              optimizer: torch.optim.Optimizer, device: torch.device) -> Callable[[], None]:
    """One training step as `mtbench.engine.trainer.fit` runs it (without logging and schedule)."""
    amp = TRAIN.amp and device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]  # clipped as fit clips: the network only
    watch = FiniteWatch(balancer, list(task_losses), lambda step: TRAIN.optimizer.lr, 0, device)

    def step() -> None:
        total, final, _, weights = train_step(model, balancer, task_losses, batch, optimizer, device=device, amp=amp,
                                              clipped=params, grad_clip=TRAIN.grad_clip)
        watch.observe(total, final, weights)

    return step


def rss_mib() -> tuple[float, float]:
    """(peak, current) resident set of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmHWM", "VmRSS"))


def run_model(name: str, options: dict[str, Any], setting: dict[str, Any], labels: list[str],
              device: torch.device, *, warmup: int, repeats: int, rss: bool) -> list[Entry]:
    """Time (or, with `rss`, measure the resident memory of) one step of every balancer on model `name`."""
    tasks = resolve_tasks(DATASET, None)
    torch.manual_seed(0)
    model = build_model(name, tasks=tasks, dataset=DATASET, backbone=setting["backbone"], img_size=setting["size"],
                        **options).to(device).train()
    batch = synthetic_batch(setting["size"], setting["batch"], tasks, device)
    options_of = LOSS.task_loss_options()
    task_losses = {t: build_task_loss(t, dataset=DATASET, **options_of.get(t, {})) for t in tasks}
    entries = [Entry(label, build_balancer(label.split(" ")[0], tasks=tasks, weights=LOSS.weights,
                                           steps_per_epoch=640 // 8).to(device)) for label in labels]
    optimizer = build_optimizer([model, *(e.balancer for e in entries)], TRAIN)
    steps = {e.label: make_step(model, e.balancer, task_losses, batch, optimizer, device) for e in entries}

    def one(entry: Entry, timed: bool) -> float:
        handles = attached(entry.balancer, model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        elif rss and timed:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            before = rss_mib()[1]
        start = time.perf_counter()
        steps[entry.label]()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        for handle in handles:
            handle.remove()
        if not timed:
            return seconds
        entry.seconds.append(seconds)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - before) / MIB
        elif rss:
            peak = rss_mib()[0] - before
        else:
            return seconds
        entry.step_mib = max(peak, entry.step_mib or 0.0)
        return seconds

    one(entries[0], False)  # the model's first step (optimiser state, first-call allocations), untimed
    if rss:  # memory: each balancer alone, a warm-up step then one measured step
        for entry in entries:
            one(entry, False)
            one(entry, True)
        return entries
    for entry in entries:
        for _ in range(warmup):
            one(entry, False)
    fixed, others = entries[0], entries[1:]
    for r in range(repeats):  # fixed, b1, fixed, b2, ..., fixed: each balancer between two fixed steps
        before = one(fixed, True)
        for i in range(len(others)):
            entry = others[(i + r) % len(others)]
            seconds = one(entry, True)
            after = one(fixed, True)
            entry.ratios.append(seconds / ((before + after) / 2))
            before = after
        print(f"  {name}: round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return entries


def summarise(entries: list[Entry]) -> list[dict[str, Any]]:
    """Rows: median ms/step, and the median over rounds of the ratio to the `fixed` steps around the step."""
    rows = []
    for e in entries:
        ratios = e.ratios or [1.0]
        family = "gradient" if isinstance(e.balancer, JacobianBalancer) else "loss"
        rows.append({"balancer": e.label, "family": family, "ms_step": round(1000 * statistics.median(e.seconds), 1),
                     "ratio": round(statistics.median(ratios), 3),
                     "all_ms": [round(1000 * t, 1) for t in e.seconds],
                     "jacobian_mib": round(e.jacobian_bytes / MIB, 1), "step_mib": e.step_mib})
    return rows


def vit_large_jacobian() -> list[dict[str, Any]]:
    """The fp32 Jacobian (T x P x 4 bytes) of InvPT's ViT-L/16 encoder at InvPT's NYUD and PASCAL sizes."""
    rows = []
    for dataset, tasks, size in (("nyud", 4, (448, 576)), ("pascal_context", 5, (512, 512))):
        with torch.device("meta"):
            encoder = build_backbone("vit_large_patch16", img_size=size)
        params = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
        rows.append({"dataset": dataset, "tasks": tasks, "input": f"{size[0]}x{size[1]}", "encoder_params_m":
                     round(params / 1e6, 2), "jacobian_gib": round(tasks * params * 4 / 2**30, 2)})
    return rows


def memory_pass(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run the RSS measurement in a child process (its allocator settings would change the timings here)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, __file__, "--setting", args.setting, "--memory-child",
           *(["--threads", str(args.threads)] if args.threads else []),
           *(["--batch", str(args.batch)] if args.batch else []), *(f"--model={m}" for m in args.model),
           *(f"--balancer={b}" for b in args.balancer)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def print_table(setting: str, device: str, results: dict[str, list[dict[str, Any]]], measured: str) -> None:
    print(f"\n{setting}: step time and memory per balancer, ratio to `fixed` on the same model ({device})")
    print(f"| balancer | family | model | ms/step | ratio to fixed | Jacobian MiB (T x P x 4 B) | {measured} |")
    print("|:---|:---|:---|---:|---:|---:|---:|")
    for model, rows in results.items():
        base = rows[0]["step_mib"]
        for r in rows:
            mem = "n/a" if r["step_mib"] is None else f"{r['step_mib']:.0f}"
            if r["step_mib"] is not None and base:
                mem += f" (x{r['step_mib'] / base:.2f})"
            print(f"| {r['balancer']} | {r['family']} | {model} | {r['ms_step']:.1f} | {r['ratio']:.2f} "
                  f"| {r['jacobian_mib']:.1f} | {mem} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="quickstart")
    parser.add_argument("--warmup", type=int, help="untimed steps per balancer (default: the setting's)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: the setting's)")
    parser.add_argument("--balancer", action="append", default=[], help="only these (repeatable; fixed is added)")
    parser.add_argument("--model", action="append", choices=["shared_encoder", "demt"], default=[],
                        help="only this model (repeatable; default both)")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                        help="CPU: measure each step's peak resident set growth in a child process")
    parser.add_argument("--batch", type=int, help="batch size (default: the setting's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = {**SETTINGS[args.setting], **({"batch": args.batch} if args.batch else {})}
    if args.model:
        setting["models"] = {m: o for m, o in setting["models"].items() if m in args.model}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = args.balancer or [n for n in WEIGHTINGS.names() if n != "fixed"]
    labels = ["fixed", *(n for n in names if n != "fixed"), AGAIN]

    if args.memory_child:
        found = {m: {e.label: e.step_mib for e in run_model(m, o, setting, labels, device, warmup=0, repeats=0,
                                                             rss=True)}
                 for m, o in setting["models"].items()}
        print(json.dumps(found))
        return

    warmup = setting["warmup"] if args.warmup is None else args.warmup
    repeats = setting["repeats"] if args.repeats is None else args.repeats
    rss = device.type == "cpu" and (setting["rss"] if args.rss is None else args.rss)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    start = time.perf_counter()
    results = {}
    for model, options in setting["models"].items():
        results[model] = summarise(run_model(model, options, setting, labels, device, warmup=warmup,
                                             repeats=repeats, rss=False))
    if rss:
        for model, found in memory_pass(args).items():
            for row in results[model]:
                row["step_mib"] = found[row["balancer"]]
    measured = ("peak MiB allocated in a step" if device.type == "cuda" else
                "peak RSS growth in a step, MiB" if rss else "measured MiB (not measured on CPU: --rss)")
    print_table(args.setting, device_name, results, measured)
    vit = vit_large_jacobian()
    print("\nJacobian of InvPT's ViT-L/16 encoder, fp32 (T x P x 4 bytes), held by every gradient balancer:")
    for v in vit:
        print(f"  {v['dataset']} ({v['tasks']} tasks, {v['input']}): {v['encoder_params_m']}M parameters -> "
              f"{v['jacobian_gib']} GiB")
    print("  To shrink it: keep `shared: encoder` (default; `several_tasks` adds the cross-task decoder's "
          "parameters); `parallel_chunk_size: 1` differentiates one task at a time, which cuts the vmapped "
          "backward's transient memory but not the T x P Jacobian; aggregating over the last blocks only is "
          "not offered; a loss-based balancer (famo, uncertainty, ...) holds none.")
    report = {"setting": args.setting, "device": device_name, "input": "x".join(map(str, setting["size"])),
              "batch": setting["batch"], "backbone": setting["backbone"], "models": setting["models"],
              "warmup": warmup, "repeats": repeats, "memory": measured, "wall_s": round(time.perf_counter() - start),
              "results": results, "vit_large_jacobian": vit}
    print(f"\nwall time {report['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
