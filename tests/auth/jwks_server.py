"""A real JWKS endpoint on loopback whose behaviour a test can change: ok, slow, html, error."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"
        self.delay = 0.0
        self.fetches = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.fetches += 1
                    mode, delay, keys = owner.mode, owner.delay, list(owner.keys)
                if delay:
                    time.sleep(delay)
                if mode == "error":
                    self.send_error(500)
                    return
                if mode == "html":
                    body = b"<html><body>Login required</body></html>"
                    content_type = "text/html"
                else:
                    body = json.dumps({"keys": keys}).encode()
                    content_type = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def set(self, mode: str = "ok", delay: float = 0.0) -> None:
        with self._lock:
            self.mode, self.delay = mode, delay

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def jwks_server(keys: list[dict[str, Any]]) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = keys
    with server.running():
        yield server
