"""Paper figures for `mtbench report`: Δm vs GFLOPs, per-task change, validation curves, Optuna plots.

Every figure is written as PDF and 200-dpi PNG at a paper column (3.4 in) or page (7 in) width, and
reads in greyscale: each model has a fixed colour, marker, line style and hatch, taken from its index
in the caller's `model_order`, so one model looks the same in every figure of every report. Figures
are `matplotlib.figure.Figure` objects (no pyplot, hence no global figure list to leak into), drawn
under a local rc context, with constrained layout and legends outside the axes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from mtbench.report import tables

FIGURES = ("delta_m_vs_gflops", "task_change", "val_curves", "optuna_history", "optuna_importance")
COLUMN_IN, PAGE_IN = 3.4, 7.0  # widths of one paper column and a full page
DPI = 200
PALETTE = tuple(sns.color_palette("colorblind", 10))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1, 1, 1)))
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--", "||", "**")
FILL_STYLES = ("full", "none", "left", "bottom")  # second, third, ... variant of one model in line plots
UP, DOWN = "↑", "↓"
_RC = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.title_fontsize": 7, "lines.linewidth": 1.2, "lines.markersize": 4.5,
    "axes.linewidth": 0.6, "hatch.linewidth": 0.6, "pdf.fonttype": 42, "ps.fonttype": 42,
    "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": DPI,
}


@dataclass
class StudyView:
    """An Optuna study as plain data, so this module never imports optuna."""

    trials: pd.DataFrame  # number (int), value (float, NaN unless COMPLETE), state (COMPLETE|PRUNED|FAIL|RUNNING)
    importances: dict[str, float]  # param name -> importance; empty: no importance figure
    objective: str  # e.g. "semseg/mIoU" or "delta_m"
    direction: str  # 'maximize' | 'minimize'


@dataclass
class FigureInput:
    """Everything the figures read, built from MLflow by the caller."""

    summary: pd.DataFrame  # index = row label; model, kind, gflops, params_m, delta_m_mean, delta_m_std, n_seeds
    changes: pd.DataFrame  # label, model, task, seed, change (% vs reference, + = better); one row per label/seed/task
    curves: pd.DataFrame  # label, model, seed, metric ('val/semseg/mIoU'), step, value
    reference: str  # label of the Δm reference row
    model_order: list[str]  # registered model names in a fixed order: index -> colour, marker, ...
    higher_is_better: dict[str, bool]  # metric without 'val/' -> whether higher is better
    study: StudyView | None = None


@dataclass(frozen=True)
class ModelStyle:
    """How one model is drawn in every figure: colour plus greyscale cues (marker, line style, hatch)."""

    color: tuple[float, float, float]
    marker: str
    linestyle: str | tuple[int, tuple[int, ...]]
    hatch: str


def style_index(model: str, model_order: Sequence[str]) -> int:
    """Return the model's index in `model_order`; unknown names get a stable hash-based index after it."""
    if model in model_order:
        return list(model_order).index(model)
    digest = int(hashlib.sha1(model.encode()).hexdigest(), 16)  # stable across processes, unlike hash()
    return len(model_order) + digest % 997


def model_style(model: str, model_order: Sequence[str]) -> ModelStyle:
    """Return the fixed style of `model`: the same in every figure, distinct for the first models."""
    i = style_index(model, model_order)
    return ModelStyle(color=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)],
                      linestyle=LINESTYLES[i % len(LINESTYLES)], hatch=HATCHES[i % len(HATCHES)])


def pareto_front(gflops: pd.Series, delta_m: pd.Series) -> list[str]:
    """Return the labels not dominated in (GFLOPs ↓, Δm ↑), sorted by GFLOPs then label.

    A row is dominated when another has GFLOPs ≤ and Δm ≥ with at least one strict; rows that tie
    on both are all kept. Both series are indexed by label; rows with a NaN in either are ignored.
    """
    points = pd.DataFrame({"g": gflops, "d": delta_m}).dropna()
    g, d = points["g"].to_numpy(float), points["d"].to_numpy(float)
    front = [label for label, gi, di in zip(points.index, g, d, strict=True)
             if not np.any((g <= gi) & (d >= di) & ((g < gi) | (d > di)))]
    return sorted(front, key=lambda label: (points.at[label, "g"], str(label)))


def metric_label(metric: str, higher_is_better: bool | None) -> str:
    """Return an axis label such as 'semseg mIoU ↑' for 'val/semseg/mIoU' (no arrow when unknown)."""
    name = metric.removeprefix("val/")
    text = "Δm (%)" if name == "delta_m" else tables.metric_label(name)  # the tables' column names
    return text if higher_is_better is None else f"{text} {UP if higher_is_better else DOWN}"


def write_figures(data: FigureInput, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Write every figure the data allows as <name>.pdf and <name>.png under `folder` (which exists);
    return (paths written, {figure name: why it was skipped}).

    Raises on any drawing or writing error (the caller writes into a temporary folder).
    """
    paths: list[Path] = []
    skipped: dict[str, str] = {}
    for name in FIGURES:
        why, draw = _FIGURES[name]
        reason = why(data)
        if reason:
            skipped[name] = reason
            continue
        with mpl.rc_context(_RC):
            paths += _save(draw(data), Path(folder) / name)
    return paths, skipped


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write `fig` as stem.pdf and stem.png (200 dpi) without volatile metadata, then free it."""
    pdf, png = stem.with_suffix(".pdf"), stem.with_suffix(".png")
    try:
        fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None, "Producer": None})
        fig.savefig(png, dpi=DPI, metadata={"Software": None})
    finally:
        fig.clear()
    return [pdf, png]


def _new_figure(width: float, height: float) -> Figure:
    """Return a pyplot-free figure with constrained layout and an Agg canvas (for text extents)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label_order(data: FigureInput, labels: Sequence[str]) -> list[str]:
    """Order `labels` as the summary's rows (the caller's order), unknown ones after, sorted."""
    present = set(labels)
    known = [label for label in data.summary.index if label in present]
    return known + sorted(present - set(known))


def _model_of(frame: pd.DataFrame) -> dict[str, str]:
    """Map each label of a tidy frame to its model (first row wins)."""
    return frame.drop_duplicates("label").set_index("label")["model"].astype(str).to_dict()


def _variant_rank(labels: Sequence[str], model_of: dict[str, str]) -> dict[str, int]:
    """Number the labels within each model 0, 1, ... in the given order (variants of one model)."""
    seen: dict[str, int] = {}
    rank = {}
    for label in labels:
        rank[label] = seen.get(model_of[label], 0)
        seen[model_of[label]] = rank[label] + 1
    return rank


def _legend_below(fig: Figure, handles: list, ncol: int | None = None) -> None:
    """Put one legend under all axes, so it never covers data (more columns on a page-wide figure)."""
    if ncol is None:  # as few rows as fit, then balanced columns
        rows = math.ceil(len(handles) / (5 if fig.get_figwidth() > COLUMN_IN else 2))
        ncol = math.ceil(len(handles) / rows)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False,
               handlelength=2.4, columnspacing=1.2)


# --- delta_m_vs_gflops -------------------------------------------------------------------------------


def _gflops_rows(data: FigureInput) -> pd.DataFrame:
    """Return the summary rows that have both GFLOPs and a Δm mean."""
    s = data.summary
    return s[pd.to_numeric(s["gflops"], errors="coerce").notna()
             & pd.to_numeric(s["delta_m_mean"], errors="coerce").notna()]


def _why_gflops(data: FigureInput) -> str:
    if _gflops_rows(data).empty:
        return "no row has both GFLOPs and Δm (profile the models, and give Δm a reference)"
    return ""


def _draw_gflops(data: FigureInput) -> Figure:
    rows = _gflops_rows(data)
    fig = _new_figure(COLUMN_IN, 3.0)
    ax = fig.add_subplot()
    g, d = rows["gflops"].astype(float), rows["delta_m_mean"].astype(float)
    if g.max() > 10 * g.min() > 0:
        _log_x(ax)
    front = pareto_front(g, d)
    ax.step(g[front], d[front], where="post", color="0.35", lw=0.9, zorder=1, label="Pareto front")
    ax.axhline(0, color="0.6", lw=0.6, ls=":", zorder=0)
    for _, row in rows.iterrows():
        _point(ax, row, model_style(str(row["model"]), data.model_order))
    ax.margins(x=0.12, y=0.15)
    ax.set_xlabel("GFLOPs ↓" + (" (log)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"Δm vs {data.reference} (%) ↑")
    _legend_below(fig, _gflops_handles(rows, data.model_order), ncol=3)
    _annotate(fig, ax, list(rows.index), g.to_numpy(), d.to_numpy())
    return fig


def _log_x(ax: Axes) -> None:
    """Use a log x axis labelled with plain numbers at 1, 2, 5 × 10^k (default labels overlap)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _point(ax: Axes, row: pd.Series, style: ModelStyle) -> None:
    """Draw one row: marker (hollow when published) with ±std error bar when known."""
    std = float(row["delta_m_std"]) if pd.notna(row["delta_m_std"]) else None
    hollow = row["kind"] == "published"
    ax.errorbar(float(row["gflops"]), float(row["delta_m_mean"]), yerr=std, fmt=style.marker, color=style.color,
                mfc="white" if hollow else style.color, mec=style.color, mew=1.0, ms=5, elinewidth=0.8,
                capsize=2, zorder=3)


def _gflops_handles(rows: pd.DataFrame, model_order: Sequence[str]) -> list:
    """Legend entries: one per model present (model order), 'published' if any, and the Pareto front."""
    models = sorted(set(rows["model"].astype(str)), key=lambda m: (style_index(m, model_order), m))
    handles: list = []
    for m in models:
        st = model_style(m, model_order)
        handles.append(Line2D([], [], ls="", marker=st.marker, color=st.color, ms=5, label=m))
    if (rows["kind"] == "published").any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="0.3", ms=5, label="published"))
    handles.append(Line2D([], [], color="0.35", lw=0.9, drawstyle="steps-post", label="Pareto front"))
    return handles


# Offsets (points) tried in turn for a point's label: right-up, right-down, left-up, left-down, above, below.
_OFFSETS = ((4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"),
            (-4, -3, "right", "top"), (0, 6, "center", "bottom"), (0, -6, "center", "top"))


def _annotate(fig: Figure, ax: Axes, labels: list[str], x: np.ndarray, y: np.ndarray) -> None:
    """Label each point, choosing per point the first offset that overlaps no marker or earlier label.

    Deterministic greedy placement: points left to right; when every offset collides, the one with
    the least overlap (preferring inside the axes) wins.
    """
    fig.canvas.draw()  # settle the layout so display coordinates are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centers = ax.transData.transform(np.column_stack([x, y]))
    taken = [Bbox.from_bounds(cx - 4, cy - 4, 8, 8) for cx, cy in centers]
    for i in np.lexsort((y, x)):
        best, best_cost = None, math.inf
        for dx, dy, ha, va in _OFFSETS:
            text = ax.annotate(str(labels[i]), (x[i], y[i]), xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=7, zorder=4)
            box = text.get_window_extent(renderer)
            cost = sum(_overlap(box, t) for t in taken) + 10 * _outside(box, frame)
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (text, box), cost
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[1])


def _overlap(a: Bbox, b: Bbox) -> float:
    """Return the overlapping area of two display boxes (0 when disjoint)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def _outside(box: Bbox, frame: Bbox) -> float:
    """Return the area of `box` outside `frame`."""
    return box.width * box.height - _overlap(box, frame)


# --- task_change ---------------------------------------------------------------------------------------


def _why_task_change(data: FigureInput) -> str:
    return "no per-task changes (no Δm reference, or no task metrics)" if data.changes.empty else ""


def _task_stats(data: FigureInput) -> tuple[pd.DataFrame, list[str]]:
    """Return mean/std (sample, over seeds) of change per (label, task), and the labels to show."""
    changes = data.changes
    labels = _label_order(data, changes["label"].astype(str).unique())
    if len(labels) > 1:
        labels = [label for label in labels if label != data.reference]
    stats = changes.groupby(["label", "task"], sort=False)["change"].agg(["mean", "std"])
    return stats, labels


def _draw_task_change(data: FigureInput) -> Figure:
    stats, labels = _task_stats(data)
    tasks = list(dict.fromkeys(data.changes["task"].astype(str)))
    model_of = _model_of(data.changes)
    rank = _variant_rank(labels, model_of)
    fig = _new_figure(PAGE_IN if len(tasks) * len(labels) > 8 else COLUMN_IN, 2.8)
    ax = fig.add_subplot()
    width = 0.8 / len(labels)
    handles = []
    for j, label in enumerate(labels):
        st = model_style(model_of[label], data.model_order)
        hatch = HATCHES[(style_index(model_of[label], data.model_order) + 3 * rank[label]) % len(HATCHES)]
        mean = [stats["mean"].get((label, t), np.nan) for t in tasks]
        std = [stats["std"].get((label, t), np.nan) for t in tasks]
        xs = np.arange(len(tasks)) - 0.4 + width * (j + 0.5)
        ax.bar(xs, mean, width, color=st.color, hatch=hatch, edgecolor="0.15", linewidth=0.5, label=label)
        known = np.isfinite(std)  # one seed or published: no error bar at all
        ax.errorbar(xs[known], np.asarray(mean)[known], yerr=np.asarray(std)[known], fmt="none", ecolor="0.1",
                    elinewidth=0.7, capsize=1.5)
        handles.append(Patch(facecolor=st.color, hatch=hatch, edgecolor="0.15", linewidth=0.5, label=label))
    ax.axhline(0, color="0.2", lw=0.7)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_xlabel("task")
    ax.set_ylabel(f"change vs {data.reference} (%) ↑")
    _legend_below(fig, handles)
    return fig


# --- val_curves ----------------------------------------------------------------------------------------


def _why_curves(data: FigureInput) -> str:
    return "no validation curves logged" if data.curves.empty else ""


def _draw_curves(data: FigureInput) -> Figure:
    curves = data.curves
    metrics = list(dict.fromkeys(curves["metric"].astype(str)))
    ncols = 2 if len(metrics) == 4 else min(3, len(metrics))  # 4 NYUD tasks: 2x2, no empty panels
    nrows = math.ceil(len(metrics) / ncols)
    fig = _new_figure(COLUMN_IN if ncols == 1 else PAGE_IN, 1.9 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    labels = _label_order(data, curves["label"].astype(str).unique())
    model_of = _model_of(curves)
    rank = _variant_rank(labels, model_of)
    handles = {}
    for ax, metric in zip(axes, metrics, strict=False):
        rows = curves[curves["metric"] == metric]
        for label in labels:
            band = rows[rows["label"] == label].groupby("step")["value"].agg(["mean", "min", "max"])
            if band.empty:
                continue
            st = model_style(model_of[label], data.model_order)
            handles[label] = _curve(ax, band, st, FILL_STYLES[rank[label] % len(FILL_STYLES)], label)
        name = metric.removeprefix("val/")
        ax.set_ylabel(metric_label(name, data.higher_is_better.get(name)))
        ax.set_xlabel("step")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    _legend_below(fig, [handles[label] for label in labels if label in handles])
    return fig


def _curve(ax: Axes, band: pd.DataFrame, style: ModelStyle, fill: str, label: str) -> Line2D:
    """Draw the seed mean with a min–max band; about eight markers per line, so lines stay readable."""
    steps = band.index.to_numpy()
    ax.fill_between(steps, band["min"], band["max"], color=style.color, alpha=0.2, lw=0)
    (line,) = ax.plot(steps, band["mean"], color=style.color, ls=style.linestyle, marker=style.marker,
                      fillstyle=fill, markevery=max(1, len(steps) // 8), label=label)
    return line


# --- optuna_history / optuna_importance ----------------------------------------------------------------


def _why_history(data: FigureInput) -> str:
    if data.study is None:
        return "no Optuna study for this experiment"
    return "" if len(data.study.trials) else "the Optuna study has no trials"


def _why_importance(data: FigureInput) -> str:
    if data.study is None:
        return "no Optuna study for this experiment"
    return "" if data.study.importances else "no parameter importances (too few COMPLETE trials)"


def _draw_history(data: FigureInput) -> Figure:
    study = data.study
    assert study is not None  # _why_history ran first
    trials = study.trials.sort_values("number")
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    maximize = study.direction == "maximize"
    fig = _new_figure(COLUMN_IN, 2.8)
    ax = fig.add_subplot()
    color = PALETTE[0]
    handles = [ax.scatter(done["number"], done["value"], s=12, color=color, marker="o", zorder=3,
                          label=f"complete ({len(done)})")]
    if not done.empty:
        best = done["value"].cummax() if maximize else done["value"].cummin()
        xs = [*done["number"], trials["number"].max()]
        (line,) = ax.step(xs, [*best, best.iloc[-1]], where="post", color="0.2", lw=1.0, label="best so far")
        handles.append(line)
    rugs = _rug(ax, trials, "PRUNED", "x", "pruned") + _rug(ax, trials, "FAIL", "|", "failed")
    if rugs:
        ax.margins(y=0.18)  # room under the lowest value for the rug
    handles += rugs
    ax.set_xlabel("trial")
    ax.set_ylabel(metric_label(study.objective, maximize))
    _legend_below(fig, handles, ncol=2)
    return fig


def _rug(ax: Axes, trials: pd.DataFrame, state: str, marker: str, name: str) -> list:
    """Mark trials in `state` along the bottom of the axes; return their legend handle, if any."""
    numbers = trials.loc[trials["state"] == state, "number"]
    if numbers.empty:
        return []
    (line,) = ax.plot(numbers, np.full(len(numbers), 0.03), ls="", marker=marker, color="0.3", ms=4,
                      transform=ax.get_xaxis_transform(), clip_on=False, label=f"{name} ({len(numbers)})")
    return [line]


def _draw_importance(data: FigureInput) -> Figure:
    study = data.study
    assert study is not None  # _why_importance ran first
    items = sorted(study.importances.items(), key=lambda kv: (kv[1], kv[0]))  # largest drawn on top
    fig = _new_figure(COLUMN_IN, 0.7 + 0.2 * len(items))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color=PALETTE[0], edgecolor="0.15", linewidth=0.5,
            height=0.65)
    ax.set_xlabel(f"importance for {metric_label(study.objective, None)}")
    return fig


_FIGURES: dict[str, tuple[Callable[[FigureInput], str], Callable[[FigureInput], Figure]]] = {
    "delta_m_vs_gflops": (_why_gflops, _draw_gflops),
    "task_change": (_why_task_change, _draw_task_change),
    "val_curves": (_why_curves, _draw_curves),
    "optuna_history": (_why_history, _draw_history),
    "optuna_importance": (_why_importance, _draw_importance),
}
