"""Models are data written by whoever can write to Redis: a broken version made current must
not stop a running worker. It keeps serving (and scoring with) what it had and keeps applying
events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def click(user: str, item: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"{user}-{n}",
        "type": "click",
        "user_id": user,
        "item_id": item,
        "ts": T0 + n,
    }


async def test_a_broken_als_or_churn_version_is_refused_and_events_still_apply(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack()
    await stack.publish(stack.topics.clicks, click("u1", "A", 0), click("u2", "B", 1))
    await stack.wait_seen(2)

    keys = stack.keys
    # An ALS version whose factor bytes are short, and a churn version that is not JSON.
    header = {"format": "shoppulse-als-1", "version": "als-bad", "factors": 2, "params": {}}
    await stack.redis.hset(
        keys.model("als-bad"),
        mapping={"header": orjson.dumps(header), "item_ids": '["A","B"]', "item_factors": "x"},
    )
    await stack.redis.set(keys.current_model("als"), "als-bad")
    await stack.redis.hset(keys.model("churn-bad"), mapping={"kind": "churn", "churn": "{nope"})
    await stack.redis.set(keys.current_model("churn"), "churn-bad")

    events = [click("u1", "B", 10), click("u3", "A", 11), click("u3", "C", 12)]
    await stack.publish(stack.topics.clicks, *events)
    await stack.wait_seen(5)

    applied = await stack.redis.hget(keys.stats(), "applied")
    assert int(applied or 0) == 5
    profile = await stack.json(keys.profile("u3"))
    assert profile["events"] == {"click": 2}
    recs = await stack.json(keys.recs("u3"))
    assert recs["model_version"] == "online"  # still the streaming blend, not the broken one
    stack.assert_workers_alive()
    await stack.publish(stack.topics.clicks, {"not": "an event"})  # a marker after the batch
    dead = await stack.read_topic(stack.topics.deadletter, 1)
    assert [d["reason"] for d in dead if "internal" in d["reason"]] == []
