"""The retrain's held-back check, on a synthetic shop with a known answer, against the real
Redis (no Kafka: the Processor applies the events directly, lists are not published).

The shop: 5 communities of 20 items; a user clicks items of their own community (9 in 10
clicks, popular ones more often). Phase 1: 300 users in [T0, T0 + 1000). Phase 2: 100 of them
click 2 more items, and 100 new users arrive, in [T0 + 1000, T0 + 2000). A model trained on
phase 1 serves; the retrain after phase 2 must be judged on interactions it never saw.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.serving import AlsScorer, PublishedModel
from models.training import hold_out_latest
from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.model_store import ModelStore
from stream.processor import Processor, RawEvent
from stream.store import RedisStore, connect
from tests.integration.conftest import REDIS_URL
from workers.retrain import MIN_ITEMS, MIN_USERS, Retrainer, RetrainResult

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
COMMUNITIES, ITEMS = 5, 20
GOOD = {"als_factors": 16, "als_regularization": 1.0, "als_alpha": 5.0}
ABSURD = {"als_factors": 1, "als_regularization": 1e4, "als_alpha": 5.0}
ROOT = Path(__file__).resolve().parents[2]


def shop(seed: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Click events of phase 1 and phase 2 (see the module docstring)."""
    rnd = random.Random(seed)
    had: dict[str, set[str]] = {}

    def clicks(user: int, n: int, start: float) -> list[dict[str, Any]]:
        pool = [f"c{user % COMMUNITIES}i{k}" for k in range(ITEMS)]
        popularity = [1.0 / (k + 1) for k in range(ITEMS)]
        events = []
        for _ in range(n):
            if rnd.random() < 0.9:
                item = rnd.choices(pool, popularity)[0]
            else:
                item = f"c{rnd.randrange(COMMUNITIES)}i{rnd.randrange(ITEMS)}"
            if item in had.setdefault(f"u{user}", set()):
                continue
            had[f"u{user}"].add(item)
            ts = start + rnd.uniform(0.0, 999.0)
            user_id = f"u{user}"
            event = {"event_id": f"{user_id}-{item}", "type": "click", "user_id": user_id}
            events.append(event | {"item_id": item, "ts": ts})
        return events

    first = [e for u in range(300) for e in clicks(u, rnd.randint(4, 10), T0)]
    second = [e for u in rnd.sample(range(300), 100) for e in clicks(u, 2, T0 + 1000)]
    second += [e for u in range(300, 400) for e in clicks(u, rnd.randint(4, 10), T0 + 1000)]
    return first, second


class Shop:
    """A namespace of the test Redis, fed through the stream's Processor."""

    def __init__(self) -> None:
        self.namespace = f"gate{uuid.uuid4().hex[:8]}"
        self.settings = Settings(namespace=self.namespace, redis_url=REDIS_URL, holdout_users=100)
        keys = Keys(self.namespace)
        self.store = RedisStore(connect(REDIS_URL), keys)
        self.models = ModelStore(connect(REDIS_URL, decode=False), keys)
        self.offset = 0

    async def apply(self, events: list[dict[str, Any]]) -> None:
        topic = Topics(self.namespace).clicks
        processor = Processor(self.store, self.settings)
        for start in range(0, len(events), 500):
            raw = [
                RawEvent(topic, 0, self.offset + n, e["user_id"].encode(), orjson.dumps(e))
                for n, e in enumerate(events[start : start + 500])
            ]
            self.offset += len(raw)
            await processor.process_user_events(raw, refresh=False)

    async def retrain(self, **overrides: Any) -> RetrainResult:
        settings = self.settings.model_copy(update={**GOOD, **overrides})
        retrainer = Retrainer(settings, publish_to_kafka=False)
        try:
            return await retrainer.run_once()
        finally:
            await retrainer.close()

    async def current(self, with_users: bool = False) -> PublishedModel | None:
        return await self.models.load_current(with_users=with_users)

    async def close(self) -> None:
        async for key in self.store.client.scan_iter(f"{self.namespace}:*", count=1000):
            await self.store.client.delete(key)
        await self.store.close()
        await self.models.client.aclose()


@pytest.fixture
async def new_shop(redis_url: str) -> AsyncIterator[Shop]:
    assert redis_url == REDIS_URL
    made = Shop()
    try:
        yield made
    finally:
        await made.close()


# -- 1. a fair check ----------------------------------------------------------------------------


async def test_the_same_parameters_on_more_data_are_published(new_shop: Shop) -> None:
    # The old check drew a fresh sample of latest interactions that the serving model had been
    # trained on: it scored the serving model above the new one (0.76 vs 0.68 here) and kept it.
    first, second = shop()
    await new_shop.apply(first)
    serving = await new_shop.retrain()
    assert serving.published
    await new_shop.apply(second)
    again = await new_shop.retrain()
    assert again.published, again.reason
    assert again.previous_version == serving.version
    assert again.previous_hit_rate is not None and again.hit_rate is not None
    assert again.held_back == 100  # 200 users have an interaction after the serving model's data
    assert "newer than" in again.reason
    current = await new_shop.current()
    assert current is not None and current.version == again.version
    assert current.params["trained_through"] == max(e["ts"] for e in first + second)


async def test_only_interactions_newer_than_the_serving_model_are_held_back(
    new_shop: Shop,
) -> None:
    first, second = shop()
    await new_shop.apply(first)
    await new_shop.retrain()
    serving = await new_shop.current()
    assert serving is not None
    through = serving.params["trained_through"]
    assert through == max(e["ts"] for e in first)
    await new_shop.apply(second)
    interactions = await Retrainer(new_shop.settings).load_interactions()
    holdout = hold_out_latest(interactions, 100, newer_than=through)
    assert len(holdout.held_out) == 100
    fresh = {(e["user_id"], e["item_id"]) for e in second}
    assert all((user, item) in fresh for user, item in holdout.held_out.items())


async def test_a_genuinely_worse_model_is_not_published(new_shop: Shop) -> None:
    first, second = shop()
    await new_shop.apply(first)
    serving = await new_shop.retrain()
    await new_shop.apply(second)
    worse = await new_shop.retrain(**ABSURD)  # 1 factor, regularisation 10^4
    assert not worse.published
    assert "significantly worse" in worse.reason
    assert worse.hit_rate is not None and worse.previous_hit_rate is not None
    assert worse.hit_rate < worse.previous_hit_rate - 0.2
    current = await new_shop.current()
    assert current is not None and current.version == serving.version


async def test_a_genuinely_better_model_is_published(new_shop: Shop) -> None:
    first, second = shop()
    await new_shop.apply(first)
    serving = await new_shop.retrain(**ABSURD)
    assert serving.published  # the first model has nothing to beat
    await new_shop.apply(second)
    better = await new_shop.retrain()
    assert better.published, better.reason
    assert better.hit_rate is not None and better.previous_hit_rate is not None
    assert better.hit_rate > better.previous_hit_rate + 0.2


async def test_without_a_fair_slice_the_result_says_so(new_shop: Shop) -> None:
    first, _ = shop()
    await new_shop.apply(first)
    serving = await new_shop.retrain()
    # Nothing new since the serving model: nothing fair to judge on, so it stays.
    same = await new_shop.retrain()
    assert not same.published and same.held_back == 0
    assert same.reason == f"kept {serving.version}: nothing newer than its data, no fair check"
    # Only a newcomer with one click (too short to hold back): the serving parameters on newer
    # data are published, different ones are not.
    newcomer = {"event_id": "n-1", "type": "click", "user_id": "newcomer", "item_id": "c0i0"}
    await new_shop.apply([newcomer | {"ts": T0 + 5000}])
    other = await new_shop.retrain(als_factors=8)
    assert not other.published
    assert other.reason == f"kept {serving.version}: no fair held-back slice and parameters differ"
    fresh = await new_shop.retrain()
    assert fresh.published, fresh.reason
    assert fresh.reason == "published: no fair held-back slice, same parameters on newer data"


# -- 2. held-back users in the published model --------------------------------------------------


# A published user vector against the fold-in of their interactions (float32 factors).
FOLD_IN = {"rtol": 1e-4, "atol": 1e-5}


async def test_held_back_users_are_published_with_all_their_interactions(new_shop: Shop) -> None:
    first, _ = shop()
    await new_shop.apply(first)
    assert (await new_shop.retrain()).published
    model = await new_shop.current(with_users=True)
    assert model is not None
    interactions = await Retrainer(new_shop.settings).load_interactions()
    holdout = hold_out_latest(interactions, 100)  # the retrain's own (seeded) sample
    assert len(holdout.held_out) == 100
    scorer = AlsScorer(model)
    rows = {user: n for n, user in enumerate(model.user_ids)}
    clock = max(e["ts"] for e in first)
    for user, answer in holdout.held_out.items():
        published = model.user_factors[rows[user]]
        everything = scorer.user_vector(interactions[user], clock)
        without = scorer.user_vector(holdout.train[user], clock)
        assert answer in scorer.index
        assert everything is not None and without is not None
        np.testing.assert_allclose(published, everything, **FOLD_IN)
        # The check above would fail had the held-out interaction been left out (for a user
        # with many interactions one more moves the vector by only ~1e-3 of its size).
        assert not np.allclose(published, without, **FOLD_IN)


# -- 3. too little data -------------------------------------------------------------------------


async def test_an_empty_namespace_publishes_nothing(new_shop: Shop) -> None:
    result = await new_shop.retrain()
    assert not result.published
    assert result.reason == (
        f"too little data: 0 users and 0 items with interactions; ALS needs at least "
        f"{MIN_USERS} users and {MIN_ITEMS} items"
    )
    assert await new_shop.current() is None


async def test_too_little_data_keeps_the_serving_version(new_shop: Shop) -> None:
    factors = np.ones((2, 2), dtype=np.float32)
    serving = PublishedModel("als-serving", ["a", "b"], factors, ["x", "y"], factors, {})
    await new_shop.models.publish(serving)
    click = {"event_id": "e1", "type": "click", "user_id": "only", "item_id": "a", "ts": T0}
    await new_shop.apply([click])
    result = await new_shop.retrain()
    assert not result.published and result.previous_version == "als-serving"
    assert result.reason.startswith("too little data: 1 users and 1 items")
    assert await new_shop.models.current_version() == "als-serving"


# -- 4. progress in logs ------------------------------------------------------------------------


async def test_every_stage_is_logged(new_shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="workers.retrain")
    first, second = shop()
    await new_shop.apply(first)
    serving = await new_shop.retrain()
    await new_shop.apply(second)
    worse = await new_shop.retrain(**ABSURD)
    lines = [r.getMessage() for r in caplog.records if r.name == "workers.retrain"]
    assert any("loaded 300 users" in line and "serving none" in line for line in lines)
    assert any(
        "loaded 400 users" in line and f"serving {serving.version}" in line for line in lines
    )
    assert any(line.startswith(f"training {serving.version}: 16 factors") for line in lines)
    assert any(line.startswith(f"training {worse.version}: 1 factors") for line in lines)
    assert any(line.startswith(f"trained {serving.version} in ") for line in lines)
    assert any(line.startswith(f"published {serving.version} (300 users x") for line in lines)
    assert any(line.startswith("recomputed 300 users' recommendations") for line in lines)
    refused = [line for line in lines if line.startswith(f"not publishing {worse.version}")]
    assert len(refused) == 1
    assert "significantly worse, held-back HR@10" in refused[0]
    assert f"vs serving {worse.previous_hit_rate:.4f}" in refused[0]
    assert f"serving version stays: {serving.version}" in refused[0]


SCRIPT = """
import asyncio
from shoppulse.settings import Settings
from workers.retrain import Retrainer

async def main() -> None:
    retrainer = Retrainer(Settings(), publish_to_kafka=False)
    try:
        await retrainer.run_once()
    finally:
        await retrainer.close()

asyncio.run(main())
"""


async def test_stage_lines_reach_a_non_terminal_stderr_without_logging_set_up(
    new_shop: Shop,
) -> None:
    first, _ = shop()
    await new_shop.apply(first)
    env = {
        **os.environ,
        "SHOPPULSE_NAMESPACE": new_shop.namespace,
        "SHOPPULSE_REDIS_URL": REDIS_URL,
        **{f"SHOPPULSE_{k.upper()}": str(v) for k, v in GOOD.items()},
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "INFO workers.retrain: ALS retrain of" in done.stderr, done.stderr
    for stage in ("loaded 300 users", "training als-", "held-back check of als-", "published als-"):
        assert stage in done.stderr, done.stderr
