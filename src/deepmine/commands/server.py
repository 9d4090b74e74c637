"""`deepmine server`: a team's MLflow tracking server on a database."""

from __future__ import annotations


def run(args: list[str]) -> int:
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
