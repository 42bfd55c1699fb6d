"""Where a worker's pub/sub channels are subscribed: on one Redis, one link holds them all;
on a Redis Cluster, a sharded channel is served by the primary owning its slot, so there is
a link per node, and a channel moves with its slot (a migration, a failover).

`RoomSubscription` (infra/redis/subscription.py) is written once against `Shards`; the two
kinds differ only here.
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.asyncio import ConnectionPool, RedisCluster

CANARY_TAGS = 100_000  # suffixes tried for a canary whose slot is a given node's


class Shards(Protocol):
    def node_of(self, channel: str) -> str:
        """The node (`host:port`; "" on one Redis) serving `channel`, as last known."""
        ...

    def pool(self, node: str) -> Any:
        """The connection pool that `node`'s subscription takes its connection from."""
        ...

    def canary(self, node: str, worker: str) -> str:
        """A canary channel of `worker`'s that `node` serves."""
        ...

    def serves(self, node: str) -> bool:
        """Whether `node` still serves channels (a failed or removed primary does not)."""
        ...

    def first_nodes(self) -> list[str]:
        """The nodes subscribed on from the start, for their canaries."""
        ...

    async def refresh(self) -> None:
        """Learn again which node serves which channels."""
        ...

    async def aclose(self) -> None: ...


class OneRedis:
    """One Redis (or the one primary Sentinel names): one link, the client's own pool."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def node_of(self, channel: str) -> str:
        return ""

    def pool(self, node: str) -> Any:
        return self._redis.connection_pool

    def canary(self, node: str, worker: str) -> str:
        return f"wschat:canary:{{{worker}}}"  # not `wschat:{...}`: no room's channel

    def serves(self, node: str) -> bool:
        return True

    def first_nodes(self) -> list[str]:
        return [""]

    async def refresh(self) -> None:
        pass

    async def aclose(self) -> None:
        pass  # the pool is the client's, closed with it


class ClusterShards:
    """A Redis Cluster: channels by slot on the primaries, as redis-py's cluster client's
    slot map says (refreshed from CLUSTER SLOTS). Each node's subscription has a pool of
    its own, made from that node's connection settings (the cluster client's timeouts and
    retry policy): a subscribed connection is nobody else's to borrow."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._pools: dict[str, ConnectionPool] = {}
        self._mapped = False

    def node_of(self, channel: str) -> str:
        node = self._cluster.get_node_from_key(channel)
        assert node is not None  # a primary is asked for: an uncovered slot raises instead
        return str(node.name)

    def pool(self, node: str) -> Any:
        pool = self._pools.get(node)
        if pool is None:
            found = self._cluster.get_node(node_name=node)
            if found is None:
                raise ConnectionError(f"Redis Cluster node {node} is not in the cluster")
            pool = ConnectionPool(
                connection_class=found.connection_class, **found.connection_kwargs
            )
            self._pools[node] = pool
        return pool

    def canary(self, node: str, worker: str) -> str:
        for tag in range(CANARY_TAGS):  # about as many tries as there are primaries
            channel = f"wschat:canary:{{{worker}-{tag}}}"
            if self.node_of(channel) == node:
                return channel
        raise LookupError(f"no canary channel found for Redis Cluster node {node}")

    def serves(self, node: str) -> bool:
        return any(primary.name == node for primary in self._cluster.get_primaries())

    def first_nodes(self) -> list[str]:
        # Every primary from the start, for its canary: a worker shows it hears every node
        # (/healthz) before its first room there, and a room's first join finds the link made.
        return sorted(str(primary.name) for primary in self._cluster.get_primaries())

    async def refresh(self) -> None:
        # The client's own first look, then CLUSTER SLOTS each time: the client refreshes
        # its map when a command meets MOVED, but a subscription meets no command.
        if not self._mapped:
            await self._cluster.initialize()
            self._mapped = True
        else:
            await self._cluster.nodes_manager.initialize()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.disconnect()
        self._pools.clear()
