"""Meter update speed: mtbench's meters against the field's reference meters, same inputs, same process.

Run: `python benchmarks/bench_meters.py --batch 4 --repeats 15` (CPU by default; `--device cuda` works).
For every meter variant it times one `update` of ours and one of the meter it reproduces, re-implemented
below as the reference code does it (prediction post-processing included where the reference applies it
before its meter, e.g. InvPT's `get_output` argmax), on the same 480x640 batch. Ours and the reference
alternate within each repeat, so load on the machine hits both; the table gives medians and the ratio
reference / ours (> 1 means ours is faster), plus each side's metric on that batch as a cross-check.
A second table times the ways to take the argmax over channels, which dominates semseg, and two
finiteness checks. On a shared machine, `--threads 1` gives the steadiest figures.
(Outside the test suite: speed is measured, not asserted.)

The reference re-implementations follow, op for op:
- InvPT SemsegMeter / HumanPartsMeter (prismformore/Multi-Task-Transformer: InvPT/evaluation/eval_semseg.py,
  after InvPT/utils/utils.py::get_output): a loop over classes with boolean masks and `.item()`.
- LibMTL SegMetric (median-research-group/LibMTL: examples/nyu/utils.py): softmax, argmax, one bincount.
- InvPT DepthMeter (InvPT/evaluation/eval_depth.py), MTI-Net's first DepthMeter (per image,
  SimonVandenhende/Multi-Task-Learning-PyTorch@d16e10be: evaluation/eval_depth.py), MTAN depth_error
  (lorenmt/mtan: im2im_pred/utils.py).
- ATRC MeanErrorInAngle (brdav/atrc: src/data/metrics.py) for float normals; MTI-Net's offline
  eval_normals (evaluation/eval_normals.py) on the uint8 PNG array `save_model_predictions` writes (the
  PNG encode/decode itself is left out).
- ATRC MaxF (src/data/metrics.py), InvPT SaliencyMeter (InvPT/evaluation/eval_sal.py after get_output),
  MTI-Net SaliencyMeter with jaccard / precision_recall (evaluation/eval_sal.py, evaluation/jaccard.py).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mtbench.metrics import build_meter
from mtbench.metrics.segmentation import argmax_channels

H, W = 480, 640
SEMSEG_CLASSES = 40  # NYUD
PARTS_CLASSES = 7


# ---- reference meters, re-implemented as their code does it ------------------------------------------------


class InvPTSemsegMeter:
    """InvPT's SemsegMeter fed by its get_output (argmax over a channels-last view)."""

    def __init__(self, n_classes: int) -> None:
        self.n = n_classes
        self.tp, self.fp, self.fn = [0] * self.n, [0] * self.n, [0] * self.n

    def update(self, output: torch.Tensor, gt: torch.Tensor) -> None:
        _, pred = torch.max(output.permute(0, 2, 3, 1), dim=3)
        pred, gt = pred.squeeze(), gt.squeeze()
        valid = gt != 255
        for i in range(self.n):
            tmp_gt, tmp_pred = gt == i, pred == i
            self.tp[i] += torch.sum(tmp_gt & tmp_pred & valid).item()
            self.fp[i] += torch.sum(~tmp_gt & tmp_pred & valid).item()
            self.fn[i] += torch.sum(tmp_gt & ~tmp_pred & valid).item()

    def score(self) -> float:
        jac = [self.tp[i] / max(self.tp[i] + self.fp[i] + self.fn[i], 1e-8) for i in range(self.n)]
        return 100 * float(np.mean(jac))


class LibMTLSegMetric:
    def __init__(self, n_classes: int) -> None:
        self.n = n_classes
        self.record = torch.zeros((self.n, self.n), dtype=torch.int64)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        self.record = self.record.to(pred.device)
        pred = pred.softmax(1).argmax(1).flatten()
        gt = gt.long().flatten()
        k = (gt >= 0) & (gt < self.n)
        inds = self.n * gt[k].to(torch.int64) + pred[k]
        self.record += torch.bincount(inds, minlength=self.n**2).reshape(self.n, self.n)

    def score(self) -> float:
        h = self.record.float()
        iu = torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h))
        return 100 * torch.mean(iu).item()


class InvPTDepthMeter:
    """InvPT's DepthMeter after get_output (clamp_ >= 0); its ignore value is 255 (AddIgnoreRegions)."""

    def __init__(self) -> None:
        self.total_rmses = self.total_log_rmses = self.n_valid = self.abs_rel = self.sq_rel = 0.0

    def update(self, output: torch.Tensor, gt: torch.Tensor) -> None:
        output.clamp_(min=0.0)
        pred, gt = output.permute(0, 2, 3, 1).squeeze(), gt.squeeze()
        mask = (gt != 255).bool()
        self.n_valid += mask.float().sum().item()
        gt[gt <= 0] = 1e-9
        pred[pred <= 0] = 1e-9
        self.total_log_rmses += torch.pow(torch.log(gt[mask]) - torch.log(pred[mask]), 2).sum().item()
        self.total_rmses += torch.pow(gt[mask] - pred[mask], 2).sum().item()
        self.abs_rel += (torch.abs(gt[mask] - pred[mask]) / gt[mask]).sum().item()
        self.sq_rel += (((gt[mask] - pred[mask]) ** 2) / gt[mask]).sum().item()

    def score(self) -> float:
        return math.sqrt(self.total_rmses / self.n_valid)


class MTINetV1DepthMeter:
    """MTI-Net's first DepthMeter (per image); invalid pixels are 255 there too."""

    def __init__(self) -> None:
        self.rmses: list[float] = []
        self.log_rmses: list[float] = []

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        pred, gt = pred.squeeze(), gt.squeeze()
        mask = (gt != 255).float()
        n_valid = mask.sum(dim=(1, 2))
        pred = torch.clamp(pred, min=1e-9)
        log_rmse_tmp = torch.mul(mask, torch.pow(torch.log(gt) - torch.log(pred), 2))
        self.log_rmses.extend(torch.sqrt(torch.div(torch.sum(log_rmse_tmp, dim=(1, 2)), n_valid)).tolist())
        rmse_tmp = torch.mul(mask, torch.pow(gt - pred, 2))
        self.rmses.extend(torch.sqrt(torch.div(torch.sum(rmse_tmp, dim=(1, 2)), n_valid)).tolist())

    def score(self) -> float:
        return float(np.mean(self.rmses))


class MTANDepth:
    """MTAN's depth_error per batch, averaged over batches (its `avg_cost += cost / test_batch`)."""

    def __init__(self) -> None:
        self.costs: list[tuple[float, float]] = []

    def update(self, x_pred: torch.Tensor, x_output: torch.Tensor) -> None:
        binary_mask = (torch.sum(x_output, dim=1) != 0).unsqueeze(1).to(x_pred.device)
        x_pred_true = x_pred.masked_select(binary_mask)
        x_output_true = x_output.masked_select(binary_mask)
        abs_err = torch.abs(x_pred_true - x_output_true)
        rel_err = torch.abs(x_pred_true - x_output_true) / x_output_true
        n = torch.nonzero(binary_mask, as_tuple=False).size(0)
        self.costs.append(((torch.sum(abs_err) / n).item(), (torch.sum(rel_err) / n).item()))

    def score(self) -> float:
        return float(np.mean([c[0] for c in self.costs]))


def normalize_tensor(input_tensor: torch.Tensor, dim: int) -> torch.Tensor:
    norm = torch.norm(input_tensor, p="fro", dim=dim, keepdim=True)
    zero_mask = norm == 0
    norm[zero_mask] = 1
    out = input_tensor.div(norm)
    out[zero_mask.expand_as(out)] = 0
    return out


class ATRCMeanErrorInAngle:
    """ATRC's MeanErrorInAngle; its ignore value is 255 in every channel."""

    def __init__(self) -> None:
        self.sum_deg_diff = torch.tensor(0.0)
        self.total = torch.tensor(0)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        valid_mask = (target != 255).all(dim=1)
        preds = normalize_tensor(preds, dim=1)
        target = normalize_tensor(target, dim=1)
        deg_diff = torch.rad2deg(2 * torch.atan2(torch.norm(preds - target, dim=1), torch.norm(preds + target, dim=1)))
        deg_diff = torch.masked_select(deg_diff, valid_mask)
        self.sum_deg_diff = self.sum_deg_diff.to(deg_diff.device) + torch.sum(deg_diff)
        self.total = self.total.to(deg_diff.device) + deg_diff.numel()

    def score(self) -> float:
        return float(self.sum_deg_diff / self.total)


class MTINetOfflineNormals:
    """MTI-Net's save_model_predictions (uint8 of get_output) then eval_normals per image, in numpy."""

    def __init__(self) -> None:
        self.deg_diff: list[float] = []

    def update(self, output: torch.Tensor, label: torch.Tensor) -> None:
        out = ((F.normalize(output.permute(0, 2, 3, 1), p=2, dim=3) + 1.0) * 255 / 2.0).cpu().numpy()
        labels = label.permute(0, 2, 3, 1).cpu().numpy()
        for png, lab in zip(out.astype(np.uint8), labels, strict=True):
            pred = 2.0 * png.astype(np.float32) / 255.0 - 1
            pred = pred / (np.linalg.norm(pred, ord=2, axis=2)[..., np.newaxis] + 1e-12)
            valid_mask = np.linalg.norm(lab, ord=2, axis=2) != 0
            pred[np.invert(valid_mask), :] = 0.0
            lab = lab.copy()
            lab[np.invert(valid_mask), :] = 0.0
            lab = lab / (np.linalg.norm(lab, ord=2, axis=2)[..., np.newaxis] + 1e-12)
            deg = np.rad2deg(np.arccos(np.clip(np.sum(pred * lab, axis=2), a_min=-1, a_max=1)))
            self.deg_diff.extend(deg[valid_mask])

    def score(self) -> float:
        return float(np.mean(np.array(self.deg_diff)))


class ATRCMaxF:
    """ATRC's MaxF (19 thresholds, a masked_select per threshold)."""

    def __init__(self) -> None:
        self.thresholds = torch.arange(0.05, 1, 0.05)
        self.tp = torch.zeros(len(self.thresholds))
        self.pp = torch.zeros(len(self.thresholds))
        self.ap = torch.zeros(len(self.thresholds))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = F.softmax(preds, dim=1)[:, 1, :, :]
        valid_mask = target != 255
        for idx, thresh in enumerate(self.thresholds):
            f_preds = torch.masked_select((preds >= thresh).long(), valid_mask)
            f_target = torch.masked_select(target.long(), valid_mask)
            self.tp[idx] += torch.sum(f_preds * f_target)
            self.pp[idx] += torch.sum(f_preds)
            self.ap[idx] += torch.sum(f_target)

    def score(self) -> float:
        p, r = self.tp / self.pp, self.tp / self.ap
        f = 1.3 * p * r / (0.3 * p + r)
        f[f != f] = 0
        return 100 * f.max().item()


class InvPTSaliencyMeter(ATRCMaxF):
    """InvPT's SaliencyMeter after get_output (softmax[..., 1] · 255 on a channels-last view)."""

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        preds = F.softmax(output.permute(0, 2, 3, 1), dim=3)[:, :, :, 1] * 255
        preds = torch.sigmoid(preds.float() / 255.0)
        valid_mask = target != 255
        for idx, thresh in enumerate(self.thresholds):
            f_preds = torch.masked_select((preds >= thresh).long(), valid_mask)
            f_target = torch.masked_select(target.long(), valid_mask)
            self.tp[idx] += torch.sum(f_preds * f_target).cpu()
            self.pp[idx] += torch.sum(f_preds).cpu()
            self.ap[idx] += torch.sum(f_target).cpu()


def _jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    gt, pred = gt.astype(bool), pred.astype(bool)
    if np.isclose(np.sum(gt), 0) and np.isclose(np.sum(pred), 0):
        return 1.0
    return float(np.sum(gt & pred) / np.sum(gt | pred, dtype=np.float32))


def _precision_recall(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    gt, pred = gt.astype(bool), pred.astype(bool)
    tp, fn, fp = (pred & gt).sum(), (~pred & gt).sum(), (pred & ~gt).sum()
    return tp / (tp + fp + 1e-12), tp / (tp + fn + 1e-12)


class MTINetSaliencyMeter:
    """MTI-Net's SaliencyMeter after its get_output (255 · sigmoid of a 1-channel head)."""

    def __init__(self) -> None:
        self.mask_thres = np.linspace(0.2, 0.9, 15)
        self.prec: list[np.ndarray] = []
        self.rec: list[np.ndarray] = []

    def update(self, output: torch.Tensor, gt: torch.Tensor) -> None:
        pred = torch.squeeze(255 * 1 / (1 + torch.exp(-output.permute(0, 2, 3, 1))))
        b = pred.size(0)
        pred = pred.float().squeeze() / 255.0
        gt_np = gt.squeeze().cpu().numpy()
        jaccards, prec, rec = (np.zeros((b, len(self.mask_thres))) for _ in range(3))
        for j, thres in enumerate(self.mask_thres):
            mask_eval = (pred > thres).cpu().numpy()
            for i in range(b):
                jaccards[i, j] = _jaccard(gt_np[i], mask_eval[i])
                prec[i, j], rec[i, j] = _precision_recall(gt_np[i], mask_eval[i])
        self.prec.append(prec)
        self.rec.append(rec)

    def score(self) -> float:
        mp, mr = np.concatenate(self.prec).mean(0), np.concatenate(self.rec).mean(0)
        return 100 * float(np.max(2 * mp * mr / (mp + mr + 1e-12)))


# ---- inputs and timing -------------------------------------------------------------------------------------


def make_inputs(batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random predictions and targets at 480x640, with a 10-pixel ignored border (centred padding)."""
    g = torch.Generator().manual_seed(seed)
    border = torch.zeros(batch, H, W, dtype=torch.bool)
    border[:, :10], border[:, -10:], border[:, :, :10], border[:, :, -10:] = True, True, True, True
    semseg_t = torch.randint(0, SEMSEG_CLASSES, (batch, H, W), generator=g).masked_fill(border, 255)
    parts_t = torch.randint(0, PARTS_CLASSES, (batch, H, W), generator=g).masked_fill(border, 255)
    depth_t = (torch.rand(batch, 1, H, W, generator=g) * 10).masked_fill(border.unsqueeze(1), 0.0)
    normals_t = F.normalize(torch.randn(batch, 3, H, W, generator=g), dim=1).masked_fill(border.unsqueeze(1), 0.0)
    sal_t = torch.randint(0, 2, (batch, H, W), generator=g).masked_fill(border, 255)
    x = {
        "semseg": torch.randn(batch, SEMSEG_CLASSES, H, W, generator=g), "semseg_t": semseg_t,
        "parts": torch.randn(batch, PARTS_CLASSES, H, W, generator=g), "parts_t": parts_t,
        "depth": torch.rand(batch, 1, H, W, generator=g) * 10, "depth_t": depth_t,
        "normals": torch.randn(batch, 3, H, W, generator=g), "normals_t": normals_t,
        "sal2": torch.randn(batch, 2, H, W, generator=g), "sal1": torch.randn(batch, 1, H, W, generator=g),
        "sal_t": sal_t,
        # MTI-Net's jaccard would count 255 as foreground (no void mask); its resized inputs hold none.
        "sal_t_full": torch.randint(0, 2, (batch, H, W), generator=g),
    }
    # The ATRC lineage marks ignored depth and normals with 255 (AddIgnoreRegions); mtbench uses 0.
    x["depth_t255"] = torch.where(depth_t > 0, depth_t, 255.0)
    x["normals_t255"] = torch.where(normals_t.norm(dim=1, keepdim=True) > 0, normals_t, 255.0)
    return {k: v.to(device) for k, v in x.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(ours: Callable[[], None], ref: Callable[[], None], repeats: int, device: torch.device,
              ) -> tuple[float, float]:
    """Return the median seconds of `ours` and `ref`, alternating them within each repeat (1 warm-up)."""
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats + 1):
        for k, fn in enumerate((ours, ref)):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r:
                times[k].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_meters(x: dict[str, torch.Tensor], repeats: int, device: torch.device) -> list[tuple]:
    """Return (task, variant, reference, ours_ms, ref_ms, ours_metric, ref_metric) rows."""
    # (task, variant, dataset, our inputs, reference name, reference factory, reference inputs, metric key)
    cases = [
        ("semseg", "reference", "nyud", ("semseg", "semseg_t"), "InvPT SemsegMeter",
         lambda: InvPTSemsegMeter(SEMSEG_CLASSES), ("semseg", "semseg_t"), "semseg/mIoU"),
        ("semseg", "libmtl", "nyud", ("semseg", "semseg_t"), "LibMTL SegMetric",
         lambda: LibMTLSegMetric(SEMSEG_CLASSES), ("semseg", "semseg_t"), "semseg/mIoU-libmtl"),
        ("human_parts", "reference", "pascal_context", ("parts", "parts_t"), "InvPT HumanPartsMeter",
         lambda: InvPTSemsegMeter(PARTS_CLASSES), ("parts", "parts_t"), "human_parts/mIoU"),
        ("depth", "reference", "nyud", ("depth", "depth_t"), "InvPT DepthMeter",
         InvPTDepthMeter, ("depth", "depth_t255"), "depth/rmse"),
        ("depth", "astmt", "nyud", ("depth", "depth_t"), "MTI-Net v1 DepthMeter",
         MTINetV1DepthMeter, ("depth", "depth_t255"), "depth/rmse-astmt"),
        ("depth", "mtan", "nyud", ("depth", "depth_t"), "MTAN depth_error",
         MTANDepth, ("depth", "depth_t"), "depth/abs_err-mtan"),
        ("normals", "reference", "nyud", ("normals", "normals_t"), "ATRC MeanErrorInAngle",
         ATRCMeanErrorInAngle, ("normals", "normals_t255"), "normals/mean"),
        ("normals", "mtinet_png", "nyud", ("normals", "normals_t"), "MTI-Net eval_normals (PNG)",
         MTINetOfflineNormals, ("normals", "normals_t"), "normals/mean-mtinet_png"),
        ("sal", "atrc", "pascal_context", ("sal2", "sal_t"), "ATRC MaxF",
         ATRCMaxF, ("sal2", "sal_t"), "sal/maxF"),
        ("sal", "invpt", "pascal_context", ("sal2", "sal_t"), "InvPT SaliencyMeter",
         InvPTSaliencyMeter, ("sal2", "sal_t"), "sal/maxF-invpt"),
        ("sal", "mtinet", "pascal_context", ("sal1", "sal_t_full"), "MTI-Net SaliencyMeter",
         MTINetSaliencyMeter, ("sal1", "sal_t_full"), "sal/maxF-mtinet"),
    ]
    table = []
    for task, variant, dataset, (p, t), ref_name, ref_factory, (rp, rt), key in cases:
        ours = build_meter(task, dataset=dataset, variant=variant)
        ref = ref_factory()
        # The InvPT depth meter writes into its inputs, so it gets fresh copies (made outside the timing).
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []

        def run_ours(ours=ours, p=p, t=t) -> None:
            ours.update(x[p], x[t])

        def run_ref(ref=ref, rp=rp, rt=rt, copies=copies) -> None:
            a, b = copies.pop() if copies else (x[rp], x[rt])
            ref.update(a, b)

        if ref_factory is InvPTDepthMeter:
            copies.extend((x[rp].clone(), x[rt].clone()) for _ in range(repeats + 1))
        ours_s, ref_s = time_pair(run_ours, run_ref, repeats, device)
        table.append((task, variant, ref_name, 1e3 * ours_s, 1e3 * ref_s, ours.compute()[key], ref.score()))
    return table


def bench_argmax(x: torch.Tensor, repeats: int, device: torch.device) -> list[tuple[str, float]]:
    """Return (formulation, median ms) for the argmax over channels of a (B, C, H, W) tensor."""
    c = x.shape[1]
    weights = torch.arange(c - 1, -1, -1, dtype=torch.uint8, device=x.device).view(1, c, 1, 1)
    options = {
        "argmax_channels(x) (ours)": lambda: argmax_channels(x),
        "torch.max(x, 1)": lambda: torch.max(x, 1).indices,
        "x.argmax(1)": lambda: x.argmax(1),
        "torch.max(channels-last view, 3) (InvPT get_output)": lambda: torch.max(x.permute(0, 2, 3, 1), 3).indices,
        "channels-last copy, argmax(-1)": lambda: x.permute(0, 2, 3, 1).contiguous().argmax(-1),
        "channels_last memory format, argmax(1)": lambda: x.contiguous(memory_format=torch.channels_last).argmax(1),
        "amax(1), then first index equal to it, unblocked":
            lambda: (c - 1) - ((x == x.amax(1, keepdim=True)) * weights).amax(1),
        "(finite check) isfinite(x).all()": lambda: torch.isfinite(x).all(),
        "(finite check) isfinite(x.sum()) (ours)": lambda: torch.isfinite(x.sum()),
    }
    expected = torch.max(x, 1).indices
    for name, fn in options.items():
        if not name.startswith("(finite"):
            assert torch.equal(fn().long(), expected), name
    out = []
    for name, fn in options.items():
        times = []
        for r in range(repeats + 1):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r:
                times.append(time.perf_counter() - t)
        out.append((name, 1e3 * statistics.median(times)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="images per update (480x640 each)")
    parser.add_argument("--repeats", type=int, default=15, help="timed updates per meter (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = make_inputs(args.batch, device)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
          f"batch {args.batch} x {H}x{W}, median of {args.repeats} updates")
    header = f"{'task':<12} {'variant':<11} {'reference meter':<28} {'ours ms':>9} {'ref ms':>9} {'ref/ours':>9}"
    print(f"\n{header} {'ours metric':>12} {'ref metric':>11}")
    print("-" * (len(header) + 25))
    with torch.no_grad():
        for task, variant, ref_name, ours_ms, ref_ms, ours_m, ref_m in bench_meters(x, args.repeats, device):
            print(f"{task:<12} {variant:<11} {ref_name:<28} {ours_ms:9.1f} {ref_ms:9.1f} {ref_ms / ours_ms:8.1f}x"
                  f" {ours_m:12.4f} {ref_m:11.4f}")
        print(f"\nargmax over {SEMSEG_CLASSES} channels of a ({args.batch}, {SEMSEG_CLASSES}, {H}, {W}) float32 "
              f"tensor, and the finiteness check on it:")
        for name, ms in bench_argmax(x["semseg"], args.repeats, device):
            print(f"  {name:<55} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
