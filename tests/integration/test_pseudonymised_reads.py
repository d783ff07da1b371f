"""With SHOPPULSE_PSEUDONYMISE_KEY set, everything that reads a user's state takes the shop's
own user id, as ``shoppulse recs`` does: the Python client, the dashboard's ``/api/user/`` (and
its ``?stored=1`` for the pseudonyms alerts carry), and the click-to-recommendation latency
histogram, which matches message keys (raw ids) to recommendations (pseudonyms). A real worker
with its web server, a real broker and a real Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoppulse import localstack
from shoppulse.client import ShopPulseClient
from shoppulse.settings import Settings
from stream.privacy import pseudonym
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

KEY = "a-shop-secret"
T0 = 1_700_000_000.0
EVENTS = 3


async def get(url: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status, await response.read()


def latency_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shoppulse_click_to_recommendation_seconds_count":
                return sample.value
    return 0.0


async def test_reads_take_the_raw_id_when_ids_are_pseudonymised(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    port = localstack.free_port()
    stack = await make_stack(pseudonymise_key=KEY, web_enabled="true", web_port=port)
    settings = Settings(
        kafka_bootstrap=stack.broker,
        redis_url=stack.redis_url,
        namespace=stack.namespace,
        pseudonymise_key=KEY,
    )
    async with ShopPulseClient(settings) as client:
        await client.catalog("sku-1", category="shoes", title="Runner", ts=T0)
        await client.catalog("sku-2", category="shoes", ts=T0)
        await stack.until(lambda: stack.json_hash(stack.keys.item("sku-2")), 60, "catalog")
        # bob views both items, so alice, who viewed one, gets the other recommended.
        await client.click("bob", "sku-1", ts=T0)
        await client.click("bob", "sku-2", ts=T0 + 1)
        await client.click("alice", "sku-1", kind="click", ts=T0 + 2)
        await stack.wait_seen(EVENTS)

        # Stored under the pseudonym only; the client finds it from the raw id.
        assert await stack.json(stack.keys.recs("alice")) is None
        recs = await client.recommendations("alice")
        profile = await client.profile("alice")
        assert recs is not None and recs["user_id"] == pseudonym("alice", KEY)
        assert profile is not None and profile["events"]["click"] == 1
        assert await client.recommendations("nobody") is None

    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool | None:
        try:
            return (await get(url + "/health"))[0] == 200 or None
        except aiohttp.ClientError:
            return None

    await stack.until(answers, 60, "the web server")
    status, body = await get(url + "/api/user/alice")
    assert status == 200, body
    document = orjson.loads(body)
    assert document["recommendations"]["user_id"] == pseudonym("alice", KEY)
    assert document["recommendations"]["items"][0]["item_id"] == "sku-2"
    assert document["recommendations"]["items"][0]["category"] == "shoes"
    # Alerts carry the pseudonym: the dashboard's alert links ask with ?stored=1.
    status, body = await get(url + f"/api/user/{pseudonym('bob', KEY)}?stored=1")
    assert status == 200, body
    assert orjson.loads(body)["profile"]["events"]["view"] == 2
    assert (await get(url + "/api/user/nobody"))[0] == 404

    # Every user event got its user a new list: each one is a latency observation.
    status, body = await get(url + "/metrics")
    assert status == 200
    assert latency_count(body.decode()) >= EVENTS
