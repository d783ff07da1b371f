"""Faults with real processes: a worker killed with SIGKILL again and again, a Redis frozen
with SIGSTOP, a broker frozen with SIGSTOP. Nothing may be lost or counted twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shoppulse import localstack
from shoppulse.kafka import Publisher
from shoppulse.settings import Settings
from stream.keys import Keys
from stream.processor import Processor, RawEvent
from stream.store import RedisStore, connect
from tests.integration.conftest import ARTIFACTS, Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
USERS = 40
ITEMS = 30


def order_events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Orders with known totals: one or two lines each, prices in cents."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        lines = [
            {
                "item_id": f"i{rng.randrange(ITEMS)}",
                "quantity": rng.randint(1, 3),
                "price": rng.randint(100, 9999) / 100,
            }
            for _ in range(rng.randint(1, 2))
        ]
        events.append(
            {
                "event_id": f"o{n}",
                "order_id": f"order-{n}",
                "user_id": f"u{rng.randrange(USERS)}",
                "ts": T0 + n * 60,
                "items": lines,
            }
        )
    return events


def expected_totals(events: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in events:
        totals[event["user_id"]][0] += 1
        amount = sum(line["quantity"] * line["price"] for line in event["items"])
        totals[event["user_id"]][1] += amount
    return {user: (int(n), round(revenue, 6)) for user, (n, revenue) in totals.items()}


async def applied(stack: Stack) -> int:
    return int(await stack.redis.hget(stack.keys.stats(), "applied") or 0)


async def clean_run_cooccurrence(events: list[dict[str, Any]], redis_url: str) -> dict[str, Any]:
    """The same events through the same Processor with nothing going wrong."""
    keys = Keys(f"clean{os.getpid()}{random.randrange(10**6)}")
    settings = Settings(namespace=keys.ns, redis_url=redis_url)  # type: ignore[arg-type]
    store = RedisStore(connect(redis_url), keys)
    try:
        processor = Processor(store, settings)
        raw = [
            RawEvent(f"{keys.ns}.orders", 0, n, e["user_id"].encode(), orjson.dumps(e))
            for n, e in enumerate(events)
        ]
        for start in range(0, len(raw), 50):
            await processor.process_user_events(raw[start : start + 50])
        return await cooccurrence_of(store.client, keys)
    finally:
        async for key in store.client.scan_iter(f"{keys.ns}:*", count=1000):
            await store.client.delete(key)
        await store.close()


async def cooccurrence_of(client: Any, keys: Keys) -> dict[str, Any]:
    found = {}
    for n in range(ITEMS):
        pairs = await client.zrange(keys.cooccurrence(f"i{n}"), 0, -1, withscores=True)
        found[f"i{n}"] = {item: round(score, 6) for item, score in pairs}
    return found


async def test_sigkill_again_and_again_loses_nothing_and_counts_nothing_twice(
    make_stack: Callable[..., Awaitable[Stack]], redis_url: str
) -> None:
    stack = await make_stack(workers=1, partitions=3, batch_size=50)
    events = order_events(6000)
    await stack.publish_fast(stack.topics.orders, events)
    rng = random.Random(3)
    kills = 0
    while kills < 4:
        # Kill only while the worker is making progress: after it has applied something new.
        before = await applied(stack)
        await stack.until(lambda since=before: _progress(stack, since), 60, "progress")
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        if await applied(stack) >= len(events):
            break
        stack.workers[-1].send_signal(signal.SIGKILL)
        stack.workers[-1].wait(timeout=10)
        stack.workers.pop()
        kills += 1
        stack.start_worker()
    await stack.until(lambda: _at_least(stack, len(events)), 180, "every order applied")
    await asyncio.sleep(2)  # anything applied twice would show up now
    assert kills >= 2, "the worker finished before it could be killed twice: make the load larger"

    duplicates = await stack.redis.hget(stack.keys.stats(), "duplicates")
    assert int(duplicates or 0) > 0, "no redelivery seen: the dedupe path went untested"
    await assert_each_order_counted_once(stack, events, redis_url)


async def test_a_worker_joining_under_a_backlog_loses_nothing_and_counts_nothing_twice(
    make_stack: Callable[..., Awaitable[Stack]], redis_url: str
) -> None:
    """A rebalance while the first worker's stream buffers are full (small batches, thousands
    of events fetched): deliveries blocked on a full buffer are abandoned when the flow is
    suspended (stream/transport.py), and the partitions that move are read again from their
    committed offsets by the newcomer."""
    stack = await make_stack(workers=1, partitions=3, batch_size=50)
    events = order_events(6000, seed=11)
    await stack.publish_fast(stack.topics.orders, events)
    await stack.until(lambda: _progress(stack, 300), 60, "progress")
    stack.start_worker()
    joined_at = await applied(stack)
    await stack.until(lambda: _at_least(stack, len(events)), 180, "every order applied")
    await asyncio.sleep(2)  # anything applied twice would show up now
    assert joined_at < len(events) / 2, "the first worker was nearly done: make the load larger"
    assert (await stack.consumer_group())[1] == 2
    await assert_each_order_counted_once(stack, events, redis_url)


async def assert_each_order_counted_once(
    stack: Stack, events: list[dict[str, Any]], redis_url: str
) -> None:
    """Every order applied once: the count, each user's totals, and the co-occurrence counts
    of a run of the same orders with nothing going wrong."""
    assert await applied(stack) == len(events)
    for user, (orders, revenue) in expected_totals(events).items():
        profile = await stack.json(stack.keys.profile(user))
        assert profile["orders"] == orders, user
        assert profile["revenue"] == pytest.approx(revenue, abs=1e-6), user
    clean = await clean_run_cooccurrence(events, redis_url)
    assert await cooccurrence_of(stack.redis, stack.keys) == clean  # rounded to 1e-6


async def _progress(stack: Stack, since: int) -> bool | None:
    current = await applied(stack)
    return current > since or current >= 6000 or None


async def _at_least(stack: Stack, count: int) -> bool | None:
    return (await applied(stack)) >= count or None


async def committed(stack: Stack, topic: str) -> int:
    """Events of ``topic`` the workers' consumer group has committed, over all partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.broker, group_id=stack.namespace)
    await consumer.start()
    try:
        await consumer.topics()  # metadata, for the topic's partitions
        partitions = consumer.partitions_for_topic(topic) or set()
        assert partitions, topic
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in partitions]
        return sum(offset or 0 for offset in offsets)
    finally:
        await consumer.stop()


@pytest.fixture
def private_redis() -> Iterator[localstack.RedisServer]:
    with localstack.RedisServer(port=localstack.free_port()) as server:
        server.start()
        yield server


async def test_a_frozen_redis_delays_the_stream_but_loses_nothing(
    private_redis: localstack.RedisServer,
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(workers=0, redis=private_redis.url, batch_size=50)
    stack.start_worker()
    events = order_events(600, seed=11)
    await stack.publish_fast(stack.topics.orders, events[:200])
    await stack.until(lambda: _at_least(stack, 200), 60, "first orders applied")
    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        await stack.publish_fast(stack.topics.orders, events[200:])
        await asyncio.sleep(10)
        stack.assert_workers_alive()
        # Faust commits every 2.8 s what its agents acked, and an agent acks a batch only
        # once every step of it is done: never past what Redis stored before it froze (200),
        # though 400 more were fetched meanwhile. The last stored batch may be left unacked
        # when Redis froze between its commit script and its recommendation writes; it is
        # redelivered and deduplicated, which the totals below check.
        done = await committed(stack, stack.topics.orders)
        assert 200 - 50 <= done <= 200, f"{done} committed with 200 stored"
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
    await stack.until(lambda: _at_least(stack, len(events)), 120, "every order applied")
    await asyncio.sleep(2)
    assert await applied(stack) == len(events)
    for user, (orders, revenue) in expected_totals(events).items():
        profile = await stack.json(stack.keys.profile(user))
        assert (profile["orders"], profile["revenue"]) == (orders, pytest.approx(revenue)), user


async def assert_exact_totals(stack: Stack, events: list[dict[str, Any]]) -> None:
    assert await applied(stack) == len(events)
    for user, (orders, revenue) in expected_totals(events).items():
        profile = await stack.json(stack.keys.profile(user))
        assert (profile["orders"], profile["revenue"]) == (orders, pytest.approx(revenue)), user


@pytest.fixture
async def private_broker_stack(redis_url: str) -> AsyncIterator[Stack]:
    """A stack on a broker of its own (so it can be frozen without hurting other tests)."""
    with localstack.Broker(port=localstack.free_port()) as broker:
        stack = Stack(broker.bootstrap, redis_url, f"t{uuid.uuid4().hex[:10]}", batch_size=50)
        try:
            await stack.start(partitions=2)
            stack.broker_process = broker.process  # type: ignore[attr-defined]
            yield stack
        finally:
            await stack.cleanup()


async def test_a_frozen_broker_delays_the_stream_but_loses_nothing(
    private_broker_stack: Stack,
) -> None:
    stack = private_broker_stack
    broker: subprocess.Popen[bytes] = stack.broker_process  # type: ignore[attr-defined]
    stack.start_worker()
    events = order_events(1200, seed=13)
    await stack.publish_fast(stack.topics.orders, events[:300])
    await stack.until(lambda: _at_least(stack, 300), 60, "first orders applied")
    # The rest goes out at a steady rate; the broker freezes in the middle of it.
    publishing = asyncio.create_task(_publish_at(stack, events[300:], rate=300))
    await stack.until(lambda: _at_least(stack, 450), 60, "the stream under way")
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(5)
        stack.assert_workers_alive()
        during = await applied(stack)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    assert during < len(events), "the stream was over before the broker froze"
    await publishing
    await stack.until(lambda: _at_least(stack, len(events)), 120, "every order applied")
    await asyncio.sleep(2)
    stack.assert_workers_alive()
    await assert_exact_totals(stack, events)


async def _publish_at(stack: Stack, events: list[dict[str, Any]], rate: float) -> None:
    messages = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    async with Publisher(stack.broker) as publisher:
        await publisher.send_many(stack.topics.orders, messages, rate=rate)


async def test_sigterm_finishes_the_batch_commits_and_exits_cleanly(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(workers=1, partitions=3, batch_size=50)
    events = order_events(2000, seed=17)
    await stack.publish_fast(stack.topics.orders, events)
    await stack.until(lambda: _at_least(stack, 300), 60, "the stream under way")
    worker = stack.workers[0]
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await asyncio.to_thread(worker.wait, 30)
    took = time.monotonic() - started
    stack.workers.clear()
    log = (ARTIFACTS / f"worker-{stack.namespace}-0.log").read_text(errors="replace")
    assert code == 0, f"exit code {code}:\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    assert took < 20, f"shutdown took {took:.1f}s"
    at_exit = await applied(stack)
    assert 300 <= at_exit < len(events), "stopped too late to show anything"

    stack.start_worker()
    await stack.until(lambda: _at_least(stack, len(events)), 120, "every order applied")
    await asyncio.sleep(2)
    await assert_exact_totals(stack, events)
    # Offsets were committed on the way out: the new worker redelivers (at most) the batch
    # that was in flight, not everything since the last periodic commit.
    duplicates = int(await stack.redis.hget(stack.keys.stats(), "duplicates") or 0)
    print(f"SIGTERM: exit 0 in {took:.1f}s at {at_exit} applied; {duplicates} redelivered")
    assert duplicates <= 50 * 3, f"{duplicates} events redelivered after a clean shutdown"
