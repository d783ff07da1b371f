"""A built-in shop simulator with known buying rhythms and known churn times.

It exists to develop and evaluate churn risk, segments and lifetime value against a ground
truth no real shop can give: for every customer we know when they stopped buying for good.
It is a development aid, not the target; its generative model is written down here so that
nobody mistakes its quirks for those of real shops.

Generative model (all draws from one seeded numpy ``Generator`` per concern, see below):

* **Customers** arrive uniformly over ``days`` days from ``start``; the arrival is their first
  placed order. A share ``one_time_share`` are one-time buyers: their churn time is their first
  order. Every other customer lives ``L ~ LogNormal(log(median_lifetime_days),
  lifetime_spread)`` days after arriving; their churn time is arrival + L, after which they
  never place an order again.
* **Rhythm**: each customer has a mean gap ``mu ~ LogNormal(log(median_gap_days),
  gap_spread)`` (clipped to 3..365 days) and a gap shape ``k`` drawn from
  :data:`GAP_SHAPES` (0.6: bursty, long silences between bursts; 5: clockwork). Gaps between
  orders are ``Gamma(k, mu / k)``: mean ``mu`` whatever ``k``. Orders follow while the
  customer is alive and the simulation runs.
* **Order values**: each customer has a typical value ``m ~ LogNormal(log(median_order_value),
  0.5)``; each order is worth ``LogNormal(log(m), 0.35)``, split into 1-3 lines of catalog
  items (Zipf-popular), prices rounded to cents, quantity 1.
* **Cancellations and returns**: each customer has propensities drawn from Beta
  distributions with means ``cancel_rate`` and ``return_rate``; a cancelled order is
  cancelled 0.5-48 hours after it was placed, a returned one gives back one line 3-30 days
  later. They carry no churn signal in this model.
* **Clickstream** (optional, its own random stream, so the orders are the same with or
  without it): a purchase session (views of the ordered items and a few others, cart adds,
  then the order) before every order; browsing sessions as a Poisson process at
  ``sessions_per_order / mu`` per day from 30 days before arrival until churn, tapering
  linearly to 15% over the ``taper_days`` before churn (interest fades before people leave);
  after churn, a share ``residual_browsers`` still browse at a tenth of the rate for 60 days.
  A browsing session has 1 + Poisson(2) views, maybe a click, a cart add with probability 0.2
  (an abandoned cart), sometimes removed again. ``prospects`` users browse and never buy.
  Only events while the shop is open, ``[start, start + days]``, are recorded.

Seeds: :data:`PUBLISHED_SEEDS` are the seeds the evaluation reports; any integer works. One
seed gives the same events, byte for byte, on every machine (numpy's PCG64 stream).
Random streams are split with ``SeedSequence(seed).spawn`` into customers, orders and clicks
so that turning the clickstream off leaves every order as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DAY = 86_400.0
HOUR = 3_600.0
# 2023-01-01T00:00:00Z: a round, recent starting point.
DEFAULT_START = 1_672_531_200.0
PUBLISHED_SEEDS = (20240901, 20240902, 20240903)
GAP_SHAPES = (0.6, 1.0, 2.0, 5.0)
_PRE_ARRIVAL_DAYS = 30.0
_RESIDUAL_DAYS = 60.0
_RESIDUAL_RATE = 0.1
_TAPER_FLOOR = 0.15


@dataclass(frozen=True, slots=True)
class ShopConfig:
    """The simulated shop's parameters; the defaults are what the evaluation uses."""

    customers: int = 2500
    prospects: int = 500
    days: int = 900
    start: float = DEFAULT_START
    one_time_share: float = 0.35
    median_gap_days: float = 30.0
    gap_spread: float = 0.9
    median_lifetime_days: float = 365.0
    lifetime_spread: float = 1.0
    median_order_value: float = 45.0
    cancel_rate: float = 0.03
    return_rate: float = 0.07
    clickstream: bool = True
    sessions_per_order: float = 2.0
    taper_days: float = 45.0
    residual_browsers: float = 0.3
    catalog_size: int = 400

    @property
    def end(self) -> float:
        return self.start + self.days * DAY


@dataclass(frozen=True, slots=True)
class CustomerTruth:
    """What the simulator knows about a user and no shop ever does."""

    user_id: str
    first_order_ts: float | None  # None: a prospect who never buys
    # No placed order after this moment (it may lie after the end: still buying then);
    # None for prospects.
    churn_ts: float | None
    mean_gap_days: float
    gap_shape: float
    one_time: bool


@dataclass(frozen=True, slots=True)
class SimulatedShop:
    """Events in the ShopPulse contract format, in time order, and the ground truth."""

    config: ShopConfig
    seed: int
    orders: list[dict[str, Any]]
    clicks: list[dict[str, Any]]
    truth: dict[str, CustomerTruth]
    end_ts: float
    # user -> placed-order times, ascending (what ground-truth labels are read from)
    placed_times: dict[str, list[float]] = field(default_factory=dict)

    def churned(self, user_id: str, cutoff: float, horizon_days: float) -> bool:
        """True churn as the evaluation defines it: no placed order in ``(cutoff, cutoff + H]``.

        Needs ``cutoff + H <= end_ts``: after the end the simulator knows nothing.
        """
        if cutoff + horizon_days * DAY > self.end_ts:
            raise ValueError("the horizon runs past the end of the simulation")
        times = self.placed_times.get(user_id, [])
        return not any(cutoff < ts <= cutoff + horizon_days * DAY for ts in times)


@dataclass(slots=True)
class _Customer:
    user_id: str
    arrival: float
    churn_ts: float
    mean_gap: float  # days
    shape: float
    one_time: bool
    value: float
    cancel_p: float
    return_p: float
    orders: list[float] = field(default_factory=list)
    baskets: list[list[str]] = field(default_factory=list)  # item ids of each order


def simulate_shop(seed: int, config: ShopConfig | None = None) -> SimulatedShop:
    """Simulate ``config`` (default :class:`ShopConfig`) with ``seed``; deterministic."""
    config = config or ShopConfig()
    customer_rng, order_rng, click_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    customers = _draw_customers(customer_rng, config)
    cdf = _zipf_cdf(config.catalog_size)
    orders = _order_events(order_rng, customers, config, cdf)
    clicks = _click_events(click_rng, customers, config, cdf) if config.clickstream else []
    orders.sort(key=lambda e: (e["ts"], e["event_id"]))
    clicks.sort(key=lambda e: (e["ts"], e["event_id"]))
    truth = {c.user_id: _truth(c) for c in customers}
    for n in range(config.prospects):
        user_id = f"p{n:05d}"
        truth[user_id] = CustomerTruth(user_id, None, None, 0.0, 0.0, False)
    placed = {c.user_id: list(c.orders) for c in customers}
    return SimulatedShop(config, seed, orders, clicks, truth, config.end, placed)


def _truth(c: _Customer) -> CustomerTruth:
    return CustomerTruth(c.user_id, c.arrival, c.churn_ts, c.mean_gap, c.shape, c.one_time)


def _draw_customers(rng: np.random.Generator, config: ShopConfig) -> list[_Customer]:
    n = config.customers
    # Times are kept to the millisecond, as the events carry them.
    arrival = np.round(config.start + rng.uniform(0.0, config.days, n) * DAY, 3)
    one_time = rng.random(n) < config.one_time_share
    lifetime = rng.lognormal(math.log(config.median_lifetime_days), config.lifetime_spread, n)
    churn = np.where(one_time, arrival, arrival + lifetime * DAY)
    gap = np.clip(rng.lognormal(math.log(config.median_gap_days), config.gap_spread, n), 3, 365)
    shape = rng.choice(np.asarray(GAP_SHAPES), n)
    value = rng.lognormal(math.log(config.median_order_value), 0.5, n)
    # Beta(a, b) with mean a / (a + b): a = 1 keeps most customers near zero, a few high.
    cancel = rng.beta(1.0, 1.0 / config.cancel_rate - 1.0, n)
    returns = rng.beta(1.0, 1.0 / config.return_rate - 1.0, n)
    return [
        _Customer(
            f"c{i:05d}",
            float(arrival[i]),
            float(churn[i]),
            float(gap[i]),
            float(shape[i]),
            bool(one_time[i]),
            float(value[i]),
            float(cancel[i]),
            float(returns[i]),
        )
        for i in range(n)
    ]


def _zipf_cdf(size: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Cumulative Zipf(0.9) popularity of the catalog: item ``i`` is drawn with
    ``searchsorted(cdf, uniform)`` (``Generator.choice`` with ``p`` recomputes it per call)."""
    weights = 1.0 / np.arange(1, size + 1) ** 0.9
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return np.asarray(cdf, dtype=np.float64)


def _draw_items(
    rng: np.random.Generator, cdf: np.ndarray[Any, np.dtype[np.float64]], count: int
) -> list[str]:
    return [f"sku-{int(i)}" for i in np.searchsorted(cdf, rng.random(count), side="right")]


def _order_times(rng: np.random.Generator, c: _Customer, end: float) -> list[float]:
    times = [c.arrival]
    if c.one_time:
        return times
    while True:
        ts = round(times[-1] + float(rng.gamma(c.shape, c.mean_gap / c.shape)) * DAY, 3)
        if ts > c.churn_ts or ts > end:
            return times
        times.append(ts)


def _order_events(
    rng: np.random.Generator,
    customers: list[_Customer],
    config: ShopConfig,
    cdf: np.ndarray[Any, np.dtype[np.float64]],
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for c in customers:
        c.orders = _order_times(rng, c, config.end)
        for n, ts in enumerate(c.orders):
            order_id = f"{c.user_id}-o{n}"
            items = _order_items(rng, c.value, cdf)
            c.baskets.append([line["item_id"] for line in items])
            events.append(_order_event(f"{order_id}-p", order_id, c.user_id, ts, items, "placed"))
            if rng.random() < c.cancel_p:
                when = ts + rng.uniform(0.5, 48.0) * HOUR
                events.append(
                    _order_event(f"{order_id}-c", order_id, c.user_id, when, items, "cancelled")
                )
            elif rng.random() < c.return_p:
                when = ts + rng.uniform(3.0, 30.0) * DAY
                line = [items[int(rng.integers(len(items)))]]
                events.append(
                    _order_event(f"{order_id}-r", order_id, c.user_id, when, line, "returned")
                )
    # Reversals after the end of the simulation never happened (yet).
    return [e for e in events if e["ts"] <= config.end]


def _order_items(
    rng: np.random.Generator,
    value: float,
    cdf: np.ndarray[Any, np.dtype[np.float64]],
) -> list[dict[str, Any]]:
    total = float(rng.lognormal(math.log(value), 0.35))
    # Distinct items (a repeated draw merges into one line).
    items = list(dict.fromkeys(_draw_items(rng, cdf, int(rng.integers(1, 4)))))
    shares = rng.dirichlet(np.ones(len(items)))
    return [
        {"item_id": item, "quantity": 1, "price": max(0.01, round(total * float(s), 2))}
        for item, s in zip(items, shares, strict=True)
    ]


def _order_event(
    event_id: str, order_id: str, user_id: str, ts: float, items: list[dict[str, Any]], status: str
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "order_id": order_id,
        "user_id": user_id,
        "ts": round(ts, 3),
        "items": items,
        "status": status,
    }


# -- clickstream ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sessions:
    """Builds one user's click events, numbering their sessions and events."""

    rng: np.random.Generator
    user_id: str
    cdf: np.ndarray[Any, np.dtype[np.float64]]
    events: list[dict[str, Any]]
    count: int = 0

    def session(self, start: float, browse_items: int, buy: list[str] | None = None) -> None:
        session_id = f"{self.user_id}-s{self.count}"
        self.count += 1
        ts = start
        viewed = _draw_items(self.rng, self.cdf, browse_items)
        for item in viewed + (buy or []):
            ts += float(self.rng.exponential(60.0))
            self._emit("view", item, ts, session_id)
            if self.rng.random() < 0.3:
                self._emit("click", item, ts + 1.0, session_id)
        for item in buy or []:
            ts += float(self.rng.exponential(30.0))
            self._emit("add_to_cart", item, ts, session_id)
        if not buy and viewed and self.rng.random() < 0.2:
            ts += float(self.rng.exponential(30.0))
            self._emit("add_to_cart", viewed[-1], ts, session_id)
            if self.rng.random() < 0.3:
                self._emit("remove_from_cart", viewed[-1], ts + 60.0, session_id)

    def _emit(self, kind: str, item: str, ts: float, session_id: str) -> None:
        self.events.append(
            {
                "event_id": f"{session_id}-e{len(self.events)}",
                "type": kind,
                "user_id": self.user_id,
                "item_id": item,
                "ts": round(ts, 3),
                "session_id": session_id,
            }
        )


def _click_events(
    rng: np.random.Generator,
    customers: list[_Customer],
    config: ShopConfig,
    cdf: np.ndarray[Any, np.dtype[np.float64]],
) -> list[dict[str, Any]]:
    # Only what happens while the shop is open, [start, end], is recorded.
    events: list[dict[str, Any]] = []
    for c in customers:
        user: list[dict[str, Any]] = []
        sessions = _Sessions(rng, c.user_id, cdf, user)
        for ts, basket in zip(c.orders, c.baskets, strict=True):
            # The purchase session ends before the order (a few minutes per event).
            start = ts - float(rng.uniform(20.0, 60.0)) * 60.0
            sessions.session(start, int(rng.integers(0, 4)), basket)
        _browse(rng, sessions, c, config)
        events.extend(e for e in user if config.start <= e["ts"] <= config.end)
    for n in range(config.prospects):
        user = []
        sessions = _Sessions(rng, f"p{n:05d}", cdf, user)
        start = config.start + rng.uniform(0.0, config.days) * DAY
        rate = float(rng.lognormal(math.log(0.05), 0.8))  # sessions per day
        _poisson_sessions(rng, sessions, start, start + rng.exponential(90.0) * DAY, rate)
        events.extend(e for e in user if config.start <= e["ts"] <= config.end)
    return events


def _browse(
    rng: np.random.Generator, sessions: _Sessions, c: _Customer, config: ShopConfig
) -> None:
    rate = config.sessions_per_order / c.mean_gap
    start = c.arrival - _PRE_ARRIVAL_DAYS * DAY
    end = min(c.churn_ts, config.end)
    # Thinning: draw at the full rate, keep each session with the taper's probability.
    for ts in _poisson_times(rng, start, end, rate):
        left = (c.churn_ts - ts) / (config.taper_days * DAY)
        keep = 1.0 if c.one_time else min(1.0, max(_TAPER_FLOOR, left))
        if rng.random() < keep:
            sessions.session(ts, 1 + int(rng.poisson(2.0)))
    if rng.random() < config.residual_browsers:
        after = c.churn_ts + _RESIDUAL_DAYS * DAY
        _poisson_sessions(rng, sessions, c.churn_ts, min(after, config.end), rate * _RESIDUAL_RATE)


def _poisson_sessions(
    rng: np.random.Generator, sessions: _Sessions, start: float, end: float, rate: float
) -> None:
    for ts in _poisson_times(rng, start, end, rate):
        sessions.session(ts, 1 + int(rng.poisson(2.0)))


def _poisson_times(rng: np.random.Generator, start: float, end: float, rate: float) -> list[float]:
    """Event times of a Poisson process with ``rate`` per day on ``[start, end)``."""
    if end <= start or rate <= 0.0:
        return []
    count = int(rng.poisson(rate * (end - start) / DAY))
    return sorted(float(t) for t in rng.uniform(start, end, count))
