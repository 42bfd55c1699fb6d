"""FastAPI's own example page, unchanged, chatting through our server in Chromium."""

from __future__ import annotations

import socket
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.support.servers import running_server
from tests.support.tools import port_8000

SEED_PAGE = (Path(__file__).parent.parent / "fixtures" / "seed_page.html").read_text()
SEED_PORT = 8000  # the page hard-codes ws://localhost:8000


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_seed_page_works_unchanged(browser: Browser, tmp_path: Path) -> None:
    # On a machine where something else holds port 8000, only the port in the URL changes.
    with port_8000():
        _seed_page_in_two_tabs(browser, tmp_path)


def _seed_page_in_two_tabs(browser: Browser, tmp_path: Path) -> None:
    port = SEED_PORT if port_is_free(SEED_PORT) else None
    with running_server(tmp_path, {}, "serve", port=port) as server:
        html = SEED_PAGE.replace("localhost:8000", f"localhost:{server.port}")
        assert (html == SEED_PAGE) == (server.port == SEED_PORT)
        pages = [browser.new_page(), browser.new_page()]
        for page, token in zip(pages, ("token-one", "token-two"), strict=True):
            page.set_content(html)
            page.fill("#token", token)
            page.click("text=Connect")
        first, second = pages
        # The page gives no sign of the socket opening: the first echo is the signal.
        first.fill("#messageText", "hello seed")
        first.click("text=Send")
        expect(first.locator("#messages li")).to_have_text(
            [
                "Session cookie or query token value is: token-one",
                "Message text was: hello seed, for item ID: foo",
            ]
        )
        expect(second.locator("#messages li")).to_have_count(1)
        expect(second.locator("#messages li")).to_contain_text([": hello seed"])
        assert "token-one" not in second.inner_text("#messages")
        for page in pages:
            page.close()
