"""The worker's web server end to end: a real ``shoppulse worker`` with its web server on, real
events through a real broker into a real Redis; the dashboard driven in headless Chromium
(typing a user id, reading the recommendations table), ``/metrics`` and ``/health`` over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoppulse import localstack
from tests.churn_models import overdue_model
from tests.integration.chromium import Browser, find_or_install_chromium
from tests.integration.conftest import ARTIFACTS, REDIS_URL, Stack, publish_churn_model

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
SHOES = ["shoe-1", "shoe-2", "shoe-3", "shoe-4"]
BOOKS = ["book-1", "book-2", "book-3", "book-4"]
USERS = [f"u{n}" for n in range(8)]


def clicks() -> list[dict[str, Any]]:
    events = []
    for n, user in enumerate(USERS):
        items = SHOES if n % 2 == 0 else BOOKS
        for k, item in enumerate(items[: 3 if n < 2 else 4]):
            events.append(
                {
                    "event_id": f"{user}-{k}",
                    "type": "click" if k % 2 else "view",
                    "user_id": user,
                    "item_id": item,
                    "ts": T0 + n * 60 + k,
                }
            )
    return events


class Web:
    def __init__(self, stack: Stack, port: int, events: int) -> None:
        self.stack = stack
        self.url = f"http://127.0.0.1:{port}"
        self.events = events

    async def get(self, path: str) -> tuple[int, bytes, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            return response.status, await response.read(), response.content_type


@pytest.fixture(scope="module")
async def web(broker: str) -> AsyncIterator[Web]:
    assert localstack.redis_reachable(REDIS_URL), f"needs Redis at {REDIS_URL}"
    port = localstack.free_port()
    stack = Stack(
        broker, REDIS_URL, f"web{uuid.uuid4().hex[:8]}", web_enabled="true", web_port=port
    )
    await stack.start(partitions=2)
    stack.start_worker()
    catalog = [
        {"item_id": i, "category": "shoes", "title": f"Shoe {i[-1]}", "ts": T0} for i in SHOES
    ] + [{"item_id": i, "category": "books", "title": f"Book {i[-1]}", "ts": T0} for i in BOOKS]
    await stack.publish(stack.topics.catalog, *catalog)
    await stack.until(lambda: stack.json_hash(stack.keys.item("book-4")), 60, "catalog applied")
    events = clicks()
    await stack.publish(stack.topics.clicks, *events)
    # One event the worker must dead-letter (a validation failure), and one that is not JSON.
    await stack.publish(stack.topics.clicks, {**events[0], "event_id": "bad", "user_id": ""})
    await stack.publish(stack.topics.clicks, b"{not json")
    await stack.wait_seen(len(events))
    # A published ALS version, for the model table, the evaluation chart and the model metrics.
    trained = await stack.cli("retrain", timeout=120)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    # Eight click-only users cannot train a churn model: publish one as `retrain` would.
    validated = {"rows": 120, "validation": {"roc_auc": 0.75}}
    await publish_churn_model(stack, overdue_model(CHURN_VERSION, validated))
    running = Web(stack, port, len(events))

    async def healthy() -> bool | None:
        try:
            status, _, _ = await running.get("/health")
        except aiohttp.ClientError:
            return None
        return status == 200 or None

    await stack.until(healthy, 60, "the web server to answer /health with 200")
    yield running
    await stack.cleanup()


CHURN_VERSION = "churn-20240101T000000Z-abc123"


async def metric_samples(web: Web) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body, content_type = await web.get("/metrics")
    assert status == 200
    assert content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_events_dead_letters_and_latency(web: Web) -> None:
    clicks_topic = web.stack.topics.clicks
    samples: dict[Any, float] = {}

    async def counted() -> bool | None:
        nonlocal samples
        samples = await metric_samples(web)
        dead = value(
            samples, "shoppulse_events_dead_lettered_total", topic=clicks_topic, reason="validation"
        )
        return dead >= 1 or None

    await web.stack.until(counted, 30, "the dead letter to be counted")
    applied = value(
        samples, "shoppulse_events_processed_total", topic=clicks_topic, outcome="applied"
    )
    duplicate = value(
        samples, "shoppulse_events_processed_total", topic=clicks_topic, outcome="duplicate"
    )
    assert applied + duplicate == web.events
    assert applied > 0
    catalog = value(
        samples,
        "shoppulse_events_processed_total",
        topic=web.stack.topics.catalog,
        outcome="applied",
    )
    assert catalog == len(SHOES) + len(BOOKS)
    assert (
        value(
            samples,
            "shoppulse_events_dead_lettered_total",
            topic=clicks_topic,
            reason="invalid_json",
        )
        == 1
    )
    refreshes = value(samples, "shoppulse_recommendation_refreshes_total")
    assert refreshes >= len(USERS)
    assert value(samples, "shoppulse_batch_duration_seconds_count", agent="user-events") >= 1
    latency_count = value(samples, "shoppulse_click_to_recommendation_seconds_count")
    latency_sum = value(samples, "shoppulse_click_to_recommendation_seconds_sum")
    assert latency_count >= web.events
    assert 0 < latency_sum / latency_count < 60  # seconds from broker timestamp to recs
    current = await web.stack.redis.get(web.stack.keys.current_model("als"))

    async def model_shown() -> bool | None:
        found = await metric_samples(web)
        als = value(found, "shoppulse_model_info", kind="als", version=current)
        churn = value(found, "shoppulse_model_info", kind="churn", version=CHURN_VERSION)
        return als == churn == 1 or None

    await web.stack.until(model_shown, 20, "the served ALS and churn models in the metrics")
    trained = await metric_samples(web)
    assert value(trained, "shoppulse_model_training_seconds", kind="als") > 0
    assert 0 <= value(trained, "shoppulse_model_holdout_hit_rate", kind="als") <= 1
    _, body, _ = await web.get("/metrics")
    for series in (
        "shoppulse_redis_retries_total",
        "shoppulse_redis_errors_total",
        "shoppulse_alerts_emitted_total",
        "shoppulse_model_info",
        "shoppulse_model_training_seconds",
        "shoppulse_consumer_lag",
        "shoppulse_worker_start_timestamp_seconds",
    ):
        assert f"# TYPE {series} ".encode() in body, series


async def test_health_is_ok_with_redis_and_a_running_app(web: Web) -> None:
    status, body, content_type = await web.get("/health")
    assert status == 200
    assert content_type == "application/json"
    document = orjson.loads(body)
    assert document["status"] == "ok"
    assert document["redis"] == "ok"
    assert document["app"] == "running"
    assert document["namespace"] == web.stack.namespace


async def test_json_api(web: Web) -> None:
    status, body, _ = await web.get("/api/user/u2")
    assert status == 200
    document = orjson.loads(body)
    stored = await web.stack.json(web.stack.keys.recs("u2"))
    assert [i["item_id"] for i in document["recommendations"]["items"]] == [
        i["item_id"] for i in stored["items"]
    ]
    categories = {i["item_id"]: i["category"] for i in document["recommendations"]["items"]}
    for item, category in categories.items():
        assert category == ("shoes" if item.startswith("shoe") else "books")
    assert document["profile"]["events"]["view"] >= 1
    status, body, _ = await web.get("/api/user/nobody-" + uuid.uuid4().hex)
    assert status == 404
    status, body, _ = await web.get("/api/overview")
    overview = orjson.loads(body)
    assert status == 200
    assert overview["stats"]["applied"] + overview["stats"].get("duplicates", 0) == web.events
    assert overview["users"] == len(USERS)
    status, body, _ = await web.get("/api/risk")
    assert status == 200
    assert len(orjson.loads(body)["bins"]) == 10
    status, body, _ = await web.get("/api/alerts?limit=5")
    assert status == 200
    assert isinstance(orjson.loads(body)["alerts"], list)
    status, body, _ = await web.get("/api/models")
    assert status == 200
    models = orjson.loads(body)
    current = await web.stack.redis.get(web.stack.keys.current_model("als"))
    assert models["current"] == current
    assert [v["version"] for v in models["versions"]] == [current]
    assert 0.0 <= models["versions"][0]["params"]["holdout_hit_rate"] <= 1.0
    assert models["versions"][0]["users"] == len(USERS)
    churn = models["churn"]  # the serving churn version, from its published document
    assert churn["version"] == CHURN_VERSION
    assert churn["published_at"] > T0
    assert churn["horizon_days"] == 90.0 and churn["features"] == ["overdue"]
    assert churn["rows"] == 120 and churn["validation"]["roc_auc"] == 0.75


async def test_dashboard_in_headless_chromium(web: Web) -> None:
    binary, why = find_or_install_chromium()
    if binary is None:
        pytest.skip(why)
    user = "u1"
    stored = await web.stack.json(web.stack.keys.recs(user))
    assert stored is not None and stored["items"]
    async with Browser(binary) as browser:
        await browser.navigate(web.url + "/")
        assert await browser.evaluate("document.title") == "ShopPulse"
        # The overview arrives: the event counter shows what the worker has taken in.
        seen = await browser.wait_for(
            "document.getElementById('c-seen').textContent.replace(/,/g, '') !== '\u2013'"
            " && document.getElementById('c-seen').textContent",
            20,
        )
        assert int(str(seen).replace(",", "")) == web.events
        await browser.wait_for("document.getElementById('health').textContent === 'healthy'")
        # The user lookup: type the id, press Enter, read the table.
        await browser.type_text("#user-input", user)
        await browser.wait_for(
            "document.getElementById('user-result').dataset.state === 'loaded'", 20
        )
        rows = await browser.evaluate(
            "[...document.querySelectorAll('#recs-table tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent.trim()))"
        )
        assert [row[1] for row in rows] == [i["item_id"] for i in stored["items"]]
        for row in rows:  # rank, item, title, category, score, source
            assert row[3] == ("shoes" if row[1].startswith("shoe") else "books")
            assert row[5] in {"itemknn", "category", "popularity", "als"}
        # The rate chart has drawn a line once two samples exist.
        await browser.wait_for(
            "document.querySelector('#rate-chart path[data-series=rate]') !== null", 20
        )
        # Model versions with their held-back figures, and the evaluation chart.
        current = await web.stack.redis.get(web.stack.keys.current_model("als"))
        table = await browser.wait_for(
            "document.querySelector('#models-table') && "
            "document.querySelector('#models-table').textContent",
            20,
        )
        assert current in table and "serving" in table
        churn = await browser.wait_for(
            "document.getElementById('churn-version') && "
            "document.getElementById('churn-model').textContent",
            20,
        )
        assert CHURN_VERSION in churn and "ROC-AUC 0.750" in churn
        await browser.wait_for("document.querySelectorAll('#eval-chart rect').length === 1")
        png = await browser.screenshot(ARTIFACTS / "dashboard.png")
        # A missing user says so.
        await browser.evaluate("document.getElementById('user-input').value = ''")
        await browser.type_text("#user-input", "nobody")
        await browser.wait_for(
            "document.getElementById('user-result').dataset.state === 'missing'", 20
        )
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
