"""The pure parts of ``shoppulse bench``: the synthetic shop (distributions, contract,
determinism), the percentile and drain maths, /proc parsing, the child's environment and the
report's shape. No broker, Redis or worker here; timing stays out of the test suite."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from rich.console import Console

from shoppulse.bench import (
    FULL,
    QUICK,
    REPORT_KEYS,
    BenchPlan,
    CpuReading,
    DrainResult,
    LoadSpec,
    UserEvent,
    World,
    build_report,
    build_world,
    busy_cores,
    catalog_documents,
    consumed_through,
    drain_rate,
    encode_catalog,
    encode_user_events,
    evaluate_floors,
    event_mix,
    generate_user_events,
    latency_summary,
    machine_ticks,
    parse_machine_ticks,
    parse_proc_cpu_seconds,
    parse_proc_status_kb,
    percentile,
    process_cpu_seconds,
    process_memory,
    report_table,
    settings_env,
    short_partitions,
    with_latency_loads,
    without_latency,
    zipf_weights,
)
from shoppulse.bench_bare import PROBE_USER_PREFIX, bare_namespace
from shoppulse.errors import InvalidEvent
from shoppulse.settings import Settings
from stream.events import decode_catalog, decode_click, decode_order
from stream.keys import Topics

SPEC = LoadSpec(items=2_000, users=5_000, categories=20, seed=7)
COUNT = 20_000


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SPEC)


@pytest.fixture(scope="module")
def events(world: World) -> list[UserEvent]:
    return generate_user_events(world, COUNT, 1, SPEC.start_ts, "t")


# -- Zipf --------------------------------------------------------------------------------------
def test_zipf_weights_follow_the_power_law_and_sum_to_one() -> None:
    weights = zipf_weights(1000, 1.2)
    assert math.isclose(float(weights.sum()), 1.0)
    assert all(weights[:-1] > weights[1:])
    assert math.isclose(float(weights[0] / weights[9]), 10**1.2)


def test_zipf_weights_need_at_least_one_rank() -> None:
    with pytest.raises(ValueError):
        zipf_weights(0, 1.0)


# -- the synthetic shop ------------------------------------------------------------------------
def test_the_same_seed_gives_the_same_load_byte_for_byte(world: World) -> None:
    topics = Topics("ns")
    first = encode_user_events(generate_user_events(build_world(SPEC), 3000, 1, 0.0, "a"), topics)
    again = encode_user_events(generate_user_events(build_world(SPEC), 3000, 1, 0.0, "a"), topics)
    other = encode_user_events(generate_user_events(build_world(SPEC), 3000, 2, 0.0, "a"), topics)
    assert first == again
    assert first != other
    assert catalog_documents(build_world(SPEC)) == catalog_documents(build_world(SPEC))


def test_the_load_has_exactly_the_events_asked_for_in_time_order(
    events: list[UserEvent],
) -> None:
    assert len(events) == COUNT
    times = [float(document["ts"]) for _, document in events]
    assert times == sorted(times)
    assert len({document["event_id"] for _, document in events}) == COUNT


def test_mostly_views_with_clicks_carts_and_every_order_status(
    events: list[UserEvent],
) -> None:
    mix = event_mix(events)
    share = {kind: n / COUNT for kind, n in mix.items()}
    assert 0.68 <= share["view"] <= 0.82
    assert 0.08 <= share["click"] <= 0.2
    assert 0.03 <= share["add_to_cart"] <= 0.1
    assert 0.0 < share["remove_from_cart"] < share["add_to_cart"]
    orders = share["order_placed"] + share["order_cancelled"] + share["order_returned"]
    assert 0.01 <= orders <= 0.05
    assert 0 < mix["order_cancelled"] < mix["order_placed"]
    assert 0 < mix["order_returned"] < mix["order_placed"]


def test_item_popularity_and_user_activity_are_heavy_tailed(
    world: World, events: list[UserEvent]
) -> None:
    items = Counter(d["item_id"] for kind, d in events if kind == "clicks")
    total = sum(items.values())
    top_share = sum(n for _, n in items.most_common(SPEC.items // 100)) / total
    assert top_share > 0.15  # the top 1% of items, under a uniform draw: 1%
    heaviest = max(range(SPEC.items), key=lambda i: world.item_weight[i])
    assert f"sku-{heaviest}" in {item for item, _ in items.most_common(10)}

    users = Counter(d["user_id"] for _, d in events)
    top_users = sum(n for _, n in users.most_common(SPEC.users // 100)) / COUNT
    assert top_users > 0.05
    assert len(users) > 500  # and a long tail of occasional visitors


def test_sessions_are_bursts_of_one_user_mostly_in_one_category(
    world: World, events: list[UserEvent]
) -> None:
    sessions: dict[str, list[dict[str, Any]]] = {}
    for kind, document in events:
        if kind == "clicks":
            sessions.setdefault(document["session_id"], []).append(document)
    assert all(len({d["user_id"] for d in s}) == 1 for s in sessions.values())
    mean_length = sum(len(s) for s in sessions.values()) / len(sessions)
    assert 3.0 <= mean_length <= 12.0
    category = world.item_category
    same = total = 0
    for session in sessions.values():
        cats = Counter(category[int(str(d["item_id"]).removeprefix("sku-"))] for d in session)
        same += cats.most_common(1)[0][1]
        total += len(session)
    assert same / total > 0.6


def test_every_event_is_valid_under_the_public_contract(
    world: World, events: list[UserEvent]
) -> None:
    for kind, document in events:
        raw = orjson.dumps(document)
        try:
            decoded = decode_click(raw) if kind == "clicks" else decode_order(raw)
        except InvalidEvent as exc:  # pragma: no cover - the message is the diagnosis
            pytest.fail(f"{document}: {exc}")
        assert decoded.user_id == document["user_id"]
    for document in catalog_documents(world):
        decode_catalog(orjson.dumps(document))


def test_follow_ups_name_an_order_the_same_user_placed_before(
    events: list[UserEvent],
) -> None:
    placed: dict[str, dict[str, Any]] = {}
    follow_ups = 0
    for kind, document in events:
        if kind != "orders":
            continue
        if document["status"] == "placed":
            assert document["items"]
            placed[document["order_id"]] = document
            continue
        follow_ups += 1
        order = placed.get(document["order_id"])
        if order is None:  # its placement may lie before the window (never here: one call)
            pytest.fail(f"{document['status']} of an unknown order {document['order_id']}")
        assert order["user_id"] == document["user_id"]
        assert all(line in order["items"] for line in document["items"])
    assert follow_ups > 0


def test_out_of_stock_items_are_never_put_in_a_cart(world: World, events: list[UserEvent]) -> None:
    in_stock = world.in_stock
    carted = [
        int(str(d["item_id"]).removeprefix("sku-"))
        for kind, d in events
        if kind == "clicks" and d["type"] == "add_to_cart"
    ]
    assert carted
    assert all(in_stock[i] for i in carted)
    assert not all(in_stock)  # the catalog does have some


def test_messages_are_keyed_by_user_and_catalog_by_item(
    world: World, events: list[UserEvent]
) -> None:
    topics = Topics("shop")
    messages = encode_user_events(events[:500], topics)
    for (kind, document), (topic, key, value) in zip(events[:500], messages, strict=True):
        assert topic == (topics.clicks if kind == "clicks" else topics.orders)
        assert key == str(document["user_id"]).encode()
        assert orjson.loads(value) == document
    for topic, key, value in encode_catalog(catalog_documents(world)[:50], topics):
        assert topic == topics.catalog
        assert key == orjson.loads(value)["item_id"].encode()


def test_probe_users_never_appear_in_the_generated_load(
    events: list[UserEvent],
) -> None:
    assert not any(str(d["user_id"]).startswith(PROBE_USER_PREFIX) for _, d in events)


def test_quick_mode_is_a_smaller_version_of_full_mode() -> None:
    assert QUICK.drain_events < FULL.drain_events
    assert QUICK.load.items < FULL.load.items
    assert QUICK.latency_probe_seconds < FULL.latency_probe_seconds
    assert bare_namespace("shop") == "shop-bare"


# -- maths -------------------------------------------------------------------------------------
def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # an observed value, not 2.5


def test_percentiles_of_nothing_and_out_of_range() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds() -> None:
    summary = latency_summary([0.010, 0.020, 0.030, 0.040])
    assert summary == {
        "count": 4,
        "censored": 0,
        "censored_at_ms": 5000.0,
        "mean_ms": 25.0,
        "p50_ms": 20.0,
        "p95_ms": 40.0,
        "p99_ms": 40.0,
        "max_ms": 40.0,
    }
    empty = latency_summary([])
    assert empty["count"] == 0
    assert empty["p99_ms"] is None


def test_probes_that_never_completed_count_at_the_timeout() -> None:
    """Dropping them would flatter the tail; counting them at the timeout gives a lower bound."""
    summary = latency_summary([0.1] * 98, censored=2, censored_at=5.0)
    assert summary["count"] == 100
    assert summary["p95_ms"] == 100.0
    assert summary["p99_ms"] == 5000.0
    assert summary["max_ms"] == 5000.0


def test_drain_rate_counts_only_what_came_in_inside_the_window() -> None:
    assert drain_rate(10_500, 500, 2.0) == 5000.0
    assert drain_rate(500, 500, 2.0) is None
    assert drain_rate(10_000, 0, 0.0) is None
    result = DrainResult(10_500, 500, 2.0, worker_cpu_seconds=3.0, redis_cpu_seconds=1.0)
    figures = result.as_dict()
    assert figures["events_per_second"] == 5000.0
    assert figures["events_in_window"] == 10_000
    assert figures["worker_cpu_seconds_per_1k_events"] == 0.3
    assert figures["redis_cpu_seconds_per_1k_events"] == 0.1


# -- processes ---------------------------------------------------------------------------------
def test_proc_stat_cpu_survives_odd_process_names() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0"
    assert parse_proc_cpu_seconds(stat, 100) == 3.0


def test_proc_status_fields_are_read_in_bytes() -> None:
    status = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n"
    assert parse_proc_status_kb(status, "VmRSS") == 1024 * 1024
    assert parse_proc_status_kb(status, "VmHWM") == 2048 * 1024
    assert parse_proc_status_kb(status, "VmSwap") is None


def test_machine_ticks_count_all_but_idle_and_iowait_as_busy() -> None:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice, then per CPU
    stat = "cpu  100 5 50 800 40 2 3 0 7 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1 2 3\n"
    assert parse_machine_ticks(stat) == (160, 1000)  # guest time is inside user already
    with pytest.raises(ValueError):
        parse_machine_ticks("intr 1 2 3\n")


def test_busy_cores_are_the_busy_share_of_the_ticks_times_the_cpus() -> None:
    assert busy_cores((100, 1000), (250, 1200), 2) == pytest.approx(1.5)
    assert busy_cores((100, 1000), (100, 1000), 2) is None  # no time passed
    assert busy_cores(None, (250, 1200), 2) is None
    assert busy_cores((100, 1000), (250, 1200), None) is None


def test_cpu_used_between_readings_is_each_process_s_difference() -> None:
    before = CpuReading(worker=2.0, redis=1.0, bench=0.5, broker=None, machine=None)
    after = CpuReading(worker=5.0, redis=1.25, bench=0.75, broker=3.0, machine=None)
    used = after.used_since(before)
    assert (used.worker, used.redis, used.bench) == (3.0, 0.25, 0.25)
    assert used.broker is None and used.busy_cores is None  # not read at both ends
    nothing = after.used_since(None)  # a window that never opened
    assert (nothing.worker, nothing.redis, nothing.bench, nothing.busy_cores) == (None,) * 4


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_the_machine_can_be_measured() -> None:
    before = machine_ticks()
    sum(n * n for n in range(300_000))  # some work on this process's CPU
    cores = busy_cores(before, machine_ticks(), os.cpu_count())
    assert cores is None or 0.0 <= cores <= (os.cpu_count() or 1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_this_process_can_be_measured() -> None:
    assert (process_cpu_seconds(os.getpid()) or 0.0) > 0.0
    memory = process_memory(os.getpid())
    assert (memory["rss_bytes"] or 0) > 0
    assert (memory["peak_rss_bytes"] or 0) >= (memory["rss_bytes"] or 0)
    assert process_cpu_seconds(2**22 + 1) is None  # no such process


def test_a_child_reads_exactly_the_settings_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        namespace="bench1",
        redis_url=SecretStr("redis://:secret@127.0.0.1:6379/3"),
        batch_size=123,
        web_enabled=False,
        training_half_life_days=None,
        blend_weights={"itemknn": 1.0},
    )
    for name in list(os.environ):
        if name.startswith("SHOPPULSE_"):
            monkeypatch.delenv(name)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.model_dump() == settings.model_dump()
    assert child.redis_dsn == "redis://:secret@127.0.0.1:6379/3"


# -- the report --------------------------------------------------------------------------------
def _phase(fraction: float, p99: float) -> dict[str, Any]:
    return {
        "load_fraction": fraction,
        "target_rate": 1000.0,
        "achieved_rate": 990.0,
        "catch_up_seconds": 0.1,
        "timed_out": 0,
        "latency": {"count": 100, "censored": 0, "p50_ms": 40.0, "p95_ms": 80.0, "p99_ms": p99},
        "worker_cpu_seconds_per_1k_events": 0.7 + fraction,
        "redis_cpu_seconds_per_1k_events": 0.2 + fraction,
        "bench_cpu_seconds_per_1k_events": 0.1,
        "broker_cpu_seconds_per_1k_events": None,
        "machine_busy_cores": 1.2 + fraction,
    }


def _report(
    p99: float = 120.0,
    bare_right_after: DrainResult | None = None,
    latency_base: float | None = None,
) -> dict[str, Any]:
    return build_report(
        plan=QUICK,
        settings=Settings(namespace="bench1"),
        broker={"kind": "configured", "bootstrap": "127.0.0.1:9092"},
        load={"items": 10},
        publish={"events": 10},
        warmup={"events": 1},
        bare=DrainResult(10_100, 100, 1.0, 0.8, 0.01),
        shoppulse=DrainResult(6_100, 100, 1.0, 3.0, 1.0, machine_busy_cores=1.64),
        latency={"shoppulse": [_phase(0.5, p99), _phase(0.8, 400.0)], "bare_faust": []},
        memory={
            "redis": {
                "per_user_bytes": 3000.0,
                "max_user_bytes": 9000,
                "users": 10,
                "per_item_bytes": 4000.0,
                "items": 20,
            },
            "shoppulse_worker": {"rss_bytes": 100 * 2**20, "peak_rss_bytes": 120 * 2**20},
            "bare_worker": {"rss_bytes": None, "peak_rss_bytes": None},
        },
        machine={"cpus": 2},
        timings={"drain": 1.0},
        started_at=1.0,
        duration=42.0,
        bare_right_after=bare_right_after,
        latency_base=latency_base,
    )


@pytest.mark.parametrize("plan", [QUICK, FULL], ids=["quick", "full"])
def test_a_drain_only_plan_keeps_the_load_and_the_drains_and_drops_the_latency(
    plan: BenchPlan,
) -> None:
    drains = without_latency(plan)
    assert (drains.latency_fractions, drains.bare_latency_fractions) == ((), ())
    assert plan.latency_fractions and plan.bare_latency_fractions
    assert (drains.load, drains.warmup_events, drains.drain_events) == (
        plan.load,
        plan.warmup_events,
        plan.drain_events,
    )
    assert drains.bare_right_after == plan.bare_right_after  # the ratio's two bare drains
    assert drains.mode == f"{plan.mode}, drain only"


@pytest.mark.parametrize("plan", [QUICK, FULL], ids=["quick", "full"])
def test_latency_loads_replace_both_workers_phases_lowest_first(plan: BenchPlan) -> None:
    series = with_latency_loads(plan, [0.4, 0.3, 0.5, 0.3])
    assert series.latency_fractions == series.bare_latency_fractions == (0.3, 0.4, 0.5)
    assert series.mode == f"{plan.mode}, loads 30%/40%/50%"
    assert (series.load, series.drain_events) == (plan.load, plan.drain_events)
    # Without the 50% phase there is no p99 at half load to judge.
    floors = evaluate_floors(
        {"drain": {"ratio": 0.6}, "latency": {"shoppulse": [_phase(0.3, 120.0)]}}
    )
    assert floors["p99_ms_at_half_load"] is None


def test_the_report_names_what_the_latency_loads_are_fractions_of() -> None:
    measured = _report()
    assert measured["latency"]["load_base"] == "shoppulse_drain"
    drain_rate = measured["drain"]["shoppulse"]["events_per_second"]
    assert measured["latency"]["load_base_events_per_second"] == drain_rate
    given = _report(latency_base=2600.0)["latency"]
    assert (given["load_base"], given["load_base_events_per_second"]) == ("given", 2600.0)


def test_the_report_has_every_section_in_order_and_is_json() -> None:
    report = _report()
    assert tuple(report) == REPORT_KEYS
    again = orjson.loads(orjson.dumps(report))
    assert again["drain"]["ratio"] == 0.6
    assert again["drain"]["bare_faust"]["events_per_second"] == 10_000.0
    assert again["drain"]["shoppulse"]["events_per_second"] == 6_000.0
    assert again["cpu"]["shoppulse_worker_seconds_per_1k_events"] == 0.5
    assert again["latency"]["shoppulse"][0]["latency"]["p99_ms"] == 120.0
    assert again["floors"]["drain_ratio_met"] is True
    assert again["floors"]["p99_met"] is True


def test_the_ratio_is_against_the_mean_of_both_bare_drains() -> None:
    # 8,000 events/s right after the ShopPulse drain, 10,000 at the end: their mean is 9,000.
    report = _report(bare_right_after=DrainResult(8_100, 100, 1.0, 0.7, 0.01))
    drain = report["drain"]
    assert drain["bare_faust_right_after"]["events_per_second"] == 8_000.0
    assert drain["bare_mean_events_per_second"] == 9_000.0
    assert drain["ratio"] == round(6_000 / 9_000, 3)
    assert drain["ratio_to_each"] == [0.75, 0.6]
    assert _report()["drain"]["bare_faust_right_after"] is None  # one bare drain: that one
    console = Console(record=True, width=200)
    console.print(report_table(report))
    assert "8,000 / 10,000 ev/s" in console.export_text()


def test_floors_judge_the_ratio_and_the_p99_at_half_load() -> None:
    assert _report(p99=251.0)["floors"]["p99_met"] is False
    floors = evaluate_floors({"drain": {"ratio": 0.4}, "latency": {"shoppulse": []}})
    assert floors["drain_ratio_met"] is False
    assert floors["p99_ms_at_half_load"] is None
    assert floors["p99_met"] is False


def test_the_table_renders_every_figure() -> None:
    console = Console(record=True, width=160)
    console.print(report_table(_report()))
    text = console.export_text()
    for label in ("bare Faust drain", "ShopPulse drain", "ratio", "click→recs @ 50%"):
        assert label in text
    assert "10,000 ev/s" in text
    assert "100.0 MiB" in text
    # CPU per event under each steady load, beside the drain's: small batches cost more.
    assert "at 50% load: 1.200 s/1k ev; at 80% load: 1.500 s/1k ev" in text
    assert "at 50% load: 0.700 s/1k ev; at 80% load: 1.000 s/1k ev" in text
    # How busy the whole machine was: the drain's window and each load.
    assert "all the work; machine 1.6 cores busy" in text
    assert "machine 1.7 cores busy" in text and "machine 2.0 cores busy" in text


def test_the_bare_worker_reads_the_user_topics_in_its_own_group() -> None:
    from shoppulse.bench_bare import create_bare_app  # Faust is slow to import: only here

    app = create_bare_app(Settings(namespace="shop", web_enabled=False))
    assert app.conf.id == "shop-bare"  # not the ShopPulse group: it reads from the start
    again = create_bare_app(Settings(namespace="shop", web_enabled=False), "-next")
    assert again.conf.id == "shop-bare-next"  # a second bare run reads from the start too
    (agent,) = app.agents.values()
    assert set(agent.channel.topics) == {"shop.clicks", "shop.orders"}


def test_a_stall_names_the_partitions_short_of_the_acks() -> None:
    acked = {("c", 0): 100, ("c", 1): 50, ("o", 0): 7}
    positions = {("c", 0): (100, 100), ("c", 1): (49, 49), ("o", 0): (7, 5)}
    assert short_partitions(acked, positions) == (
        "c[1] acked 50, log end 49, committed 49; o[0] acked 7, log end 7, committed 5"
    )
    caught_up = {tp: (end, end) for tp, end in acked.items()}
    assert short_partitions(acked, caught_up) == (
        "every partition's log end and commit reach the acks"
    )


def test_a_group_consumed_through_only_if_every_partition_is_committed_past_its_acks() -> None:
    acked = {("c", 0): 100, ("c", 1): 50}
    # The broker under-reports its log end (49 < 50); the commit is what counts.
    assert consumed_through(acked, {("c", 0): (100, 100), ("c", 1): (49, 50)})
    assert not consumed_through(acked, {("c", 0): (100, 100), ("c", 1): (50, 49)})
    assert not consumed_through(acked, {("c", 0): (100, 100)})  # a partition never committed
