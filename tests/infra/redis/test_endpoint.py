"""How `WSCHAT_REDIS_URL` is read (infra/redis/endpoint.py): the forms it takes, and the
message for one it does not. Following a failover is tested with real Sentinels in
tests/chaos/test_redis_failover.py."""

from __future__ import annotations

import pytest

from infra.redis.endpoint import Endpoint, RedisUrlError, SentinelUrl, read_sentinel_url
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


def test_a_cluster_url_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(RedisUrlError, match=r"not supported yet.*Sentinel"):
        Endpoint("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", RedisLink())


async def test_the_node_a_worker_talks_to_is_the_urls_or_the_primary_sentinel_named() -> None:
    plain = Endpoint("redis://10.0.0.5:6380/0", RedisLink())
    assert (plain.kind, plain.node) == ("redis", "10.0.0.5:6380")
    sentinel = Endpoint("redis+sentinel://10.0.0.1:26379/mymaster/0", RedisLink())
    assert (sentinel.kind, sentinel.node) == ("sentinel", "")  # not asked yet
    await plain.client.aclose()
    await sentinel.client.aclose()
