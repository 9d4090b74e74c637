"""`deepmine ui`: the MLflow UI on the project's tracking store."""

from __future__ import annotations


def run(args: list[str]) -> int:
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
