"""The Authenticator protocol every backend satisfies."""

from __future__ import annotations

from typing import Protocol

from auth.handshake import Handshake
from auth.principal import Principal


class Authenticator(Protocol):
    """Turns a handshake into a Principal, or raises `AuthError`.

    `authenticate` may block (a JWKS fetch, say): async callers run it in a worker thread,
    unless the backend says it never waits (`may_block = False`, see `may_block`).
    It must never put the credential into an exception message or a log line.
    `accepts_cookies` tells whether a `session` cookie can authenticate, which is when a
    browser's ambient credential makes an Origin check necessary.
    """

    accepts_cookies: bool

    def authenticate(self, handshake: Handshake) -> Principal: ...


def may_block(authenticator: Authenticator) -> bool:
    """Whether `authenticate` may wait on I/O: a backend that never does says so with a
    `may_block = False` attribute, and an event loop then calls it in place. A thread's
    round trip cost a token handshake more CPU than the check itself (docs/performance.md);
    a backend that does not say is run in a thread."""
    return bool(getattr(authenticator, "may_block", True))


async def authenticate_on_loop(authenticator: Authenticator, handshake: Handshake) -> Principal:
    """`authenticate` from an event loop (a socket's handshake, a REST request): in a worker
    thread when it may block, in place when it never does."""
    if not may_block(authenticator):
        return authenticator.authenticate(handshake)
    from starlette.concurrency import run_in_threadpool  # only where a loop runs, not on Lambda

    return await run_in_threadpool(authenticator.authenticate, handshake)
