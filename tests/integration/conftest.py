"""Real parts for integration tests: a Tansu broker on a free port, the Redis at
``SHOPPULSE_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15), and ShopPulse workers run as
child processes exactly as ``shoppulse worker`` runs in production."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from models.churn import ChurnModel
from shoppulse import localstack
from shoppulse.kafka import Publisher, ensure_topics
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.model_store import ChurnModels, ChurnModelStore, ModelStore
from stream.processor import Processor
from stream.store import RedisStore, connect

T = TypeVar("T")
REDIS_URL = os.environ.get("SHOPPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    with localstack.Broker(port=localstack.free_port()) as running:
        yield running.bootstrap


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A local Redis Cluster of three primaries (started once, on first use)."""
    with localstack.LocalRedisCluster(nodes=3) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not localstack.redis_reachable(REDIS_URL):
        pytest.fail(f"integration tests need Redis at {REDIS_URL} (see .ci/run)")
    return REDIS_URL


class Stack:
    """One namespace on the shared broker and Redis, with its own workers."""

    def __init__(self, broker: str, redis_url: str, namespace: str, **settings: Any) -> None:
        self.broker = broker
        self.redis_url = redis_url
        self.namespace = namespace
        self.cluster = str(settings.get("redis_cluster", "false")).lower() == "true"
        self.keys = Keys(namespace, hash_tag=self.cluster)
        self.topics = Topics(namespace)
        self.env = {
            **os.environ,
            "SHOPPULSE_KAFKA_BOOTSTRAP": broker,
            "SHOPPULSE_REDIS_URL": redis_url,
            "SHOPPULSE_NAMESPACE": namespace,
            "SHOPPULSE_WEB_ENABLED": "false",
            "SHOPPULSE_KAFKA_REBALANCE_TIMEOUT": "3",
            "SHOPPULSE_BATCH_WINDOW_MS": "20",
            **{f"SHOPPULSE_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started = 0  # workers started so far, for their log names
        self.redis = connect(redis_url, cluster=self.cluster)

    async def start(self, partitions: int = 2) -> None:
        topics = self.topics
        await ensure_topics(
            self.broker,
            [topics.clicks, topics.orders, topics.catalog, topics.recommendations],
            partitions,
        )
        await ensure_topics(self.broker, [topics.churn_alerts], partitions)
        await ensure_topics(self.broker, [topics.deadletter], 1)

    def start_worker(self) -> subprocess.Popen[bytes]:
        ARTIFACTS.mkdir(exist_ok=True)
        log = open(self.log_path(self.started), "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "shoppulse", "worker", "--loglevel", "warning"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.workers.append(process)
        self.started += 1
        return process

    def log_path(self, n: int) -> Path:
        """The log of the n-th worker started (restarts get their own)."""
        return ARTIFACTS / f"worker-{self.namespace}-{n}.log"

    def stop_workers(self) -> None:
        for process in self.workers:
            process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.workers.clear()

    async def publish(self, topic: str, *documents: dict[str, Any] | bytes) -> None:
        async with Publisher(self.broker) as publisher:
            for document in documents:
                if isinstance(document, bytes):
                    await publisher.send(topic, None, document)
                else:
                    key = document.get("user_id") or document.get("item_id")
                    await publisher.send(topic, str(key).encode(), orjson.dumps(document))

    async def publish_fast(
        self, topic: str, documents: list[dict[str, Any]], key: str = "user_id"
    ) -> None:
        """Pipelined publishing (acks awaited per thousand), for loads; keyed by ``key``."""
        messages = [(str(d[key]).encode(), orjson.dumps(d)) for d in documents]
        async with Publisher(self.broker) as publisher:
            await publisher.send_many(topic, messages)

    async def cli(
        self, *args: str, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``shoppulse ARGS`` as a child process with the stack's settings (``env`` on top)."""
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shoppulse", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    async def json(self, key: str) -> Any:
        raw = await self.redis.get(key)
        return orjson.loads(raw) if raw is not None else None

    async def events_seen(self) -> int:
        applied, duplicates = await self.redis.hmget(self.keys.stats(), "applied", "duplicates")
        return int(applied or 0) + int(duplicates or 0)

    async def wait_seen(self, count: int, timeout: float = 60) -> None:
        """Wait until the workers have taken in ``count`` user events (applied or duplicate)."""
        await self.until(lambda: self._seen_at_least(count), timeout, f"{count} events seen")

    async def until(
        self, probe: Callable[[], Awaitable[T | None]], timeout: float = 30, what: str = "it"
    ) -> T:
        """Like :func:`eventually`, but fails at once, with its log, if a worker died."""

        async def checked() -> T | None:
            self.assert_workers_alive()
            return await probe()

        return await eventually(checked, timeout, what)

    def assert_workers_alive(self) -> None:
        first = self.started - len(self.workers)  # the running ones are the latest started
        for n, process in enumerate(self.workers, start=first):
            if process.poll() is not None:
                log = self.log_path(n).read_text(errors="replace")
                raise AssertionError(f"worker {n} exited with {process.returncode}:\n{log[-3000:]}")

    async def _seen_at_least(self, count: int) -> bool | None:
        return (await self.events_seen()) >= count or None

    async def read_topic(self, topic: str, count: int, timeout: float = 30) -> list[Any]:
        """The first ``count`` JSON documents of a topic (fails if fewer arrive in time)."""
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.broker, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        documents: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while len(documents) < count and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    documents += [orjson.loads(r.value) for r in records]
        finally:
            await consumer.stop()
        assert len(documents) >= count, f"{topic}: {len(documents)} of {count} documents"
        return documents

    async def consumer_group(self) -> tuple[str, int]:
        """The workers' consumer group as the broker describes it: its state and members."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([self.namespace])
        finally:
            await admin.close()
        (_, _, state, _, _, members) = response.groups[0]
        return str(state), len(members)

    async def json_hash(self, key: str) -> dict[str, str] | None:
        return await self.redis.hgetall(key) or None  # type: ignore[misc]

    async def cleanup_keys(self) -> None:
        async for key in self.redis.scan_iter(self.keys.pattern(), count=1000):
            await self.redis.delete(key)

    async def cleanup(self) -> None:
        self.stop_workers()
        await self.cleanup_keys()
        await self.redis.aclose()


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 30, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something other than None (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def make_stack(broker: str, redis_url: str) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Factory of isolated stacks (own namespace, own workers); all torn down at the end."""
    stacks: list[Stack] = []

    async def make(
        workers: int = 1, partitions: int = 2, redis: str | None = None, **settings: Any
    ) -> Stack:
        stack = Stack(broker, redis or redis_url, f"t{uuid.uuid4().hex[:10]}", **settings)
        stacks.append(stack)
        await stack.start(partitions)
        for _ in range(workers):
            stack.start_worker()
        return stack

    yield make
    for stack in stacks:
        await stack.cleanup()


async def publish_churn_model(stack: Stack, model: ChurnModel) -> None:
    """Publish ``model`` (no segments) as the stack's serving churn version."""
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        await ChurnModelStore(client, stack.keys).publish(ChurnModels(model.version, model, None))
    finally:
        await client.aclose()


@asynccontextmanager
async def processor_for(redis_url: str, **settings: Any) -> AsyncIterator[Processor]:
    """A Processor built as stream/app.py builds it, on a fresh namespace of the real Redis
    (removed afterwards), for tests that drive batches without Kafka."""
    keys = Keys(f"p{uuid.uuid4().hex[:10]}")
    config = Settings(namespace=keys.ns, redis_url=SecretStr(redis_url), **settings)
    store = RedisStore(connect(redis_url), keys)
    models = ModelStore(connect(redis_url, decode=False), keys)
    try:
        yield Processor(store, config, models)
    finally:
        async for key in store.client.scan_iter(f"{keys.ns}:*", count=1000):
            await store.client.delete(key)
        await store.close()
        await models.client.aclose()
