"""``send_batched`` (how the bench, the soak and the demo publish) against the real broker:
every key's messages land on the partition the producer's own ``send`` picks for that key, in
the order given; the ends it reports are where the partitions' logs end; a rate is kept."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shoppulse.kafka import ensure_topics, send_batched

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def _read_all(broker: str, topic: str, total: int) -> dict[int, list[tuple[bytes, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        read: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        deadline = time.monotonic() + 30
        while sum(map(len, read.values())) < total and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                read[tp.partition] += [(r.key, r.value) for r in records]
        return read
    finally:
        await consumer.stop()


async def test_keys_keep_their_partition_and_order(broker: str) -> None:
    topic = f"batched-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, [topic], PARTITIONS)
    keys = [b"user-%d" % n for n in range(40)]
    messages = [(topic, keys[n % len(keys)], b"%d" % n) for n in range(3_000)]
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        sent = await send_batched(producer, messages)
        # Where the per-message path puts each key: one message per key, sent after.
        check = f"{topic}-check"
        await ensure_topics(broker, [check], PARTITIONS)
        expected_partition = {
            k: (await (await producer.send(check, b"", key=k))).partition for k in keys
        }
    finally:
        await producer.stop()

    read = await _read_all(broker, topic, len(messages))
    assert sent.count == sum(map(len, read.values())) == len(messages)
    for partition, records in read.items():
        assert {expected_partition[key] for key, _ in records} == {partition}
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for records in read.values():
        for key, value in records:
            by_key[key].append(int(value))
    assert all(values == sorted(values) for values in by_key.values())
    assert set(by_key) == set(keys)
    # (Read back, not asked of ListOffsets: Tansu under-reports logs written in batches.)
    assert sent.ends == {(topic, partition): len(records) for partition, records in read.items()}


async def test_a_rate_is_kept(broker: str) -> None:
    topic = f"paced-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, [topic], PARTITIONS)
    messages = [(topic, b"k%d" % (n % 7), b"%d" % n) for n in range(600)]
    confirmed: list[int] = []
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        began = time.monotonic()
        sent = await send_batched(producer, messages, rate=2_000.0, on_sent=confirmed.append)
        seconds = time.monotonic() - began
    finally:
        await producer.stop()
    assert sent.count == sum(confirmed) == len(messages)
    assert 0.28 <= seconds < 3.0  # 600 at 2,000/s: 0.3 s, less the first tick's head start
