"""What every ShopPulse stream process shares: waiting out a Redis outage, and the garbage
collector's tuning. Free of Faust, so the refresh process (stream/refresher.py) imports it
without the Faust worker's start-up cost."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.metrics import METRICS

log = logging.getLogger(__name__)

R = TypeVar("R")

RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError)
MAX_BACKOFF = 5.0
# Allocations between young-generation collections (CPython's default is 700). A batch makes
# hundreds of thousands of short-lived dicts, lists and tuples that reference counting frees;
# at the default, the cyclic collector ran thousands of times a batch over the worker's whole
# young heap: a quarter of the worker's CPU (measured in-process on the bench load).
GC_YOUNG_THRESHOLD = 50_000


async def with_retry(
    work: Callable[[], Awaitable[R]],
    on_failure: Callable[[BaseException], None] = METRICS.redis_failure,
) -> R:
    """Run ``work`` until Redis lets it finish: an outage delays a batch, never drops it.
    Each failed try is reported to ``on_failure`` (the process's metrics by default)."""
    delay = 0.1
    while True:
        try:
            return await work()
        except RETRYABLE as exc:
            on_failure(exc)
            log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


def tune_garbage_collection() -> None:
    """Collect less often, and never again scan what start-up made (modules, the app):
    ``gc.freeze`` moves it out of the collector's generations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
