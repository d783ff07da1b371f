"""``shoppulse bench --soak MINUTES``: a sustained load for minutes, to show that the worker's
memory stays flat, Redis growth is bounded by the caps, and the backlog does not grow.

One run, in a fresh namespace whose Redis keys are deleted at the end:

1. The synthetic shop of ``shoppulse bench``, small (400 users, 600 items) so that every
   per-user and per-item structure reaches its cap during the run; state must then stop
   growing.
2. Unless a rate is given, the worker's drain rate is measured first (a backlog published
   before it starts, taken in as fast as it can), and the soak runs at half of it.
3. Events are published at that steady rate for the given minutes. Every few seconds: worker
   RSS (``/proc/PID/status``), Redis ``used_memory``, the namespace's key count, and the
   backlog = events acknowledged by the broker minus events the worker has taken in (from
   ``{ns}:stats``; Tansu's end offsets are not trusted, see DESIGN.md).
4. Verdicts on the second half of the run (the first half is warm-up: caches, caps filling):
   least-squares slopes of RSS, Redis memory and backlog, and their growth from the start of
   the second half to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from shoppulse import localstack
from shoppulse.bench import (
    LoadSpec,
    build_world,
    catalog_documents,
    encode_catalog,
    encode_user_events,
    generate_user_events,
    process_memory,
    settings_env,
)
from shoppulse.errors import ShopPulseError
from shoppulse.kafka import Outgoing, ensure_topics, security_options, send_batched
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.store import RedisStore, connect
from stream.transport import faust_datadir

REPORT_SCHEMA = "shoppulse.soak/1"
# A small shop, so that within minutes its users and items exist and per-user and per-item
# state reaches its caps (dedupe ids, interactions, co-occurrences): from then on Redis must
# stop growing although events keep coming. (With many users, state keeps growing with users
# seen for the first time, which is not what a soak can judge in minutes.)
SPEC = LoadSpec(items=600, users=400, categories=20, seed=7)
SAMPLE_SECONDS = 5.0
CALIBRATION_EVENTS = 20_000
CALIBRATION_WARM_UP = 3_000
CHUNK_SECONDS = 1.0
WORKER_START_TIMEOUT = 90.0
DRAIN_TIMEOUT = 300.0
# Verdict thresholds, on the second half of the run.
RSS_FLAT_MIB_PER_MIN = 2.0
REDIS_FLAT_MIB_PER_MIN = 2.0
BACKLOG_FLAT_SECONDS = 2.0  # the backlog may wobble by this many seconds of load


@dataclass(slots=True)
class Sample:
    t: float  # seconds since the soak started
    published: int
    seen: int
    rss_bytes: int | None
    redis_used_bytes: int  # the whole server (other tenants too)
    namespace_bytes: int  # MEMORY USAGE summed over the namespace's keys
    keys: int

    @property
    def backlog(self) -> int:
        return self.published - self.seen


def slope_per_minute(times: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over ``times`` (seconds), per minute."""
    if len(times) < 3 or max(times) - min(times) <= 0:
        return None
    slope = float(np.polyfit(np.asarray(times, float), np.asarray(values, float), 1)[0])
    return slope * 60.0


def second_half(samples: Sequence[Sample]) -> list[Sample]:
    if not samples:
        return []
    middle = samples[-1].t / 2
    return [s for s in samples if s.t >= middle]


def verdicts(samples: Sequence[Sample], rate: float) -> dict[str, Any]:
    """Is memory flat, Redis growth bounded, the backlog not growing (second half)?"""
    half = second_half(samples)
    times = [s.t for s in half]
    mib = 1024 * 1024
    rss = [s.rss_bytes / mib for s in half if s.rss_bytes is not None]
    rss_slope = slope_per_minute(times[: len(rss)], rss) if len(rss) == len(half) else None
    redis = [s.namespace_bytes / mib for s in half]
    redis_slope = slope_per_minute(times, redis)
    server_slope = slope_per_minute(times, [s.redis_used_bytes / mib for s in half])
    backlog = [float(s.backlog) for s in half]
    backlog_slope = slope_per_minute(times, backlog)
    keys_slope = slope_per_minute(times, [float(s.keys) for s in half])
    return {
        "second_half_from_s": round(times[0], 1) if times else None,
        "worker_rss_mib_per_min": _round(rss_slope, 3),
        "worker_rss_growth_mib": _round(rss[-1] - rss[0], 2) if rss else None,
        "redis_namespace_mib_per_min": _round(redis_slope, 3),
        "redis_namespace_growth_mib": _round(redis[-1] - redis[0], 2) if redis else None,
        "redis_server_used_mib_per_min": _round(server_slope, 3),
        "keys_per_min": _round(keys_slope, 1),
        "backlog_events_per_min": _round(backlog_slope, 1),
        "backlog_max_events": int(max(backlog)) if backlog else None,
        "memory_flat": rss_slope is not None and rss_slope < RSS_FLAT_MIB_PER_MIN,
        "redis_bounded": redis_slope is not None and redis_slope < REDIS_FLAT_MIB_PER_MIN,
        # Growing by less than BACKLOG_FLAT_SECONDS of load over a minute is noise.
        "lag_not_growing": backlog_slope is not None
        and backlog_slope < BACKLOG_FLAT_SECONDS * rate,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def run_soak(
    settings: Settings,
    minutes: float,
    rate: float | None,
    out_path: Path,
    console: Console,
) -> dict[str, Any]:
    """Run the soak (see the module docstring); print a table, write the JSON report to
    ``out_path`` and return it."""
    if minutes <= 0:
        raise ShopPulseError("the soak needs a positive number of minutes")
    if settings.redis_cluster:  # its memory figures read one server's INFO
        raise ShopPulseError("the soak measures a single Redis: unset SHOPPULSE_REDIS_CLUSTER")
    if not localstack.redis_reachable(settings.redis_dsn):
        raise ShopPulseError("Redis is not reachable (SHOPPULSE_REDIS_URL)")
    log_dir = Path(tempfile.mkdtemp(prefix="shoppulse-soak-"))
    with ExitStack() as stack:
        if localstack.kafka_reachable(
            settings.kafka_bootstrap, security=security_options(settings)
        ):
            bootstrap, broker = settings.kafka_bootstrap, "configured"
        else:
            with console.status("starting a Tansu broker"):
                server = localstack.Broker(
                    port=localstack.free_port(), log_path=log_dir / "broker.log"
                )
                bootstrap = stack.enter_context(server).bootstrap
            broker = "tansu, started for the run (memory only)"
        soak_settings = settings.model_copy(
            update={
                "namespace": f"soak{uuid.uuid4().hex[:8]}",
                "kafka_bootstrap": bootstrap,
                "web_enabled": False,
                "kafka_rebalance_timeout": min(settings.kafka_rebalance_timeout, 3.0),
            }
        )
        soak = _Soak(soak_settings, console, log_dir)
        try:
            report = asyncio.run(soak.run(minutes, rate))
        finally:
            if faust_datadir(soak_settings.namespace).is_dir():
                shutil.rmtree(faust_datadir(soak_settings.namespace))
    report["broker"] = broker
    shutil.rmtree(log_dir)  # kept when the run failed: the error names the log
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    console.print(report_table(report))
    console.print(f"figures written to {out_path}")
    return report


def report_table(report: dict[str, Any]) -> Table:
    v = report["verdicts"]
    table = Table(title=f"soak: {report['minutes']} min at {report['rate']:.0f} events/s")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_column("verdict")
    ok = {True: "[green]yes[/]", False: "[red]no[/]"}
    table.add_row(
        "worker RSS slope (2nd half)",
        f"{v['worker_rss_mib_per_min']} MiB/min",
        f"flat: {ok[v['memory_flat']]}",
    )
    table.add_row("worker RSS start → end", _span(report, "rss_mib"), "")
    table.add_row(
        "Redis namespace memory slope (2nd half)",
        f"{v['redis_namespace_mib_per_min']} MiB/min",
        f"bounded: {ok[v['redis_bounded']]}",
    )
    table.add_row("Redis namespace MiB start → end", _span(report, "namespace_mib"), "")
    table.add_row("Redis server used_memory start → end", _span(report, "redis_used_mib"), "")
    table.add_row("namespace keys start → end", _span(report, "keys"), "")
    table.add_row(
        "backlog slope (2nd half)",
        f"{v['backlog_events_per_min']} events/min",
        f"not growing: {ok[v['lag_not_growing']]}",
    )
    table.add_row("backlog max (2nd half)", f"{v['backlog_max_events']} events", "")
    table.add_row(
        "events published / taken in",
        f"{report['published']:,} / {report['seen']:,}",
        f"all in: {ok[report['published'] == report['seen']]}",
    )
    return table


def _span(report: dict[str, Any], name: str) -> str:
    samples = report["samples"]
    return f"{samples[0][name]} → {samples[-1][name]}" if samples else "-"


class _Soak:
    def __init__(self, settings: Settings, console: Console, log_dir: Path) -> None:
        self.settings = settings
        self.console = console
        self.log_dir = log_dir
        self.keys = Keys(settings.namespace)
        self.topics = Topics(settings.namespace)
        self.world = build_world(SPEC)
        self.published = 0
        self.chunk = 0
        self.next_ts = SPEC.start_ts

    async def run(self, minutes: float, rate: float | None) -> dict[str, Any]:
        settings = self.settings
        topics = self.topics
        security = security_options(settings)
        await ensure_topics(
            settings.kafka_bootstrap,
            [topics.clicks, topics.orders, topics.catalog, topics.recommendations],
            settings.partitions,
            security,
        )
        await ensure_topics(settings.kafka_bootstrap, [topics.deadletter], 1, security)
        store = RedisStore(connect(settings.redis_dsn), self.keys)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all", **security
        )
        await producer.start()
        env = settings_env(settings)
        env["SHOPPULSE_REDIS_URL"] = settings.redis_dsn
        for name in ("kafka_sasl_password", "pseudonymise_key"):  # dumped masked
            secret = getattr(settings, name)
            if secret is not None:
                env[f"SHOPPULSE_{name.upper()}"] = secret.get_secret_value()
        log_path = self.log_dir / "worker.log"
        try:
            catalog = encode_catalog(catalog_documents(self.world), topics)
            await self._send(producer, catalog)
            calibration = self._next_events(CALIBRATION_EVENTS) if rate is None else []
            await self._send(producer, calibration)
            with localstack.worker_process(env, log_path, loglevel="warning") as worker:
                self.worker = worker
                measured = await self._drain_rate(store, len(calibration), log_path)
                soak_rate = rate if rate is not None else measured / 2  # type: ignore[operator]
                samples = await self._soak(producer, store, minutes, soak_rate, log_path)
                await self._wait_seen(store, self.published, DRAIN_TIMEOUT, log_path)
                seen = await store.events_seen()
        finally:
            await producer.stop()
            with contextlib.suppress(Exception):
                async for key in store.client.scan_iter(f"{settings.namespace}:*", count=1000):
                    await store.client.delete(key)
            await store.close()
        return {
            "schema": REPORT_SCHEMA,
            "minutes": minutes,
            "rate": soak_rate,
            "measured_drain_rate": _round(measured, 1),
            "rate_source": "given" if rate is not None else "half the measured drain rate",
            "load": asdict(SPEC),
            "published": self.published,
            "seen": seen,
            "verdicts": verdicts(samples, soak_rate),
            "samples": [_sample_row(s) for s in samples],
        }

    def _next_events(self, count: int) -> list[Outgoing]:
        """The next ``count`` user events of the shop, continuing its event time."""
        self.chunk += 1
        events = generate_user_events(
            self.world, count, self.chunk, self.next_ts, prefix=f"c{self.chunk}-"
        )
        self.next_ts = max(d["ts"] for _, d in events) + 1.0
        return encode_user_events(events, self.topics)

    async def _send(self, producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> None:
        await send_batched(producer, messages)
        self.published += sum(1 for topic, _, _ in messages if topic != self.topics.catalog)

    async def _drain_rate(self, store: RedisStore, backlog: int, log_path: Path) -> float | None:
        """Events/s the worker takes in from a standing backlog (after a warm-up slice)."""
        if backlog == 0:
            await self._wait_seen(store, 0, WORKER_START_TIMEOUT, log_path)
            return None
        with self.console.status(f"measuring the drain rate on {backlog:,} events"):
            await self._wait_seen(store, CALIBRATION_WARM_UP, WORKER_START_TIMEOUT, log_path)
            start, seen0 = time.monotonic(), await store.events_seen()
            await self._wait_seen(store, backlog, DRAIN_TIMEOUT, log_path)
            rate = (backlog - seen0) / (time.monotonic() - start)
        self.console.print(f"drain rate: {rate:,.0f} events/s")
        return rate

    async def _wait_seen(
        self, store: RedisStore, count: int, timeout: float, log_path: Path
    ) -> None:
        deadline = time.monotonic() + timeout
        while await store.events_seen() < count or (count == 0 and not await self._started(store)):
            self._check_worker(log_path)
            if time.monotonic() > deadline:
                raise ShopPulseError(f"the worker did not take in {count:,} events in time")
            await asyncio.sleep(0.05)

    async def _started(self, store: RedisStore) -> bool:
        # Without a calibration backlog: the worker is up once it has stored the catalog.
        return bool(await store.client.exists(self.keys.item(self.world.item_id(0))))

    def _check_worker(self, log_path: Path) -> None:
        if self.worker.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise ShopPulseError(f"the worker exited with {self.worker.returncode}:\n{tail}")

    async def _soak(
        self,
        producer: AIOKafkaProducer,
        store: RedisStore,
        minutes: float,
        rate: float,
        log_path: Path,
    ) -> list[Sample]:
        samples: list[Sample] = []
        started = time.monotonic()
        end = started + minutes * 60
        per_chunk = max(1, round(rate * CHUNK_SECONDS))
        next_sample = started
        with self.console.status(f"soaking at {rate:,.0f} events/s") as status:
            while (now := time.monotonic()) < end:
                if now >= next_sample:
                    sample = await self._sample(store, now - started)
                    samples.append(sample)
                    next_sample += SAMPLE_SECONDS
                    status.update(
                        f"soaking at {rate:,.0f} events/s: {sample.t:.0f}s, backlog "
                        f"{sample.backlog:,}, RSS {(sample.rss_bytes or 0) >> 20} MiB"
                    )
                    self._check_worker(log_path)
                chunk_started = time.monotonic()
                await self._send(producer, self._next_events(per_chunk))
                # Steady pace: each chunk is one CHUNK_SECONDS' worth of events.
                await asyncio.sleep(max(0.0, CHUNK_SECONDS - (time.monotonic() - chunk_started)))
            samples.append(await self._sample(store, time.monotonic() - started))
        return samples

    async def _sample(self, store: RedisStore, t: float) -> Sample:
        client = store.client
        used = int((await client.info("memory"))["used_memory"])
        names = [k async for k in client.scan_iter(f"{self.settings.namespace}:*", count=5000)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name)
        namespace_bytes = sum(int(b or 0) for b in await pipe.execute())
        return Sample(
            t=round(t, 2),
            published=self.published,
            seen=await store.events_seen(),
            rss_bytes=process_memory(self.worker.pid)["rss_bytes"],
            redis_used_bytes=used,
            namespace_bytes=namespace_bytes,
            keys=len(names),
        )


def _sample_row(sample: Sample) -> dict[str, Any]:
    mib = 1024 * 1024
    return {
        "t": sample.t,
        "published": sample.published,
        "seen": sample.seen,
        "backlog": sample.backlog,
        "rss_mib": round(sample.rss_bytes / mib, 1) if sample.rss_bytes is not None else None,
        "redis_used_mib": round(sample.redis_used_bytes / mib, 1),
        "namespace_mib": round(sample.namespace_bytes / mib, 2),
        "keys": sample.keys,
    }
