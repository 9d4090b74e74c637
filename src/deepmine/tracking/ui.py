"""`deepmine ui`: the MLflow UI on the same store the runs were written to."""

from __future__ import annotations

import subprocess
import sys


def default_tracking_uri() -> str:
    """`logger.tracking_uri` as `deepmine train` would resolve it (local overrides included)."""
    from deepmine.claims import compose_train

    return str(compose_train([]).logger.tracking_uri)


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]


def serve(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000) -> int:
    uri = tracking_uri or default_tracking_uri()
    print(f"MLflow UI on {uri}: open http://{host}:{port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(ui_command(uri, host, port))
    except KeyboardInterrupt:
        return 0
