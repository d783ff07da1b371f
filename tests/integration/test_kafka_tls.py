"""Kafka over TLS end to end: the worker, the CLI and every client ShopPulse builds speak TLS to
a broker whose only advertised address is a TLS port checked against the shop's CA, and a
client without TLS gets nowhere.

The development broker (Tansu) does not terminate TLS itself here, so a TLS terminator (this
test's own, Python's ssl module) stands in front of it, and Tansu advertises the terminator's
address: every connection a client makes after bootstrapping goes through TLS too."""

from __future__ import annotations

import asyncio
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from shoppulse import localstack
from shoppulse.kafka import security_options
from shoppulse.settings import Settings, get_settings
from tests.certs import self_signed
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


class TlsTerminator:
    """Accepts TLS on ``port`` and relays the plain bytes to ``target`` (both on 127.0.0.1),
    in a thread of its own."""

    def __init__(self, port: int, target: int, cert: Path, key: Path) -> None:
        self.port, self.target = port, target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> TlsTerminator:
        self.thread.start()
        start = asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _relay(self, client_in: Any, client_out: Any) -> None:
        try:
            broker_in, broker_out = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_out.close()
            return
        await asyncio.gather(_pump(client_in, broker_out), _pump(broker_in, client_out))


async def _pump(source: Any, sink: Any) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


async def first_documents(bootstrap: str, topic: str) -> list[Any]:
    """What a TLS consumer (this process's settings) reads of ``topic`` from the start."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        **security_options(get_settings()),
    )
    await consumer.start()
    try:
        for _ in range(20):
            batches = await consumer.getmany(timeout_ms=500)
            found = [orjson.loads(r.value) for records in batches.values() for r in records]
            if found:
                return found
        return []
    finally:
        await consumer.stop()


@pytest.fixture
def tls_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """(bootstrap, CA file) of a Tansu reachable only through TLS; this process's settings
    (the test's own Kafka clients) say SSL with that CA too."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SHOPPULSE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("SHOPPULSE_KAFKA_SSL_CAFILE", str(cert))
    get_settings.cache_clear()
    tls_port, plain_port = localstack.free_port(), localstack.free_port()
    bootstrap = f"127.0.0.1:{tls_port}"
    security = security_options(get_settings())
    try:
        with (
            TlsTerminator(tls_port, plain_port, cert, key),
            localstack.Broker(port=plain_port, advertised=bootstrap, security=security),
        ):
            yield bootstrap, cert
    finally:
        get_settings.cache_clear()


async def test_worker_cli_and_clients_work_over_tls_and_plaintext_is_refused(
    tls_broker: tuple[str, Path], redis_url: str
) -> None:
    bootstrap, ca = tls_broker
    stack = Stack(bootstrap, redis_url, f"t{uuid.uuid4().hex[:10]}")
    stack.env |= {"SHOPPULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "SHOPPULSE_KAFKA_SSL_CAFILE": str(ca)}
    try:
        await stack.start()  # topics created over TLS
        stack.start_worker()
        events = [
            {"event_id": f"e{n}", "type": "click", "user_id": f"u{n % 3}", "item_id": f"i{n % 5}"}
            | {"ts": T0 + n}
            for n in range(30)
        ]
        await stack.publish_fast(stack.topics.clicks, events)  # published over TLS
        await stack.wait_seen(len(events), timeout=90)
        lists = await first_documents(bootstrap, stack.topics.recommendations)  # over TLS
        assert lists and {d["user_id"] for d in lists} <= {"u0", "u1", "u2"}

        status = await stack.cli("status", timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "30" in status.stdout  # events applied, read through the TLS broker

        plain = Settings(kafka_security_protocol="PLAINTEXT")
        assert not localstack.kafka_reachable(bootstrap, security=security_options(plain))
        no_ca = {"security_protocol": "SSL", "ssl_context": ssl.create_default_context()}
        assert not localstack.kafka_reachable(bootstrap, security=no_ca)  # unknown CA refused
    finally:
        await stack.cleanup()
