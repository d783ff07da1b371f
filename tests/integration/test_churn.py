"""Churn risk end to end: a simulated shop's orders go through Kafka into a real worker,
`shoppulse retrain` trains and publishes the churn model from the histories in Redis and
re-scores everyone; then other users' events move the clock while one customer stays silent
(their risk rises, and exactly one alert reaches the alerts topic), and a lapsed customer
comes back (their risk falls)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from models.churn_features import DAY
from shoppulse.settings import Settings
from shoppulse.simulator import ShopConfig, simulate_shop
from stream.churn import ChurnService
from stream.keys import Keys
from stream.store import RedisStore, connect
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SHOP = ShopConfig(customers=300, prospects=0, days=500, clickstream=False)
END = SHOP.end
THRESHOLD = 0.7


def order(user: str, n: int, ts: float, amount: float = 40.0) -> dict[str, Any]:
    return {
        "event_id": f"{user}-e{n}",
        "order_id": f"{user}-o{n}",
        "user_id": user,
        "ts": ts,
        "items": [{"item_id": f"i{n % 7}", "quantity": 1, "price": amount}],
    }


def history() -> list[dict[str, Any]]:
    """The simulated shop, plus a steady customer ("steady": every 10 days up to the end) and a
    lapsed one ("lapsed": every 15 days, silent for the last 250)."""
    events = list(simulate_shop(11, SHOP).orders)
    events += [order("steady", k, END - 200 * DAY + 10 * k * DAY) for k in range(21)]
    events += [order("lapsed", k, END - 400 * DAY + 15 * k * DAY) for k in range(11)]
    return sorted(events, key=lambda e: e["ts"])


async def risk_of(stack: Stack, user: str) -> float | None:
    profile = await stack.json(stack.keys.profile(user))
    return None if profile is None else profile["churn_risk"]


async def test_silence_raises_risk_to_one_alert_and_a_return_lowers_it(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack()
    events = history()
    await stack.publish_fast(stack.topics.orders, events)
    await stack.wait_seen(len(events), timeout=60)
    assert await risk_of(stack, "steady") is None  # no model yet: no made-up risk

    done = await stack.cli("retrain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert await stack.redis.get(stack.keys.current_model("churn")) is not None
    start = await risk_of(stack, "steady")
    assert start is not None and start < 0.3
    lapsed = await risk_of(stack, "lapsed")
    assert lapsed is not None and lapsed > THRESHOLD
    profile = await stack.json(stack.keys.profile("steady"))
    assert profile["segment"] and profile["clv"] > 0

    # Another user's clicks move the clock 10 days at a time; "steady" says nothing.
    clock = END
    risks = [start]
    seen = len(events)
    for step in range(1, 13):
        clock = END + step * 10 * DAY
        click = {
            "event_id": f"mover-{step}",
            "type": "view",
            "user_id": "mover",
            "item_id": "i1",
            "ts": clock,
        }
        await stack.publish(stack.topics.clicks, click)
        seen += 1
        await stack.wait_seen(seen)

        async def rescored(as_of: float = clock) -> float | None:
            document = await stack.json(stack.keys.profile("steady"))
            fresh = document["churn_as_of"] >= as_of
            return float(document["churn_risk"]) if fresh else None

        risks.append(await stack.until(rescored, 30, f"steady re-scored as of day +{step * 10}"))
    assert risks == sorted(risks) and risks[-1] > THRESHOLD > risks[0], risks
    score = await stack.redis.zscore(stack.keys.risk(), "steady")
    assert score == pytest.approx(risks[-1])

    # Every alert is in {ns}:alerts (written with the scores) and then on the topic.
    kept = await stack.redis.lrange(stack.keys.alerts(), 0, -1)
    alerts = await stack.read_topic(stack.topics.churn_alerts, len(kept))
    assert len(alerts) == len(kept)
    steady = [a for a in alerts if a["user_id"] == "steady"]
    assert len(steady) == 1, alerts
    alert = steady[0]
    assert set(alert) == {
        "alert_id",
        "user_id",
        "risk",
        "previous_risk",
        "threshold",
        "as_of",
        "model_version",
        "reasons",
    }
    assert alert["risk"] >= THRESHOLD > alert["previous_risk"]
    assert alert["threshold"] == THRESHOLD
    assert alert["reasons"] and all(isinstance(r, str) for r in alert["reasons"])
    assert alert["model_version"] == await stack.redis.get(stack.keys.current_model("churn"))
    assert sum('"user_id":"steady"' in raw for raw in kept) == 1
    # Each was confirmed on Kafka by whoever sent it: nothing is left to send again.
    assert await stack.redis.zcard(stack.keys.alert_outbox()) == 0

    # The lapsed customer comes back: their risk falls at once, to under half of what it was
    # and below the level that re-arms their alert. (Not to a steady customer's level: a
    # return after 250 silent days is itself a sign of an irregular buyer.)
    await stack.publish(stack.topics.orders, order("lapsed", 99, clock + 3600))
    await stack.wait_seen(seen + 1)
    after = await risk_of(stack, "lapsed")
    rearm = THRESHOLD - Settings().churn_alert_margin
    assert after is not None and after < lapsed / 2 and after < rearm, (after, lapsed)


async def test_only_one_worker_claims_a_days_re_scoring(redis_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(namespace=namespace)
    stores = [RedisStore(connect(redis_url), Keys(namespace)) for _ in range(2)]
    try:
        services = [ChurnService(store, settings) for store in stores]
        claims = await asyncio.gather(*(s.claim("day-20000") for s in services))
        assert sorted(claims) == [False, True]
        assert await services[0].claim("day-20001")  # another day: claimable again
    finally:
        markers = [Keys(namespace).rescore_marker(f"day-{day}") for day in (20000, 20001)]
        await stores[0].client.delete(*markers)
        for store in stores:
            await store.close()
