"""Churn features: hand-computed answers, as-of correctness, and incremental == full history."""

from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from models.churn_features import (
    CLICK_KINDS,
    DAY,
    DOWN,
    FEATURE_NAMES,
    GAP_WINDOW,
    SILENCE,
    UNBOUNDED,
    UP,
    ChurnDataError,
    ChurnHistory,
    HistoryCaps,
    exact_as_of,
    features_as_of,
    history_from_events,
    is_customer,
)

Orders = list[tuple[float, float, str]]
Clicks = list[tuple[float, str, str | None]]


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal up to float summation order (totals add up in arrival order)."""
    return all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9) for k in FEATURE_NAMES)


# -- known answers ----------------------------------------------------------------------------


def three_orders() -> ChurnHistory:
    # Orders of 10, 20, 30 on days 0, 10, 30; 6 of the last one returned on day 35.
    return history_from_events(
        [
            (0.0, 10.0, "placed"),
            (10 * DAY, 20.0, "placed"),
            (30 * DAY, 30.0, "placed"),
            (35 * DAY, 6.0, "returned"),
        ]
    )


def test_orders_by_hand() -> None:
    f = features_as_of(three_orders(), 40 * DAY)
    assert f["recency_days"] == pytest.approx(10.0)
    assert f["tenure_days"] == pytest.approx(40.0)
    assert f["orders_total"] == 3.0
    # Windows are (t - w, t]: day 10 is exactly 30 days before day 40, so outside.
    assert (f["orders_30d"], f["orders_90d"], f["orders_365d"]) == (1.0, 3.0, 3.0)
    assert f["spend_total"] == pytest.approx(60.0)
    assert f["spend_90d"] == pytest.approx(60.0)
    assert f["avg_order_value"] == pytest.approx(20.0)
    # Gaps 10 and 20 days: mean (30 - 0) / 2 = 15, population std 5.
    assert f["gap_mean_days"] == pytest.approx(15.0)
    assert f["gap_std_days"] == pytest.approx(5.0)
    # Last gap 20 against the mean gap before it, 10 / 1.
    assert f["last_gap_ratio"] == pytest.approx(2.0)
    # Expected gap (30 days of gaps + one 60-day prior) / (2 + 1) = 30; 10 / 30.
    assert f["overdue"] == pytest.approx(1.0 / 3.0)
    # 3 orders in the 90 days up to the last order, none in the 275 before: (3+1)/(0+1).
    assert f["order_trend"] == pytest.approx(4.0)
    assert (f["cancellations"], f["returns"]) == (0.0, 1.0)
    assert f["reversal_rate"] == pytest.approx(1.0 / 3.0)
    assert f["refund_share"] == pytest.approx(0.1)
    # No clickstream: zeros, and activity is order activity.
    assert f["has_clickstream"] == 0.0
    assert f["views_decayed"] == 0.0
    assert f["activity_recency_days"] == f["recency_days"]


def test_as_of_a_past_moment_ignores_what_came_later() -> None:
    f = features_as_of(three_orders(), 20 * DAY)
    assert f["orders_total"] == 2.0
    assert f["recency_days"] == pytest.approx(10.0)
    assert f["spend_total"] == pytest.approx(30.0)
    assert f["returns"] == 0.0  # the return on day 35 has not happened yet
    assert f["gap_mean_days"] == pytest.approx(10.0)
    assert f["last_gap_ratio"] == 1.0  # two orders: no usual gap to compare with


def test_an_order_at_the_moment_itself_counts() -> None:
    f = features_as_of(three_orders(), 30 * DAY)
    assert f["orders_total"] == 3.0
    assert f["recency_days"] == 0.0


def test_one_time_buyer_is_measured_against_the_prior_gap() -> None:
    f = features_as_of(history_from_events([(0.0, 50.0, "placed")]), 90 * DAY)
    assert f["orders_total"] == 1.0
    assert f["gap_mean_days"] == 0.0
    assert f["gap_std_days"] == 0.0
    assert f["last_gap_ratio"] == 1.0
    assert f["overdue"] == pytest.approx(90.0 / 60.0)  # no gaps: the 60-day prior


def test_users_without_orders_are_not_customers() -> None:
    history = history_from_events([], [(0.0, "view", "s")])
    f = features_as_of(history, 10 * DAY)
    assert not is_customer(f)
    assert f["orders_total"] == 0.0
    assert f["recency_days"] == 0.0
    assert f["views_30d"] == 1.0
    cancelled_only = history_from_events([(0.0, 10.0, "cancelled")])
    assert not is_customer(features_as_of(cancelled_only, DAY))


def test_clicks_are_counted_per_day_once_the_day_is_over() -> None:
    noon = 5 * DAY + 12 * 3600
    history = history_from_events(
        [(3 * DAY + 3600, 20.0, "placed")],
        [
            (3 * DAY, "add_to_cart", "s0"),  # the day of the order: converted
            (noon, "view", "s1"),
            (noon + 60, "click", "s1"),
            (noon + 120, "view", "s2"),
            (noon + 180, "add_to_cart", "s2"),
            (noon + 240, "view", None),  # no session id: the day's implicit session
        ],
    )
    before = features_as_of(history, 6 * DAY - 1)
    assert before["views_30d"] == 0.0  # day 5 is not over yet
    f = features_as_of(history, 6 * DAY)
    assert f["has_clickstream"] == 1.0
    assert f["views_30d"] == 4.0  # view and click events
    assert f["active_days_30d"] == 2.0  # days 3 and 5
    assert f["views_decayed"] == pytest.approx(4.0)  # seen at the end of day 5: no decay yet
    assert f["sessions_decayed"] == pytest.approx(3.0 + 1.0 * 2 ** (-2 / 14))
    assert f["carts_abandoned"] == 1.0  # the cart on day 5; day 3's led to the order
    assert f["activity_recency_days"] == 0.0  # day 5 ended just now
    assert f["recency_days"] == pytest.approx(3.0 - 1 / 24)
    # One 14-day half-life later the day-5 views count half.
    later = features_as_of(history, 20 * DAY)
    assert later["views_decayed"] == pytest.approx(4.0 * 0.5)
    # Views in the 30 days up to the last visit 4, none in the 60 before: (4+1)/(0+1).
    assert later["view_trend"] == pytest.approx(5.0)
    assert later["views_30d"] == 4.0
    assert features_as_of(history, 37 * DAY)["views_30d"] == 0.0


def test_session_count_per_day_is_capped() -> None:
    history = ChurnHistory()
    caps = HistoryCaps(sessions_per_day=2)
    for n in range(5):
        history.record_click(10.0 + n, "view", f"s{n}", caps)
    assert features_as_of(history, DAY)["sessions_decayed"] == pytest.approx(2.0)


# -- incremental == full history, and as-of ---------------------------------------------------

times = st.floats(min_value=0.0, max_value=400 * DAY, allow_nan=False)
amounts = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)
orders_st = st.lists(
    st.tuples(times, amounts, st.sampled_from(["placed", "placed", "cancelled", "returned"])),
    max_size=30,
)
clicks_st = st.lists(
    st.tuples(times, st.sampled_from(CLICK_KINDS), st.sampled_from(["a", "b", None])),
    max_size=40,
)


def incremental(orders: Orders, clicks: Clicks, caps: HistoryCaps, seed: int) -> ChurnHistory:
    """Events one at a time in a shuffled arrival order, orders and clicks interleaved."""
    events: list[tuple[str, tuple[object, ...]]] = [("o", e) for e in orders]
    events += [("c", e) for e in clicks]
    random.Random(seed).shuffle(events)
    history = ChurnHistory()
    for kind, event in events:
        if kind == "o":
            ts, amount, status = event
            history.record_order(float(ts), float(amount), str(status), caps)  # type: ignore[arg-type]
        else:
            ts, click, session = event
            history.record_click(float(ts), str(click), session, caps)  # type: ignore[arg-type]
    return history


@settings(max_examples=150, deadline=None)
@given(orders_st, clicks_st, times, st.integers(0, 2**16))
# Found by hypothesis: gaps so small that the usual gap divided out to zero.
@example(
    [(0.0, 0.0, "placed"), (0.0, 0.0, "placed"), (1.0, 0.0, "placed"), (5e-324, 0.0, "placed")],
    [],
    1.0,
    0,
)
def test_incremental_in_any_order_equals_the_past_of_the_full_history(
    orders: Orders, clicks: Clicks, as_of: float, seed: int
) -> None:
    """Features as of t from everything, delivered in any order, are those of only the events
    up to t: the future never leaks in, and arrival order never matters."""
    everything = incremental(orders, clicks, UNBOUNDED, seed)
    past = history_from_events(
        sorted(e for e in orders if e[0] <= as_of),
        [e for e in clicks if e[0] <= as_of],
    )
    assert close(features_as_of(everything, as_of), features_as_of(past, as_of))


@settings(max_examples=150, deadline=None)
@given(orders_st, clicks_st, times, st.integers(0, 2**16))
def test_capped_history_is_exact_wherever_it_says_so(
    orders: Orders, clicks: Clicks, as_of: float, seed: int
) -> None:
    caps = HistoryCaps(orders=GAP_WINDOW + 3, click_days=4, sessions_per_day=10)
    capped = incremental(orders, clicks, caps, seed)
    full = history_from_events(orders, clicks)
    assert len(capped.orders) <= caps.orders and len(capped.click_days) <= caps.click_days
    if exact_as_of(capped, as_of):
        assert close(features_as_of(capped, as_of), features_as_of(full, as_of))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 50 * DAY), amounts, st.sampled_from(["placed", "returned"])),
        min_size=3,
        max_size=15,
    ),
    st.lists(st.tuples(st.floats(420 * DAY, 480 * DAY), amounts), min_size=21, max_size=23),
    st.floats(480 * DAY, 800 * DAY),
    st.integers(0, 2**16),
)
def test_dropped_orders_a_year_back_leave_features_exact(
    early: Orders, late: list[tuple[float, float]], as_of: float, seed: int
) -> None:
    """Old orders fall off the capped list into totals; a year later nothing is lost."""
    orders = early + [(ts, amount, "placed") for ts, amount in late]
    capped = incremental(orders, [], HistoryCaps(orders=GAP_WINDOW + 3), seed)
    assert capped.dropped.until is not None  # something was dropped ...
    assert exact_as_of(capped, as_of)  # ... and it no longer matters
    assert close(features_as_of(capped, as_of), features_as_of(history_from_events(orders), as_of))


def test_exactness_with_dropped_orders_by_hand() -> None:
    # 30 orders on days 0..29, then 25 more on days 400..424; keep 25: the first 30 go.
    orders = [(d * DAY, 10.0, "placed") for d in range(30)]
    orders += [(d * DAY, 10.0, "placed") for d in range(400, 425)]
    capped = history_from_events(orders, caps=HistoryCaps(orders=25))
    full = history_from_events(orders)
    assert len(capped.orders) == 25 and capped.dropped.placed == 30
    # Day 430: every dropped order is more than 365 days before the last one, 25 >= 21 kept.
    assert exact_as_of(capped, 430 * DAY)
    assert features_as_of(capped, 430 * DAY) == pytest.approx(features_as_of(full, 430 * DAY))
    assert features_as_of(capped, 430 * DAY)["orders_total"] == 55.0
    assert features_as_of(capped, 430 * DAY)["tenure_days"] == pytest.approx(430.0)
    # Day 300: the dropped orders are inside the 365-day window: not exact, and indeed off.
    assert not exact_as_of(capped, 300 * DAY)
    assert features_as_of(full, 300 * DAY)["orders_365d"] == 30.0
    assert features_as_of(capped, 300 * DAY)["orders_365d"] == 0.0


def test_a_late_event_older_than_the_kept_ones_joins_the_dropped_totals() -> None:
    caps = HistoryCaps(orders=2)
    history = history_from_events([(d * DAY, 1.0, "placed") for d in (10, 20, 30)], caps=caps)
    history.record_order(5 * DAY, 7.0, "placed", caps)
    assert [e[0] for e in history.orders] == [20 * DAY, 30 * DAY]
    assert history.dropped.placed == 2
    assert history.dropped.spend == pytest.approx(8.0)
    assert history.first_order_ts == 5 * DAY


# -- silence ----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(orders_st, clicks_st, st.floats(0.0, 200 * DAY), st.floats(0.0, 200 * DAY))
def test_every_feature_moves_the_declared_way_while_the_user_is_silent(
    orders: Orders, clicks: Clicks, wait: float, more: float
) -> None:
    history = history_from_events(orders, clicks)
    last = max([e[0] for e in orders] + [e[0] for e in clicks] + [0.0])
    start = (math.floor(last / DAY) + 1) * DAY + wait  # every click day is visible
    before, after = features_as_of(history, start), features_as_of(history, start + more)
    for name in FEATURE_NAMES:
        change = after[name] - before[name]
        if SILENCE[name] == UP:
            assert change >= -1e-9, name
        elif SILENCE[name] == DOWN:
            assert change <= 1e-9, name
        else:
            assert change == pytest.approx(0.0, abs=1e-9), name


# -- storage and validation -------------------------------------------------------------------


def test_to_dict_round_trips_through_json() -> None:
    caps = HistoryCaps(orders=3, click_days=2)
    history = history_from_events(
        [(d * DAY, 5.0 + d, "placed") for d in range(6)] + [(2 * DAY, 1.0, "cancelled")],
        [(d * DAY + 5, "view", "s") for d in range(4)] + [(3 * DAY + 9, "add_to_cart", None)],
        caps,
    )
    again = ChurnHistory.from_dict(orjson.loads(orjson.dumps(history.to_dict())))
    assert again == history
    assert features_as_of(again, 10 * DAY) == features_as_of(history, 10 * DAY)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(v=2),
        lambda d: d.pop("orders"),
        lambda d: d.update(orders=[[1.0, 5.0, "shipped"]]),
        lambda d: d.update(orders=[[1.0, float("nan"), "placed"]]),
        lambda d: d.update(orders=[[1.0, -5.0, "placed"]]),
        lambda d: d.update(orders=[[2.0, 5.0, "placed"], [1.0, 5.0, "placed"]]),
        lambda d: d.update(click_days=[[3, 1, 0, 0, []], [2, 1, 0, 0, []]]),
        lambda d: d.update(click_days=[[3, -1, 0, 0, []]]),
        lambda d: d.update(dropped=[0, 0.0, 0]),
        lambda d: d.update(first_order_ts=float("inf")),
    ],
)
def test_from_dict_refuses_malformed_data(change: object) -> None:
    data = history_from_events([(0.0, 5.0, "placed")], [(0.0, "view", "s")]).to_dict()
    change(data)  # type: ignore[operator]
    with pytest.raises(ChurnDataError):
        ChurnHistory.from_dict(data)


def test_bad_events_are_refused() -> None:
    history = ChurnHistory()
    with pytest.raises(ChurnDataError):
        history.record_order(float("nan"), 1.0, "placed")
    with pytest.raises(ChurnDataError):
        history.record_order(0.0, -1.0, "placed")
    with pytest.raises(ChurnDataError):
        history.record_order(0.0, 1.0, "shipped")
    with pytest.raises(ChurnDataError):
        history.record_click(0.0, "purchase", None)
    with pytest.raises(ChurnDataError):
        features_as_of(history, float("inf"))
    assert history == ChurnHistory()
