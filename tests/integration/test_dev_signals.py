"""``shoppulse dev`` stops everything it started (the Tansu broker and the stream worker) on
SIGTERM and SIGHUP, as on Ctrl-C, instead of leaving them to init. A real ``shoppulse dev`` on
free ports and a fresh namespace; whatever it leaves is killed by process group at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shoppulse import localstack

pytestmark = pytest.mark.integration


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def wait_for_text(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert process.poll() is None, f"dev exited early:\n{log.read_text(errors='replace')}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not printed in {timeout}s:\n{log.read_text(errors='replace')}")


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    name = f"dev{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{name}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_the_broker_and_the_worker(
    redis_url: str, namespace: str, tmp_path: Path, signum: signal.Signals
) -> None:
    env = {
        **os.environ,
        "SHOPPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{localstack.free_port()}",  # dev starts one
        "SHOPPULSE_REDIS_URL": redis_url,
        "SHOPPULSE_NAMESPACE": namespace,
        "SHOPPULSE_WEB_PORT": str(localstack.free_port()),
        "SHOPPULSE_KAFKA_REBALANCE_TIMEOUT": "3",
    }
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        # Its own session (so no terminal), and a process group to clean up by.
        dev = subprocess.Popen(
            [sys.executable, "-m", "shoppulse", "dev", "--limit", "500"],
            cwd=tmp_path,  # .shoppulse/worker.log goes here
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_text(log, "ShopPulse is running", dev, timeout=300)
        started = [pid for pid in group_members(dev.pid) if pid != dev.pid]
        assert len(started) >= 2, started  # the broker and the worker

        dev.send_signal(signum)
        assert dev.wait(timeout=90) == 0, log.read_text(errors="replace")
        left: list[int] = []
        deadline = time.monotonic() + 10
        while (left := group_members(dev.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], f"still running after dev stopped: {left}"
        output = log.read_text(errors="replace")
        assert "stopping" in output and "Traceback" not in output
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if group_members(dev.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dev.pid, signal.SIGKILL)
