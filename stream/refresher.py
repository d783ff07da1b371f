"""Recommendation refreshes in a process of their own.

Each batch of user events goes through two stages (stream/pipeline.py): storing its events, and
refreshing its users' lists (reading candidates, ranking, writing the lists). In one process the
two share one core: at the bench's top rate the worker ran at 0.93 of a core and Redis at 0.44,
a third of the machine idle, and at half that rate a batch's two stages, one after the other,
took longer than its events took to arrive (issue 5's notes). :class:`RefreshProcess` runs the
second stage in a child process with its own Redis connections and its own copy of the served
model, so the worker stores batch N+1 while the child refreshes batch N.

One request at a time goes over a pipe (the pipeline keeps at most one refresh in flight): the
worker sends the batch's user records (what ranking reads of them) and its clock; the child
follows the served model, refreshes exactly as the worker would (``refresh_isolated``) and
answers with the documents, which the worker publishes before it acks the batch. The child
waits out Redis outages like the worker and reports the failures with its answer, for the
worker's metrics (nobody scrapes the child's).

The child exits when its pipe closes (the worker stopped or died) and ignores SIGINT (Ctrl-C on
a terminal reaches the whole process group; the worker stops it in its own time). If it dies,
the worker starts another and sends the batch again: a refresh only rewrites lists from stored
state, so running one twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from models.profile import UserRecord
from shoppulse.errors import RefreshError
from shoppulse.settings import Settings
from stream.metrics import METRICS, Metrics
from stream.processor import AppliedBatch, BatchOutcome, Processor, build_processor
from stream.runtime import tune_garbage_collection, with_retry

log = logging.getLogger(__name__)

MAX_STARTS = 3  # per batch: a child that dies three times running will not do better
STOP_SECONDS = 5.0
READY = "ready"


async def refresh_isolated(
    processor: Processor,
    applied: AppliedBatch,
    on_failure: Callable[[BaseException], None] = METRICS.redis_failure,
) -> None:
    """Refresh a stored batch's lists; if that fails for a reason other than Redis being away,
    refresh its users one by one, so one user's failure costs only that user's list (their
    events are stored; their next event refreshes it)."""
    try:
        await with_retry(partial(processor.refresh_applied, applied), on_failure)
        return
    except Exception:
        log.exception("refreshing %d users failed; isolating the culprit", len(applied.records))
    documents: list[dict[str, Any]] = []
    for record in applied.records:
        alone = AppliedBatch(BatchOutcome(), [record], applied.clock)
        try:
            await with_retry(partial(processor.refresh_applied, alone), on_failure)
        except Exception:
            log.exception("refreshing user %s failed; their list is left as it was", record.user_id)
        documents += alone.outcome.recommendations
    applied.outcome.recommendations = documents


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    records: list[UserRecord]
    clock: float


@dataclass(slots=True)
class RefreshReply:
    documents: list[dict[str, Any]]
    redis_failures: list[str] = field(default_factory=list)  # exception class names
    error: str | None = None  # the child could not refresh at all (a bug: it is logged there)


class RefreshProcess:
    """The refresh stage in a child process: ``await refresh(records, clock)`` stores and
    returns the users' new lists, as ``refresh_isolated`` does in the worker itself."""

    def __init__(self, settings: Settings, metrics: Metrics = METRICS) -> None:
        self.settings = settings
        self.metrics = metrics
        self._context = multiprocessing.get_context("spawn")  # forking Faust's threads is unsafe
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._ready = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child (if none runs); it imports and connects while the worker starts."""
        if self._process is not None:
            return
        ours, theirs = self._context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        process = self._context.Process(
            target=serve, args=(theirs, self.settings, level), name="shoppulse-refresh"
        )
        process.daemon = True  # stopped with the worker however the worker exits
        process.start()
        theirs.close()  # so the child's death reads as end-of-file here
        self._process, self._connection, self._ready = process, ours, False

    async def refresh(self, records: Sequence[UserRecord], clock: float) -> list[dict[str, Any]]:
        if not records:
            return []
        request = RefreshRequest([record.for_ranking() for record in records], clock)
        for _ in range(MAX_STARTS):
            try:
                reply = await self._exchange(request)
            except (EOFError, OSError) as exc:
                log.error("the refresh process stopped (%r); starting another", exc)
                self.close()
                continue
            except BaseException:
                # Cancelled mid-exchange (shutdown): the child's answer, still to come, would
                # be read as the next request's. A new child starts clean.
                self.close()
                raise
            for error in reply.redis_failures:
                self.metrics.redis_failure_named(error)
            if reply.error is not None:
                raise RefreshError(f"the refresh process could not refresh: {reply.error}")
            return reply.documents
        raise RefreshError(f"the refresh process stopped {MAX_STARTS} times in a row")

    async def _exchange(self, request: RefreshRequest) -> RefreshReply:
        self.start()
        connection = self._connection
        assert connection is not None  # start() made it
        if not self._ready:
            await _receive(connection)  # READY: the child is past its imports
            self._ready = True
        connection.send(request)  # the child is waiting for it: this does not block for long
        reply = await _receive(connection)
        assert isinstance(reply, RefreshReply)
        return reply

    def close(self) -> None:
        """Stop the child. Between requests nothing is lost; mid-request its batch is not
        acked yet (delivered again), and each Redis write it makes is atomic."""
        connection, process = self._connection, self._process
        self._connection, self._process, self._ready = None, None, False
        if connection is not None:
            connection.close()
        if process is not None:
            process.terminate()
            process.join(STOP_SECONDS)


async def _receive(connection: Connection) -> Any:
    """The next message on the pipe, read once it starts to arrive (the event loop runs on
    meanwhile). End-of-file (the child died) raises EOFError."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[None] = loop.create_future()
    fd = connection.fileno()

    def wake() -> None:
        if not arrived.done():  # the pipe stays readable until the message is read
            arrived.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await arrived
    finally:
        loop.remove_reader(fd)
    return connection.recv()


# -- the child ----------------------------------------------------------------------------------
def serve(connection: Connection, settings: Settings, log_level: int) -> None:
    """The refresh process: answer requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="[%(asctime)s] [refresh %(process)d] %(levelname)s %(message)s"
    )
    with asyncio.Runner() as runner:  # one event loop for every request: the pools bind to it
        processor = build_processor(settings)
        tune_garbage_collection()
        connection.send(READY)
        while True:
            try:
                request = connection.recv()
            except EOFError:
                break
            connection.send(runner.run(_answer(processor, request)))
        runner.run(processor.close())


async def _answer(processor: Processor, request: RefreshRequest) -> RefreshReply:
    failures: list[str] = []
    applied = AppliedBatch(BatchOutcome(), request.records, request.clock)
    try:
        await refresh_isolated(processor, applied, lambda exc: failures.append(type(exc).__name__))
    except Exception as exc:
        log.exception("refreshing %d users failed", len(request.records))
        return RefreshReply([], failures, repr(exc))
    return RefreshReply(applied.outcome.recommendations, failures)
