"""Management API delivery: 410, 429/5xx, 403, timeouts and size, with botocore's Stubber and a
real loopback server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from auth.principal import Principal
from handler.chat.core import ChatCore, ConnectParams
from handler.chat.ports import Dialect
from infra.apigw import ManagementApiDelivery, make_management_client, management_endpoint
from infra.dynamodb import DynamoConnections, DynamoMessageLog

ENDPOINT = "https://abcdef123.execute-api.us-east-1.amazonaws.com/prod"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return boto3.client("apigatewaymanagementapi", endpoint_url=ENDPOINT, region_name="us-east-1")


def post(cid: str, data: Any = b"hi") -> dict[str, Any]:
    return {"ConnectionId": cid, "Data": data}


def delivery(client: Any, sleeps: list[float] | None = None) -> ManagementApiDelivery:
    # One worker: the Stubber answers in order, so calls must be made in order.
    return ManagementApiDelivery(
        client, concurrency=1, sleep=(sleeps if sleeps is not None else []).append
    )


def test_gone_is_reported_and_not_retried(client: Any) -> None:
    with Stubber(client) as stub:
        stub.add_response("post_to_connection", {}, post("a"))
        stub.add_client_error(
            "post_to_connection", "GoneException", http_status_code=410, expected_params=post("b")
        )
        stub.add_response("post_to_connection", {}, post("c"))
        assert delivery(client).send(["a", "b", "c"], "hi") == ["b"]
        stub.assert_no_pending_responses()


def test_welcome_delivery_waits_out_a_410_while_the_handshake_completes(client: Any) -> None:
    # $connect has returned but API Gateway may not accept sends for a moment yet.
    sleeps: list[float] = []
    patient = ManagementApiDelivery(client, concurrency=1, gone_attempts=3, sleep=sleeps.append)
    with Stubber(client) as stub:
        for _ in range(2):
            stub.add_client_error(
                "post_to_connection",
                "GoneException",
                http_status_code=410,
                expected_params=post("new"),
            )
        stub.add_response("post_to_connection", {}, post("new"))
        assert patient.send(["new"], "hi") == []
        stub.assert_no_pending_responses()
    assert len(sleeps) == 2
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_client_error(
                "post_to_connection",
                "GoneException",
                http_status_code=410,
                expected_params=post("never"),
            )
        assert patient.send(["never"], "hi") == ["never"]


@pytest.mark.parametrize(
    ("code", "status"), [("LimitExceededException", 429), ("InternalServerError", 500)]
)
def test_throttling_and_server_errors_are_retried_with_backoff(
    client: Any, code: str, status: int
) -> None:
    sleeps: list[float] = []
    with Stubber(client) as stub:
        stub.add_client_error(
            "post_to_connection", code, http_status_code=status, expected_params=post("a")
        )
        stub.add_client_error(
            "post_to_connection", code, http_status_code=status, expected_params=post("a")
        )
        stub.add_response("post_to_connection", {}, post("a"))
        assert delivery(client, sleeps).send(["a"], "hi") == []
        stub.assert_no_pending_responses()
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2 > 0


def test_persistent_failure_gives_up_and_the_batch_goes_on(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_client_error(
                "post_to_connection",
                "InternalServerError",
                http_status_code=500,
                expected_params=post("a"),
            )
        stub.add_response("post_to_connection", {}, post("b"))
        assert delivery(client).send(["a", "b"], "hi") == []
        stub.assert_no_pending_responses()
    assert "after 3 attempt(s)" in caplog.text


def test_forbidden_is_logged_loudly_and_not_retried(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Stubber(client) as stub:
        stub.add_client_error(
            "post_to_connection",
            "ForbiddenException",
            http_status_code=403,
            expected_params=post("a"),
        )
        with caplog.at_level(logging.ERROR):
            assert delivery(client).send(["a"], "hi") == []
        stub.assert_no_pending_responses()
    assert any(r.levelno == logging.ERROR and "403" in r.getMessage() for r in caplog.records)


def test_payload_over_128_kib_is_never_sent(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with Stubber(client) as stub:  # no responses queued: any call would fail the test
        assert delivery(client).send(["a"], "x" * (128 * 1024 + 1)) == []
        stub.assert_no_pending_responses()
    assert "over API Gateway's 128 KiB" in caplog.text


def test_gone_recipient_records_are_deleted_not_the_senders(aws: None, client: Any) -> None:
    dynamodb = boto3.client("dynamodb")
    connections = DynamoConnections(dynamodb, "wschat-test")
    now = [time.time()]
    core = ChatCore(
        connections,
        DynamoMessageLog(dynamodb, "wschat-test"),
        delivery(client),
        wall_clock=lambda: now[0],
    )
    for cid in ("sender", "gone", "alive"):
        core.connect(cid, "room", Principal(cid, cid, cid), ConnectParams(Dialect.TEXT))
    now[0] += 60  # well past the handshake grace
    with Stubber(client) as stub:
        for _ in range(2):  # the seed's two echo lines to the sender
            stub.add_response("post_to_connection", {}, post("sender", ANY))
        # Room members come back in key order: alive, then gone.
        stub.add_response("post_to_connection", {}, post("alive", ANY))
        stub.add_client_error(
            "post_to_connection",
            "GoneException",
            http_status_code=410,
            expected_params=post("gone", ANY),
        )
        core.message("sender", "hello")
        stub.assert_no_pending_responses()
    assert {c.id for c in connections.in_room("room")} == {"sender", "alive"}
    assert connections.get("gone") is None and connections.get("sender") is not None


class _Hanging(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if "slow" in self.path:
            time.sleep(3)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server standing in for the Management API; yields its endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    with serving(_Hanging) as endpoint:
        yield endpoint


class _DropsFirst(BaseHTTPRequestHandler):
    """Hangs up without answering the first `drops` posts, then accepts."""

    protocol_version = "HTTP/1.1"
    drops = 3
    seen = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen += 1
        if type(self).seen <= self.drops:
            self.close_connection = True  # no status line: botocore sees a dropped connection
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_dropped_connection_is_retried_not_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The bug this catches: a post that got no answer (dropped keep-alive connection, read
    # timeout) was given up after botocore's one retry, and that recipient silently missed
    # the message while everyone else got it.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with serving(_DropsFirst) as endpoint:
        delivery = ManagementApiDelivery(make_management_client(endpoint, 2), backoff=0.01)
        assert delivery.send(["flaky"], "hi") == []
    # botocore's own two attempts, dropped; ours: two more, dropped then accepted.
    assert _DropsFirst.seen == 4
    assert "failed after" not in caplog.text


def test_timeout_is_isolated_to_its_recipient(
    hanging_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    real = make_management_client(hanging_endpoint, pool_size=4, read_timeout=0.3)
    delivered: list[str] = []
    real.meta.events.register(
        "after-call.apigatewaymanagementapi.PostToConnection",
        lambda http_response, **kw: delivered.append(http_response.url.rsplit("/", 1)[-1]),
    )
    started = time.monotonic()
    gone = ManagementApiDelivery(real, concurrency=4).send(["fast1", "slow", "fast2"], "hi")
    assert gone == []
    assert sorted(delivered) == ["fast1", "fast2"]
    # Bounded by the read timeout: 3 of our attempts x 2 of botocore's x 0.3 s, plus backoff,
    # and never by the 3 s stall (or a multiple of it).
    assert time.monotonic() - started < 2.9
    assert "failed after 3 attempt(s): ReadTimeoutError" in caplog.text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("d.example", "prod", "abc", "eu-west-1"),
            "https://abc.execute-api.eu-west-1.amazonaws.com/prod",
        ),
        (
            ("chat.example.com", "prod", "abc", "eu-west-1", "https://override/x/"),
            "https://override/x",
        ),
        (
            ("d", "prod", "abc", "eu-west-1", "", 4001),
            "http://localhost:4001",
        ),  # serverless offline
        (("chat.example.com", "v1", "", ""), "https://chat.example.com/v1"),
    ],
)
def test_management_endpoint(args: tuple[Any, ...], expected: str) -> None:
    assert management_endpoint(*args) == expected


def test_the_runtime_reads_the_platforms_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from handler.aws.runtime import AwsRuntime
    from infra.settings import load_settings

    online = AwsRuntime(load_settings({"AWS_REGION": "eu-west-1"}))
    assert online.endpoint_for("d", "prod", "abc") == (
        "https://abc.execute-api.eu-west-1.amazonaws.com/prod"
    )
    offline = AwsRuntime(load_settings({"IS_OFFLINE": "true", "WSCHAT_OFFLINE_WS_PORT": "4001"}))
    assert offline.endpoint_for("d", "prod", "abc") == "http://localhost:4001"
