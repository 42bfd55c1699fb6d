"""How an in-band refresh's token is verified (the core's CredentialCheck port): off the event
loop under uvicorn, inline on Lambda."""

from __future__ import annotations

import logging
from collections.abc import Callable

from auth.base import Authenticator
from auth.errors import AuthError
from auth.handshake import Handshake
from auth.principal import Principal

log = logging.getLogger(__name__)


def verdict(authenticator: Authenticator, token: str) -> Principal | AuthError:
    """The principal `token` stands for, or why not."""
    try:
        return authenticator.authenticate(Handshake.bearer(token))
    except AuthError as error:
        return error
    except Exception:  # a backend's bug must not leave the refresh unanswered
        log.exception("verifying a refreshed token failed")
        return AuthError("the token could not be verified")


class ThreadedCheck:
    """Under uvicorn: verified in a worker thread (a JWKS fetch may block), the verdict handed
    back on the event loop. Off the loop (a worker thread), it is verified right there."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def verify(self, token: str, done: Callable[[Principal | AuthError], None]) -> None:
        import asyncio  # here: the Lambda handlers import this module, and never need asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop: waiting here stalls nobody
            done(verdict(self._authenticator, token))
            return
        verifying = loop.run_in_executor(None, verdict, self._authenticator, token)
        verifying.add_done_callback(lambda future: done(future.result()))


class BlockingCheck:
    """On Lambda: an invocation handles one frame, so it simply waits."""

    def __init__(self, authenticator: Callable[[], Authenticator]) -> None:
        self._authenticator = authenticator

    def verify(self, token: str, done: Callable[[Principal | AuthError], None]) -> None:
        done(verdict(self._authenticator(), token))
