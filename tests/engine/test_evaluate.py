"""Tests of mtbench.engine.evaluate: predictions resized back to their labels' size as MTI-Net's release does,
labels of several sizes in one batch, and batches whose labels already have the prediction's size unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mtbench.engine.batching import collate, collate_eval
from mtbench.engine.evaluate import cv2_nearest_index, evaluate, linear_resize, resize_prediction
from mtbench.errors import MtbenchError
from mtbench.metrics import build_meter
from mtbench.tasks import IGNORE, TASKS

CPU = torch.device("cpu")
PASCAL = ("semseg", "human_parts", "sal", "normals", "edge")
# The meters of a PASCAL mtinet test (reference + the release's variants + SEISM odsF), and depth (NYUD).
METERS = (("semseg", None), ("human_parts", None), ("sal", None), ("sal", "mtinet"), ("normals", None),
          ("normals", "mtinet_png"), ("edge", None), ("edge", "odsf_nms"), ("depth", None))


class PixelHeads(nn.Module):
    """One 1x1 convolution per task: a deterministic prediction at the input's size."""

    def __init__(self, channels: dict[str, int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict({task: nn.Conv2d(3, c, 1) for task, c in channels.items()})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: head(image) * 3 for task, head in self.heads.items()}


def sample(h: int, w: int, seed: int, size: tuple[int, int] = (16, 16)) -> dict[str, object]:
    """A Sample whose image has the network's `size` and whose labels have the original (h, w)."""
    g = torch.Generator().manual_seed(seed)
    semseg = torch.randint(0, 21, (h, w), generator=g)
    semseg[0, :3] = IGNORE
    return {"image": torch.randn(3, *size, generator=g), "semseg": semseg,
            "human_parts": torch.randint(0, 7, (h, w), generator=g), "sal": torch.randint(0, 2, (h, w), generator=g),
            "normals": torch.randn(3, h, w, generator=g), "edge": (torch.rand(1, h, w, generator=g) < 0.2).float(),
            "depth": torch.rand(1, h, w, generator=g) * 5, "meta": {"id": str(seed), "size": (h, w)}}


def model_and_meters() -> tuple[nn.Module, dict[str, object]]:
    model = PixelHeads({t: TASKS[t].num_outputs("pascal_context") for t in PASCAL} | {"depth": 1})
    meters = {f"{t}:{v}": build_meter(t, dataset=None if t == "depth" else "pascal_context", variant=v)
              for t, v in METERS}
    return model, meters


def scores(samples: list[dict[str, object]], batch_size: int) -> dict[str, float]:
    model, meters = model_and_meters()
    loader = DataLoader(samples, batch_size=batch_size, collate_fn=collate_eval)
    return evaluate(model, loader, meters, device=CPU)


def test_batches_of_labels_of_several_sizes_score_as_one_image_at_a_time() -> None:
    # [A, B] is ragged (scored sample by sample), [A, A] one tensor resized as a batch.
    samples = [sample(12, 15, 0), sample(20, 9, 1), sample(12, 15, 2), sample(12, 15, 3)]
    batch = collate_eval(samples[:2])
    assert isinstance(batch["semseg"], list) and batch["image"].shape == (2, 3, 16, 16)
    assert torch.is_tensor(collate_eval(samples[2:])["semseg"])
    one, two = scores(samples, 1), scores(samples, 2)
    assert set(one) == set(two) and len(one) > 20
    assert two == pytest.approx(one, rel=1e-6)


def test_labels_of_the_prediction_size_are_scored_as_before() -> None:
    """NYUD (labels of the input's size): the meters see exactly the model's output and the stacked labels."""
    samples = [sample(16, 16, i) for i in range(4)]
    batch = collate_eval(samples)
    assert all(torch.equal(batch[k], collate(samples)[k]) for k in batch if k != "meta")
    model, meters = model_and_meters()
    got = evaluate(model, DataLoader(samples, batch_size=2, collate_fn=collate_eval), meters, device=CPU)
    model, direct = model_and_meters()
    for meter in direct.values():
        meter.reset()
        for chunk in (samples[:2], samples[2:]):
            batch = collate(chunk)
            with torch.no_grad():
                meter.update(model(batch["image"])[meter.task], batch[meter.task])
    assert got == {k: v for m in direct.values() for k, v in m.compute().items()}
    pred = torch.randn(2, 21, 16, 16)
    assert resize_prediction("semseg", pred, (16, 16)) is pred


def test_a_prediction_below_input_resolution_is_refused_not_resized() -> None:
    model, meters = model_and_meters()
    half = nn.Sequential(nn.AvgPool2d(2), model)
    loader = DataLoader([sample(16, 16, 0)], batch_size=1, collate_fn=collate_eval)
    with pytest.raises(MtbenchError, match=r"predicts at \(8, 8\) but its input is \(16, 16\)"):
        evaluate(half, loader, meters, device=CPU)


@pytest.mark.parametrize("size", [(375, 500), (374, 500), (500, 375), (333, 500), (82, 94), (600, 700)])
def test_nearest_resized_logits_give_the_nearest_resized_argmax(size: tuple[int, int]) -> None:
    """The release saves argmax, then cv2 INTER_NEAREST; resizing the logits from the same source pixels
    and taking the argmax gives that map (nearest only copies pixels)."""
    logits = torch.randn(2, 21, 512, 512, generator=torch.Generator().manual_seed(0))
    rows, cols = cv2_nearest_index(512, size[0]), cv2_nearest_index(512, size[1])
    released = logits.argmax(1)[:, rows][:, :, cols]
    assert torch.equal(resize_prediction("semseg", logits, size).argmax(1), released)


def test_nearest_index_is_opencvs_double_precision_rule() -> None:
    """OpenCV's INTER_NEAREST (resizeNN: floor(x · (1 / (out / in))) in double) as cv2 5.1 returns it; neither
    the exact floor(x · in / out) nor torch's float32 F.interpolate(mode="nearest") gives these three."""
    assert int(cv2_nearest_index(512, 374)[187]) == 255  # exact: 256; torch: 256
    assert int(cv2_nearest_index(512, 376)[188]) == 256  # exact: 256; torch: 255
    assert int(cv2_nearest_index(512, 392)[49]) == 63  # exact: 64; torch: 64
    assert cv2_nearest_index(5, 2).tolist() == [0, 2] and cv2_nearest_index(2, 5).tolist() == [0, 0, 0, 1, 1]


def test_probability_is_resized_linearly_and_returned_as_exact_logits() -> None:
    """sal and edge: the release resizes 255 · sigmoid linearly; the meters read sigmoid of the returned logits."""
    z = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 8
    z[..., 0, 0], z[..., 0, 1] = 60.0, -60.0  # saturated in float32
    out = resize_prediction("sal", z, (47, 21))
    assert out.shape == (1, 1, 47, 21) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    torch.testing.assert_close(torch.sigmoid(out.double()), linear_resize(torch.sigmoid(z.double()), (47, 21)))
    near_corner = resize_prediction("edge", z, (64, 64))[0, 0, 0, 0]
    assert 55 < float(near_corner) < 61  # not clamped at float32's sigmoid saturation
    two = torch.cat([torch.zeros_like(z), z], dim=1)  # a 2-logit head: foreground probability sigmoid(z1 - z0)
    torch.testing.assert_close(resize_prediction("sal", two, (47, 21)), out)


def test_normals_are_normalised_before_the_linear_resize() -> None:
    n = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 5
    out = resize_prediction("normals", n, (13, 5))
    torch.testing.assert_close(out, linear_resize(nn.functional.normalize(n.double(), dim=1), (13, 5)).float())


def test_resizes_match_opencv() -> None:
    """The release's own calls, cv2.resize on the get_output maps, where OpenCV is installed (it is not a
    dependency of mtbench)."""
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(0)
    for h, w in [(375, 500), (374, 500), (500, 375), (82, 94), (600, 700)]:
        logits = torch.randn(1, 21, 512, 512, generator=g)
        argmax = logits.argmax(1)[0].numpy()
        released = cv2.resize(argmax, (w, h), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(resize_prediction("semseg", logits, (h, w)).argmax(1)[0].numpy(), released)
        z = torch.randn(1, 1, 512, 512, generator=g) * 8
        released = cv2.resize((255 * torch.sigmoid(z))[0, 0].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        ours = 255 * torch.sigmoid(resize_prediction("sal", z, (h, w)))[0, 0].numpy()
        assert np.abs(ours - released).max() < 1e-4
        d = torch.rand(1, 1, 512, 512, generator=g) * 10
        released = cv2.resize(d[0, 0].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        assert np.abs(resize_prediction("depth", d, (h, w))[0, 0].numpy() - released).max() < 1e-5
        n = torch.randn(1, 3, 512, 512, generator=g)
        saved = ((nn.functional.normalize(n, dim=1) + 1) * 255 / 2)[0].permute(1, 2, 0).numpy()
        released = cv2.resize(saved, (w, h), interpolation=cv2.INTER_LINEAR)
        ours = ((resize_prediction("normals", n, (h, w)) + 1) * 255 / 2)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - released).max() < 1e-4
