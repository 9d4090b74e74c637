"""`deepmine reproduce <claim> | --all | run <run id>`: check the claims of experiments/, or
re-execute a recorded run (the work is in `deepmine.reproduce`)."""

from __future__ import annotations

from deepmine.errors import EXIT_FAILED


def run(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="deepmine reproduce", description="check the claims of experiments/"
    )
    parser.add_argument("experiment", nargs="?", help="a claim: experiments/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    parser.add_argument("--all", action="store_true", help="every claim; writes REPRODUCTION.md")
    parser.add_argument("--only", help="with --all: a comma-separated selection of claims")
    parser.add_argument("--launcher", help="run the seeds through launcher=<name> (e.g. joblib)")
    parser.add_argument(
        "--checkout", action="store_true", help="reproduce run: run the recorded git commit"
    )
    parser.add_argument("--tracking-uri", help="reproduce run: the store (default: the project's)")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="reproduce run: instantiate the recorded config even if it names targets outside "
        "deepmine's allowlist (only for a store you trust)",
    )
    ns = parser.parse_args(args)
    from deepmine.errors import DeepmineError
    from deepmine.reproduce import claims
    from deepmine.reproduce.claim_run import reproduce, reproduce_all
    from deepmine.reproduce.rerun import reproduce_run

    if ns.experiment == "run":
        if len(ns.overrides) != 1:
            raise DeepmineError(
                "reproduce run needs exactly one MLflow run id",
                "e.g. deepmine reproduce run 2714f57307b845b5a2411407e0f7bdf9",
            )
        same = reproduce_run(ns.overrides[0], ns.tracking_uri, ns.checkout, ns.trust)
        return 0 if same else EXIT_FAILED
    if ns.all:
        overrides = [ns.experiment, *ns.overrides] if ns.experiment else ns.overrides
        names = ns.only.split(",") if ns.only else claims.available()
        for name in names:
            claims.load(name, overrides)  # every claim is checked before any runs
        outcomes = reproduce_all(names, overrides, ns.launcher)
        return 0 if all(o.ok for o in outcomes) else EXIT_FAILED
    if not ns.experiment:
        raise DeepmineError(
            "reproduce needs an experiment name or --all",
            f"e.g. deepmine reproduce {(claims.available() or ['<name>'])[0]}",
        )
    outcome = reproduce(ns.experiment, ns.overrides, ns.launcher)
    return 0 if outcome.ok else EXIT_FAILED
