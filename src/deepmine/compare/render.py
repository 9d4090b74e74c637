"""A comparison as the terminal shows it (rich) and as files: CSV, Markdown, LaTeX, JSON.

The tables are pandas DataFrames, so each file format is pandas' own writer (`to_csv`,
`to_markdown` through tabulate, `to_latex` through jinja2); JSON holds everything, including
every run id and value, for whoever wants to redo the numbers.

It is one module on purpose: every format renders the same two tables (groups, contrasts)
with the same number formatting, which must not drift between formats.
"""

from __future__ import annotations

import json
import math

from deepmine.compare.table import Comparison, Contrast, short

FORMATS = {"csv": ".csv", "markdown": ".md", "latex": ".tex", "json": ".json"}


def number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def mean_std(stats) -> str:
    if not stats.n:
        return "—"
    return f"{number(stats.mean)} ± {number(stats.std)}"


def min_max(stats) -> str:
    return f"{number(stats.min)} – {number(stats.max)}" if stats.n else "—"


def verdict(item: Contrast) -> str:
    d = item.difference
    if d.p_value is None:
        return d.note or "no test"
    said = "p < 0.05" if d.significant else "not significant"
    return f"{said} ({d.note})" if d.note else said


def interval(item: Contrast) -> str:
    d = item.difference
    if d.ci_low is None:
        return "—"
    return f"[{number(d.ci_low)}, {number(d.ci_high)}]"


def title(comparison: Comparison) -> str:
    labels = [g.label for g in comparison.groups]
    if len(labels) == 1:
        return f"compare {labels[0]}"
    return "compare " + " vs ".join(labels)


def headline(comparison: Comparison) -> str:
    c = comparison
    better = "higher" if c.direction == "max" else "lower"
    groups = f"{len(c.groups)} group{'s' if len(c.groups) > 1 else ''}"
    return (
        f"{c.runs} run{'s' if c.runs > 1 else ''} in {groups}, ranked by {c.metrics[0]} "
        f"({better} is better)\nselected: {c.selection.described}"
    )


def test_name(comparison: Comparison) -> str:
    return "paired t-test over common seeds" if comparison.paired else "Welch's t-test"


# --- tables -------------------------------------------------------------------------------


def groups_frame(comparison: Comparison, wide: bool = False):
    """One row per group, best first. `wide` (CSV): every number in its own column, the
    differing keys as columns and the run ids; otherwise "mean ± std" cells for reading."""
    import pandas as pd

    rows = []
    for rank, group in enumerate(comparison.groups, 1):
        row = {"#": rank, "group": group.label, "n": len(group.runs)}
        if wide:
            row["group_key"] = group.key
            row.update({k: group.config.get(k) for k in comparison.differing})
        for metric in comparison.metrics:
            stats = group.stats[metric]
            if wide:
                row.update(
                    {
                        f"{metric} n": stats.n,
                        f"{metric} mean": stats.mean,
                        f"{metric} std": stats.std,
                        f"{metric} min": stats.min,
                        f"{metric} max": stats.max,
                    }
                )
                found = _contrast(comparison, group, metric)
                d = found.difference if found else None
                row.update(
                    {
                        f"{metric} diff best-this": d.diff if d else None,
                        f"{metric} ci_low": d.ci_low if d else None,
                        f"{metric} ci_high": d.ci_high if d else None,
                        f"{metric} p": d.p_value if d else None,
                    }
                )
            else:
                row[f"{metric} (mean ± std)"] = mean_std(stats)
                row[f"{metric} min – max"] = min_max(stats)
        if wide:
            row["run_ids"] = " ".join(r.run_id for r in group.runs)
        rows.append(row)
    return pd.DataFrame(rows)


def _contrast(comparison: Comparison, group, metric: str) -> Contrast | None:
    for item in comparison.contrasts:
        if item.other is group and item.metric == metric:
            return item
    return None


def in_section(key: str) -> str:
    """A key as listed under its config group: `optimizer.lr` -> `lr`."""
    return key.split(".", 1)[1] if "." in key else key


def differing_frame(comparison: Comparison):
    import pandas as pd

    rows = []
    for section, keys in comparison.by_config_group().items():
        for key in keys:
            row = {"config": section, "key": in_section(key)}
            row.update(
                {f"#{i}": short(key, g.config.get(key)) for i, g in enumerate(comparison.groups, 1)}
            )
            rows.append(row)
    return pd.DataFrame(rows)


def contrasts_frame(comparison: Comparison):
    import pandas as pd

    rows = []
    for item in comparison.contrasts:
        row = {"metric": item.metric, "#1 vs": f"#{_rank(comparison, item.other)}"}
        row["group"] = item.other.label
        if comparison.paired:
            row["pairs"] = len(item.seeds or [])
        row.update(
            {
                "difference (best − other)": number(item.difference.diff),
                "95% CI": interval(item),
                "p": number(item.difference.p_value),
                "verdict": verdict(item),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _rank(comparison: Comparison, group) -> int:
    return next(i for i, g in enumerate(comparison.groups, 1) if g is group)


def not_counted_frame(comparison: Comparison):
    import pandas as pd

    return pd.DataFrame(
        [
            {"run": r.run_id, "name": r.name, "status": r.counted_status, "error": r.error}
            for r in comparison.selection.not_counted
        ]
    )


def skipped_line(comparison: Comparison) -> str:
    skipped = comparison.selection.skipped
    if not skipped:
        return ""
    return "skipped: " + ", ".join(f"{n} {why}(s)" for why, n in sorted(skipped.items()))


# --- formats -------------------------------------------------------------------------------


def to_markdown(comparison: Comparison) -> str:
    c = comparison
    parts = [f"# {title(c)}", "", headline(c).replace("\n", ".  \n") + ".", ""]
    parts += ["## Groups", "", groups_frame(c).to_markdown(index=False, disable_numparse=True), ""]
    if c.differing:
        parts += [
            "## Config keys that differ",
            "",
            differing_frame(c).to_markdown(index=False, disable_numparse=True),
        ]
        parts.append("")
    parts += [c.folded() + ".", ""]
    if c.contrasts:
        parts += [
            f"## Is the difference real? (#1 vs each group, {test_name(c)}, 95% CI)",
            "",
            contrasts_frame(c).to_markdown(index=False, disable_numparse=True),
            "",
        ]
    if c.selection.not_counted:
        parts += ["## Not counted (did not finish)", ""]
        parts += [not_counted_frame(c).to_markdown(index=False, disable_numparse=True), ""]
    if skipped_line(c):
        parts += [skipped_line(c) + ".", ""]
    parts += ["## Runs", ""]
    for rank, group in enumerate(c.groups, 1):
        runs = ", ".join(f"`{r.run_id}` (seed {r.seed})" for r in group.runs)
        parts.append(f"- #{rank} {group.label} (group `{group.key}`): {runs}")
    return "\n".join(parts) + "\n"


def to_latex(comparison: Comparison) -> str:
    c = comparison
    lines = [f"% deepmine {title(c)}: {headline(c).replace(chr(10), '; ')}"]
    lines.append(groups_frame(c).to_latex(index=False, escape=True))
    if c.contrasts:
        lines.append(f"% #1 vs each group: {test_name(c)}, 95% CI")
        tests = contrasts_frame(c).to_latex(index=False, escape=True)
        lines.append(tests.replace("p < 0.05", "$p < 0.05$"))  # "<" is "¡" in OT1 text
    return "\n".join(lines)


def to_json(comparison: Comparison) -> dict:
    c = comparison

    def stats_of(group, metric):
        s = group.stats[metric]
        return {
            "n": s.n,
            "mean": s.mean,
            "std": s.std,
            "min": s.min,
            "max": s.max,
            "values": {r.run_id: v for r, v in group.points(metric)},
        }

    return {
        "title": title(c),
        "selection": c.selection.described,
        "metrics": c.metrics,
        "direction": c.direction,
        "paired": c.paired,
        "test": test_name(c),
        "groups": [
            {
                "rank": rank,
                "label": g.label,
                "group_key": g.key,
                "config": {k: g.config.get(k) for k in c.differing},
                "runs": [{"run_id": r.run_id, "name": r.name, "seed": r.seed} for r in g.runs],
                "stats": {m: stats_of(g, m) for m in c.metrics},
            }
            for rank, g in enumerate(c.groups, 1)
        ],
        "differing_keys": c.by_config_group(),
        "same_in_all_groups": c.same,
        "differences": [
            {
                "metric": item.metric,
                "best": item.best.label,
                "other": item.other.label,
                "diff": item.difference.diff,
                "ci_low": item.difference.ci_low,
                "ci_high": item.difference.ci_high,
                "p_value": item.difference.p_value,
                "test": item.difference.test,
                "note": item.difference.note,
                "seeds": item.seeds,
            }
            for item in c.contrasts
        ],
        "not_counted": [
            {"run_id": r.run_id, "name": r.name, "status": r.counted_status, "error": r.error}
            for r in c.selection.not_counted
        ],
        "skipped": dict(c.selection.skipped),
    }


def render(comparison: Comparison, fmt: str) -> str:
    if fmt == "csv":
        return groups_frame(comparison, wide=True).to_csv(index=False)
    if fmt == "markdown":
        return to_markdown(comparison)
    if fmt == "latex":
        return to_latex(comparison)
    return json.dumps(to_json(comparison), indent=2, default=str) + "\n"


# --- terminal -------------------------------------------------------------------------------


def print_terminal(comparison: Comparison, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    c = comparison
    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: no terminal to wrap the tables for
            console = Console(width=120)
    console.print(f"[bold]{title(c)}[/]\n{headline(c)}")
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("group")
    table.add_column("n", justify="right")
    for metric in c.metrics:
        table.add_column(f"{metric}\nmean ± std\n[dim]min – max[/]", justify="right")
    for rank, group in enumerate(c.groups, 1):
        cells = []
        for metric in c.metrics:
            stats = group.stats[metric]
            cell = f"{mean_std(stats)}\n[dim]{min_max(stats)}[/]"
            cells.append(f"[bold]{cell}[/]" if rank == 1 else cell)
        table.add_row(str(rank), group.label, str(len(group.runs)), *cells)
    console.print(table)
    if c.differing:
        keys = Table(title="config keys that differ", title_justify="left")
        keys.add_column("config")
        keys.add_column("key")
        for rank in range(1, len(c.groups) + 1):
            keys.add_column(f"#{rank}")
        for section, names in c.by_config_group().items():
            for i, key in enumerate(names):
                values = [short(key, g.config.get(key)) for g in c.groups]
                keys.add_row(section if i == 0 else "", in_section(key), *values)
        console.print(keys)
    console.print(c.folded())
    if c.contrasts:
        tests = Table(
            title=f"is the difference real? #1 vs each group ({test_name(c)}, 95% CI)",
            title_justify="left",
        )
        for column in ("metric", "vs", *(["pairs"] if c.paired else [])):
            tests.add_column(column)
        for column in ("best − other", "95% CI", "p"):
            tests.add_column(column, justify="right")
        tests.add_column("verdict")
        for item in c.contrasts:
            pairs = [str(len(item.seeds or []))] if c.paired else []
            tests.add_row(
                item.metric,
                f"#{_rank(c, item.other)}",
                *pairs,
                number(item.difference.diff),
                interval(item),
                number(item.difference.p_value),
                verdict(item),
            )
        console.print(tests)
    if c.selection.not_counted:
        apart = Table(title="not counted (did not finish)", title_justify="left")
        for column in ("run", "name", "status", "error"):
            apart.add_column(column)
        for run in c.selection.not_counted:
            apart.add_row(run.run_id, run.name, run.counted_status, run.error[:120])
        console.print(apart)
    if skipped_line(c):
        console.print(skipped_line(c))
