"""Two stages per batch; the second runs in the background, over every batch stored meanwhile.

A batch of user events is worked on in two stages: storing its events (decode, compute, one
commit script) and finishing it (refreshing its users' recommendations: one read script,
ranking, one write script; publishing; acking). :class:`CoalescingPipeline` runs first stages
in the agent, one after the other, and second stages in a background task: while one second
stage runs, the agent goes on taking and storing batches, and the next second stage takes
every batch stored meanwhile at once. The agent merges them (each user's latest record) and
refreshes each user once: under load a user active in several of those batches gets one new
list instead of one per batch, computed from their latest state, so no event's effect is left
out. Everything else stays as if batches ran one at a time:

* first stages run in the agent, one after the other, so a batch is stored only after the
  previous one is (a user's events are applied in the order Kafka delivered them);
* second stages run one at a time, over batches in the order they were stored, so lists are
  published, and batches acked, in batch order; at most ``max_waiting`` stored batches wait
  for one (back-pressure: the agent waits for room before taking more);
* a second stage that raises stops the pipeline: the error is raised by the next ``submit``
  (or ``join``), as it would have been raised by the agent itself, and no later batch goes on.

Overlap buys throughput; whether it also buys latency depends on where the second stage runs.
With the refresh in a process of its own (stream/refresher.py, the default) the two stages use
two cores and the agent always overlaps. With the refresh in the worker itself both share one
core: a click would wait for the batch in progress, its own first stage and then its second
stage, which competes with the next batch's first. So there the agent overlaps only under a
backlog (a full batch: more events are waiting anyway) and otherwise finishes each batch before
taking the next (``overlap=False``).

Pure asyncio: no Kafka, Faust or Redis here, so it is unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WAITING = 8  # stored batches waiting for a second stage before the agent waits


class CoalescingPipeline(Generic[T]):
    """``submit(first)`` runs ``first()`` now and queues its result; a background task runs
    ``second(results)`` over every result queued since its last run, in order."""

    def __init__(
        self, second: Callable[[Sequence[T]], Awaitable[None]], max_waiting: int = MAX_WAITING
    ) -> None:
        self._second = second
        self._max_waiting = max_waiting
        self._waiting: list[T] = []
        self._arrived = asyncio.Event()  # something is waiting
        self._taken = asyncio.Event()  # the runner took what was waiting
        self._idle = asyncio.Event()  # nothing waiting or running
        self._idle.set()
        self._runner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def submit(self, first: Callable[[], Awaitable[T]], overlap: bool = True) -> None:
        """Run a batch's first stage and queue its result; raises the error of a failed second
        stage (or of this first stage). With ``overlap`` False, wait until the batch's second
        stage is done too (the batch runs as if alone: see the module docstring)."""
        self._raise_failure()
        result = await first()
        self._waiting.append(result)
        self._idle.clear()
        self._arrived.set()
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        if not overlap:
            await self.join()
        while len(self._waiting) >= self._max_waiting and self._failure is None:
            self._taken.clear()
            await self._until(self._taken)
        self._raise_failure()

    async def join(self) -> None:
        """Wait until every queued batch's second stage is done; raises the error of a
        failed one."""
        if self._runner is not None and not self._idle.is_set():
            await self._until(self._idle)
        self._raise_failure()

    async def close(self) -> None:
        """Cancel the second stage in flight (shutdown: its batches are delivered again)."""
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event``, or for the runner to end (it failed, or was cancelled)."""
        assert self._runner is not None
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([waiter, self._runner], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            taken, self._waiting = self._waiting, []
            self._taken.set()
            try:
                await self._second(taken)
            except Exception as exc:
                log.error("a second stage failed (%r); the pipeline stops", exc)
                self._failure = exc
                self._idle.set()
                return
            if not self._waiting:
                self._idle.set()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
