"""Render a ResultTable as LaTeX (booktabs), Markdown and CSV, in two layouts.

- results: one row per variant (the Δm reference first, published rows last, each with its citation
  key), one column per task's primary metric with ↑/↓, then Δm, parameters and GFLOPs; best value per
  column in bold, second underlined.
- ablation: the same rows with the switched config keys as ✓/✗ (or value) columns in front, as papers
  print ablations; written when rows differ in their config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from mtbench.metrics import metric_direction
from mtbench.metrics.meter import split_metric_name
from mtbench.report.aggregate import ResultTable

DASH_MD, DASH_TEX = "–", "--"
_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Column:
    """One numeric column: header text, summary column prefix, direction, decimals, ranked or not."""

    label: str
    prefix: str
    higher_is_better: bool
    decimals: int
    ranked: bool = True  # bold/underline the best two (metrics and Δm; not costs)
    signed: bool = False  # print a + sign (Δm)


@dataclass(frozen=True)
class Markup:
    """How one output format writes emphasis, ±, empty cells, a check mark and a cross."""

    bold: str
    underline: str
    pm: str
    dash: str
    check: str
    cross: str
    number: str = "{}"


LATEX = Markup(r"\mathbf{{{}}}", r"\underline{{{}}}", r" \pm ", DASH_TEX, r"\checkmark", r"$\times$", "${}$")
MARKDOWN = Markup("**{}**", "<u>{}</u>", " ± ", DASH_MD, "✓", "✗")


def metric_label(key: str) -> str:
    """Header text of a metric key: `semseg/mIoU` → "semseg mIoU", `sal/maxF-invpt` → "sal maxF (invpt)"."""
    base, variant = split_metric_name(key)
    text = base.replace("/", " ")
    return f"{text} ({variant})" if variant else text


def _decimals(values: pd.Series) -> int:
    """Two decimals for percent-scale numbers (46.36), four for fractions (0.5313)."""
    top = values.abs().max()
    return 2 if pd.notna(top) and top >= 1 else 4


def columns(table: ResultTable) -> list[Column]:
    """The numeric columns of the results layout, in order."""
    cols = [Column(metric_label(key), key, metric_direction(split_metric_name(key)[0]),
                   _decimals(table.summary[f"{key}_mean"])) for key in table.columns.values()]
    cols.append(Column("Δm (%)", "delta_m", True, 2, signed=True))
    for prefix, label in (("params_m", "Params (M)"), ("gflops", "GFLOPs")):
        if table.summary[prefix].notna().any():
            cols.append(Column(label, prefix, False, 2, ranked=False))
    return cols


def _values(table: ResultTable, col: Column) -> tuple[pd.Series, pd.Series]:
    """Means and stds of a column (costs have no std)."""
    if col.prefix in ("params_m", "gflops"):
        return table.summary[col.prefix], pd.Series(math.nan, index=table.summary.index)
    return table.summary[f"{col.prefix}_mean"], table.summary[f"{col.prefix}_std"]


def ranks(values: pd.Series, higher_is_better: bool, decimals: int) -> pd.Series:
    """1 for the best displayed value, 2 for the second, 0 otherwise; ties share a rank.

    Nothing is ranked with fewer than 2 values, and no second place with fewer than 3 rows.
    """
    shown = values.round(decimals)
    distinct = sorted(shown.dropna().unique(), reverse=higher_is_better)
    out = pd.Series(0, index=values.index)
    if shown.notna().sum() < 2 or len(distinct) < 2:
        return out
    out[shown == distinct[0]] = 1
    if shown.notna().sum() >= 3:
        out[shown == distinct[1]] = 2
    return out


def _number(mean: float, std: float, col: Column, markup: Markup, show_std: bool) -> str:
    shown = round(mean, col.decimals) or 0.0  # `or 0.0` turns -0.00 into 0.00
    text = f"{shown:{'+' if col.signed and shown else ''}.{col.decimals}f}"
    if show_std and pd.notna(std):
        text += f"{markup.pm}{std:.{col.decimals}f}"
    return text


def cells(table: ResultTable, cols: list[Column], markup: Markup, show_std: bool) -> list[list[str]]:
    """Formatted numeric cells, one list per summary row, with best bold and second underlined."""
    rows: list[list[str]] = [[] for _ in range(len(table.summary))]
    for col in cols:
        means, stds = _values(table, col)
        rank = ranks(means, col.higher_is_better, col.decimals) if col.ranked else pd.Series(0, index=means.index)
        for i, (mean, std, r) in enumerate(zip(means, stds, rank, strict=True)):
            if pd.isna(mean):
                rows[i].append(markup.dash)
                continue
            text = _number(mean, std, col, markup, show_std)
            if col.prefix == "gflops" and table.summary["kind"].iloc[i] == "published" \
                    and table.summary["input_size"].iloc[i] == "not stated":
                text += "^{\\dagger}" if markup is LATEX else "†"
            text = {1: markup.bold, 2: markup.underline}.get(int(r), "{}").format(text)
            rows[i].append(markup.number.format(text))
    return rows


def _row_label(table: ResultTable, label: str, latex: bool) -> str:
    cite = table.summary.at[label, "cite"]
    if latex:
        return latex_escape(label) + (f"~\\cite{{{cite}}}" if cite else "")
    return label.replace("|", "\\|") + (f" [{cite}]" if cite else "")


def cost_sentence(table: ResultTable) -> str:
    """Say how parameters and GFLOPs were counted (the field prints GFLOPs without an input size)."""
    runs = table.summary[table.summary["kind"] == "run"]
    if runs["gflops"].isna().all():
        return ""
    sizes = sorted({s for joined in runs["input_size"].dropna() for s in str(joined).split(",") if s})
    text = f"GFLOPs: fvcore, one image of {' / '.join(sizes) or 'unrecorded size'} (mtbench's counting handles)."
    if (table.summary["kind"] == "published").any():
        text += " Published rows: numbers as printed by their authors († input size or tool not stated)."
    return text


def delta_sentence(table: ResultTable) -> str:
    """Say what Δm covers (plain text; captions and Markdown notes share it)."""
    if table.delta_missing:
        return f"No Δm: {table.delta_missing}."
    text = (f"Δm (%): each seed run against {table.reference.description} over {', '.join(table.delta_tasks)}; "
            "positive is better. 95% t-intervals over seeds of every number are in results.csv.")
    if table.excluded:
        text += " Left out of Δm: " + "; ".join(f"{t} ({why})" for t, why in table.excluded.items()) + "."
    return text


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (variant names, metric names)."""
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in text)


def _tex_text(text: str) -> str:
    """Plain text (with Δm, ±, ↑, †) as LaTeX."""
    out = latex_escape(text)
    for plain, tex in (("Δm", r"$\Delta_m$"), ("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"),
                       ("†", r"$^\dagger$"), ("✓", r"\checkmark"), ("✗", r"$\times$")):
        out = out.replace(plain, tex)
    return out


def _arrow(col: Column, latex: bool) -> str:
    if not col.ranked:
        return ""
    if latex:
        return r" $\uparrow$" if col.higher_is_better else r" $\downarrow$"
    return " ↑" if col.higher_is_better else " ↓"


def _header(col: Column, latex: bool) -> str:
    if latex:
        text = r"$\Delta_m$ (\%)" if col.prefix == "delta_m" else latex_escape(col.label)
        return text + _arrow(col, True)
    return col.label + _arrow(col, False)


def _axis_cells(table: ResultTable, markup: Markup) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the switched config keys: ✓/✗ for booleans, the value otherwise."""
    keys = list(table.axes.columns)
    short = {k: k.split(".")[-2 if k.endswith(".name") else -1] for k in keys}  # model.name -> model
    for k in keys:
        if list(short.values()).count(short[k]) > 1:
            short[k] = ".".join(k.split(".")[-2:])
    rows = []
    for label in table.summary.index[table.summary["kind"] == "run"]:
        row = []
        for k in keys:
            value = table.axes.at[label, k]
            text = "" if pd.isna(value) else str(value)
            row.append(markup.check if text.lower() in TRUE else markup.cross if text.lower() in FALSE
                       else latex_escape(text) if markup is LATEX and text else text or markup.dash)
        rows.append(row)
    return [short[k] for k in keys], rows


def _tex_tabular(header: list[str], body: list[list[str]], n_runs: int, align: str) -> list[str]:
    lines = [f"  \\begin{{tabular}}{{{align}}}", r"    \toprule", "    " + " & ".join(header) + r" \\", r"    \midrule"]
    for i, row in enumerate(body):
        if i == n_runs and i:
            lines.append(r"    \midrule")
        lines.append("    " + " & ".join(row) + r" \\")
    return [*lines, r"    \bottomrule", r"  \end{tabular}"]


def _tex_table(caption: str, label: str, tabular: list[str]) -> str:
    lines = ["% Generated by `mtbench report` from MLflow runs; needs \\usepackage{booktabs} (and amssymb for "
             "\\checkmark).", r"\begin{table}[t]", r"  \centering", r"  \small", f"  \\caption{{{caption}}}",
             f"  \\label{{tab:{label}}}", *tabular, r"\end{table}"]
    return "\n".join(lines) + "\n"


def _caption(table: ResultTable, show_std: bool, what: str, costs: bool = True) -> str:
    stat = "mean $\\pm$ std over seeds" if show_std else "mean over seeds"
    text = (f"{what} of {latex_escape(table.name)} (test split, {latex_escape(table.dataset_variant)}): {stat}; "
            "best in bold, second underlined. " + _tex_text(delta_sentence(table)))
    return f"{text} {_tex_text(cost_sentence(table))}".strip() if costs else text


def _tex_label(table: ResultTable, suffix: str = "") -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", table.name) + suffix


def to_latex(table: ResultTable, show_std: bool = True) -> str:
    """Render the results layout as a booktabs `table` environment."""
    cols = columns(table)
    header = ["Method", r"\#seeds", *(_header(c, True) for c in cols)]
    body = [[_row_label(table, label, True), "" if pd.isna(n) else str(int(n)), *c]
            for label, n, c in zip(table.summary.index, table.summary["n_seeds"],
                                   cells(table, cols, LATEX, show_std), strict=True)]
    n_runs = int((table.summary["kind"] == "run").sum())
    tabular = _tex_tabular(header, body, n_runs, "l" + "r" * (len(cols) + 1))
    return _tex_table(_caption(table, show_std, "Test results"), _tex_label(table), tabular)


def to_latex_ablation(table: ResultTable, show_std: bool = True) -> str:
    """Render the ablation layout (✓/✗ columns of the switched components) as a booktabs table."""
    cols = [c for c in columns(table) if c.ranked]
    names, switches = _axis_cells(table, LATEX)
    runs = table.summary["kind"] == "run"
    numbers = [c for c, is_run in zip(cells(table, cols, LATEX, show_std), runs, strict=True) if is_run]
    header = ["Variant", *(latex_escape(n) for n in names), *(_header(c, True) for c in cols)]
    body = [[latex_escape(label), *s, *c] for label, s, c in zip(table.summary.index[runs], switches, numbers,
                                                                  strict=True)]
    tabular = _tex_tabular(header, body, len(body), "l" + "c" * len(names) + "r" * len(cols))
    return _tex_table(_caption(table, show_std, "Ablation", costs=False), _tex_label(table, "-ablation"), tabular)


def standalone_latex(*fragments: str) -> str:
    """A minimal article around table fragments that pdflatex compiles on its own (landscape: tables are wide)."""
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{amssymb}\n"
            "\\usepackage[landscape,margin=1.5cm]{geometry}\n\\pagestyle{empty}\n\\begin{document}\n"
            + "\n".join(fragments) + "\\end{document}\n")


def _md_table(header: list[str], rows: list[list[str]], aligns: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def to_markdown(table: ResultTable, show_std: bool = True, omitted: pd.DataFrame | None = None) -> str:
    """Render the results layout (and the ablation layout, when there is one) with their notes."""
    cols = columns(table)
    header = ["variant", "#seeds", *(_header(c, False) for c in cols)]
    rows = [[_row_label(table, label, False), "" if pd.isna(n) else str(int(n)), *c]
            for label, n, c in zip(table.summary.index, table.summary["n_seeds"],
                                   cells(table, cols, MARKDOWN, show_std), strict=True)]
    stat = "mean ± std over seeds (sample std)" if show_std else "mean over seeds"
    lines = [f"## {table.name}", "", *_md_table(header, rows, [":---", *["---:"] * (len(header) - 1)]), "",
             f"- Test metrics of FINISHED runs on {table.dataset_variant}: {stat}; ↑ higher is better, ↓ lower is "
             "better; best in bold, second underlined.", f"- {delta_sentence(table)}"]
    if cost_sentence(table):
        lines.append(f"- {cost_sentence(table)}")
    lines += [f"- Note: {r}." for r in table.remarks]
    lines += [f"- Published rows not comparable, left out ({why}): {', '.join(rows)}."
              for why, rows in not_comparable_by_reason(table).items()]
    if omitted is not None and not omitted.empty:
        lines.append(f"- Not in the table ({len(omitted)} run(s) that did not finish): " + "; ".join(
            f"{r.label} seed {r.seed if pd.notna(r.seed) else '?'} {'PRUNED' if r.pruned else r.status} ({r.run_id})"
            for r in omitted.itertuples()) + ".")
    if not table.axes.empty:
        lines += ["", f"### {table.name}: ablation", "", *_ablation_markdown(table, show_std)]
    return "\n".join(lines) + "\n"


def _ablation_markdown(table: ResultTable, show_std: bool) -> list[str]:
    cols = [c for c in columns(table) if c.ranked]
    names, switches = _axis_cells(table, MARKDOWN)
    runs = table.summary["kind"] == "run"
    numbers = [c for c, is_run in zip(cells(table, cols, MARKDOWN, show_std), runs, strict=True) if is_run]
    rows = [[label, *s, *c] for label, s, c in zip(table.summary.index[runs], switches, numbers, strict=True)]
    header = ["variant", *names, *(_header(c, False) for c in cols)]
    return _md_table(header, rows, [":---", *[":---:"] * len(names), *["---:"] * len(cols)])


def not_comparable_by_reason(table: ResultTable) -> dict[str, list[str]]:
    """The published rows left out, grouped by the reason (often one reason for all: other data)."""
    groups: dict[str, list[str]] = {}
    for row, why in table.not_comparable.items():
        groups.setdefault(why, []).append(row)
    return groups


def to_csv(table: ResultTable) -> str:
    """The tidy per-row summary at full precision: every metric, not only the primary ones."""
    return table.summary.reset_index().to_csv(index=False)


def ablation_csv(table: ResultTable) -> str:
    """Switched config keys (raw values) beside each row's summary."""
    runs = table.summary[table.summary["kind"] == "run"]
    return table.axes.join(runs).reset_index(names="label").to_csv(index=False)
