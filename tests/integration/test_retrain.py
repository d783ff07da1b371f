"""Retraining end to end: `shoppulse retrain` publishes an ALS version that the running worker
serves without a restart; a failed training leaves the serving version in place."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
TASTES = {"a": ["A1", "A2", "A3", "A4", "A5"], "b": ["B1", "B2", "B3", "B4", "B5"]}
BLEND = '{"als": 1.0, "itemknn": 0.5, "category": 0.1, "popularity": 0.1}'


def click(user: str, item: str, ts: float, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": "click", "user_id": user, "item_id": item, "ts": ts}


async def retrain(stack: Stack, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, **{f"SHOPPULSE_{k.upper()}": v for k, v in overrides.items()}}
    command = [sys.executable, "-m", "shoppulse", "retrain"]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=180
    )


async def current_version(stack: Stack) -> str | None:
    value = await stack.redis.get(stack.keys.current_model("als"))
    return str(value) if value is not None else None


async def recs_after(stack: Stack, user: str, event: dict[str, Any]) -> dict[str, Any]:
    """Publish one click and return the user's recommendations computed after it."""
    before = await stack.json(stack.keys.recs(user))
    await stack.publish(stack.topics.clicks, event)

    async def changed() -> dict[str, Any] | None:
        document = await stack.json(stack.keys.recs(user))
        fresh = document is not None and (
            before is None or document["recommendation_id"] != before["recommendation_id"]
        )
        return document if fresh else None  # type: ignore[no-any-return]

    return await stack.until(changed, 30, f"new recommendations of {user}")


async def test_retrain_swaps_the_model_live_and_a_failed_training_keeps_it(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(blend_weights=BLEND, holdout_users=4)
    events = [
        click(f"{taste}{n}", item, T0 + n * 60 + k, f"{taste}{n}-{k}")
        for taste, items in TASTES.items()
        for n in range(10)
        for k, item in enumerate(items[: 3 + n % 3])
    ]
    await stack.publish(stack.topics.clicks, *events)
    await stack.wait_seen(len(events))
    assert await current_version(stack) is None

    trained = await retrain(stack)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    version = await current_version(stack)
    assert version is not None and version.startswith("als-")
    # Every known user's list was recomputed with the new model by the retrain itself.
    for user in ("a0", "b9"):
        document = await stack.json(stack.keys.recs(user))
        assert document["model_version"] == version

    # The worker, never restarted, serves the new version, folding in a brand-new user.
    fresh = await recs_after(stack, "newcomer", click("newcomer", "A1", T0 + 3600, "nc-1"))
    assert fresh["model_version"] == version
    assert "als" in {item["source"] for item in fresh["items"]}
    assert {item["item_id"] for item in fresh["items"][:3]} <= set(TASTES["a"])

    # Training that blows up (infinite confidence -> NaN factors) publishes nothing.
    failed = await retrain(stack, als_alpha="1e38")
    assert failed.returncode == 1
    assert "training failed" in failed.stdout
    assert await current_version(stack) == version
    again = await recs_after(stack, "newcomer", click("newcomer", "A2", T0 + 7200, "nc-2"))
    assert again["model_version"] == version
