"""The Python client for the three things a shop does with ShopPulse: publish events, read
recommendations and profiles, and follow churn alerts.

Events are validated with the very models the stream worker uses (``stream/events.py``), so an
event the client accepts is one the worker will not dead-letter for its shape::

    import asyncio
    from shoppulse.client import ShopPulseClient

    async def main() -> None:
        async with ShopPulseClient() as client:     # settings from SHOPPULSE_* variables
            await client.catalog("sku-9", category="shoes", price=19.9, title="Trail runner")
            await client.click("u1", "sku-9", kind="view")
            await client.order("u1", [("sku-9", 1, 19.9)])
            print(await client.recommendations("u1"))
            print(await client.profile("u1"))
            async for alert in client.alerts():     # runs until you break out
                print(alert["user_id"], alert["risk"])
                break

    asyncio.run(main())
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import orjson
from aiokafka.errors import KafkaConnectionError, KafkaError

from shoppulse.errors import InvalidEvent, ShopPulseError
from shoppulse.kafka import Publisher, follow, security_options
from shoppulse.settings import Settings, get_settings
from stream.events import decode_catalog, decode_click, decode_order
from stream.keys import Keys, Topics
from stream.privacy import user_key
from stream.store import RedisStore, connect

ClickKind = Literal["view", "click", "add_to_cart", "remove_from_cart"]
OrderStatus = Literal["placed", "cancelled", "returned"]
Timestamp = float | int | str | datetime
OrderLine = Mapping[str, Any] | tuple[str, float, float]


class ShopPulseClient:
    """Async client of one ShopPulse namespace (an ``async with`` block, or call ``close``).

    ``settings`` defaults to the environment (``SHOPPULSE_KAFKA_BOOTSTRAP``,
    ``SHOPPULSE_REDIS_URL``, ``SHOPPULSE_REDIS_CLUSTER``, ``SHOPPULSE_NAMESPACE``); the keyword
    arguments override it.
    With ``SHOPPULSE_PSEUDONYMISE_KEY`` set, reads take the shop's own user ids and look up
    their pseudonyms, as the worker stored them."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        kafka_bootstrap: str | None = None,
        redis_url: str | None = None,
        namespace: str | None = None,
    ) -> None:
        base = settings or get_settings()
        self.kafka_bootstrap = kafka_bootstrap or base.kafka_bootstrap
        self.namespace = namespace or base.namespace
        self._cluster = base.redis_cluster
        self.keys = Keys(self.namespace, hash_tag=self._cluster)
        self.topics = Topics(self.namespace)
        self._redis_url = redis_url or base.redis_dsn
        self._security = security_options(base)  # TLS/SASL from the settings
        self._pseudonymise_key = base.pseudonymise_key
        self._store: RedisStore | None = None
        self._publisher: Publisher | None = None

    async def __aenter__(self) -> ShopPulseClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            await publisher.__aexit__(None, None, None)
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()

    # -- publishing -------------------------------------------------------------------------------
    async def click(
        self,
        user_id: str | int,
        item_id: str | int,
        kind: ClickKind = "view",
        ts: Timestamp | None = None,
        *,
        event_id: str | None = None,
        session_id: str | None = None,
        recommendation_id: str | None = None,
    ) -> str:
        """Publish a clickstream event (``view``, ``click``, ``add_to_cart``,
        ``remove_from_cart``); returns its ``event_id``. Raises :class:`InvalidEvent` (a
        :class:`ShopPulseError`) with the worker's reason if the event is not valid."""
        document: dict[str, Any] = {
            "event_id": event_id or uuid.uuid4().hex,
            "type": kind,
            "user_id": user_id,
            "item_id": item_id,
            "ts": _timestamp(ts),
        }
        if session_id is not None:
            document["session_id"] = session_id
        if recommendation_id is not None:
            document["recommendation_id"] = recommendation_id
        raw = _encode(document)
        event = decode_click(raw)
        await self._send(self.topics.clicks, event.user_id, raw)
        return event.event_id

    async def order(
        self,
        user_id: str | int,
        items: Iterable[OrderLine],
        *,
        order_id: str | None = None,
        status: OrderStatus = "placed",
        ts: Timestamp | None = None,
        event_id: str | None = None,
    ) -> str:
        """Publish an order: ``items`` are ``(item_id, quantity, price)`` tuples or dicts with
        those keys. Returns the ``order_id`` (pass it again with ``status="cancelled"`` or
        ``"returned"`` to take the order back)."""
        order_id = order_id or uuid.uuid4().hex
        lines = [_line(item) for item in items]
        document: dict[str, Any] = {
            "event_id": event_id or f"{order_id}-{status}-{uuid.uuid4().hex[:8]}",
            "order_id": order_id,
            "user_id": user_id,
            "ts": _timestamp(ts),
            "items": lines,
            "status": status,
        }
        raw = _encode(document)
        order = decode_order(raw)
        await self._send(self.topics.orders, order.user_id, raw)
        return order.order_id

    async def catalog(
        self,
        item_id: str | int,
        *,
        category: str | None = None,
        price: float | None = None,
        in_stock: bool | None = None,
        title: str | None = None,
        tags: Sequence[str] | None = None,
        ts: Timestamp | None = None,
    ) -> None:
        """Upsert an item's catalog attributes (fields left as None are kept as stored)."""
        fields = {
            "category": category,
            "price": price,
            "in_stock": in_stock,
            "title": title,
            "tags": list(tags) if tags is not None else None,
        }
        document: dict[str, Any] = {"item_id": item_id, "ts": _timestamp(ts)}
        document.update({name: value for name, value in fields.items() if value is not None})
        raw = _encode(document)
        item = decode_catalog(raw)
        await self._send(self.topics.catalog, item.item_id, raw)

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        try:
            if self._publisher is None:
                publisher = Publisher(self.kafka_bootstrap, self._security)
                await publisher.__aenter__()
                self._publisher = publisher
            await self._publisher.send(topic, key.encode(), value)
        except KafkaConnectionError as exc:
            raise ShopPulseError(f"Kafka is not reachable at {self.kafka_bootstrap}") from exc
        except KafkaError as exc:
            raise ShopPulseError(f"could not publish to {topic}: {exc}") from exc

    # -- reading ----------------------------------------------------------------------------------
    @property
    def store(self) -> RedisStore:
        if self._store is None:
            self._store = RedisStore(connect(self._redis_url, cluster=self._cluster), self.keys)
        return self._store

    async def recommendations(self, user_id: str | int) -> dict[str, Any] | None:
        """The user's current recommendations (``{"items": [{"item_id", "score", "source"}],
        "recommendation_id", "model_version", ...}``), or None if there are none yet."""
        return await self._get(self.keys.recs(self._stored_id(user_id)))

    async def profile(self, user_id: str | int) -> dict[str, Any] | None:
        """The user's live profile, or None if the user is unknown."""
        return await self._get(self.keys.profile(self._stored_id(user_id)))

    def _stored_id(self, user_id: str | int) -> str:
        """The id the worker stored the user's state under (its pseudonym if a key is set)."""
        return user_key(str(user_id), self._pseudonymise_key)

    async def _get(self, key: str) -> dict[str, Any] | None:
        from redis.exceptions import RedisError

        try:
            document = await self.store.get_json(key)
        except RedisError as exc:
            raise ShopPulseError(f"cannot read Redis: {exc}") from exc
        return document if isinstance(document, dict) else None

    async def alerts(
        self, from_beginning: bool = False, idle_timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Churn alerts from ``{ns}.alerts.churn`` as they arrive (from the oldest kept one
        with ``from_beginning``); stops after ``idle_timeout`` seconds without one if given."""
        try:
            async for document in follow(
                self.kafka_bootstrap,
                self.topics.churn_alerts,
                from_beginning,
                idle_timeout,
                security=self._security,
            ):
                if isinstance(document, dict):
                    yield document
        except KafkaConnectionError as exc:
            raise ShopPulseError(f"Kafka is not reachable at {self.kafka_bootstrap}") from exc


def _encode(document: dict[str, Any]) -> bytes:
    """JSON bytes of an event, refusing what JSON cannot carry (NaN and infinities would
    silently become null)."""
    _require_finite(document, "")
    return orjson.dumps(document)


def _require_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent(f"{where or 'event'}: must be a finite number")
    if isinstance(value, dict):
        for key, inner in value.items():
            _require_finite(inner, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            _require_finite(inner, f"{where}.{n}")


def _timestamp(ts: Timestamp | None) -> float | int | str:
    if ts is None:
        return time.time()
    if isinstance(ts, datetime):
        return ts.isoformat()
    return ts


def _line(item: OrderLine) -> dict[str, Any]:
    if isinstance(item, tuple):
        item_id, quantity, price = item
        return {"item_id": item_id, "quantity": quantity, "price": price}
    return dict(item)
