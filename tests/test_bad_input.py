"""The bad-input battery: every case is a real CLI call that must end in one clear line naming
the problem and the fix, a non-zero exit, no MLflow run left RUNNING and a store that still
opens. Then the battery *follows the printed fix* and checks that the command succeeds, so no
`Fix:` deepmine prints can be a dead end.

How a fix is followed (the convention `deepmine.errors` documents for every message):
- a command in backticks (`deepmine data pull --force`, `git -C ... checkout -- data.dvc`) is run
  as written, then the original command is run again;
- otherwise the override after "e.g." replaces the one with the same key (or is added), and
  "drop <key>" removes that override; the corrected command must then succeed.

Every case runs in its own copy of a small project (`DEEPMINE_ROOT`): a git repository with DVC,
data/ pinned by data.dvc, and the default SQLite store, as a user's clone has.

Each `deepmine ...` command is a real process forked from the suite's warm starter (`run_cli`,
tests/warm_cli.py: torch, Lightning and MLflow imported once). What a fresh interpreter alone
shows, the stderr those libraries print while they are imported, is the same for every case: one
case (`Case.fresh`) runs in fresh interpreters, so its one-line check covers it; the full-disk
case (`unshare`) and the Ctrl-C test start fresh interpreters too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import deepmine_env, make_dvc_project, run_cli

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Project:
    """One copy of the battery's project: where a case runs, and what it checks afterwards."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd = root.parent / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.db = root / "mlflow.db"
        self.env = deepmine_env(DEEPMINE_ROOT=str(root))

    def command(self, argv: list[str]) -> list[str]:
        if argv[:1] == ["deepmine"]:
            return [sys.executable, "-m", "deepmine", *argv[1:]]
        return argv

    def run(
        self, argv: list[str], timeout: float = 300, fresh: bool = False
    ) -> subprocess.CompletedProcess:
        """`argv` in the project; a `deepmine ...` command is `python -m deepmine` (forked from
        the warm starter unless `fresh`), with the environment `self.env` holds."""
        if argv[:1] == ["deepmine"]:
            return run_cli(
                *argv[1:], cwd=self.cwd, timeout=timeout, fresh=fresh, DEEPMINE_ROOT=str(self.root)
            )
        return subprocess.run(
            self.command(argv),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def runs(self) -> list:
        """Every run of the store, read with MLflow's own client (which proves it opens)."""
        if not self.db.exists():
            return []
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{self.db}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(experiments) if experiments else []

    def assert_store_sound(self) -> None:
        if self.db.exists():
            with sqlite3.connect(self.db) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        running = [r.info.run_id for r in self.runs() if r.info.status == "RUNNING"]
        assert running == [], f"runs left RUNNING: {running}"

    def latest_checkpoint(self) -> Path:
        return max(self.root.glob("logs/**/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)

    def finished_run_id(self) -> str:
        (run,) = [r for r in self.runs() if r.info.status == "FINISHED"]
        return run.info.run_id


TRAIN = ["deepmine", "train", "data=digits", "debug=fast"]


@dataclass
class Case:
    """One bad input: the command, what its line must say, and how to break the project."""

    argv: list[str] | Callable[[Project], list[str]]
    says: tuple[str, ...]
    setup: Callable[[Project], None] | None = None
    exit_code: int = EXIT_BAD_INPUT
    opens_run: bool = False  # the mistake shows only once training ran (the run is FAILED)
    follow: Callable[[Project, list[str], str], list[str]] | None = None  # a fix no text can say
    marks: list = field(default_factory=list)
    fresh: bool = False  # its commands in fresh interpreters, not forked from the warm starter


# ---- breaking a project --------------------------------------------------------------------


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # the copy shares its data files with the pristine project (hard links)
    path.write_bytes(data)


def remove_data(project: Project) -> None:
    shutil.rmtree(project.root / "data")


def truncate_idx(project: Project) -> None:
    path = project.root / "data" / "fashion_mnist" / "train-labels-idx1-ubyte.gz"
    _rewrite(path, path.read_bytes()[:100])


def flip_a_byte(project: Project) -> None:
    path = project.root / "data" / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    _rewrite(path, bytes(raw))


def delete_pin(project: Project) -> None:
    (project.root / "data.dvc").unlink()


def corrupt_pin(project: Project) -> None:
    (project.root / "data.dvc").write_text("outs:\n- md5: [not, a, pin\n")


def fill_the_artifact_disk(project: Project) -> list[str]:
    """Train with the artifact folder on a 64 KiB tmpfs, mounted in a private mount namespace
    (`unshare`), so writing the artifacts fails with ENOSPC exactly as on a full disk; outside
    that namespace the same folder is an ordinary, empty one."""
    if shutil.which("unshare") is None:
        pytest.fail("the full-disk case needs `unshare` (Debian: apt-get install util-linux)")
    artifacts = project.root / "artifacts"
    artifacts.mkdir()
    train = shlex.join([sys.executable, "-m", "deepmine", *TRAIN[1:], *_artifacts_at(project)])
    script = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(artifacts))} && exec {train}"
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", script]


def _artifacts_at(project: Project) -> list[str]:
    return ["experiment_name=full", f"logger.artifact_location={project.root / 'artifacts'}"]


def free_the_disk(project: Project, argv: list[str], line: str) -> list[str]:
    """'Free space' on the artifact disk: the same command, outside the full tmpfs."""
    assert "No space left on device" in line
    return [*TRAIN, *_artifacts_at(project)]


def not_a_checkpoint(project: Project) -> list[str]:
    bogus = project.root / "notes.ckpt"
    bogus.write_text("not a checkpoint\n")
    return ["deepmine", "eval", f"ckpt_path={bogus}"]


def resume_finished(project: Project) -> list[str]:
    return [*TRAIN, f"resume={project.finished_run_id()}"]


def semicolon_table_read_with_commas(project: Project) -> list[str]:
    """UCI's wine-quality format (`"fixed acidity";"volatile acidity";...`), from scikit-learn's
    wine table, read with an explicit `data.sep=','`: one column, unless the error says so."""
    from test_csv_runs import wine_quality_style

    wine_quality_style(project.cwd / "wine.csv")
    data = ["data=csv", "data.path=wine.csv", "data.target=cultivar"]
    return ["deepmine", "train", *data, "debug=fast", "data.sep=','"]


CASES: dict[str, Case] = {
    "unknown group option": Case(
        [*TRAIN, "net=cnnn"], ("unknown option 'cnnn' for config group 'net'", "e.g. net=cnn")
    ),
    "unknown key": Case(
        [*TRAIN, "trainer.epochs=3"],
        ("unknown config key 'trainer.epochs'", "e.g. trainer.max_epochs=3"),
    ),
    "wrong type: integer": Case([*TRAIN, "trainer.max_epochs=abc"], ("expected an integer",)),
    "wrong type: number": Case([*TRAIN, "optimizer.lr=fast"], ("expected a number",)),
    "wrong type in the chosen group": Case(
        [*TRAIN, "optimizer=sgd", "optimizer.momentum=high"],
        ("optimizer.momentum='high'", "expected a number"),
    ),
    "zero batch size": Case([*TRAIN, "data.batch_size=0"], ("data.batch_size=0 is not valid",)),
    "huge batch size": Case(
        [*TRAIN, "data.batch_size=100000000"],
        ("data.batch_size=100000000 is larger than the", "training samples"),
        # fresh interpreters: the line is the only one even with torch, Lightning and MLflow
        # imported in the process (data set up, then training once the fix is followed)
        fresh=True,
    ),
    "zero epochs": Case(
        [*TRAIN, "trainer.max_epochs=0"], ("trainer.max_epochs=0 is not valid", "at least 1")
    ),
    "negative learning rate": Case(
        [*TRAIN, "optimizer.lr=-0.001"], ("optimizer.lr=-0.001 is not valid", "positive")
    ),
    "negative seed": Case([*TRAIN, "seed=-1"], ("seed=-1 is outside [0, 2**32)",)),
    "null seed": Case([*TRAIN, "seed=null"], ("seed must be an integer",)),
    "data/ missing": Case(
        ["deepmine", "train", "debug=fast"],
        ("data is missing", "`deepmine data pull`"),
        setup=remove_data,
    ),
    "IDX file truncated": Case(
        ["deepmine", "train", "debug=fast"],
        ("train-labels-idx1-ubyte.gz (modified)", "`deepmine data pull --force`"),
        setup=truncate_idx,
    ),
    "one byte flipped in data/": Case(
        ["deepmine", "train", "debug=fast"],
        (
            "t10k-images-idx3-ubyte.gz (modified)",
            "`deepmine data pull --force`",
            "allow_data_mismatch=true",
        ),
        setup=flip_a_byte,
    ),
    "data.dvc deleted": Case(
        ["deepmine", "train", "debug=fast"],
        ("data.dvc is missing", "checkout -- data.dvc`"),
        setup=delete_pin,
    ),
    "data.dvc corrupt": Case(
        [*TRAIN], ("data.dvc is not a DVC pin", "checkout -- data.dvc`"), setup=corrupt_pin
    ),
    "tracking server on a closed port": Case(
        lambda p: [*TRAIN, f"logger.tracking_uri=http://127.0.0.1:{free_port()}"],
        ("is unreachable", "drop logger.tracking_uri"),
    ),
    "tracking URI with an unknown scheme": Case(
        [*TRAIN, "logger.tracking_uri=mongo://127.0.0.1/runs"],
        ("unknown scheme 'mongo'", "e.g. logger.tracking_uri=sqlite:////"),
    ),
    "unwritable output folder": Case(
        # /proc takes no new folders, even for root (who may write anywhere else)
        [*TRAIN, "paths.log_dir=/proc/deepmine-logs"],
        ("cannot use /proc/deepmine-logs", "drop paths.log_dir"),
    ),
    "full disk while writing artifacts": Case(
        fill_the_artifact_disk,
        ("FAILED", "No space left on device", "free space"),
        exit_code=EXIT_FAILED,
        opens_run=True,
        follow=free_the_disk,
    ),
    "unknown experiment": Case(
        ["deepmine", "train", "debug=fast", "experiment=diabetes_ols"],
        ("unknown option 'diabetes_ols' for config group 'experiment'", "e.g. experiment="),
    ),
    "reproduce an unknown run id": Case(
        ["deepmine", "reproduce", "run", "0123456789abcdef0123456789abcdef"],
        ("no MLflow run '0123456789abcdef0123456789abcdef'", "e.g. `deepmine reproduce run "),
    ),
    "eval of an unknown run id": Case(
        ["deepmine", "eval", "run_id=0123456789abcdef0123456789abcdef"],
        ("no MLflow run '0123456789abcdef0123456789abcdef'", "`deepmine runs`", "e.g. run_id="),
    ),
    "resume of a FINISHED run": Case(
        resume_finished, ("already FINISHED: nothing to resume", "drop resume")
    ),
    "NaN from a huge learning rate": Case(
        [*TRAIN, "optimizer.lr=1e30"],
        ("became NaN", "e.g. optimizer.lr="),
        exit_code=EXIT_FAILED,
        opens_run=True,
    ),
    "a file that is not a checkpoint": Case(
        not_a_checkpoint, ("is not a checkpoint", "e.g. run_id=")
    ),
    "semicolon CSV read with data.sep=','": Case(
        semicolon_table_read_with_commas,
        ("data.sep=','", "single column", "separated by ';'", "e.g. data.sep=';'"),
    ),
}


# ---- following a fix ------------------------------------------------------------------------


def fix_of(line: str) -> str:
    assert " Fix: " in line, f"no fix in: {line}"
    return line.split(" Fix: ", 1)[1]


def follow(fix: str, argv: list[str], project: Project) -> list[str]:
    """Do what `fix` says; return the command to run next."""
    for dropped in re.findall(r"\bdrop ([\w.]+)", fix):
        argv = [a for a in argv if _key(a) != dropped]
    # a value is quoted when Hydra needs it to be (`data.sep=';'`), and may then hold anything
    example = re.search(r"\be\.g\. (`[^`]+`|[+~]?[\w.]+=(?:'[^']*'|[^\s,;)]*[^\s,;).]))", fix)
    if example and example.group(1).startswith("`"):
        return shlex.split(example.group(1).strip("`"))  # the corrected command itself
    if example:
        override = example.group(1)
        return [*[a for a in argv if _key(a) != _key(override)], override]
    if "drop " in fix:
        return argv
    repairs = re.findall(r"`((?:deepmine|git) [^`]+)`", fix)
    assert repairs, f"the fix names no command, override or key to drop: {fix}"
    for text in repairs:
        done = project.run(shlex.split(text))
        assert done.returncode == 0, f"the printed fix `{text}` failed:\n{done.stderr[-2000:]}"
    return argv


def _key(argument: str) -> str:
    return argument.split("=", 1)[0].lstrip("+~") if "=" in argument else argument


def _run_case_command(
    project: Project, argv: list[str], fresh: bool = False
) -> subprocess.CompletedProcess:
    return project.run(argv, fresh=fresh)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A user's clone in miniature: git + DVC, data/ pulled and pinned, data.dvc committed."""
    root = make_dvc_project(tmp_path_factory.mktemp("pristine") / "project", with_data=True)
    git = ["git", "-c", "user.name=battery", "-c", "user.email=battery@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("/data\n/mlflow.db*\n/mlartifacts\n/logs\n/.cache\n")
    subprocess.run([*git, "add", ".gitignore", "data.dvc", ".dvc"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pin"], cwd=root, check=True)
    # one finished run, for the cases about recorded runs (its artifacts stay here: the
    # copies' store points at them, and the runs of a copy add folders of their own)
    trained = Project(root).run(TRAIN)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return root


def copy_project(pristine: Path, where: Path) -> Project:
    def link_data(source, target):
        # data files and DVC's cache are never written in place (cases replace them), so the
        # copies may share them; everything else is copied
        if "/data/" in source or "/.dvc/cache/" in source:
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(pristine, where / "project", copy_function=link_data)
    return Project(where / "project")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_and_a_fix_that_works(name, pristine, tmp_path):
    case = CASES[name]
    project = copy_project(pristine, tmp_path)
    if case.setup:
        case.setup(project)
    argv = case.argv(project) if callable(case.argv) else list(case.argv)
    before = {r.info.run_id for r in project.runs()}

    proc = _run_case_command(project, argv, fresh=case.fresh)

    assert proc.returncode == case.exit_code, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    assert line.startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if not case.opens_run:
        assert len(lines) == 1, proc.stderr
    for fragment in case.says:
        assert fragment in line, line
    project.assert_store_sound()
    new = [r for r in project.runs() if r.info.run_id not in before]
    if case.opens_run:
        assert [r.info.status for r in new] == ["FAILED"], line
    else:
        assert new == [], f"bad input opened a run: {line}"

    fixed = case.follow(project, argv, line) if case.follow else follow(fix_of(line), argv, project)
    assert fixed != argv or case.setup, f"the fix changed nothing: {line}"
    again = project.run(fixed, fresh=case.fresh)
    assert again.returncode == 0, f"{line}\nthen {fixed} failed:\n{again.stderr[-3000:]}"
    project.assert_store_sound()


def test_ctrl_c_while_the_store_is_created_leaves_no_half_store(pristine, tmp_path):
    """SIGINT in the middle of MLflow's schema migrations: the store is absent or complete (never
    half-migrated), the line says so, and the same command then works."""
    project = copy_project(pristine, tmp_path)
    for store in project.root.glob("mlflow.db*"):
        store.unlink()
    # without the empty-store template a new store is copied from (tracking/store_schema), so
    # MLflow runs its migrations and the signal lands inside them
    shutil.rmtree(project.root / ".cache" / "mlflow-store", ignore_errors=True)
    proc = subprocess.Popen(
        project.command(TRAIN),
        cwd=project.cwd,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`)
        # hands its children SIGINT ignored, and an ignored SIGINT tests nothing here
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lock = project.root / "mlflow.db.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert lock.exists(), "the store was never created under its lock"
    time.sleep(0.2)  # inside the migrations (they take about a second)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: interrupted"), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not list(project.root.glob(".mlflow.db.creating*")), "a half-built store was left"
    project.assert_store_sound()
    assert fix_of(lines[-1]) == "run the same command again"
    again = project.run(TRAIN)
    assert again.returncode == 0, again.stderr[-3000:]
    project.assert_store_sound()
    assert [r.info.status for r in project.runs()] == ["FINISHED"]


def test_an_int_where_a_float_is_expected_is_fine(sandbox):
    proc = sandbox.train("data=digits", "debug=fast", "optimizer.lr=1", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_sweep_with_an_unknown_option_starts_no_job(sandbox):
    # -m typed after the overrides, as people do: it still means a sweep
    args = sandbox.overrides("data=digits", "debug=fast", "net=seed_mlp,cnnn", "-m")
    proc = run_cli("train", *args, cwd=sandbox.cwd)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "error: unknown option 'cnnn' for config group 'net' (available: autoencoder, cnn, "
        "conv_autoencoder, gru, lstm, mlp, seed_mlp, transformer). Fix: pick one of them, "
        "e.g. net=cnn"
    ]
    assert sandbox.runs() == []
    assert not list(sandbox.logs.glob("train/multiruns/*/*/0"))
