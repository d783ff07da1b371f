"""Small Kafka helpers shared by the command line, replays and tests (aiokafka underneath)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shoppulse.errors import ShopPulseError

Message = tuple[bytes | None, bytes]


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name in names
            if name not in existing
        ]
        if missing:
            # Created concurrently by a worker in the meantime is what we wanted anyway.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def encode(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


class Publisher:
    """Publishes messages, optionally at a steady rate, waiting for the broker's acks."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=5, acks="all", max_batch_size=262_144
        )

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        await (await self._producer.send(topic, value=value, key=key))

    async def send_many(
        self,
        topic: str,
        messages: Iterable[Message],
        rate: float | None = None,
        on_sent: Any = None,
    ) -> int:
        """Send all messages; at most ``rate`` per second if given. Returns how many were sent.

        Sends are pipelined in chunks and each chunk waits for its acks, so a broker error
        surfaces here instead of being lost in the background."""
        pending: list[asyncio.Future[Any]] = []
        sent = 0
        started = time.monotonic()
        for key, value in messages:
            pending.append(await self._producer.send(topic, value=value, key=key))
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
                if on_sent:
                    on_sent(1000)
        if pending:
            await asyncio.gather(*pending)
            if on_sent:
                on_sent(len(pending))
        return sent


async def follow(
    bootstrap: str, topic: str, from_beginning: bool = True, idle_timeout: float | None = None
) -> AsyncIterator[Any]:
    """Yield decoded JSON documents from a topic; stop after ``idle_timeout`` s of silence."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    last_message = time.monotonic()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches:
                if idle_timeout is not None and time.monotonic() - last_message > idle_timeout:
                    return
                continue
            last_message = time.monotonic()
            for records in batches.values():
                for record in records:
                    try:
                        yield orjson.loads(record.value)
                    except orjson.JSONDecodeError as exc:
                        raise ShopPulseError(f"{topic} holds a non-JSON message: {exc}") from exc
    finally:
        await consumer.stop()


async def consumer_lag(bootstrap: str, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Per topic: end offsets minus the group's committed offsets, summed over partitions.

    The development broker can under-report end offsets for logs written in batches, so the
    lag it yields may look negative; it is clamped at 0 per partition."""
    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata for every topic
        lag: dict[str, int] = {}
        for topic in topics:
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            ends = await consumer.end_offsets(partitions) if partitions else {}
            behind = 0
            for partition, end in ends.items():
                committed = await consumer.committed(partition)
                behind += max(0, end - (committed or 0))
            lag[topic] = behind
        return lag
    finally:
        await consumer.stop()
