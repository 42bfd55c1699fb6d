"""The HTTP surface's own routes: the JavaScript client as the server serves it."""

from __future__ import annotations

from importlib.resources import files

from fastapi.testclient import TestClient

from handler.web.app import CLIENT_PATH, create_app
from infra.settings import Settings


def client() -> TestClient:
    app = create_app(Settings(), rest=lambda: None, health=lambda: {"status": "ok"})  # type: ignore[arg-type, return-value]
    return TestClient(app)


def test_the_client_is_served_as_a_module_with_a_validator() -> None:
    http = client()
    response = http.get(CLIENT_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == files("handler.web").joinpath("wschat.mjs").read_bytes()
    assert b"export function connect" in response.content
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    for asked in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = http.get(CLIENT_PATH, headers={"If-None-Match": asked})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert http.get(CLIENT_PATH, headers={"If-None-Match": '"stale"'}).status_code == 200
