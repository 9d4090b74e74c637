"""The tracking server's health probe honours MLflow's TLS settings: a real HTTPS server on
loopback with a self-signed certificate (made here with `cryptography`) is unreachable without
them, in one line, and reachable with MLFLOW_TRACKING_SERVER_CERT_PATH (or
MLFLOW_TRACKING_INSECURE_TLS), exactly as MLflow's own client would find it."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deepmine.errors import DeepmineError
from deepmine.tracking.probe import check_health

TLS_ENV = (
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deepmine test server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _serve(status: int, tls: tuple[Path, Path] | None = None):
    """A loopback server answering `/health` with `status`: (server, its base URL)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            code = status if self.path == "/health" else 404
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    scheme = "http"
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, tls))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)
    cert = _self_signed(tmp_path)
    server, url = _serve(200, cert)
    yield url, cert[0]
    server.shutdown()
    server.server_close()


def test_the_health_probe_follows_mlflow_tls_settings(tls_server, monkeypatch):
    url, cert = tls_server
    with pytest.raises(DeepmineError) as refused:
        check_health(url)
    line = refused.value.one_line()
    assert "\n" not in line and f"MLflow tracking server {url} is unreachable" in line
    assert "certificate verify failed" in line and "MLFLOW_TRACKING_SERVER_CERT_PATH" in line

    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    assert check_health(url) is None  # the server's own certificate as the CA bundle

    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    assert check_health(url) is None


def test_the_health_probe_reports_an_unhealthy_or_absent_server_in_one_line():
    server, url = _serve(503)
    try:
        with pytest.raises(DeepmineError, match=r"is unreachable \(HTTP 503") as unhealthy:
            check_health(url.replace("127.0.0.1", "alice:pw-98765@127.0.0.1"), timeout_s=2)
        line = unhealthy.value.one_line()
        assert "pw-98765" not in line and "alice:***@127.0.0.1" in line
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(DeepmineError, match=r"is unreachable \(.*refused"):
        check_health(url)  # nothing listens there any more
