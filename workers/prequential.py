"""Streaming (prequential) evaluation: replay MovieLens-100k in time order and, just before each
interaction after a warm-up, ask whether the item is among the 10 the user holds in Redis.

Three configurations share the same real code (the stream's Processor, Redis, Retrainer):

* ``frozen``: a model trained at the end of the warm-up; lists computed once, never again;
* ``retrain``: the same, plus a retrain (and a recompute of every list) every period;
* ``realtime``: retrains as above, plus ShopPulse's per-event refresh (fold-in, item-kNN,
  popularity) after every micro-batch.

Events are applied to the state in every configuration (a retrain must see them); only who
refreshes the lists differs. Each interaction is checked against the lists as they were before
its micro-batch, so the replay never peeks at the event it is scoring.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from shoppulse.datasets import Rating, load_movies, load_ratings
from shoppulse.replay import movielens_events
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.model_store import ModelStore
from stream.processor import SECONDS_PER_DAY, Processor, RawEvent
from stream.store import RedisStore, redis_for
from workers.retrain import Retrainer

CONFIGURATIONS = ("frozen", "retrain", "realtime")
K = 10
WARM_UP_SHARE = 0.5
BATCH = 100


@dataclass(frozen=True, slots=True)
class StreamingResult:
    configuration: str
    hit_rate: float
    hits: int
    scored: int
    retrains: int
    seconds: float


class Replay:
    """One configuration's replay in its own namespace, cleaned up afterwards."""

    def __init__(self, base: Settings, configuration: str, retrain_days: float) -> None:
        namespace = f"preq{uuid.uuid4().hex[:8]}"
        self.settings = base.model_copy(
            update={
                "namespace": namespace,
                "interactions_cap": max(base.interactions_cap, 1000),
                "dedupe_cap": max(base.dedupe_cap, 1000),
                "holdout_users": 0,
            }
        )
        self.configuration = configuration
        self.period = retrain_days * SECONDS_PER_DAY
        self.keys = Keys.of(self.settings)
        self.topics = Topics(namespace)
        self.store = RedisStore(redis_for(self.settings), self.keys)
        models = ModelStore(redis_for(self.settings, decode=False), self.keys)
        self.processor = Processor(self.store, self.settings, models)

    async def close(self) -> None:
        async for key in self.store.client.scan_iter(self.keys.pattern(), count=1000):
            await self.store.client.delete(key)
        await self.store.close()
        if self.processor.models is not None:
            await self.processor.models.client.aclose()

    async def retrain(self) -> None:
        retrainer = Retrainer(self.settings, publish_to_kafka=False)
        try:
            await retrainer.run_once()
        finally:
            await retrainer.close()

    async def apply(self, batch: Sequence[tuple[bytes | None, bytes]], offset: int) -> None:
        raw = [
            RawEvent(self.topics.clicks, 0, offset + n, key, value)
            for n, (key, value) in enumerate(batch)
        ]
        await self.processor.process_user_events(raw, refresh=self.configuration == "realtime")

    async def held_lists(self, users: Sequence[str]) -> dict[str, list[str]]:
        pipe = self.store.client.pipeline(transaction=False)
        for user in users:
            pipe.get(self.keys.recs(user))
        lists = {}
        for user, raw in zip(users, await pipe.execute(), strict=True):
            if raw is not None:
                lists[user] = [item["item_id"] for item in orjson.loads(raw)["items"][:K]]
        return lists

    async def run(self, ratings: Sequence[Rating], data_dir: Path) -> StreamingResult:
        started = time.monotonic()
        events = movielens_events(list(ratings), load_movies(data_dir))
        raw_catalog = [
            RawEvent(self.topics.catalog, 0, n, key, value)
            for n, (key, value) in enumerate(events.catalog)
        ]
        await self.processor.process_catalog(raw_catalog)
        warm = int(len(ratings) * WARM_UP_SHARE)
        for start in range(0, warm, 500):
            await self.apply(events.clicks[start : min(start + 500, warm)], start)
        await self.retrain()
        retrains, next_retrain = 1, ratings[warm - 1].ts + self.period
        hits = scored = 0
        for start in range(warm, len(ratings), BATCH):
            batch = ratings[start : start + BATCH]
            if self.configuration != "frozen" and batch[0].ts >= next_retrain:
                await self.retrain()
                retrains += 1
                next_retrain = batch[0].ts + self.period
            held = await self.held_lists(sorted({r.user_id for r in batch}))
            hits += sum(1 for r in batch if r.item_id in held.get(r.user_id, ()))
            scored += len(batch)
            await self.apply(events.clicks[start : start + BATCH], start)
        return StreamingResult(
            self.configuration, hits / scored, hits, scored, retrains, time.monotonic() - started
        )


async def run_streaming(
    base: Settings, data_dir: Path, console: Console, retrain_days: float = 7.0
) -> list[StreamingResult]:
    ratings = load_ratings(data_dir)
    results = []
    for configuration in CONFIGURATIONS:
        replay = Replay(base, configuration, retrain_days)
        try:
            with console.status(f"replaying MovieLens-100k in time order: {configuration}"):
                results.append(await replay.run(ratings, data_dir))
        finally:
            await replay.close()
    return results


def as_report(results: Sequence[StreamingResult]) -> dict[str, Any]:
    return {
        "protocol": (
            f"time-ordered replay; after the first {WARM_UP_SHARE:.0%} of ratings, HR@{K} of the "
            "list each user holds just before each rating"
        ),
        "results": [
            {
                "configuration": r.configuration,
                "hit_rate": r.hit_rate,
                "hits": r.hits,
                "scored": r.scored,
                "retrains": r.retrains,
                "seconds": r.seconds,
            }
            for r in results
        ],
    }
