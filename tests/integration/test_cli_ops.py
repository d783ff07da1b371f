"""``shoppulse status`` and ``shoppulse retrain`` against a real broker and Redis: the status
shows the serving churn model beside ALS, and a Redis error in the middle of a retraining is one
line (``--every`` goes on at the next tick instead of ending)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shoppulse import localstack
from tests.churn_models import overdue_model
from tests.integration.conftest import Stack, publish_churn_model

pytestmark = pytest.mark.integration

CHURN_VERSION = "churn-20240101T000000Z-def456"


def shoppulse(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoppulse", *args],
        env={**stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_status_shows_the_churn_model_and_its_age(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(workers=0)
    before = await asyncio.to_thread(shoppulse, stack, "status")
    assert before.returncode == 0, before.stdout + before.stderr
    assert "churn model" in before.stdout and "none yet" in before.stdout
    lag_rows = [line for line in before.stdout.splitlines() if "lag " in line]
    assert lag_rows and all("0 events" in line for line in lag_rows), before.stdout
    await publish_churn_model(stack, overdue_model(CHURN_VERSION))
    done = await asyncio.to_thread(shoppulse, stack, "status")
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if "churn model" in line)
    assert CHURN_VERSION in row and "published" in row and "s ago" in row
    als = next(line for line in done.stdout.splitlines() if "ALS model" in line)
    assert "none yet" in als


def wait_for(log: Path, text: str, count: int, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if output.count(text) >= count:
            return output
        assert process.poll() is None, f"retrain --every exited:\n{output}"
        time.sleep(0.2)
    raise AssertionError(f"{count} x {text!r} not seen in:\n{log.read_text(errors='replace')}")


async def test_a_redis_error_is_one_line_and_every_tries_again(
    make_stack: Callable[..., Awaitable[Stack]], tmp_path: Path
) -> None:
    stack = await make_stack(workers=0)
    # A real Redis error mid-run: the clock is read first by both trainings, and a hash where
    # a string belongs makes Redis answer WRONGTYPE.
    await stack.redis.hset(stack.keys.clock(), "not", "a number")

    once = await asyncio.to_thread(shoppulse, stack, "retrain")
    assert once.returncode != 0
    assert "Traceback" not in once.stdout + once.stderr
    failures = [line for line in once.stdout.splitlines() if "failed:" in line]
    assert len(failures) == 2, once.stdout  # ALS, then churn: one line each
    assert all("Redis error: WRONGTYPE" in line for line in failures)

    log = tmp_path / "every.log"
    with open(log, "wb") as out:
        every = subprocess.Popen(
            [sys.executable, "-m", "shoppulse", "retrain", "--every", "1s"],
            env={**stack.env, "COLUMNS": "200"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(log, "Redis error: WRONGTYPE", 4, every)  # two ticks, both failed, still on
        await stack.redis.delete(stack.keys.clock())
        seen = wait_for(log, "churn model not trained: no history yet", 1, every)
        assert every.poll() is None
        assert "Traceback" not in seen
    finally:
        localstack.stop_process(every)
