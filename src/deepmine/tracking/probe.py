"""Is an MLflow tracking server up? `/health`, asked the way MLflow's client asks everything.

Why not `urllib`: it knows nothing of MLflow's TLS settings, so a server behind a certificate
of a private CA (MLFLOW_TRACKING_SERVER_CERT_PATH), one that wants a client certificate
(MLFLOW_TRACKING_CLIENT_CERT_PATH), or a test server with MLFLOW_TRACKING_INSECURE_TLS=true
was reported unreachable while every later request of the run would have worked. Here the
request goes through `mlflow.utils.rest_utils.http_request` with the host credentials MLflow
itself builds from the environment (`get_default_host_creds`: those TLS settings, plus
MLFLOW_TRACKING_USERNAME/PASSWORD, ~/.mlflow/credentials, MLFLOW_TRACKING_TOKEN,
MLFLOW_TRACKING_AUTH), so the probe succeeds exactly when the run's client will. No retries:
MLflow's would keep an unreachable server's user waiting for minutes before the one-line error.
"""

from __future__ import annotations

from deepmine.errors import DeepmineError

#: seconds to wait for `/health` (as `deepmine.tracking.store.SERVER_TIMEOUT_S`)
TIMEOUT_S = 5.0


def check_health(uri: str, timeout_s: float = TIMEOUT_S) -> None:
    """Return when the server at `uri` answers `/health` with a 2xx status; otherwise raise
    the one-line "MLflow tracking server <uri> is unreachable (<reason>)" (a password in `uri`
    masked), whatever failed: no connection, TLS refused, timeout, or an HTTP error status."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri.rstrip("/"))
    try:
        response = http_request(
            creds,
            "/health",
            "GET",
            max_retries=0,
            timeout=timeout_s,
            raise_on_status=False,
        )
    except Exception as exc:
        raise unreachable(uri, _reason(exc)) from exc
    if not 200 <= response.status_code < 300:
        raise unreachable(uri, f"HTTP {response.status_code} {response.reason or ''}".strip())


def unreachable(uri: str, reason: str) -> DeepmineError:
    """The one line of a server that did not answer its health probe."""
    from deepmine.provenance.secrets import mask_overrides

    (shown,) = mask_overrides([uri])  # http://user:pw@host -> http://user:***@host
    return DeepmineError(
        f"MLflow tracking server {shown} is unreachable ({reason})",
        "start it (`mlflow server --host 127.0.0.1 --port 5000 ...`) or drop "
        "logger.tracking_uri to use the local SQLite store; for HTTPS, set "
        "MLFLOW_TRACKING_SERVER_CERT_PATH to its CA bundle",
    )


def _reason(exc: BaseException) -> str:
    """The root cause of a failed request in one short line: MLflow wraps requests' error,
    which wraps urllib3's, which wraps the socket's or the TLS layer's (the useful part)."""
    import ssl

    seen, found, current = set(), exc, exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = current
        if isinstance(current, ssl.SSLError | ConnectionError | TimeoutError):
            break
        nested = getattr(current, "reason", None)  # urllib3's MaxRetryError holds it here
        if not isinstance(nested, BaseException):
            nested = next(
                (a for a in getattr(current, "args", ()) if isinstance(a, Exception)), None
            )
        current = nested or current.__cause__ or current.__context__
    text = " ".join(str(found).split())
    if isinstance(found, ssl.SSLError) and getattr(found, "verify_message", None):
        text = f"TLS: certificate verify failed: {found.verify_message}"
    return text[:300] or type(found).__name__
