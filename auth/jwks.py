"""Signing keys from a JWKS URL: cached with a lifespan, refreshed at most once per cooldown."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024


class JwksUnavailable(Exception):
    """No key for this token: the key set could not be fetched, or it lacks the `kid`."""


def fetch_jwks(url: str, timeout: float) -> dict[str, PyJWK]:
    """GET the key set and index it by `kid`. Raises JwksUnavailable on any failure."""
    if not url.startswith(("https://", "http://")):
        raise JwksUnavailable("JWKS URL must be http(s)")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise JwksUnavailable("JWKS document too large")
        document: Any = json.loads(body)
        key_set = PyJWKSet.from_dict(document)
    except JwksUnavailable:
        raise
    except (OSError, ValueError, PyJWKError, PyJWKSetError, TypeError, AttributeError) as error:
        raise JwksUnavailable(f"JWKS fetch failed: {type(error).__name__}") from None
    return {key.key_id or "": key for key in key_set.keys}


class JwksCache:
    """Thread-safe key cache.

    Keys are reused for `lifespan` seconds. A fetch happens when the cache is cold, stale, or
    asked for an unknown `kid`, but never more than once per `cooldown`, so a flood of random
    kids cannot become a flood of fetches. When a refresh fails, the keys already held keep
    working; with none held, verification fails closed.
    """

    def __init__(
        self,
        url: str,
        lifespan: float,
        cooldown: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None

    def key(self, kid: str | None) -> PyJWK:
        """The key for `kid` (or the only key, when the token names none)."""
        with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < self._lifespan
            if not (fresh and self._find(kid)) and self._may_fetch(now):
                self._refresh(now)
            key = self._find(kid)
        if key is None:
            raise JwksUnavailable("no signing key for this token")
        return key

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._cooldown

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            keys = fetch_jwks(self._url, self._timeout)
        except JwksUnavailable as error:
            log.warning("%s; keeping %d cached key(s)", error, len(self._keys))
            return
        self._keys = keys
        self._fetched_at = now
        log.info("loaded %d signing key(s) from JWKS", len(keys))
