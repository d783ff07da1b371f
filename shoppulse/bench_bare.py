"""The baseline of ``shoppulse bench``: a bare Faust worker that only decodes the user events.

It reads the same topics as the ShopPulse worker (``{ns}.clicks`` and ``{ns}.orders``) with
the same Faust options, the same micro-batching (``take_events`` with the configured batch
size and window) and the same acknowledgements (``take_events`` acks a batch after the agent
has handled it), but all it does with a batch is ``orjson.loads`` each value. So the bench
compares the ShopPulse worker with what Faust itself can do on this machine.

Its consumer group is ``{ns}-bare`` (so it reads the topics from the start, whatever the
ShopPulse worker has committed; ``python -m shoppulse.bench_bare RUN`` makes it ``{ns}-bareRUN``,
for a second bare run of one bench), and after each batch it reports its progress in Redis, in
the hash ``Keys(f"{ns}-bare").stats()``, in one pipelined round trip: ``applied`` (events
decoded so far), ``first_at``/``first_n`` (wall-clock time and size of the first batch) and
``last_at`` (wall-clock time of the latest batch). The ShopPulse worker writes its own
``{ns}:stats`` once per batch too, so both are watched the same way.

For the latency baseline it also sets ``Keys(f"{ns}-bare").recs(user)`` to the event id of each
event of a bench probe user (ids starting with ``PROBE_USER_PREFIX``) in the same round trip:
the bench times the broker's ack of a probe click to that key changing, as it does for the
ShopPulse worker's recommendations. The drain slice holds no probe users, so there it costs a
string comparison per event.

Run as a child process by the bench, with the settings in ``SHOPPULSE_*`` variables::

    python -m shoppulse.bench_bare
"""

from __future__ import annotations

import sys
import time
from typing import Any

import faust
import orjson

from shoppulse.settings import Settings, get_settings
from stream.keys import Keys, Topics
from stream.store import connect
from stream.transport import faust_app, faust_worker

BARE_SUFFIX = "-bare"
PROBE_USER_PREFIX = "probe-"


def bare_namespace(namespace: str, run: str = "") -> str:
    """Consumer group, app id and Redis key namespace of the bare worker for ``namespace``;
    ``run`` tells apart the bench's bare runs (each reads the topics from the start)."""
    return f"{namespace}{BARE_SUFFIX}{run}"


def create_bare_app(settings: Settings, run: str = "") -> faust.App:
    """A Faust app with the ShopPulse worker's options (see ``stream.app.create_app``; keep the
    two in step) whose only agent decodes the user events' JSON."""
    app_id = bare_namespace(settings.namespace, run)
    topics = Topics(settings.namespace)
    app = faust_app(app_id, settings, lean_delivery=False)  # Faust as it is: the baseline
    user_events = app.topic(topics.clicks, topics.orders, key_type=bytes, value_type=bytes)
    keys = Keys(app_id)
    stats_key = keys.stats()
    state: dict[str, Any] = {}

    @app.agent(user_events, name="bare-user-events")
    async def decode_user_events(stream: Any) -> None:
        if "redis" not in state:  # created inside the worker's event loop, which it binds to
            state["redis"] = connect(settings.redis_dsn)
        client = state["redis"]
        async for events in stream.take_events(settings.batch_size, within=settings.batch_window):
            probes: dict[str, str] = {}
            for event in events:
                document = orjson.loads(event.message.value)
                user = document.get("user_id")
                if isinstance(user, str) and user.startswith(PROBE_USER_PREFIX):
                    probes[user] = str(document.get("event_id"))
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for user, event_id in probes.items():
                pipe.set(keys.recs(user), event_id)
            pipe.hincrby(stats_key, "applied", len(events))
            pipe.hsetnx(stats_key, "first_at", repr(now))
            pipe.hsetnx(stats_key, "first_n", len(events))
            pipe.hset(stats_key, "last_at", repr(now))
            await pipe.execute()

    return app


def main() -> None:
    """Run the bare worker until it is stopped (SIGINT/SIGTERM); the first argument, if any,
    is the run (see ``bare_namespace``)."""
    app = create_bare_app(get_settings(), sys.argv[1] if len(sys.argv) > 1 else "")
    faust_worker(app, "warning").execute_from_commandline()


if __name__ == "__main__":
    main()
