"""SHOPPULSE_RECOMMEND_SEEN: items a user recently interacted with are left out of their list
unless it is set; bought items are left out either way."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.model_store import ModelStore
from stream.processor import Processor, RawEvent
from stream.store import RedisStore, connect

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
    keys = Keys(f"seen{uuid.uuid4().hex[:10]}")
    settings = Settings(
        namespace=keys.ns, redis_url=SecretStr(redis_url), recommend_seen=recommend_seen
    )
    topics = Topics(keys.ns)
    store = RedisStore(connect(redis_url), keys)
    models = ModelStore(connect(redis_url, decode=False), keys)
    try:
        processor = Processor(store, settings, models)
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
    finally:
        async for key in store.client.scan_iter(f"{keys.ns}:*", count=1000):
            await store.client.delete(key)
        await store.close()
        await models.client.aclose()
