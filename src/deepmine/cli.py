"""`deepmine <command> [args]`: a dispatcher, nothing else. `python -m deepmine` is the same door.

Each command is a module of `deepmine.commands` with `run(args) -> int` that parses its own
arguments (`COMMANDS` maps the names). Imports nothing heavy at module level, so `deepmine --help`
answers at once. Every command runs inside `_guarded`, which turns any `DeepmineError` or config
error into one line on stderr and a non-zero exit code (2 for bad input, 1 for a failed run, 130
for Ctrl-C); the store option is normalized for all of them first (`_one_store_option`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from deepmine.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED

USAGE = """\
usage: deepmine <command> [args]

commands:
  train [overrides]   compose conf/train.yaml, train, test, record the run in MLflow
                      (-m/--multirun sweeps; --cfg job prints the config; --help lists groups)
  eval  [overrides]   test a checkpoint (ckpt_path=...) or a recorded run (run_id=...)
  predict run_id=<id>|model=models:/<name>@<alias> input=<csv|parquet|folder> [output=...]
                      score new data with a logged model (raw rows in, class names,
                      units, forecasts, clusters or anomaly scores out), in chunks;
                      recorded as a run with its input, model and a drift table
  models promote <name> <version> --alias <alias>
                      point a registry alias (e.g. champion) at a model version
  models list <name>  the versions of a registered model and their aliases
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
  sync [<spool dir or store>] [--to URI] [--register]
                      copy the runs recorded offline (logger.offline=true, or
                      logger.failover=true with the server gone) to the tracking store,
                      each run once: run it again, or after an interruption, at will

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
  deepmine train logger.register=wine && deepmine models promote wine 1 --alias champion
  deepmine predict model=models:/wine@champion input=new_wines.csv
  deepmine compare --sweep logs/train/multiruns/<date>/<time> --plots compare/
"""

#: command name -> the module of deepmine.commands that runs it
COMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "data": "data",
    "reproduce": "reproduce",
    "ui": "ui",
    "server": "server",
    "runs": "runs",
    "compare": "compare",
    "predict": "predict",
    "models": "models",
    "sync": "sync",
}


def main(argv: list[str] | None = None) -> int:
    code = _dispatch(argv)
    if argv is None:  # the process entry: skip the interpreter's 2-3 s teardown when safe
        from deepmine.runtime.fast_exit import exit_now

        return exit_now(code)
    return code


def _dispatch(argv: list[str] | None) -> int:
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
    if command in COMMANDS:
        import importlib

        def run() -> int:
            module = importlib.import_module(f"deepmine.commands.{COMMANDS[command]}")
            return module.run(rest)

        # a Hydra command's overrides can name the path that failed (see `_path_fix`)
        return _guarded(run, rest if command in ("train", "eval", "predict") else ())
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
    hydra_form = command in ("train", "eval", "predict") or (
        command == "reproduce" and (not kept or kept[0] != "run")
    )
    return [*kept, f"{STORE_OVERRIDE}={uri}"] if hydra_form else [*kept, "--tracking-uri", uri]


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
        from deepmine.runtime.interrupts import interrupted

        if interrupted(exc):  # a stop request a library wrapped on its way out
            from deepmine.errors import INTERRUPTED

            print(INTERRUPTED, file=sys.stderr)
            return EXIT_INTERRUPTED
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
