"""The spine end to end: events published with aiokafka, a real `shoppulse worker` process,
state and recommendations read back from a real Redis and from the output topic."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoppulse import localstack
from stream.store import NEIGHBOUR_RANK_SCALE
from tests.integration.conftest import REDIS_URL, Stack

pytestmark = pytest.mark.integration

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
GROUP_A = ["A1", "A2", "A3", "A4"]
GROUP_B = ["B1", "B2", "B3", "B4"]


@pytest.fixture(scope="module")
async def stack(broker: str) -> AsyncIterator[Stack]:
    assert localstack.redis_reachable(REDIS_URL), f"needs Redis at {REDIS_URL}"
    running = Stack(
        broker, REDIS_URL, f"spine{uuid.uuid4().hex[:8]}", half_life_days=1, similarity_shrinkage=2
    )
    await running.cleanup_keys()
    await running.start(partitions=2)
    running.start_worker()
    await running.publish(
        running.topics.catalog,
        *[{"item_id": i, "category": "alpha", "title": f"Item {i}", "ts": T0} for i in GROUP_A],
        *[{"item_id": i, "category": "beta", "ts": T0} for i in GROUP_B],
        *[{"item_id": i, "category": "gamma", "ts": T0} for i in ("P1", "P2")],
    )
    await running.until(lambda: running.json_hash(running.keys.item("B4")), 60, "catalog applied")
    # Two crowds with different tastes: six users view all of group A, six all of group B.
    events = []
    for crowd, items in (("a", GROUP_A), ("b", GROUP_B)):
        for n in range(6):
            for k, item in enumerate(items):
                events.append(click(f"crowd-{crowd}{n}", item, T0 + n * 100 + k, f"{crowd}{n}{k}"))
    await running.publish(running.topics.clicks, *events)
    await running.wait_seen(len(events))
    yield running
    await running.cleanup()


def click(user: str, item: str, ts: float, event_id: str, kind: str = "view") -> dict[str, Any]:
    return {"event_id": event_id, "type": kind, "user_id": user, "item_id": item, "ts": ts}


def order(
    user: str, order_id: str, ts: float, lines: list[tuple[str, float, float]], **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": f"{order_id}-{extra.get('status', 'placed')}",
        "order_id": order_id,
        "user_id": user,
        "ts": ts,
        "items": [{"item_id": i, "quantity": q, "price": p} for i, q, p in lines],
        **extra,
    }


async def recs_of(stack: Stack, user: str, after: str | None = None) -> dict[str, Any]:
    """The user's recommendations once they exist (and differ from ``after``)."""

    async def probe() -> dict[str, Any] | None:
        document = await stack.json(stack.keys.recs(user))
        if document is None or document["recommendation_id"] == after:
            return None
        return document  # type: ignore[no-any-return]

    return await stack.until(probe, 30, f"recommendations of {user}")


def item_ids(document: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in document["items"]]


async def test_profile_counts_orders_revenue_and_event_time_decay(stack: Stack) -> None:
    seen = await stack.events_seen()
    await stack.publish(
        stack.topics.clicks,
        click("alice", "P1", T0, "al-1"),
        click("alice", "P2", T0 + DAY, "al-2", "click"),
    )
    await stack.publish(
        stack.topics.orders,
        order("alice", "o-1", T0 + 2 * DAY, [("P1", 2, 10.5)]),
        order("alice", "o-2", T0 + 2 * DAY, [("Q1", 1, 5.0)]),
        order("alice", "o-2", T0 + 2 * DAY + 60, [("Q1", 1, 5.0)], status="cancelled"),
    )
    await stack.wait_seen(seen + 5)
    profile = await stack.json(stack.keys.profile("alice"))

    assert profile["first_seen"] == T0
    assert profile["last_seen"] == T0 + 2 * DAY + 60
    assert profile["events"] == {"view": 1, "click": 1, "purchase": 2}
    assert profile["orders"] == 1  # o-2 was cancelled
    assert profile["revenue"] == pytest.approx(21.0)  # 2 * 10.5 + 5.0 - 5.0
    assert profile["cancellations"] == 1
    # Category "gamma" with a one-day half-life, in event time: view (1) at T0, click (2) a day
    # later -> 1 * 0.5 + 2 = 2.5; purchase of P1 (5) a day after that -> 2.5 * 0.5 + 5 = 6.25.
    value, as_of = profile["category_affinity"]["gamma"]
    assert as_of == T0 + 2 * DAY
    assert value == pytest.approx(6.25)
    # Purchases: 1 at T0 + 2d for each placed order -> 2.0 as of T0 + 2d.
    assert profile["decayed_events"]["purchase"][0] == pytest.approx(2.0)
    assert {i["item_id"] for i in profile["recent_items"][:2]} == {"P1", "Q1"}
    assert profile["recent_items"][2]["item_id"] == "P2"


async def test_item_similarities_are_shrunk_cosine_of_co_interactions(stack: Stack) -> None:
    # Six users each viewed all of group A once (weight 1): C[A1, A2] = 6 and N[A1] = N[A2] = 6,
    # so cosine = 6 / sqrt(6 * 6) = 1, shrunk by 6 / (6 + 2) = 0.75. Group B never co-occurs.
    # (Later tests add more events; this one only reads pairs they do not touch.)
    neighbours = dict(await stack.redis.zrange(stack.keys.neighbours("B2"), 0, -1, withscores=True))
    norm = float(await stack.redis.hget(stack.keys.item_norms(), "B2"))
    assert set(neighbours) == {"B1", "B3", "B4"}
    for other in ("B3", "B4"):
        assert neighbours[other] / NEIGHBOUR_RANK_SCALE / math.sqrt(norm) == pytest.approx(0.75)


async def test_users_with_different_tastes_get_different_recommendations(stack: Stack) -> None:
    await stack.publish(
        stack.topics.clicks,
        click("fan-a", "A1", T0 + DAY, "fa-1"),
        click("fan-b", "B1", T0 + DAY, "fb-1"),
    )
    fan_a, fan_b = await recs_of(stack, "fan-a"), await recs_of(stack, "fan-b")

    assert item_ids(fan_a)[:3] and set(item_ids(fan_a)[:3]) <= set(GROUP_A) - {"A1"}
    assert set(item_ids(fan_b)[:3]) <= set(GROUP_B) - {"B1"}
    assert {i["source"] for i in fan_a["items"][:3]} == {"itemknn"}
    assert "A1" not in item_ids(fan_a)  # seen items are not recommended by default


async def test_purchased_and_out_of_stock_items_never_appear(stack: Stack) -> None:
    await stack.publish(stack.topics.catalog, {"item_id": "A3", "in_stock": False, "ts": T0 + DAY})
    await stack.until(lambda: _is_out_of_stock(stack, "A3"), 30, "A3 out of stock")
    await stack.publish(stack.topics.orders, order("buyer", "o-9", T0 + DAY, [("A2", 1, 3.0)]))
    first = await recs_of(stack, "buyer")
    await stack.publish(stack.topics.clicks, click("buyer", "B2", T0 + DAY + 5, "bu-1"))
    second = await recs_of(stack, "buyer", after=first["recommendation_id"])

    for document in (first, second):
        assert "A2" not in item_ids(document)  # bought
        assert "A3" not in item_ids(document)  # out of stock
        assert document["items"], "a buyer with history still gets recommendations"
    assert "A1" in item_ids(first) and "A4" in item_ids(first)


async def _is_out_of_stock(stack: Stack, item: str) -> bool | None:
    return bool(await stack.redis.sismember(stack.keys.out_of_stock(), item)) or None


async def test_recommendations_are_published_in_the_contract_format(stack: Stack) -> None:
    await stack.publish(stack.topics.clicks, click("publisher", "B3", T0 + 3 * DAY, "pu-1"))
    stored = await recs_of(stack, "publisher")
    published = [
        d
        for d in await stack.read_topic(stack.topics.recommendations, 1)
        if d["user_id"] == "publisher"
    ]
    if not published:  # the topic holds earlier users' documents first: read further
        everything = await stack.read_topic(stack.topics.recommendations, 20, timeout=10)
        published = [d for d in everything if d["user_id"] == "publisher"]

    assert published[-1] == stored
    assert set(stored) == {
        "user_id",
        "items",
        "recommendation_id",
        "model_version",
        "as_of",
        "generated_at",
    }
    assert stored["as_of"] >= T0 + 3 * DAY  # event time, not the wall clock
    assert stored["generated_at"] > stored["as_of"]
    assert all(set(i) == {"item_id", "score", "source"} for i in stored["items"])


async def test_a_brand_new_user_gets_popular_items_at_once(stack: Stack) -> None:
    await stack.publish(stack.topics.clicks, click("newcomer", "Z-unknown", T0 + DAY, "nc-1"))
    document = await recs_of(stack, "newcomer")
    assert len(document["items"]) >= 5
    assert {i["source"] for i in document["items"]} == {"popularity"}


async def test_malformed_events_go_to_the_dead_letter_topic(stack: Stack) -> None:
    bad = [
        b"{not json",
        b"\xff\xfe invalid utf-8",
        b'{"event_id": "x1", "type": "view", "item_id": "A1", "ts": 1}',  # no user_id
        b'{"event_id": "x2", "type": "view", "user_id": "", "item_id": "A1", "ts": 1}',
    ]
    await stack.publish(stack.topics.clicks, *bad)
    await stack.publish(
        stack.topics.orders,
        order("mallory", "o-bad", T0, [("A1", 1, -3.0)]),
    )
    await stack.publish(stack.topics.clicks, click("after-bad", "A1", T0, "ab-1"))

    letters = await stack.read_topic(stack.topics.deadletter, 5)
    by_original = {base64.b64decode(d["original_base64"]): d for d in letters}
    for raw in bad:
        letter = by_original[raw]
        assert letter["source_topic"] == stack.topics.clicks
        assert letter["reason"] and letter["offset"] >= 0 and letter["partition"] >= 0
    assert "JSON" in by_original[bad[0]]["reason"]
    assert "user_id" in by_original[bad[2]]["reason"]
    order_letter = next(d for d in letters if d["source_topic"] == stack.topics.orders)
    assert "price" in order_letter["reason"]
    # The worker carried on: the valid event behind the bad ones was applied.
    assert await stack.until(lambda: stack.json(stack.keys.profile("after-bad")), 30)


async def test_a_bad_event_near_the_message_limit_is_dead_lettered_cut(stack: Stack) -> None:
    # 900 KB of junk: as base64 inside a dead letter it would not fit Kafka's 1 MB limit.
    huge = b'{"event_id": "h", "type": "view", "user_id": "", "item_id": "' + b"x" * 900_000
    await stack.publish(stack.topics.clicks, huge)
    await stack.publish(stack.topics.clicks, click("after-huge", "A1", T0, "ah-1"))

    async def huge_letter() -> dict[str, Any] | None:
        letters = await stack.read_topic(stack.topics.deadletter, 1)
        return next((d for d in letters if d.get("original_bytes") == len(huge)), None)

    letter = await stack.until(huge_letter, 30, "the dead letter of the huge event")
    assert letter["original_truncated"] is True
    assert huge.startswith(base64.b64decode(letter["original_base64"]))
    assert letter["reason"]
    assert await stack.until(lambda: stack.json(stack.keys.profile("after-huge")), 30)


async def test_a_duplicated_event_changes_nothing(stack: Stack) -> None:
    events = [click("twice", "A4", T0 + DAY, "tw-1"), click("twice", "B4", T0 + DAY, "tw-2")]
    purchase = order("twice", "o-tw", T0 + DAY, [("B3", 3, 2.5)])
    seen = await stack.events_seen()
    await stack.publish(stack.topics.clicks, *events)
    await stack.publish(stack.topics.orders, purchase)
    await stack.wait_seen(seen + 3)
    before = await _item_state(stack, ["A4", "B4", "B3"])
    profile_before = await stack.json(stack.keys.profile("twice"))
    duplicates_before = int(await stack.redis.hget(stack.keys.stats(), "duplicates") or 0)

    await stack.publish(stack.topics.clicks, *events)
    await stack.publish(stack.topics.orders, purchase)
    await stack.wait_seen(seen + 6)

    assert await stack.json(stack.keys.profile("twice")) == profile_before
    assert profile_before["orders"] == 1 and profile_before["revenue"] == pytest.approx(7.5)
    assert await _item_state(stack, ["A4", "B4", "B3"]) == before
    duplicates = int(await stack.redis.hget(stack.keys.stats(), "duplicates") or 0)
    assert duplicates - duplicates_before == 3


async def _item_state(stack: Stack, items: list[str]) -> dict[str, Any]:
    keys, redis = stack.keys, stack.redis
    return {
        "norms": await redis.hmget(keys.item_norms(), items),
        "popularity": await redis.zmscore(keys.popularity(), items),
        "cooc": {
            i: await redis.zrange(keys.cooccurrence(i), 0, -1, withscores=True) for i in items
        },
    }
