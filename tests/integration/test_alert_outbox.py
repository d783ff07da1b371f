"""Churn alerts are at least once: an alert written with its batch but never confirmed on
Kafka (its worker died between the Redis commit and the send) is sent by a running worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from models.profile import ItemDeltas
from shoppulse.settings import Settings
from stream import store as store_module
from stream.processor import similarity_params
from stream.store import RedisStore, connect
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


async def test_an_alert_its_writer_never_sent_reaches_the_topic_once(
    make_stack: Callable[..., Awaitable[Stack]], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await make_stack()
    alert = {
        "alert_id": "lost-1",
        "user_id": "lost",
        "risk": 0.91,
        "previous_risk": 0.4,
        "threshold": 0.7,
        "as_of": 1_700_000_000.0,
        "model_version": "churn-x",
        "reasons": ["no order for 120 days"],
    }
    # The writer's side of a batch that fired an alert, then the writer died: what the commit
    # script writes, with a lease already over (as it is 30 s after a crash).
    monkeypatch.setattr(store_module, "ALERT_LEASE_SECONDS", -1.0)
    writer = RedisStore(connect(stack.redis_url), stack.keys)
    try:
        params = similarity_params(Settings(namespace=stack.namespace))
        await writer.commit([], ItemDeltas(), 1_700_000_000.0, params, alerts=[alert])
    finally:
        await writer.close()
    assert await stack.redis.zcard(stack.keys.alert_outbox()) == 1

    sent = await stack.read_topic(stack.topics.churn_alerts, 1, timeout=60)
    assert sent == [alert]

    async def confirmed() -> bool | None:
        return await stack.redis.zcard(stack.keys.alert_outbox()) == 0 or None

    await stack.until(confirmed, 30, "the alert to leave the outbox")
    assert await stack.read_topic(stack.topics.churn_alerts, 1) == [alert]  # and only once
