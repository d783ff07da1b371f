"""``partition_positions`` (what the bench reports when a worker stops short) against the real
broker: each partition's log end is the number of messages acknowledged on it, and a group's
committed offset is what it committed (0 before it commits)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from shoppulse.kafka import Publisher, ensure_topics, partition_positions

pytestmark = pytest.mark.integration


async def test_positions_are_log_ends_and_committed_offsets(broker: str) -> None:
    topic, group = f"ends-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker, [topic], 2)
    async with Publisher(broker) as publisher:
        for n in range(7):
            await publisher.send(topic, b"same-key", b"%d" % n)  # one key: one partition
    before = await partition_positions(broker, group, [(topic, 0), (topic, 1)])
    assert sorted(before.values()) == [(0, 0), (7, 0)]
    written = next(tp for tp, (end, _) in before.items() if end == 7)
    committer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group)
    await committer.start()
    try:
        committer.assign([TopicPartition(*written)])  # commits without joining the group
        await committer.commit({TopicPartition(*written): OffsetAndMetadata(4, "")})
    finally:
        await committer.stop()
    after = await partition_positions(broker, group, [written])
    assert after == {written: (7, 4)}
