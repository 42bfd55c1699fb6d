"""Which Redis a worker talks to, as `WSCHAT_REDIS_URL` names it, and the client for it.

- `redis://[:password@]host:port/db` (or `rediss://`, `unix://`): one Redis, or one address
  that a failover moves (a managed primary endpoint, a proxy);
- `redis+sentinel://[:password@]host:port,host:port/service/db`: the primary that the
  Sentinels at those addresses name for `service`, followed through their failovers (the
  password is the Redis nodes'; the Sentinels are asked without one);
- `redis+cluster://[:password@]host:port[,host:port...][/0]`: a Redis Cluster, found from
  any of those nodes (a cluster has only db 0).

docs/configuration.md has the forms; docs/scaling.md, "Redis in production", what each
guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis.bridge import CALL_TIMEOUT
from infra.redis.liveness import RedisLink

REDIS_CONNECTIONS = 64  # per worker (per node on a cluster); the subscription holds one
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


@dataclass(frozen=True)
class ClusterUrl:
    """A `redis+cluster://` URL, read: the nodes to discover the cluster from."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None


def _addresses(hosts: str, form: str) -> list[tuple[str, int]]:
    """`host:port,host:port...`, each once, each port a TCP port."""
    found: list[tuple[str, int]] = []
    for address in filter(None, hosts.split(",")):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RedisUrlError(f"WSCHAT_REDIS_URL: {address!r} is not host:port ({form})")
        where = (unquote(host).strip("[]"), int(port))
        if where in found:  # a typo, most likely: one node named where another was meant
            raise RedisUrlError(f"WSCHAT_REDIS_URL: {address!r} is named twice ({form})")
        found.append(where)
    return found


def _password(userinfo: str) -> str | None:
    return unquote(userinfo.partition(":")[2]) if userinfo else None


def read_sentinel_url(url: str) -> SentinelUrl:
    form = f"{SENTINEL_SCHEME}://[:password@]host:port[,host:port...]/service[/db]"
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = _addresses(hosts, form)
    path = [unquote(part) for part in parts.path.split("/") if part]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisUrlError(f"WSCHAT_REDIS_URL: a Sentinel URL reads {form}")
    db = int(path[1]) if len(path) == 2 else 0
    return SentinelUrl(tuple(sentinels), path[0], db, _password(userinfo))


def read_cluster_url(url: str) -> ClusterUrl:
    form = f"{CLUSTER_SCHEME}://[:password@]host:port[,host:port...][/0]"
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = _addresses(hosts, form)
    if not nodes:
        raise RedisUrlError(f"WSCHAT_REDIS_URL: a cluster URL names its nodes: {form}")
    path = [part for part in parts.path.split("/") if part]
    if path and path != ["0"]:
        raise RedisUrlError(
            f"WSCHAT_REDIS_URL: a Redis Cluster has only db 0, not {parts.path!r} ({form})"
        )
    if parts.query or parts.fragment:
        raise RedisUrlError(f"WSCHAT_REDIS_URL: a cluster URL takes no options ({form})")
    return ClusterUrl(tuple(nodes), _password(userinfo))


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
        self.cluster: RedisCluster | None = None
        pool: Any  # redis-py's Sentinel is untyped
        scheme = urlsplit(url).scheme
        if scheme == CLUSTER_SCHEME:
            nodes = read_cluster_url(url)
            # The same policy as one Redis, per node: REDIS_CONNECTIONS each (a cluster node
            # raises at its limit rather than waiting: there is no blocking pool for them),
            # and the same retries, which redis-py's cluster client runs around its own
            # redirections and topology refreshes.
            self.cluster = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes.nodes],
                password=nodes.password,
                max_connections=REDIS_CONNECTIONS,
                health_check_interval=options["health_check_interval"],
                retry=options["retry"],
                retry_on_error=options["retry_on_error"],
            )
            self._address = ",".join(f"{host}:{port}" for host, port in nodes.nodes)
            self.client: Any = self.cluster
            return
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
        self.client = Redis.from_pool(pool)  # the pool is closed with the client

    @property
    def node(self) -> str:
        """`host:port` of the Redis this worker talks to: the URL's, or the primary the
        Sentinels named last ("" before they have been asked); on a cluster, the nodes it
        was told to find it from (the nodes it subscribes on are the subscription's)."""
        if self._sentinel is None:
            return str(self._address)
        address = self._sentinel.master_address
        return f"{address[0]}:{address[1]}" if address else ""

    @property
    def kind(self) -> str:
        """`redis` (one address), `sentinel` or `cluster`."""
        if self.cluster is not None:
            return "cluster"
        return "redis" if self._sentinel is None else "sentinel"
