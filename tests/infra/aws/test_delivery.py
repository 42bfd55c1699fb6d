"""Management API delivery: 410, 429/5xx, 403, no answer, timeouts and size, against the
Management API stand-in (tests/support/management_api.py), which checks every signature."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from auth.principal import Principal
from handler.chat.core import ChatCore, ConnectParams
from handler.chat.ports import Dialect
from infra.aws.connections import DynamoConnections
from infra.aws.delivery import ManagementApiDelivery, management_endpoint
from infra.aws.management_api import ManagementApi
from infra.aws.message_log import DynamoMessageLog
from tests.support.management_api import (
    HANG_UP,
    Answer,
    ManagementApiStandIn,
    running_management_api,
)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def statuses(**by_id: list[int]) -> Answer:
    """Answer each connection's attempts in turn from its list (its last entry thereafter);
    200 for any other connection."""

    def answer(method: str, connection_id: str, attempt: int) -> int:
        script = by_id.get(connection_id, [200])
        return script[min(attempt, len(script)) - 1]

    return answer


@pytest.fixture
def api() -> Iterator[ManagementApiStandIn]:
    with running_management_api() as stand_in:
        yield stand_in


def delivery(
    stand_in: ManagementApiStandIn, sleeps: list[float] | None = None, **options: Any
) -> ManagementApiDelivery:
    return ManagementApiDelivery(
        ManagementApi(stand_in.endpoint, "us-east-1", pool_size=4),
        sleep=(sleeps if sleeps is not None else []).append,
        **options,
    )


def test_gone_is_reported_and_not_retried(api: ManagementApiStandIn) -> None:
    api.answer = statuses(b=[410])
    assert delivery(api).send(["a", "b", "c"], "hi") == ["b"]
    assert api.attempts["POST", "b"] == 1
    assert api.take("a") == api.take("c") == ["hi"] and api.take("b") == []


def test_welcome_delivery_waits_out_a_410_while_the_handshake_completes(
    api: ManagementApiStandIn,
) -> None:
    # $connect has returned but API Gateway may not accept sends for a moment yet.
    api.answer = statuses(new=[410, 410, 200], never=[410])
    sleeps: list[float] = []
    patient = delivery(api, sleeps, gone_attempts=3)
    assert patient.send(["new"], "hi") == []
    assert api.take("new") == ["hi"] and len(sleeps) == 2
    assert patient.send(["never"], "hi") == ["never"]
    assert api.attempts["POST", "never"] == 3


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_retried_with_backoff(
    api: ManagementApiStandIn, status: int
) -> None:
    api.answer = statuses(a=[status, status, 200])
    sleeps: list[float] = []
    assert delivery(api, sleeps).send(["a"], "hi") == []
    assert api.take("a") == ["hi"] and api.attempts["POST", "a"] == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2 > 0


def test_persistent_failure_gives_up_and_the_batch_goes_on(
    api: ManagementApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer = statuses(a=[500])
    assert delivery(api).send(["a", "b"], "hi") == []
    assert api.take("b") == ["hi"] and api.attempts["POST", "a"] == 3
    assert "delivery to a failed after 3 attempt(s): HTTP 500" in caplog.text


@pytest.mark.parametrize("status", [400, 413])
def test_a_refused_post_is_logged_and_not_retried(
    api: ManagementApiStandIn, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer = statuses(a=[status, 200])
    assert delivery(api).send(["a"], "hi") == []
    assert api.attempts["POST", "a"] == 1
    assert f"failed after 1 attempt(s): HTTP {status}" in caplog.text


def test_forbidden_is_logged_loudly_and_not_retried(
    api: ManagementApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer = statuses(a=[403])
    with caplog.at_level(logging.ERROR):
        assert delivery(api).send(["a"], "hi") == []
    assert api.attempts["POST", "a"] == 1
    assert any(r.levelno == logging.ERROR and "403" in r.getMessage() for r in caplog.records)


def test_a_wrong_secret_is_refused_by_the_signature_check(
    api: ManagementApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # The stand-in's check is what makes the tests below mean something: prove it bites.
    from botocore.credentials import Credentials

    wrong = Credentials("testing", "not-the-accounts")
    forged = ManagementApiDelivery(ManagementApi(api.endpoint, "us-east-1", 1, wrong))
    assert forged.send(["a"], "hi") == []
    assert api.forged == 1 and api.take("a") == []
    assert "forbidden (403)" in caplog.text


@pytest.mark.parametrize(
    "connection_id",
    ["Ab3dEfGhIjKlMnO=", "a/b", "a b", "%41", "?x=1#y", "é", "a+b", "..", "x" * 200],
)
def test_any_connection_id_is_encoded_and_signed_as_aws_checks_it(
    api: ManagementApiStandIn, connection_id: str
) -> None:
    # The id goes in the path: every byte of it must be encoded, and signed as sent.
    assert delivery(api).send([connection_id], "hi") == []
    assert api.forged == 0 and api.take(connection_id) == ["hi"]
    ManagementApiDelivery(ManagementApi(api.endpoint, "us-east-1", 1)).close(
        connection_id, 1000, ""
    )
    assert api.deleted == [connection_id]


def test_payload_over_128_kib_is_never_sent(
    api: ManagementApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    assert delivery(api).send(["a"], "x" * (128 * 1024 + 1)) == []
    assert not api.attempts
    assert "over API Gateway's 128 KiB" in caplog.text


def test_gone_recipient_records_are_deleted_not_the_senders(
    aws: None, management_api: ManagementApiStandIn
) -> None:
    dynamodb = boto3.client("dynamodb")
    connections = DynamoConnections(dynamodb, "wschat-test")
    now = [time.time()]
    management_api.answer = statuses(gone=[410])
    core = ChatCore(
        connections,
        DynamoMessageLog(dynamodb, "wschat-test"),
        delivery(management_api),
        wall_clock=lambda: now[0],
    )
    for cid in ("sender", "gone", "alive"):
        core.connect(cid, "room", Principal(cid, cid, cid), ConnectParams(Dialect.TEXT))
    now[0] += 60  # well past the handshake grace
    core.message("sender", "hello")
    assert len(management_api.take("sender")) == 2  # the seed's two echo lines
    assert len(management_api.take("alive")) == 1
    assert {c.id for c in connections.in_room("room")} == {"sender", "alive"}
    assert connections.get("gone") is None and connections.get("sender") is not None


def test_a_dropped_connection_is_retried_not_lost(
    api: ManagementApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # The bug this catches: a post that got no answer (dropped keep-alive connection, read
    # timeout) was given up, and that recipient silently missed the message while everyone
    # else got it.
    api.answer = statuses(flaky=[HANG_UP, HANG_UP, 200])
    assert delivery(api).send(["flaky"], "hi") == []
    assert api.attempts["POST", "flaky"] == 3 and api.take("flaky") == ["hi"]
    assert "failed after" not in caplog.text


def test_timeout_is_isolated_to_its_recipient(
    api: ManagementApiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    def stalls(method: str, connection_id: str, attempt: int) -> int:
        if connection_id == "slow":
            time.sleep(3)
        return 200

    api.answer = stalls
    fast = ManagementApi(api.endpoint, "us-east-1", pool_size=4, read_timeout=0.3)
    started = time.monotonic()
    gone = ManagementApiDelivery(fast, concurrency=4).send(["fast1", "slow", "fast2"], "hi")
    assert gone == []
    assert api.take("fast1") == api.take("fast2") == ["hi"]
    # Bounded by the read timeout: 3 attempts x 0.3 s, plus backoff, and never by the 3 s
    # stall (or a multiple of it).
    assert time.monotonic() - started < 2.5
    assert "failed after 3 attempt(s): no answer (ReadTimeoutError)" in caplog.text


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


def test_an_unexpected_error_is_that_recipients_alone(
    api: ManagementApiStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No credentials anywhere: found out at the first post, logged, and the batch goes on.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    lost = ManagementApiDelivery(ManagementApi(api.endpoint, "us-east-1", pool_size=2))
    assert lost.send(["a", "b"], "hi") == []
    assert "posting to a failed: NoCredentialsError" in caplog.text
    assert "posting to b failed: NoCredentialsError" in caplog.text
