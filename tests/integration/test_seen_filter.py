"""SHOPPULSE_RECOMMEND_SEEN: items a user recently interacted with are left out of their list
unless it is set; bought items are left out either way."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.keys import Topics
from stream.processor import RawEvent
from tests.integration.conftest import processor_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def event(topic: str, n: int, user: str, item: str, kind: str) -> RawEvent:
    document: dict[str, Any] = {"event_id": f"e{n}", "user_id": user, "ts": T0 + n}
    if kind == "purchase":
        line = {"item_id": item, "quantity": 1, "price": 5.0}
        document |= {"order_id": f"o{n}", "items": [line]}
    else:
        document |= {"type": kind, "item_id": item}
    return RawEvent(topic, 0, n, user.encode(), orjson.dumps(document))


@pytest.mark.parametrize("recommend_seen", [False, True])
async def test_seen_items_only_when_configured_bought_never(
    redis_url: str, recommend_seen: bool
) -> None:
    async with processor_for(redis_url, recommend_seen=recommend_seen) as processor:
        topics = Topics(processor.settings.namespace)
        # Everybody views A, B and C: all three are popular and neighbours of each other.
        crowd = [
            event(topics.clicks, 10 * u + k, f"c{u}", item, "view")
            for u in range(5)
            for k, item in enumerate("ABC")
        ]
        await processor.process_user_events(crowd)
        mine = [
            event(topics.clicks, 100, "me", "A", "view"),
            event(topics.orders, 101, "me", "B", "purchase"),
        ]
        outcome = await processor.process_user_events(mine)
        items = {i["item_id"] for d in outcome.recommendations for i in d["items"]}

        assert "C" in items
        assert "B" not in items  # bought
        assert ("A" in items) is recommend_seen
