"""The MovieLens benchmark through the running service: the training ratings go through Kafka
into a real stream worker, `retrain` trains and publishes ALS and recomputes every list, and
the lists are read back from Redis and scored on the held-out ratings.

Same split as the offline evaluation (per-item stratified 75/25, seed 42, every rating
positive, top-10, training items removed — the service never recommends a user's own items).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console

from models.metrics import RankingMetrics, ranking_metrics
from models.split import stratified_split
from shoppulse import localstack
from shoppulse.datasets import Rating, load_movies, load_ratings
from shoppulse.kafka import Publisher, ensure_topics
from shoppulse.replay import movielens_events
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.store import RedisStore, redis_for
from workers.retrain import Retrainer

K = 10
TRAIN_RATIO = 0.75
SEED = 42
CATCH_UP_SECONDS = 900


@dataclass(frozen=True, slots=True)
class LiveResult:
    metrics: RankingMetrics
    namespace: str
    model_version: str
    train_events: int
    ingest_seconds: float
    retrain_seconds: float


def split_ratings(ratings: list[Rating]) -> tuple[list[Rating], dict[str, set[str]]]:
    """Training ratings (in time order) and each user's held-out items."""
    users = np.asarray([r.user_id for r in ratings])
    items = np.asarray([r.item_id for r in ratings])
    train_mask = stratified_split(users, items, TRAIN_RATIO, SEED, by="item")
    train = [r for r, keep in zip(ratings, train_mask, strict=True) if keep]
    test: dict[str, set[str]] = defaultdict(set)
    for rating, keep in zip(ratings, train_mask, strict=True):
        if not keep:
            test[rating.user_id].add(rating.item_id)
    return sorted(train, key=lambda r: (r.ts, r.user_id, r.item_id)), dict(test)


def evaluation_settings(base: Settings, namespace: str, bootstrap: str) -> Settings:
    """The user's configuration, in a fresh namespace, keeping every training interaction
    (MovieLens users have up to 737 ratings) and no held-back users: the test set judges."""
    return base.model_copy(
        update={
            "namespace": namespace,
            "kafka_bootstrap": bootstrap,
            "interactions_cap": max(base.interactions_cap, 1000),
            "dedupe_cap": max(base.dedupe_cap, 1000),
            "holdout_users": 0,
            "web_enabled": False,
        }
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child ``shoppulse`` process read these settings."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if name == "redis_url":
            value = settings.redis_dsn  # dumped masked; the child needs the real URL
        if isinstance(value, dict):
            text = orjson.dumps(value).decode()
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        env[f"SHOPPULSE_{name.upper()}"] = text
    return env


@contextmanager
def broker_for(settings: Settings) -> Iterator[str]:
    """The configured broker if it answers, else a local one for the run."""
    if localstack.kafka_reachable(settings.kafka_bootstrap):
        yield settings.kafka_bootstrap
        return
    with localstack.Broker(port=localstack.free_port()).start() as broker:
        yield broker.bootstrap


async def publish_training(settings: Settings, data_dir: Path, train: list[Rating]) -> None:
    events = movielens_events(train, load_movies(data_dir))
    topics = Topics(settings.namespace)
    await ensure_topics(
        settings.kafka_bootstrap,
        [topics.clicks, topics.orders, topics.catalog],
        settings.partitions,
    )
    async with Publisher(settings.kafka_bootstrap) as publisher:
        await publisher.send_many(topics.catalog, events.catalog)
        await publisher.send_many(topics.clicks, events.clicks)


async def wait_for(store: RedisStore, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while await store.events_seen() < count:
        if process.poll() is not None:
            raise RuntimeError(f"the stream worker exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not take in {count} events in time")
        await asyncio.sleep(0.5)


async def read_lists(store: RedisStore, users: list[str]) -> tuple[dict[str, list[str]], str]:
    lists: dict[str, list[str]] = {}
    versions = set()
    for user in users:
        document: Any = await store.get_json(store.keys.recs(user))
        if document is not None:
            lists[user] = [item["item_id"] for item in document["items"][:K]]
            versions.add(document["model_version"])
    return lists, ",".join(sorted(versions))


async def run_live(base: Settings, data_dir: Path, console: Console, log_dir: Path) -> LiveResult:
    train, test = split_ratings(load_ratings(data_dir, file_order=True))
    namespace = f"eval{uuid.uuid4().hex[:8]}"
    with broker_for(base) as bootstrap:
        settings = evaluation_settings(base, namespace, bootstrap)
        store = RedisStore(redis_for(settings), Keys.of(settings))
        try:
            log_path = log_dir / f"worker-{namespace}.log"
            with localstack.worker_process(settings_env(settings), log_path, "warning") as process:
                started = time.monotonic()
                with console.status(f"publishing {len(train):,} training ratings through Kafka"):
                    await publish_training(settings, data_dir, train)
                with console.status("waiting for the stream worker"):
                    await wait_for(store, len(train), process)
                ingest_seconds = time.monotonic() - started
                started = time.monotonic()
                with console.status("retraining ALS and recomputing every list"):
                    retrainer = Retrainer(settings)
                    try:
                        await retrainer.run_once()
                    finally:
                        await retrainer.close()
                retrain_seconds = time.monotonic() - started
            lists, versions = await read_lists(store, sorted(test))
            metrics = ranking_metrics(lists, test, K)
            return LiveResult(
                metrics, namespace, versions, len(train), ingest_seconds, retrain_seconds
            )
        finally:
            async for key in store.client.scan_iter(store.keys.pattern(), count=1000):
                await store.client.delete(key)
            await store.close()
