"""The Faust app's Kafka side: one place for the options every ShopPulse Faust app shares (the
stream worker and the bench's bare baseline), and a transport with a configurable fetch wait.

faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` written into the
driver, with no setting to change it. A fetch that finds no new data is held by the broker for
up to that long; Apache Kafka answers early when data arrives, but some Kafka-compatible
brokers (Tansu, which the local stack and the tests use) hold the fetch for the whole wait, so a
click arriving just after a fetch waited up to 1.5 s before any worker saw it. ShopPulse keeps
every Faust default except this one: ``SHOPPULSE_KAFKA_FETCH_MAX_WAIT_MS`` (100 ms by default),
at the cost of at most ten empty fetches a second per broker on an idle topic.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from shoppulse.kafka import faust_credentials
from shoppulse.settings import Settings


def faust_datadir(app_id: str) -> Path:
    """Faust keeps table data on disk; ShopPulse keeps all state in Redis, so keep Faust's
    (empty) data folder out of the working directory."""
    return Path(tempfile.gettempdir()) / f"shoppulse-faust-{app_id}"


def faust_app(app_id: str, settings: Settings) -> faust.App:
    """A Faust app with ShopPulse's options (raw bytes in and out: agents decode themselves)."""
    app = faust.App(
        app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(faust_datadir(app_id)),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=settings.kafka_rebalance_timeout,
        broker_session_timeout=max(settings.kafka_rebalance_timeout, 10.0),
        broker_heartbeat_interval=1.0,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        key_serializer="raw",
        value_serializer="raw",
    )
    use_fetch_wait(app, settings.kafka_fetch_max_wait_ms)
    return app


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """A Faust worker for ``app`` without the terminal spinner: with the spinner, Faust sets the
    root logger to DEBUG at any level from WARNING up (so the spinner spins on every record),
    and every debug call of aiokafka then builds a log record nobody reads, a few percent of
    the worker's CPU under load."""
    worker = faust.Worker(app, loglevel=loglevel)
    worker.spinner = None
    return worker


def _thread_class(fetch_max_wait_ms: int) -> type[driver.AIOKafkaConsumerThread]:
    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by AIOKafkaConsumer.start() when it builds its fetcher; the consumer is not
            # started yet, so this is the value every fetch uses.
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    return ConsumerThread


def use_fetch_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Give ``app`` a Kafka transport whose consumer waits at most ``fetch_max_wait_ms`` per
    fetch. Call it before the app declares its first topic (topics bind the transport)."""
    thread_class = _thread_class(fetch_max_wait_ms)

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return thread_class(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    app.transport = Transport(app.conf.broker_consumer, app)
