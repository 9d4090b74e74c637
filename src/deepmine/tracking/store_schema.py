"""The schema of an SQLite store, known once per installed MLflow instead of once per process.

Why: a tiny run spent about 2 s of its 8 creating its fresh store (MLflow runs some fifty
migrations one after another), and every process loads all of MLflow's migration scripts only to
learn their head revision and compare it with the store's. Both answers depend on nothing but the
installed MLflow, so the first process to learn them keeps them under `<project>/.cache/`:

- a template: an empty store MLflow itself created and migrated (with deepmine's retired
  `Default`), copied into place for every new store (`copy_template`);
- the head revision, so a store whose `alembic_version` already equals it is opened without
  MLflow's check (`schema_check_skipped`). A new store, an old one or any other revision still
  goes through MLflow's own check and its "out-of-date database schema" refusal.

The cache is keyed by MLflow's version and the names of its migration scripts: another MLflow
(or one with another migration) finds no entry and builds its own. Everything here is an
optimization: when the cache cannot be read or written, MLflow's own path runs as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path


def _migrations_dir() -> Path:
    import mlflow

    return Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"


def _key() -> str:
    """MLflow's version and its migration scripts' names: what fixes the schema it creates."""
    import mlflow

    try:
        names = sorted(p.name for p in _migrations_dir().iterdir() if p.suffix == ".py")
    except OSError:
        names = []
    digest = hashlib.sha1("\n".join(names).encode(), usedforsecurity=False).hexdigest()[:12]
    return f"mlflow-{mlflow.__version__}-{digest}"


def _cache_dir() -> Path:
    from deepmine.project import project_root

    return project_root() / ".cache" / "mlflow-store"


def known_head() -> str | None:
    """The head revision of the installed MLflow's schema, if a process already learned it."""
    try:
        return json.loads((_cache_dir() / f"{_key()}.json").read_text())["head"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def revision(db: Path) -> str | None:
    """The schema revision `db` is at (None: not a store, or no revision table yet); read
    only, with the stdlib driver, so nothing of SQLAlchemy or alembic is loaded for it."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return rows[0][0] if len(rows) == 1 else None


def copy_template(scratch: Path) -> bool:
    """Fill `scratch` with a copy of the cached empty store; False when there is none (or it
    is not at the known head revision), and `scratch` is then left absent."""
    head = known_head()
    template = _cache_dir() / f"{_key()}.db"
    if head is None:
        return False
    try:
        shutil.copyfile(template, scratch)
    except OSError:
        scratch.unlink(missing_ok=True)
        return False
    if revision(scratch) != head:
        scratch.unlink(missing_ok=True)
        return False
    _restamp_default(scratch)
    return True


def _restamp_default(db: Path) -> None:
    """Give the copied `Default` experiment (id 0, retired) what MLflow would have given it
    here and now: its creation time and its artifact location under the current directory."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.tracking._tracking_service.utils import _SERVER_ARTIFACT_ROOT_ENV_VAR
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    # the artifact root MLflow's SQLite store takes when none is given (`_get_sqlalchemy_store`)
    root = os.environ.get(_SERVER_ARTIFACT_ROOT_ENV_VAR, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    location = append_to_uri_path(resolve_uri_if_local(root), "0")
    now = int(time.time() * 1000)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ?, creation_time = ?, "
            "last_update_time = ? WHERE experiment_id = 0",
            (str(location), now, now),
        )


def save_template(created: Path) -> None:
    """Keep a copy of `created`, an empty store MLflow just created and migrated (its engine
    closed), and the head revision, for the next new store. Written to a scratch name and
    renamed, so a reader finds either nothing or a whole file; never fails the run."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    if revision(created) != head:
        return
    folder, key = _cache_dir(), _key()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch = folder / f".{key}.db.{os.getpid()}"
        shutil.copyfile(created, scratch)
        os.replace(scratch, folder / f"{key}.db")
        info = folder / f".{key}.json.{os.getpid()}"
        info.write_text(json.dumps({"head": head}) + "\n")
        os.replace(info, folder / f"{key}.json")
    except OSError:
        pass


@contextlib.contextmanager
def schema_check_skipped(db: Path) -> Iterator[None]:
    """While MLflow opens `db`: skip its schema check for that file alone when the store is
    already at the known head revision (what the check would compare it with). Any other
    engine, and this one at any other revision, is checked as MLflow does."""
    head = known_head()
    if head is None or revision(db) != head:
        yield
        return
    import mlflow.store.db.utils as db_utils

    check = db_utils._verify_schema
    target = str(db)

    def verify(engine):
        if engine.url.database == target:
            return None  # the revision was just read from this file: it is the head
        return check(engine)

    db_utils._verify_schema = verify
    try:
        yield
    finally:
        db_utils._verify_schema = check
