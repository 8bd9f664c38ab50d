"""Aggregate per-seed results into one table per experiment, with Δm, as LaTeX, Markdown and CSV.

One row per variant: each task's primary metric as mean ± std over seeds (sample std, ddof=1),
the number of seeds, and Δm (Maninis et al.; PROTOCOLS.md) computed for every seed run against the
mean of the reference variant, then aggregated the same way.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mtbench.errors import MtbenchError
from mtbench.metrics import delta_m
from mtbench.metrics.seed_stats import summarize_seeds
from mtbench.report.collect import TASK_ORDER, metric_columns
from mtbench.report.published import PublishedRow
from mtbench.tasks import get_task

DASH_MD, DASH_TEX = "–", "--"
FILES = ("results.tex", "results_standalone.tex", "results.md", "results.csv")
_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass
class ResultTable:
    """One experiment's aggregated results: what every renderer reads.

    `summary` has one row per variant (reference first) and the CSV's columns: n_seeds,
    `<metric>_mean` / `<metric>_std` for every test metric, delta_m_mean, delta_m_std, seeds,
    checkpoint, run_ids.
    """

    experiment: str
    reference: str
    summary: pd.DataFrame
    metrics: list[str]  # every test metric, table order
    tasks: list[str]  # tasks with a primary metric, shown in .tex/.md
    delta_tasks: list[str]  # tasks Δm covers (empty: no Δm)
    excluded: dict[str, str] = field(default_factory=dict)  # task -> why Δm leaves it out
    delta_missing: str = ""  # why there is no Δm at all
    remarks: list[str] = field(default_factory=list)  # other caveats (merged runs, mixed checkpoints)


def _fmt_seeds(seeds: pd.Series) -> str:
    return ";".join(str(s) for s in seeds.dropna())


def _join_checkpoints(values: pd.Series) -> str:
    return ",".join(sorted({c for joined in values for c in joined.split(",") if c}))


def _missing_detail(seeds: pd.DataFrame, metric: str) -> str:
    """Name the variants and seeds that lack `metric`, e.g. "mtl (seed 0); single_task (seeds 0, 1)"."""
    lacking = seeds[seeds["variant"].notna() & seeds[metric].isna()].groupby("variant", sort=True)["seed"]
    return "; ".join(f"{v} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s.dropna())) or '?'})"
                     for v, s in lacking)


def summarize(seeds: pd.DataFrame, reference_variant: str = "single_task",
              published: PublishedRow | None = None) -> ResultTable:
    """Aggregate one experiment's `collect.seed_results` rows into a ResultTable.

    Δm is taken against the mean of the `reference_variant` runs, or against a `published` row
    when one is given (then over the tasks that both the runs and the row report).
    """
    experiment = str(seeds["experiment"].iloc[0])
    metrics = metric_columns(seeds)
    tasks = [t for t in TASK_ORDER if get_task(t).primary_metric in metrics]
    variants = sorted(seeds["variant"].unique(), key=lambda v: (v != reference_variant, v))
    groups = seeds.groupby("variant")

    summary = pd.DataFrame(index=pd.Index(variants, name="variant"))
    summary["n_seeds"] = groups.size()
    for m in metrics:
        summary[f"{m}_mean"] = groups[m].mean()
        summary[f"{m}_std"] = groups[m].std(ddof=1)

    for m in metrics:
        intervals = groups[m].agg(lambda v: _interval(v.dropna()))
        summary[f"{m}_ci95_low"] = [lo for lo, _ in intervals.reindex(summary.index)]
        summary[f"{m}_ci95_high"] = [hi for _, hi in intervals.reindex(summary.index)]

    label = f"{published.name} (published)" if published else reference_variant
    table = ResultTable(experiment, label, summary, metrics, tasks, delta_tasks=[])
    reference = seeds[seeds["variant"] == reference_variant]
    if published is not None:
        reference = pd.DataFrame([published.metrics])
    if reference.empty:
        table.delta_missing = (f"the experiment has no FINISHED runs of the reference variant "
                               f"{reference_variant!r}; run it, or choose another reference variant")
    else:
        for t in tasks:
            metric = get_task(t).primary_metric
            if metric not in reference.columns:
                table.excluded[t] = f"{metric} is not in the reference {label}"
            elif seeds[metric].notna().all():
                table.delta_tasks.append(t)
            else:
                table.excluded[t] = f"{metric} not logged by every run; missing for {_missing_detail(seeds, metric)}"
        for t in TASK_ORDER:
            if t not in tasks and any(m.startswith(f"{t}/") for m in metrics):
                table.excluded[t] = f"its primary metric {get_task(t).primary_metric} was not logged"
        if not table.delta_tasks:
            table.delta_missing = "no task's primary metric is logged by every run"
    per_seed = pd.Series(math.nan, index=seeds.index)
    if table.delta_tasks:
        keys = [get_task(t).primary_metric for t in table.delta_tasks]
        ref = {k: float(reference[k].mean()) for k in keys}
        per_seed = seeds.apply(lambda row: delta_m({k: float(row[k]) for k in keys}, ref,
                                                   tasks=table.delta_tasks), axis=1)
    summary["delta_m_mean"] = per_seed.groupby(seeds["variant"]).mean()
    summary["delta_m_std"] = per_seed.groupby(seeds["variant"]).std(ddof=1)
    delta_intervals = per_seed.groupby(seeds["variant"]).agg(lambda v: _interval(v.dropna()))
    summary["delta_m_ci95_low"] = [lo for lo, _ in delta_intervals.reindex(summary.index)]
    summary["delta_m_ci95_high"] = [hi for _, hi in delta_intervals.reindex(summary.index)]
    summary["seeds"] = groups["seed"].agg(_fmt_seeds)
    summary["checkpoint"] = groups["checkpoint"].agg(_join_checkpoints)
    summary["run_ids"] = groups["run_ids"].agg(";".join)

    merged = seeds[seeds["n_runs"] > 1]
    if not merged.empty:
        which = ", ".join(f"{v} seed {s}" for v, s in zip(merged["variant"], merged["seed"], strict=True))
        table.remarks.append(f"several runs share a variant and seed and were merged, the later run winning "
                             f"per metric: {which}")
    if (summary["checkpoint"].str.contains(",")).any() or summary["checkpoint"].nunique() > 1:
        table.remarks.append("runs were tested on different checkpoints (final vs best_val); see results.csv")
    return table


def _interval(values: pd.Series) -> tuple[float, float]:
    """95% t-interval of per-seed values (NaN with fewer than 2 seeds)."""
    if len(values) == 0:
        return math.nan, math.nan
    summary = summarize_seeds(values.tolist())
    return summary.ci_low, summary.ci_high


def _best(values: pd.Series, higher_is_better: bool, decimals: int) -> float | None:
    """Return the best displayed value of a column, or None when nothing is worth bolding."""
    shown = values.dropna().round(decimals)
    if len(shown) < 2:
        return None
    return float(shown.max() if higher_is_better else shown.min())


def _decimals(values: pd.Series) -> int:
    """Two decimals for percent-scale numbers (46.36), four for fractions (0.5313)."""
    top = values.abs().max()
    return 2 if pd.notna(top) and top >= 1 else 4


def _columns(table: ResultTable) -> list[tuple[str, str, bool, int]]:
    """Return (label, summary column prefix, higher_is_better, decimals) per numeric table column."""
    cols = []
    for t in table.tasks:
        spec = get_task(t)
        cols.append((spec.primary_metric, spec.primary_metric, spec.higher_is_better,
                     _decimals(table.summary[f"{spec.primary_metric}_mean"])))
    return [*cols, ("Δm (%)", "delta_m", True, 2)]


def _cells(table: ResultTable, bold: tuple[str, str], pm: str, dash: str, signed: set[str],
           wrap: str = "{}") -> list[list[str]]:
    """Return the formatted numeric cells, one list per variant."""
    rows: list[list[str]] = [[] for _ in range(len(table.summary))]
    for _, prefix, higher, d in _columns(table):
        means, stds = table.summary[f"{prefix}_mean"], table.summary[f"{prefix}_std"]
        best = _best(means, higher, d)
        for i, (mean, std) in enumerate(zip(means, stds, strict=True)):
            if pd.isna(mean):
                rows[i].append(dash)
                continue
            shown = round(mean, d) or 0.0  # `or 0.0` turns -0.00 into 0.00
            text = f"{shown:{'+' if prefix in signed and shown else ''}.{d}f}"
            if pd.notna(std):
                text += f"{pm}{std:.{d}f}"
            is_best = best is not None and round(mean, d) == best
            rows[i].append(wrap.format(bold[0] + text + bold[1] if is_best else text))
    return rows


def _delta_sentence(table: ResultTable) -> str:
    """Say what Δm covers (plain text; the caption and the Markdown notes share it)."""
    if table.delta_missing:
        return f"No Δm: {table.delta_missing}."
    if table.reference in table.summary.index:
        ref_n = int(table.summary.loc[table.reference, "n_seeds"])
        against = f"the mean of {table.reference} ({ref_n} seed{'s' if ref_n > 1 else ''})"
    else:
        against = table.reference
    text = (f"Δm (%): each seed run against {against} over {', '.join(table.delta_tasks)}; positive is better. "
            "95% t-intervals over seeds of every number are in results.csv.")
    if table.excluded:
        text += " Left out of Δm: " + "; ".join(f"{t} ({why})" for t, why in table.excluded.items()) + "."
    return text


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (variant names, metric names)."""
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: ResultTable) -> str:
    """Render a booktabs `table` environment (needs `\\usepackage{booktabs}`)."""
    cols = _columns(table)
    arrow = {True: r"$\uparrow$", False: r"$\downarrow$"}
    header = ["Variant", r"\#seeds"] + [
        (r"$\Delta_m$ (\%)" if prefix == "delta_m" else latex_escape(label)) + " " + arrow[higher]
        for label, prefix, higher, _ in cols]
    cells = _cells(table, (r"\mathbf{", "}"), r" \pm ", DASH_TEX, {"delta_m"}, wrap="${}$")
    body = [" & ".join([latex_escape(v), str(int(n)), *c]) + r" \\"
            for v, n, c in zip(table.summary.index, table.summary["n_seeds"], cells, strict=True)]
    caption = (f"Test results of {latex_escape(table.experiment)}: mean $\\pm$ std over seeds; best in bold. "
               + latex_escape(_delta_sentence(table)).replace("Δm", r"$\Delta_m$"))
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", table.experiment)
    lines = ["% Generated by `mtbench report` from MLflow runs; needs \\usepackage{booktabs}.",
             r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}", f"  \\label{{tab:{label}}}",
             f"  \\begin{{tabular}}{{l{'r' * (len(cols) + 1)}}}", r"    \toprule",
             "    " + " & ".join(header) + r" \\", r"    \midrule", *("    " + b for b in body),
             r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_standalone_latex(table: ResultTable) -> str:
    """Wrap `to_latex` in a minimal article that pdflatex compiles on its own (landscape: tables are wide)."""
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[landscape,margin=1.5cm]{geometry}\n"
            "\\pagestyle{empty}\n\\begin{document}\n" + to_latex(table) + "\\end{document}\n")


def to_markdown(table: ResultTable) -> str:
    """Render a Markdown table followed by its notes."""
    cols = _columns(table)
    header = ["variant", "#seeds"] + [f"{label} {'↑' if higher else '↓'}" for label, _, higher, _ in cols]
    cells = _cells(table, ("**", "**"), " ± ", DASH_MD, {"delta_m"})
    rows = [[v.replace("|", "\\|"), str(int(n)), *c]
            for v, n, c in zip(table.summary.index, table.summary["n_seeds"], cells, strict=True)]
    lines = [f"## {table.experiment}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|",
             *("| " + " | ".join(r) + " |" for r in rows), "",
             "- Test metrics of FINISHED runs: mean ± std over seeds (sample std); ↑ higher is better, "
             "↓ lower is better; best in bold.",
             f"- {_delta_sentence(table)}"]
    lines += [f"- Note: {r}." for r in table.remarks]
    return "\n".join(lines) + "\n"


def to_csv(table: ResultTable) -> str:
    """Render the tidy per-variant summary (full precision; every metric, not only primary ones)."""
    return table.summary.reset_index().to_csv(index=False)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tables(table: ResultTable, folder: Path) -> list[Path]:
    """Write results.tex, results_standalone.tex, results.md and results.csv under `folder`."""
    texts = (to_latex(table), to_standalone_latex(table), to_markdown(table), to_csv(table))
    paths = [folder / name for name in FILES]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in zip(paths, texts, strict=True):
            _write_atomic(path, text)
    except OSError as exc:
        raise MtbenchError(f"cannot write the report to {str(folder)!r}: {exc.strerror or exc}. Choose another "
                           "output folder (--out) or fix its permissions.") from None
    return paths
