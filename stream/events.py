"""Decoding and validation of input events: bytes in, domain objects (or a reason) out."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from models.profile import Interaction, Order, OrderLine
from shoppulse.errors import InvalidEvent

MAX_ID_LENGTH = 256
MAX_ORDER_LINES = 1000
# Event time must be a real moment: after 1970 and before 2200.
MIN_TS = 0.0
MAX_TS = 7_258_118_400.0
# Quantities and prices are bounded so that no sum of them (an order's amount, a user's
# revenue) can overflow to infinity, which JSON cannot hold: one absurd order would otherwise
# poison the user's profile for good.
MAX_AMOUNT = 1e15


def _as_id(value: Any) -> str:
    """Ids may arrive as strings or integers; they are always stored as strings."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    text = str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise ValueError(f"must be at most {MAX_ID_LENGTH} characters")
    return text


def _as_timestamp(value: Any) -> float:
    """Epoch seconds (number) or an ISO-8601 string; naive ISO times are taken as UTC."""
    if isinstance(value, bool):
        raise ValueError("must be epoch seconds or an ISO-8601 string")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("is not an ISO-8601 timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    else:
        raise ValueError("must be epoch seconds or an ISO-8601 string")
    if not math.isfinite(seconds) or not MIN_TS <= seconds < MAX_TS:
        raise ValueError("is outside 1970..2200")
    return seconds


def _non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= MAX_AMOUNT:
        raise ValueError("must be a finite number >= 0 and <= 1e15")
    return number


EventId = Annotated[str, BeforeValidator(_as_id)]
Timestamp = Annotated[float, BeforeValidator(_as_timestamp)]
NonNegative = Annotated[float, BeforeValidator(_non_negative)]
ShortText = Annotated[str, Field(max_length=1024)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ClickIn(_Strict):
    event_id: EventId
    type: Literal["view", "click", "add_to_cart", "remove_from_cart"]
    user_id: EventId
    item_id: EventId
    ts: Timestamp
    session_id: ShortText | None = None
    recommendation_id: ShortText | None = None


class OrderLineIn(_Strict):
    item_id: EventId
    quantity: NonNegative
    price: NonNegative


class OrderIn(_Strict):
    event_id: EventId
    order_id: EventId
    user_id: EventId
    ts: Timestamp
    items: list[OrderLineIn] = Field(max_length=MAX_ORDER_LINES)
    status: Literal["placed", "cancelled", "returned"] = "placed"


class CatalogIn(_Strict):
    item_id: EventId
    ts: Timestamp | None = None
    category: ShortText | None = None
    price: NonNegative | None = None
    in_stock: bool | None = None
    title: ShortText | None = None
    tags: list[ShortText] | None = Field(None, max_length=100)


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(document).__name__}")
    return document


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def _validate(model: type[_Strict], raw: bytes) -> Any:
    try:
        return model.model_validate(_load_object(raw))
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None


def decode_click(raw: bytes) -> Interaction:
    click: ClickIn = _validate(ClickIn, raw)
    return Interaction(
        click.event_id, click.user_id, click.item_id, click.type, click.ts, click.session_id
    )


def decode_order(raw: bytes) -> Order:
    order: OrderIn = _validate(OrderIn, raw)
    if order.status == "placed" and not order.items:
        raise InvalidEvent("items: a placed order needs at least one item")
    lines = tuple(OrderLine(i.item_id, i.quantity, i.price) for i in order.items)
    return Order(order.event_id, order.order_id, order.user_id, order.ts, order.status, lines)


def decode_catalog(raw: bytes) -> CatalogIn:
    catalog: CatalogIn = _validate(CatalogIn, raw)
    return catalog
