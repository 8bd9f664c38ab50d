"""Tests of mtbench.progress: bars on a terminal, nothing in logs and CI; edge odsF advances per matched image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from mtbench.engine.evaluate import evaluate
from mtbench.metrics import build_meter
from mtbench.metrics.boundary import evaluate_boundaries
from mtbench.progress import NoProgress, draws_bars, progress_bars

CPU = torch.device("cpu")


@pytest.fixture
def no_tty_env(monkeypatch):
    """The environment of a plain terminal session: no variable forces rich's terminal or interactive test."""
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def terminal() -> tuple[Console, io.StringIO]:
    """A console that rich takes for an interactive terminal, writing into a buffer (not a TTY: bars need
    TTY_INTERACTIVE=1 as well)."""
    out = io.StringIO()
    return Console(file=out, force_terminal=True, force_interactive=True, width=120), out


def test_no_bars_without_a_tty_even_where_ci_forces_colours(no_tty_env):
    out = io.StringIO()
    with progress_bars(Console(file=out)) as bars:
        assert isinstance(bars, NoProgress)
        task = bars.add_task("phase", total=3)
        bars.advance(task)
        bars.update(task, description="other", completed=2, refresh=True)
        bars.remove_task(task)
    assert out.getvalue() == ""
    no_tty_env.setenv("FORCE_COLOR", "1")  # rich alone would then treat the log as a terminal
    assert Console(file=io.StringIO()).is_terminal
    assert not draws_bars(Console(file=io.StringIO()))
    assert not draws_bars(terminal()[0])  # a forced terminal is still no TTY
    no_tty_env.setenv("TTY_INTERACTIVE", "1")  # rich's variable to draw them anyway
    assert draws_bars(terminal()[0])
    no_tty_env.setenv("TTY_INTERACTIVE", "0")
    assert not draws_bars(Console(file=io.StringIO(), force_terminal=True))


def check_tree_via_cli(tmp_path, monkeypatch, err_console: Console) -> None:
    """Run `mtbench data check` in this process (as its console scripts would) on a synthetic NYUD tree."""
    from mtbench import cli
    from mtbench.data.layouts import write_layout

    write_layout("nyud_mt", tmp_path / "tree", 8, height=32, width=40)
    monkeypatch.setattr(cli, "err_console", err_console)
    cli.data_check("nyud", root=tmp_path / "tree", tasks=None, quick=False)


def test_data_check_writes_no_bar_into_a_log(tmp_path, no_tty_env, capsys):
    no_tty_env.setenv("FORCE_COLOR", "1")  # as CI logs often set: rich alone would draw the bars
    check_tree_via_cli(tmp_path, no_tty_env, Console(stderr=True))  # stderr: pytest's capture, no TTY
    out, err = capsys.readouterr()
    assert "fingerprint:" in out
    assert err == ""


def test_data_check_draws_its_bars_on_a_terminal(tmp_path, no_tty_env):
    no_tty_env.setenv("TTY_INTERACTIVE", "1")
    console, out = terminal()
    check_tree_via_cli(tmp_path, no_tty_env, console)
    assert "reading train" in out.getvalue() and "reading val" in out.getvalue()


def boundary_maps(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    gts = [(rng.random((24, 32)) < 0.1).astype(np.float32) for _ in range(n)]
    preds = [np.clip(g * 0.8 + 0.3 * rng.random(g.shape), 0, 1).astype(np.float32) for g in gts]
    return preds, gts


def test_odsf_over_a_split_draws_a_bar_per_image_on_a_terminal(no_tty_env):
    no_tty_env.setenv("TTY_INTERACTIVE", "1")
    preds, gts = boundary_maps(3)
    console, out = terminal()
    calls = []
    with progress_bars(console) as bars:
        task = bars.add_task("edge odsF", total=len(preds))

        def advance(done: int, total: int) -> None:
            calls.append((done, total))
            bars.update(task, completed=done, refresh=True)

        got = evaluate_boundaries(preds, gts, max_dist=0.05, progress=advance)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert "edge odsF" in out.getvalue() and "3/3" in out.getvalue()
    assert got == evaluate_boundaries(preds, gts, max_dist=0.05)  # bit-identical


class EdgeHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"edge": self.conv(image) * 3}


def edge_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(2, 3, 24, 32, generator=g),
             "edge": (torch.rand(2, 1, 24, 32, generator=g) < 0.2).float()} for _ in range(2)]


def test_evaluation_shows_the_odsf_matching_left_after_the_forward_passes(no_tty_env):
    no_tty_env.setenv("TTY_INTERACTIVE", "1")
    def meter(workers: int):
        return {"edge:odsf_nms": build_meter("edge", dataset="nyud", variant="odsf_nms", max_dist=0.05,
                                             num_workers=workers)}

    serial = evaluate(EdgeHead(), edge_batches(), meter(0), device=CPU)
    console, out = terminal()
    with progress_bars(console) as bars:
        assert not isinstance(bars, NoProgress)
        shown = evaluate(EdgeHead(), edge_batches(), meter(1), device=CPU, progress=bars, description="test")
    assert shown == serial  # bit-identical
    assert "test: scoring edge" in out.getvalue()
    assert not bars.tasks  # the evaluation's bar is gone

    workers = meter(1)["edge:odsf_nms"]
    for batch in edge_batches():
        workers.update(EdgeHead()(batch["image"])["edge"].detach(), batch["edge"])
    pending, done = workers.pending(), []
    workers.wait(on_done=lambda: done.append(1))
    assert len(done) == pending and workers.pending() == 0
    assert workers.compute() == serial
