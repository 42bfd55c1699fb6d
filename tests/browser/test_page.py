"""The chat page in headless Chromium (Debian's, driven by Playwright), on both transports."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from tests.auth.keys import SECRET
from tests.support.servers import ROOT, Server, free_port, running_server

SCREENSHOTS = ROOT / "build" / "screenshots"


# The page against each kind of server (the Redis engine serves the same page as `serve`).
BROWSER_SERVERS = {"uvicorn": "serve", "emulator": "emulate"}


@pytest.fixture(params=list(BROWSER_SERVERS))
def command(request: pytest.FixtureRequest) -> str:
    return BROWSER_SERVERS[request.param]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def open_chat(page: Page, server: Server, room: str = "lobby", token: str = "t") -> None:
    page.goto(server.http + "/")
    page.fill("#itemId", room)
    page.fill("#token", token)
    page.click("#connect")
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=10_000)


def say(page: Page, text: str) -> None:
    page.fill("#messageText", text)
    page.click("#send")


def test_two_pages_in_one_room_chat(browser: Browser, command: str, tmp_path: Path) -> None:
    with running_server(tmp_path, {}, command) as server:
        alice, bob = browser.new_page(), browser.new_page()
        open_chat(alice, server, token="alice-token")
        open_chat(bob, server, token="bob-token")
        expect(alice.locator("#messages")).to_contain_text("joined (2 here)")
        say(alice, "hello from alice")
        expect(bob.locator("#messages li.message")).to_contain_text(["hello from alice"])
        say(bob, "hi alice")
        expect(alice.locator("#messages li.message").last).to_contain_text("hi alice")
        expect(alice.locator("#whoami")).to_contain_text("in lobby")
        # Who is online, who is typing, and one's own message marked sent with its time.
        bob_name = bob.locator("#whoami").inner_text().split()[2]
        expect(alice.locator("#members li")).to_have_count(2)
        expect(alice.locator("#members")).to_contain_text(bob_name)
        expect(alice.locator("#online")).to_have_text("(2)")
        bob.type("#messageText", "typ")
        expect(alice.locator("#typing")).to_have_text(f"{bob_name} is typing…")
        own = alice.locator("#messages li.own").first
        expect(own).to_contain_text("hello from alice")
        expect(own.locator(".mark")).to_have_text(" ✓ sent")
        assert own.locator("time").get_attribute("datetime")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        alice.screenshot(path=str(SCREENSHOTS / f"chat-{command}.png"), full_page=True)
        alice.close()
        bob.close()


def test_status_shows_disconnected_then_connected(page: Page, command: str, tmp_path: Path) -> None:
    with running_server(tmp_path, {}, command) as server:
        page.goto(server.http + "/")
        expect(page.locator("#status")).to_have_text("disconnected")
        open_chat(page, server)
        expect(page.locator("#status")).to_have_text("connected")


def test_page_reconnects_after_a_restart(page: Page, command: str, tmp_path: Path) -> None:
    port = free_port()
    with running_server(tmp_path, {}, command, port=port) as server:
        open_chat(page, server, room="restart")
        say(page, "before the restart")
        expect(page.locator("#messages li.message")).to_contain_text(["before the restart"])
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
    expect(page.locator("#status")).to_have_text("reconnecting…")
    expect(page.locator("#retry")).to_contain_text(re.compile(r"next try in \d+ s"))
    with running_server(tmp_path, {}, command, port=port):
        expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=40_000)
        say(page, "after the restart")
        expect(page.locator("#messages li.message").last).to_contain_text("after the restart")


def test_token_field_in_jwt_mode(page: Page, command: str, tmp_path: Path) -> None:
    env = {"WSCHAT_AUTH": "jwt", "WSCHAT_JWT_SECRET": SECRET, "WSCHAT_JWT_ALGORITHMS": "HS256"}
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "name": "Alice", "iat": now, "exp": now + 600}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with running_server(tmp_path, env, command) as server:
        page.goto(server.http + "/")
        page.fill("#token", "not-a-jwt")
        page.click("#connect")
        expect(page.locator("#status")).to_have_attribute("data-state", "closed", timeout=10_000)
        open_chat(page, server, token=token)
        expect(page.locator("#whoami")).to_contain_text("you are Alice")
        say(page, "signed in")
        expect(page.locator("#messages li.message")).to_contain_text(["Alice: signed in"])
    assert token not in server.log()


def test_page_resumes_below_an_id_that_arrived_out_of_order(
    page: Page, command: str, tmp_path: Path
) -> None:
    """The page holds `one` and `three` but not `two` (still on its way, as on Lambda with
    concurrent publishers) when its connection drops: it resumes from `one`, not `three`."""
    held: list[str] = []
    sockets: list[WebSocketRoute] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        sockets.append(ws)

        def from_server(message: str | bytes) -> None:
            if len(sockets) == 1 and '"text":"two"' in str(message):
                held.append(str(message))  # withheld from the first connection
                return
            ws.send(message)
            if len(sockets) == 1 and '"text":"three"' in str(message):
                ws.close(code=1012, reason="restart")  # the connection drops

        server.on_message(from_server)

    page.route_web_socket(re.compile(".*"), route)
    with running_server(tmp_path, {}, command) as server:
        open_chat(page, server, room="ooo")
        for text in ("one", "two", "three"):
            publish(server, "ooo", text)
        messages = page.locator("#messages li.message")
        expect(messages).to_have_count(3, timeout=20_000)
        assert held and len(sockets) == 2  # `two` came on the second connection
        # The client hands messages over in id order: `three` waited for `two`.
        assert messages.locator(".text").all_text_contents() == ["one", "two", "three"]


def publish(server: Server, room: str, text: str) -> None:
    request = urllib.request.Request(
        f"{server.http}/rooms/{room}/messages",
        data=json.dumps({"text": text}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer svc"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def test_pasting_a_new_token_refreshes_the_connection(
    page: Page, command: str, tmp_path: Path
) -> None:
    env = {"WSCHAT_AUTH": "jwt", "WSCHAT_JWT_SECRET": SECRET, "WSCHAT_JWT_ALGORITHMS": "HS256"}

    def token(ttl: int) -> str:
        now = int(time.time())
        return jwt.encode({"sub": "alice", "iat": now, "exp": now + ttl}, SECRET, "HS256")

    with running_server(tmp_path, env, command) as server:
        open_chat(page, server, room="refresh", token=token(3))
        page.fill("#token", token(600))
        page.dispatch_event("#token", "change")
        expect(page.locator("#messages")).to_contain_text("token refreshed", timeout=10_000)
        time.sleep(3.5)  # past the first token's expiry
        say(page, "after the first token")
        expect(page.locator("#messages li.message").last).to_contain_text("after the first token")
        expect(page.locator("#status")).to_have_attribute("data-state", "open")


def test_scrolling_to_the_top_brings_older_messages(page: Page, tmp_path: Path) -> None:
    fast = {"WSCHAT_RATE_PER_SECOND": "1000", "WSCHAT_RATE_BURST": "1000"}
    with running_server(tmp_path, fast, "serve") as server:
        for n in range(80):
            publish(server, "archive", f"m{n}")
        open_chat(page, server, room="archive")
        texts = page.locator("#messages li.message .text")
        expect(texts).to_have_count(20)  # the welcome's recent history
        assert texts.first.inner_text() == "m60"
        page.locator("#messages").evaluate("list => list.scrollTop = 0")
        expect(texts).to_have_count(70)
        assert texts.all_text_contents() == [f"m{n}" for n in range(10, 80)]


def test_a_send_while_the_server_is_away_is_stored_once_when_it_is_back(
    page: Page, command: str, tmp_path: Path
) -> None:
    port = free_port()
    with running_server(tmp_path, {}, command, port=port) as server:
        open_chat(page, server, room="away")
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=10_000)
    say(page, "typed while away")
    expect(page.locator("#messages li.own .mark")).to_have_text(" … sending")
    with running_server(tmp_path, {}, command, port=port) as server:
        expect(page.locator("#messages li.own .mark")).to_have_text(" ✓ sent", timeout=40_000)
        stored = _read(server, "away")
        assert [m["text"] for m in stored["messages"]] == ["typed while away"]


def _read(server: Server, room: str) -> Any:
    request = urllib.request.Request(
        f"{server.http}/rooms/{room}/messages", headers={"Authorization": "Bearer svc"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_two_pages_on_two_workers_sharing_redis(browser: Browser, tmp_path: Path) -> None:
    """The page (on the JavaScript client) against two `wschat serve` on one Redis: each page
    on its own worker, one room."""
    from tests.support.redis_server import running_redis

    with (
        running_redis(tmp_path) as redis,
        running_server(tmp_path, {"WSCHAT_REDIS_URL": redis.url()}) as first,
        running_server(tmp_path, {"WSCHAT_REDIS_URL": redis.url()}) as second,
    ):
        alice, bob = browser.new_page(), browser.new_page()
        open_chat(alice, first, room="shared", token="alice-token")
        open_chat(bob, second, room="shared", token="bob-token")
        expect(alice.locator("#online")).to_have_text("(2)")
        say(alice, "across workers")
        expect(bob.locator("#messages li.message .text")).to_have_text(["across workers"])
        say(bob, "and back")
        expect(alice.locator("#messages li.message .text")).to_have_text(
            ["across workers", "and back"]
        )
        expect(alice.locator("#messages li.own .mark")).to_have_text([" ✓ sent"])
        alice.close()
        bob.close()
