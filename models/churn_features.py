"""Churn features of one user, kept incrementally and computable as of any moment in event time.

A :class:`ChurnHistory` is what the stream keeps per user for churn, segments and lifetime
value: the last ``caps.orders`` order events as ``(ts, amount, status)`` and the last
``caps.click_days`` days with clickstream activity as per-day counters, plus a few totals of
what fell off the end. It is plain data (:meth:`ChurnHistory.to_dict` is JSON), bounded,
and updated one event at a time in any arrival order.

:func:`features_as_of` reads it *as of* a moment ``t``: only events with ``ts <= t`` count,
so features as of a past cutoff are what the service would have computed then (training
examples) and features as of the clock are what it scores (serving) — the same function.

Clickstream is kept at day resolution (UTC days): the clicks of a day become visible when the
day is over, ``(day + 1) * 86400 <= t``. That is the price of bounded state that can still be
read as of any past moment without leaking the future: a day's counters cannot be split.
Orders are exact to the second. Churn is about weeks of silence, so a day does not matter.

What "exact" means with caps: :func:`exact_as_of` says whether the capped history gives the
same features as the full history would as of ``t``. It always holds for histories under
their caps; for long ones it holds once everything dropped is older than every window (365
days for orders, 90 for clicks) and enough orders are kept for the gap spread. Training
skips examples where it does not hold; serving at the clock is approximate only for
customers with more than ``caps.orders`` order events in a year.

Features (all finite, all >= 0, in :data:`FEATURE_NAMES` order; days are 86,400 s):

* recency: ``recency_days`` since the last placed order, ``activity_recency_days`` since the
  last placed order or visible click day. An order placed and later cancelled was still
  placed (buying intent at the time); the cancellation counts under reversals;
* frequency: ``orders_total``, ``orders_30d``, ``orders_90d``, ``orders_365d``;
* monetary: ``spend_total``, ``spend_90d``, ``spend_365d``, ``avg_order_value`` (placed
  orders, before refunds);
* tenure: ``tenure_days`` since the first placed order;
* rhythm: ``gap_mean_days`` (lifetime mean gap between placed orders), ``gap_std_days``
  (spread of the last :data:`GAP_WINDOW` gaps), ``last_gap_ratio`` (last gap / the mean gap
  before it; 1 when unknown), ``overdue`` (recency / expected gap, the expected gap shrunk
  towards :data:`PRIOR_GAP_DAYS` so a one-time buyer has one too);
* trend, as it was when they were last active: ``order_trend`` (orders in the 90 days up to
  the last order against the rate of the 275 days before), ``view_trend`` (views in the 30
  days up to the last visit against the 60 before);
* reversals: ``cancellations``, ``returns``, ``reversal_rate`` (per placed order),
  ``refund_share`` (refunded / spent);
* clickstream: ``has_clickstream`` (0/1), ``views_30d``, ``active_days_30d``,
  ``views_decayed``, ``sessions_decayed``, ``cart_adds_decayed`` (half-life
  :data:`CLICK_HALF_LIFE_DAYS`, last 90 days; sessions are distinct session ids per day, up
  to ``caps.sessions_per_day``, clicks without one making one session a day),
  ``carts_abandoned`` (cart adds after the day of the last order, in the 90 days up to the
  last visit). A shop without clickstream gets
  zeros here and ``activity_recency_days == recency_days``: the model then learns to ignore
  them.

**Silence.** Each feature moves one way only while a user is silent (:data:`SILENCE`): as
``t`` grows with no new events, recencies, tenure and ``overdue`` grow, windowed counts and
decayed values shrink, everything else stays put. That is why the trends and abandoned carts
are anchored at the last activity rather than at ``t``: a window ending at ``t`` would make
them wander up and down as old events leave it. The churn model constrains the sign of each
coefficient to match, so a silent customer's risk can only rise.

A user with no placed order as of ``t`` gets zeros for the order features; churn scoring
leaves such users out (see :func:`is_customer`).
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoppulse.errors import ShopPulseError

DAY = 86_400.0
PLACED, CANCELLED, RETURNED = "placed", "cancelled", "returned"
ORDER_STATUSES = (PLACED, CANCELLED, RETURNED)
CLICK_KINDS = ("view", "click", "add_to_cart", "remove_from_cart")

# Part of the feature definition (a model records FEATURES_VERSION and refuses another):
FEATURES_VERSION = 1
CLICK_HALF_LIFE_DAYS = 14.0
CLICK_WINDOW_DAYS = 90.0  # clicks older than this no longer count anywhere
ORDER_WINDOW_DAYS = 365.0  # the longest order window
GAP_WINDOW = 20  # gaps behind gap_std_days
# Before a second order nobody knows a customer's rhythm: the expected gap starts at this
# prior and moves towards their own mean gap as gaps are observed (one gap = one prior).
PRIOR_GAP_DAYS = 60.0
PRIOR_GAPS = 1.0

FEATURE_NAMES: tuple[str, ...] = (
    "recency_days",
    "activity_recency_days",
    "tenure_days",
    "orders_total",
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "spend_total",
    "spend_90d",
    "spend_365d",
    "avg_order_value",
    "gap_mean_days",
    "gap_std_days",
    "last_gap_ratio",
    "overdue",
    "order_trend",
    "cancellations",
    "returns",
    "reversal_rate",
    "refund_share",
    "has_clickstream",
    "views_30d",
    "active_days_30d",
    "views_decayed",
    "sessions_decayed",
    "cart_adds_decayed",
    "view_trend",
    "carts_abandoned",
)
UP, DOWN, STEADY = 1, -1, 0
_GROW_IN_SILENCE = ("recency_days", "activity_recency_days", "tenure_days", "overdue")
_SHRINK_IN_SILENCE = (
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "spend_90d",
    "spend_365d",
    "views_30d",
    "active_days_30d",
    "views_decayed",
    "sessions_decayed",
    "cart_adds_decayed",
)
# How each feature moves as time passes without events (see "Silence" above).
SILENCE: dict[str, int] = {
    name: UP if name in _GROW_IN_SILENCE else DOWN if name in _SHRINK_IN_SILENCE else STEADY
    for name in FEATURE_NAMES
}


class ChurnDataError(ShopPulseError):
    """An event or a stored history cannot be used for churn features."""


@dataclass(frozen=True, slots=True)
class HistoryCaps:
    """Bounds of one user's history (from settings)."""

    orders: int = 100  # order events kept (placed, cancelled, returned)
    click_days: int = 180  # days with clickstream activity kept
    sessions_per_day: int = 8  # distinct sessions counted per day

    def __post_init__(self) -> None:
        if min(self.orders, self.click_days, self.sessions_per_day) < 1:
            raise ValueError("history caps must be at least 1")


DEFAULT_CAPS = HistoryCaps()
UNBOUNDED = HistoryCaps(orders=2**62, click_days=2**62, sessions_per_day=2**62)


@dataclass(slots=True)
class Dropped:
    """Totals of the order events that fell off the capped list (all older than those kept)."""

    placed: int = 0
    spend: float = 0.0
    cancellations: int = 0
    returns: int = 0
    refunds: float = 0.0
    until: float | None = None  # newest ts of a dropped event
    last_placed: float | None = None  # newest ts of a dropped placed order


@dataclass(slots=True)
class ClickDay:
    """One UTC day of clickstream."""

    day: int  # floor(ts / 86400)
    views: int = 0  # view and click events
    cart_adds: int = 0
    cart_removes: int = 0
    sessions: list[int] = field(default_factory=list)  # crc32 of distinct session ids, capped

    @property
    def end(self) -> float:
        """When the day's counters become visible."""
        return (self.day + 1) * DAY


@dataclass(slots=True)
class ChurnHistory:
    """One user's capped order and clickstream history; see the module docstring."""

    # (ts, amount, status), ascending by that tuple
    orders: list[tuple[float, float, str]] = field(default_factory=list)
    click_days: list[ClickDay] = field(default_factory=list)  # ascending by day
    first_order_ts: float | None = None  # earliest placed order ever recorded
    first_click_day: int | None = None
    dropped: Dropped = field(default_factory=Dropped)
    clicks_dropped_day: int | None = None  # newest dropped click day

    # -- updates ------------------------------------------------------------------------------
    def record_order(
        self, ts: float, amount: float, status: str = PLACED, caps: HistoryCaps = DEFAULT_CAPS
    ) -> None:
        """One order event: ``amount`` is the order's value for ``placed``, the money the event
        names for ``cancelled``/``returned`` (0 if it names none).

        Call it once per event that changed the profile: duplicates by event id, a second
        ``placed`` of a known order id and a second cancellation of one order must not reach
        it (:class:`models.profile.UserRecord` already tells those apart)."""
        _check_time(ts)
        if not (math.isfinite(amount) and amount >= 0.0):
            raise ChurnDataError(f"order amount must be finite and >= 0, got {amount!r}")
        if status not in ORDER_STATUSES:
            raise ChurnDataError(f"unknown order status {status!r}")
        if status == PLACED and (self.first_order_ts is None or ts < self.first_order_ts):
            self.first_order_ts = ts
        entry = (float(ts), float(amount), status)
        if self.dropped.until is not None and ts <= self.dropped.until:
            # Older than what we kept: it belongs with the dropped totals.
            self._drop(entry)
            return
        bisect.insort(self.orders, entry)
        while len(self.orders) > caps.orders:
            self._drop(self.orders.pop(0))

    def record_click(
        self,
        ts: float,
        kind: str,
        session_id: str | None = None,
        caps: HistoryCaps = DEFAULT_CAPS,
    ) -> None:
        """One clickstream event. Clicks without a session id make one session per day."""
        _check_time(ts)
        if kind not in CLICK_KINDS:
            raise ChurnDataError(f"unknown click type {kind!r}")
        day_index = math.floor(ts / DAY)
        if self.first_click_day is None or day_index < self.first_click_day:
            self.first_click_day = day_index
        if self.clicks_dropped_day is not None and day_index <= self.clicks_dropped_day:
            return  # that day's counters are gone; only windows long past would need it
        day = self._click_day(day_index)
        if kind in ("view", "click"):
            day.views += 1
        elif kind == "add_to_cart":
            day.cart_adds += 1
        else:
            day.cart_removes += 1
        token = zlib.crc32((session_id or "").encode())
        if token not in day.sessions and len(day.sessions) < caps.sessions_per_day:
            day.sessions.append(token)
        while len(self.click_days) > caps.click_days:
            self.clicks_dropped_day = self.click_days.pop(0).day

    def _click_day(self, day_index: int) -> ClickDay:
        days = self.click_days
        at = bisect.bisect_left(days, day_index, key=lambda d: d.day)
        if at == len(days) or days[at].day != day_index:
            days.insert(at, ClickDay(day_index))
        return days[at]

    def _drop(self, entry: tuple[float, float, str]) -> None:
        ts, amount, status = entry
        d = self.dropped
        d.until = ts if d.until is None else max(d.until, ts)
        if status == PLACED:
            d.placed += 1
            d.spend += amount
            d.last_placed = ts if d.last_placed is None else max(d.last_placed, ts)
        elif status == CANCELLED:
            d.cancellations += 1
            d.refunds += amount
        else:
            d.returns += 1
            d.refunds += amount

    # -- storage ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; :meth:`from_dict` is the inverse."""
        d = self.dropped
        return {
            "v": 1,
            "orders": [list(entry) for entry in self.orders],
            "click_days": [
                [c.day, c.views, c.cart_adds, c.cart_removes, list(c.sessions)]
                for c in self.click_days
            ],
            "first_order_ts": self.first_order_ts,
            "first_click_day": self.first_click_day,
            "dropped": [
                d.placed,
                d.spend,
                d.cancellations,
                d.returns,
                d.refunds,
                d.until,
                d.last_placed,
            ],
            "clicks_dropped_day": self.clicks_dropped_day,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChurnHistory:
        """Rebuild a stored history, refusing anything malformed (ChurnDataError)."""
        try:
            if data.get("v") != 1:
                raise ChurnDataError(f"unknown churn history version {data.get('v')!r}")
            orders = [_order_entry(e) for e in data["orders"]]
            days = [_click_day_entry(e) for e in data["click_days"]]
            placed, spend, cancels, returns, refunds, until, last = data["dropped"]
            history = cls(
                orders=orders,
                click_days=days,
                first_order_ts=_optional_time(data["first_order_ts"]),
                first_click_day=_optional_int(data["first_click_day"]),
                dropped=Dropped(
                    int(placed),
                    _money(spend),
                    int(cancels),
                    int(returns),
                    _money(refunds),
                    _optional_time(until),
                    _optional_time(last),
                ),
                clicks_dropped_day=_optional_int(data["clicks_dropped_day"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChurnDataError(f"malformed churn history: {exc}") from exc
        if orders != sorted(orders) or [c.day for c in days] != sorted({c.day for c in days}):
            raise ChurnDataError("malformed churn history: entries out of order")
        return history


def history_from_events(
    orders: Iterable[tuple[float, float, str]],
    clicks: Iterable[tuple[float, str, str | None]] = (),
    caps: HistoryCaps = UNBOUNDED,
) -> ChurnHistory:
    """A history built from whole event lists (``(ts, amount, status)`` and ``(ts, kind,
    session_id)``); with the default caps, the full history."""
    history = ChurnHistory()
    for ts, amount, status in orders:
        history.record_order(ts, amount, status, caps)
    for ts, kind, session in clicks:
        history.record_click(ts, kind, session, caps)
    return history


# -- reading ----------------------------------------------------------------------------------


def is_customer(features: Mapping[str, float]) -> bool:
    """Churn is defined for customers: users with at least one placed order."""
    return features["orders_total"] >= 1.0


def exact_as_of(history: ChurnHistory, as_of: float) -> bool:
    """Whether the capped history gives the same features as the full one as of ``as_of``:
    everything dropped lies before every window (including those anchored at the last order
    and the last visit), and the gap spread still has all its gaps."""
    d = history.dropped
    if d.until is not None:
        placed = [ts for ts, _, status in _until(history.orders, as_of) if status == PLACED]
        if len(placed) < GAP_WINDOW + 1 or placed[-1] - ORDER_WINDOW_DAYS * DAY < d.until:
            return False
    if history.clicks_dropped_day is not None:
        visible = [day for day in history.click_days if day.end <= as_of]
        dropped_end = (history.clicks_dropped_day + 1) * DAY
        if not visible or visible[-1].end - CLICK_WINDOW_DAYS * DAY < dropped_end:
            return False
    return True


def features_as_of(history: ChurnHistory, as_of: float) -> dict[str, float]:
    """The user's features as of ``as_of`` (only events with ``ts <= as_of`` count)."""
    _check_time(as_of)
    orders = _OrderView.build(history, as_of)
    features = orders.features(as_of)
    features.update(_click_features(history, as_of, orders.last_ts))
    last_click = features.pop("_last_click_end")
    activity = max(orders.last_ts or -math.inf, last_click)
    features["activity_recency_days"] = (as_of - activity) / DAY if math.isfinite(activity) else 0.0
    return {name: features[name] for name in FEATURE_NAMES}


def _until(orders: list[tuple[float, float, str]], as_of: float) -> list[tuple[float, float, str]]:
    return orders[: bisect.bisect_right(orders, as_of, key=lambda e: e[0])]


@dataclass(frozen=True, slots=True)
class _OrderView:
    """The order events visible as of a moment, with the dropped totals that apply."""

    placed: list[tuple[float, float]]  # kept placed orders (ts, amount), ascending
    reversals: list[tuple[float, float, str]]
    dropped: Dropped | None  # None when the dropped totals are not (all) visible yet
    first_ts: float | None
    last_ts: float | None

    @classmethod
    def build(cls, history: ChurnHistory, as_of: float) -> _OrderView:
        visible = _until(history.orders, as_of)
        placed = [(ts, amount) for ts, amount, status in visible if status == PLACED]
        reversals = [e for e in visible if e[2] != PLACED]
        d = history.dropped
        # Dropped totals count only once all of them are in the past: never the future.
        dropped = d if d.until is not None and d.until <= as_of else None
        first = history.first_order_ts
        if first is None or first > as_of:
            first = placed[0][0] if placed else None
        last = placed[-1][0] if placed else (dropped.last_placed if dropped else None)
        return cls(placed, reversals, dropped, first, last)

    def features(self, as_of: float) -> dict[str, float]:
        d = self.dropped or Dropped()
        count = len(self.placed) + d.placed
        spend = sum(amount for _, amount in self.placed) + d.spend
        features = {
            "orders_total": float(count),
            "spend_total": spend,
            "avg_order_value": spend / count if count else 0.0,
            "tenure_days": (as_of - self.first_ts) / DAY if self.first_ts is not None else 0.0,
            "recency_days": (as_of - self.last_ts) / DAY if self.last_ts is not None else 0.0,
        }
        for days in (30, 90, 365):
            features[f"orders_{days}d"] = float(self._count_since(as_of - days * DAY))
        features["spend_90d"] = self._spend_since(as_of - 90 * DAY)
        features["spend_365d"] = self._spend_since(as_of - 365 * DAY)
        features.update(self._rhythm(count, features["recency_days"]))
        features["order_trend"] = self._trend()
        features.update(self._reversals(d, count, spend))
        return features

    def _trend(self) -> float:
        """Orders in the 90 days up to the last order against the rate of the 275 before."""
        if self.last_ts is None:
            return 1.0
        recent = self._count_since(self.last_ts - 90 * DAY)
        earlier = self._count_since(self.last_ts - 365 * DAY) - recent
        return (recent + 1.0) / (earlier * 90.0 / 275.0 + 1.0)

    def _count_since(self, start: float) -> int:
        return sum(1 for ts, _ in self.placed if ts > start)

    def _spend_since(self, start: float) -> float:
        return sum(amount for ts, amount in self.placed if ts > start)

    def _previous_ts(self) -> float | None:
        """The placed order before the last one."""
        if len(self.placed) >= 2:
            return self.placed[-2][0]
        if len(self.placed) == 1 and self.dropped is not None:
            return self.dropped.last_placed
        return None

    def _rhythm(self, count: int, recency: float) -> dict[str, float]:
        first, last = self.first_ts, self.last_ts
        span = (last - first) / DAY if first is not None and last is not None else 0.0
        mean_gap = span / (count - 1) if count >= 2 else 0.0
        gaps = [
            (b - a) / DAY for (a, _), (b, _) in zip(self.placed, self.placed[1:], strict=False)
        ][-GAP_WINDOW:]
        expected = (span + PRIOR_GAP_DAYS * PRIOR_GAPS) / (max(count - 1, 0) + PRIOR_GAPS)
        return {
            "gap_mean_days": mean_gap,
            "gap_std_days": _std(gaps),
            "last_gap_ratio": self._last_gap_ratio(count),
            "overdue": recency / expected if count else 0.0,
        }

    def _last_gap_ratio(self, count: int) -> float:
        """The last gap against the customer's usual gap before it (1 while unknown)."""
        previous, first, last = self._previous_ts(), self.first_ts, self.last_ts
        if count < 3 or previous is None or first is None or last is None or previous <= first:
            return 1.0
        usual = (previous - first) / (count - 2)
        if usual <= 0.0:  # gaps too small for a double (subnormal times): no usual gap known
            return 1.0
        return (last - previous) / usual

    def _reversals(self, d: Dropped, count: int, spend: float) -> dict[str, float]:
        cancels = d.cancellations + sum(1 for e in self.reversals if e[2] == CANCELLED)
        returns = d.returns + sum(1 for e in self.reversals if e[2] == RETURNED)
        refunds = d.refunds + sum(e[1] for e in self.reversals)
        return {
            "cancellations": float(cancels),
            "returns": float(returns),
            "reversal_rate": (cancels + returns) / count if count else 0.0,
            "refund_share": min(1.0, refunds / spend) if spend > 0.0 else 0.0,
        }


def _click_features(
    history: ChurnHistory, as_of: float, last_order_ts: float | None
) -> dict[str, float]:
    visible = [day for day in history.click_days if day.end <= as_of]
    recent = _days_within(visible, as_of, CLICK_WINDOW_DAYS)
    last_30 = _days_within(recent, as_of, 30.0)
    half_life = CLICK_HALF_LIFE_DAYS * DAY
    weights = [math.exp(-math.log(2.0) * (as_of - day.end) / half_life) for day in recent]
    first, dropped = history.first_click_day, history.clicks_dropped_day
    last_end = visible[-1].end if visible else -math.inf
    if not visible and dropped is not None and (dropped + 1) * DAY <= as_of:
        last_end = (dropped + 1) * DAY
    return {
        "has_clickstream": 1.0 if first is not None and (first + 1) * DAY <= as_of else 0.0,
        "views_30d": float(sum(day.views for day in last_30)),
        "active_days_30d": float(len(last_30)),
        "views_decayed": sum(w * day.views for w, day in zip(weights, recent, strict=True)),
        "sessions_decayed": sum(
            w * len(day.sessions) for w, day in zip(weights, recent, strict=True)
        ),
        "cart_adds_decayed": sum(w * day.cart_adds for w, day in zip(weights, recent, strict=True)),
        **_last_visits(visible, last_order_ts),
        "_last_click_end": last_end,
    }


def _days_within(days: list[ClickDay], end: float, window_days: float) -> list[ClickDay]:
    """The days among ``days`` that ended in the ``window_days`` before ``end``."""
    return [day for day in days if 0.0 <= end - day.end < window_days * DAY]


def _last_visits(visible: list[ClickDay], last_order_ts: float | None) -> dict[str, float]:
    """Browsing trend and carts left behind, anchored at the last visible day (fixed while the
    user is silent): views in its 30 days against the 60 before, and cart adds in its 90
    days after the day of the last order."""
    if not visible:
        return {"view_trend": 1.0, "carts_abandoned": 0.0}
    anchor = visible[-1].end
    views_30 = sum(day.views for day in _days_within(visible, anchor, 30.0))
    window = _days_within(visible, anchor, CLICK_WINDOW_DAYS)
    views_90 = sum(day.views for day in window)
    order_day = math.floor(last_order_ts / DAY) if last_order_ts is not None else None
    carts = sum(day.cart_adds for day in window if order_day is None or day.day > order_day)
    return {
        "view_trend": (views_30 + 1.0) / ((views_90 - views_30) / 2.0 + 1.0),
        "carts_abandoned": float(carts),
    }


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


# -- validation of stored data ----------------------------------------------------------------


def _check_time(ts: float) -> None:
    if not math.isfinite(ts):
        raise ChurnDataError(f"timestamp must be finite, got {ts!r}")


def _optional_time(value: Any) -> float | None:
    if value is None:
        return None
    ts = float(value)
    _check_time(ts)
    return ts


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _money(value: Any) -> float:
    amount = float(value)
    if not (math.isfinite(amount) and amount >= 0.0):
        raise ValueError(f"amount must be finite and >= 0, got {value!r}")
    return amount


def _order_entry(entry: Any) -> tuple[float, float, str]:
    ts, amount, status = entry
    if status not in ORDER_STATUSES:
        raise ValueError(f"unknown order status {status!r}")
    time = _optional_time(ts)
    if time is None:
        raise ValueError("order entry without a timestamp")
    return (time, _money(amount), str(status))


def _click_day_entry(entry: Any) -> ClickDay:
    day, views, adds, removes, sessions = entry
    counts = [int(views), int(adds), int(removes)]
    if min(counts) < 0:
        raise ValueError("click counters must be >= 0")
    return ClickDay(int(day), counts[0], counts[1], counts[2], [int(s) for s in sessions])
