"""The refresh process (stream/refresher.py): a child with its own Redis connections that
writes the same lists the worker would, follows the served model, and is replaced when it dies,
alone and inside a real worker."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.serving import PublishedModel
from shoppulse.bench import process_tree
from stream.keys import Topics
from stream.processor import AppliedBatch, BatchOutcome, Processor, RawEvent
from stream.refresher import RefreshProcess
from tests.integration.conftest import Stack, processor_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
ITEMS = [f"i{n}" for n in range(12)]


@pytest.fixture
async def processor(redis_url: str) -> AsyncIterator[Processor]:
    async with processor_for(redis_url) as built:
        yield built


@pytest.fixture
def refresher(processor: Processor) -> Any:
    process = RefreshProcess(processor.settings)
    yield process
    process.close()


def click_batch(processor: Processor, count: int, seed: int) -> list[RawEvent]:
    rng = random.Random(seed)
    topic = Topics(processor.settings.namespace).clicks
    events = []
    for n in range(count):
        user = f"u{rng.randrange(8)}"
        document = {
            "event_id": f"{seed}-{n}",
            "type": rng.choice(["view", "view", "click", "add_to_cart"]),
            "user_id": user,
            "item_id": rng.choice(ITEMS),
            "ts": T0 + n,
        }
        events.append(RawEvent(topic, 0, n, user.encode(), orjson.dumps(document)))
    return events


def ranked(documents: list[dict[str, Any]]) -> dict[str, list[tuple[str, float, str]]]:
    return {
        d["user_id"]: [(i["item_id"], round(i["score"], 9), i["source"]) for i in d["items"]]
        for d in documents
    }


async def test_the_refresh_process_writes_the_lists_the_worker_would(
    processor: Processor, refresher: RefreshProcess
) -> None:
    for seed in range(3):  # history, so that neighbours and popularity have something to say
        await processor.process_user_events(click_batch(processor, 60, seed))
    applied = await processor.apply_user_events(click_batch(processor, 40, 99))
    assert applied.records
    in_worker = AppliedBatch(BatchOutcome(), applied.records, applied.clock)
    await processor.refresh_applied(in_worker)

    documents = await refresher.refresh(applied.records, applied.clock)

    assert ranked(documents) == ranked(in_worker.outcome.recommendations)
    assert any(d["items"] for d in documents)
    for document in documents:  # what the child wrote is what it answered
        stored = await processor.store.get_json(processor.store.keys.recs(document["user_id"]))
        assert stored["recommendation_id"] == document["recommendation_id"]


async def test_the_refresh_process_follows_the_served_model(
    processor: Processor, refresher: RefreshProcess
) -> None:
    applied = await processor.apply_user_events(click_batch(processor, 30, 5))
    before = await refresher.refresh(applied.records, applied.clock)
    assert {d["model_version"] for d in before} == {"online"}
    factors = np.random.default_rng(1).random((len(ITEMS), 4)).astype(np.float32)
    empty = np.zeros((0, 4), np.float32)
    assert processor.models is not None
    await processor.models.publish(PublishedModel("als-1", ITEMS, factors, [], empty, {}))

    after = await refresher.refresh(applied.records, applied.clock)

    assert {d["model_version"] for d in after} == {"als-1"}


async def test_a_killed_refresh_process_is_replaced(
    processor: Processor, refresher: RefreshProcess
) -> None:
    applied = await processor.apply_user_events(click_batch(processor, 30, 7))
    assert await refresher.refresh(applied.records, applied.clock)
    first = refresher.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    documents = await refresher.refresh(applied.records, applied.clock)

    assert {d["user_id"] for d in documents} == {r.user_id for r in applied.records}
    assert refresher.pid not in (None, first)


def refresh_child(worker_pid: int) -> int | None:
    """The worker's refresh process: its descendant started by multiprocessing's spawn."""
    for pid in process_tree(worker_pid)[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            return pid
    return None


async def test_a_worker_whose_refresh_process_dies_goes_on_and_loses_nothing(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(workers=1, partitions=2, batch_size=50)
    worker = stack.workers[0]
    rng = random.Random(11)
    events = [
        {
            "event_id": f"e{n}",
            "type": "click",
            "user_id": f"u{rng.randrange(40)}",
            "item_id": rng.choice(ITEMS),
            "ts": T0 + n,
        }
        for n in range(3000)
    ]
    await stack.publish_fast(stack.topics.clicks, events)
    killed: list[int] = []
    while len(killed) < 2:
        seen = await stack.events_seen()
        child = refresh_child(worker.pid)
        if seen >= len(events):
            break
        if child is not None and child not in killed and seen > 0:
            os.kill(child, signal.SIGKILL)
            killed.append(child)
        await asyncio.sleep(0.3)
    assert len(killed) == 2, "the stream was over before its refresh process could be killed"

    await stack.wait_seen(len(events), timeout=120)
    users = {e["user_id"] for e in events}
    lists = {user: await stack.json(stack.keys.recs(user)) for user in users}
    assert all(lists.values()), [u for u, d in lists.items() if not d]
    # Each user's list reflects their last event: written after every kill.
    last_ts = {e["user_id"]: e["ts"] for e in events}
    assert {u: d["as_of"] >= last_ts[u] for u, d in lists.items()} == dict.fromkeys(users, True)
    stack.assert_workers_alive()
    assert refresh_child(worker.pid) not in (None, *killed)
