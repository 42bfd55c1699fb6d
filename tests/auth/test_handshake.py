from __future__ import annotations

from auth.credentials import Source, find_credential
from auth.handshake import Handshake


def test_from_asgi_scope() -> None:
    scope = {
        "type": "websocket",
        "headers": [
            (b"Origin", b"https://chat.example"),
            (b"cookie", b"session=abc; theme=dark"),
            (b"cookie", b"other=1"),
            (b"Authorization", b"Bearer tok"),
        ],
        "query_string": b"token=q1&token=q2&q=3",
        "subprotocols": ["wschat.json", "bearer", "sp"],
    }
    view = Handshake.from_asgi(scope)
    assert view.origin == "https://chat.example"
    # A repeated name: the last one counts, as in API Gateway's single-value maps.
    assert view.cookies == {"other": "1"}
    assert view.query == {"token": "q2", "q": "3"}
    assert view.subprotocols == ("wschat.json", "bearer", "sp")


def test_a_repeated_cookie_name_in_one_header_the_last_counts() -> None:
    view = Handshake.from_asgi({"headers": [(b"cookie", b"session=first; session=second")]})
    assert view.cookies == {"session": "second"}


def test_from_apigw_gathers_subprotocols_from_every_header() -> None:
    event = {
        "headers": {"Sec-WebSocket-Protocol": "bearer, tok"},
        "multiValueHeaders": {"Sec-WebSocket-Protocol": ["wschat.json", "bearer, tok"]},
    }
    assert Handshake.from_apigw(event).subprotocols == ("wschat.json", "bearer", "tok")


def test_from_apigw_connect_event() -> None:
    event = {
        "headers": {
            "Origin": "https://chat.example",
            "Sec-WebSocket-Protocol": "wschat.json, bearer, tok",
            "Cookie": "session=c",
        },
        "queryStringParameters": {"room": "r1", "token": "t"},
        "requestContext": {"routeKey": "$connect"},
    }
    view = Handshake.from_apigw(event)
    assert view.origin == "https://chat.example"
    assert view.subprotocols == ("wschat.json", "bearer", "tok")
    assert view.cookies == {"session": "c"}
    assert view.query == {"room": "r1", "token": "t"}
    assert Handshake.from_apigw({"headers": None, "queryStringParameters": None}) == Handshake()


def test_malformed_cookie_does_not_hide_the_session() -> None:
    view = Handshake.from_asgi({"headers": [(b"cookie", b'bad"cookie; session=ok')]})
    assert view.cookies.get("session") == "ok"


def test_credential_precedence() -> None:
    everything = Handshake(
        headers={"authorization": "Bearer h"},
        subprotocols=("bearer", "s"),
        query={"token": "q"},
        cookies={"session": "c"},
    )
    order = [
        (everything, "h", Source.AUTHORIZATION_HEADER),
        (Handshake(subprotocols=("bearer", "s"), query={"token": "q"}), "s", Source.SUBPROTOCOL),
        (Handshake(query={"token": "q"}, cookies={"session": "c"}), "q", Source.QUERY),
        (Handshake(cookies={"session": "c"}), "c", Source.COOKIE),
        (
            Handshake(headers={"authorization": "Basic xyz"}, query={"token": "q"}),
            "q",
            Source.QUERY,
        ),
    ]
    for view, value, source in order:
        credential = find_credential(view)
        assert credential is not None
        assert (credential.value, credential.source) == (value, source)
    assert find_credential(Handshake(subprotocols=("bearer",))) is None
    assert find_credential(Handshake()) is None
