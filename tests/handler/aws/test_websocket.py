"""The Lambda handlers under moto: the uvicorn endpoint's chat, driven by API Gateway events."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from handler.aws import websocket
from handler.aws.runtime import runtime
from tests.support.aws import FirstWriteStall, event
from tests.support.management_api import ManagementApiStandIn, running_management_api

pytestmark = pytest.mark.usefixtures("aws")


@pytest.fixture
def posts(management_api: ManagementApiStandIn) -> ManagementApiStandIn:
    """What the handlers posted to each connection, through the Management API stand-in."""
    return management_api


@pytest.fixture
def deletes(management_api: ManagementApiStandIn) -> list[str]:
    """Connections the handlers closed (their DELETE calls)."""
    return management_api.deleted


def connect(cid: str, room: str, token: str, **query: str) -> dict[str, Any]:
    return websocket.connect(
        event(
            "connect",
            connectionId=cid,
            queryStringParameters={"room": room, "token": token, **query},
        )
    )


def connect_authorized(cid: str, authorizer: dict[str, Any]) -> dict[str, Any]:
    """$connect as it arrives with an authorizer attached: its context, no credential."""
    return websocket.connect(
        event(
            "connect",
            connectionId=cid,
            authorizer=authorizer,
            queryStringParameters={"room": "foo"},
        )
    )


def welcome_event(cid: str) -> dict[str, Any]:
    """What `$connect` schedules for the welcome function: the API its event named."""
    context = event("connect")["requestContext"]
    return {"connectionId": cid, **{k: context[k] for k in ("domainName", "stage", "apiId")}}


def send(cid: str, body: str) -> dict[str, Any]:
    return websocket.default(event("message", connectionId=cid, body=body))


def table_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = boto3.client("dynamodb").scan(TableName="wschat-test")["Items"]
    return items


def test_connect_message_fanout_disconnect_across_two_rooms(posts: ManagementApiStandIn) -> None:
    assert connect("A", "foo", "alice-token", q="7") == {"statusCode": 200}
    assert connect("B", "foo", "bob-token") == {"statusCode": 200}
    assert connect("J", "foo", "jo-token", format="json") == {"statusCode": 200}
    assert connect("C", "bar", "carol-token") == {"statusCode": 200}
    assert websocket.welcome(welcome_event("J")) == {"statusCode": 200}
    welcome = posts.take_json("J")[-1]
    assert welcome["type"] == "welcome" and welcome["room"] == "foo" and welcome["count"] == 3

    assert send("A", "hello") == {"statusCode": 200}
    assert posts.take("A") == [
        "Session cookie or query token value is: alice-token",
        "Query parameter q is: 7",
        "Message text was: hello, for item ID: foo",
    ]
    (line,) = posts.take("B")
    assert line.startswith("user-") and line.endswith(": hello") and "alice-token" not in line
    (message,) = posts.take_json("J")
    assert (message["type"], message["id"], message["text"]) == ("message", 1, "hello")
    assert posts.take("C") == []

    send("J", json.dumps({"action": "sendmessage", "text": "hi all"}))
    assert [m["text"] for m in posts.take_json("J")] == ["hi all"]
    assert posts.take("A")[0].endswith(": hi all")
    assert posts.take("B")[0].endswith(": hi all")
    send("J", '{"action": "history", "since": 0}')
    history = posts.take_json("J")[0]
    assert [m["id"] for m in history["messages"]] == [1, 2]

    assert websocket.disconnect(event("disconnect", connectionId="B")) == {"statusCode": 200}
    leave = posts.take_json("J")[0]
    assert (leave["type"], len(leave["leaves"]), leave["count"]) == ("presence", 1, 2)
    send("A", "after")
    assert len(posts.take("A")) == 3
    assert posts.take("B") == []
    send("C", "in bar")
    assert posts.take("A") == [] and len(posts.take("C")) == 2


def test_json_subprotocol_is_selected_and_token_never_echoed(posts: ManagementApiStandIn) -> None:
    headers = {**event("connect")["headers"], "Sec-WebSocket-Protocol": "wschat.json, bearer, tok"}
    response = websocket.connect(
        event("connect", connectionId="S", headers=headers, queryStringParameters={"room": "r"})
    )
    assert response == {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "wschat.json"}}
    send("S", '{"action":"ping"}')
    # No welcome function is configured, so $connect welcomed it inline (moto, unlike API
    # Gateway, accepts a post during $connect).
    assert [f["type"] for f in posts.take_json("S")] == ["welcome", "pong"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"room": "foo"}, 403),  # no credential
        ({"token": "t"}, 400),  # no room
        ({"room": "r" * 10_000, "token": "t"}, 403),
        ({"room": "foo", "token": "t", "q": "abc"}, 403),
        ({"room": "foo", "token": "t", "format": "xml"}, 403),
        ({"room": "foo", "token": "t", "since": "-1"}, 403),
    ],
)
def test_refused_connects_write_nothing(query: dict[str, str], status: int) -> None:
    response = websocket.connect(event("connect", queryStringParameters=query))
    assert response["statusCode"] == status
    assert table_items() == []


def test_jwt_mode_rejects_a_bad_token_with_401(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_AUTH", "jwt")
    monkeypatch.setenv("WSCHAT_JWT_ALGORITHMS", "HS256")
    monkeypatch.setenv("WSCHAT_JWT_SECRET", "x" * 40)
    response = connect("X", "foo", "not.a.jwt")
    assert response["statusCode"] == 401
    assert table_items() == []


def test_authorizer_context_names_the_principal(posts: ManagementApiStandIn) -> None:
    authorizer = {
        "principalId": "u-1",
        "name": "Ursula",
        "echo": "u-1",
        "expiresAt": "",
        "rights": "read,write",
    }
    connect_authorized("U", authorizer)
    connect("V", "foo", "v")
    send("U", "from ursula")
    assert posts.take("U")[0] == "Session cookie or query token value is: u-1"
    assert posts.take("V") == ["Ursula: from ursula"]


@pytest.mark.parametrize("dialect", ["text", "json"])
def test_the_token_is_never_at_rest_yet_the_seed_line_shows_it(
    posts: ManagementApiStandIn, dialect: str
) -> None:
    """Token auth through the authorizer, as on AWS: neither the authorizer's context (which
    API Gateway keeps for the connection's life) nor the table holds the token, and the text
    dialect's first line still shows it (the seed's behaviour)."""
    from handler.aws.authorizer import handler as authorizer

    query = {"room": "foo", "token": "tok-s3cret", "format": dialect}
    verdict = authorizer(event("authorizer", queryStringParameters=query))
    assert "tok-s3cret" not in json.dumps(verdict)
    context = {"principalId": verdict["principalId"], **verdict["context"]}
    connected = websocket.connect(
        event("connect", connectionId="U", authorizer=context, queryStringParameters=query)
    )
    assert connected["statusCode"] == 200
    send("U", "hi" if dialect == "text" else '{"action":"sendmessage","text":"hi"}')
    assert "tok-s3cret" not in json.dumps(table_items())
    if dialect == "text":
        assert posts.take("U")[0] == "Session cookie or query token value is: tok-s3cret"
    else:
        assert "tok-s3cret" not in json.dumps(posts.take("U"))


def test_expired_authorizer_principal_is_closed_on_its_next_frame(
    posts: ManagementApiStandIn, deletes: list[str]
) -> None:
    authorizer = {
        "principalId": "old",
        "name": "Old",
        "echo": "old",
        "expiresAt": 1,
        "rights": "read",
    }
    connect_authorized("O", authorizer)
    connect("W", "foo", "w")
    send("O", "too late")
    assert deletes == ["O"]
    assert posts.take("W") == []


@pytest.mark.parametrize("expires", ["soon", "nan", "inf", [1]], ids=str)
def test_an_unreadable_authorizer_expiry_refuses_the_connection(expires: object) -> None:
    authorizer = {"principalId": "u-1", "name": "U", "echo": "u-1", "expiresAt": expires}
    assert connect_authorized("U", authorizer)["statusCode"] == 401
    assert table_items() == []


def test_an_authorizer_context_without_read_is_refused() -> None:
    for rights in ("", "write"):
        context = {"principalId": "u-1", "name": "U", "echo": "u-1", "rights": rights}
        assert connect_authorized("U", context)["statusCode"] == 403
    assert table_items() == []


def test_binary_frame_gets_an_error_line(posts: ManagementApiStandIn) -> None:
    connect("A", "foo", "t")
    raw = event(
        "message",
        connectionId="A",
        body=base64.b64encode(b"\x00\x01").decode(),
        isBase64Encoded=True,
    )
    assert websocket.default(raw) == {"statusCode": 200}
    assert posts.take("A") == ["Error: binary frames are not supported; send text"]


@pytest.mark.parametrize(
    ("handler", "bad_event"),
    [
        (websocket.default, {"body": "x"}),  # no requestContext
        (websocket.default, event("message", body=None)),
        (websocket.default, event("message", body="!!not base64!!", isBase64Encoded=True)),
        (websocket.default, event("message", connectionId="")),
        (websocket.default, "not even an object"),
        (websocket.connect, {"requestContext": "nope"}),
        (websocket.disconnect, {}),
        (websocket.welcome, {"endpoint": "https://abc.execute-api.us-east-1.amazonaws.com/prod"}),
        (websocket.welcome, {"connectionId": "J", "stage": "prod", "apiId": 5}),
    ],
)
def test_malformed_events_get_400_and_a_log_line(
    handler: Any, bad_event: Any, caplog: pytest.LogCaptureFixture
) -> None:
    response = handler(bad_event)
    assert response["statusCode"] == 400 and response["body"]
    assert any(r.levelname == "WARNING" for r in caplog.records)
    assert table_items() == []


def test_message_from_unknown_connection_is_closed(deletes: list[str]) -> None:
    assert send("ghost", "boo") == {"statusCode": 200}
    assert deletes == ["ghost"]


def test_json_connect_schedules_an_async_welcome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_WELCOME_FUNCTION", "wschat-prod-welcome")
    client = runtime().lambda_client()
    with Stubber(client) as stub:
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {"FunctionName": "wschat-prod-welcome", "InvocationType": "Event", "Payload": ANY},
        )
        assert connect("J", "foo", "t", format="json", since="5")["statusCode"] == 200
        stub.assert_no_pending_responses()


def test_a_publisher_paused_mid_append_leaves_no_gap_at_the_seam(
    posts: ManagementApiStandIn,
) -> None:
    """Concurrent publishers on Lambda: A takes its id, stalls before writing; B publishes; a
    newcomer's welcome runs; then A finishes. The newcomer must end up with both messages."""
    from auth.principal import Principal
    from handler.chat.core import ConnectParams
    from handler.chat.ports import Dialect

    core = runtime().core(posts.endpoint)
    # A's first write, whichever it is.
    stall = FirstWriteStall(runtime().dynamodb(), "PutItem", "TransactWriteItems")
    a = stall.start(lambda: core.publish("seam", "id-a", "a", "from a"))
    core.publish("seam", "id-b", "b", "from b")
    core.connect("W", "seam", Principal(id="w", name="w", echo="w"), ConnectParams(Dialect.JSON))
    core.welcome("W", since=0)
    stall.release()
    a.join(10)
    received = set()
    for frame in posts.take_json("W"):
        if frame["type"] == "message":
            received.add(frame["text"])
        for message in frame.get("history", []) + frame.get("messages", []):
            received.add(message["text"])
    assert received == {"from a", "from b"}


def test_the_welcome_posts_only_to_the_configured_endpoint(
    monkeypatch: pytest.MonkeyPatch, posts: ManagementApiStandIn
) -> None:
    """Whoever can invoke the welcome function (on a laptop, anything that reaches a local
    emulator's port) chooses its event: an endpoint named in it must not receive the room's
    history, nor cost a chat core of its own."""
    monkeypatch.setenv("WSCHAT_WELCOME_FUNCTION", "wschat-prod-welcome")
    scheduled: list[dict[str, Any]] = []
    client = runtime().lambda_client()
    client.meta.events.register(
        "provide-client-params.lambda.Invoke",
        lambda params, **_: scheduled.append(json.loads(params["Payload"])),
    )
    with Stubber(client) as stub:
        stub.add_response("invoke", {"StatusCode": 202})
        assert connect("J", "foo", "t", format="json")["statusCode"] == 200
    assert send_as("A", "foo", "before you came") == {"statusCode": 200}
    with running_management_api() as elsewhere:
        (welcome_event,) = scheduled
        hostile = {**welcome_event, "endpoint": elsewhere.endpoint}
        assert websocket.welcome(hostile) == {"statusCode": 200}
        assert not elsewhere.attempts  # not one request reached it
    (welcome,) = [f for f in posts.take_json("J") if f["type"] == "welcome"]
    assert [m["text"] for m in welcome["history"]] == ["before you came"]


def send_as(cid: str, room: str, text: str) -> dict[str, Any]:
    assert connect(cid, room, f"{cid}-token") == {"statusCode": 200}
    return send(cid, text)


def test_presence_counts_carry_the_room_s_presence_number(posts: ManagementApiStandIn) -> None:
    """On Lambda each join and leave is announced by its own invocation, so a member gets a
    room's `presence` frames in any order: each count carries the number its change drew
    before the count was read, and a welcome's or `members`' count the number read before it
    (docs/welcome-seam.md, "One at a time (Lambda)")."""
    connect("J", "n", "jo-token", format="json")  # 1
    websocket.welcome(welcome_event("J"))
    assert posts.take_json("J")[0]["presence_seq"] == 1
    connect("T", "n", "text-token")  # 2: a text member counts, and draws a number too
    connect("K", "n", "kim-token", format="json")  # 3
    websocket.welcome(welcome_event("K"))
    joins = posts.take_json("J")
    assert [(f["presence_seq"], f["count"]) for f in joins] == [(2, 2), (3, 3)]
    welcome = posts.take_json("K")[-1]
    assert (welcome["type"], welcome["presence_seq"], welcome["count"]) == ("welcome", 3, 3)
    websocket.disconnect(event("disconnect", connectionId="T"))  # 4
    (leave,) = posts.take_json("K")
    assert (leave["presence_seq"], leave["count"], leave["joins"]) == (4, 2, [])
    send("K", '{"action": "members"}')
    (members,) = posts.take_json("K")
    assert (members["type"], members["presence_seq"], members["count"]) == ("members", 4, 2)
