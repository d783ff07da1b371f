"""Order events in any arrival order: Kafka gives no order between topics and shops send late
placements, so a cancellation or return may come before its placement. Known answers for every
arrival order of one order's events, and a property: any interleaving gives the in-order record.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.churn_features import HistoryCaps
from models.profile import ItemDeltas, Order, OrderLine, ProfileParams, UserRecord
from stream.churn import BatchHistories, changes_history, history_of

PARAMS = ProfileParams(
    half_life=86_400.0,
    recent_cap=50,
    purchased_cap=50,
    dedupe_cap=1000,
    affinity_cap=5,
    interaction_cap=6.0,
    cooc_window=10,
    event_weights={"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0},
)

# o1: 2 x A at 10.00 + 1 x B at 5.50 = 25.50
O1_LINES = [("A", 2.0, 10.0), ("B", 1.0, 5.5)]


def order(
    event_id: str, lines: list[tuple[str, float, float]], status: str, order_id: str = "o1"
) -> Order:
    return Order(event_id, order_id, "u", 100.0, status, tuple(OrderLine(*x) for x in lines))


PLACED = order("p", O1_LINES, "placed")
RETURNED = order("r", [("A", 1.0, 10.0)], "returned")  # one A back: 10.00
CANCELLED = order("c", [], "cancelled")


def run(events: list[Order], record: UserRecord | None = None) -> UserRecord:
    record = record or UserRecord.new("u")
    for event in events:
        record.apply_order(event, {}, PARAMS, ItemDeltas())
    return record


def summary(record: UserRecord) -> tuple[object, ...]:
    p = record.profile
    return (
        p["orders"],
        p["revenue"],
        p["items_purchased"],
        p["cancellations"],
        p["returns"],
        record.purchased(),
    )


def comparable(record: UserRecord) -> tuple[object, ...]:
    """Everything but what only tells arrival order apart (seen ids, early reversals)."""
    state = {k: v for k, v in record.state.items() if k not in ("seen", "early")}
    return (record.profile, state)


# -- every arrival order of placed / returned / cancelled ---------------------------------------

# A cancellation takes back everything: orders 0, revenue 0, A and B may be recommended again;
# items_purchased keeps the 3 items placed (as a cancellation after its placement always did).
# A return after the cancellation changes nothing, so it is not counted.
RETURN_THEN_CANCEL: tuple[object, ...] = (0, 0.0, 3.0, 1, 1, set())
CANCEL_THEN_RETURN: tuple[object, ...] = (0, 0.0, 3.0, 1, 0, set())


@pytest.mark.parametrize(
    "events",
    list(itertools.permutations([PLACED, RETURNED, CANCELLED])),
    ids=lambda events: "".join(e.event_id for e in events),
)
def test_every_arrival_order_of_placed_returned_cancelled(events: tuple[Order, ...]) -> None:
    record = run(list(events))
    reversals = [e for e in events if e.status != "placed"]
    expected = RETURN_THEN_CANCEL if reversals[0] is RETURNED else CANCEL_THEN_RETURN
    assert summary(record) == expected
    # ... and exactly the record of the placement first, then the reversals as they came.
    assert comparable(record) == comparable(run([PLACED, *reversals]))
    assert record.state["orders"]["o1"]["status"] == "cancelled"
    assert record.state["orders"]["o1"]["open"] == 0.0
    assert record.state.get("early", {}) == {}


@pytest.mark.parametrize("first_placed", [True, False])
def test_placed_and_returned_either_way(first_placed: bool) -> None:
    events = [PLACED, RETURNED] if first_placed else [RETURNED, PLACED]
    record = run(events)
    # 25.5 - 10 = 15.5; a return keeps the order and its items
    assert summary(record) == (1, 15.5, 3.0, 0, 1, {"A", "B"})
    assert record.state["orders"]["o1"]["open"] == 15.5
    assert record.state["orders"]["o1"]["status"] == "returned"


@pytest.mark.parametrize("first_placed", [True, False])
def test_placed_and_cancelled_either_way(first_placed: bool) -> None:
    events = [PLACED, CANCELLED] if first_placed else [CANCELLED, PLACED]
    record = run(events)
    assert summary(record) == (0, 0.0, 3.0, 1, 0, set())
    # the placement is still a purchase event with its interactions (the in-order record)
    assert record.profile["events"] == {"purchase": 1}
    assert record.recent_items() == [("A", 5.0, 100.0), ("B", 5.0, 100.0)]


def test_the_reviewers_reproduction() -> None:
    line = [("sku", 1.0, 10.0)]
    for first in ("cancelled", "returned"):
        record = run([order("e1", line, first), order("e2", line, "placed")])
        orders, revenue = record.profile["orders"], record.profile["revenue"]
        assert (orders, revenue) == ((0, 0.0) if first == "cancelled" else (1, 0.0))
    unknown = run([order("e1", [("sku", 100.0, 1000.0)], "cancelled", order_id="o9")])
    assert (unknown.profile["orders"], unknown.profile["revenue"]) == (0, 0.0)


# -- orders never placed, lines not in the order ------------------------------------------------


def test_cancellation_of_a_never_placed_order_takes_nothing_back() -> None:
    other = order("p2", [("C", 1.0, 10.0)], "placed", order_id="o2")
    claim = order("c9", [("C", 100.0, 1000.0)], "cancelled", order_id="o9")
    record = run([other, claim])
    # o2 keeps its count, money and item; the cancellation is counted and remembered
    assert summary(record) == (1, 10.0, 1.0, 1, 0, {"C"})
    assert record.state["early"] == {
        "o9": {"cancelled": True, "rest": False, "items": [], "values": []}
    }
    assert "o9" not in record.state["orders"]


def test_return_of_a_never_placed_order_takes_nothing_back() -> None:
    record = run([order("r9", [("C", 3.0, 7.0)], "returned", order_id="o9")])
    assert summary(record) == (0, 0.0, 0.0, 0, 1, set())
    assert record.state["early"]["o9"] == {
        "cancelled": False,
        "rest": False,
        "items": ["C"],
        "values": [21.0],
    }


@pytest.mark.parametrize("first_placed", [True, False])
def test_return_naming_lines_not_in_the_order_takes_back_only_the_orders_lines(
    first_placed: bool,
) -> None:
    # Z is not in o1: nothing back for it; B is: 5.50 back
    ret = order("r", [("Z", 1.0, 50.0), ("B", 1.0, 5.5)], "returned")
    record = run([PLACED, ret] if first_placed else [ret, PLACED])
    assert summary(record) == (1, 20.0, 3.0, 0, 1, {"A", "B"})
    only_foreign = order("r", [("Z", 1.0, 50.0)], "returned")
    record = run([PLACED, only_foreign] if first_placed else [only_foreign, PLACED])
    assert summary(record) == (1, 25.5, 3.0, 0, 1, {"A", "B"})


@pytest.mark.parametrize("first_placed", [True, False])
def test_return_never_takes_back_more_than_a_line_brought_in(first_placed: bool) -> None:
    # 5 x A at 10 named, but the order brought in 20 for A: 25.5 - 20 = 5.5
    ret = order("r", [("A", 5.0, 10.0)], "returned")
    record = run([PLACED, ret] if first_placed else [ret, PLACED])
    assert summary(record) == (1, 5.5, 3.0, 0, 1, {"A", "B"})


@pytest.mark.parametrize("placed_at", [0, 1, 2])
def test_early_returns_add_up_capped_per_item(placed_at: int) -> None:
    returns = [
        order("r1", [("A", 1.0, 10.0)], "returned"),
        order("r2", [("A", 1.0, 15.0)], "returned"),
    ]
    events = [*returns[:placed_at], PLACED, *returns[placed_at:]]
    record = run(events)
    # 10 + 15 named for A, which brought in 20: 25.5 - 20 = 5.5, whatever the arrival order
    assert summary(record) == (1, 5.5, 3.0, 0, 2, {"A", "B"})


@pytest.mark.parametrize("first_placed", [True, False])
def test_return_naming_no_lines_takes_back_what_is_left(first_placed: bool) -> None:
    partial = order("r1", [("B", 1.0, 5.5)], "returned")
    rest = order("r2", [], "returned")
    events = [PLACED, partial, rest] if first_placed else [rest, partial, PLACED]
    record = run(events)
    assert summary(record) == (1, 0.0, 3.0, 0, 2, {"A", "B"})


# -- duplicates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [
        [CANCELLED, order("c2", [], "cancelled"), PLACED],
        [CANCELLED, PLACED, order("c2", [], "cancelled")],
        [PLACED, CANCELLED, order("c2", [], "cancelled")],
    ],
    ids=["both-first", "around", "both-after"],
)
def test_a_second_cancellation_changes_nothing(events: list[Order]) -> None:
    assert summary(run(events)) == (0, 0.0, 3.0, 1, 0, set())


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([PLACED, order("p2", O1_LINES, "placed")], (1, 25.5, 3.0, 0, 0, {"A", "B"})),
        ([CANCELLED, PLACED, order("p2", O1_LINES, "placed")], (0, 0.0, 3.0, 1, 0, set())),
        ([RETURNED, PLACED, order("p2", O1_LINES, "placed")], (1, 15.5, 3.0, 0, 1, {"A", "B"})),
        ([PLACED, CANCELLED, order("p2", O1_LINES, "placed")], (0, 0.0, 3.0, 1, 0, set())),
    ],
)
def test_a_placement_under_two_event_ids_counts_once(
    events: list[Order], expected: tuple[object, ...]
) -> None:
    assert summary(run(events)) == expected


def test_a_cancellation_takes_back_the_whole_order_whatever_lines_it_names() -> None:
    # it names one A (10.00), but takes the order back: all 25.50 and both items
    record = run([PLACED, order("c", [("A", 1.0, 10.0)], "cancelled")])
    assert summary(record) == (0, 0.0, 3.0, 1, 0, set())


# -- state: bounded, JSON, older documents ------------------------------------------------------


def test_early_reversals_are_bounded_and_json() -> None:
    record = UserRecord.new("u")
    for n in range(250):
        run([order(f"c{n}", [("X", 1.0, 1.0)], "cancelled", order_id=f"o{n}")], record)
    early = record.state["early"]
    assert list(early) == [f"o{n}" for n in range(150, 250)]  # the latest 100
    many = [(f"i{n}", 1.0, 1.0) for n in range(1500)]
    run([order("r", many, "returned", order_id="big")], record)
    assert len(record.state["early"]["big"]["items"]) == 1000
    assert len(record.state["early"]) == 100
    loaded = json.loads(json.dumps(record.state))
    assert loaded == record.state


def test_state_written_by_the_previous_version_still_loads() -> None:
    # Known orders then had items (possibly repeated) and no per-item values, and no "early".
    state = {
        "recent": [["A", 5.0, 1.0], ["B", 5.0, 1.0]],
        "purchased": ["B", "A"],
        "seen": ["p1"],
        "orders": {
            "o1": {"open": 25.5, "status": "placed", "items": ["A", "B", "A"]},
            "o8": {
                "open": 0.0,
                "status": "cancelled",
                "items": ["C"],
            },  # its cancellation came first
        },
    }
    profile = UserRecord.new("u").profile | {"orders": 1, "revenue": 25.5, "items_purchased": 3.0}
    record = UserRecord("u", json.loads(json.dumps(profile)), json.loads(json.dumps(state)), 7)
    # a return on it is bounded by the order's total, and only its items count
    run([order("r1", [("A", 5.0, 10.0), ("Z", 1.0, 99.0)], "returned")], record)
    assert summary(record) == (1, 0.0, 3.0, 0, 1, {"A", "B"})
    run([order("c1", [], "cancelled")], record)
    assert summary(record) == (0, 0.0, 3.0, 1, 1, set())
    # the late placement of an order the old version saw cancelled first is still ignored
    run([order("p8", [("C", 1.0, 4.0)], "placed", order_id="o8")], record)
    assert summary(record) == (0, 0.0, 3.0, 1, 1, set())
    json.dumps(record.state)


# -- what changed, for the churn history --------------------------------------------------------


def history_statuses(events: list[Order]) -> list[str]:
    """The churn history the stream keeps (stream.churn, as the processor calls it)."""
    record = UserRecord.new("u")
    histories = BatchHistories(HistoryCaps())
    for event in events:
        counts = changes_history(record, event)
        assert counts == record.order_changes(event) or _early_cancelled(record, event)
        if record.apply_order(event, {}, PARAMS, ItemDeltas()) and counts:
            histories.record(record, event)
    histories.write_back({"u": record})
    return sorted(status for _, _, status in history_of(record).orders)


def _early_cancelled(record: UserRecord, event: Order) -> bool:
    early = record.state.get("early", {}).get(event.order_id)
    return event.status != "placed" and early is not None and early["cancelled"]


@pytest.mark.parametrize(
    "events",
    [
        p
        for p in itertools.permutations([PLACED, RETURNED, CANCELLED])
        if [e.event_id for e in p] != ["c", "r", "p"]
    ],
    ids=lambda events: "".join(e.event_id for e in events),
)
def test_churn_history_gets_the_in_order_events_whatever_the_arrival(
    events: tuple[Order, ...],
) -> None:
    reversals = [e for e in events if e.status != "placed"]
    assert history_statuses(list(events)) == history_statuses([PLACED, *reversals])


def test_order_changes() -> None:
    record = UserRecord.new("u")
    assert record.order_changes(PLACED) and record.order_changes(CANCELLED)
    run([CANCELLED], record)
    assert record.order_changes(PLACED)  # the placement still comes (as a cancelled one)
    assert not record.order_changes(order("c2", [], "cancelled"))
    assert not record.order_changes(RETURNED)
    run([PLACED], record)
    assert not record.order_changes(order("p2", O1_LINES, "placed"))
    assert not record.order_changes(RETURNED)


def test_churn_history_skips_a_reversal_of_an_order_cancelled_before_its_placement() -> None:
    events = [CANCELLED, RETURNED, PLACED]
    assert history_statuses(events) == history_statuses([PLACED, CANCELLED, RETURNED])


# -- any interleaving is the in-order record ----------------------------------------------------

ITEMS = ("A", "B", "Z")  # Z is never in the order
lines_st = st.lists(
    st.tuples(
        st.sampled_from(ITEMS),
        st.integers(min_value=0, max_value=4).map(float),
        st.sampled_from([0.0, 0.1, 2.5, 10.0, 33.3]),
    ),
    max_size=3,
)
reversal_st = st.tuples(st.sampled_from(["cancelled", "returned"]), lines_st)


@settings(max_examples=300, deadline=None)
@given(
    placed=st.lists(
        st.tuples(
            st.sampled_from(ITEMS[:2]),
            st.integers(1, 3).map(float),
            st.sampled_from([0.1, 5.5, 10.0]),
        ),
        min_size=1,
        max_size=3,
    ),
    reversals=st.lists(reversal_st, max_size=5),
    at=st.integers(min_value=0),
    again=st.booleans(),
    data=st.data(),
)
def test_any_interleaving_gives_the_in_order_record(
    placed: list[tuple[str, float, float]],
    reversals: list[tuple[str, list[tuple[str, float, float]]]],
    at: int,
    again: bool,
    data: st.DataObject,
) -> None:
    placement = order("p", placed, "placed")
    later = [order(f"x{n}", lines, status) for n, (status, lines) in enumerate(reversals)]
    events = later[:]
    events.insert(at % (len(events) + 1), placement)
    if again:  # the same placement again under another event id, anywhere
        spot = data.draw(st.integers(min_value=0, max_value=len(events)))
        events.insert(spot, order("p-again", placed, "placed"))
    record = run(events)
    in_order = run([placement, *later])
    profile, expected = record.profile, in_order.profile
    assert 0.0 <= profile["revenue"] <= round(placement.amount, 6)
    assert profile["revenue"] == pytest.approx(expected["revenue"], abs=1e-6)
    assert {**profile, "revenue": 0} == {**expected, "revenue": 0}
    assert record.purchased() == in_order.purchased()
    assert record.recent_items() == in_order.recent_items()
    cancelled = any(status == "cancelled" for status, _ in reversals)
    assert profile["orders"] == (0 if cancelled else 1)
    if cancelled:
        assert profile["revenue"] == 0.0 and record.purchased() == set()


def test_applying_keeps_the_record_a_plain_copyable_document() -> None:
    record = run([RETURNED, CANCELLED, PLACED])
    assert copy.deepcopy(record.state) == json.loads(json.dumps(record.state))
