"""Security with real processes: Redis with an ACL user, a password and TLS; a wrong password
is a one-line error; user ids pseudonymised before they reach Redis; user ids that look like
key syntax cannot touch another user's keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shoppulse import localstack
from stream.privacy import pseudonym
from tests.certs import self_signed
from tests.integration.conftest import ARTIFACTS, Stack

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
PASSWORD = "Redis-pw-7f3a9c"


class SecureRedis(localstack.RedisServer):
    """redis-server with only an ACL user (the default user is off), a plain port and a TLS
    port with a self-signed certificate."""

    def __init__(self, folder: Path) -> None:
        super().__init__(port=localstack.free_port())
        self.tls_port = localstack.free_port()
        self.cert, self.key = self_signed(folder)
        self.url = f"redis://shop:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.tls_url = (
            f"rediss://shop:{PASSWORD}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.cert}"
        )

    def _argv(self) -> list[str]:
        return [
            *super()._argv(),
            *("--user", "default", "off"),
            *("--user", "shop", "on", f">{PASSWORD}", "~*", "&*", "+@all"),
            *("--tls-port", str(self.tls_port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)),
            *("--tls-ca-cert-file", str(self.cert)),
        ]


@pytest.fixture
def secure_redis(tmp_path: Path) -> Iterator[SecureRedis]:
    with SecureRedis(tmp_path) as server:
        yield server


def shoppulse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoppulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def clicks(users: list[str], per_user: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"e{start + n}-{k}",  # ids must not embed user ids (pseudonymisation)
            "type": "click",
            "user_id": u,
            "item_id": f"i{(n + k) % 6}",
            "ts": T0 + start + n,
        }
        for k, u in enumerate(users)
        for n in range(per_user)
    ]


async def test_redis_with_an_acl_user_a_password_and_tls(
    secure_redis: SecureRedis, make_stack: Callable[..., Awaitable[Stack]]
) -> None:
    # The TLS URL for the worker; the test's own client and the CLI use the plain port.
    stack = await make_stack(workers=0, redis=secure_redis.url)
    stack.env["SHOPPULSE_REDIS_URL"] = secure_redis.tls_url
    stack.start_worker()
    events = clicks(["u1", "u2", "u3"], 20)
    await stack.publish_fast(stack.topics.clicks, events)
    await stack.wait_seen(len(events), timeout=60)
    profile = await stack.json(stack.keys.profile("u1"))
    assert profile["events"]["click"] == 20

    for url in (secure_redis.url, secure_redis.tls_url):
        env = {**stack.env, "SHOPPULSE_REDIS_URL": url}
        status = shoppulse(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "events applied" in status.stdout and "60" in status.stdout
        assert PASSWORD not in status.stdout + status.stderr
        shown = shoppulse(env, "profile", "u1")
        assert shown.returncode == 0 and '"click": 20' in shown.stdout, shown.stdout
    log = (ARTIFACTS / f"worker-{stack.namespace}-0.log").read_text(errors="replace")
    assert PASSWORD not in log

    # Wrong password, no password, no TLS on the TLS port: one-line errors, no traceback.
    wrong = secure_redis.tls_url.replace(PASSWORD, "not-the-password")
    cases = {
        wrong: "refused the credentials",
        secure_redis.url.replace(f"shop:{PASSWORD}@", ""): "Redis is not reachable",
        secure_redis.tls_url.replace("rediss://", "redis://"): "Redis is not reachable",
    }
    runs = [(url, ["worker"]) for url in cases]
    runs += [(url, command) for url in list(cases)[1:] for command in (["profile", "u1"],)]
    runs += [(wrong, ["status"])]
    for url, command in runs:
        result = shoppulse({**stack.env, "SHOPPULSE_REDIS_URL": url}, *command)
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0, (command, output)
        assert "Traceback" not in output, (command, output)
        assert "not-the-password" not in output and PASSWORD not in output, output
        if command == ["worker"]:
            assert cases[url] in output, (url, output)


async def all_redis_text(client: aioredis.Redis, namespace: str) -> list[str]:
    """Every key of the namespace and every value in it, as text."""
    found: list[str] = []
    async for key in client.scan_iter(f"{namespace}:*", count=1000):
        found.append(key)
        kind = await client.type(key)
        if kind == "string":
            found.append(await client.get(key) or "")
        elif kind == "hash":
            for field, value in (await client.hgetall(key)).items():  # type: ignore[misc]
                found += [field, value]
        elif kind == "set":
            found += list(await client.smembers(key))  # type: ignore[misc]
        elif kind == "zset":
            found += list(await client.zrange(key, 0, -1))
        else:
            raise AssertionError(f"{key}: unexpected type {kind}")
    return found


async def test_pseudonymised_user_ids_never_reach_redis(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    key = "pseudo-key-for-the-test"
    stack = await make_stack(workers=1, pseudonymise_key=key)
    users = ["alice.raw.id@example.com", "bob-raw-id-42"]
    events = clicks(users, 15)
    order = {
        "event_id": "o1",
        "order_id": "order-1",
        "user_id": users[0],
        "ts": T0 + 100,
        "items": [{"item_id": "i1", "quantity": 2, "price": 10.0}],
    }
    await stack.publish_fast(stack.topics.clicks, events)
    await stack.publish(stack.topics.orders, order)
    await stack.wait_seen(len(events) + 1, timeout=60)
    await asyncio.sleep(1)

    text = await all_redis_text(stack.redis, stack.namespace)
    assert len(text) > 20
    for user in users:
        assert not [t for t in text if user in t or user.split("@")[0] in t], user
    alice = await stack.json(stack.keys.profile(pseudonym(users[0], key)))
    assert alice["user_id"] == pseudonym(users[0], key)
    assert (alice["events"]["click"], alice["orders"], alice["revenue"]) == (15, 1, 20.0)
    assert await stack.redis.exists(stack.keys.recs(pseudonym(users[1], key)))

    # The shop finds a user's state with the raw id: the CLI applies the same function.
    env = stack.env
    shown = shoppulse(env, "profile", users[0])
    assert shown.returncode == 0 and '"orders": 1' in shown.stdout, shown.stdout + shown.stderr
    assert shoppulse(env, "pseudonym", users[0]).stdout.strip() == pseudonym(users[0], key)
    recs = shoppulse(env, "recs", users[1])
    assert recs.returncode == 0, recs.stdout + recs.stderr


ATTACKERS = [
    "x:recs:victim",
    "{victim}",
    "victim\r\nFLUSHALL",
    "victim:",
    ":victim",
    "victim*",
    "../victim",
    "recs:victim",
    "victim\x00",
]


async def test_user_ids_that_look_like_keys_cannot_touch_another_users_keys(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    stack = await make_stack(workers=1)
    keys = stack.keys
    victim = clicks(["victim"], 10)
    await stack.publish_fast(stack.topics.clicks, victim)
    await stack.wait_seen(len(victim), timeout=60)
    await asyncio.sleep(0.5)
    victim_keys = [keys.recs("victim"), keys.profile("victim"), keys.user_state("victim")]
    before = [await stack.redis.dump(k) for k in victim_keys]
    assert all(before)

    attacks = clicks(ATTACKERS, 5, start=1000)
    orders = [
        {
            "event_id": f"o-{n}-{status}",
            "order_id": "order-victim",
            "user_id": user,
            "ts": T0 + 2000 + n,
            "items": [{"item_id": "i1", "quantity": 1, "price": 5.0}],
            "status": status,
        }
        for n, user in enumerate(ATTACKERS)
        for status in ("placed", "cancelled")
    ]
    await stack.publish_fast(stack.topics.clicks, attacks)
    await stack.publish_fast(stack.topics.orders, orders)
    await stack.wait_seen(len(victim) + len(attacks) + len(orders), timeout=60)
    await asyncio.sleep(1)

    after = [await stack.redis.dump(k) for k in victim_keys]
    assert after == before, "the victim's keys changed"
    for user in ATTACKERS:
        profile = await stack.json(keys.profile(user))
        assert profile["user_id"] == user
        assert (profile["events"]["click"], profile["orders"], profile["cancellations"]) == (
            5,
            0,
            1,
        ), user
    members = await stack.redis.smembers(keys.users())  # type: ignore[misc]
    assert members == {"victim", *ATTACKERS}
    # Every key is one of ShopPulse's kinds, and per-user keys only of known users.
    kinds: set[str] = set()
    async for key in stack.redis.scan_iter(f"{stack.namespace}:*", count=1000):
        kind, _, rest = key.removeprefix(f"{stack.namespace}:").partition(":")
        kinds.add(kind)
        if kind in ("recs", "profile", "ustate"):
            assert rest in members, key
    assert {"recs", "profile", "ustate", "users", "stats"} <= kinds
