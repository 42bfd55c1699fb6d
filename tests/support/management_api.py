"""The API Gateway Management API on loopback, answering as AWS does: the stand-in the Lambda
tests post to (moto's serves only boto3 calls it intercepts, and never answers 410 or 429).

It checks every request's SigV4 signature as AWS would, from the request as received (a
forged or mis-encoded one gets 403), records what each connection was sent, and answers with
the status a test's `answer` function chooses (200 by default), after `latency` seconds.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

STAGE = "prod"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>\w+)"
)

# (method, connection id, attempt number for that pair from 1) -> HTTP status, or HANG_UP
Answer = Callable[[str, str, int], int]
HANG_UP = 0  # close the connection without a status line, as a dropped connection does


def always_ok(method: str, connection_id: str, attempt: int) -> int:
    return 200 if method == "POST" else 204


class ManagementApiStandIn(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, answer: Answer = always_ok, latency: float = 0.0) -> None:
        self.answer = answer
        self.latency = latency
        self.lock = threading.Lock()
        self.frames: dict[str, list[str]] = defaultdict(list)  # delivered posts
        self.deleted: list[str] = []  # answered deletes
        self.attempts: Counter[tuple[str, str]] = Counter()  # (method, id): requests seen
        self.forged = 0  # requests refused for their signature
        self.in_flight = self.peak = 0
        super().__init__(("127.0.0.1", 0), _Handler)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}/{STAGE}"

    def take(self, connection_id: str) -> list[str]:
        with self.lock:
            frames, self.frames[connection_id] = self.frames[connection_id], []
        return frames

    def take_json(self, connection_id: str) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.take(connection_id)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway's endpoint allows
    server: ManagementApiStandIn

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        stand_in = self.server
        prefix = f"/{STAGE}/@connections/"
        if not self.path.startswith(prefix):
            return self._reply(404)
        connection_id = unquote(self.path[len(prefix) :])
        if not self._signed(body):
            with stand_in.lock:
                stand_in.forged += 1
            return self._reply(403)
        with stand_in.lock:
            stand_in.attempts[self.command, connection_id] += 1
            attempt = stand_in.attempts[self.command, connection_id]
            stand_in.in_flight += 1
            stand_in.peak = max(stand_in.peak, stand_in.in_flight)
        try:
            time.sleep(stand_in.latency)
            status = stand_in.answer(self.command, connection_id, attempt)
            with stand_in.lock:
                if HANG_UP < status < 300 and self.command == "POST":
                    stand_in.frames[connection_id].append(body.decode())
                elif HANG_UP < status < 300:
                    stand_in.deleted.append(connection_id)
        finally:
            with stand_in.lock:
                stand_in.in_flight -= 1
        if status == HANG_UP:
            self.close_connection = True
            return
        self._reply(status)

    def _signed(self, body: bytes) -> bool:
        """Recompute the signature from the request as received, as AWS does."""
        match = _AUTHORIZATION.fullmatch(self.headers.get("Authorization", ""))
        # The account's keys: whatever the process's environment holds (moto's mock_aws sets
        # its own), as a client in this process finds them.
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if match is None or match["key"] != key or secret is None:
            return False
        signed = match["signed"].split(";")
        request = AWSRequest(
            method=self.command,
            url=f"http://{self.headers['Host']}{self.path}",
            data=body,
            headers={name: self.headers[name] for name in signed if name != "host"},
        )
        request.context["timestamp"] = self.headers.get("X-Amz-Date", "")
        signer = SigV4Auth(Credentials(key, secret), match["service"], match["region"])
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        return bool(match["service"] == "execute-api" and expected == match["sig"])

    def _reply(self, status: int) -> None:
        body = b"" if status < 300 else json.dumps({"message": f"HTTP {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_management_api(
    answer: Answer = always_ok, latency: float = 0.0
) -> Iterator[ManagementApiStandIn]:
    stand_in = ManagementApiStandIn(answer, latency)
    threading.Thread(target=stand_in.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield stand_in
    finally:
        stand_in.shutdown()
        stand_in.server_close()
