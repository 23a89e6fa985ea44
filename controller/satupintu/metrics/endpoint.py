"""The /metrics HTTP endpoint: serves a body rendered per request, gzipped when asked (Prometheus asks)."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("satupintu.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GZIP_LEVEL = 1  # 2 MB at 500 OPDs: level 1 compresses ~10x in a few ms; higher levels cost more than they save


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    render: Callable[[], bytes]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        try:
            body = self.server.render()
        except Exception:  # never a traceback on the wire; the log has it
            log.exception("rendering /metrics failed")
            self.send_error(500, "metrics collection failed; see the daemon log")
            return
        self.send_response(200)
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, GZIP_LEVEL)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per scrape would flood the daemon's log


def serve_metrics(host: str, port: int, render: Callable[[], bytes]) -> ThreadingHTTPServer:
    """Serve `render()` on every GET, from a daemon thread; returns the server (shutdown() stops it)."""
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    server = server_class((host, port), _Handler)
    server.render = render
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
