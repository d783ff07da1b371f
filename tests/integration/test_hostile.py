"""Hostile input against a real worker: a few hundred events drawn by hypothesis (invalid
JSON, wrong types, missing or empty ids, negative/NaN/absurd amounts and timestamps, huge
strings and lists, unknown types, deep nesting, bad UTF-8) interleaved with valid ones and
some redeliveries, published once through the broker. Each bad one must be dead-lettered with
a reason, each valid one applied exactly once, and the worker's memory must stay bounded."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shoppulse.kafka import Publisher
from tests import hostile
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

EXAMPLES, PER_EXAMPLE = 25, 16
BATCH = EXAMPLES * PER_EXAMPLE
RSS_GROWTH_LIMIT_KIB = 64 * 1024


def draw_batch(examples: int, size: int) -> list[hostile.Message]:
    """``examples`` hypothesis examples of ``size`` messages each, as one batch (one example
    of hundreds of events is more than hypothesis will generate)."""
    drawn: list[hostile.Message] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        drawn.extend(data.draw(hostile.batches(size, prefix=f"x{len(drawn)}-")))

    draw()
    return drawn


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def publish(stack: Stack, messages: list[hostile.Message]) -> None:
    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for m in messages:
        by_topic[m.topic].append((m.key, m.value))
    async with Publisher(stack.broker) as publisher:
        for topic, batch in by_topic.items():
            await publisher.send_many(getattr(stack.topics, topic), batch)


def expected_profiles(messages: list[hostile.Message]) -> dict[str, dict[str, Any]]:
    """Per user: event counts by type, orders and revenue, each event counted once."""
    expected: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"events": Counter(), "orders": 0, "revenue": 0.0}
    )
    seen: set[tuple[str | None, bytes]] = set()
    for m in messages:
        if m.kind != "valid" or (m.user_id, m.value) in seen:
            continue
        seen.add((m.user_id, m.value))
        assert m.user_id is not None and m.event_type is not None
        user = expected[m.user_id]
        user["events"][m.event_type] += 1
        if m.event_type == "purchase":
            doc = orjson.loads(m.value)
            user["orders"] += 1
            user["revenue"] += sum(line["quantity"] * line["price"] for line in doc["items"])
    return expected


async def test_hostile_events_are_dead_lettered_and_valid_ones_applied_exactly_once(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    messages = draw_batch(EXAMPLES, PER_EXAMPLE)
    bad = [m for m in messages if m.kind != "valid"]
    valid = [m for m in messages if m.kind == "valid"]
    distinct_valid = {(m.user_id, m.value) for m in valid}
    assert len(bad) > BATCH // 3 and len(distinct_valid) > BATCH // 4  # the draw is varied
    assert len(valid) > len(distinct_valid), "no redelivery drawn"

    stack = await make_stack(workers=1, batch_size=100)
    worker = stack.workers[0]
    # Warm up with valid events, so the memory baseline is a worker that has done work.
    warm_up = [
        {"event_id": f"w{n}", "type": "view", "user_id": f"w{n % 7}", "item_id": f"i{n % 12}"}
        | {"ts": hostile.T0 + n}
        for n in range(200)
    ]
    await stack.publish_fast(stack.topics.clicks, warm_up)
    await stack.wait_seen(len(warm_up), timeout=60)
    rss_before = rss_kib(worker.pid)

    await publish(stack, messages)
    await stack.wait_seen(len(warm_up) + len(valid), timeout=60)
    await asyncio.sleep(2)  # dead letters go out after the batch is stored; redoes would show
    stack.assert_workers_alive()
    rss_after = rss_kib(worker.pid)

    # Every valid event applied exactly once; every redelivery skipped.
    stats = await stack.json_hash(stack.keys.stats())
    assert stats is not None
    assert int(stats["applied"]) == len(warm_up) + len(distinct_valid)
    assert int(stats.get("duplicates", 0)) == len(valid) - len(distinct_valid)
    for user_id, want in expected_profiles(messages).items():
        profile = await stack.json(stack.keys.profile(user_id))
        assert profile is not None, user_id
        assert {k: v for k, v in profile["events"].items() if v} == dict(want["events"]), user_id
        assert profile["orders"] == want["orders"], user_id
        assert profile["revenue"] == pytest.approx(want["revenue"], rel=1e-9, abs=0.01), user_id

    # Every hostile event in the dead-letter topic, byte for byte, with a reason; nothing else.
    letters = await stack.read_topic(stack.topics.deadletter, len(bad), timeout=30)
    assert len(letters) == len(bad)
    got = Counter((d["source_topic"], base64.b64decode(d["original_base64"])) for d in letters)
    want = Counter((getattr(stack.topics, m.topic), m.value) for m in bad)
    assert got == want
    for letter in letters:
        assert isinstance(letter["reason"], str) and letter["reason"].strip(), letter
        assert not letter["reason"].startswith("internal error"), letter["reason"]

    # Memory: hostile payloads (up to ~300 KB each) must not stay around.
    growth = rss_after - rss_before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"worker RSS grew by {growth} KiB"
    print(f"hostile: {len(bad)} bad, {len(valid)} valid; RSS {rss_before} -> {rss_after} KiB")
