"""Lists in Redis never go back in time: a worker that computed lists with a model that is no
longer current recomputes them with the new one before writing, and a retrain never writes
over the list of a user a newer batch has changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest

from models.serving import PublishedModel
from stream.keys import Topics
from stream.processor import Processor, RawEvent
from tests.integration.conftest import processor_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
ITEMS = ["A", "B", "C", "D"]


@pytest.fixture
async def processor(redis_url: str) -> AsyncIterator[Processor]:
    async with processor_for(redis_url) as built:
        yield built


def clicks(processor: Processor, *events: tuple[str, str, int]) -> list[RawEvent]:
    topic = Topics(processor.settings.namespace).clicks
    return [
        RawEvent(topic, 0, n, user.encode(), orjson.dumps(document))
        for user, item, n in events
        for document in [
            {"event_id": f"{user}-{n}", "type": "click", "user_id": user, "item_id": item}
            | {"ts": T0 + n}
        ]
    ]


def model(version: str) -> PublishedModel:
    factors = np.eye(len(ITEMS), dtype=np.float32)
    return PublishedModel(version, ITEMS, factors, [], np.zeros((0, len(ITEMS)), np.float32), {})


async def recs(processor: Processor, user: str) -> dict[str, Any]:
    document = await processor.store.get_json(processor.store.keys.recs(user))
    assert document is not None
    return dict(document)


async def test_lists_computed_with_a_replaced_model_are_recomputed_with_the_new_one(
    processor: Processor,
) -> None:
    await processor.process_user_events(clicks(processor, ("u1", "A", 0), ("u2", "B", 1)))
    assert (await recs(processor, "u1"))["model_version"] == "online"
    # A retrain publishes a version between this worker's model check and its write: the
    # records are in hand (as after a commit), the worker has not followed the new version.
    records, _ = await processor.store.load_users(["u1"], [])
    await processor.models.publish(model("als-new"))  # type: ignore[union-attr]

    written = await processor.refresh_recommendations(list(records.values()), T0 + 1)

    assert [d["model_version"] for d in written] == ["als-new"]
    assert (await recs(processor, "u1"))["model_version"] == "als-new"
    assert processor.model_version == "als-new"


async def test_a_retrain_skips_users_a_newer_batch_has_changed(processor: Processor) -> None:
    await processor.process_user_events(clicks(processor, ("u1", "A", 0), ("u2", "B", 1)))
    # The retrain reads everyone's state, then a batch changes u1 and writes u1's list.
    records, _ = await processor.store.load_users(["u1", "u2"], [])
    versions = {user: record.version for user, record in records.items()}
    await processor.process_user_events(clicks(processor, ("u1", "C", 2)))
    fresh = await recs(processor, "u1")

    written = await processor.refresh_recommendations(
        list(records.values()), T0 + 2, None, versions
    )

    assert [d["user_id"] for d in written] == ["u2"]
    assert await recs(processor, "u1") == fresh  # the batch's list stays
    assert (await recs(processor, "u2"))["recommendation_id"] == written[0]["recommendation_id"]
