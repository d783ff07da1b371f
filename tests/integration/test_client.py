"""The Python client against a real broker, a real Redis and a real worker: typed helpers
publish events the worker takes in, recommendations and profiles read back, alerts followed
from the alert topic; invalid events are refused before they are sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from shoppulse.client import ShopPulseClient
from shoppulse.errors import InvalidEvent, ShopPulseError
from shoppulse.localstack import free_port
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def client_for(stack: Stack) -> ShopPulseClient:
    return ShopPulseClient(
        kafka_bootstrap=stack.broker, redis_url=stack.redis_url, namespace=stack.namespace
    )


async def test_publish_read_and_follow_alerts(make_stack: Callable[..., Awaitable[Stack]]) -> None:
    stack = await make_stack()
    async with client_for(stack) as client:
        await client.catalog("sku-1", category="shoes", price=20.0, title="Runner", ts=T0)
        await client.catalog("sku-2", category="shoes", price=30.0, ts=T0)
        await client.catalog("sku-3", category="books", price=9.0, in_stock=True, ts=T0)
        await stack.until(lambda: stack.json_hash(stack.keys.item("sku-3")), 60, "catalog")
        assert (await stack.json_hash(stack.keys.item("sku-1")))["title"] == "Runner"  # type: ignore[index]

        # Two users who view sku-1 and sku-2 together make them neighbours.
        for user in ("a", "b"):
            await client.click(user, "sku-1", ts=T0 + 1)
            await client.click(user, "sku-2", kind="click", ts=T0 + 2)
        event_id = await client.click("c", "sku-1", kind="add_to_cart", ts=T0 + 3)
        order_id = await client.order("c", [("sku-3", 2, 9.0)], ts=T0 + 4)
        await stack.wait_seen(6)

        recs = await client.recommendations("c")
        assert recs is not None
        assert recs["items"][0]["item_id"] == "sku-2"  # the neighbour of what c put in the cart
        assert recs["items"][0]["source"] == "itemknn"
        profile = await client.profile("c")
        assert profile is not None
        assert profile["orders"] == 1
        assert profile["revenue"] == pytest.approx(18.0)
        assert profile["events"]["add_to_cart"] == 1
        assert await client.recommendations("nobody") is None
        assert await client.profile("nobody") is None

        # The same event id again is a duplicate the worker skips: the client sends it as is.
        await client.click("c", "sku-1", kind="add_to_cart", ts=T0 + 3, event_id=event_id)
        await client.order("c", [], order_id=order_id, status="cancelled", ts=T0 + 5)
        await stack.wait_seen(8)
        assert (await client.profile("c"))["orders"] == 0  # type: ignore[index]
        assert int(await stack.redis.hget(stack.keys.stats(), "duplicates") or 0) == 1  # type: ignore[misc]

        # Alerts: whatever lands on the alert topic comes out of the iterator, in order.
        alerts = [
            {"alert_id": f"al-{n}", "user_id": f"u{n}", "risk": 0.8 + n / 100} for n in range(3)
        ]
        await stack.publish(stack.topics.churn_alerts, *alerts)
        received: list[dict[str, Any]] = []
        async for alert in client.alerts(from_beginning=True, idle_timeout=10):
            received.append(alert)
            if len(received) == len(alerts):
                break
        # (the topic may have several partitions: order is kept per user, not overall)
        assert sorted(a["alert_id"] for a in received) == [a["alert_id"] for a in alerts]


async def test_invalid_events_are_refused_before_sending(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(workers=0)
    async with client_for(stack) as client:
        with pytest.raises(InvalidEvent, match="user_id"):
            await client.click("", "sku-1")
        with pytest.raises(InvalidEvent, match="type"):
            await client.click("u1", "sku-1", kind="stare")  # type: ignore[arg-type]
        with pytest.raises(InvalidEvent, match="ts"):
            await client.click("u1", "sku-1", ts="yesterday")
        with pytest.raises(InvalidEvent, match="at least one item"):
            await client.order("u1", [])
        with pytest.raises(InvalidEvent, match="price"):
            await client.order("u1", [("sku-1", 1, -3.0)])
        with pytest.raises(InvalidEvent, match="price"):
            await client.catalog("sku-1", price=float("nan"))
        with pytest.raises(InvalidEvent, match="item_id"):
            await client.catalog("x" * 300)
        # Nothing reached the broker: the clicks topic is still empty.
        await client.click("u1", "sku-1", ts=T0, event_id="the-only-one")
    documents = await stack.read_topic(stack.topics.clicks, 1)
    assert [d["event_id"] for d in documents] == ["the-only-one"]
    orders: list[Any] = []
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        stack.topics.orders, bootstrap_servers=stack.broker, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for records in (await consumer.getmany(timeout_ms=1500)).values():
            orders += [orjson.loads(r.value) for r in records]
    finally:
        await consumer.stop()
    assert orders == []


async def test_an_unreachable_broker_is_a_shoppulse_error() -> None:
    client = ShopPulseClient(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        namespace="nowhere",
    )
    with pytest.raises(ShopPulseError, match="Kafka is not reachable"):
        await asyncio.wait_for(client.click("u1", "sku-1"), 30)
    with pytest.raises(ShopPulseError, match="Redis"):
        await client.profile("u1")
    await client.close()
