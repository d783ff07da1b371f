"""The state of two namespaces compared: what equal means where arrival order may differ."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from shoppulse.settings import Settings
from stream.keys import Keys
from stream.processor import Processor
from stream.store import RedisStore, redis_for
from tests.integration.conftest import Stack


async def publish_one_topic_at_a_time(
    stacks: Sequence[Stack],
    catalog: list[dict[str, Any]],
    events: list[tuple[str, dict[str, Any]]],
    timeout: float,
) -> None:
    """The same events to every stack, and wait until each has taken them all in.

    The catalog first, whole: categories feed profiles, so every run must see them all. Then
    the clicks, then the orders: Kafka orders a user's events within a topic, not across two,
    and a late event pairs with the user's latest items when it arrives (README, "Guarantees"),
    so only one topic at a time makes every run see the same order per user."""
    clicks = [d for kind, d in events if kind == "clicks"]
    orders = [d for kind, d in events if kind == "orders"]
    for stack in stacks:
        await stack.publish_fast(stack.topics.catalog, catalog, key="item_id")
    for stack in stacks:
        await stack.until(lambda s=stack: items_known(s, len(catalog)), 60, "catalog applied")
        await stack.publish_fast(stack.topics.clicks, clicks)
    for stack in stacks:
        await stack.wait_seen(len(clicks), timeout=timeout)
        await stack.publish_fast(stack.topics.orders, orders)
    for stack in stacks:
        await stack.wait_seen(len(events), timeout=timeout)


async def assert_same_profiles(a: Stack, b: Stack, users: list[str]) -> None:
    for user in users:
        profile = await a.json(a.keys.profile(user))
        assert profile is not None
        assert_same_document(profile, await b.json(b.keys.profile(user)), user)


async def items_known(stack: Stack, count: int) -> bool | None:
    found = 0
    async for _ in stack.redis.scan_iter(stack.keys.prefix_of(stack.keys.item) + "*", count=1000):
        found += 1
    return found >= count or None


async def item_counts(stack: Stack) -> dict[str, Any]:
    """Co-occurrence and popularity sorted sets, and the norms, keyed by Redis key."""
    found: dict[str, Any] = {}
    prefix = f"{stack.keys.prefix}:"
    for pattern in ("cooc:*", "catpop:*", "popularity"):
        async for key in stack.redis.scan_iter(prefix + pattern, count=1000):
            pairs = await stack.redis.zrange(key, 0, -1, withscores=True)
            found[key.removeprefix(prefix)] = dict(pairs)
    found["norms"] = {
        k: float(v) for k, v in (await stack.redis.hgetall(stack.keys.item_norms())).items()
    }
    return found


def assert_same_document(a: Any, b: Any, where: str) -> None:
    """Equal JSON, floats to 1e-9 relative: a user's clicks and orders come from two topics
    whose messages a worker may interleave differently, and event-time decay makes the order
    of arrival matter only in the last bits."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_document(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_document(x, y, f"{where}[{n}]")
    else:
        assert a == b, where


def assert_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for member, value in a[key].items():
            assert math.isclose(value, b[key][member], rel_tol=1e-9, abs_tol=1e-9), (key, member)


async def final_recommendations(stack: Stack, users: list[str]) -> dict[str, list[str]]:
    """Each user's list recomputed from the namespace's final state, at one clock."""
    settings = Settings(
        namespace=stack.namespace, redis_url=stack.redis_url, redis_cluster=stack.cluster
    )
    store = RedisStore(redis_for(settings), Keys.of(settings))
    try:
        records, _ = await store.load_users(users, [])
        clock = float(orjson.loads(await stack.redis.get(stack.keys.clock()) or b"0"))
        documents = await Processor(store, settings).refresh_recommendations(
            list(records.values()), clock
        )
    finally:
        await store.close()
    return {d["user_id"]: [item["item_id"] for item in d["items"]] for d in documents}
