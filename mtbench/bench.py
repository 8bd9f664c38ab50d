"""Training-step throughput of a model at its published setting: step time, TFLOP/s, MFU, memory, images/s.

`mtbench bench MODEL --dataset D` times forward + losses + backward + optimizer step (the step of
`mtbench.engine.trainer.fit`) on random inputs and labels, median of `repeats` steps after `warmup` ones,
each step synchronised on CUDA. FLOPs come from fvcore (`mtbench.profiling`, batch 1, one multiply-add
counted once, eval-mode forward); the training FLOPs of a step are

    2 * MACs * batch * 3

(2 flops per multiply-add; x3 for forward + backward: the backward computes gradients of the inputs and
of the weights, each about one forward), the convention behind MFU (PaLM, appendix B). MFU is that rate
over the device's dense peak (`PEAK_TFLOPS`, or `--peak`). Also `compile_model`, the torch.compile path
that `train.compile` and `mtbench bench --compile` share.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mtbench.errors import MtbenchError

if TYPE_CHECKING:
    from mtbench.balancing import Balancer
    from mtbench.profiling import ModelCost

CONVENTION = ("training FLOPs per step = 2 * MACs * batch * 3: fvcore multiply-adds of one image (batch 1, "
              "eval-mode forward) x 2 flops each x batch x 3 for forward + backward")


@dataclass(frozen=True)
class Setting:
    """What `mtbench bench` builds and feeds by default: a release recipe's model and input."""

    backbone: str
    size: tuple[int, int]  # input height, width: the recipe's crop / pad_to / resize
    batch: int  # train.batch_size: the global batch (the release spreads it over GPUs; here on one device)
    optimizer: str  # train.optimizer.name (its step is part of the timed step)
    source: str
    options: Mapping[str, object] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None  # dataset.tasks; None = all of the dataset's tasks


# (model, dataset) -> the recipe in baselines/ (which the installed package cannot read). Backbone timm tags
# (`.ms_in1k`, `.augreg_in21k_ft_in1k`) are dropped: bench builds from random init, never downloads weights.
PUBLISHED: dict[tuple[str, str], Setting] = {
    ("demt", "nyud"): Setting("swin_tiny", (425, 560), 8, "sgd", "baselines/demt_nyud.yaml",
                              {"backbone_drop_path_rate": 0.1}),
    ("demt", "pascal_context"): Setting("swin_tiny", (512, 512), 8, "sgd", "baselines/demt_pascal.yaml",
                                        {"two_logit_heads": True, "backbone_drop_path_rate": 0.1}),
    ("invpt", "nyud"): Setting("vit_large_patch16", (448, 576), 6, "adam", "baselines/invpt_nyud.yaml",
                               {"preliminary_width": 512, "decoder_width": 576, "num_heads": 2,
                                "backbone_drop_path_rate": 0.15}),
    ("invpt", "pascal_context"): Setting("vit_large_patch16", (512, 512), 6, "adam", "baselines/invpt_pascal.yaml",
                                         {"preliminary_width": 512, "decoder_width": 576, "num_heads": 2,
                                          "backbone_drop_path_rate": 0.15, "two_logit_heads": True}),
    ("mtinet", "nyud"): Setting("hrnet_w18_small", (480, 640), 8, "adam", "baselines/mtinet_nyud.yaml",
                                {"backbone_bn_momentum": 0.01}, ("semseg", "depth")),
    ("mtinet", "pascal_context"): Setting("hrnet_w18_small", (512, 512), 8, "adam", "baselines/mtinet_pascal.yaml",
                                          {"backbone_bn_momentum": 0.01}),
    ("padnet", "nyud"): Setting("hrnet_w18_small", (480, 640), 8, "adam", "baselines/padnet_nyud.yaml",
                                {"backbone_bn_momentum": 0.01}, ("semseg", "depth")),
    ("padnet", "pascal_context"): Setting("hrnet_w18_small", (512, 512), 8, "adam", "baselines/padnet_pascal.yaml",
                                          {"backbone_bn_momentum": 0.01}),
}
# Models without a recipe of their own (shared_encoder, single_task): the DeMT recipe's Swin-T setting, as
# its single_task reference variant trains them.
DEFAULT_SETTING: dict[str, Setting] = {
    "nyud": Setting("swin_tiny", (425, 560), 8, "sgd", "default: baselines/demt_nyud.yaml (DeMT's Swin-T setting)",
                    {"backbone_drop_path_rate": 0.1}),
    "pascal_context": Setting("swin_tiny", (512, 512), 8, "sgd",
                              "default: baselines/demt_pascal.yaml (DeMT's Swin-T setting)",
                              {"two_logit_heads": True, "backbone_drop_path_rate": 0.1}),
}

# Dense peak TFLOP/s (NVIDIA datasheets; their tensor-core figures "with sparsity" halved), keyed by a
# substring of torch.cuda.get_device_name(): the first entry whose key occurs in the name wins, so specific
# names come before their namesakes ("A100" before "A10", "L40" before "L4"). None: a name mtbench knows it
# has no sure peak for (so it is not taken for its namesake); pass --peak. "fp32" is the TF32 tensor-core
# peak where the GPU has one: fp32 convolutions run in TF32 by default (torch.backends.cudnn.allow_tf32),
# fp32 matmuls only with torch.backends.cuda.matmul.allow_tf32 (off by default).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float] | None], ...] = (
    ("RTX", None),  # workstation cards ("RTX A1000" contains "A100")
    ("H100 PCIe", {"bf16": 756.5, "fp32": 378.0}),  # BF16 1,513, TF32 756 (sparse)
    ("H100 NVL", None),
    ("H200 NVL", None),
    ("GH200", {"bf16": 989.4, "fp32": 494.7}),  # the H100 SXM compute
    ("H100", {"bf16": 989.4, "fp32": 494.7}),  # SXM5 ("NVIDIA H100 80GB HBM3"): BF16 1,979, TF32 989 (sparse)
    ("H200", {"bf16": 989.4, "fp32": 494.7}),  # SXM: as H100 SXM
    ("A100", {"bf16": 312.0, "fp32": 156.0}),  # PCIe and SXM, 40 and 80 GB
    ("A10G", None),  # AWS's variant: no NVIDIA datasheet
    ("A10", {"bf16": 125.0, "fp32": 62.5}),
    ("L40", None),  # L40, L40S
    ("L4", {"bf16": 121.0, "fp32": 60.0}),  # BF16 242, TF32 120 (sparse)
    ("V100-SXM2", {"fp32": 15.7}),  # no bf16, no TF32: the plain FP32 peak
    ("V100-PCIE", {"fp32": 14.0}),
)


def published_setting(model: str, dataset: str) -> Setting:
    """The release recipe's setting of `model` on `dataset`, or the stated default for models without one."""
    from mtbench.models import MODELS

    MODELS.get(model)  # an unknown model is a user error with a did-you-mean
    if dataset not in DEFAULT_SETTING:
        raise MtbenchError(f"unknown dataset {dataset!r} for bench; valid: {', '.join(DEFAULT_SETTING)}.")
    return PUBLISHED.get((model, dataset), DEFAULT_SETTING[dataset])


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """Parse 'HxW' (e.g. 448x576) into (H, W); anything else is a user error."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise MtbenchError(f"{option} {text!r} must look like HEIGHTxWIDTH, e.g. 448x576.")
    return int(parts[0]), int(parts[1])


def device_peak(device_name: str, dtype: str) -> tuple[float | None, str]:
    """(dense peak TFLOP/s of `device_name` at `dtype` 'bf16' or 'fp32', where it comes from or why none)."""
    for key, peaks in PEAK_TFLOPS:
        if key in device_name:
            if peaks is None or dtype not in peaks:
                break
            return peaks[dtype], f"{key} {dtype} dense peak (mtbench.bench.PEAK_TFLOPS)"
    return None, f"no {dtype} peak for {device_name!r} in mtbench.bench.PEAK_TFLOPS; pass --peak TFLOPS"


def train_flops_per_step(macs: float, batch: int) -> float:
    """Training FLOPs of one step: 2 flops per multiply-add x batch x 3 (forward 1 + backward 2)."""
    return 2.0 * macs * batch * 3.0


def flop_rate(macs: float, batch: int, seconds: float, peak_tflops: float | None) -> tuple[float, float | None]:
    """(achieved TFLOP/s, MFU as a fraction or None without a peak) of a step of `seconds` on `batch` images.

    `macs` are fvcore's multiply-adds of one image's forward; e.g. 1e9 MACs, batch 8, 0.05 s:
    6 * 1e9 * 8 / 0.05 = 0.96 TFLOP/s, MFU 0.96 / 989.4 = 0.097% of an H100's bf16 peak.
    """
    tflops = train_flops_per_step(macs, batch) / seconds / 1e12
    return tflops, (tflops / peak_tflops if peak_tflops else None)


def compile_model(model: nn.Module, *, name: str, backend: str | Callable[..., Any] = "inductor") -> nn.Module:
    """torch.compile `model` (train.compile, `mtbench bench --compile`); a failure is an MtbenchError naming it.

    Compilation is lazy: most failures (an op dynamo cannot trace, the backend's compiler failing) come at the
    first call, so the returned module's forward turns them into MtbenchError too. It shares `model`'s
    parameters; checkpoint and evaluate `model` itself (the compiled module's keys carry an `_orig_mod.` prefix).
    """
    from torch._dynamo.exc import TorchDynamoException

    def failed(err: BaseException) -> MtbenchError:
        # Dynamo's first paragraph says what failed; the rest is advice on its own logging.
        why = " ".join(str(err).strip().split("\n\n")[0].split())[:500] or type(err).__name__
        return MtbenchError(f"torch.compile failed for model {name!r}: {why}. Train it uncompiled "
                            "(train.compile: false, or bench without --compile).")

    try:
        compiled = torch.compile(model, backend=backend)
    except Exception as err:  # e.g. a Python version that dynamo does not support yet
        raise failed(err) from err
    forward = compiled.forward

    def checked_forward(*args: Any, **kwargs: Any) -> Any:
        try:
            return forward(*args, **kwargs)
        except TorchDynamoException as err:
            raise failed(err) from err

    compiled.forward = checked_forward
    return compiled


def random_batch(dataset: str, tasks: tuple[str, ...], batch: int, size: tuple[int, int],
                 device: torch.device) -> dict[str, torch.Tensor]:
    """An image batch and labels with each task's layout (TaskSpec); the values only need to be legal."""
    from mtbench.tasks import get_task

    h, w = size
    out = {"image": torch.randn(batch, 3, h, w)}
    for t in tasks:
        spec = get_task(t)
        if spec.is_class_map:  # binary tasks (sal) have one output channel and labels {0, 1}
            out[t] = torch.randint(0, max(2, spec.num_outputs(dataset)), (batch, h, w))
        elif spec.unit_vectors:
            out[t] = nn.functional.normalize(torch.randn(batch, spec.target_channels, h, w), dim=1)
        else:  # depth > 0 is valid; edge takes soft targets
            out[t] = torch.rand(batch, spec.target_channels, h, w) + (0.5 if spec.scales_with_zoom else 0.0)
    return {k: v.to(device) for k, v in out.items()}


def _peak_rss_mib() -> tuple[float, float] | None:
    """(peak, current) resident set of this process in MiB from /proc (Linux), or None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    values = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status.splitlines()
              if line.startswith(("VmHWM:", "VmRSS:"))}
    return (values["VmHWM"], values["VmRSS"]) if len(values) == 2 else None


def _reset_peak_rss() -> bool:
    """Set the peak resident set to the current one (Linux clear_refs 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class PreparedStep:
    """A model at a setting, ready to train on one fixed random batch: `step()` is `train_step` (no sync)."""

    balancer: Balancer
    cost: ModelCost  # fvcore's count of one image
    step: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]]


def prepare_step(model_name: str, dataset: str, *, tasks: tuple[str, ...], backbone: str, size: tuple[int, int],
                 batch: int, options: dict[str, Any], optimizer_name: str, amp: bool, compiled: bool,
                 device: torch.device) -> PreparedStep:
    """Build `model_name` (random init, seed 0), count its FLOPs, and return its training step on a random batch:
    `mtbench.engine.trainer.fit`'s step without logging, schedule and checks (benchmarks/bench_step_sync.py
    adds those back)."""
    from mtbench.balancing import build_balancer
    from mtbench.config.schema import TrainConfig
    from mtbench.engine.trainer import build_optimizer, train_step
    from mtbench.losses import build_task_loss
    from mtbench.models import build_model
    from mtbench.profiling import measure_cost

    torch.manual_seed(0)
    model = build_model(model_name, tasks=tasks, dataset=dataset, backbone=backbone, pretrained=False,
                        img_size=size, **options).to(device)
    cost = measure_cost(model, size, tasks=tasks)  # before timing: its trace is not part of the peak memory
    balancer = build_balancer("fixed", tasks=tasks, weights=None).to(device)
    balancer.attach(model)
    task_losses = {t: build_task_loss(t, dataset=dataset) for t in tasks}
    optimizer = build_optimizer([model, balancer], TrainConfig(optimizer={"name": optimizer_name}))
    train_model = compile_model(model, name=model_name) if compiled else model
    train_model.train()
    data = random_batch(dataset, tasks, batch, size, device)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        return train_step(train_model, balancer, task_losses, data, optimizer, device=device, amp=amp)

    return PreparedStep(balancer=balancer, cost=cost, step=step)


def run_bench(model_name: str, dataset: str, *, batch: int | None = None, amp: str | None = None,
              compiled: bool = False, peak: float | None = None, backbone: str | None = None,
              size: tuple[int, int] | None = None, repeats: int = 10, warmup: int = 3,
              device: torch.device | None = None) -> dict[str, Any]:
    """Time training steps of `model_name` at its published setting (flags override it); a JSON-ready dict.

    Keys: model, dataset, tasks, setting_source, overridden, backbone, options, input_size, batch, optimizer,
    amp, compiled, device, device_name, warmup, repeats, step_s (median), step_s_all, images_per_s,
    gmacs (fvcore, one image), train_tflop_per_step, convention, tflops, peak_tflops, peak_source, mfu
    (fraction, or None with mfu_note saying why), peak_memory_mib, memory_basis, uncounted_ops.
    """
    from mtbench.tasks import resolve_tasks

    setting = published_setting(model_name, dataset)
    amp = amp or "fp32"
    if amp not in ("bf16", "fp32"):
        raise MtbenchError(f"--amp {amp!r}: use bf16 (autocast, as train.amp) or fp32.")
    if repeats < 1 or warmup < 0 or (batch is not None and batch < 1):
        raise MtbenchError("--repeats and --batch must be at least 1, --warmup at least 0.")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if amp == "bf16" and device.type != "cuda":
        raise MtbenchError(f"--amp bf16 needs a CUDA device (mtbench trains with bf16 autocast on CUDA only; "
                           f"train.amp is ignored on {device.type}); bench without --amp here.")
    if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise MtbenchError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp32.")
    overridden = [k for k, v in (("backbone", backbone), ("size", size), ("batch", batch)) if v is not None]
    backbone, size, batch = backbone or setting.backbone, size or setting.size, batch or setting.batch
    tasks = resolve_tasks(dataset, list(setting.tasks) if setting.tasks else None)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)")

    prepared = prepare_step(model_name, dataset, tasks=tasks, backbone=backbone, size=size, batch=batch,
                            options=dict(setting.options), optimizer_name=setting.optimizer, amp=amp == "bf16",
                            compiled=compiled, device=device)
    cost, step = prepared.cost, prepared.step

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):  # first-call allocations, optimizer state, cuDNN autotuning, compilation
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _peak_rss_mib() if device.type == "cpu" and _reset_peak_rss() else None
    seconds = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        step()
        synchronize()
        seconds.append(time.perf_counter() - started)
    if device.type == "cuda":
        memory, basis = torch.cuda.max_memory_allocated(device) / 2**20, (
            "torch.cuda.max_memory_allocated over the timed steps (weights, gradients, optimizer state, "
            "activations)")
    elif rss_before is not None and (rss_after := _peak_rss_mib()) is not None:
        memory, basis = rss_after[0] - rss_before[1], "peak resident-set growth of the process over the timed steps"
    else:
        memory, basis = None, "n/a: no CUDA device and no /proc/self/clear_refs to measure peak RSS"

    median = statistics.median(seconds)
    macs = cost.gflops * 1e9
    if peak is not None:
        peak_tflops, peak_source = peak, "--peak"
    elif device.type == "cuda":
        peak_tflops, peak_source = device_peak(device_name, amp)
    else:
        peak_tflops, peak_source = None, "no peak table for CPUs; pass --peak TFLOPS"
    tflops, mfu = flop_rate(macs, batch, median, peak_tflops)
    return {
        "model": model_name, "dataset": dataset, "tasks": list(tasks), "setting_source": setting.source,
        "overridden": overridden, "backbone": backbone, "options": dict(setting.options),
        "input_size": f"{size[0]}x{size[1]}", "batch": batch, "optimizer": setting.optimizer, "amp": amp,
        "compiled": compiled, "device": str(device), "device_name": device_name, "warmup": warmup,
        "repeats": repeats, "step_s": median, "step_s_all": seconds, "images_per_s": batch / median,
        "gmacs": cost.gflops, "train_tflop_per_step": train_flops_per_step(macs, batch) / 1e12,
        "convention": CONVENTION, "tflops": tflops, "peak_tflops": peak_tflops, "peak_source": peak_source,
        "mfu": mfu, "mfu_note": "" if mfu is not None else f"unknown: {peak_source}",
        "peak_memory_mib": memory, "memory_basis": basis,
        "uncounted_ops": {op: cost.unsupported_ops[op] for op in cost.uncounted_ops},
    }
