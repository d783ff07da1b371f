"""Decoding and validation of input events: bytes in, domain objects or a readable reason out."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from models.profile import Interaction, Order, OrderLine
from shoppulse.errors import InvalidEvent
from stream.events import decode_catalog, decode_click, decode_order

# 2024-01-02T03:04:05Z by hand: 1970..2023 is 54 years with 13 leap days (1972..2020),
# (54 * 365 + 13) * 86400 = 19723 * 86400 = 1_704_067_200 for 2024-01-01;
# + 1 day (86_400) + 3 h 4 min 5 s (11_045) = 1_704_164_645
TS_2024_01_02_030405 = 1_704_164_645.0
# 2200-01-01T00:00:00Z: 230 years with 56 leap days (1972..2196 is 57, minus 2100):
# (230 * 365 + 56) * 86400 = 84006 * 86400 = 7_258_118_400
TS_2200 = 7_258_118_400


def click_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "e1",
        "type": "view",
        "user_id": "u1",
        "item_id": "i1",
        "ts": 1_700_000_000,
    }
    doc.update(overrides)
    return doc


def order_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "e1",
        "order_id": "o1",
        "user_id": "u1",
        "ts": 1_700_000_000,
        "items": [{"item_id": "i1", "quantity": 2, "price": 9.5}],
        "status": "placed",
    }
    doc.update(overrides)
    return doc


def raw(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def click_reason(doc: dict[str, Any]) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_click(raw(doc))
    return str(info.value)


def order_reason(doc: dict[str, Any]) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_order(raw(doc))
    return str(info.value)


# -- valid events -----------------------------------------------------------------------------


def test_valid_click() -> None:
    doc = click_doc(type="add_to_cart", session_id="s1", recommendation_id="r1", extra="ignored")
    expected = Interaction("e1", "u1", "i1", "add_to_cart", 1_700_000_000.0, "s1")
    assert decode_click(raw(doc)) == expected


@pytest.mark.parametrize("kind", ["view", "click", "add_to_cart", "remove_from_cart"])
def test_every_click_type_is_accepted(kind: str) -> None:
    assert decode_click(raw(click_doc(type=kind))).kind == kind


def test_valid_order() -> None:
    doc = order_doc(
        items=[
            {"item_id": "i1", "quantity": 2, "price": 9.5},
            {"item_id": "i2", "quantity": 1, "price": 0},
        ]
    )
    got = decode_order(raw(doc))
    assert got == Order(
        "e1",
        "o1",
        "u1",
        1_700_000_000.0,
        "placed",
        (OrderLine("i1", 2.0, 9.5), OrderLine("i2", 1.0, 0.0)),
    )
    assert got.amount == 19.0  # 2 * 9.5 + 1 * 0


def test_order_status_defaults_to_placed() -> None:
    doc = order_doc()
    del doc["status"]
    assert decode_order(raw(doc)).status == "placed"


@pytest.mark.parametrize("status", ["cancelled", "returned"])
def test_reversals_may_come_without_items(status: str) -> None:
    got = decode_order(raw(order_doc(status=status, items=[])))
    assert got.status == status
    assert got.lines == ()


def test_valid_catalog_upsert() -> None:
    doc = {
        "item_id": "i1",
        "ts": "2024-01-02T03:04:05Z",
        "category": "shoes",
        "price": 49.9,
        "in_stock": False,
        "title": "Runner",
        "tags": ["red", "sale"],
        "unknown": {"nested": 1},
    }
    item = decode_catalog(raw(doc))
    assert item.item_id == "i1"
    assert item.ts == TS_2024_01_02_030405
    assert item.category == "shoes"
    assert item.price == 49.9
    assert item.in_stock is False
    assert item.title == "Runner"
    assert item.tags == ["red", "sale"]


def test_catalog_needs_only_an_item_id() -> None:
    item = decode_catalog(b'{"item_id": 12}')
    assert item.item_id == "12"
    assert (item.ts, item.category, item.price, item.in_stock, item.title, item.tags) == (
        None,
        None,
        None,
        None,
        None,
        None,
    )


def test_catalog_rejections() -> None:
    with pytest.raises(InvalidEvent, match="item_id"):
        decode_catalog(b'{"category": "shoes"}')
    with pytest.raises(InvalidEvent, match=r"price: must be a finite number >= 0 and <= 1e15"):
        decode_catalog(b'{"item_id": "i1", "price": -1}')
    with pytest.raises(InvalidEvent, match=r"ts: is outside 1970\.\.2200"):
        decode_catalog(b'{"item_id": "i1", "ts": -5}')


# -- ids --------------------------------------------------------------------------------------


def test_integer_ids_become_strings() -> None:
    got = decode_click(raw(click_doc(event_id=42, user_id=7, item_id=1001)))
    assert (got.event_id, got.user_id, got.item_id) == ("42", "7", "1001")
    order = decode_order(
        raw(order_doc(order_id=5, items=[{"item_id": 0, "quantity": 1, "price": 1}]))
    )
    assert order.order_id == "5"
    assert order.lines[0].item_id == "0"


@pytest.mark.parametrize("bad", ["", "   ", "\t\n"])
def test_empty_or_whitespace_id_is_rejected(bad: str) -> None:
    assert click_reason(click_doc(user_id=bad)) == "user_id: must not be empty"


@pytest.mark.parametrize("bad", [True, False, 1.5, None, ["u"], {"id": 1}])
def test_id_of_the_wrong_type_is_rejected(bad: Any) -> None:
    assert click_reason(click_doc(item_id=bad)) == "item_id: must be a string or an integer"


def test_id_length_limit() -> None:
    assert decode_click(raw(click_doc(user_id="u" * 256))).user_id == "u" * 256
    assert click_reason(click_doc(user_id="u" * 257)) == "user_id: must be at most 256 characters"


# -- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_704_164_645, TS_2024_01_02_030405),  # int
        (1_704_164_645.25, 1_704_164_645.25),  # float
        ("2024-01-02T03:04:05Z", TS_2024_01_02_030405),  # ISO with Z
        ("2024-01-02T05:04:05+02:00", TS_2024_01_02_030405),  # 05:04 at +2 = 03:04 UTC
        ("2024-01-01T22:04:05-05:00", TS_2024_01_02_030405),  # 22:04 at -5 = 03:04 next day
        ("2024-01-02T03:04:05", TS_2024_01_02_030405),  # naive is UTC
        ("2024-01-02T03:04:05.5Z", TS_2024_01_02_030405 + 0.5),
        (" 2024-01-02T03:04:05Z ", TS_2024_01_02_030405),  # surrounding blanks
        (0, 0.0),  # the epoch itself is allowed
        (TS_2200 - 1, float(TS_2200 - 1)),
    ],
)
def test_timestamp_forms(ts: Any, expected: float) -> None:
    assert decode_click(raw(click_doc(ts=ts))).ts == expected


@pytest.mark.parametrize("ts", ["yesterday", "2024-13-01T00:00:00", "", "1700000000"])
def test_unparseable_timestamp(ts: str) -> None:
    assert click_reason(click_doc(ts=ts)) == "ts: is not an ISO-8601 timestamp"


@pytest.mark.parametrize(
    "ts", [-1, -0.5, "1969-12-31T23:59:59Z", TS_2200, "2200-01-01T00:00:00Z", "9999-01-01T00:00:00"]
)
def test_timestamp_outside_1970_to_2200(ts: Any) -> None:
    assert click_reason(click_doc(ts=ts)) == "ts: is outside 1970..2200"


@pytest.mark.parametrize("ts", [True, None, [1], {"s": 1}])
def test_timestamp_of_the_wrong_type(ts: Any) -> None:
    assert click_reason(click_doc(ts=ts)) == "ts: must be epoch seconds or an ISO-8601 string"


# -- rejections -------------------------------------------------------------------------------


def test_invalid_json() -> None:
    with pytest.raises(InvalidEvent, match=r"^not valid JSON: "):
        decode_click(b'{"event_id": "e1", ')
    with pytest.raises(InvalidEvent, match=r"^not valid JSON: "):
        decode_click(b"")


def test_invalid_utf8() -> None:
    body = b'{"event_id": "e\xff", "type": "view", "user_id": "u", "item_id": "i", "ts": 1}'
    with pytest.raises(InvalidEvent, match=r"^not valid JSON: .*UTF-8"):
        decode_click(body)


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "list"), (b'"text"', "str"), (b"3", "int"), (b"null", "NoneType")],
)
def test_json_that_is_not_an_object(body: bytes, kind: str) -> None:
    with pytest.raises(InvalidEvent, match=f"^expected a JSON object, got {kind}$"):
        decode_click(body)


@pytest.mark.parametrize("field", ["event_id", "type", "user_id", "item_id", "ts"])
def test_missing_click_field(field: str) -> None:
    doc = click_doc()
    del doc[field]
    assert click_reason(doc) == f"{field}: Field required"


@pytest.mark.parametrize("field", ["event_id", "order_id", "user_id", "ts", "items"])
def test_missing_order_field(field: str) -> None:
    doc = order_doc()
    del doc[field]
    assert order_reason(doc) == f"{field}: Field required"


def test_several_problems_are_all_named() -> None:
    reason = click_reason({"type": "view", "user_id": "", "item_id": "i", "ts": 1})
    assert "event_id: Field required" in reason
    assert "user_id: must not be empty" in reason


def test_unknown_click_type() -> None:
    reason = click_reason(click_doc(type="purchase"))
    assert reason.startswith("type: Input should be 'view', 'click', 'add_to_cart' or")


def test_unknown_order_status() -> None:
    assert order_reason(order_doc(status="shipped")).startswith("status: Input should be")


@pytest.mark.parametrize("field", ["quantity", "price"])
def test_negative_quantity_or_price(field: str) -> None:
    line = {"item_id": "i1", "quantity": 1, "price": 1.0, field: -0.01}
    assert order_reason(order_doc(items=[line])) == (
        f"items.0.{field}: must be a finite number >= 0 and <= 1e15"
    )


@pytest.mark.parametrize("field", ["quantity", "price"])
def test_nan_or_infinite_quantity_or_price(field: str) -> None:
    # orjson rejects the NaN literal and numbers that overflow a double, so both are
    # dead-lettered as invalid JSON rather than reaching the model as nan / inf.
    for literal in (b"NaN", b"1e999", b"-1e999", b"Infinity"):
        body = (
            b'{"event_id": "e1", "order_id": "o1", "user_id": "u1", "ts": 1700000000, '
            b'"items": [{"item_id": "i1", "quantity": 1, "price": 1, "'
            + field.encode()
            + b'": '
            + literal
            + b"}]}"
        )
        with pytest.raises(InvalidEvent, match=r"^not valid JSON: "):
            decode_order(body)


@pytest.mark.parametrize("value", ["3", True, None])
def test_quantity_must_be_a_number(value: Any) -> None:
    line = {"item_id": "i1", "quantity": value, "price": 1.0}
    assert order_reason(order_doc(items=[line])) == "items.0.quantity: must be a number"


def test_large_amounts_up_to_the_cap_are_accepted() -> None:
    line = {"item_id": "i1", "quantity": 1e15, "price": 1e15}
    assert decode_order(raw(order_doc(items=[line]))).lines[0].price == 1e15


@pytest.mark.parametrize("field", ["quantity", "price"])
def test_absurd_amounts_are_rejected(field: str) -> None:
    # 1e10 x 1e300 is finite line by line but overflows the order amount (and a user's
    # revenue) to infinity, which JSON cannot store: it used to poison the user's profile.
    line = {"item_id": "i1", "quantity": 1, "price": 1, field: 1e300}
    reason = order_reason(order_doc(items=[line]))
    assert reason == f"items.0.{field}: must be a finite number >= 0 and <= 1e15"


def test_placed_order_without_items() -> None:
    assert order_reason(order_doc(items=[])) == "items: a placed order needs at least one item"
    doc = order_doc(items=[])
    del doc["status"]  # defaults to placed
    assert order_reason(doc) == "items: a placed order needs at least one item"


def test_order_line_count_limit() -> None:
    line = {"item_id": "i1", "quantity": 1, "price": 1.0}
    assert len(decode_order(raw(order_doc(items=[line] * 1000))).lines) == 1000
    reason = order_reason(order_doc(items=[line] * 1001))
    assert re.match(r"^items: .*at most 1000 items", reason)


def test_order_line_missing_field() -> None:
    assert order_reason(order_doc(items=[{"item_id": "i1", "quantity": 1}])) == (
        "items.0.price: Field required"
    )


def test_overlong_session_id() -> None:
    assert decode_click(raw(click_doc(session_id="s" * 1024))).event_id == "e1"
    assert click_reason(click_doc(session_id="s" * 1025)).startswith("session_id: ")
