"""`deepmine runs [doctor]`: list runs; find and close RUNNING runs whose process is gone."""

from __future__ import annotations

from deepmine.errors import EXIT_FAILED


def run(args: list[str]) -> int:
    import argparse

    from deepmine.tracking import doctor

    parser = argparse.ArgumentParser(
        prog="deepmine runs", description="list runs; doctor: close runs whose process is gone"
    )
    parser.add_argument("action", nargs="?", choices=["doctor"])
    parser.add_argument("--tracking-uri", help="default: logger.tracking_uri of conf/train.yaml")
    parser.add_argument("--experiment", help="one experiment (default: all)")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=doctor.STALE_AFTER_S,
        metavar="SECONDS",
        help="a run on another host is stale after this long without a heartbeat",
    )
    parser.add_argument("--fix", action="store_true", help="doctor: mark orphans KILLED")
    ns = parser.parse_args(args)
    from deepmine.errors import DeepmineError
    from deepmine.tracking.ui import default_tracking_uri

    if ns.fix and ns.action != "doctor":
        raise DeepmineError(
            "--fix belongs to `deepmine runs doctor`", "run it as runs doctor --fix"
        )
    store = doctor.open_store(ns.tracking_uri or default_tracking_uri())
    if ns.action != "doctor":
        for state in doctor.list_runs(store, ns.experiment, ns.stale_after):
            shown = state.state if state.status in doctor.OPEN_STATUSES else ""
            line = f"{state.run_id}  {state.experiment}  {state.name}  {state.status}"
            print(f"{line}  {shown}  {state.why}".rstrip())
        return 0
    orphans = doctor.find_orphans(store, ns.experiment, ns.stale_after)
    if not orphans:
        print(f"no RUNNING run without its process in {store.uri}")
        return 0
    for state in orphans:
        if ns.fix and state.state == doctor.ORPHANED:  # alive: stopped before it is closed
            how = doctor.stop_orphaned(store, state)
            print(f"{state.run_id}  {state.name}  {state.state}: {state.why}; {how}")
        elif ns.fix:
            doctor.mark_killed(store, state)
            print(f"{state.run_id}  {state.name}  {state.state}: {state.why}; marked KILLED")
        else:
            print(f"{state.run_id}  {state.name}  {state.state}: {state.why}")
    if ns.fix:
        print(f"{len(orphans)} run(s) closed KILLED; resume one with `deepmine train resume=<id>`")
        return 0
    print(
        f"{len(orphans)} RUNNING run(s) without their process or sweep; `--fix` stops the "
        "orphaned jobs and marks them KILLED"
    )
    return EXIT_FAILED
