"""`deepmine compare`: select runs, group them by configuration, print, write, plot, record.

Every check of the input (store, selection, metrics, output file) happens before anything is
written, so a mistake costs one line and leaves no half-made comparison run in the store. With
`--log` the comparison itself becomes an MLflow run (tag `deepmine.compare=true`, skipped by
later comparisons) whose description is the Markdown table: shareable as a UI link.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deepmine.compare.select import COMPARE_TAG
from deepmine.errors import DeepmineError


@dataclass
class Options:
    run_ids: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    filter_string: str | None = None
    tracking_uri: str | None = None
    metrics: list[str] = field(default_factory=list)
    direction: str | None = None
    paired: bool = False
    format: str | None = None
    output: str | None = None
    plots: str | None = None
    log: bool = False
    log_experiment: str | None = None


def output_format(options: Options) -> str | None:
    """`--format`, else the format `--output`'s suffix names."""
    from deepmine.compare.render import FORMATS

    if options.format or not options.output:
        return options.format
    suffix = Path(options.output).suffix.lower()
    by_suffix = {ext: name for name, ext in FORMATS.items()} | {".markdown": "markdown"}
    if suffix not in by_suffix:
        raise DeepmineError(
            f"cannot tell the format of --output {options.output} from its suffix",
            "name it .csv, .md, .tex or .json, or pass --format csv|markdown|latex|json",
        )
    return by_suffix[suffix]


def run(options: Options) -> int:
    from deepmine.compare import render
    from deepmine.compare.select import resolve_tracking_uri, select
    from deepmine.compare.table import compare
    from deepmine.tracking.doctor import open_store

    if options.log_experiment and not options.log:
        raise DeepmineError(
            "--log-experiment names where --log records the comparison",
            "add --log, or drop --log-experiment",
        )
    fmt = output_format(options)
    store = open_store(resolve_tracking_uri(options.tracking_uri, options.sweeps))
    selection = select(
        store, options.experiments, options.sweeps, options.run_ids, options.filter_string
    )
    comparison = compare(selection, options.metrics or None, options.direction, options.paired)
    # the table in a format on stdout (for a pipe): what else is said goes to stderr
    to_stdout = bool(fmt and not options.output)
    say = functools.partial(print, file=sys.stderr if to_stdout else sys.stdout)
    if to_stdout:
        print(render.render(comparison, fmt), end="")
    else:
        render.print_terminal(comparison)
    if options.output:
        out = Path(options.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render.render(comparison, fmt))
        say(f"wrote {out}")
    plots = []
    if options.plots:
        from deepmine.compare.curves import write_plots

        plots = write_plots(store, comparison, Path(options.plots))
        for path in plots:
            say(f"wrote {path}")
    if options.log:
        record(store, comparison, options, plots, say)
    return 0


def record(store, comparison, options: Options, plots: list[Path], say=print) -> None:
    """The comparison as a FINISHED MLflow run: Markdown as its description and artifact, the
    JSON, both PNGs, and params saying what was compared."""
    from deepmine.compare import render
    from deepmine.compare.curves import write_plots
    from deepmine.tracking.run import recorded_run

    experiment = options.log_experiment or comparison.selection.experiments[0]
    markdown = render.to_markdown(comparison)
    name = run_name(comparison)
    tags = {
        COMPARE_TAG: "true",
        "mlflow.note.content": markdown,
        "mlflow.source.name": "deepmine compare",
        "deepmine.compare.runs": " ".join(r.run_id for g in comparison.groups for r in g.runs),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        recorded_run(store, experiment, name, tags, heartbeat_every_s=0) as run,
    ):
        if not plots:
            plots = write_plots(store, comparison, Path(tmp))
        run.log_params(params(comparison))
        run.log_text(markdown, "compare/compare.md")
        run.log_text(render.render(comparison, "json"), "compare/compare.json")
        for path in plots:
            run.log_file(path, "compare")
    say(f"MLflow run    {run.run_id} (experiment '{experiment}'): {name}")
    if store.uri.startswith(("http://", "https://")):
        say(f"open the run  {store.uri.rstrip('/')}/{run.ui_path()}")
    else:
        say(f"open the UI   deepmine ui   (or: mlflow ui --backend-store-uri {store.uri})")
        say(f"then the run  http://127.0.0.1:5000/{run.ui_path()}")


def run_name(comparison) -> str:
    """ "compare lr=0.01 vs lr=0.001": the differing values by their last key part."""
    import re

    def brief(label: str) -> str:
        return re.sub(r"(?<![\w.])[\w]+\.([\w.]*\.)?(?=\w+=)", "", label)

    labels = [brief(g.label) for g in comparison.groups]
    name = "compare " + " vs ".join(labels)
    return name if len(name) <= 120 else f"compare {len(labels)} groups: {labels[0]} vs …"


def params(comparison) -> dict[str, str]:
    c = comparison
    found = {
        "selection": c.selection.described,
        "metrics": ", ".join(c.metrics),
        "direction": c.direction,
        "test": "paired" if c.paired else "welch",
        "groups": str(len(c.groups)),
        "runs": str(c.runs),
        "not_counted": str(len(c.selection.not_counted)),
        "differing_keys": ", ".join(c.differing) or "-",
    }
    for rank, group in enumerate(c.groups, 1):
        found[f"group.{rank}"] = f"{group.label} (n={len(group.runs)}, {group.key})"
    return {f"compare.{k}": v[:6000] for k, v in found.items()}
