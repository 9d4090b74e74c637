"""`deepmine server`: a team's MLflow tracking server on a database, artifacts served through it.

Why a wrapper around `mlflow server`: a store that cannot be used (a database that is down, a
wrong password, a URI scheme MLflow does not take, a missing Python driver) would otherwise
surface as a traceback from one of several worker processes, or as a server that answers
`/health` and fails every request. Here the store is opened once, before anything starts, and a
problem is one line with its fix. The server is then run like `deepmine ui` runs the UI: in a
process group of its own, workers sized to the machine, the whole group stopped on exit.

Artifacts are proxied (`--serve-artifacts`): clients send them to the server, which writes them
under `--artifacts-destination`, so a client needs no access to the server's disks or buckets.
A password in the database URI is never printed; a password kept out of the URI (PGPASSWORD,
~/.pgpass) is not even on the command line.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from deepmine.errors import DeepmineError
from deepmine.provenance.secrets import MASK, mask_values
from deepmine.tracking.ui import default_workers, run_group

#: seconds to wait for the database to answer before it is reported unreachable
CONNECT_TIMEOUT_S = 5
#: the URI shown when a backend store is missing or wrong
EXAMPLE_URI = "postgresql://mlflow@127.0.0.1:5432/mlflow"
#: Python modules SQLAlchemy imports for a database, and the pip package that provides each
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "'psycopg[binary]'",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


def default_artifacts_destination() -> Path:
    """Where the server keeps artifacts unless told: a folder of the project (git-ignored),
    beside, not inside, the folders of the project's own SQLite store."""
    from deepmine.project import project_root

    return project_root() / "mlartifacts" / "server"


def shown(uri: str) -> str:
    """`uri` as printed: a password written into it is masked, however short."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return uri
    if password is None:
        return uri
    netloc = parts.netloc.replace(f":{password}@", f":{MASK}@", 1)
    return parts._replace(netloc=netloc).geturl()


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
    allowed_hosts: str | None = None,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers or default_workers()),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


def check_backend(uri: str | None) -> str:
    """The backend store URI, checked: a database MLflow can keep runs in, whose driver is
    installed and which answers now. Returns the URI to pass to `mlflow server`."""
    from mlflow.store.db.db_types import DATABASE_ENGINES

    if not uri:
        raise DeepmineError(
            "deepmine server needs the database that keeps the runs",
            f"e.g. `deepmine server --backend-store-uri {EXAMPLE_URI}`",
        )
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    dialect = scheme.split("+", 1)[0]
    if dialect not in DATABASE_ENGINES:
        what = f"scheme '{scheme}'" if scheme else "no scheme"
        raise DeepmineError(
            f"--backend-store-uri {shown(uri)} has {what}; MLflow keeps a server's runs in "
            f"a database: {', '.join(DATABASE_ENGINES)}",
            f"e.g. `deepmine server --backend-store-uri {EXAMPLE_URI}`",
        )
    if dialect == "sqlite":
        return _check_sqlite(uri)
    given = uri
    if scheme == "postgresql":
        # the driver deepmine installs: SQLAlchemy 2.1 made psycopg 3 the default for a bare
        # postgresql://, 2.0 and older psycopg2; naming it works with either
        uri = "postgresql+psycopg2://" + uri.split("://", 1)[1]
    _connect(uri, dialect, shown(given))
    return uri


def _check_sqlite(uri: str) -> str:
    path = uri.removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or not path or path == ":memory:":
        raise DeepmineError(
            f"--backend-store-uri {uri} names no database file",
            "e.g. `deepmine server --backend-store-uri sqlite:////srv/mlflow/mlflow.db`",
        )
    db = Path(path)
    if not db.is_absolute():
        raise DeepmineError(
            f"--backend-store-uri {uri} is relative to the current directory",
            f"use an absolute path, e.g. `deepmine server --backend-store-uri "
            f"sqlite:///{db.resolve()}`",
        )
    db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def _connect(uri: str, dialect: str, name: str) -> None:
    """Open one connection with SQLAlchemy (what MLflow itself uses) and close it."""
    import sqlalchemy
    from sqlalchemy.exc import NoSuchModuleError

    args = {"connect_timeout": CONNECT_TIMEOUT_S} if dialect in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.NullPool)
    except NoSuchModuleError as exc:
        raise DeepmineError(
            f"--backend-store-uri {name} names a driver SQLAlchemy does not know "
            f"('{uri.split('://', 1)[0]}')",
            f"use the plain scheme, e.g. `deepmine server --backend-store-uri {EXAMPLE_URI}`",
        ) from exc
    except ModuleNotFoundError as exc:
        package = DRIVER_PACKAGES.get((exc.name or "").split(".")[0], exc.name)
        fix = f"`pip install {package}`"
        if dialect == "postgresql":
            fix += " (or use postgresql://: its driver psycopg2 comes with deepmine)"
        raise DeepmineError(
            f"the Python driver for {name} is not installed (no module '{exc.name}')", fix
        ) from exc
    except Exception as exc:  # a malformed URI (bad port, ...)
        raise DeepmineError(
            f"--backend-store-uri {name} is not a valid database URI "
            f"({type(exc).__name__}: {mask_values(str(exc), _secrets(uri))[:200]})",
            f"e.g. `deepmine server --backend-store-uri {EXAMPLE_URI}`",
        ) from exc
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise _unreachable(uri, name, exc) from exc
    finally:
        engine.dispose()


def _unreachable(uri: str, name: str, exc: Exception) -> DeepmineError:
    from deepmine.errors import first_line

    cause = getattr(exc, "orig", None) or exc
    reason = mask_values(first_line(cause), _secrets(uri))[:300]
    lowered = reason.lower()
    if "password" in lowered or "authentication" in lowered:
        fix = (
            "check the user and password (in the URI, or PGPASSWORD / ~/.pgpass), or create the "
            "user as the README's 'A team server on PostgreSQL' shows"
        )
    elif "does not exist" in lowered:
        fix = "create it (README: 'A team server on PostgreSQL'), or correct --backend-store-uri"
    else:
        fix = (
            "start the database server, or correct host and port in --backend-store-uri "
            "(README: 'A team server on PostgreSQL')"
        )
    return DeepmineError(f"cannot connect to the database {name} ({reason})", fix)


def _secrets(uri: str) -> list[str]:
    """The password of `uri` as written in it and as decoded (either may appear in a message)."""
    from urllib.parse import unquote

    password = urlsplit(uri).password
    return [password, unquote(password)] if password else []


def password_to_env(uri: str) -> tuple[str, dict[str, str]]:
    """`uri` without its password, and the environment that gives the password to libpq.

    Why: a process's command line is readable by every user of the machine (`ps`), its
    environment only by its owner. PostgreSQL's drivers built on libpq (psycopg2, psycopg)
    read PGPASSWORD when the URI has none; other drivers keep the URI as given."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.password is None or url.get_backend_name() != "postgresql":
        return uri, {}
    if url.get_driver_name() not in ("psycopg2", "psycopg"):
        return uri, {}
    bare = url._replace(password=None).render_as_string(hide_password=False)
    return bare, {"PGPASSWORD": str(url.password)}


def serve(
    backend_store_uri: str | None,
    artifacts_destination: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
    allowed_hosts: str | None = None,
) -> int:
    uri = check_backend(backend_store_uri)
    if artifacts_destination and "://" in artifacts_destination:
        destination = artifacts_destination  # a bucket or another store MLflow writes to
    else:
        folder = Path(artifacts_destination or default_artifacts_destination()).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        destination = str(folder)
    reach = (
        "only this machine can reach it; --host 0.0.0.0 serves the network"
        if host in ("127.0.0.1", "localhost", "::1")
        else f"bound to {host}: anyone who can reach this address can read and change the runs"
    )
    url = f"http://{host}:{port}"
    # what other machines type: the wildcard address is not one they can reach
    reachable = f"http://{socket.getfqdn()}:{port}" if host in ("0.0.0.0", "::") else url
    print(
        f"MLflow tracking server on {shown(backend_store_uri)}, artifacts in {destination}: "
        f"{url} ({reach}; Ctrl-C stops it)\nclients record into it with "
        f"logger.tracking_uri={reachable} (or MLFLOW_TRACKING_URI={reachable})",
        flush=True,
    )
    bare, secret_env = password_to_env(uri)
    command = server_command(bare, destination, host, port, workers, allowed_hosts)
    return run_group(command, env={**os.environ, **secret_env})
