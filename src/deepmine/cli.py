"""`deepmine <command> [args]`: dispatch to the train/eval tasks, data and UI helpers.

Imports nothing heavy at module level, so `deepmine --help` answers at once. Every command runs
inside `_guarded`, which turns any `DeepmineError` or config error into one line on stderr and a
non-zero exit code (2 for bad input, 1 for a failed run, 130 for Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

USAGE = """\
usage: deepmine <command> [args]

commands:
  train [overrides]   compose conf/train.yaml, train, test, record the run in MLflow
                      (-m/--multirun sweeps; --cfg job prints the config; --help lists groups)
  eval  [overrides]   test a checkpoint (ckpt_path=...) or a recorded run (run_id=...)
  data pull [--force] fill data/ (DVC remote, else the local public sources) and verify it;
                      --force overwrites local changes
  data status         say whether data/ matches the version pinned in data.dvc
  data add <folder> [--name NAME] [--force]
                      copy a folder (e.g. class folders of images) into data/NAME and
                      re-pin data/ in data.dvc; prints the data.root= to train with
  data export-images <data> <out dir> [--split test] [--per-class N] [overrides]
                      write an image set (fashion_mnist, digits, ...) as class folders
                      of PNGs, the layout data=image_folder reads
  reproduce <experiment> [overrides]
                      run a claim of experiments/ for all its seeds, compare with the
                      published number (exit 1 outside tolerance), report
  reproduce --all [--only a,b]
                      every claim; regenerates REPRODUCTION.md
  reproduce run <run id> [--checkout] [--tracking-uri URI]
                      re-execute a recorded run (its overrides, seed, data version; its
                      git commit with --checkout) and diff every final metric
  ui [--port N] [--workers N]
                      serve the MLflow UI on the project's tracking store (one uvicorn
                      worker per two cores by default)
  server --backend-store-uri URI [--artifacts-destination DIR] [--host H] [--port N]
                      a team's MLflow tracking server on a database (PostgreSQL, or
                      SQLite), artifacts served through it; clients record into it with
                      logger.tracking_uri=http://H:N
  compare [run ids] [--experiment NAME] [--sweep DIR|PARENT_ID] [--filter "..."]
                      group runs that differ only in seed: n, mean ± std, min/max per
                      config, the config keys that differ, best vs each group (Welch
                      t-test, --paired by seed); --format csv|markdown|latex|json
                      --output FILE, --plots DIR (curves), --log (an MLflow run)
  runs [--tracking-uri URI] [--experiment NAME]
                      list runs; a RUNNING one is alive, dead (its process is gone) or
                      stale (another host, no heartbeat for --stale-after seconds)
  runs doctor [--fix] [--stale-after SECONDS]
                      find RUNNING runs whose process is gone (exit 1 if any); --fix
                      closes them KILLED, metrics and checkpoints kept (resume=<run id>)

the store: every command takes --tracking-uri URI or logger.tracking_uri=URI (the flag wins),
  else MLFLOW_TRACKING_URI, else the project's mlflow.db (conf/logger/mlflow.yaml, conf/local/)

examples:
  deepmine train
  deepmine train net=cnn optimizer=adamw optimizer.lr=3e-3 trainer.max_epochs=10
  deepmine train debug=fast data=digits
  deepmine train -m net=seed_mlp,cnn seed=0,1            (a sweep: parent + child runs)
  deepmine train -m launcher=joblib seed=0,1,2,3          (jobs in parallel)
  deepmine train -m hparams_search=fashion_mnist_optuna   (an Optuna search; resume=true)
  deepmine eval run_id=<mlflow run id>
  deepmine compare --sweep logs/train/multiruns/<date>/<time> --plots compare/
"""

COMMANDS = ("train", "eval", "data", "reproduce", "ui", "server", "runs", "compare")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    from deepmine.runtime import timeline

    timeline.mark("cli_start")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    from deepmine.errors import DeepmineError

    try:
        rest = _one_store_option(command, rest)
    except DeepmineError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if command == "train":
        return _guarded(lambda: _hydra_task("train", rest), rest)
    if command == "eval":
        return _guarded(lambda: _hydra_task("eval", rest), rest)
    if command == "data":
        return _guarded(lambda: _data(rest))
    if command == "ui":
        return _guarded(lambda: _ui(rest))
    if command == "server":
        return _guarded(lambda: _server(rest))
    if command == "reproduce":
        return _guarded(lambda: _reproduce(rest))
    if command == "runs":
        return _guarded(lambda: _runs(rest))
    if command == "compare":
        return _guarded(lambda: _compare(rest))
    import difflib
    import shlex

    close = difflib.get_close_matches(command, COMMANDS, n=1, cutoff=0.5)
    fix = (
        f"e.g. `deepmine {shlex.join([close[0], *rest])}`, or see `deepmine --help`"
        if close
        else "run `deepmine --help` for the commands"
    )
    print(f"error: unknown command '{command}'. Fix: {fix}", file=sys.stderr)
    return EXIT_BAD_INPUT


#: the Hydra override that names the MLflow store
STORE_OVERRIDE = "logger.tracking_uri"


def _one_store_option(command: str, args: list[str]) -> list[str]:
    """Every command names its MLflow store the same three ways, with one precedence:
    `--tracking-uri URI` > `logger.tracking_uri=URI` > MLFLOW_TRACKING_URI > the project's store
    (conf/logger/mlflow.yaml, or conf/local/). Hydra commands (train, eval, and the runs that
    `reproduce <claim>` starts) get the override form; the others get the flag."""
    flag: str | None = None
    override: str | None = None
    kept: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--tracking-uri":
            flag = next(items, None)
            if flag is None:
                from deepmine.errors import DeepmineError

                raise DeepmineError(
                    "--tracking-uri needs a value", "e.g. --tracking-uri sqlite:///mlflow.db"
                )
        elif arg.startswith("--tracking-uri="):
            flag = arg.partition("=")[2]
        elif arg.lstrip("+").startswith(STORE_OVERRIDE + "="):
            override = arg.partition("=")[2]
        else:
            kept.append(arg)
    uri = flag if flag is not None else override
    if uri is None:
        return list(args)
    hydra_form = command in ("train", "eval") or (
        command == "reproduce" and (not kept or kept[0] != "run")
    )
    return [*kept, f"{STORE_OVERRIDE}={uri}"] if hydra_form else [*kept, "--tracking-uri", uri]


def _hydra_task(name: str, args: list[str]) -> int:
    """Run a `@hydra.main` task with `args` as its command line."""
    # Hydra prints composition errors over several lines and exits by itself; with
    # HYDRA_FULL_ERROR it raises instead, so `_guarded` can report them in one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if name == "train":
        from deepmine.train import main as entry
    else:
        from deepmine.evaluate import main as entry
    # Hydra's argparse takes -m/--multirun only before the overrides; people type it anywhere
    flags = [a for a in args if a in ("-m", "--multirun")]
    args = [*flags, *(a for a in args if a not in ("-m", "--multirun"))]
    saved = sys.argv
    sys.argv = [f"deepmine {name}", *args]
    try:
        entry()
    finally:
        sys.argv = saved
    return 0


def _path_fix(filename: str, overrides: list[str]) -> str:
    """The fix for a path that cannot be used: drop the override that named it (its default
    is a folder of the project), else point the path options at a writable place."""
    for override in overrides:
        key, _, value = override.partition("=")
        if value and filename.startswith(value.rstrip("/")):
            return f"drop {key.lstrip('+~')} to use its default, or point it at a writable folder"
    return "point the path option that names it (paths.log_dir, data.path, ...) at a writable place"


def _guarded(command: Callable[[], int], overrides: list[str] = ()) -> int:
    from deepmine.errors import DeepmineError

    try:
        return command()
    except KeyboardInterrupt:
        from deepmine.errors import INTERRUPTED

        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except DeepmineError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_BAD_INPUT)
    except Exception as exc:
        from deepmine.run.errors import describe_error

        line = describe_error(exc)
        if line is None and isinstance(exc, OSError) and exc.filename:
            # a folder or file that cannot be made or written before any run exists (a run
            # that is open records its own failure), e.g. paths.log_dir on a read-only disk
            line = f"cannot use {exc.filename}: {exc.strerror or exc}. Fix: " + _path_fix(
                str(exc.filename), overrides
            )
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _data(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="deepmine data", description="DVC-versioned data/")
    parser.add_argument("action", choices=["pull", "status", "add", "export-images", "synth"])
    parser.add_argument(
        "args",
        nargs="*",
        help="add: <folder>; export-images: <data config> <out dir> [data.key=value ...]; "
        "synth: fashion_mnist",
    )
    parser.add_argument("--root", help="project root (default: this checkout)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="pull: overwrite local changes in data/; add: replace data/NAME",
    )
    parser.add_argument("--name", help="add: the folder's name under data/ (default: its own)")
    parser.add_argument(
        "--scale", type=int, default=4, help="synth: how many times the training split (default 4)"
    )
    parser.add_argument("--split", default="test", help="export-images: train, val or test")
    parser.add_argument(
        "--per-class", type=int, help="export-images: at most this many images per class"
    )
    ns = parser.parse_args(args)
    from pathlib import Path

    from deepmine.data import version
    from deepmine.errors import DeepmineError
    from deepmine.project import project_root

    needed = {
        "pull": (0, 0),
        "status": (0, 0),
        "add": (1, 1),
        "export-images": (2, None),
        "synth": (1, 1),
    }
    low, high = needed[ns.action]
    if len(ns.args) < low or (high is not None and len(ns.args) > high):
        usage = {
            "pull": "deepmine data pull [--force]",
            "status": "deepmine data status",
            "add": "deepmine data add <folder> [--name NAME]",
            "export-images": "deepmine data export-images <data config> <out dir>",
            "synth": "deepmine data synth fashion_mnist --scale N [--name NAME]",
        }[ns.action]
        raise DeepmineError(f"data {ns.action} got arguments {ns.args}", f"run it as `{usage}`")
    if ns.action == "export-images":
        from deepmine.data.image_export import compose_data, export_images

        data, out_dir, *overrides = ns.args
        written = export_images(
            compose_data(data, overrides), ns.split, Path(out_dir), ns.per_class
        )
        out = Path(out_dir).resolve()
        print(f"wrote {sum(written.values())} PNGs in {len(written)} class folders under {out}")
        print(f"train on them with: deepmine train data=image_folder data.root={out}")
        return 0
    root = Path(ns.root).resolve() if ns.root else project_root()
    if ns.action == "add":
        print(version.add_folder(root, Path(ns.args[0]), ns.name, force=ns.force))
        return 0
    if ns.action == "synth":
        from deepmine.data.synth import synth

        print(synth(root, ns.args[0], ns.scale, ns.name, force=ns.force))
        return 0
    if ns.action == "pull":
        print(version.pull(root, force=ns.force))
        return 0
    state = version.check(root)
    print(state.describe())
    return 0 if state.matches else EXIT_FAILED


def _reproduce(args: list[str]) -> int:
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
    from deepmine import claims
    from deepmine.errors import DeepmineError
    from deepmine.reproduce import reproduce, reproduce_all, reproduce_run

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


def _ui(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="deepmine ui", description="MLflow UI on the store")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tracking-uri", help="default: logger.tracking_uri of conf/train.yaml")
    parser.add_argument(
        "--workers", type=int, help="uvicorn workers (default: one per two cores, at most 4)"
    )
    ns = parser.parse_args(args)
    from deepmine.errors import DeepmineError
    from deepmine.tracking.ui import serve

    if ns.workers is not None and ns.workers < 1:
        raise DeepmineError(
            f"--workers {ns.workers} is not valid", "e.g. `deepmine ui --workers 1`"
        )
    return serve(ns.tracking_uri, host=ns.host, port=ns.port, workers=ns.workers)


def _server(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="deepmine server", description="MLflow tracking server on a database"
    )
    parser.add_argument(
        "--backend-store-uri",
        help="the database that keeps the runs, e.g. postgresql://mlflow@127.0.0.1:5432/mlflow",
    )
    parser.add_argument(
        "--artifacts-destination",
        help="where artifacts land (default: <project>/mlartifacts/server)",
    )
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--workers", type=int, help="uvicorn workers (default: one per two cores, at most 4)"
    )
    parser.add_argument(
        "--allowed-hosts", help="Host headers to accept beyond localhost and private IPs"
    )
    ns = parser.parse_args(args)
    from deepmine.errors import DeepmineError
    from deepmine.tracking.server import serve

    if ns.workers is not None and ns.workers < 1:
        raise DeepmineError(
            f"--workers {ns.workers} is not valid", "e.g. `deepmine server --workers 1`"
        )
    return serve(
        ns.backend_store_uri,
        ns.artifacts_destination,
        host=ns.host,
        port=ns.port,
        workers=ns.workers,
        allowed_hosts=ns.allowed_hosts,
    )


def _runs(args: list[str]) -> int:
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
            shown = state.state if state.status == "RUNNING" else ""
            line = f"{state.run_id}  {state.experiment}  {state.name}  {state.status}"
            print(f"{line}  {shown}  {state.why}".rstrip())
        return 0
    orphans = doctor.find_orphans(store, ns.experiment, ns.stale_after)
    if not orphans:
        print(f"no RUNNING run without its process in {store.uri}")
        return 0
    for state in orphans:
        if ns.fix:
            doctor.mark_killed(store, state)
            print(f"{state.run_id}  {state.name}  {state.state}: {state.why}; marked KILLED")
        else:
            print(f"{state.run_id}  {state.name}  {state.state}: {state.why}")
    if ns.fix:
        print(f"{len(orphans)} run(s) marked KILLED; resume one with `deepmine train resume=<id>`")
        return 0
    print(f"{len(orphans)} RUNNING run(s) without their process; `--fix` marks them KILLED")
    return EXIT_FAILED


def _compare(args: list[str]) -> int:
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
    from deepmine.compare.command import Options, run

    return run(
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


if __name__ == "__main__":
    sys.exit(main())
