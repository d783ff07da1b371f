"""``shoppulse alerts`` follows the real alert topic on a real broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


async def test_alerts_command_prints_alerts_from_the_topic(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    # One partition, so "the first two alerts" is well defined (with several, --limit 2 would
    # read whichever two partitions answered first).
    stack = await make_stack(workers=0, partitions=1)
    alerts = [
        {
            "alert_id": f"al-{n}",
            "user_id": f"shopper-{n}",
            "risk": 0.7 + n / 10,
            "previous_risk": 0.2,
            "threshold": 0.6,
            "as_of": 1_700_000_000.0 + n,
            "model_version": "churn-1",
            "reasons": [f"reason number {n}"],
        }
        for n in range(3)
    ]
    assert await partitions_of(stack.broker, stack.topics.churn_alerts) == 1
    await stack.publish(stack.topics.churn_alerts, *alerts)
    done = await stack.cli("alerts", "--from-beginning", "--limit", "2", timeout=60, COLUMNS="200")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shopper-0" in done.stdout and "reason number 0" in done.stdout
    assert "shopper-1" in done.stdout and "0.80" in done.stdout
    assert "shopper-2" not in done.stdout  # --limit 2
    assert "2 alerts" in done.stdout


async def partitions_of(broker: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker)
    await consumer.start()
    try:
        await consumer.topics()
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()
