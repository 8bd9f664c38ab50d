"""AMP check on a GPU: train the same seeded trial in fp32 and in bf16 autocast, compare speed and metrics.

Run on a CUDA machine: `python benchmarks/amp_check.py --steps 80 --height 240 --width 320`.
Reports steps/s of both precisions measured in the same process (ratio = bf16 / fp32), peak memory,
and the val metrics each reached, so a regression in either speed or numbers shows as a ratio.
(Outside the test suite: speed is measured, not asserted.)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from mtbench.balancing import build_balancer
from mtbench.config.schema import TrainConfig
from mtbench.data import build_dataset
from mtbench.engine.batching import StepBatchSampler, collate
from mtbench.engine.evaluate import evaluate
from mtbench.engine.trainer import build_optimizer, fit
from mtbench.losses import ATRC_LOSS_WEIGHTS, build_task_loss
from mtbench.metrics import build_meter
from mtbench.models import build_model
from mtbench.tasks import DATASET_TASKS


def train_once(args: argparse.Namespace, amp: bool, data: dict, device: torch.device) -> dict:
    dataset = "synthetic_nyud"
    tasks = DATASET_TASKS[dataset]
    torch.manual_seed(0)
    model = build_model(args.model, tasks=tasks, dataset=dataset, backbone=args.backbone,
                        img_size=(args.height, args.width)).to(device)
    weighting = build_balancer("fixed", tasks=tasks, weights={t: ATRC_LOSS_WEIGHTS[t] for t in tasks}).to(device)
    losses = {t: build_task_loss(t, dataset=dataset) for t in tasks}
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, amp=amp, eval_every=10**6,
                      checkpoint_every=10**6, grad_clip=5.0, optimizer={"lr": 1e-3},
                      schedule={"warmup_steps": 5})
    optimizer = build_optimizer([model, weighting], cfg)
    loader = DataLoader(data["train"], collate_fn=collate, num_workers=args.workers, pin_memory=True,
                        persistent_workers=args.workers > 0,
                        batch_sampler=StepBatchSampler(len(data["train"]), args.batch_size, seed=0, steps=args.steps))
    stamps: dict[int, float] = {}

    def log(metrics: dict[str, float], step: int) -> None:  # .item() in fit syncs the device first
        stamps[step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fit(model, weighting, losses, loader, optimizer, cfg, device=device, start_step=0, evaluate_fn=lambda s: None,
        checkpoint_fn=lambda s: None, log_fn=log)
    first, last = 20, args.steps
    val_loader = DataLoader(data["val"], batch_size=32, collate_fn=collate)
    meters = {t: build_meter(t, dataset=dataset) for t in tasks}
    metrics = evaluate(model, val_loader, meters, device=device, amp=amp)
    return {"amp_bf16": amp, "steps_per_s": (last - first) / (stamps[last] - stamps[first]),
            "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            **{k: round(v, 4) for k, v in metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shared_encoder")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    opts = dict(height=args.height, width=args.width, num_train=256, num_val=64, num_test=8, cache=True)
    data = {s: build_dataset("synthetic_nyud", split=s, **opts) for s in ("train", "val")}
    for ds in data.values():  # render once up front so that timing sees the model, not the renderer
        for i in range(len(ds)):
            ds.render(i)
    rows = [train_once(args, amp, data, device) for amp in (False, True)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({**vars(args), "device": name, "torch": torch.__version__,
                      "runs": rows, "bf16_over_fp32_speed": rows[1]["steps_per_s"] / rows[0]["steps_per_s"]},
                     indent=1))


if __name__ == "__main__":
    main()
