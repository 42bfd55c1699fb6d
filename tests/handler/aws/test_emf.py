"""On Lambda, each invocation writes what it counted in CloudWatch's embedded metric format:
one JSON line per set of dimensions, the /metrics names without `wschat_` and `_total`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handler.aws import websocket
from tests.support.aws import event

pytestmark = pytest.mark.usefixtures("aws")


def emitted(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


def test_each_invocation_writes_its_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    query = {"room": "emf", "token": "t"}
    assert (
        websocket.connect(event("connect", connectionId="A", queryStringParameters=query))[
            "statusCode"
        ]
        == 200
    )
    (connected,) = emitted(capsys.readouterr().out)
    assert connected["connects"] == 1 and connected["service"] == "wschat"
    directive = connected["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "wschat" and directive["Dimensions"] == [["service"]]
    assert {m["Name"] for m in directive["Metrics"]} == {"connects"}

    websocket.default(event("message", connectionId="A", body="hello"))
    (said,) = emitted(capsys.readouterr().out)
    assert said["messages_received"] == 1 and said["messages_delivered"] >= 2  # the echo lines
    assert len(said["publish_duration"]) == 1

    refused = event("connect", connectionId="B", queryStringParameters={"room": "emf"})
    assert websocket.connect(refused)["statusCode"] == 403
    (no_credential,) = emitted(capsys.readouterr().out)
    assert no_credential["status"] == "403" and no_credential["handshakes_refused"] == 1
    assert no_credential["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "status"]]

    gone = event("disconnect", connectionId="A")
    gone["requestContext"]["disconnectStatusCode"] = 1001
    websocket.disconnect(gone)
    (left,) = emitted(capsys.readouterr().out)
    assert left["disconnects"] == 1 and left["code"] == "1001"


def test_a_clients_own_close_code_is_counted_as_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for code in (3000, 4999, 1001):
        gone = event("disconnect", connectionId=f"C{code}")
        gone["requestContext"]["disconnectStatusCode"] = code
        websocket.disconnect(gone)
    codes = [line["code"] for line in emitted(capsys.readouterr().out)]
    assert codes == ["other", "other", "1001"]
