"""Delivery through the API Gateway Management API (POST /@connections/{id}).

One client per endpoint (infra/aws/management_api.py), reused across invocations, with explicit
timeouts. Fan-out runs on a bounded thread pool sized to the client's connection pool. Each
recipient is isolated: 410 Gone reports that recipient as gone (the core then deletes its
records), 429, 5xx and no answer at all are retried with jittered backoff, 403 is logged
loudly, and nothing aborts the batch.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

from handler.chat.wire import MAX_SEND_BYTES
from infra.aws.management_api import ManagementApi, NoAnswer

log = logging.getLogger(__name__)

GONE = 410
FORBIDDEN = 403
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def management_endpoint(
    domain_name: str,
    stage: str,
    api_id: str,
    region: str,
    override: str = "",
    offline_port: int | None = None,
) -> str:
    """Where to POST messages for connections of this API.

    Built from the API id rather than the request's domain so it also works when clients
    connect through a custom domain. `override` wins; under `serverless offline`
    (`offline_port` given) the plugin serves the Management API on its WebSocket port.
    """
    if override:
        return override.rstrip("/")
    if offline_port is not None:
        return f"http://localhost:{offline_port}"
    if api_id and region:
        return f"https://{api_id}.execute-api.{region}.amazonaws.com/{stage}"
    return f"https://{domain_name}/{stage}"


class Outcome(Enum):
    DELIVERED = "delivered"
    GONE = "gone"  # 410: the connection is closed
    UNREACHED = "unreached"  # 429, 5xx or no answer, after every attempt: worth a later try
    REFUSED = "refused"  # 403, 400, 413: another try would get the same answer


class ManagementApiDelivery:
    def __init__(
        self,
        api: ManagementApi,
        concurrency: int = 32,
        attempts: int = 3,
        backoff: float = 0.05,
        gone_attempts: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        pace: Callable[[], None] | None = None,
        delivered: Callable[[int], None] = lambda posts: None,
    ) -> None:
        """`pace`, if given, is called before every request (a Pacer's `wait`: the fanout
        function's share of the rate budget); `delivered` is told how many posts of each
        batch arrived."""
        self._api = api
        self._pace = pace
        self._delivered = delivered
        self._concurrency = concurrency
        self._attempts = attempts
        self._backoff = backoff
        self._gone_attempts = gone_attempts
        self._sleep = sleep
        self._pool: ThreadPoolExecutor | None = None

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        gone, _ = self.post_all(connection_ids, payload)
        return gone

    def post_all(self, connection_ids: Sequence[str], payload: str) -> tuple[list[str], list[str]]:
        """Post `payload` to each connection. Returns the ids found gone, and those still
        unreachable (429, 5xx, no answer) after this delivery's retries."""
        data = payload.encode()
        if len(data) > MAX_SEND_BYTES:  # the core never makes one; AWS would refuse it
            log.error("payload of %d bytes is over API Gateway's 128 KiB; not sent", len(data))
            return [], []
        if len(connection_ids) <= 1:
            outcomes = [self._post(cid, data) for cid in connection_ids]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="fanout")
            outcomes = list(self._pool.map(lambda cid: self._post(cid, data), connection_ids))
        paired = list(zip(connection_ids, outcomes, strict=True))
        self._delivered(sum(1 for outcome in outcomes if outcome is Outcome.DELIVERED))
        return (
            [cid for cid, outcome in paired if outcome is Outcome.GONE],
            [cid for cid, outcome in paired if outcome is Outcome.UNREACHED],
        )

    def close(self, connection_id: str, code: int, reason: str) -> None:
        # API Gateway cannot send a close code of our choosing: the socket closes with its own.
        log.info("closing %s (%d %s)", connection_id, code, reason)
        try:
            status = self._api.delete(connection_id)
        except NoAnswer as error:
            log.warning("could not close %s: no answer (%s)", connection_id, error)
            return
        if status >= 300 and status != GONE:
            log.warning("could not close %s: HTTP %d", connection_id, status)

    def _post(self, connection_id: str, data: bytes) -> Outcome:
        gone_seen = 0
        attempt = 0
        while True:
            attempt += 1
            if self._pace is not None:
                self._pace()
            try:
                status = self._api.post(connection_id, data)
                failure = f"HTTP {status}"
            except NoAnswer as error:  # a post that timed out may have arrived: see below
                status, failure = None, f"no answer ({error})"
            except Exception as error:  # no credentials, say: this recipient only
                log.error("posting to %s failed: %s", connection_id, type(error).__name__)
                return Outcome.REFUSED
            if status is not None and status < 300:
                return Outcome.DELIVERED
            if status == GONE:
                gone_seen += 1
                if gone_seen >= self._gone_attempts:
                    return Outcome.GONE
                attempt -= 1  # waiting for a handshake to finish is not a failed attempt
                self._sleep(self._backoff * 2**gone_seen)
                continue
            if status == FORBIDDEN:
                log.error(
                    "posting to %s is forbidden (403): check the function's "
                    "execute-api:ManageConnections permission and the endpoint",
                    connection_id,
                )
                return Outcome.REFUSED
            # Throttling, a server error, or no answer: worth another try. A retried post
            # that had arrived repeats, which clients handle (JSON frames carry ids); a lost
            # message is not.
            transient = status is None or status in RETRYABLE_STATUS
            if transient and attempt < self._attempts:
                delay = self._backoff * 2 ** (attempt - 1)
                self._sleep(delay * (0.5 + random.random()))  # noqa: S311 (jitter)
                continue
            log.warning(
                "delivery to %s failed after %d attempt(s): %s", connection_id, attempt, failure
            )
            return Outcome.UNREACHED if transient else Outcome.REFUSED
