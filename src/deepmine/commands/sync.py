"""`deepmine sync`: copy the runs of the offline spool to the tracking store they belong to.

Why a command of its own: runs recorded with `logger.offline=true`, or failed over to the spool
because the server was gone (`logger.failover=true`), must reach the team's server without
anyone re-running them; `deepmine.tracking.sync` does the copying, once per run however often
it is started or interrupted. The target is checked (reachable, login accepted) before the
source is even opened, so a refused sync writes nothing anywhere.
"""

from __future__ import annotations


def run(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="deepmine sync",
        description="copy the runs of an offline spool (or any MLflow store) to a tracking store",
    )
    parser.add_argument(
        "source",
        nargs="?",
        help="the spool folder, an SQLite store or a store URI (default: logger.spool_dir)",
    )
    parser.add_argument(
        "--to",
        help="the target tracking URI (default: the store each run was meant for, else "
        "logger.tracking_uri)",
    )
    parser.add_argument("--tracking-uri", help=argparse.SUPPRESS)  # the CLI's store option
    parser.add_argument(
        "--register",
        action="store_true",
        help="register the copied models as new versions on the target too",
    )
    ns = parser.parse_args(args)
    import os

    # a progress bar per downloaded run would bury the one line per run that sync prints
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from deepmine.errors import DeepmineError
    from deepmine.tracking.spool import source_uri
    from deepmine.tracking.store import _shown, connect
    from deepmine.tracking.sync import recorded_target, sync_store

    if ns.to and ns.tracking_uri and ns.to != ns.tracking_uri:
        raise DeepmineError(
            f"--to {ns.to} and --tracking-uri {ns.tracking_uri} name two targets",
            f"give one, e.g. `deepmine sync --to {ns.to}`",
        )
    target = ns.to or ns.tracking_uri
    logger = None
    if ns.source is None or target is None:
        from deepmine.config import compose_train

        logger = compose_train([]).logger
    source_path = ns.source if ns.source is not None else str(logger.spool_dir)
    source = connect(source_uri(source_path))
    target = target or recorded_target(source) or str(logger.tracking_uri)
    if target == source.uri:
        raise DeepmineError(
            f"the source and the target are the same store ({target})",
            "name the server with --to, e.g. `deepmine sync --to http://127.0.0.1:5000`",
        )
    store = connect(target)  # unreachable or refused: one line, nothing written anywhere
    report = sync_store(source, store, register=ns.register)
    waiting = len(report.waiting)
    print(
        f"{_shown(target)}: {len(report.copied)} runs copied, {len(report.completed)} "
        f"completed after an interrupted sync, {len(report.present)} already there"
        + (f"; {waiting} still running in the source, left for a later sync" if waiting else ""),
        flush=True,
    )
    return 0
