"""Metrics bookkeeping (pure) and the health check against a Redis that does not answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoppulse.localstack import free_port
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.metrics import REASON_CLASSES, Metrics, reason_class, split_outcome
from stream.processor import BatchOutcome, RawEvent, dead_letter
from stream.web import WebState, health


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("not valid JSON: unexpected character", "invalid_json"),
        ("expected a JSON object, got list", "not_an_object"),
        ("user_id: must not be empty", "validation"),
        ("ts: is outside 1970..2200; items.0.price: must be a number", "validation"),
        ("items: a placed order needs at least one item", "validation"),
        ("internal error: KeyError('x')", "internal"),
        ("unexpected topic 'x'", "unexpected_topic"),
        ("something odd happened", "other"),
        ("", "other"),
    ],
)
def test_reasons_map_to_a_few_classes(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected
    assert expected in (*REASON_CLASSES, "other")


def test_outcome_split_is_exact_for_one_topic_and_adds_up_for_mixed_batches() -> None:
    assert split_outcome(["c"] * 5, [], 3) == {("c", "applied"): 3, ("c", "duplicate"): 2}
    assert split_outcome(["c"] * 5, ["c"], 4) == {("c", "applied"): 4}
    mixed = split_outcome(["c"] * 6 + ["o"] * 2, ["o"], 5)
    assert sum(mixed.values()) == 7
    assert mixed[("c", "applied")] + mixed.get(("o", "applied"), 0) == 5
    assert mixed.get(("o", "applied"), 0) + mixed.get(("o", "duplicate"), 0) == 1
    assert split_outcome(["c"], ["c"], 0) == {}


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_a_batch_is_recorded_in_every_series() -> None:
    metrics = Metrics()
    bad = dead_letter(RawEvent("ns.clicks", 0, 7, b"u1", b"{"), "not valid JSON: eof")
    outcome: Any = BatchOutcome(
        recommendations=[{"user_id": "u1"}, {"user_id": "u2"}],
        dead_letters=[bad],
        applied=2,
        duplicates=1,
    )
    outcome.alerts = [{"alert_id": "a"}]  # what the churn side adds to the outcome
    metrics.batch(
        "user-events",
        ["ns.clicks"] * 4,
        outcome,
        0.02,
        {"u1": [100.0, 101.0], "u3": [50.0]},
        now=102.0,
    )
    found = samples(metrics)

    def value(name: str, **labels: str) -> float:
        return found.get((name, frozenset(labels.items())), 0.0)

    assert value("shoppulse_events_processed_total", topic="ns.clicks", outcome="applied") == 2
    assert value("shoppulse_events_processed_total", topic="ns.clicks", outcome="duplicate") == 1
    assert (
        value("shoppulse_events_dead_lettered_total", topic="ns.clicks", reason="invalid_json") == 1
    )
    assert value("shoppulse_recommendation_refreshes_total") == 2
    # A batch's alerts count when they are sent (send_alerts), not with the batch.
    assert value("shoppulse_alerts_emitted_total", kind="churn") == 0
    assert value("shoppulse_batch_duration_seconds_count", agent="user-events") == 1
    # u1's two events got recommendations (2 s and 1 s after their broker timestamps); u3 none.
    assert value("shoppulse_click_to_recommendation_seconds_count") == 2
    assert value("shoppulse_click_to_recommendation_seconds_sum") == pytest.approx(3.0)


def test_model_and_redis_series() -> None:
    metrics = Metrics()
    metrics.serving("als-1", header={"params": {"train_seconds": 1.5, "holdout_hit_rate": 0.3}})
    metrics.serving("als-2", header={"published_at": 1000.0, "params": {}})
    metrics.redis_failure(ConnectionError("gone"))
    metrics.redis_failure(TimeoutError("slow"), retried=False)
    found = samples(metrics)
    versions = {dict(labels)["version"] for name, labels in found if name == "shoppulse_model_info"}
    assert versions == {"als-2"}  # the previous version's series is removed
    metrics.serving("churn-1", "churn", {"published_at": 2000.0, "params": {"train_seconds": 7}})
    found = samples(metrics)
    served = {
        (dict(labels)["kind"], dict(labels)["version"])
        for name, labels in found
        if name == "shoppulse_model_info"
    }
    assert served == {("als", "als-2"), ("churn", "churn-1")}  # one version per kind
    assert found[("shoppulse_model_training_seconds", frozenset({("kind", "churn")}))] == 7
    assert found[("shoppulse_model_training_seconds", frozenset({("kind", "als")}))] == 1.5
    assert found[("shoppulse_redis_retries_total", frozenset())] == 1
    errors = {
        dict(labels)["error"]: v
        for (name, labels), v in found.items()
        if name == "shoppulse_redis_errors_total"
    }
    assert errors == {"ConnectionError": 1, "TimeoutError": 1}


class RunningApp:
    """Only what the health check reads of a Faust app."""

    started = True
    should_stop = False


async def test_health_is_503_when_redis_does_not_answer() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace="health")
    state = WebState(settings, Keys("health"), Topics("health"), Metrics())
    status, body = await health(RunningApp(), state)  # type: ignore[arg-type]
    assert status == 503
    assert body["redis"] == "unreachable"
    assert body["app"] == "running"
    assert "redis_error" in body


def test_latency_matches_raw_message_keys_to_pseudonymised_recommendations() -> None:
    from pydantic import SecretStr

    from stream.privacy import pseudonym

    key = SecretStr("shop-secret")
    metrics = Metrics()
    metrics.use_pseudonyms(key)
    outcome: Any = BatchOutcome(recommendations=[{"user_id": pseudonym("u1", key)}], applied=2)
    metrics.batch("user-events", ["ns.clicks"] * 2, outcome, 0.01, {"u1": [100.0, 101.0]}, 103.0)
    found = samples(metrics)
    assert found[("shoppulse_click_to_recommendation_seconds_count", frozenset())] == 2
    assert found[("shoppulse_click_to_recommendation_seconds_sum", frozenset())] == 5.0


class AlertSink:
    """What send_alerts talks to: a topic whose sends resolve to an ack (or fail), and an
    outbox that confirms (or fails to)."""

    def __init__(self, ack_fails: bool = False, confirm_fails: bool = False) -> None:
        self.ack_fails = ack_fails
        self.confirm_fails = confirm_fails
        self.sent: list[str] = []
        self.confirmed: list[str] = []

    async def send(self, alert: dict[str, Any]) -> asyncio.Future[None]:
        self.sent.append(alert["alert_id"])
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.ack_fails:
            ack.set_exception(RuntimeError("broker did not acknowledge"))
        else:
            ack.set_result(None)
        return ack

    async def confirm(self, alerts: Sequence[dict[str, Any]]) -> None:
        if self.confirm_fails:
            raise ConnectionError("Redis went away")
        self.confirmed += [alert["alert_id"] for alert in alerts]


def alerts_counted(metrics: Metrics) -> float:
    return samples(metrics).get(
        ("shoppulse_alerts_emitted_total", frozenset({("kind", "churn")})), 0.0
    )


async def test_alerts_are_counted_once_when_acknowledged_and_confirmed() -> None:
    from stream.app import send_alerts

    metrics = Metrics()
    alerts = [{"alert_id": "a1", "user_id": "u1"}, {"alert_id": "a2", "user_id": "u2"}]
    sink = AlertSink()
    assert await send_alerts(alerts, sink.send, sink.confirm, metrics)
    assert sink.confirmed == ["a1", "a2"]
    assert alerts_counted(metrics) == 2
    assert await send_alerts([], sink.send, sink.confirm, metrics)  # a quiet timer tick
    assert alerts_counted(metrics) == 2


async def test_alerts_that_fail_are_counted_when_the_outbox_sends_them_again() -> None:
    from stream.app import send_alerts

    metrics = Metrics()
    alerts = [{"alert_id": "a1", "user_id": "u1"}]
    unacked = AlertSink(ack_fails=True)
    assert not await send_alerts(alerts, unacked.send, unacked.confirm, metrics)
    assert unacked.sent == ["a1"] and unacked.confirmed == []
    unconfirmed = AlertSink(confirm_fails=True)  # on Kafka, but still in the outbox
    assert not await send_alerts(alerts, unconfirmed.send, unconfirmed.confirm, metrics)
    assert alerts_counted(metrics) == 0
    sweep = AlertSink()  # the outbox sweep claims it and sends it once more
    assert await send_alerts(alerts, sweep.send, sweep.confirm, metrics)
    assert alerts_counted(metrics) == 1
