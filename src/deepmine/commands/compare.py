"""`deepmine compare`: configurations over seeds, grouped, with significance and curves (the
work is in `deepmine.compare`)."""

from __future__ import annotations


def run(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="deepmine compare",
        description="compare configurations over seeds: grouped table, significance, curves",
    )
    parser.add_argument("run_ids", nargs="*", help="MLflow run ids to compare")
    parser.add_argument(
        "--experiment", action="append", default=[], help="every run of an experiment (repeatable)"
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        help="a sweep's children: its folder (deepmine-sweep.json) or parent run id (repeatable)",
    )
    parser.add_argument("--filter", help="an MLflow search filter, e.g. \"params.seed = '0'\"")
    parser.add_argument(
        "--tracking-uri",
        help="the store (default: MLFLOW_TRACKING_URI, a sweep folder's store, the project's)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        help="a metric to compare (repeatable; default: optimized_metric and test/<monitor>)",
    )
    parser.add_argument(
        "--direction", choices=["max", "min"], help="which is better (default: task.mode)"
    )
    parser.add_argument("--paired", action="store_true", help="paired t-test over common seeds")
    parser.add_argument("--format", choices=["csv", "markdown", "latex", "json"])
    parser.add_argument("--output", help="write the table there (format from --format or suffix)")
    parser.add_argument("--plots", help="a folder for curves.png and final_metric.png")
    parser.add_argument("--log", action="store_true", help="record the comparison as an MLflow run")
    parser.add_argument("--log-experiment", help="with --log: its experiment (default: the runs')")
    ns = parser.parse_args(args)
    from deepmine.compare.command import Options
    from deepmine.compare.command import run as compare_runs

    return compare_runs(
        Options(
            run_ids=ns.run_ids,
            experiments=ns.experiment,
            sweeps=ns.sweep,
            filter_string=ns.filter,
            tracking_uri=ns.tracking_uri,
            metrics=ns.metric,
            direction=ns.direction,
            paired=ns.paired,
            format=ns.format,
            output=ns.output,
            plots=ns.plots,
            log=ns.log,
            log_experiment=ns.log_experiment,
        )
    )
