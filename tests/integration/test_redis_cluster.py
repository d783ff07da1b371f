"""The service on a Redis Cluster (three primaries started here, real ``redis-server``s).

With ``SHOPPULSE_REDIS_CLUSTER=true`` every key of a namespace carries the namespace as its hash
tag, so the batch scripts, which touch many users' and items' keys in one atomic step, find
them all in one slot. Shown here: a worker on the cluster ends with the profiles, counts and
recommendations a worker on a single Redis gives for the same events; the namespace's keys are
all in one slot; the command line, the Python client and the dashboard read from the cluster;
a retrain publishes a model there (a MULTI transaction) that the running worker then serves;
``shoppulse dev`` starts a local cluster when told to use one and none answers.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

from shoppulse.bench import LoadSpec, build_world, catalog_documents, generate_user_events
from shoppulse.client import ShopPulseClient
from shoppulse.localstack import free_port, redis_problem, tcp_reachable
from shoppulse.settings import Settings
from tests.integration.compare import (
    assert_close,
    assert_same_profiles,
    final_recommendations,
    item_counts,
    publish_one_topic_at_a_time,
)
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

EVENTS = 2_000
SPEC = LoadSpec(items=200, users=150, categories=6, seed=23)
# As in the scale-out test: co-occurrence counters capped above the catalog size, so which
# counter a full item evicts cannot depend on how batches happen to fall.
SETTINGS = {"batch_size": 100, "cooc_cap": 2 * SPEC.items}


async def test_a_worker_on_a_redis_cluster_ends_with_the_state_of_a_single_redis(
    make_stack: Callable[..., Awaitable[Stack]], redis_cluster_url: str
) -> None:
    world = build_world(SPEC)
    catalog = catalog_documents(world)
    events = generate_user_events(world, EVENTS, seed=3, start_ts=SPEC.start_ts, prefix="c")
    clicks = [d for kind, d in events if kind == "clicks"]
    single = await make_stack(**SETTINGS)
    port = free_port()
    cluster = await make_stack(
        redis=redis_cluster_url, redis_cluster="true", web_enabled="true", web_port=port, **SETTINGS
    )
    assert cluster.keys.profile("u1") == f"{{{cluster.namespace}}}:profile:u1"
    await publish_one_topic_at_a_time([single, cluster], catalog, events, timeout=120)

    users = sorted({d["user_id"] for _, d in events})
    await assert_same_profiles(single, cluster, users)
    assert_close(await item_counts(single), await item_counts(cluster))
    first = await final_recommendations(single, users)
    second = await final_recommendations(cluster, users)
    assert all(second[u] for u in users), "every user gets recommendations on the cluster"
    overlap = [len(set(first[u]) & set(second[u])) / len(first[u]) for u in users]
    assert statistics.mean(overlap) >= 0.9, statistics.mean(overlap)

    # One slot holds the whole namespace, and it is not the only thing the cluster holds.
    slots = {
        key_slot(key.encode()) async for key in cluster.redis.scan_iter(cluster.keys.pattern())
    }
    assert slots == {key_slot(cluster.namespace.encode())}

    stored = await cluster.json(cluster.keys.recs(users[0]))
    shown = await cluster.cli("recs", users[0])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert stored["items"][0]["item_id"] in shown.stdout

    # The Python client reads the cluster with the same settings.
    client_settings = Settings(
        kafka_bootstrap=cluster.broker,
        redis_url=redis_cluster_url,
        redis_cluster=True,
        namespace=cluster.namespace,
    )
    async with ShopPulseClient(client_settings) as client:
        assert await client.recommendations(users[0]) == stored
        assert await client.profile(users[0]) == await cluster.json(cluster.keys.profile(users[0]))

    # The dashboard's reads (MGET, pipelines, the risk histogram) on the cluster.
    for path in ("/health", "/api/overview", "/api/models", "/api/alerts", "/api/risk"):
        status, _ = await asyncio.to_thread(_get, port, path)
        assert status == 200, path
    status, body = await asyncio.to_thread(_get, port, f"/api/user/{users[0]}")
    assert status == 200
    assert body["recommendations"]["items"][0]["item_id"] == stored["items"][0]["item_id"]

    trained = await cluster.cli("retrain")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    version = await cluster.redis.get(cluster.keys.current_model("als"))
    assert version is not None and version.startswith("als-")
    user = users[0]
    assert (await cluster.json(cluster.keys.recs(user)))["model_version"] == version
    # The running worker picks the new version up from the cluster for a user who acts now.
    again = dict(clicks[-1], event_id="after-retrain", user_id="newcomer")
    await cluster.publish(cluster.topics.clicks, again)
    document = await cluster.until(
        lambda: cluster.json(cluster.keys.recs("newcomer")), 30, "newcomer's recommendations"
    )
    assert document["model_version"] == version


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def test_a_cluster_node_configured_as_a_single_redis_is_named(redis_cluster_url: str) -> None:
    assert "SHOPPULSE_REDIS_CLUSTER=true" in (redis_problem(redis_cluster_url) or "")
    assert redis_problem(redis_cluster_url, cluster=True) is None


async def test_a_worker_told_cluster_on_a_single_redis_stops_with_one_line(
    redis_url: str, broker: str
) -> None:
    env = {
        "SHOPPULSE_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/0",
        "SHOPPULSE_REDIS_CLUSTER": "true",
        "SHOPPULSE_KAFKA_BOOTSTRAP": broker,
    }
    finished = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shoppulse", "worker"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "not a cluster node" in finished.stdout + finished.stderr
    assert "Traceback" not in finished.stdout + finished.stderr


def test_dev_starts_a_local_cluster_when_told_cluster_and_none_answers(tmp_path: Path) -> None:
    redis_port = free_port()
    env = {
        **os.environ,
        "SHOPPULSE_REDIS_CLUSTER": "true",
        "SHOPPULSE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SHOPPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # dev starts one
        "SHOPPULSE_NAMESPACE": f"devc{uuid.uuid4().hex[:8]}",
        "SHOPPULSE_WEB_PORT": str(free_port()),
    }
    finished = subprocess.run(
        [sys.executable, "-m", "shoppulse", "dev", "--limit", "300", "--exit-after-demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert f"started a local Redis Cluster on ports {redis_port}, " in output
    assert "· model" in output  # the demo's recommendation tables, read from the cluster
    assert not tcp_reachable("127.0.0.1", redis_port), "the cluster stops with dev"


def test_dev_told_cluster_on_a_single_redis_says_so(redis_url: str) -> None:
    env = {
        **os.environ,
        "SHOPPULSE_REDIS_CLUSTER": "true",
        "SHOPPULSE_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/0",
        "SHOPPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "shoppulse", "dev", "--limit", "10", "--exit-after-demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode != 0
    lines = finished.stdout.strip().splitlines()
    assert "but it is a single Redis, not a cluster node" in lines[-1], finished.stdout
    assert "Traceback" not in finished.stdout + finished.stderr
