"""Which Redis a worker talks to, as `WSCHAT_REDIS_URL` names it, and the client for it.

- `redis://[:password@]host:port/db` (or `rediss://`, `unix://`): one Redis, or one address
  that a failover moves (a managed primary endpoint, a proxy);
- `redis+sentinel://[:password@]host:port,host:port/service/db`: the primary that the
  Sentinels at those addresses name for `service`, followed through their failovers (the
  password is the Redis nodes'; the Sentinels are asked without one).

docs/configuration.md has the forms; docs/scaling.md, "Redis in production", what each
guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis.bridge import CALL_TIMEOUT
from infra.redis.liveness import RedisLink

REDIS_CONNECTIONS = 64  # per worker; the subscription holds one of them
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SENTINEL_TIMEOUT = 1.0  # seconds for a Sentinel to answer before the next one is asked


class RedisUrlError(ValueError):
    """A `WSCHAT_REDIS_URL` that names no Redis; the message says what form it takes."""


@dataclass(frozen=True)
class SentinelUrl:
    """A `redis+sentinel://` URL, read."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def read_sentinel_url(url: str) -> SentinelUrl:
    form = f"{SENTINEL_SCHEME}://[:password@]host:port[,host:port...]/service[/db]"
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if userinfo else None
    sentinels: list[tuple[str, int]] = []
    for address in filter(None, hosts.split(",")):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"WSCHAT_REDIS_URL: {address!r} is not host:port ({form})")
        sentinels.append((host.strip("[]"), int(port)))
    path = [unquote(part) for part in parts.path.split("/") if part]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisUrlError(f"WSCHAT_REDIS_URL: a Sentinel URL reads {form}")
    return SentinelUrl(tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0, password)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connections to whichever node the Sentinels name primary), waiting
    for a free connection as the plain one does rather than raising at the limit."""


class Endpoint:
    """The client a worker's Redis calls go through, and which node it talks to."""

    def __init__(self, url: str, link: RedisLink) -> None:
        # A burst of calls waits its turn for one of REDIS_CONNECTIONS (redis-py's default
        # pool raises "Too many connections" instead). After Redis restarts or fails over,
        # every pooled connection is stale and fails once: retry enough to get past them all,
        # quickly. Health hears of the first failure all the same (RedisLink).
        options: dict[str, Any] = {
            "max_connections": REDIS_CONNECTIONS,
            "timeout": CALL_TIMEOUT,
            "health_check_interval": 10,
            "retry": link.retry(ExponentialBackoff(cap=1.0, base=0.05), 10),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        self._sentinel: SentinelConnectionPool | None = None
        pool: Any  # redis-py's Sentinel is untyped
        scheme = urlsplit(url).scheme
        if scheme == CLUSTER_SCHEME:
            raise RedisUrlError(
                "WSCHAT_REDIS_URL: Redis Cluster is not supported yet (joining a room touches "
                "a room's key and a worker's in one script); use one Redis, or a primary with "
                "replicas behind Sentinel (docs/scaling.md, Redis in production)"
            )
        if scheme == SENTINEL_SCHEME:
            where = read_sentinel_url(url)
            sentinel = Sentinel(
                where.sentinels,
                sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT},
            )
            pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
                where.service, sentinel, db=where.db, password=where.password, **options
            )
            self._sentinel = pool
            self._address = ",".join(f"{host}:{port}" for host, port in where.sentinels)
        else:
            pool = BlockingConnectionPool.from_url(url, **options)
            kwargs = pool.connection_kwargs
            self._address = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self.client: Any = Redis.from_pool(pool)  # the pool is closed with the client

    @property
    def node(self) -> str:
        """`host:port` of the Redis this worker talks to: the URL's, or the primary the
        Sentinels named last ("" before they have been asked)."""
        if self._sentinel is None:
            return str(self._address)
        address = self._sentinel.master_address
        return f"{address[0]}:{address[1]}" if address else ""

    @property
    def kind(self) -> str:
        """`redis` (one address) or `sentinel`."""
        return "redis" if self._sentinel is None else "sentinel"
