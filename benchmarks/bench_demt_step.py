"""Training-step time of DeMT against the shared-encoder baseline on the same backbone, with the FLOPs ratio.

`python benchmarks/bench_demt_step.py --height 428 --width 560 --batch 2 --repeats 3`
(425x560 is NYUD's size; the released Swin pads it to 428 = a multiple of its patch size 4.)
Both models are built, profiled with fvcore (GFLOPs at batch 1) and timed in the same process on the
same device: forward + loss + backward + AdamW step on random inputs, median of `--repeats` after one
warm-up step. Also times DeMT's deformable operator alone both ways (torchvision's deform_conv2d, or
grid_sample then a 1x1 conv: the path DeMT takes on the CPU).
The bar (issue 4): the step-time ratio DeMT / shared should not exceed the FLOPs ratio.
Prints a JSON object. Outside the test suite: speed is measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mtbench.losses import build_task_loss
from mtbench.models import build_model
from mtbench.profiling import measure_cost
from mtbench.tasks import DATASET_TASKS, get_task


def random_targets(dataset: str, tasks: tuple[str, ...], batch: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Label tensors with each task's shape and dtype (values only need to be legal)."""
    h, w = size
    targets: dict[str, torch.Tensor] = {}
    for t in tasks:
        if t == "semseg":
            targets[t] = torch.randint(0, get_task(t).num_outputs(dataset), (batch, h, w))
        elif t == "normals":
            targets[t] = torch.nn.functional.normalize(torch.randn(batch, 3, h, w), dim=1)
        elif t == "depth":
            targets[t] = torch.rand(batch, 1, h, w) * 5 + 0.5
        else:
            targets[t] = (torch.rand(batch, 1, h, w) > 0.9).float()
    return targets


def time_steps(model: torch.nn.Module, dataset: str, tasks: tuple[str, ...], args: argparse.Namespace,
               device: torch.device) -> list[float]:
    """Seconds per training step (forward, losses, backward, optimizer), one warm-up step excluded."""
    size = (args.height, args.width)
    model.to(device).train()
    losses = {t: build_task_loss(t, dataset=dataset) for t in tasks}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image = torch.randn(args.batch, 3, *size, device=device)
    targets = {t: v.to(device) for t, v in random_targets(dataset, tasks, args.batch, size).items()}
    times = []
    for _ in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            preds = model(image)
        loss = sum(losses[t](preds[t].float(), targets[t]) for t in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def time_sampling_paths(device: torch.device, shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    """Seconds for forward + backward of DeMT's operator: deform_conv2d vs grid_sample then 1x1 conv."""
    from torchvision.ops import deform_conv2d

    from mtbench.models.demt import sample_per_channel

    b, c, h, w = shape
    x = torch.randn(b, c, h, w, device=device, requires_grad=True)
    offset = (torch.randn(b, 2 * c, h, w, device=device) * 2).requires_grad_()
    weight = torch.randn(c, c, 1, 1, device=device, requires_grad=True)
    paths = {"deform_conv2d": lambda: deform_conv2d(x, offset, weight),
             "grid_sample": lambda: torch.nn.functional.conv2d(sample_per_channel(x, offset), weight)}
    result = {}
    for name, op in paths.items():
        times = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            op().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        result[f"{name}_s"] = round(statistics.median(times[1:]), 5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nyud")
    parser.add_argument("--backbone", default="swin_tiny")
    parser.add_argument("--height", type=int, default=428)
    parser.add_argument("--width", type=int, default=560)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 matmuls too (PyTorch enables TF32 for cuDNN convs but not for matmuls by default)")
    parser.add_argument("--option", action="append", default=[], help="DeMT option k=v (YAML value)")
    args = parser.parse_args()
    import yaml

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    tasks = DATASET_TASKS[args.dataset]
    size = (args.height, args.width)
    demt_options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    result: dict[str, object] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                 "threads": torch.get_num_threads(), "input": f"{args.height}x{args.width}",
                                 "batch": args.batch, "amp_bf16": args.amp, "tf32_matmul": args.tf32,
                                 "demt_options": demt_options}
    for name, options in (("shared_encoder", {}), ("demt", demt_options)):
        torch.manual_seed(0)
        model = build_model(name, tasks=tasks, dataset=args.dataset, backbone=args.backbone, img_size=size, **options)
        cost = measure_cost(model, size)
        times = time_steps(model, args.dataset, tasks, args, device)
        result[name] = {"gflops": round(cost.gflops, 2), "params_m": round(cost.params_m, 3),
                        "step_s": round(statistics.median(times), 4), "all_s": [round(t, 4) for t in times]}
        del model
    stride = 4  # DeMT works at the backbone's finest map
    result["operator_fwd_bwd"] = time_sampling_paths(
        device, (args.batch, demt_options.get("mixer_width", 256), args.height // stride, args.width // stride),
        args.repeats)
    demt, shared = result["demt"], result["shared_encoder"]
    result["flops_ratio"] = round(demt["gflops"] / shared["gflops"], 3)
    result["step_ratio"] = round(demt["step_s"] / shared["step_s"], 3)
    result["within_flops_ratio"] = result["step_ratio"] <= result["flops_ratio"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
