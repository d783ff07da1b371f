"""Turning datasets into ShopPulse events and publishing them in event-time order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoppulse.datasets import Movie, Rating
from shoppulse.kafka import Message, encode

# Ratings are explicit feedback; as clickstream, a liked film (4-5 stars) is a click, the rest
# are views. Every rating is still an interaction, which is what the benchmark protocol uses.
LIKED_RATING = 4.0


@dataclass(frozen=True, slots=True)
class EventStream:
    """Events of one dataset, per topic kind, in the order they should be published."""

    catalog: list[Message]
    clicks: list[Message]


def movie_catalog_event(movie: Movie, ts: float) -> dict[str, Any]:
    return {
        "item_id": movie.item_id,
        "ts": ts,
        "category": movie.genres[0] if movie.genres else "unknown",
        "title": movie.title,
        "tags": list(movie.genres),
        "in_stock": True,
    }


def rating_click_event(rating: Rating) -> dict[str, Any]:
    return {
        "event_id": f"ml100k-{rating.user_id}-{rating.item_id}",
        "type": "click" if rating.rating >= LIKED_RATING else "view",
        "user_id": rating.user_id,
        "item_id": rating.item_id,
        "ts": rating.ts,
    }


def movielens_events(ratings: Sequence[Rating], movies: dict[str, Movie]) -> EventStream:
    """Catalog first (stamped with the first rating's time), then ratings as clicks by time."""
    first_ts = min((r.ts for r in ratings), default=0.0)
    catalog: list[Message] = [
        (movie.item_id.encode(), encode(movie_catalog_event(movie, first_ts)))
        for movie in movies.values()
    ]
    clicks: list[Message] = [(r.user_id.encode(), encode(rating_click_event(r))) for r in ratings]
    return EventStream(catalog, clicks)


# -- the simulated shop ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShopEvents:
    """A simulated shop's events: its catalog, then user events in time order, each with the
    topic kind (``"orders"`` or ``"clicks"``) it goes to."""

    catalog: list[Message]
    events: list[tuple[str, float, Message]]  # (kind, ts, message), ascending by ts


def shop_events(orders: Sequence[dict[str, Any]], clicks: Sequence[dict[str, Any]]) -> ShopEvents:
    """Catalog upserts for every item the shop's events name (stamped with the first event's
    time, priced at the median price paid), then orders and clicks merged by time."""
    prices: dict[str, list[float]] = {}
    for order in orders:
        for line in order["items"]:
            prices.setdefault(line["item_id"], []).append(float(line["price"]))
    for click in clicks:
        prices.setdefault(click["item_id"], [])
    first_ts = min([float(e["ts"]) for e in (*orders[:1], *clicks[:1])], default=0.0)
    catalog: list[Message] = []
    for item_id in sorted(prices):
        paid = sorted(prices[item_id])
        document: dict[str, Any] = {"item_id": item_id, "ts": first_ts, "in_stock": True}
        if paid:
            document["price"] = paid[len(paid) // 2]
        catalog.append((item_id.encode(), encode(document)))
    merged = [("orders", float(e["ts"]), e) for e in orders]
    merged += [("clicks", float(e["ts"]), e) for e in clicks]
    merged.sort(key=lambda entry: (entry[1], entry[0]))
    events: list[tuple[str, float, Message]] = [
        (kind, ts, (str(e["user_id"]).encode(), encode(e))) for kind, ts, e in merged
    ]
    return ShopEvents(catalog, events)
