"""Property tests of the decoders: whatever bytes arrive, a decoder returns a valid event or
raises InvalidEvent (whose message is the dead-letter reason) -- never anything else."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.profile import Interaction, Order
from shoppulse.errors import InvalidEvent
from stream.events import MAX_ID_LENGTH, decode_catalog, decode_click, decode_order
from tests import hostile

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "clicks": decode_click,
    "orders": decode_order,
    "catalog": decode_catalog,
}
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | hostile.ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "event_id",
        "type",
        "user_id",
        "item_id",
        "ts",
        "session_id",
        "order_id",
        "items",
        "status",
        "quantity",
        "price",
        "category",
        "in_stock",
        "title",
        "tags",
    ]
)
# Objects with the right field names and anything as values: the nastiest close misses.
near_miss_objects = st.dictionaries(field_names, json_values, max_size=10).map(orjson.dumps)


def assert_valid(event: Any) -> None:
    """What a decoder returns is usable as is: non-empty bounded ids, real times, sane amounts."""
    if isinstance(event, Interaction):
        ids = [event.event_id, event.user_id, event.item_id]
        times = [event.ts]
    elif isinstance(event, Order):
        ids = [event.event_id, event.order_id, event.user_id, *(x.item_id for x in event.lines)]
        times = [event.ts]
        for line in event.lines:
            assert math.isfinite(line.quantity) and line.quantity >= 0
            assert math.isfinite(line.price) and line.price >= 0
        # Sums of many such orders (a user's revenue) must stay finite, or JSON loses them.
        assert math.isfinite(event.amount * 1e100)
    else:
        ids = [event.item_id]
        times = [event.ts] if event.ts is not None else []
    for value in ids:
        assert isinstance(value, str) and value.strip() and len(value) <= MAX_ID_LENGTH
        value.encode("utf-8")  # storable: no lone surrogates
    for ts in times:
        assert 0 <= ts < hostile.MAX_TS


def decode_or_reason(decoder: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        event = decoder(raw)
    except InvalidEvent as exc:
        assert str(exc), "a dead letter needs a reason"
        return None
    assert_valid(event)
    return event


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=300))
def test_any_bytes_decode_or_are_rejected(topic: str, raw: bytes) -> None:
    decode_or_reason(DECODERS[topic], raw)


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(DECODERS)), near_miss_objects)
def test_any_object_with_the_right_field_names_decodes_or_is_rejected(
    topic: str, raw: bytes
) -> None:
    decode_or_reason(DECODERS[topic], raw)


@PROPERTY_SETTINGS
@given(st.data())
def test_hostile_events_are_always_rejected(data: st.DataObject) -> None:
    message = data.draw(hostile.message(0).filter(lambda m: m.kind != "valid"))
    decoder = DECODERS[message.topic]
    with pytest.raises(InvalidEvent) as raised:
        decoder(message.value)
    assert str(raised.value)


@PROPERTY_SETTINGS
@given(st.data())
def test_valid_events_always_decode(data: st.DataObject) -> None:
    message = data.draw(hostile.message(0).filter(lambda m: m.kind == "valid"))
    event = decode_or_reason(DECODERS[message.topic], message.value)
    assert event is not None, message.value[:300]
    assert event.user_id == message.user_id


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
        "0001-01-01",
        "+10000-01-01",
        "١٢٣٤-٠١-٠١",  # noqa: RUF001 (non-ASCII digits)
        10**400,
    ],
)
def test_absurd_timestamps_are_rejected_not_crashed_on(ts: Any) -> None:
    raw = (
        b'{"event_id":"e","type":"view","user_id":"u","item_id":"i","ts":'
        + (str(ts).encode() if isinstance(ts, int) else orjson.dumps(ts))
        + b"}"
    )
    with pytest.raises(InvalidEvent):
        decode_click(raw)
