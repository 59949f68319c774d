"""The optional HTTP endpoint of a runtime: ``/health`` and ``/metrics``.

``sandbox.start(http=("127.0.0.1", 9100))`` serves, from a stdlib
:class:`~http.server.ThreadingHTTPServer` in a daemon thread that stops with the
runtime:

- ``GET /health``: :meth:`Runtime.health() <sandbox.api.Runtime.health>` as JSON;
  status 200 when ``"ok"``, 503 when ``"degraded"`` or ``"down"``;
- ``GET /metrics``: the Prometheus text exposition
  (``text/plain; version=0.0.4``).

Port 0 picks a free port; ``rt.http_address`` says which. The endpoint has no
authentication: bind it to a loopback or otherwise private address.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from sandbox.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from sandbox.health import Observability

__all__ = ["MetricsServer"]

log = logging.getLogger("sandbox.http")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path = self.path.split("?", 1)[0]
        obs = self.server.obs
        try:
            if path == "/health":
                health = obs.health()
                body = json.dumps(health, default=str, indent=1).encode()
                self._send(200 if health["status"] == "ok" else 503, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE, obs.metrics_text().encode())
            else:
                self._send(404, "text/plain; charset=utf-8",
                           b"not found: try /health or /metrics\n")
        except Exception as exc:  # never kill the server thread; say what failed
            log.exception("GET %s failed", path)
            self._send(500, "text/plain; charset=utf-8", f"{type(exc).__name__}: {exc}\n".encode())

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    obs: Observability


class MetricsServer:
    """The listening server and its thread; :meth:`stop` closes both."""

    def __init__(self, obs: Observability, address: tuple[str, int]) -> None:
        self._server = _Server(address, _Handler)  # binds now: OSError if it cannot
        self._server.obs = obs
        host, port = self._server.server_address[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"sandbox-http:{obs.rt.name}", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()  # returns once serve_forever has ended
        self._server.server_close()
        self._thread.join(5.0)
