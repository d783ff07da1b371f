"""``shoppulse bench``: throughput, latency, memory and CPU of the stream worker, measured side
by side with a bare Faust worker that only decodes JSON (``shoppulse/bench_bare.py``).

One run, on one machine, in a fresh namespace whose Redis keys are deleted at the end:

1. **Load.** A synthetic shop from a seeded numpy generator: a catalog with Zipf item
   popularity, Zipf-sized categories and some items out of stock; users with Zipf activity
   who browse in sessions (views, clicks, carts, mostly within one category) and order
   (placed, sometimes cancelled or returned later). Events follow the public contract, keyed
   by user (catalog: by item), in event-time order.
2. **Drain rates.** The catalog, then a warm-up slice and the drain slice of user events, are
   published before any worker runs. Then the ShopPulse worker (consumer group ``{ns}``) and
   later the bare worker (group ``{ns}-bare``) each take in every user event from the start,
   as child processes; in full mode a second bare worker (group ``{ns}-bare-next``) drains the
   same events right after the ShopPulse worker, and the ratio is against the mean of the two
   bare rates (the machine's speed can drift by tens of percent between measurements a minute
   apart; quick mode skips it to stay under a minute).
   Progress comes from Redis counters (``{ns}:stats``, and each bare worker's own hash),
   polled every 10 ms. The drain window opens at the first poll that sees more than the
   warm-up slice taken in (so the figure is on warm state, after start-up and
   the catalog) and closes when the last event is in; rate = events taken in within the
   window / its length. Kafka lag is not used: Tansu's ListOffsets can under-report the end of
   a log, so what each worker must take in is counted from the producer's own acks.
3. **Latency.** At 50% and 80% of the measured ShopPulse rate, a steady background load is
   published while probe clicks are sent for dedicated probe users (warmed up first, and
   never in the background load, so any change of their list is the probe's doing). For each
   probe: the time the broker acknowledged it, and the time its ``{ns}:recs:{user}`` value
   changed, seen by polling (MGET, every 2 ms, of the keys of the probes still outstanding
   only, so a few small commands per poll). The bare worker gets the same probes at 50% (and
   in full mode 80%) of the ShopPulse rate; it sets a key per probe user after decoding the
   batch, which gives the floor that Faust and the broker alone put under the latency.
   ``--drain-only`` skips this step (:func:`without_latency`); ``--latency-load`` replaces 50%
   and 80% with other loads, for both workers (:func:`with_latency_loads`).
   Polling rather than consuming ``{ns}.recommendations``: the topic is written after Redis
   and read through a fetch loop, which would add the producer's linger and the fetch wait to
   every figure, and consuming it means decoding every user's list at up to 80% of the max
   rate in the measuring process.
4. **Resources.** Redis memory per user and per item from ``MEMORY USAGE`` (all nested values)
   of a random sample of each kind of key, plus each user's or item's share of the
   namespace-wide keys (the ``INFO memory`` delta over the run is reported beside it as a
   cross-check; it also counts other tenants). Worker resident memory from
   ``/proc/PID/status`` (VmRSS, VmHWM), CPU seconds from ``/proc/PID/stat`` (utime + stime) per
   thousand events, and the Redis server's CPU from ``INFO cpu`` over the same window.

It talks only to the configured Redis, and to the configured broker or the Tansu broker it
starts on 127.0.0.1. Every wait is bounded in time, and a worker that stops taking events in
fails the run with the tail of its log. Worker logs live in a temporary folder that is removed
after a successful run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from shoppulse import localstack
from shoppulse.bench_bare import PROBE_USER_PREFIX, bare_namespace
from shoppulse.errors import ShopPulseError
from shoppulse.kafka import Outgoing, ensure_topics, partition_positions, send_batched
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.store import connect
from stream.transport import faust_datadir

REPORT_SCHEMA = "shoppulse.bench/1"
DAY = 86_400.0
FLOOR_DRAIN_RATIO = 0.5
AIM_DRAIN_RATIO = 0.8
FLOOR_P99_MS_AT_HALF_LOAD = 250.0
AIM_P99_MS_AT_HALF_LOAD = 100.0
LATENCY_FRACTIONS = (0.5, 0.8)
DRAIN_POLL_SECONDS = 0.01
PROBE_POLL_SECONDS = 0.002
PROBE_TIMEOUT_SECONDS = 5.0
WORKER_START_TIMEOUT = 90.0  # import, group join and the first batch
MIN_EXPECTED_RATE = 100.0  # events/s below which a drain is declared stuck
BENCH_REBALANCE_TIMEOUT = 3.0  # a group join waits about this long on Tansu (tests use 3)
STALL_SECONDS = 30.0  # a worker that takes in nothing for this long has failed
# A worker whose count has not moved for this long: ask whether its group has committed past
# every acked event (then the events it is short of were never delivered to it; see
# ``consumed_through``), and again this often until it moves or stalls.
CONSUMED_CHECK_SECONDS = 3.0
RIGHT_AFTER = "-next"  # the run label of the bare drain right after the ShopPulse drain


def bare_runs(namespace: str) -> tuple[str, str]:
    """The namespaces (consumer groups, Redis keys) of a bench's two bare runs."""
    return bare_namespace(namespace), bare_namespace(namespace, RIGHT_AFTER)


Document = dict[str, Any]
UserEvent = tuple[str, Document]  # ("clicks" | "orders", document)


# -- the synthetic shop ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Shape of the synthetic shop; every draw comes from numpy generators seeded from ``seed``."""

    items: int
    users: int
    categories: int
    seed: int = 42
    item_zipf: float = 0.9  # popularity of the item of rank k ~ k^-s
    user_zipf: float = 0.7  # sessions of the user of rank k ~ k^-s
    category_zipf: float = 0.8  # share of items in the category of rank k ~ k^-s
    out_of_stock: float = 0.05
    session_mean_events: float = 8.0
    session_max_events: int = 40
    in_category: float = 0.75  # a new item comes from the session's category (else anywhere)
    revisit: float = 0.2  # a step goes back to an item viewed earlier in the session
    direct_click: float = 0.05  # a new item is clicked (from a list) rather than viewed
    order: float = 0.45  # a session with a cart ends with an order
    cancel: float = 0.08  # a placed order is later cancelled ...
    return_: float = 0.06  # ... or has a line returned
    events_per_day: float = 20_000.0  # event-time density: the timeline, not the bench's pace
    start_ts: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class World:
    """The catalog and the users, drawn once per spec."""

    spec: LoadSpec
    item_weight: NDArray[np.float64]  # probability of each item under overall popularity
    item_category: NDArray[np.int64]
    in_stock: NDArray[np.bool_]
    price: NDArray[np.float64]
    user_weight: NDArray[np.float64]

    @staticmethod
    def item_id(index: int) -> str:
        return f"sku-{index}"

    @staticmethod
    def user_id(index: int) -> str:
        return f"u{index}"

    @staticmethod
    def category(index: int) -> str:
        return f"cat-{index}"


def zipf_weights(n: int, exponent: float) -> NDArray[np.float64]:
    """Probabilities of ranks 1..n under a finite Zipf law: p(k) ~ k^-exponent."""
    if n < 1:
        raise ValueError("n must be at least 1")
    weights: NDArray[np.float64] = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    weights /= weights.sum()
    return weights


def build_world(spec: LoadSpec) -> World:
    rng = np.random.default_rng(spec.seed)
    item_weight = zipf_weights(spec.items, spec.item_zipf)[rng.permutation(spec.items)]
    category_weight = zipf_weights(spec.categories, spec.category_zipf)
    item_category = rng.choice(spec.categories, size=spec.items, p=category_weight)
    in_stock = rng.random(spec.items) >= spec.out_of_stock
    price = np.round(np.exp(rng.normal(3.0, 0.8, spec.items)), 2).astype(np.float64)  # median ~20
    user_weight = zipf_weights(spec.users, spec.user_zipf)[rng.permutation(spec.users)]
    return World(spec, item_weight, item_category.astype(np.int64), in_stock, price, user_weight)


def catalog_documents(world: World) -> list[Document]:
    """One catalog upsert per item, stamped just before the first user event."""
    ts = world.spec.start_ts - 60.0
    documents = []
    for index in range(world.spec.items):
        category = world.category(int(world.item_category[index]))
        documents.append(
            {
                "item_id": world.item_id(index),
                "ts": ts,
                "category": category,
                "price": float(world.price[index]),
                "in_stock": bool(world.in_stock[index]),
                "title": f"Item {index}",
                "tags": [category, "sale" if index % 7 == 0 else "regular"],
            }
        )
    return documents


class _Uniforms:
    """Uniform [0, 1) draws served one by one from numpy blocks (fast and deterministic)."""

    def __init__(self, rng: np.random.Generator, block: int = 65_536) -> None:
        self._rng = rng
        self._block = block
        self._values: list[float] = []
        self._next = 0

    def __call__(self) -> float:
        if self._next >= len(self._values):
            self._values = self._rng.random(self._block).tolist()
            self._next = 0
        value = self._values[self._next]
        self._next += 1
        return value

    def exponential(self, mean: float) -> float:
        return -mean * math.log1p(-self())


def _cdf(weights: NDArray[np.float64]) -> list[float]:
    cumulative = np.cumsum(weights)
    return list((cumulative / cumulative[-1]).tolist())


def _pick(cdf: list[float], u: float) -> int:
    return min(bisect.bisect_right(cdf, u), len(cdf) - 1)


class _Sampler:
    """Discrete draws over the world by inverse CDF (bisect), fed by one uniform stream."""

    def __init__(self, world: World, u: _Uniforms) -> None:
        self.u = u
        self.world = world
        self.items = _cdf(world.item_weight)
        self.users = _cdf(world.user_weight)
        self.category_items: dict[int, list[int]] = {}
        self.category_cdf: dict[int, list[float]] = {}
        for category in np.unique(world.item_category).tolist():
            members = np.flatnonzero(world.item_category == category)
            self.category_items[int(category)] = members.tolist()
            self.category_cdf[int(category)] = _cdf(world.item_weight[members])

    def item(self) -> int:
        return _pick(self.items, self.u())

    def item_in(self, category: int) -> int:
        members = self.category_items[category]
        return members[_pick(self.category_cdf[category], self.u())]

    def user(self) -> int:
        return _pick(self.users, self.u())


def generate_user_events(
    world: World, count: int, seed: int, start_ts: float, prefix: str
) -> list[UserEvent]:
    """``count`` click and order events of session-like bursts, in event-time order.

    Deterministic for a given world, seed, start and prefix; ``prefix`` keeps event, session
    and order ids unique across calls."""
    spec = world.spec
    u = _Uniforms(np.random.default_rng([spec.seed, seed]))
    sample = _Sampler(world, u)
    span = max(count, 1) / spec.events_per_day * DAY
    mean_gap = 20.0
    stop_p = 1.0 / spec.session_mean_events
    timed: list[tuple[float, int, str, Document]] = []

    def emit(ts: float, kind: str, document: Document) -> bool:
        document["ts"] = round(ts, 3)
        timed.append((ts, len(timed), kind, document))
        return len(timed) < count

    session = 0
    order_number = 0
    while len(timed) < count:
        session += 1
        user = world.user_id(sample.user())
        session_id = f"{prefix}s{session}"
        # Geometric: each step ends the session with probability 1 / mean.
        length = min(1 + int(math.log1p(-u()) / math.log1p(-stop_p)), spec.session_max_events)
        t = start_ts + u() * span
        category = int(world.item_category[sample.item()])
        viewed: list[int] = []
        cart: list[int] = []
        going = True
        for _ in range(length):
            t += u.exponential(mean_gap)
            if viewed and u() < spec.revisit:
                item = viewed[int(u() * len(viewed))]
                r = u()
                if item in cart and r < 0.3:
                    kind = "remove_from_cart"
                    cart.remove(item)
                elif r < 0.55 or not world.in_stock[item] or item in cart:
                    kind = "click"
                else:
                    kind = "add_to_cart"
                    cart.append(item)
            else:
                item = sample.item_in(category) if u() < spec.in_category else sample.item()
                kind = "click" if u() < spec.direct_click else "view"
                viewed.append(item)
            document = {
                "event_id": f"{prefix}e{len(timed)}",
                "type": kind,
                "user_id": user,
                "item_id": world.item_id(item),
                "session_id": session_id,
            }
            if not (going := emit(t, "clicks", document)):
                break
        if not going or not cart or u() >= spec.order:
            continue
        order_number += 1
        order_id = f"{prefix}o{order_number}"
        lines = [
            {
                "item_id": world.item_id(item),
                "quantity": 1 + int(u() * 3),
                "price": float(world.price[item]),
            }
            for item in cart
        ]
        t += u.exponential(mean_gap * 3)
        placed = {"event_id": f"{prefix}e{len(timed)}", "order_id": order_id, "user_id": user}
        if not emit(t, "orders", {**placed, "items": lines, "status": "placed"}):
            break
        r = u()
        if r < spec.cancel:
            later, status, named = t + u.exponential(6 * 3600.0), "cancelled", []
        elif r < spec.cancel + spec.return_:
            later, status, named = t + u.exponential(3 * DAY), "returned", lines[:1]
        else:
            continue
        follow_up = {"event_id": f"{prefix}e{len(timed)}", "order_id": order_id, "user_id": user}
        emit(later, "orders", {**follow_up, "items": named, "status": status})
    timed.sort(key=lambda entry: (entry[0], entry[1]))
    return [(kind, document) for _, _, kind, document in timed]


def event_mix(events: Sequence[UserEvent]) -> dict[str, int]:
    """How many events of each click type and order status."""
    mix: Counter[str] = Counter()
    for kind, document in events:
        mix[document["type"] if kind == "clicks" else f"order_{document['status']}"] += 1
    return dict(sorted(mix.items()))


def encode_user_events(events: Sequence[UserEvent], topics: Topics) -> list[Outgoing]:
    by_kind = {"clicks": topics.clicks, "orders": topics.orders}
    return [
        (by_kind[kind], document["user_id"].encode(), orjson.dumps(document))
        for kind, document in events
    ]


def encode_catalog(documents: Sequence[Document], topics: Topics) -> list[Outgoing]:
    return [(topics.catalog, d["item_id"].encode(), orjson.dumps(d)) for d in documents]


# -- the two modes -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BenchPlan:
    mode: str
    load: LoadSpec
    warmup_events: int  # taken in (with the catalog) before the drain is measured
    drain_events: int  # pre-published, then drained by each worker
    latency_warmup_seconds: float  # background load before probing starts
    latency_probe_seconds: float
    probe_rate: float  # probes per second
    probe_users: int
    memory_samples: int  # keys of each kind sampled with MEMORY USAGE
    latency_fractions: tuple[float, ...]  # of the ShopPulse drain rate, for ShopPulse
    bare_latency_fractions: tuple[float, ...]  # of the ShopPulse rate, for the Faust baseline
    # A second bare drain right after the ShopPulse drain (the ratio uses both): ~10 s more,
    # which would take the quick mode past a minute.
    bare_right_after: bool


QUICK = BenchPlan(
    mode="quick",
    load=LoadSpec(items=5_000, users=10_000, categories=30),
    warmup_events=4_000,
    drain_events=20_000,
    latency_warmup_seconds=1.0,
    latency_probe_seconds=4.0,
    probe_rate=25.0,
    probe_users=32,
    memory_samples=200,
    latency_fractions=LATENCY_FRACTIONS,
    bare_latency_fractions=(0.5,),
    bare_right_after=False,
)
FULL = BenchPlan(
    mode="full",
    load=LoadSpec(items=20_000, users=50_000, categories=60),
    warmup_events=30_000,
    drain_events=150_000,
    latency_warmup_seconds=3.0,
    latency_probe_seconds=20.0,
    probe_rate=30.0,
    probe_users=64,
    memory_samples=1_000,
    latency_fractions=LATENCY_FRACTIONS,
    bare_latency_fractions=LATENCY_FRACTIONS,
    bare_right_after=True,
)


def without_latency(plan: BenchPlan) -> BenchPlan:
    """``plan`` without its latency phases: the same load, warm-up and drains (about a minute
    at full load instead of five), for comparing two versions' drain rates back to back. A
    full run drains 150,000 events; a quick run's drain lasts about 3 s, so its start-up weighs
    on every figure."""
    return replace(
        plan, mode=f"{plan.mode}, drain only", latency_fractions=(), bare_latency_fractions=()
    )


def with_latency_loads(plan: BenchPlan, fractions: Sequence[float]) -> BenchPlan:
    """``plan`` with its latency phases, for both workers, at these fractions of the base
    rate instead, lowest first: to find the load up to which click-to-recommendation time
    stays low (past it, batches grow and time rises steeply)."""
    loads = tuple(sorted(set(fractions)))
    return replace(
        plan,
        mode=f"{plan.mode}, loads " + "/".join(f"{load:.0%}" for load in loads),
        latency_fractions=loads,
        bare_latency_fractions=loads,
    )


# -- maths -------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest observed value with at least ``q``% of the values
    at or below it (None without values)."""
    if not 0.0 < q <= 100.0:
        raise ValueError("q must be in (0, 100]")
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(round(q * len(ordered) / 100.0, 9))
    return ordered[max(rank, 1) - 1]


def latency_summary(
    seconds: Sequence[float], censored: int = 0, censored_at: float = PROBE_TIMEOUT_SECONDS
) -> dict[str, float | int | None]:
    """Count, mean, p50/p95/p99 and max of latencies given in seconds, as milliseconds.

    ``censored`` probes never completed within ``censored_at`` seconds: they count at that
    value, so any figure that reaches it is a lower bound, not a measurement."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 2)

    values = [*seconds, *([censored_at] * censored)]
    return {
        "count": len(values),
        "censored": censored,
        "censored_at_ms": ms(censored_at),
        "mean_ms": ms(sum(values) / len(values)) if values else None,
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values)) if values else None,
    }


def drain_rate(total: int, before_window: int, seconds: float) -> float | None:
    """Events per second in a drain window: the events taken in after the window opened (the
    count already in when it opened is ``before_window``) over the window's length (None if
    there is no such time)."""
    if seconds <= 0.0 or total <= before_window:
        return None
    return (total - before_window) / seconds


def short_partitions(
    acked: Mapping[tuple[str, int], int], positions: Mapping[tuple[str, int], tuple[int, int]]
) -> str:
    """The partitions whose log end (as the broker reports it) or committed offset is short of
    what the broker acknowledged: messages not delivered, or delivered and not finished."""
    short = [
        f"{topic}[{partition}] acked {end_acked:,}, log end {end:,}, committed {committed:,}"
        for (topic, partition), end_acked in sorted(acked.items())
        for end, committed in [positions.get((topic, partition), (0, 0))]
        if end < end_acked or committed < end_acked
    ]
    return "; ".join(short) or "every partition's log end and commit reach the acks"


def consumed_through(
    acked: Mapping[tuple[str, int], int], positions: Mapping[tuple[str, int], tuple[int, int]]
) -> bool:
    """Whether the group committed, on every partition, at least what the broker acked: it
    has finished with every offset the bench produced. A count short of the acks then means
    events the consumer was never handed. The development broker (Tansu) does this now and
    then, to the bare Faust worker as to ShopPulse's: a few of tens of thousands of acked
    events, with its log end reported short of the acks by as many."""
    return all(positions.get(tp, (0, 0))[1] >= end_acked for tp, end_acked in acked.items())


def per_thousand(amount: float | None, events: int) -> float | None:
    return None if amount is None or events <= 0 else amount / events * 1000.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


# -- processes ---------------------------------------------------------------------------------
def parse_proc_cpu_seconds(stat: str, ticks_per_second: int) -> float:
    """utime + stime of a ``/proc/PID/stat`` line, in seconds (all the process's threads)."""
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after
    # the last ')'; what follows starts at field 3, so utime (14) and stime (15) are 11, 12.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def parse_proc_status_kb(status: str, name: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (e.g. VmRSS), in bytes."""
    for line in status.splitlines():
        if line.startswith(f"{name}:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) >= 2 else None
    return None


def parse_machine_ticks(stat: str) -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU together, from ``/proc/stat``'s first line: busy
    is all but idle and iowait (guest time is already inside user and nice)."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not /proc/stat: {stat[:40]!r}")
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def machine_ticks() -> tuple[int, int] | None:
    try:
        return parse_machine_ticks(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return None


def busy_cores(
    before: tuple[int, int] | None, after: tuple[int, int] | None, cpus: int | None
) -> float | None:
    """How many of the machine's ``cpus`` were busy on average between two
    :func:`machine_ticks` readings: the work of every process, ours or not."""
    if before is None or after is None or not cpus or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * cpus


def process_cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return parse_proc_cpu_seconds(stat, os.sysconf("SC_CLK_TCK"))


@dataclass(frozen=True, slots=True)
class CpuReading:
    """CPU seconds used so far by the worker under measurement, Redis, this process (the
    bench: load generator and probes) and the broker it started, and the machine's
    :func:`machine_ticks`; None where not known."""

    worker: float | None
    redis: float | None
    bench: float
    broker: float | None
    machine: tuple[int, int] | None

    def used_since(self, before: CpuReading | None) -> CpuUsed:
        """What was used between ``before`` and this reading (nothing known without one)."""
        if before is None:
            return CpuUsed(None, None, None, None, None)
        return CpuUsed(
            _delta(before.worker, self.worker),
            _delta(before.redis, self.redis),
            self.bench - before.bench,
            _delta(before.broker, self.broker),
            busy_cores(before.machine, self.machine, os.cpu_count()),
        )


@dataclass(frozen=True, slots=True)
class CpuUsed:
    """CPU seconds used by each process between two :class:`CpuReading` readings, and how
    many of the machine's cores were busy meanwhile; None where not known."""

    worker: float | None
    redis: float | None
    bench: float | None
    broker: float | None
    busy_cores: float | None


def process_memory(pid: int) -> dict[str, int | None]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"rss_bytes": None, "peak_rss_bytes": None}
    return {
        "rss_bytes": parse_proc_status_kb(status, "VmRSS"),
        "peak_rss_bytes": parse_proc_status_kb(status, "VmHWM"),
    }


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child ``shoppulse`` process read exactly these settings."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            text = "none"
        elif name == "redis_url":
            text = settings.redis_dsn  # dumped masked; the child needs the real URL
        elif isinstance(value, dict):
            text = orjson.dumps(value).decode()
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        env[f"SHOPPULSE_{name.upper()}"] = text
    return env


@contextmanager
def child_process(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A Python child (``python argv...``) with ``env`` added, logging to a file; stopped with
    SIGTERM (then SIGKILL after 30 s) on exit."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        localstack.stop_process(process)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(log unreadable: {exc})"


# -- measurements ------------------------------------------------------------------------------
@dataclass(slots=True)
class DrainResult:
    events: int  # events the worker had to take in
    before_window: int  # of which already in when the window opened (warm-up, first batch)
    seconds: float  # from the window opening to the last event seen
    worker_cpu_seconds: float | None = None  # over the same window
    redis_cpu_seconds: float | None = None
    self_reported_rate: float | None = None  # the bare worker's own clock, as a cross-check
    startup_seconds: float | None = None  # from the watch's start to the window opening
    undelivered: int = 0  # acked events the worker's group consumed past without being handed
    machine_busy_cores: float | None = None  # every process's CPU over the window, in cores

    @property
    def rate(self) -> float | None:
        return drain_rate(self.events, self.before_window, self.seconds)

    def as_dict(self) -> dict[str, Any]:
        measured = self.events - self.before_window
        return {
            "events": self.events,
            "events_before_window": self.before_window,
            "events_in_window": measured,
            "seconds": round(self.seconds, 3),
            "events_per_second": _round(self.rate, 1),
            "worker_cpu_seconds": _round(self.worker_cpu_seconds, 3),
            "worker_cpu_seconds_per_1k_events": _round(
                per_thousand(self.worker_cpu_seconds, measured), 4
            ),
            "redis_cpu_seconds": _round(self.redis_cpu_seconds, 3),
            "redis_cpu_seconds_per_1k_events": _round(
                per_thousand(self.redis_cpu_seconds, measured), 4
            ),
            "self_reported_events_per_second": _round(self.self_reported_rate, 1),
            "startup_seconds": _round(self.startup_seconds, 2),
            "undelivered": self.undelivered,
            "machine_busy_cores": _round(self.machine_busy_cores, 2),
        }


@dataclass(slots=True)
class _Probe:
    user: str
    key: str
    baseline: bytes | None
    acked_at: float | None = None
    changed_at: float | None = None


@dataclass(slots=True)
class ProbeResults:
    latencies: list[float] = field(default_factory=list)  # seconds, ack to change
    sent: int = 0
    timed_out: int = 0
    changed_before_ack: int = 0  # seen changed before our producer saw the ack (latency 0)
    skipped_busy: int = 0  # probe slots with every probe user still outstanding
    polls: int = 0
    poll_seconds: float = 0.0


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- report ------------------------------------------------------------------------------------
def evaluate_floors(report: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's floors and aims against the measured figures."""
    drain_ratio = report["drain"]["ratio"]
    phases = report["latency"]["shoppulse"]
    half = next((p for p in phases if p["load_fraction"] == 0.5), None)
    p99 = half["latency"]["p99_ms"] if half else None
    return {
        "drain_ratio": drain_ratio,
        "drain_ratio_floor": FLOOR_DRAIN_RATIO,
        "drain_ratio_aim": AIM_DRAIN_RATIO,
        "drain_ratio_met": drain_ratio is not None and drain_ratio >= FLOOR_DRAIN_RATIO,
        "p99_ms_at_half_load": p99,
        "p99_ms_floor": FLOOR_P99_MS_AT_HALF_LOAD,
        "p99_ms_aim": AIM_P99_MS_AT_HALF_LOAD,
        "p99_met": p99 is not None and p99 <= FLOOR_P99_MS_AT_HALF_LOAD,
    }


REPORT_KEYS = (
    "schema",
    "mode",
    "started_at",
    "duration_seconds",
    "machine",
    "settings",
    "broker",
    "load",
    "publish",
    "warmup",
    "drain",
    "latency",
    "memory",
    "cpu",
    "floors",
    "timings_seconds",
    "notes",
)
NOTES = (
    "drain: events taken in after the first batch was seen / time from that batch to the last "
    "event, from Redis counters polled every 10 ms (not Kafka lag); the ShopPulse worker drains "
    "the drain slice on state warmed by the catalog and warm-up slice; in full mode a bare "
    "worker drains the same events right after it (bare_faust_right_after); another reads "
    "every user event published in the run at the end (bare_faust); ratio is against the mean "
    "of the bare rates (ratio_to_each: right after, at the end), so that a machine whose speed "
    "drifts between measurements moves it less",
    "latency: broker ack of a probe click to the change of the probe user's key in Redis "
    "(ShopPulse: {ns}:recs:{user}; bare Faust: the key it sets after decoding a probe user's "
    "batch), seen by a 2 ms MGET poll of the keys of outstanding probes only; loads are "
    "fractions of the ShopPulse drain rate",
    "memory: MEMORY USAGE (SAMPLES 0) of sampled keys per kind, plus each user's or item's "
    "share of the namespace-wide keys; used_memory_delta_bytes is INFO memory over the run",
    "cpu: /proc/PID/stat utime+stime of the worker and INFO cpu of the Redis server over the "
    "drain window; Redis figures include any other client of that server",
)


def build_report(
    *,
    plan: BenchPlan,
    settings: Settings,
    broker: Mapping[str, Any],
    load: Mapping[str, Any],
    publish: Mapping[str, Any],
    warmup: Mapping[str, Any],
    bare: DrainResult,
    shoppulse: DrainResult,
    latency: Mapping[str, Sequence[Mapping[str, Any]]],
    memory: Mapping[str, Any],
    machine: Mapping[str, Any],
    timings: Mapping[str, float],
    started_at: float = 0.0,
    duration: float = 0.0,
    bare_right_after: DrainResult | None = None,
    latency_base: float | None = None,
) -> dict[str, Any]:
    """All the figures of one run, as plain JSON-able data, keys in REPORT_KEYS order. The
    drain ratio is against the mean rate of the bare drains (``bare``, after everything, and
    ``bare_right_after``, right after the ShopPulse drain, when there is one). The latency
    loads are fractions of ``latency_base`` when given, else of the ShopPulse drain rate."""
    bare_figures, shoppulse_figures = bare.as_dict(), shoppulse.as_dict()
    bare_rates = [run.rate for run in (bare_right_after, bare) if run is not None]
    known = [rate for rate in bare_rates if rate is not None]
    bare_mean = sum(known) / len(known) if known else None
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "mode": plan.mode,
        "started_at": round(started_at, 3),
        "duration_seconds": round(duration, 1),
        "machine": dict(machine),
        "settings": {
            "batch_size": settings.batch_size,
            "batch_window_ms": settings.batch_window_ms,
            "partitions": settings.partitions,
            "namespace": settings.namespace,
            "kafka_rebalance_timeout": settings.kafka_rebalance_timeout,
        },
        "broker": dict(broker),
        "load": dict(load),
        "publish": dict(publish),
        "warmup": dict(warmup),
        "drain": {
            "bare_faust": bare_figures,
            "bare_faust_right_after": bare_right_after and bare_right_after.as_dict(),
            "shoppulse": shoppulse_figures,
            "bare_mean_events_per_second": _round(bare_mean, 1),
            "ratio": _round(ratio(shoppulse.rate, bare_mean), 3),
            "ratio_to_each": [_round(ratio(shoppulse.rate, rate), 3) for rate in bare_rates],
        },
        "latency": {
            "load_base": "given" if latency_base is not None else "shoppulse_drain",
            "load_base_events_per_second": _round(
                latency_base if latency_base is not None else shoppulse.rate, 1
            ),
            "shoppulse": [dict(phase) for phase in latency.get("shoppulse", ())],
            "bare_faust": [dict(phase) for phase in latency.get("bare_faust", ())],
        },
        "memory": dict(memory),
        "cpu": {
            "shoppulse_worker_seconds_per_1k_events": shoppulse_figures[
                "worker_cpu_seconds_per_1k_events"
            ],
            "bare_worker_seconds_per_1k_events": bare_figures["worker_cpu_seconds_per_1k_events"],
            "redis_seconds_per_1k_events": shoppulse_figures["redis_cpu_seconds_per_1k_events"],
        },
        "timings_seconds": dict(timings),
        "notes": list(NOTES),
    }
    report["floors"] = evaluate_floors(report)
    return {key: report[key] for key in REPORT_KEYS}


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def report_table(report: Mapping[str, Any]) -> Table:
    drain, memory, cpu, floors = (
        report["drain"],
        report["memory"],
        report["cpu"],
        report["floors"],
    )
    table = Table(title=f"shoppulse bench ({report['mode']}, {report['duration_seconds']:.0f}s)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("note")
    bare, ours = drain["bare_faust"], drain["shoppulse"]
    right_after = drain.get("bare_faust_right_after")
    if right_after:
        table.add_row(
            "bare Faust drain",
            f"{_fmt(right_after['events_per_second'])} / "
            f"{_fmt(bare['events_per_second'], ' ev/s')}",
            "decode only: right after ShopPulse's drain / at the end; the ratio uses their mean",
        )
    else:
        table.add_row("bare Faust drain", _fmt(bare["events_per_second"], " ev/s"), "decode only")
    busy = ours.get("machine_busy_cores")
    table.add_row(
        "ShopPulse drain",
        _fmt(ours["events_per_second"], " ev/s"),
        "all the work" + ("" if busy is None else f"; machine {busy:.1f} cores busy"),
    )
    met = "met" if floors["drain_ratio_met"] else "NOT met"
    table.add_row(
        "ratio", _fmt(drain["ratio"], "x", 2), f"floor {FLOOR_DRAIN_RATIO}x ({met}), aim 0.8x"
    )
    phases = [("click→recs", p) for p in report["latency"]["shoppulse"]]
    phases += [("bare: click→decoded", p) for p in report["latency"]["bare_faust"]]
    for what, phase in phases:
        lat = phase["latency"]
        cap = lat.get("censored_at_ms") if lat.get("censored") else None

        def ms(value: float | None, unit: str = "", cap: float | None = cap) -> str:
            bound = "≥" if cap is not None and value is not None and value >= cap else ""
            return bound + _fmt(value, unit, 1)

        note = f"p50/p95/p99 of {lat['count']} probes at {_fmt(phase['achieved_rate'], ' ev/s')}"
        if lat.get("censored"):
            note += f"; {lat['censored']} over {_fmt(cap, ' ms')} (≥: lower bound)"
        if (phase.get("catch_up_seconds") or 0.0) > 0.5:
            note += f"; {phase['catch_up_seconds']:.1f}s behind at the end"
        if phase.get("machine_busy_cores") is not None:
            note += f"; machine {phase['machine_busy_cores']:.1f} cores busy"
        table.add_row(
            f"{what} @ {phase['load_fraction']:.0%}",
            f"{ms(lat['p50_ms'])} / {ms(lat['p95_ms'])} / {ms(lat['p99_ms'], ' ms')}",
            note,
        )
    table.add_row(
        "Redis per user",
        _fmt(memory["redis"]["per_user_bytes"], " B"),
        f"max sampled {_fmt(memory['redis']['max_user_bytes'], ' B')}, "
        f"{_fmt(memory['redis']['users'])} users",
    )
    table.add_row(
        "Redis per item",
        _fmt(memory["redis"]["per_item_bytes"], " B"),
        f"{_fmt(memory['redis']['items'])} items",
    )
    table.add_row(
        "worker RSS",
        _mib(memory["shoppulse_worker"]["rss_bytes"]),
        f"bare: {_mib(memory['bare_worker']['rss_bytes'])}",
    )
    # Per-event cost under a steady load, where batches are smaller than in the drain: why
    # latency at a fraction of the drain rate can be close to saturation.
    under_load = {
        kind: "".join(
            f"; at {p['load_fraction']:.0%} load: "
            + _fmt(p.get(f"{kind}_cpu_seconds_per_1k_events"), " s/1k ev", 3)
            for p in report["latency"]["shoppulse"]
        )
        for kind in ("worker", "redis")
    }
    table.add_row(
        "worker CPU",
        _fmt(cpu["shoppulse_worker_seconds_per_1k_events"], " s/1k ev", 3),
        f"bare: {_fmt(cpu['bare_worker_seconds_per_1k_events'], ' s/1k ev', 3)}"
        + under_load["worker"],
    )
    table.add_row(
        "Redis CPU",
        _fmt(cpu["redis_seconds_per_1k_events"], " s/1k ev", 3),
        "during the drain" + under_load["redis"],
    )
    machine = report["machine"]
    loads = [machine.get("load_average_at_start"), machine.get("load_average_at_end")]
    table.add_row(
        "machine",
        f"{machine.get('cpus')} CPUs",
        "1-min load average at start / end: "
        + " / ".join("-" if load is None else f"{load[0]:.2f}" for load in loads)
        + " (other work on the machine skews every figure)",
    )
    return table


# -- the run -----------------------------------------------------------------------------------
def run_bench(
    settings: Settings,
    quick: bool,
    out_path: Path,
    console: Console,
    latency_base: float | None = None,
    drain_only: bool = False,
    latency_loads: Sequence[float] = (),
) -> dict[str, Any]:
    """Run the whole bench (see the module docstring); print a table, write the JSON report to
    ``out_path`` and return it. ``latency_base`` (events/s) fixes what the latency phases'
    loads are fractions of, so two versions of the code are compared at the same load;
    ``latency_loads`` replaces those fractions (:func:`with_latency_loads`); ``drain_only``
    skips the latency phases (:func:`without_latency`)."""
    plan = QUICK if quick else FULL
    if latency_loads:
        plan = with_latency_loads(plan, latency_loads)
    if drain_only:
        plan = without_latency(plan)
    if settings.redis_cluster:  # its memory figures read one server's INFO
        raise ShopPulseError("the bench measures a single Redis: unset SHOPPULSE_REDIS_CLUSTER")
    if not localstack.redis_reachable(settings.redis_dsn):
        raise ShopPulseError("Redis is not reachable (SHOPPULSE_REDIS_URL)")
    log_dir = Path(tempfile.mkdtemp(prefix="shoppulse-bench-"))
    with ExitStack() as stack:
        owns_broker = not localstack.kafka_reachable(settings.kafka_bootstrap)
        broker_pid = None
        if owns_broker:
            with console.status("starting a Tansu broker"):
                broker_log = log_dir / "broker.log"
                server = localstack.Broker(port=localstack.free_port(), log_path=broker_log)
                started = stack.enter_context(server)
            bootstrap = started.bootstrap
            broker_pid = started.process.pid if started.process is not None else None
            broker = {"kind": "tansu, started for the run (memory only)", "bootstrap": bootstrap}
        else:
            bootstrap = settings.kafka_bootstrap
            broker = {"kind": "configured", "bootstrap": bootstrap}
        bench_settings = settings.model_copy(
            update={
                "namespace": f"bench{uuid.uuid4().hex[:8]}",
                "kafka_bootstrap": bootstrap,
                "web_enabled": False,
                "kafka_rebalance_timeout": min(
                    settings.kafka_rebalance_timeout, BENCH_REBALANCE_TIMEOUT
                ),
            }
        )
        bench = _Bench(
            bench_settings, plan, console, log_dir, owns_broker, latency_base, broker_pid
        )
        try:
            report = asyncio.run(bench.run(broker))
        finally:
            # The workers' Faust data folders are the run's own (named after its namespace).
            for app_id in (bench.ns, *bare_runs(bench.ns)):
                if faust_datadir(app_id).is_dir():
                    shutil.rmtree(faust_datadir(app_id))
    shutil.rmtree(log_dir)  # kept when the run failed: the error names the log
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    console.print(report_table(report))
    console.print(f"figures written to {out_path}")
    return report


@dataclass(frozen=True, slots=True)
class _Target:
    """A running worker under measurement: where it counts events, and which key changes
    when it has handled a probe user's click."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stats_key: str
    probe_key: Callable[[str], str]
    group: str  # its Kafka consumer group

    def check(self) -> None:
        if self.process.poll() is not None:
            raise ShopPulseError(
                f"the {self.name} worker exited with {self.process.returncode}; last lines of "
                f"{self.log_path}:\n{_log_tail(self.log_path)}"
            )


class _Bench:
    def __init__(
        self,
        settings: Settings,
        plan: BenchPlan,
        console: Console,
        log_dir: Path,
        owns_broker: bool,
        latency_base: float | None = None,
        broker_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.broker_pid = broker_pid  # the broker the bench started, if it did
        self.latency_base = latency_base
        self.plan = plan
        self.console = console
        self.log_dir = log_dir
        self.owns_broker = owns_broker
        self.ns = settings.namespace
        self.keys = Keys(self.ns)
        self.topics = Topics(self.ns)
        self.env = settings_env(settings)
        self.world = build_world(plan.load)
        self.ends: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self.redis: aioredis.Redis = connect(settings.redis_dsn, decode=False)
        self.last_ts = plan.load.start_ts  # latest event time published so far
        self.timings: dict[str, float] = {}
        self.probe_users = [f"{PROBE_USER_PREFIX}{n}" for n in range(plan.probe_users)]
        self.probe_items = self._popular_items()
        self.probes_sent = 0
        self.phases = 0
        self._next_consumed_check = 0.0

    @contextmanager
    def _timed(self, name: str, status: str) -> Iterator[None]:
        began = time.monotonic()
        with self.console.status(status):
            yield
        self.timings[name] = round(time.monotonic() - began, 2)

    # -- orchestration --------------------------------------------------------------------------
    async def run(self, broker: Mapping[str, Any]) -> dict[str, Any]:
        started_at, started = time.time(), time.monotonic()
        machine: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        try:
            async with (
                _producer(self.settings.kafka_bootstrap, linger_ms=5) as self.producer,
                _producer(self.settings.kafka_bootstrap, linger_ms=0) as self.probe_producer,
            ):
                report = await self._run(broker, machine)
            report["duration_seconds"] = round(time.monotonic() - started, 1)
            report["started_at"] = round(started_at, 3)
            return report
        finally:
            await self._cleanup()

    async def _run(self, broker: Mapping[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
        plan = self.plan
        used_before = await self._used_memory()
        with self._timed("setup", "creating topics and generating the synthetic load"):
            await self._create_topics()
            load, events = self._generate()
        log_path = self.log_dir / "shoppulse-worker.log"
        with localstack.worker_process(self.env, log_path, "warning") as process:
            ours = _Target(
                "ShopPulse", process, log_path, self.keys.stats(), self.keys.recs, self.ns
            )
            warmup = await self._load_catalog(ours)
            publish = await self._publish_load(events)
            with self._timed(
                "shoppulse_drain", f"ShopPulse worker: draining {len(events):,} events"
            ):
                shoppulse = await self._watch(ours, len(events), plan.warmup_events)
            bare_right_after = None
            if plan.bare_right_after:
                with self._timed(
                    "bare_drain_right_after", f"bare Faust worker: draining {len(events):,} events"
                ):
                    bare_right_after = await self._bare_drain(RIGHT_AFTER, len(events))
            latency = []
            base = self.latency_base or shoppulse.rate
            if base and plan.latency_fractions:
                with self._timed("probe_warmup", "warming up the probe users"):
                    await self._warm_probe_users(ours)
                for fraction in plan.latency_fractions:
                    latency.append(await self._latency_phase(ours, fraction, base))
            with self._timed("memory", "sampling Redis memory"):
                memory = await self._memory(used_before)
            memory["shoppulse_worker"] = process_memory(process.pid)

        everything = sum(self._user_ends().values())
        with self._bare_worker("") as bare_target:
            with self._timed("bare_drain", f"bare Faust worker: draining {everything:,} events"):
                bare = await self._watch(bare_target, everything, plan.warmup_events)
                bare.self_reported_rate = await self._self_reported_rate(everything, bare_target)
            bare_latency = []
            if base:
                for fraction in plan.bare_latency_fractions:
                    phase = await self._latency_phase(bare_target, fraction, base)
                    bare_latency.append(phase)
            memory["bare_worker"] = process_memory(bare_target.process.pid)

        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return build_report(
            plan=plan,
            settings=self.settings,
            broker={**broker, "topics_deleted": not self.owns_broker},
            load=load,
            publish=publish,
            warmup=warmup,
            bare=bare,
            bare_right_after=bare_right_after,
            latency_base=self.latency_base,
            shoppulse=shoppulse,
            latency={"shoppulse": latency, "bare_faust": bare_latency},
            memory=memory,
            machine=machine,
            timings=self.timings,
        )

    def _generate(self) -> tuple[dict[str, Any], list[UserEvent]]:
        plan, spec = self.plan, self.plan.load
        began = time.monotonic()
        count = plan.warmup_events + plan.drain_events
        events = generate_user_events(self.world, count, 1, spec.start_ts, "b")
        seconds = time.monotonic() - began
        self.last_ts = max(float(document["ts"]) for _, document in events)
        load = {
            "seed": spec.seed,
            "items": spec.items,
            "users": spec.users,
            "categories": spec.categories,
            "items_out_of_stock": int((~self.world.in_stock).sum()),
            "item_zipf": spec.item_zipf,
            "user_zipf": spec.user_zipf,
            "catalog_events": spec.items,
            "warmup_events": plan.warmup_events,
            "drain_events": plan.drain_events,
            "users_active": len({document["user_id"] for _, document in events}),
            "mix": event_mix(events),
            "generation_seconds": round(seconds, 2),
        }
        return load, events

    async def _create_topics(self) -> None:
        topics = self.topics
        names = [topics.clicks, topics.orders, topics.catalog, topics.recommendations]
        await ensure_topics(self.settings.kafka_bootstrap, names, self.settings.partitions)
        await ensure_topics(self.settings.kafka_bootstrap, [topics.deadletter], 1)

    async def _load_catalog(self, target: _Target) -> dict[str, Any]:
        """The catalog first, through the worker, until every item is stored."""
        catalog = encode_catalog(catalog_documents(self.world), self.topics)
        with self._timed("catalog", f"catalog: {len(catalog):,} items through the worker"):
            await self._publish(catalog)

            async def stored() -> bool:
                return await self._catalog_stored() == len(catalog)

            await self._until(stored, "the catalog to be stored", target)
        return {"catalog_items": len(catalog), "events": self.plan.warmup_events}

    async def _publish_load(self, events: list[UserEvent]) -> dict[str, Any]:
        """The warm-up and drain slices, all of them before the drain window opens: it opens
        at the first poll after this that sees more than the warm-up taken in."""
        messages = encode_user_events(events, self.topics)
        with self._timed("publish", f"publishing {len(messages):,} events"):
            sent, seconds = await self._publish(messages)
        return {
            "events": sent,
            "seconds": round(seconds, 2),
            "events_per_second": round(sent / seconds, 1),
        }

    @contextmanager
    def _bare_worker(self, run: str) -> Iterator[_Target]:
        """A bare worker for ``run`` (its own consumer group and stats: see bare_namespace),
        stopped on exit."""
        namespace = bare_namespace(self.ns, run)
        keys, log_path = Keys(namespace), self.log_dir / f"bare-worker{run}.log"
        argv = ["-m", "shoppulse.bench_bare", *([run] if run else [])]
        with child_process(argv, self.env, log_path) as process:
            yield _Target("bare Faust", process, log_path, keys.stats(), keys.recs, namespace)

    async def _bare_drain(self, run: str, expected: int) -> DrainResult:
        """A bare worker's drain of the user events published so far, in its own consumer
        group: measured right after the ShopPulse worker's, so that the ratio does not hang
        on one measurement a minute or more away from it on a machine whose speed drifts."""
        with self._bare_worker(run) as target:
            result = await self._watch(target, expected, self.plan.warmup_events)
            result.self_reported_rate = await self._self_reported_rate(expected, target)
        return result

    def _user_ends(self) -> dict[tuple[str, int], int]:
        """The acked log ends of the user-event partitions (what every worker reads)."""
        user_topics = {self.topics.clicks, self.topics.orders}
        return {tp: end for tp, end in self.ends.items() if tp[0] in user_topics}

    async def _self_reported_rate(self, expected: int, target: _Target) -> float | None:
        """A bare worker's own account: its first batch to its last, by its clock."""
        first_at, first_n, last_at = await self.redis.hmget(
            target.stats_key, "first_at", "first_n", "last_at"
        )
        if not (first_at and first_n and last_at):
            return None
        return drain_rate(expected, int(first_n), float(last_at) - float(first_at))

    # -- latency --------------------------------------------------------------------------------
    def _popular_items(self) -> list[str]:
        """Popular in-stock items, which probe users click."""
        order = np.argsort(-self.world.item_weight)
        return [self.world.item_id(int(i)) for i in order if self.world.in_stock[i]][:200]

    def _probe_click(self, user: str, event_id: str, item: str, ts: float) -> Outgoing:
        document = {
            "event_id": event_id,
            "type": "click",
            "user_id": user,
            "item_id": item,
            "ts": ts,
        }
        return (self.topics.clicks, user.encode(), orjson.dumps(document))

    async def _warm_probe_users(self, target: _Target) -> None:
        """Two clicks per probe user, so the probes measure updates of known users."""
        messages = [
            self._probe_click(
                user,
                f"probe-warm-{n}-{k}",
                self.probe_items[(2 * n + k) % len(self.probe_items)],
                self.last_ts,
            )
            for n, user in enumerate(self.probe_users)
            for k in range(2)
        ]
        await self._publish(messages)
        keys = [target.probe_key(user) for user in self.probe_users]

        async def all_have_recs() -> bool:
            return int(await self.redis.exists(*keys)) == len(keys)

        await self._until(all_have_recs, "the probe users' first recommendations", target)

    async def _latency_phase(
        self, target: _Target, fraction: float, max_rate: float
    ) -> dict[str, Any]:
        """A steady load at ``fraction`` of ``max_rate`` (probes included), probes after a
        warm-up, then a wait until the worker has taken in everything that was sent."""
        plan = self.plan
        rate = fraction * max_rate
        background_rate = max(rate - plan.probe_rate, 1.0)
        duration = plan.latency_warmup_seconds + plan.latency_probe_seconds
        self.phases += 1
        seed = 100 + self.phases  # each phase its own (deterministic) slice of the shop
        load = generate_user_events(
            self.world, math.ceil(background_rate * duration), seed, self.last_ts, f"l{seed}-"
        )
        self.last_ts = max(self.last_ts, max(float(d["ts"]) for _, d in load))
        messages = encode_user_events(load, self.topics)
        name = f"{target.name} at {fraction:.0%} load ({rate:,.0f} events/s)"
        with self._timed(f"latency {name}", f"latency: {name}"):
            baseline = await self._seen(target.stats_key)
            before = await self._read_cpu(target.process.pid)
            background = asyncio.create_task(self._publish(messages, background_rate))
            try:
                await asyncio.sleep(plan.latency_warmup_seconds)
                results = await self._probe(target, plan.latency_probe_seconds)
            finally:
                sent, seconds = await background
            published = sent + results.sent
            published_at = time.monotonic()
            undelivered = await self._watch_total(target, baseline + published, published)
            caught_up = time.monotonic() - published_at
            used = (await self._read_cpu(target.process.pid)).used_since(before)

        def per_1k(seconds: float | None) -> float | None:
            return _round(per_thousand(seconds, published), 4)

        return {
            "load_fraction": fraction,
            "target_rate": round(rate, 1),
            "achieved_rate": round(published / seconds, 1),
            "events": published,
            "seconds": round(seconds, 2),
            "catch_up_seconds": round(caught_up, 3),
            "probes": results.sent,
            "timed_out": results.timed_out,
            "changed_before_ack": results.changed_before_ack,
            "skipped_busy": results.skipped_busy,
            "undelivered": undelivered,
            "polls_per_second": round(results.polls / max(results.poll_seconds, 1e-9), 1),
            "latency": latency_summary(results.latencies, censored=results.timed_out),
            "worker_cpu_seconds_per_1k_events": per_1k(used.worker),
            "redis_cpu_seconds_per_1k_events": per_1k(used.redis),
            # What else the machine runs meanwhile: the bench itself (the load generator and
            # the probes), the broker when the bench started it, and everything together.
            "bench_cpu_seconds_per_1k_events": per_1k(used.bench),
            "broker_cpu_seconds_per_1k_events": per_1k(used.broker),
            "machine_busy_cores": _round(used.busy_cores, 2),
        }

    async def _probe(self, target: _Target, duration: float) -> ProbeResults:
        """Probe clicks at the plan's rate for ``duration`` seconds, one outstanding per probe
        user at a time, while a poller watches the outstanding users' keys."""
        results = ProbeResults()
        outstanding: dict[str, _Probe] = {}
        done = asyncio.Event()

        def settle(probe: _Probe, now: float) -> None:
            if probe.acked_at is not None and probe.changed_at is not None:
                if probe.changed_at < probe.acked_at:
                    results.changed_before_ack += 1
                results.latencies.append(max(probe.changed_at - probe.acked_at, 0.0))
                del outstanding[probe.user]
            elif probe.acked_at is not None and now - probe.acked_at > PROBE_TIMEOUT_SECONDS:
                results.timed_out += 1
                del outstanding[probe.user]

        async def poll() -> None:
            began = time.monotonic()
            deadline = began + duration + PROBE_TIMEOUT_SECONDS + 5.0
            while (not done.is_set() or outstanding) and time.monotonic() < deadline:
                if outstanding:
                    waiting = list(outstanding.values())
                    values = await self.redis.mget([p.key for p in waiting])
                    now = time.monotonic()
                    results.polls += 1
                    for probe, value in zip(waiting, values, strict=True):
                        if probe.changed_at is None and value != probe.baseline:
                            probe.changed_at = now
                        if outstanding.get(probe.user) is probe:
                            settle(probe, now)
                await asyncio.sleep(PROBE_POLL_SECONDS)
            results.poll_seconds = time.monotonic() - began

        poller = asyncio.create_task(poll())
        try:
            began = time.monotonic()
            interval = 1.0 / self.plan.probe_rate
            for n in range(math.ceil(duration * self.plan.probe_rate)):
                delay = began + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                target.check()
                idle = [u for u in self.probe_users if u not in outstanding]
                if not idle:
                    results.skipped_busy += 1
                    continue
                user = idle[n % len(idle)]
                probe = await self._send_probe(target, user, outstanding)
                results.sent += 1
                if outstanding.get(user) is probe:
                    settle(probe, time.monotonic())
        finally:
            done.set()
            await poller
        results.timed_out += len(outstanding)  # still unsettled when the poller gave up
        return results

    async def _send_probe(
        self, target: _Target, user: str, outstanding: dict[str, _Probe]
    ) -> _Probe:
        """Send one probe click and wait for the broker's ack; the probe is outstanding (and
        watched by the poller) from just before it is sent."""
        key = target.probe_key(user)
        baseline = await self.redis.get(key)
        probe = _Probe(user, key, baseline if isinstance(baseline, bytes) else None)
        outstanding[user] = probe
        self.probes_sent += 1
        n = self.probes_sent
        topic, key_bytes, value = self._probe_click(
            user, f"probe-{self.ns}-{n}", self.probe_items[n % len(self.probe_items)], self.last_ts
        )
        ack = await self.probe_producer.send(topic, value, key=key_bytes)
        await ack
        probe.acked_at = time.monotonic()
        return probe

    # -- memory ---------------------------------------------------------------------------------
    async def _memory(self, used_before: int | None) -> dict[str, Any]:
        keys, r = self.keys, self.redis
        samples = self.plan.memory_samples
        users_total = int(await r.scard(keys.users()))
        users = [_text(u) for u in await r.srandmember(keys.users(), samples) or []]
        rng = np.random.default_rng(self.plan.load.seed)
        n_items = self.world.spec.items
        picked = rng.choice(n_items, min(samples, n_items), replace=False)
        items = [self.world.item_id(int(i)) for i in sorted(picked.tolist())]
        per_user_kinds = {"profile": keys.profile, "ustate": keys.user_state, "recs": keys.recs}
        per_item_kinds = {
            "item": keys.item,
            "cooc": keys.cooccurrence,
            "sim": keys.neighbours,
            "nbc": keys.neighbour_counts,
        }
        user_sizes = await self._sizes(users, per_user_kinds)
        item_sizes = await self._sizes(items, per_item_kinds)
        categories = [self.world.category(c) for c in range(self.world.spec.categories)]
        shared_items = [keys.item_norms(), keys.popularity(), keys.out_of_stock()]
        shared_items += [keys.category_popularity(c) for c in categories]
        shared_item_bytes = sum(await self._usage(shared_items))
        users_set_bytes = sum(await self._usage([keys.users()]))
        per_user_totals = [sum(sizes) for sizes in zip(*user_sizes.values(), strict=True)]
        per_item_totals = [sum(sizes) for sizes in zip(*item_sizes.values(), strict=True)]
        per_user = _mean(per_user_totals) + users_set_bytes / max(users_total, 1)
        per_item = _mean(per_item_totals) + shared_item_bytes / n_items
        used_after = await self._used_memory()
        return {
            "redis": {
                "method": "MEMORY USAGE key SAMPLES 0 over a random sample of each kind "
                "(users by SRANDMEMBER of {ns}:users, items uniformly from the catalog), plus "
                "the per-user share of {ns}:users and the per-item share of norms, popularity, "
                "per-category popularity and out-of-stock",
                "users": users_total,
                "items": n_items,
                "sampled_users": len(users),
                "sampled_items": len(items),
                "per_user_bytes": round(per_user, 1),
                "per_user_by_kind": {k: round(_mean(v), 1) for k, v in user_sizes.items()},
                "max_user_bytes": max(per_user_totals, default=None),
                "per_item_bytes": round(per_item, 1),
                "per_item_by_kind": {k: round(_mean(v), 1) for k, v in item_sizes.items()},
                "max_item_bytes": max(per_item_totals, default=None),
                "estimated_total_bytes": round(per_user * users_total + per_item * n_items),
                "used_memory_delta_bytes": _delta_int(used_before, used_after),
            }
        }

    async def _sizes(
        self, ids: list[str], kinds: Mapping[str, Callable[[str], str]]
    ) -> dict[str, list[int]]:
        return {kind: await self._usage([key_of(i) for i in ids]) for kind, key_of in kinds.items()}

    async def _usage(self, keys: list[str]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return [int(size or 0) for size in await pipe.execute()]

    async def _used_memory(self) -> int | None:
        info = await self.redis.info("memory")
        value = info.get("used_memory")
        return int(value) if value is not None else None

    async def _read_cpu(self, worker_pid: int) -> CpuReading:
        broker = None if self.broker_pid is None else process_cpu_seconds(self.broker_pid)
        return CpuReading(
            process_cpu_seconds(worker_pid),
            await self._redis_cpu(),
            time.process_time(),
            broker,
            machine_ticks(),
        )

    async def _redis_cpu(self) -> float | None:
        info = await self.redis.info("cpu")
        try:
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        except (KeyError, TypeError, ValueError):
            return None

    # -- Kafka ----------------------------------------------------------------------------------
    async def _publish(
        self, messages: Sequence[Outgoing], rate: float | None = None
    ) -> tuple[int, float]:
        """Send messages in order (at most ``rate`` per second if given), in record batches
        (:func:`send_batched`, as a shop's producers would batch), and record where each
        partition's log ends. Returns (sent, seconds)."""
        began = time.monotonic()
        sent = await send_batched(self.producer, messages, rate)
        for tp, end in sent.ends.items():
            self.ends[tp] = max(self.ends.get(tp, 0), end)
        return sent.count, time.monotonic() - began

    # -- waiting --------------------------------------------------------------------------------
    async def _seen(self, stats_key: str) -> int:
        applied, duplicates = await self.redis.hmget(stats_key, "applied", "duplicates")
        return int(applied or 0) + int(duplicates or 0)

    async def _watch(self, target: _Target, expected: int, window_from: int) -> DrainResult:
        """Poll the target's counter until ``expected`` events are in. The drain window opens
        at the first poll that sees more than ``window_from`` (the warm-up, and at least one
        batch) and closes at the first that sees them all."""
        pid = target.process.pid
        began = time.monotonic()
        deadline = began + WORKER_START_TIMEOUT + expected / MIN_EXPECTED_RATE
        opened_at: float | None = None
        before_window = 0
        first: CpuReading | None = None  # when the window opens
        last_count, moved_at = -1, began
        while True:
            count = await self._seen(target.stats_key)
            now = time.monotonic()
            if count != last_count:
                last_count, moved_at = count, now
            if opened_at is None and count > window_from:
                opened_at, before_window = now, count
                first = await self._read_cpu(pid)
            if count < expected:
                target.check()
            # Done when all are in, or when the broker has handed over all it will (the
            # window then closes at the last event taken in).
            if count >= expected or (
                opened_at is not None and await self._consumed_short(target, moved_at)
            ):
                closed_at = now if count >= expected else moved_at
                used = (await self._read_cpu(pid)).used_since(first)
                return DrainResult(
                    min(count, expected),
                    before_window,
                    closed_at - (opened_at or closed_at),
                    used.worker,
                    used.redis,
                    startup_seconds=(opened_at or now) - began,
                    undelivered=max(0, expected - count),
                    machine_busy_cores=used.busy_cores,
                )
            if now > deadline or (count > 0 and now - moved_at > STALL_SECONDS):
                raise await self._stalled(target, count, expected)
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    async def _watch_total(self, target: _Target, total: int, added: int) -> int:
        """Wait until the target's counter reaches ``total`` (``added`` of them recent); fail
        if it stops moving or takes far too long. Returns how many it was never handed (see
        ``consumed_through``)."""
        last_count, moved_at = -1, time.monotonic()
        deadline = moved_at + STALL_SECONDS + added / MIN_EXPECTED_RATE
        while (count := await self._seen(target.stats_key)) < total:
            now = time.monotonic()
            if count != last_count:
                last_count, moved_at = count, now
            target.check()
            if await self._consumed_short(target, moved_at):
                return total - count
            if now - moved_at > STALL_SECONDS or now > deadline:
                raise await self._stalled(target, count, total)
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return 0

    async def _consumed_short(self, target: _Target, moved_at: float) -> bool:
        """Whether a count still since ``moved_at`` is final: the worker's group committed
        past every acked event (asked once the count has been still a while, and then every
        ``CONSUMED_CHECK_SECONDS``). Says so on the console when it is."""
        now = time.monotonic()
        if now - moved_at < CONSUMED_CHECK_SECONDS or now < self._next_consumed_check:
            return False
        self._next_consumed_check = now + CONSUMED_CHECK_SECONDS
        try:
            acked, positions = await self._group_positions(target)
        except Exception:  # unanswered: the stall check decides
            return False
        if not consumed_through(acked, positions):
            return False
        self.console.print(
            f"[yellow]the {target.name} worker's group committed past every acked event but "
            f"was handed fewer ({short_partitions(acked, positions)}); the bench goes on with "
            "what it was handed[/yellow]"
        )
        return True

    async def _group_positions(
        self, target: _Target
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], tuple[int, int]]]:
        """The acked ends of the user-event partitions, and for each the broker's log end and
        the target group's committed offset."""
        acked = self._user_ends()
        positions = await partition_positions(self.settings.kafka_bootstrap, target.group, acked)
        return acked, positions

    async def _stalled(self, target: _Target, count: int, expected: int) -> ShopPulseError:
        """The error for a worker that stopped short, with each partition whose broker log end
        (ListOffsets) or the worker group's committed offset is short of what the broker
        acknowledged to the bench: not delivered, or delivered and not finished."""
        message = f"the {target.name} worker took in only {count:,} of {expected:,} events"
        try:
            acked, positions = await self._group_positions(target)
        except Exception as exc:  # the diagnosis is a courtesy: never hide the stall itself
            return ShopPulseError(f"{message} (offsets unread: {exc!r}); see {target.log_path}")
        where = short_partitions(acked, positions)
        return ShopPulseError(f"{message} ({where}); see {target.log_path}")

    async def _until(
        self, probe: Callable[[], Awaitable[bool]], what: str, target: _Target
    ) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not await probe():
            target.check()
            if time.monotonic() > deadline:
                raise ShopPulseError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def _catalog_stored(self) -> int:
        """How many catalog items are in Redis (EXISTS over every item key, in chunks)."""
        keys = [self.keys.item(self.world.item_id(i)) for i in range(self.world.spec.items)]
        found = 0
        for start in range(0, len(keys), 5000):
            found += int(await self.redis.exists(*keys[start : start + 5000]))
        return found

    # -- cleanup --------------------------------------------------------------------------------
    async def _cleanup(self) -> None:
        """Delete the namespace's Redis keys (and its topics on a broker we did not start)."""
        try:
            for pattern in (f"{self.ns}:*", *(f"{run}:*" for run in bare_runs(self.ns))):
                batch: list[bytes] = []
                async for key in self.redis.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        await self.redis.delete(*batch)
                        batch.clear()
                if batch:
                    await self.redis.delete(*batch)
            if not self.owns_broker:
                await self._delete_topics()
        finally:
            await self.redis.aclose()

    async def _delete_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            names = [
                name
                for name in await admin.list_topics()
                if name.startswith((f"{self.ns}.", f"{self.ns}-"))
            ]
            if names:
                await admin.delete_topics(names)
        except Exception as exc:  # the figures are in; a leftover topic is only untidy
            self.console.print(f"[yellow]could not delete the bench topics:[/] {exc!r}")
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def _producer(bootstrap: str, linger_ms: int) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", max_batch_size=262_144
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mean(values: Sequence[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _delta_int(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before
