"""Hypothesis strategies for valid and hostile input events, shared by the unit property tests
of the decoders and the integration test that throws them at a real worker.

Every hostile event is invalid *by construction* (a required field removed or replaced by
something the contract forbids, bytes that are not JSON or not UTF-8, ...), so a test can
check that each one is dead-lettered without asking the decoder what it thinks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

T0 = 1_700_000_000.0
MAX_TS = 7_258_118_400.0  # 2200-01-01, exclusive
CLICK_TYPES = ("view", "click", "add_to_cart", "remove_from_cart")
ints = st.integers(-(2**63), 2**63 - 1)  # what JSON encoders write as integers


@dataclass(frozen=True)
class Message:
    """One Kafka message to publish: where to, key, exact bytes, and what it is."""

    topic: str  # "clicks" or "orders"
    key: bytes | None
    value: bytes
    kind: str  # "valid" or the name of the hostile construction
    user_id: str | None = None  # valid events only
    event_type: str | None = None  # valid events only: the click type or "purchase"


# -- valid events ---------------------------------------------------------------------------
# Real-world ids and some that look like key syntax: all must be treated as plain data.
user_ids = st.one_of(
    st.sampled_from(["u1", "u2", "u3", "x:recs:u1", "{u2}", "u3\r\nFLUSHALL", "ü-ß-用户"]),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
    ).filter(lambda s: bool(s.strip())),
)
item_ids = st.sampled_from([f"i{n}" for n in range(12)])
timestamps = st.one_of(
    st.floats(T0, T0 + 86_400 * 30),
    st.integers(int(T0), int(T0) + 86_400 * 30),
    st.sampled_from(["2023-11-14T22:13:20Z", "2023-11-15T00:00:00+01:00", "2023-11-16 08:00"]),
)


@st.composite
def valid_click(draw: st.DrawFn, event_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": event_id,
        "type": draw(st.sampled_from(CLICK_TYPES)),
        "user_id": draw(user_ids),
        "item_id": draw(item_ids),
        "ts": draw(timestamps),
    }
    if draw(st.booleans()):
        doc["session_id"] = draw(st.text(max_size=30))
    if draw(st.booleans()):
        doc["unknown_extra_field"] = draw(ints)  # extra fields are ignored
    return doc


@st.composite
def valid_order(draw: st.DrawFn, event_id: str) -> dict[str, Any]:
    lines = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "item_id": item_ids,
                    "quantity": st.integers(1, 5),
                    "price": st.integers(0, 100_000).map(lambda cents: cents / 100),
                }
            ),
            min_size=1,
            max_size=4,
        )
    )
    return {
        "event_id": event_id,
        "order_id": f"order-{event_id}",
        "user_id": draw(user_ids),
        "ts": draw(timestamps),
        "items": lines,
    }


# -- hostile values -------------------------------------------------------------------------
def _nested(depth: int) -> Any:
    junk: Any = "bottom"
    for n in range(depth):
        junk = {"a": [junk, n]} if n % 2 else [junk]
    return junk


# Values no id may take (ids: non-empty strings or integers of at most 256 characters).
bad_ids = st.one_of(
    st.just(""),
    st.text(" \t\n", min_size=1, max_size=5),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(ints, max_size=3),
    st.dictionaries(st.text(max_size=3), ints, max_size=2),
    st.integers(257, 400).map(lambda n: "x" * n),
    st.just("y" * 200_000),  # a huge string
    st.integers(10, 120).map(_nested),  # deeply nested junk (orjson writes up to 255 levels)
    st.just([["id"] * 10] * 2000),  # a huge list
)
bad_timestamps = st.one_of(
    st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False),
    st.floats(min_value=MAX_TS, allow_nan=False, allow_infinity=False),
    st.integers(int(MAX_TS), 2**63 - 1),
    st.integers(-(2**63), -1),
    st.sampled_from(["yesterday", "", "2023-13-45T00:00:00Z", "0001-01-01", "9999-12-31T23:59:59"]),
    st.text(max_size=20).filter(lambda s: not any(c.isdigit() for c in s)),
    st.booleans(),
    st.none(),
    st.lists(ints, max_size=2),
)
bad_amounts = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1.01e15, allow_nan=False, allow_infinity=False),  # overflows sums
    st.integers(-(2**63), -1),
    st.sampled_from(["12", "NaN", "", "1e3"]),
    st.booleans(),
    st.none(),
    st.lists(ints, max_size=2),
)


@dataclass(frozen=True)
class _Bad:
    kind: str
    value: bytes


def _json_bytes(document: Any) -> bytes:
    return orjson.dumps(document)


@st.composite
def hostile_click(draw: st.DrawFn, event_id: str) -> _Bad:
    doc = draw(valid_click(event_id))
    how = draw(
        st.sampled_from(["missing", "bad_id", "bad_type", "bad_ts", "long_session", "session_type"])
    )
    if how == "missing":
        del doc[draw(st.sampled_from(["event_id", "type", "user_id", "item_id", "ts"]))]
    elif how == "bad_id":
        doc[draw(st.sampled_from(["event_id", "user_id", "item_id"]))] = draw(bad_ids)
    elif how == "bad_type":
        doc["type"] = draw(
            st.one_of(
                st.text(max_size=20).filter(lambda s: s not in CLICK_TYPES),
                ints,
                st.none(),
                st.just(_nested(50)),
            )
        )
    elif how == "bad_ts":
        doc["ts"] = draw(bad_timestamps)
    elif how == "long_session":
        doc["session_id"] = "s" * draw(st.integers(1025, 300_000))
    else:
        doc["session_id"] = draw(st.one_of(ints, st.lists(st.text(), min_size=1)))
    return _Bad(f"click:{how}", _json_bytes(doc))


@st.composite
def hostile_order(draw: st.DrawFn, event_id: str) -> _Bad:
    doc = draw(valid_order(event_id))
    how = draw(
        st.sampled_from(
            [
                "missing",
                "bad_id",
                "bad_ts",
                "bad_quantity",
                "bad_price",
                "nan_literal",
                "no_items",
                "too_many_items",
                "items_not_list",
                "line_not_object",
                "bad_status",
            ]
        )
    )
    if how == "missing":
        del doc[draw(st.sampled_from(["event_id", "order_id", "user_id", "ts", "items"]))]
    elif how == "bad_id":
        doc[draw(st.sampled_from(["event_id", "order_id", "user_id"]))] = draw(bad_ids)
    elif how == "bad_ts":
        doc["ts"] = draw(bad_timestamps)
    elif how in ("bad_quantity", "bad_price"):
        doc["items"][0]["quantity" if how == "bad_quantity" else "price"] = draw(bad_amounts)
    elif how == "nan_literal":
        # NaN / Infinity are not JSON; Python's json writes them anyway, as some clients do.
        doc["items"][0][draw(st.sampled_from(["quantity", "price"]))] = draw(
            st.sampled_from([float("nan"), float("inf"), float("-inf")])
        )
        return _Bad(f"order:{how}", json.dumps(doc, allow_nan=True).encode())
    elif how == "no_items":
        doc["items"] = []
    elif how == "too_many_items":
        doc["items"] = doc["items"][:1] * draw(st.integers(1001, 3000))
    elif how == "items_not_list":
        doc["items"] = draw(st.one_of(st.none(), st.text(max_size=5), ints))
    elif how == "line_not_object":
        doc["items"] = [draw(st.one_of(ints, st.text(max_size=5), st.none()))]
    else:
        doc["status"] = draw(
            st.text(max_size=12).filter(lambda s: s not in ("placed", "cancelled", "returned"))
        )
    return _Bad(f"order:{how}", _json_bytes(doc))


@st.composite
def hostile_bytes(draw: st.DrawFn, event_id: str) -> _Bad:
    """Not a JSON object at all: junk bytes, broken JSON, other JSON values, bad UTF-8."""
    how = draw(
        st.sampled_from(
            ["junk", "truncated", "not_object", "invalid_utf8", "too_deep", "empty", "huge_junk"]
        )
    )
    valid = _json_bytes(draw(valid_click(event_id)))
    if how == "junk":
        value = draw(st.binary(min_size=1, max_size=200).filter(lambda b: not _is_object(b)))
    elif how == "truncated":
        value = valid[: draw(st.integers(1, len(valid) - 1))]
    elif how == "not_object":
        value = _json_bytes(
            draw(
                st.one_of(
                    ints,
                    st.text(max_size=10),
                    st.lists(ints, max_size=5),
                    st.none(),
                    st.booleans(),
                )
            )
        )
    elif how == "invalid_utf8":
        cut = draw(st.integers(1, len(valid) - 2))
        value = (
            valid[:cut]
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
            + (valid[cut:])
        )
    elif how == "too_deep":
        value = b"[" * draw(st.integers(1030, 5000))
    elif how == "empty":
        value = b""
    else:
        value = b"{" + b"x" * draw(st.integers(1000, 300_000))
    return _Bad(f"bytes:{how}", value)


def _is_object(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


def _key(draw: st.DrawFn, fallback: str | None) -> bytes | None:
    """Message keys are not trusted either: sometimes missing or not UTF-8."""
    choice = draw(st.sampled_from(["user", "user", "none", "junk"]))
    if choice == "user" and fallback is not None:
        return fallback.encode()
    if choice == "junk":
        return draw(st.binary(max_size=20))
    return None


@st.composite
def message(draw: st.DrawFn, n: int, prefix: str = "e") -> Message:
    """The ``n``-th message of a batch (``prefix`` and ``n`` make its event id unique)."""
    event_id = f"{prefix}{n}"
    which = draw(st.sampled_from(["click", "order", "bad_click", "bad_order", "bad_bytes"]))
    if which in ("click", "order"):
        doc = draw(valid_click(event_id) if which == "click" else valid_order(event_id))
        user = str(doc["user_id"])
        kind = doc.get("type", "purchase")
        topic = "clicks" if which == "click" else "orders"
        return Message(topic, _key(draw, user), _json_bytes(doc), "valid", user, kind)
    if which == "bad_click":
        bad = draw(hostile_click(event_id))
        topic = "clicks"
    elif which == "bad_order":
        bad = draw(hostile_order(event_id))
        topic = "orders"
    else:
        bad = draw(hostile_bytes(event_id))
        topic = draw(st.sampled_from(["clicks", "orders"]))
    return Message(topic, _key(draw, None), bad.value, bad.kind)


@st.composite
def batches(draw: st.DrawFn, size: int, prefix: str = "e") -> list[Message]:
    """``size`` messages, valid and hostile interleaved, some valid ones sent twice."""
    messages = [draw(message(n, prefix)) for n in range(size)]
    valid = [m for m in messages if m.kind == "valid"]
    if valid:
        for m in draw(st.lists(st.sampled_from(valid), max_size=max(1, size // 20))):
            messages.insert(draw(st.integers(0, len(messages))), m)  # a redelivery
    return messages
