"""The shop simulator: deterministic per seed, events in the contract, truth matching events."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import orjson
import pytest

from models.churn import label_at
from models.churn_features import DAY, ChurnHistory
from shoppulse.simulator import (
    GAP_SHAPES,
    PUBLISHED_SEEDS,
    ShopConfig,
    SimulatedShop,
    simulate_shop,
)
from stream.events import decode_click, decode_order

SMALL = ShopConfig(customers=300, prospects=30, days=400)


@pytest.fixture(scope="module")
def shop() -> SimulatedShop:
    return simulate_shop(PUBLISHED_SEEDS[0], SMALL)


def test_same_seed_same_shop_byte_for_byte() -> None:
    config = replace(SMALL, customers=60, prospects=5)
    a, b = simulate_shop(11, config), simulate_shop(11, config)
    assert orjson.dumps(a.orders) == orjson.dumps(b.orders)
    assert orjson.dumps(a.clicks) == orjson.dumps(b.clicks)
    assert a.truth == b.truth
    assert orjson.dumps(simulate_shop(12, config).orders) != orjson.dumps(a.orders)


def test_orders_do_not_depend_on_the_clickstream(shop: SimulatedShop) -> None:
    orders_only = simulate_shop(PUBLISHED_SEEDS[0], replace(SMALL, clickstream=False))
    assert orders_only.clicks == []
    assert orjson.dumps(orders_only.orders) == orjson.dumps(shop.orders)
    assert orders_only.truth == shop.truth


def test_every_event_passes_the_service_contract(shop: SimulatedShop) -> None:
    for event in shop.orders:
        order = decode_order(orjson.dumps(event))
        assert order.status in ("placed", "cancelled", "returned")
        assert order.lines  # every simulated order event names its items
    for event in shop.clicks[:5000]:
        decode_click(orjson.dumps(event))
    ids = [e["event_id"] for e in shop.orders + shop.clicks]
    assert len(ids) == len(set(ids))
    assert [e["ts"] for e in shop.orders] == sorted(e["ts"] for e in shop.orders)
    assert [e["ts"] for e in shop.clicks] == sorted(e["ts"] for e in shop.clicks)
    assert all(SMALL.start <= e["ts"] <= shop.end_ts for e in shop.orders + shop.clicks)


def test_ground_truth_matches_the_events(shop: SimulatedShop) -> None:
    placed: dict[str, list[float]] = defaultdict(list)
    for event in shop.orders:
        if event["status"] == "placed":
            placed[event["user_id"]].append(event["ts"])
    for user, truth in shop.truth.items():
        times = placed.get(user, [])
        assert times == shop.placed_times.get(user, [])
        if truth.first_order_ts is None:  # a prospect
            assert times == [] and truth.churn_ts is None
            continue
        assert times[0] == truth.first_order_ts
        assert truth.churn_ts is not None and max(times) <= truth.churn_ts
        if truth.one_time:
            assert times == [truth.first_order_ts] == [truth.churn_ts]
        assert truth.gap_shape in GAP_SHAPES


def test_cancellations_and_returns_follow_their_order(shop: SimulatedShop) -> None:
    placed = {e["order_id"]: e for e in shop.orders if e["status"] == "placed"}
    reversals = [e for e in shop.orders if e["status"] != "placed"]
    assert reversals
    for event in reversals:
        order = placed[event["order_id"]]
        assert event["ts"] > order["ts"] and event["user_id"] == order["user_id"]
        ordered = {line["item_id"] for line in order["items"]}
        assert {line["item_id"] for line in event["items"]} <= ordered


def test_churned_is_what_the_service_would_label_from_the_events(shop: SimulatedShop) -> None:
    histories: dict[str, ChurnHistory] = defaultdict(ChurnHistory)
    for event in shop.orders:
        amount = sum(line["quantity"] * line["price"] for line in event["items"])
        histories[event["user_id"]].record_order(event["ts"], amount, event["status"])
    cutoff = shop.end_ts - 120 * DAY
    for user in histories:
        assert shop.churned(user, cutoff, 90) == label_at(histories[user], cutoff, 90)
    with pytest.raises(ValueError):
        shop.churned("c00000", shop.end_ts - 10 * DAY, 90)


def test_the_shop_looks_like_a_shop(shop: SimulatedShop) -> None:
    """Many one-time buyers, varied rhythms that the orders follow, long gaps, clickstream."""
    customers = [t for t in shop.truth.values() if t.first_order_ts is not None]
    one_time = np.mean([t.one_time for t in customers])
    assert 0.25 < one_time < 0.45
    counts = {u: len(ts) for u, ts in shop.placed_times.items()}
    assert np.mean([n == 1 for n in counts.values()]) > one_time  # and more who never return
    ratios = []
    longest = 0.0
    for t in customers:
        times = shop.placed_times[t.user_id]
        if len(times) >= 8:
            gaps = np.diff(times) / DAY
            ratios.append(gaps.mean() / t.mean_gap_days)
            longest = max(longest, gaps.max())
    assert 0.8 < float(np.median(ratios)) < 1.2  # gaps follow each customer's own rhythm
    assert longest > 120  # and some are long
    kinds = {e["type"] for e in shop.clicks}
    assert kinds == {"view", "click", "add_to_cart", "remove_from_cart"}
    assert any(e["user_id"].startswith("p") for e in shop.clicks)  # prospects browse


def test_browsing_tapers_before_churn(shop: SimulatedShop) -> None:
    """Sessions per day in the 30 days before churn against the 30-90 days before it."""
    sessions: dict[str, set[tuple[str, float]]] = defaultdict(set)
    for event in shop.clicks:
        sessions[event["user_id"]].add((event["session_id"], event["ts"]))
    near, far = 0, 0
    for t in shop.truth.values():
        if t.one_time or t.churn_ts is None or t.first_order_ts is None:
            continue
        if t.churn_ts > shop.end_ts or t.churn_ts - t.first_order_ts < 120 * DAY:
            continue
        starts: dict[str, float] = {}
        for session, ts in sessions[t.user_id]:
            starts[session] = min(ts, starts.get(session, ts))
        before = [t.churn_ts - ts for ts in starts.values() if ts <= t.churn_ts]
        near += sum(1 for d in before if d < 30 * DAY)
        far += sum(1 for d in before if 30 * DAY <= d < 90 * DAY)
    assert near / 30 < 0.6 * far / 60
