"""How `WSCHAT_REDIS_URL` is read (infra/redis/endpoint.py): the forms it takes, and the
message for one it does not (for a cluster URL, the whole class of mistakes). Following a
failover is tested with real Sentinels in tests/chaos/test_redis_failover.py."""

from __future__ import annotations

import pytest
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry

from infra.redis.endpoint import (
    REDIS_CONNECTIONS,
    ClusterUrl,
    Endpoint,
    RedisUrlError,
    SentinelUrl,
    read_cluster_url,
    read_sentinel_url,
)
from infra.redis.liveness import RedisLink


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380/mymaster/2"
    assert read_sentinel_url(url) == SentinelUrl(
        (("10.0.0.1", 26379), ("::1", 26380)), "mymaster", 2, "s@cret"
    )
    assert read_sentinel_url("redis+sentinel://h:1/m").db == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:1",  # no service
        "redis+sentinel:///mymaster",  # no Sentinel
        "redis+sentinel://h/mymaster",  # no port
        "redis+sentinel://h:1/mymaster/zero",
        "redis+sentinel://h:1/mymaster/0/extra",
    ],
)
def test_a_sentinel_url_without_its_parts_says_what_form_it_takes(url: str) -> None:
    with pytest.raises(RedisUrlError, match="host:port"):
        read_sentinel_url(url)


async def test_the_node_a_worker_talks_to_is_the_urls_or_the_primary_sentinel_named() -> None:
    plain = Endpoint("redis://10.0.0.5:6380/0", RedisLink())
    assert (plain.kind, plain.node) == ("redis", "10.0.0.5:6380")
    sentinel = Endpoint("redis+sentinel://10.0.0.1:26379/mymaster/0", RedisLink())
    assert (sentinel.kind, sentinel.node) == ("sentinel", "")  # not asked yet
    await plain.client.aclose()
    await sentinel.client.aclose()


def test_a_cluster_url_names_its_nodes_and_password() -> None:
    url = "redis+cluster://:p%40ss%3Aw@10.0.0.1:7000,[::1]:7001,redis%2Dc.internal:7002/0"
    assert read_cluster_url(url) == ClusterUrl(
        (("10.0.0.1", 7000), ("::1", 7001), ("redis-c.internal", 7002)), "p@ss:w"
    )
    assert read_cluster_url("redis+cluster://h:7000") == ClusterUrl((("h", 7000),), None)
    assert read_cluster_url("redis+cluster://h:7000/").nodes == (("h", 7000),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "names its nodes"),
        ("redis+cluster:///0", "names its nodes"),
        ("redis+cluster://,,", "names its nodes"),
        ("redis+cluster://:secret@", "names its nodes"),
        ("redis+cluster://h", "not host:port"),
        ("redis+cluster://h:", "not host:port"),
        ("redis+cluster://:7000", "not host:port"),
        ("redis+cluster://h:seven", "not host:port"),
        ("redis+cluster://h:0", "not host:port"),
        ("redis+cluster://h:65536", "not host:port"),
        ("redis+cluster://h:-1", "not host:port"),
        ("redis+cluster://h:7000,h:7000", "named twice"),
        ("redis+cluster://h:7000,%68:7000", "named twice"),  # the same host, percent-encoded
        ("redis+cluster://h:7000/1", "only db 0"),
        ("redis+cluster://h:7000/0/0", "only db 0"),
        ("redis+cluster://h:7000/mymaster", "only db 0"),
        ("redis+cluster://h:7000/0?ssl=true", "no options"),
    ],
)
def test_a_cluster_url_of_the_wrong_form_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError, match=says) as refused:
        read_cluster_url(url)
    assert "redis+cluster://[:password@]host:port[,host:port...][/0]" in str(refused.value)


async def test_a_cluster_url_gives_a_cluster_client_with_one_policy_per_node() -> None:
    endpoint = Endpoint("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", RedisLink())
    assert (endpoint.kind, endpoint.node) == ("cluster", "127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(endpoint.client, RedisCluster)
    for node in endpoint.client.get_nodes():  # the startup nodes, before it is asked
        assert node.max_connections == REDIS_CONNECTIONS
    assert isinstance(endpoint.client.retry, Retry)
    await endpoint.client.aclose()
