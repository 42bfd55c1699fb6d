"""Delivery through the API Gateway Management API (`post_to_connection`).

One boto3 client per endpoint, reused across invocations, with explicit timeouts. Fan-out runs
on a bounded thread pool sized to the client's connection pool. Each recipient is isolated:
410 Gone reports that recipient as gone (the core then deletes its records), 429 and 5xx are
retried with jittered backoff, 403 is logged loudly, and nothing aborts the batch.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from handler.chat.wire import MAX_SEND_BYTES

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "wschat/0.1 (Management API fan-out)"


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


def make_management_client(
    endpoint: str, pool_size: int, connect_timeout: float = 2.0, read_timeout: float = 5.0
) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # botocore's own retries cover connection errors; throttling and 5xx are retried by
        # ManagementApiDelivery, per recipient, so one slow recipient cannot stall the rest.
        retries={"mode": "standard", "total_max_attempts": 2},
        max_pool_connections=pool_size,
        # A fan-out makes a thousand calls on one vCPU or less, so botocore's per-call CPU
        # sets its pace. Two of its costs buy nothing here: validating parameters we build
        # ourselves, and rebuilding its default User-Agent string twice per call (a sixth
        # of the CPU of a post; bench/lambda_fanout.py, docs/performance.md).
        parameter_validation=False,
        user_agent=USER_AGENT,
    )
    return boto3.client("apigatewaymanagementapi", endpoint_url=endpoint, config=config)


class ManagementApiDelivery:
    def __init__(
        self,
        client: Any,
        concurrency: int = 32,
        attempts: int = 3,
        backoff: float = 0.05,
        gone_attempts: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._concurrency = concurrency
        self._attempts = attempts
        self._backoff = backoff
        self._gone_attempts = gone_attempts
        self._sleep = sleep
        self._pool: ThreadPoolExecutor | None = None

    def send(self, connection_ids: Sequence[str], payload: str) -> Sequence[str]:
        data = payload.encode()
        if len(data) > MAX_SEND_BYTES:  # the core never makes one; AWS would refuse it
            log.error("payload of %d bytes is over API Gateway's 128 KiB; not sent", len(data))
            return []
        if len(connection_ids) <= 1:
            results = [self._post(cid, data) for cid in connection_ids]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="fanout")
            results = list(self._pool.map(lambda cid: self._post(cid, data), connection_ids))
        return [cid for cid, gone in zip(connection_ids, results, strict=True) if gone]

    def close(self, connection_id: str, code: int, reason: str) -> None:
        # API Gateway cannot send a close code of our choosing: the socket closes with its own.
        log.info("closing %s (%d %s)", connection_id, code, reason)
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except self._client.exceptions.GoneException:
            pass
        except Exception as error:
            log.warning("could not close %s: %s", connection_id, _describe(error))

    def _post(self, connection_id: str, data: bytes) -> bool:
        """Deliver to one connection. Returns True when the connection is gone."""
        gone_error = self._client.exceptions.GoneException
        gone_seen = 0
        attempt = 0
        while attempt < self._attempts:
            attempt += 1
            try:
                self._client.post_to_connection(ConnectionId=connection_id, Data=data)
                return False
            except gone_error:
                gone_seen += 1
                if gone_seen >= self._gone_attempts:
                    return True
                attempt -= 1  # waiting for a handshake to finish is not a failed attempt
                self._sleep(self._backoff * 2**gone_seen)
                continue
            except Exception as error:
                status = _status(error)
                if status == 403:
                    log.error(
                        "post_to_connection is forbidden (403) for %s: check the function's "
                        "execute-api:ManageConnections permission and the endpoint",
                        connection_id,
                    )
                    return False
                if _transient(error) and attempt < self._attempts:
                    delay = self._backoff * 2 ** (attempt - 1)
                    self._sleep(delay * (0.5 + random.random()))  # noqa: S311 (jitter)
                    continue
                log.warning(
                    "delivery to %s failed after %d attempt(s): %s",
                    connection_id,
                    attempt,
                    _describe(error),
                )
                return False
        return False


def _transient(error: Exception) -> bool:
    """Throttling, a server error, or no answer at all (a timeout, a dropped connection):
    worth another try. A post that timed out may have arrived, so a retry can repeat it;
    a repeat is what clients already handle (JSON frames carry ids), a lost message is not."""
    from botocore.exceptions import ConnectionError as BotocoreConnectionError
    from botocore.exceptions import HTTPClientError

    if isinstance(error, BotocoreConnectionError | HTTPClientError):
        return True
    return _status(error) in RETRYABLE_STATUS


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _describe(error: Exception) -> str:
    status = _status(error)
    return f"{type(error).__name__} (HTTP {status})" if status else type(error).__name__
