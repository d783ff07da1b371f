"""A user's live profile, updated one event at a time (river style: ``learn_one`` on dicts).

:class:`UserRecord` holds two documents: the public ``profile`` (what shops read from Redis)
and the internal ``state`` (recent items with their interaction weights, bought items, recently
seen event ids, known orders, and the cancellations and returns of orders not placed yet).
Applying an event mutates the record and appends what the event does to shared, per-item state
to an :class:`ItemDeltas`; the stream layer then writes record and deltas to Redis in one
atomic step.

Everything is in event time: decayed values are stored "as of" a timestamp and only ever
decayed forward, so replaying history gives the same record as living through it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from models.decay import decayed_add, decayed_value_at
from models.similarity import add_cooccurrence, norm_increment

CLICK_TYPES = ("view", "click", "add_to_cart", "remove_from_cart")
ORDER_STATUSES = ("placed", "cancelled", "returned")
PURCHASE = "purchase"
_MONEY_DIGITS = 6
_KNOWN_ORDERS_CAP = 100  # known orders kept per user; as many early reversals
_EARLY_ITEMS_CAP = 1000  # items remembered per early return (an order has at most 1000 lines)


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """How profiles evolve; built from settings by the stream layer."""

    half_life: float  # seconds
    recent_cap: int  # interactions kept per user (training, scoring, filtering)
    purchased_cap: int
    dedupe_cap: int
    affinity_cap: int
    interaction_cap: float
    cooc_window: int
    event_weights: dict[str, float]
    display_cap: int = 20  # of those, shown in the public profile


@dataclass(frozen=True, slots=True)
class Interaction:
    """A clickstream event, validated."""

    event_id: str
    user_id: str
    item_id: str
    kind: str
    ts: float
    session_id: str | None = None  # sessions count as engagement in churn features


@dataclass(frozen=True, slots=True)
class OrderLine:
    item_id: str
    quantity: float
    price: float


@dataclass(frozen=True, slots=True)
class Order:
    """An order event, validated."""

    event_id: str
    order_id: str
    user_id: str
    ts: float
    status: str
    lines: tuple[OrderLine, ...]

    @property
    def amount(self) -> float:
        return sum(line.quantity * line.price for line in self.lines)


@dataclass(slots=True)
class ItemDeltas:
    """What a batch of user events does to shared per-item state, summed per key."""

    cooccurrence: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    norms: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # (item, weight, ts) observations for decayed popularity, overall and per category.
    popularity: list[tuple[str, float, float]] = field(default_factory=list)
    category_popularity: list[tuple[str, str, float, float]] = field(default_factory=list)

    def touched_items(self) -> set[str]:
        return {i for i, _ in self.cooccurrence} | set(self.norms)


def new_profile(user_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "first_seen": None,
        "last_seen": None,
        "events": {},
        "decayed_events": {},
        "orders": 0,
        "revenue": 0.0,
        "items_purchased": 0.0,
        "cancellations": 0,
        "returns": 0,
        "recent_items": [],
        "category_affinity": {},
        "churn_risk": None,
        "segment": None,
        "clv": None,
    }


def new_state() -> dict[str, Any]:
    # recent: [[item_id, weight, ts], ...] most recent first; purchased: most recent first.
    return {"recent": [], "purchased": [], "seen": [], "orders": {}}


@dataclass(slots=True)
class UserRecord:
    """Profile plus internal state of one user, and the version it was read at."""

    user_id: str
    profile: dict[str, Any]
    state: dict[str, Any]
    version: int = 0

    @classmethod
    def new(cls, user_id: str) -> UserRecord:
        return cls(user_id, new_profile(user_id), new_state(), 0)

    # -- dedupe -------------------------------------------------------------------------------
    def _first_time(self, event_id: str, params: ProfileParams) -> bool:
        """Remember ``event_id``; False if it was already applied."""
        seen: list[str] = self.state["seen"]
        if event_id in seen:
            return False
        seen.append(event_id)
        if len(seen) > params.dedupe_cap:
            del seen[: len(seen) - params.dedupe_cap]
        return True

    # -- events -------------------------------------------------------------------------------
    def apply_interaction(
        self,
        event: Interaction,
        category: str | None,
        params: ProfileParams,
        deltas: ItemDeltas,
    ) -> bool:
        """Apply one click event; False (and no change) if it is a duplicate."""
        if not self._first_time(event.event_id, params):
            return False
        self._touch(event.ts)
        self._count(event.kind, event.ts, params)
        self._interact(event.item_id, event.kind, event.ts, category, params, deltas)
        return True

    def apply_order(
        self,
        order: Order,
        categories: dict[str, str | None],
        params: ProfileParams,
        deltas: ItemDeltas,
    ) -> bool:
        """Apply one order event; False (and no change) if it is a duplicate."""
        if not self._first_time(order.event_id, params):
            return False
        self._touch(order.ts)
        if order.status == "placed":
            self._place(order, categories, params, deltas)
        else:
            self._reverse(order)
        return True

    # -- pieces -------------------------------------------------------------------------------
    def _touch(self, ts: float) -> None:
        profile = self.profile
        if profile["first_seen"] is None or ts < profile["first_seen"]:
            profile["first_seen"] = ts
        if profile["last_seen"] is None or ts > profile["last_seen"]:
            profile["last_seen"] = ts

    def _count(self, kind: str, ts: float, params: ProfileParams) -> None:
        events: dict[str, int] = self.profile["events"]
        events[kind] = events.get(kind, 0) + 1
        decayed: dict[str, list[float]] = self.profile["decayed_events"]
        value, as_of = decayed.get(kind, (0.0, ts))
        decayed[kind] = list(decayed_add(value, as_of, 1.0, ts, params.half_life))

    def _interact(
        self,
        item_id: str,
        kind: str,
        ts: float,
        category: str | None,
        params: ProfileParams,
        deltas: ItemDeltas,
    ) -> None:
        """Grow the user's weight on an item and record what that does to similarities."""
        weight = params.event_weights.get(kind, 0.0)
        if weight <= 0.0:
            return
        recent: list[list[Any]] = self.state["recent"]
        ids = list(map(itemgetter(0), recent))  # C-speed scans of up to recent_cap entries
        old, last_ts = 0.0, ts
        if item_id in ids:
            _, old_weight, old_ts = recent.pop(ids.index(item_id))
            old, last_ts = float(old_weight), max(ts, float(old_ts))
        new = min(old + weight, params.interaction_cap)
        add_cooccurrence(deltas.cooccurrence, item_id, new - old, recent[: params.cooc_window])
        if new > old:
            deltas.norms[item_id] += norm_increment(old, new)
        # Most recent by event time first, whatever order the topics delivered events in; equal
        # times by item id, so the order never depends on arrival.
        at = next(
            (n for n, e in enumerate(recent) if (-float(e[2]), str(e[0])) > (-last_ts, item_id)),
            len(recent),
        )
        recent.insert(at, [item_id, new, last_ts])
        del recent[params.recent_cap :]
        deltas.popularity.append((item_id, weight, ts))
        if category:
            deltas.category_popularity.append((category, item_id, weight, ts))
            self._prefer_category(category, weight, ts, params)
        self.profile["recent_items"] = [
            {"item_id": entry[0], "weight": entry[1], "ts": entry[2]}
            for entry in recent[: params.display_cap]
        ]

    def _prefer_category(
        self, category: str, weight: float, ts: float, params: ProfileParams
    ) -> None:
        affinity: dict[str, list[float]] = self.profile["category_affinity"]
        value, as_of = affinity.get(category, (0.0, ts))
        affinity[category] = list(decayed_add(value, as_of, weight, ts, params.half_life))
        if len(affinity) > params.affinity_cap:
            # Values are stored as of different times: compare them all as of now.
            def current(name: str) -> float:
                value, as_of = affinity[name]
                return decayed_value_at(value, as_of, ts, params.half_life)

            del affinity[min(affinity, key=lambda name: (current(name), name))]

    def _place(
        self,
        order: Order,
        categories: dict[str, str | None],
        params: ProfileParams,
        deltas: ItemDeltas,
    ) -> None:
        known: dict[str, dict[str, Any]] = self.state["orders"]
        if order.order_id in known:
            return  # placed before, under another event id
        profile = self.profile
        profile["orders"] += 1
        profile["revenue"] = round(profile["revenue"] + order.amount, _MONEY_DIGITS)
        profile["items_purchased"] += sum(line.quantity for line in order.lines)
        self._count(PURCHASE, order.ts, params)
        self._remember_order(order)
        purchased: list[str] = self.state["purchased"]
        for line in order.lines:
            if line.item_id in purchased:
                purchased.remove(line.item_id)
            purchased.insert(0, line.item_id)
            self._interact(
                line.item_id, PURCHASE, order.ts, categories.get(line.item_id), params, deltas
            )
        del purchased[params.purchased_cap :]
        early = self.state.get("early", {}).pop(order.order_id, None)
        if early is not None:
            # Its returns or cancellation came first (counted when they came): apply them now,
            # as if they had come after it.
            entry = known[order.order_id]
            if early["cancelled"]:
                self._cancel(entry)  # whatever returns came before it took back
            else:  # one or more returns
                named = dict(zip(early["items"], early["values"], strict=True))
                self._take_back(entry, named, early["rest"])
                entry["status"] = "returned"

    def _remember_order(self, order: Order) -> None:
        """A known order: ``open`` is the money it still brings in; ``items`` (distinct) with
        ``values``, what each of them still brings in. Entries written before ``values`` existed
        have ``items`` only (possibly repeated)."""
        values = _named(order)
        known: dict[str, dict[str, Any]] = self.state["orders"]
        known[order.order_id] = {
            "open": round(order.amount, _MONEY_DIGITS),
            "status": "placed",
            "items": list(values),
            "values": [round(value, _MONEY_DIGITS) for value in values.values()],
        }
        while len(known) > _KNOWN_ORDERS_CAP:
            del known[next(iter(known))]

    def _reverse(self, order: Order) -> None:
        """A cancellation or (partial) return: take back money that is still open, never more
        than the order brought in; a cancellation also takes back the order and its items.
        One of an order not (yet) known is remembered until it is placed."""
        known: dict[str, dict[str, Any]] = self.state["orders"]
        entry = known.get(order.order_id)
        if entry is None:
            self._remember_early(order)
            return
        if entry["status"] == "cancelled":
            return  # already taken back in full
        if order.status == "cancelled":
            self._cancel(entry)
            self.profile["cancellations"] += 1
        else:
            self._take_back(entry, _named(order), rest=not order.lines)
            entry["status"] = "returned"
            self.profile["returns"] += 1

    def _take_back(self, entry: dict[str, Any], named: dict[str, float], rest: bool) -> None:
        """Take back the money of the ``named`` items (or all that is left, if ``rest``), each
        at most what it still brings in; items the order does not have bring nothing back."""
        open_amount = float(entry["open"])
        if rest:
            refund = open_amount
            if "values" in entry:
                entry["values"] = [0.0] * len(entry["values"])
        elif "values" in entry:
            refund = 0.0
            values: list[float] = entry["values"]
            for n, item in enumerate(entry["items"]):
                take = min(named.get(item, 0.0), values[n])
                values[n] = round(values[n] - take, _MONEY_DIGITS)
                refund += take
        else:  # stored without per-item values: only the order's total bounds it
            refund = sum(named.get(item, 0.0) for item in set(entry["items"]))
        refund = min(refund, open_amount)
        entry["open"] = max(0.0, round(open_amount - refund, _MONEY_DIGITS))
        self._take_revenue(refund)

    def _cancel(self, entry: dict[str, Any]) -> None:
        """Take the order back: its count, what is left of its money, and its items."""
        self._take_revenue(float(entry["open"]))
        entry["open"] = 0.0
        if "values" in entry:
            entry["values"] = [0.0] * len(entry["values"])
        entry["status"] = "cancelled"
        profile = self.profile
        profile["orders"] = max(0, profile["orders"] - 1)
        # A cancelled item never reached the user: it may be recommended again.
        items = set(entry["items"])
        self.state["purchased"] = [i for i in self.state["purchased"] if i not in items]

    def _take_revenue(self, amount: float) -> None:
        profile = self.profile
        profile["revenue"] = max(0.0, round(profile["revenue"] - amount, _MONEY_DIGITS))

    def _remember_early(self, order: Order) -> None:
        """A cancellation or return of an order not known (yet): Kafka gives no order between
        topics and shops send late placements. It counts now and takes back nothing now; its
        placement, if it comes, applies it (:meth:`_place`). ``state["early"]`` maps order ids
        to ``{"cancelled", "rest", "items", "values"}``: whether it was cancelled, whether a
        return named no lines (all that is left), and the money returns named per item."""
        early: dict[str, dict[str, Any]] = self.state.setdefault("early", {})
        entry = early.get(order.order_id)
        if entry is None:
            entry = {"cancelled": False, "rest": False, "items": [], "values": []}
            early[order.order_id] = entry
            while len(early) > _KNOWN_ORDERS_CAP:
                del early[next(iter(early))]
        elif entry["cancelled"]:
            return  # already cancelled: a return or a second cancellation changes nothing
        if order.status == "cancelled":
            # Taking everything back, what returns named no longer matters.
            entry.update(cancelled=True, rest=False, items=[], values=[])
            self.profile["cancellations"] += 1
            return
        self.profile["returns"] += 1
        if not order.lines:
            entry["rest"] = True
        items: list[str] = entry["items"]
        values: list[float] = entry["values"]
        position = {item: n for n, item in enumerate(items)}
        for item, value in _named(order).items():
            if item in position:
                n = position[item]
                values[n] = round(values[n] + value, _MONEY_DIGITS)
            elif len(items) < _EARLY_ITEMS_CAP:
                items.append(item)
                values.append(round(value, _MONEY_DIGITS))

    def order_changes(self, order: Order) -> bool:
        """Whether ``order`` (an event id not applied yet) changes the record's orders: not a
        second placement of a known order id, nor a cancellation or return of an order already
        cancelled, whether that cancellation came before or after its placement."""
        if order.status == "placed":
            return order.order_id not in self.state["orders"]
        entry = self.state["orders"].get(order.order_id)
        if entry is None:
            entry = self.state.get("early", {}).get(order.order_id)
            return entry is None or not entry["cancelled"]
        return bool(entry["status"] != "cancelled")

    # -- reading ------------------------------------------------------------------------------
    def recent_items(self, limit: int | None = None) -> list[tuple[str, float, float]]:
        """``(item_id, weight, ts)`` most recent first (the ``limit`` most recent if given)."""
        return [(str(e[0]), float(e[1]), float(e[2])) for e in self.state["recent"][:limit]]

    def recent_ids(self) -> set[str]:
        """The ids of every kept interaction."""
        return {str(e[0]) for e in self.state["recent"]}

    def purchased(self) -> set[str]:
        return set(self.state["purchased"])

    def top_categories(self, n: int, half_life: float) -> list[tuple[str, float]]:
        """Strongest category affinities, all decayed to the user's last event."""
        affinity: dict[str, list[float]] = self.profile["category_affinity"]
        last = self.profile["last_seen"]
        if last is None:
            return []
        current = {
            name: decayed_value_at(value, as_of, last, half_life)
            for name, (value, as_of) in affinity.items()
        }
        return sorted(current.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _named(order: Order) -> dict[str, float]:
    """The money an order event names, per item."""
    named: dict[str, float] = {}
    for line in order.lines:
        named[line.item_id] = named.get(line.item_id, 0.0) + line.quantity * line.price
    return named
