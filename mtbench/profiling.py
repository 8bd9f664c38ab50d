"""Model cost: parameter counts and fvcore GFLOPs (the only module that imports fvcore).

fvcore counts one fused multiply-add as one flop, which is the convention behind the GFLOPs that
DeMT, InvPT and MTI-Net print; the input size is always reported with the number.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore scripts helpers with torch.jit at import, which PyTorch >= 2.9 marks deprecated.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis


@dataclass
class ModelCost:
    params_m: float
    gflops: float
    input_size: tuple[int, int]
    unsupported_ops: dict[str, int] = field(default_factory=dict)

    def as_params(self) -> dict[str, object]:
        """Flat entries for run tracking."""
        return {"cost/params_M": round(self.params_m, 4), "cost/gflops_fvcore": round(self.gflops, 4),
                "cost/input_size": f"{self.input_size[0]}x{self.input_size[1]}",
                "cost/convention": "fvcore, 1 multiply-add = 1 flop, batch 1",
                "cost/unsupported_ops": ",".join(f"{k}:{v}" for k, v in sorted(self.unsupported_ops.items()))}


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of `model`."""
    return sum(p.numel() for p in model.parameters())


def measure_cost(model: nn.Module, input_size: tuple[int, int]) -> ModelCost:
    """Count params and fvcore GFLOPs for one (1, 3, H, W) input on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        image = torch.zeros(1, 3, *input_size, device=device)
        analysis = FlopCountAnalysis(model, image)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            # fvcore traces with torch.jit, which PyTorch >= 2.9 marks deprecated.
            warnings.simplefilter("ignore", FutureWarning)
            total = analysis.total()
        unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return ModelCost(params_m=count_params(model) / 1e6, gflops=total / 1e9, input_size=input_size,
                     unsupported_ops=unsupported)
