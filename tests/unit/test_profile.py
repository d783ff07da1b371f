"""UserRecord: one event at a time, in event time, with exact hand-computed answers."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.profile import Interaction, ItemDeltas, Order, OrderLine, ProfileParams, UserRecord

DAY = 86_400.0
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "remove_from_cart": 0.0, "purchase": 5.0}
PARAMS = ProfileParams(
    half_life=DAY,
    recent_cap=5,
    purchased_cap=5,
    dedupe_cap=100,
    affinity_cap=3,
    interaction_cap=6.0,
    cooc_window=5,
    event_weights=WEIGHTS,
)


def click(event_id: str, item: str, kind: str = "view", ts: float = 0.0) -> Interaction:
    return Interaction(event_id, "u", item, kind, ts)


def order(
    event_id: str,
    order_id: str,
    lines: list[tuple[str, float, float]],
    status: str = "placed",
    ts: float = 0.0,
) -> Order:
    return Order(event_id, order_id, "u", ts, status, tuple(OrderLine(*line) for line in lines))


def apply(
    record: UserRecord,
    event: Interaction,
    category: str | None = None,
    params: ProfileParams = PARAMS,
    deltas: ItemDeltas | None = None,
) -> bool:
    return record.apply_interaction(event, category, params, deltas or ItemDeltas())


def apply_order(
    record: UserRecord,
    event: Order,
    categories: dict[str, str | None] | None = None,
    params: ProfileParams = PARAMS,
    deltas: ItemDeltas | None = None,
) -> bool:
    return record.apply_order(event, categories or {}, params, deltas or ItemDeltas())


# -- dedupe -----------------------------------------------------------------------------------


def test_duplicate_event_id_is_a_no_op() -> None:
    record = UserRecord.new("u")
    assert apply(record, click("e1", "A", "click", 100.0), "shoes")
    before_profile = copy.deepcopy(record.profile)
    before_state = copy.deepcopy(record.state)

    deltas = ItemDeltas()
    # Same event id, even with a different payload, is not applied again.
    assert not apply(record, click("e1", "B", "add_to_cart", 200.0), "hats", deltas=deltas)
    assert record.profile == before_profile
    assert record.state == before_state
    assert dict(deltas.cooccurrence) == {}
    assert dict(deltas.norms) == {}
    assert deltas.popularity == []
    assert deltas.category_popularity == []


def test_duplicate_order_event_id_is_a_no_op() -> None:
    record = UserRecord.new("u")
    assert apply_order(record, order("o-e1", "o1", [("A", 1.0, 10.0)]))
    before_profile = copy.deepcopy(record.profile)
    before_state = copy.deepcopy(record.state)
    assert not apply_order(record, order("o-e1", "o1", [("A", 1.0, 10.0)]))
    assert record.profile == before_profile
    assert record.state == before_state
    assert record.profile["orders"] == 1
    assert record.profile["revenue"] == 10.0


def test_dedupe_memory_is_capped_to_the_latest_ids() -> None:
    params = replace(PARAMS, dedupe_cap=3)
    record = UserRecord.new("u")
    for n in range(1, 5):
        assert apply(record, click(f"e{n}", "A", ts=float(n)), params=params)
    assert record.state["seen"] == ["e2", "e3", "e4"]
    assert not apply(record, click("e4", "A", ts=9.0), params=params)
    # e1 fell out of the window, so it is no longer recognised as a duplicate.
    assert apply(record, click("e1", "A", ts=1.0), params=params)
    assert record.state["seen"] == ["e3", "e4", "e1"]


# -- first / last seen and counts -------------------------------------------------------------


def test_first_and_last_seen_with_out_of_order_events() -> None:
    record = UserRecord.new("u")
    for n, ts in enumerate([200.0, 100.0, 300.0, 250.0]):
        apply(record, click(f"e{n}", "A", ts=ts))
    assert record.profile["first_seen"] == 100.0
    assert record.profile["last_seen"] == 300.0
    apply_order(record, order("o", "o1", [("B", 1.0, 1.0)], ts=50.0))
    assert record.profile["first_seen"] == 50.0
    assert record.profile["last_seen"] == 300.0


def test_per_type_counts_and_decayed_counts() -> None:
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "view", 0.0))
    apply(record, click("e2", "B", "view", DAY))
    # views: 1 at t=0 and 1 at t=1 day -> at 1 day: 1 * 0.5 + 1 = 1.5
    value, as_of = record.profile["decayed_events"]["view"]
    assert value == pytest.approx(1.5, rel=1e-12)
    assert as_of == DAY
    # a late view stamped t=0 adds 1 * 0.5 at 1 day -> 2.0, still as of 1 day
    apply(record, click("e3", "C", "view", 0.0))
    value, as_of = record.profile["decayed_events"]["view"]
    assert value == pytest.approx(2.0, rel=1e-12)
    assert as_of == DAY
    # a click at 2 days starts its own counter
    apply(record, click("e4", "C", "click", 2 * DAY))
    assert record.profile["decayed_events"]["click"] == [1.0, 2 * DAY]
    assert record.profile["events"] == {"view": 3, "click": 1}
    # the view counter is not decayed by the click: still 2.0 as of 1 day
    assert record.profile["decayed_events"]["view"][1] == DAY


def test_remove_from_cart_counts_but_does_not_interact() -> None:
    record = UserRecord.new("u")
    deltas = ItemDeltas()
    apply(record, click("e1", "A", "view", 10.0), "shoes", deltas=deltas)
    assert apply(record, click("e2", "B", "remove_from_cart", 20.0), "hats", deltas=deltas)
    assert record.profile["events"] == {"view": 1, "remove_from_cart": 1}
    assert record.profile["decayed_events"]["remove_from_cart"] == [1.0, 20.0]
    assert record.profile["last_seen"] == 20.0
    assert record.recent_items() == [("A", 1.0, 10.0)]
    assert "hats" not in record.profile["category_affinity"]
    assert [p[0] for p in deltas.popularity] == ["A"]
    assert dict(deltas.cooccurrence) == {}
    assert dict(deltas.norms) == {"A": 1.0}


# -- interactions and co-occurrence -----------------------------------------------------------


def test_interaction_weight_is_capped() -> None:
    record = UserRecord.new("u")
    steps = [("view", 1.0), ("add_to_cart", 4.0), ("click", 6.0), ("view", 6.0)]
    # 0 + 1 = 1;  1 + 3 = 4;  4 + 2 = 6 (= cap);  6 + 1 = 7 -> capped at 6
    norm_changes = [1.0, 15.0, 20.0]  # 1 - 0;  16 - 1;  36 - 16
    for n, (kind, expected_weight) in enumerate(steps):
        deltas = ItemDeltas()
        apply(record, click(f"e{n}", "A", kind, float(n)), deltas=deltas)
        assert record.recent_items() == [("A", expected_weight, float(n))]
        if n < len(norm_changes):
            assert dict(deltas.norms) == {"A": norm_changes[n]}
        else:
            assert dict(deltas.norms) == {}  # at the cap nothing changes
    assert sum(norm_changes) == 36.0  # = 6 ** 2


def test_view_a_then_view_b_then_click_a_gives_exact_cooccurrence_and_norms() -> None:
    record = UserRecord.new("u")
    deltas = ItemDeltas()
    apply(record, click("e1", "A", "view", 1.0), deltas=deltas)
    # A: 0 -> 1, no other items yet: no co-occurrence, N[A] += 1
    assert dict(deltas.cooccurrence) == {}
    assert dict(deltas.norms) == {"A": 1.0}

    apply(record, click("e2", "B", "view", 2.0), deltas=deltas)
    # B: 0 -> 1 with A at 1: C[A,B] = C[B,A] = w_view * w_view = 1 * 1 = 1
    assert dict(deltas.cooccurrence) == {("B", "A"): 1.0, ("A", "B"): 1.0}
    assert dict(deltas.norms) == {"A": 1.0, "B": 1.0}

    apply(record, click("e3", "A", "click", 3.0), deltas=deltas)
    # A: 1 -> 3 (delta 2) with B at 1: C += 2 * 1 = 2 -> 3 each way;  N[A] += 9 - 1 = 8 -> 9
    # batch check: r = {A: 3, B: 1}: C[A,B] = 3 * 1 = 3, N[A] = 9, N[B] = 1
    assert dict(deltas.cooccurrence) == {("B", "A"): 3.0, ("A", "B"): 3.0}
    assert dict(deltas.norms) == {"A": 9.0, "B": 1.0}
    assert record.recent_items() == [("A", 3.0, 3.0), ("B", 1.0, 2.0)]
    assert deltas.popularity == [("A", 1.0, 1.0), ("B", 1.0, 2.0), ("A", 2.0, 3.0)]
    assert deltas.touched_items() == {"A", "B"}


def test_cooccurrence_only_with_items_in_the_window() -> None:
    params = replace(PARAMS, cooc_window=1)
    record = UserRecord.new("u")
    deltas = ItemDeltas()
    apply(record, click("e1", "A", "view", 1.0), params=params, deltas=deltas)
    apply(record, click("e2", "B", "view", 2.0), params=params, deltas=deltas)
    apply(record, click("e3", "C", "click", 3.0), params=params, deltas=deltas)
    # C (delta 2) only pairs with the most recent item B (weight 1): 2 * 1 = 2
    assert dict(deltas.cooccurrence) == {
        ("A", "B"): 1.0,
        ("B", "A"): 1.0,
        ("C", "B"): 2.0,
        ("B", "C"): 2.0,
    }


def test_recent_items_capped_and_most_recent_first() -> None:
    params = replace(PARAMS, recent_cap=3)
    record = UserRecord.new("u")
    for n, item in enumerate(["A", "B", "C", "D"], start=1):
        apply(record, click(f"e{n}", item, "view", float(n)), params=params)
    assert [i for i, _, _ in record.recent_items()] == ["D", "C", "B"]
    # A late event, older than everything kept, does not push newer items out.
    apply(record, click("late", "E", "view", 0.5), params=params)
    assert [i for i, _, _ in record.recent_items()] == ["D", "C", "B"]
    # Seeing B again moves it to the front with its grown weight.
    apply(record, click("e5", "B", "view", 5.0), params=params)
    assert record.recent_items() == [("B", 2.0, 5.0), ("D", 1.0, 4.0), ("C", 1.0, 3.0)]
    assert record.profile["recent_items"] == [
        {"item_id": "B", "weight": 2.0, "ts": 5.0},
        {"item_id": "D", "weight": 1.0, "ts": 4.0},
        {"item_id": "C", "weight": 1.0, "ts": 3.0},
    ]


def test_a_late_event_on_a_known_item_keeps_its_latest_time() -> None:
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "view", 100.0))
    apply(record, click("e2", "B", "view", 200.0))
    apply(record, click("e3", "A", "click", 50.0))  # older than A's last interaction
    # A's weight grows (1 + 2 = 3) but its time stays 100
    assert record.recent_items() == [("B", 1.0, 200.0), ("A", 3.0, 100.0)]


# -- orders -----------------------------------------------------------------------------------

# o1: 2 x A at 10.00 + 1 x B at 5.50 = 25.50
O1_LINES = [("A", 2.0, 10.0), ("B", 1.0, 5.5)]


def test_placed_order_counts_money_and_purchases() -> None:
    record = UserRecord.new("u")
    deltas = ItemDeltas()
    assert apply_order(record, order("p1", "o1", O1_LINES, ts=100.0), deltas=deltas)
    profile = record.profile
    assert profile["orders"] == 1
    assert profile["revenue"] == 25.5
    assert profile["items_purchased"] == 3.0
    assert profile["events"] == {"purchase": 1}
    assert record.purchased() == {"A", "B"}
    assert record.state["purchased"] == ["B", "A"]  # most recent first
    # each line interacts with the purchase weight 5; B pairs with A: 5 * 5 = 25
    # same time: by item id, so the order never depends on which topic delivered first
    assert record.recent_items() == [("A", 5.0, 100.0), ("B", 5.0, 100.0)]
    assert dict(deltas.cooccurrence) == {("B", "A"): 25.0, ("A", "B"): 25.0}
    assert dict(deltas.norms) == {"A": 25.0, "B": 25.0}


def test_purchase_adds_to_an_existing_interaction() -> None:
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "view", 1.0))
    apply_order(record, order("p1", "o1", [("A", 1.0, 3.0)], ts=2.0))
    # 1 (view) + 5 (purchase) = 6
    assert record.recent_items() == [("A", 6.0, 2.0)]
    assert record.purchased() == {"A"}


def test_purchased_list_is_capped_most_recent_first() -> None:
    params = replace(PARAMS, purchased_cap=2)
    record = UserRecord.new("u")
    for n, item in enumerate(["A", "B", "C"]):
        apply_order(record, order(f"p{n}", f"o{n}", [(item, 1.0, 1.0)], ts=float(n)), params=params)
    assert record.state["purchased"] == ["C", "B"]
    # buying A again brings it back to the front
    apply_order(record, order("p9", "o9", [("A", 1.0, 1.0)], ts=9.0), params=params)
    assert record.state["purchased"] == ["A", "C"]


def test_order_placed_then_cancelled() -> None:
    record = UserRecord.new("u")
    apply_order(record, order("p1", "o1", O1_LINES, ts=100.0))
    assert apply_order(record, order("c1", "o1", O1_LINES, status="cancelled", ts=200.0))
    profile = record.profile
    assert profile["orders"] == 0
    assert profile["revenue"] == 0.0  # 25.5 - 25.5
    assert profile["cancellations"] == 1
    assert profile["returns"] == 0
    assert record.purchased() == set()
    assert record.state["orders"]["o1"]["status"] == "cancelled"
    assert record.state["orders"]["o1"]["open"] == 0.0


def test_cancellation_without_lines_takes_back_the_placed_amount() -> None:
    record = UserRecord.new("u")
    apply_order(record, order("p1", "o1", O1_LINES, ts=100.0))
    apply_order(record, order("c1", "o1", [], status="cancelled", ts=200.0))
    assert record.profile["orders"] == 0
    assert record.profile["revenue"] == 0.0


def test_cancelling_one_order_keeps_the_others() -> None:
    record = UserRecord.new("u")
    apply_order(record, order("p1", "o1", [("A", 1.0, 10.0)], ts=1.0))
    apply_order(record, order("p2", "o2", [("B", 2.0, 1.25)], ts=2.0))  # 2 * 1.25 = 2.5
    apply_order(record, order("c2", "o2", [("B", 2.0, 1.25)], status="cancelled", ts=3.0))
    assert record.profile["orders"] == 1
    assert record.profile["revenue"] == 10.0  # 10 + 2.5 - 2.5
    assert record.purchased() == {"A"}


def test_order_returned_reduces_revenue_but_not_orders() -> None:
    record = UserRecord.new("u")
    apply_order(record, order("p1", "o1", O1_LINES, ts=100.0))
    # return one A at 10.00: 25.5 - 10 = 15.5
    apply_order(record, order("r1", "o1", [("A", 1.0, 10.0)], status="returned", ts=200.0))
    profile = record.profile
    assert profile["orders"] == 1
    assert profile["revenue"] == 15.5
    assert profile["returns"] == 1
    assert profile["cancellations"] == 0
    assert record.purchased() == {"A", "B"}
    assert record.state["orders"]["o1"]["status"] == "returned"


def test_revenue_is_kept_to_cents_without_float_drift() -> None:
    record = UserRecord.new("u")
    # 0.1 + 0.2 would be 0.30000000000000004 in plain floats
    apply_order(record, order("p1", "o1", [("A", 1.0, 0.1)]))
    apply_order(record, order("p2", "o2", [("B", 1.0, 0.2)]))
    assert record.profile["revenue"] == 0.3


def test_cancelling_an_order_twice_takes_the_money_back_once() -> None:
    record = UserRecord.new("u")
    apply_order(record, order("p1", "o1", O1_LINES, ts=100.0))
    apply_order(record, order("c1", "o1", O1_LINES, status="cancelled", ts=200.0))
    apply_order(record, order("c2", "o1", O1_LINES, status="cancelled", ts=201.0))
    assert record.profile["orders"] == 0
    assert record.profile["revenue"] == 0.0  # actually -25.5


def test_cancellation_without_lines_frees_the_cancelled_items() -> None:
    record = UserRecord.new("u")
    apply_order(record, order("p1", "o1", O1_LINES, ts=100.0))
    apply_order(record, order("c1", "o1", [], status="cancelled", ts=200.0))
    assert record.purchased() == set()


# -- categories -------------------------------------------------------------------------------


def test_category_affinity_decays_in_event_time() -> None:
    record = UserRecord.new("u")
    deltas = ItemDeltas()
    apply(record, click("e1", "A", "view", 0.0), "shoes", deltas=deltas)
    apply(record, click("e2", "B", "click", DAY), "shoes", deltas=deltas)
    # 1 at t=0 and 2 at t=1 day -> at 1 day: 1 * 0.5 + 2 = 2.5
    value, as_of = record.profile["category_affinity"]["shoes"]
    assert value == pytest.approx(2.5, rel=1e-12)
    assert as_of == DAY
    assert deltas.category_popularity == [("shoes", "A", 1.0, 0.0), ("shoes", "B", 2.0, DAY)]


def test_category_affinity_is_capped_dropping_the_weakest() -> None:
    params = replace(PARAMS, affinity_cap=2)
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "click", 10.0), "shoes", params=params)  # 2
    apply(record, click("e2", "B", "add_to_cart", 10.0), "hats", params=params)  # 3
    apply(record, click("e3", "C", "view", 10.0), "socks", params=params)  # 1 -> weakest
    assert set(record.profile["category_affinity"]) == {"shoes", "hats"}


def test_category_affinity_cap_drops_the_weakest_at_the_current_time() -> None:
    params = replace(PARAMS, affinity_cap=2)
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "click", 0.0), "old", params=params)  # 2 at t=0
    apply(record, click("e2", "B", "view", 10 * DAY), "mid", params=params)  # 1 at 10 days
    apply(record, click("e3", "C", "view", 10 * DAY + 1), "new", params=params)  # 1
    # at 10 days: old = 2 * 2 ** -10 = 0.00195..., mid ~ 1, new = 1 -> "old" is the weakest
    assert set(record.profile["category_affinity"]) == {"mid", "new"}


def test_top_categories_are_decayed_to_the_users_last_event() -> None:
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "click", 0.0), "shoes")  # 2 at t=0
    apply(record, click("e2", "B", "view", 2 * DAY), "hats")  # 1 at 2 days
    # at 2 days: shoes 2 * 0.25 = 0.5, hats 1
    top = record.top_categories(5, DAY)
    assert [name for name, _ in top] == ["hats", "shoes"]
    assert [value for _, value in top] == pytest.approx([1.0, 0.5], rel=1e-12)
    assert record.top_categories(1, DAY) == [("hats", 1.0)]
    # an order without categories still moves the user's clock to 4 days: hats 0.25, shoes 0.125
    apply_order(record, order("p1", "o1", [("Z", 1.0, 1.0)], ts=4 * DAY))
    top = record.top_categories(5, DAY)
    assert [name for name, _ in top] == ["hats", "shoes"]
    assert [value for _, value in top] == pytest.approx([0.25, 0.125], rel=1e-12)


def test_top_categories_ties_by_name_and_empty_user() -> None:
    assert UserRecord.new("u").top_categories(3, DAY) == []
    record = UserRecord.new("u")
    apply(record, click("e1", "A", "view", 5.0), "zebra")
    apply(record, click("e2", "B", "view", 5.0), "apple")
    assert record.top_categories(3, DAY) == [("apple", 1.0), ("zebra", 1.0)]


def test_purchase_feeds_category_affinity_with_purchase_weight() -> None:
    record = UserRecord.new("u")
    deltas = ItemDeltas()
    apply_order(record, order("p1", "o1", [("A", 1.0, 1.0)], ts=7.0), {"A": "shoes"}, deltas=deltas)
    assert record.profile["category_affinity"]["shoes"] == [5.0, 7.0]
    assert deltas.popularity == [("A", 5.0, 7.0)]
    assert deltas.category_popularity == [("shoes", "A", 5.0, 7.0)]


# -- the record's deltas reproduce the batch co-occurrence ------------------------------------

KINDS = ("view", "click", "add_to_cart", "remove_from_cart")
ITEMS = ("i0", "i1", "i2", "i3")

user_events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # user
        st.integers(min_value=0, max_value=len(ITEMS) - 1),  # item
        st.sampled_from(KINDS),
        st.integers(min_value=0, max_value=1000),  # ts
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(user_events)
def test_deltas_of_many_users_equal_batch_gram_matrix(
    events: list[tuple[int, int, str, int]],
) -> None:
    # Windows and caps wide enough that no item ever leaves a user's recent list.
    params = replace(PARAMS, recent_cap=len(ITEMS), cooc_window=len(ITEMS))
    records: dict[int, UserRecord] = defaultdict(lambda: UserRecord.new("u"))
    deltas = ItemDeltas()
    for n, (user, item, kind, ts) in enumerate(events):
        records[user].apply_interaction(
            Interaction(f"e{n}", f"u{user}", ITEMS[item], kind, float(ts)), None, params, deltas
        )
    weights = [{i: w for i, w, _ in record.recent_items()} for record in records.values()]
    matrix = np.array([[w.get(i, 0.0) for i in ITEMS] for w in weights])
    gram = matrix.T @ matrix
    for a, item_a in enumerate(ITEMS):
        assert deltas.norms.get(item_a, 0.0) == pytest.approx(gram[a, a], abs=1e-9)
        for b, item_b in enumerate(ITEMS):
            if a != b:
                got = deltas.cooccurrence.get((item_a, item_b), 0.0)
                assert got == pytest.approx(gram[a, b], abs=1e-9)
