"""Published rows: every entry loads with its comparability data, metric names follow the meter variants, and
`incomparability` keeps rows computed another way out of a table. Expectations are written by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mtbench.errors import MtbenchError
from mtbench.report.published import (
    DATASET_VARIANTS,
    DEFAULT_PATH,
    METRIC_KEYS,
    incomparability,
    load_published,
    logged_metric_name,
    published_row,
    published_rows,
    references_bib,
)

ROWS = load_published()
NYUD_KEYS = ["semseg/mIoU", "depth/rmse", "normals/mean", "edge/odsF"]


def test_every_entry_becomes_a_row() -> None:
    entries = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))["entries"]
    assert len(ROWS) == len(entries) == 19
    assert [r.paper for r in ROWS.values()] == [e["paper"] for e in entries]


@pytest.mark.parametrize("name", list(ROWS))
def test_row_carries_cite_variant_and_a_meter_per_metric(name: str) -> None:
    row = ROWS[name]
    assert row.cite in {"xu2023demt", "ye2022invpt", "bruggemann2021atrc", "ye2023taskprompter"}
    assert row.dataset_variant in DATASET_VARIANTS[row.dataset]
    assert row.trust in ("high", "medium")
    assert row.metrics
    assert set(row.metric_variants) == {key.split("/", 1)[0] for key in row.metrics}


def test_one_cite_per_paper() -> None:
    cites = {(r.paper, r.cite) for r in ROWS.values()}
    assert cites == {("DeMT", "xu2023demt"), ("InvPT", "ye2022invpt"), ("ATRC", "bruggemann2021atrc"),
                     ("TaskPrompter", "ye2023taskprompter")}


def test_every_cite_has_a_bibtex_entry() -> None:
    text = references_bib()
    entries = dict(re.findall(r"@\w+\{(\w+),(.*?)\n\}", text, flags=re.S))
    assert {r.cite for r in ROWS.values()} <= set(entries)
    for key, body in entries.items():
        for field in ("title", "author", "year"):
            assert re.search(rf"^\s*{field}\s*=", body, flags=re.M), (key, field)
    assert "Br{\\\"u}ggemann, David" in entries["bruggemann2021atrc"]
    assert re.search(r"year\s*=\s*\{2022\}", entries["ye2022invpt"])


def test_invpt_saliency_is_named_by_its_meter() -> None:
    # InvPT's released meter passes the softmax probability through a second sigmoid: variant `invpt`.
    row = published_row("InvPT/pascal/ViT-L")
    assert row.metrics == {"semseg/mIoU": 79.03, "human_parts/mIoU": 67.61, "sal/maxF-invpt": 84.81,
                           "normals/mean": 14.15, "edge/odsF": 73.0}
    assert row.metric_variants == {"semseg": "reference", "human_parts": "reference", "sal": "invpt",
                                   "normals": "reference", "edge": "odsf_nms"}
    for name in ("TaskPrompter/pascal/ViT-L", "TaskPrompter/pascal/ViT-B", "InvPT/pascal/ViT-L/InvPT (released ckpt)"):
        assert "sal/maxF-invpt" in ROWS[name].metrics and "sal/maxF" not in ROWS[name].metrics


def test_demt_and_atrc_saliency_is_the_plain_maxf() -> None:
    # ATRC's MaxF (one sigmoid) is mtbench's `atrc` alias of the reference: plain names.
    demt = published_row("DeMT/pascal/Swin-B")
    assert demt.metrics == {"semseg/mIoU": 75.33, "human_parts/mIoU": 63.11, "sal/maxF": 83.42,
                            "normals/mean": 14.54, "edge/odsF": 73.2}
    assert demt.metric_variants["sal"] == "atrc"
    assert published_row("ATRC/pascal").metrics["sal/maxF"] == 82.29


def test_nyud_row_fields() -> None:
    row = published_row("ATRC/nyud")
    assert (row.paper, row.model, row.backbone, row.dataset, row.dataset_variant) == \
        ("ATRC", "ATRC", None, "nyud", "NYUDv2")
    assert row.metrics == {"semseg/mIoU": 46.33, "depth/rmse": 0.5363, "normals/mean": 20.18, "edge/odsF": 77.94}
    assert row.caveat is None
    swin_t = published_row("DeMT/nyud/Swin-T")
    assert (swin_t.params_m, swin_t.gflops, swin_t.input_size, swin_t.trust) == (32.07, 100.7, None, "high")
    assert published_row("InvPT/nyud/ViT-L").input_size == "448x576 (code)"


def test_uncertain_variants_give_a_caveat() -> None:
    assert published_row("InvPT/pascal/ViT-L").caveat.startswith("metric variants uncertain: the paper's numbers")
    assert published_row("InvPT/nyud/ViT-L").caveat is not None
    assert published_row("InvPT/pascal/ViT-L/InvPT (released ckpt)").caveat is None
    assert [n for n, r in ROWS.items() if r.caveat] == ["InvPT/nyud/ViT-L", "InvPT/pascal/ViT-L"]


def test_logged_metric_names_follow_each_meter() -> None:
    assert logged_metric_name("sal/maxF", "pascal", "invpt") == "sal/maxF-invpt"
    assert logged_metric_name("sal/maxF", "pascal", "atrc") == "sal/maxF"
    assert logged_metric_name("depth/rmse", "nyud", "astmt") == "depth/rmse-astmt"
    assert logged_metric_name("normals/mean", "nyud", "mtinet_png") == "normals/mean-mtinet_png"
    assert logged_metric_name("edge/odsF", "nyud", "odsf_nms") == "edge/odsF"
    assert logged_metric_name("edge/odsF", "pascal", "odsf_raw") == "edge/odsF-odsf_raw"


def test_comparable_row_gives_none() -> None:
    assert incomparability(published_row("DeMT/nyud/Swin-T"), "NYUDv2", NYUD_KEYS) is None
    invpt = published_row("InvPT/pascal/ViT-L")
    assert incomparability(invpt, "PASCAL_MT", ["semseg/mIoU", "sal/maxF-invpt", "human_parts/mIoU"]) is None
    # a table holding runs of both saliency meters has a column for the row's
    assert incomparability(invpt, "PASCAL_MT", ["sal/maxF", "sal/maxF-invpt"]) is None


def test_other_dataset_variant_is_not_comparable() -> None:
    row = published_row("DeMT/nyud/Swin-T")
    assert incomparability(row, "synthetic_nyud", NYUD_KEYS) == "dataset variant NYUDv2, the runs used synthetic_nyud"
    assert incomparability(row, "NYUD_MT", NYUD_KEYS) == "dataset variant NYUDv2, the runs used NYUD_MT"


def test_other_saliency_variant_is_not_comparable() -> None:
    assert incomparability(published_row("InvPT/pascal/ViT-L"), "PASCAL_MT", ["semseg/mIoU", "sal/maxF"]) == \
        "sal: the row's number is sal/maxF-invpt (sal meter `invpt`), the table shows sal/maxF"
    assert incomparability(published_row("DeMT/pascal/Swin-T"), "PASCAL_MT", ["sal/maxF-invpt"]) == \
        "sal: the row's number is sal/maxF (sal meter `atrc`), the table shows sal/maxF-invpt"
    assert incomparability(published_row("ATRC/nyud"), "NYUDv2", ["depth/rmse-astmt", "semseg/mIoU"]) == \
        "depth: the row's number is depth/rmse (depth meter `reference`), the table shows depth/rmse-astmt"


def test_no_common_metric_is_not_comparable() -> None:
    reason = incomparability(published_row("ATRC/nyud"), "NYUDv2", ["edge/loss_bce"])
    assert reason == ("no metric in common: the row reports semseg/mIoU, depth/rmse, normals/mean, edge/odsF, "
                      "the table shows edge/loss_bce")


def test_missing_task_stays_comparable() -> None:
    # Columns the row has no number for (a task it lacks, another metric of a shared task) stay empty cells.
    row = published_row("ATRC/nyud")
    assert incomparability(row, "NYUDv2", ["semseg/mIoU", "sal/maxF-invpt", "depth/rmse"]) is None
    assert incomparability(row, "NYUDv2", ["semseg/mIoU", "semseg/pixel_acc"]) is None


def test_unknown_row_names_close_matches() -> None:
    with pytest.raises(MtbenchError, match=r"no published row 'DeMT/nyud/Swin-X'\. Did you mean 'DeMT/nyud/Swin-"
                                           r".*Rows: DeMT/nyud/HRNet-18, "):
        published_row("DeMT/nyud/Swin-X")


def test_rows_of_a_dataset() -> None:
    assert [r.name for r in published_rows("nyud")] == [
        "DeMT/nyud/HRNet-18", "DeMT/nyud/Swin-T", "DeMT/nyud/Swin-T/DeMT (xd=2)", "DeMT/nyud/Swin-S",
        "DeMT/nyud/Swin-B", "DeMT/nyud/Swin-L", "InvPT/nyud/ViT-L", "InvPT/nyud/ViT-L/InvPT (released ckpt)",
        "ATRC/nyud", "TaskPrompter/nyud/ViT-L"]
    pascal = published_rows("pascal")
    assert len(pascal) == 9 and {r.dataset_variant for r in pascal} == {"PASCAL_MT"}
    assert published_rows("pascal_context") == pascal


@pytest.mark.parametrize("dataset", ["kitti", "synthetic_nyud"])
def test_rows_of_an_unknown_dataset(dataset: str) -> None:
    with pytest.raises(MtbenchError, match=rf"no published rows for dataset '{dataset}'.*valid: nyud, pascal, "
                                           r"pascal_context\."):
        published_rows(dataset)


def _write(tmp_path: Path, **changes: object) -> Path:
    entry = {"paper": "P", "venue": "V", "source": "o/r:README.md@abc", "trust": "high", "dataset": "nyud",
             "dataset_variant": "NYUD_MT", "cite": "p2024", "model": "P", "backbone": "B",
             "metric_variants": {"semseg": "libmtl", "depth": "astmt"},
             "metrics": {"semseg_miou": 40.0, "depth_rmse": 0.6, "normals_mean": None}, "notes": None, **changes}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({"entries": [{k: v for k, v in entry.items() if v != "DROP"}]}))
    return path


def test_entry_of_another_file_loads(tmp_path: Path) -> None:
    (row,) = load_published(_write(tmp_path)).values()
    assert row.name == "P/nyud/B"
    assert row.metrics == {"semseg/mIoU-libmtl": 40.0, "depth/rmse-astmt": 0.6}
    assert incomparability(row, "NYUD_MT", ["semseg/mIoU-libmtl", "depth/rmse"]) == \
        "depth: the row's number is depth/rmse-astmt (depth meter `astmt`), the table shows depth/rmse"


@pytest.mark.parametrize(("changes", "message"), [
    ({"dataset_variant": "DROP"}, r"entry 0 \(P/nyud/B\): missing dataset_variant"),
    ({"dataset_variant": "PASCAL_MT"}, r"dataset_variant 'PASCAL_MT' is not an archive of nyud \(NYUDv2, NYUD_MT\)"),
    ({"metric_variants": {"semseg": "reference"}},
     r"metric_variants must name exactly the tasks with a number \(depth, semseg\); it names semseg"),
    ({"metric_variants": {"semseg": "reference", "depth": "pooled"}}, r"unknown depth metric variant 'pooled'"),
    ({"variant_trust": "uncertain"}, r"needs the reason in notes, after 'Variants uncertain:'"),
    ({"variant_trust": "maybe"}, r"variant_trust is 'uncertain' or absent; got 'maybe'"),
    ({"trust": "low"}, r"trust 'low' is not one of high, medium"),
    ({"metrics": {"miou": 1.0}}, r"unknown metric column\(s\) miou"),
])
def test_bad_entries_are_refused(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(MtbenchError, match=message):
        load_published(_write(tmp_path, **changes))


def test_uncertain_entry_caveat_comes_from_notes(tmp_path: Path) -> None:
    path = _write(tmp_path, variant_trust="uncertain", notes="Numbers from a table. Variants uncertain: no code.")
    (row,) = load_published(path).values()
    assert row.caveat == "metric variants uncertain: no code."


def test_metric_columns_cover_every_task_key() -> None:
    assert sorted(k.split("/", 1)[0] for k in METRIC_KEYS.values()) == \
        ["depth", "edge", "human_parts", "normals", "sal", "semseg"]
