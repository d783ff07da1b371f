"""The atomic batch commit (stream/lua/commit_batch.lua, through Processor and RedisStore) keeps
exactly the state the definitions give, recomputed here from the events alone: r(u,i) the sum
of the user's event weights on i capped at interaction_cap, C(i,j) = sum_u r(u,i) r(u,j),
N(i) = sum_u r(u,i)^2, similarity = cosine * C/(C + shrinkage), popularity the forward-decayed
sum of event weights. Caps and the co-occurrence window are set so that nothing is trimmed."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import orjson
import pytest

from models.decay import log_score_to_weight
from shoppulse.settings import Settings
from stream.keys import Topics
from stream.processor import Processor, RawEvent
from stream.store import NEIGHBOUR_RANK_SCALE, RedisStore
from tests.integration.conftest import processor_for

pytestmark = pytest.mark.integration

T0 = 1_763_800_000.0  # one UTC day holds the whole stream: no churn re-scoring midway
ITEMS = [f"i{n}" for n in range(30)]
CATEGORY = {item: f"c{n % 4}" for n, item in enumerate(ITEMS[:26])}  # i26..i29: no catalog
USERS = [f"u{n}" for n in range(36)]
BATCH_SIZES = [1, 9, 40, 3, 75, 17, 120, 2, 60]  # then the rest as one batch
KINDS = ["view"] * 5 + ["click"] * 3 + ["add_to_cart"] * 2 + ["remove_from_cart"]
Flat = dict[tuple[str, ...], float]
Pairs = list[tuple[str, float]]  # a ZRANGE WITHSCORES reply, decoded
Compared = tuple[dict[str, Any], dict[str, Any]]  # (what Redis holds, the reference)


def event_stream(seed: int = 11) -> list[dict[str, Any]]:
    """Clicks and orders of users with a few favourite items (so weights reach the cap), in a
    random interleaving; 45 re-sent later, and one order placed again under a new event id."""
    rng = random.Random(seed)
    favourites = {user: rng.sample(ITEMS, 6) for user in USERS}
    events: list[dict[str, Any]] = []
    for n in range(420):
        user = rng.choice(USERS)
        # Event times a little out of order.
        event = {"event_id": f"e{n}", "user_id": user, "ts": T0 + n * 60 + rng.uniform(-900, 900)}
        if rng.random() < 0.12:
            items = rng.sample(favourites[user], rng.randint(1, 3))
            lines = [{"item_id": i, "quantity": rng.randint(1, 3), "price": 9.5} for i in items]
            event |= {"order_id": f"o{n}", "items": lines, "status": "placed"}
        else:
            item = rng.choice(favourites[user]) if rng.random() < 0.8 else rng.choice(ITEMS)
            event |= {"type": rng.choice(KINDS), "item_id": item, "session_id": f"s-{user}"}
        events.append(event)
    for copy in [dict(e) for e in rng.sample(events[:300], 45)]:
        events.insert(rng.randrange(events.index(copy) + 1, len(events) + 1), copy)
    order = next(e for e in events if "order_id" in e)
    return [*events, {**order, "event_id": "e-again"}]


class Interactions:
    """r(u,i) replayed per user in delivery order, deduping event ids."""

    def __init__(self, settings: Settings) -> None:
        self.weights, self.cap = settings.event_weights, settings.interaction_cap
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.placed: dict[str, set[str]] = defaultdict(set)
        self.r: dict[str, dict[str, float]] = defaultdict(dict)
        self.observations: list[tuple[str, float, float]] = []

    def add(self, e: dict[str, Any]) -> None:
        user = e["user_id"]
        if e["event_id"] in self.seen[user]:
            return
        self.seen[user].add(e["event_id"])
        if "order_id" not in e:
            touched = [(e["item_id"], self.weights[e["type"]])]
        elif e["order_id"] in self.placed[user]:
            return  # applied, but a placed order counts once
        else:
            self.placed[user].add(e["order_id"])
            touched = [(line["item_id"], self.weights["purchase"]) for line in e["items"]]
        for item, weight in touched:
            if weight > 0:
                self.r[user][item] = min(self.r[user].get(item, 0.0) + weight, self.cap)
                self.observations.append((item, weight, e["ts"]))

    def counts(self) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """C(i,j) and N(i) of the weights as they are now."""
        cooc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        norms: dict[str, float] = defaultdict(float)
        for items in self.r.values():
            for i, ri in items.items():
                norms[i] += ri * ri
                for j, rj in items.items():
                    if j != i:
                        cooc[i][j] += ri * rj
        return cooc, norms


def reference(events: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Replay per user in delivery order, deduping event ids; then apply the definitions."""
    replay = Interactions(settings)
    for e in events:
        replay.add(e)
    seen, observations = replay.seen, replay.observations
    cooc, norms = replay.counts()
    s = settings.similarity_shrinkage
    sim = {
        i: {j: c / math.sqrt(norms[i] * norms[j]) * c / (c + s) for j, c in row.items()}
        for i, row in cooc.items()
    }
    clock = max(e["ts"] for e in events)
    half_life = settings.popularity_half_life_days * 86_400.0
    pop: dict[str, float] = defaultdict(float)
    catpop: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for item, weight, ts in observations:
        pop[item] += weight * 2.0 ** (-(clock - ts) / half_life)
        if item in CATEGORY:
            catpop[CATEGORY[item]][item] += weight * 2.0 ** (-(clock - ts) / half_life)
    state = {"cooc": cooc, "norms": norms, "sim": sim, "popularity": pop, "catpop": catpop}
    applied = sum(len(ids) for ids in seen.values())
    stats = {"applied": applied, "duplicates": len(events) - applied}
    return {"values": flatten(state), "clock": clock, "stats": stats}


def flatten(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> Flat:
    flat: Flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, (*path, name)))
        else:
            flat[(*path, name)] = float(value)
    return flat


def only(state: dict[str, Any], *kinds: str) -> Flat:
    return {path: value for path, value in state["values"].items() if path[0] in kinds}


async def redis_state(store: RedisStore, settings: Settings) -> dict[str, Any]:
    """What Redis holds, in the reference's terms: the similarities as the recommender reads
    them (computed from the counts and norms at read time: the scores in sim:i only rank the
    kept neighbours), popularity as the decayed weight at the clock."""
    keys, client = store.keys, store.client
    clock = float(await client.get(keys.clock()) or "nan")
    half_life = settings.popularity_half_life_days * 86_400.0

    async def zset(key: str, scale: float = 1.0) -> dict[str, float]:
        pairs = cast(Pairs, await client.zrange(key, 0, -1, withscores=True))
        return {m: s * scale for m, s in pairs}

    async def decayed(key: str) -> dict[str, float]:
        return {i: log_score_to_weight(s, clock, half_life) for i, s in (await zset(key)).items()}

    norms = {str(i): float(n) for i, n in (await client.hgetall(keys.item_norms())).items()}
    served = await store.recommendation_inputs(ITEMS, [], 1, settings.similarity_shrinkage)
    state = {
        "cooc": {i: await zset(keys.cooccurrence(i)) for i in ITEMS},
        "norms": norms,
        "sim": {i: dict(pairs) for i, pairs in served.neighbours.items()},
        "popularity": await decayed(keys.popularity()),
        "catpop": {c: await decayed(keys.category_popularity(c)) for c in set(CATEGORY.values())},
    }
    stats = await client.hgetall(keys.stats())
    counts = {name: int(stats.get(name, 0)) for name in ("applied", "duplicates")}
    return {"values": flatten(state), "clock": clock, "stats": counts}


CAPS = {"cooc_cap": 1000, "neighbours_k": 1000, "cooc_window": 1000, "interactions_cap": 1000}


@pytest.fixture
async def processor(redis_url: str) -> AsyncIterator[Processor]:
    """Caps so large that nothing is trimmed, and a co-occurrence window that pairs every item
    of the user."""
    async with processor_for(redis_url, **CAPS) as built:
        yield built


def stored_rank(count: float, other_norm: float, shrinkage: float) -> float:
    """The score sim:i holds for neighbour j: C / sqrt(N[j]) * C / (C + shrinkage), stored as a
    whole number of 1 / NEIGHBOUR_RANK_SCALE (rounded half up, as commit_batch.lua does)."""
    rank = count / math.sqrt(other_norm) * count / (count + shrinkage)
    return float(math.floor(rank * NEIGHBOUR_RANK_SCALE + 0.5))


def kept_neighbours(
    events: list[dict[str, Any]], settings: Settings, batch_sizes: list[int]
) -> dict[str, dict[str, float]]:
    """Each item's top-K neighbours as commit_batch.lua defines them, from the events and the
    batch boundaries alone: after each batch, every pair whose count grew in it is ranked by
    C(i,j)/sqrt(N(j)) * C/(C + shrinkage), C and N as they are after that batch; i then keeps
    its K best (ties: the lower id goes first, as ZPOPMIN takes it). A pair's rank stays as of
    its last change, so a neighbour dropped once comes back only when its count grows again:
    the K kept are the best of those ranked at each step, not of every pair's final score.
    (Counts and norms are sums of products of small integers, so exact in doubles on both
    sides: the ranks below are the same floats the script computes.)"""
    replay, k, s = Interactions(settings), settings.neighbours_k, settings.similarity_shrinkage
    before: dict[str, dict[str, float]] = {}
    kept: dict[str, dict[str, float]] = defaultdict(dict)
    start = 0
    for size in [*batch_sizes, len(events)]:  # as deliver() cuts them: the rest last
        for e in events[start : start + size]:
            replay.add(e)
        start += size
        cooc, norms = replay.counts()
        for i, row in cooc.items():
            for j, c in row.items():
                if c > before.get(i, {}).get(j, 0.0):
                    kept[i][j] = stored_rank(c, norms[j], s)
        before = {i: dict(row) for i, row in cooc.items()}
        for row in kept.values():
            for j, _ in sorted(row.items(), key=lambda kv: (kv[1], kv[0]))[: max(0, len(row) - k)]:
                del row[j]
    return dict(kept)


async def deliver(
    processor: Processor,
    events: list[dict[str, Any]],
    batch_sizes: list[int] = BATCH_SIZES,
    catalog: bool = True,
) -> None:
    """The catalog first (unless told not to), then the events in batches of different sizes."""
    topics = Topics(processor.settings.namespace)
    if catalog:
        upserts = [
            {"item_id": item, "ts": T0 - 3600, "category": category, "in_stock": True}
            for item, category in CATEGORY.items()
        ]
        raw_catalog = [
            RawEvent(topics.catalog, 0, n, None, orjson.dumps(c)) for n, c in enumerate(upserts)
        ]
        assert (await processor.process_catalog(raw_catalog)).applied == len(upserts)
    raw = [
        RawEvent(topic, 0, n, e["user_id"].encode(), orjson.dumps(e))
        for n, e in enumerate(events)
        for topic in [topics.orders if "order_id" in e else topics.clicks]
    ]
    start = 0
    for size in [*batch_sizes, len(raw)]:
        outcome = await processor.process_user_events(raw[start : start + size])
        assert not outcome.dead_letters
        start += size


@pytest.fixture
async def compared(processor: Processor) -> Compared:
    """The stream delivered once: what Redis holds, and what the definitions give."""
    events = event_stream()
    await deliver(processor, events)
    actual = await redis_state(processor.store, processor.settings)
    return actual, reference(events, processor.settings)


async def test_commit_keeps_what_the_definitions_give(compared: Compared) -> None:
    actual, expected = compared
    assert (actual["stats"], actual["clock"]) == (expected["stats"], expected["clock"])
    kinds = ("cooc", "norms", "popularity", "catpop")
    assert only(actual, *kinds) == pytest.approx(only(expected, *kinds), rel=1e-9)


async def test_similarities_served_are_shrunk_cosines_of_the_counts_now(compared: Compared) -> None:
    actual, expected = compared
    assert only(actual, "sim") == pytest.approx(only(expected, "sim"), rel=1e-9)


async def test_similarities_served_from_counts_that_are_not_whole(redis_url: str) -> None:
    """Weights with fractions make fractional counts, which reach the reader as text (whole
    ones come as integers): both are served as the definitions give."""
    weights = {"view": 0.7, "click": 1.3, "add_to_cart": 2.9, "remove_from_cart": 0.0}
    async with processor_for(redis_url, **CAPS, event_weights={**weights, "purchase": 4.1}) as p:
        events = event_stream()
        await deliver(p, events)
        actual = await redis_state(p.store, p.settings)
        expected = reference(events, p.settings)
    counts = only(actual, "cooc").values()
    assert any(c != round(c) for c in counts) and any(c == round(c) for c in counts)
    assert only(actual, "sim") == pytest.approx(only(expected, "sim"), rel=1e-9)


async def test_every_batch_delivered_twice_changes_nothing(processor: Processor) -> None:
    events = event_stream()
    await deliver(processor, events)
    once = await redis_state(processor.store, processor.settings)
    await deliver(processor, events)
    twice = await redis_state(processor.store, processor.settings)
    assert twice["values"] == once["values"]  # exactly: co-occurrences, similarities, all
    assert twice["clock"] == once["clock"]
    assert twice["stats"] == {
        "applied": once["stats"]["applied"],
        "duplicates": once["stats"]["duplicates"] + len(events),
    }


async def neighbour_state(store: RedisStore) -> dict[str, dict[str, Any]]:
    """Per item: its counts (cooc), kept neighbours (sim) and their counts (nbc), as stored."""
    keys, client = store.keys, store.client
    state: dict[str, dict[str, Any]] = {}
    for item in ITEMS:
        state[item] = {
            "cooc": dict(await client.zrange(keys.cooccurrence(item), 0, -1, withscores=True)),
            "sim": dict(await client.zrange(keys.neighbours(item), 0, -1, withscores=True)),
            "nbc": {
                j: float(c) for j, c in (await client.hgetall(keys.neighbour_counts(item))).items()
            },
        }
    return state


def assert_counts_follow_neighbours(state: Mapping[str, Mapping[str, Any]]) -> None:
    """nbc:i holds C(i, j) of exactly the neighbours sim:i keeps, equal to cooc:i's."""
    for item, kinds in state.items():
        assert kinds["nbc"] == {j: kinds["cooc"][j] for j in kinds["sim"]}, item


async def test_capped_state_keeps_no_neighbour_without_its_count(redis_url: str) -> None:
    """With small caps, what is trimmed from C(i, .) leaves i's neighbours too, and every item
    keeps at most K neighbours and C of at most cooc_cap items; the neighbours' counts follow."""
    async with processor_for(redis_url, cooc_cap=6, neighbours_k=4) as small:
        await deliver(small, event_stream())
        state = await neighbour_state(small.store)
    trimmed = 0
    for item, kinds in state.items():
        assert len(kinds["cooc"]) <= 6 and len(kinds["sim"]) <= 4
        assert set(kinds["sim"]) <= set(kinds["cooc"]), item
        trimmed += len(kinds["cooc"]) == 6
    assert trimmed > 10  # the caps were reached, so trimming was exercised
    assert_counts_follow_neighbours(state)


async def test_state_written_before_neighbour_counts_is_adopted(redis_url: str) -> None:
    """State of the layout before nbc:i (sim:i and cooc:i only) is served as it was and then
    kept as if it had always had nbc:i: a run whose nbc keys are deleted halfway (an upgrade)
    ends with exactly the state of a run that kept them."""
    events, half = event_stream(), 200
    first, second = [1, 9, 40, 3, 75, 17], [120, 2, 60]
    caps = {"cooc_cap": 6, "neighbours_k": 4}
    async with (
        processor_for(redis_url, **caps) as kept,
        processor_for(redis_url, **caps) as upgraded,
    ):
        for run in (kept, upgraded):
            await deliver(run, events[:half], first)
        legacy = [
            key async for key in upgraded.store.client.scan_iter(f"{upgraded.store.keys.ns}:nbc:*")
        ]
        assert len(legacy) > 10
        await upgraded.store.client.delete(*legacy)
        shrinkage = kept.settings.similarity_shrinkage
        served = [
            await run.store.recommendation_inputs(ITEMS, [], 1, shrinkage)
            for run in (kept, upgraded)
        ]
        kept_now, upgraded_now = (
            {i: dict(pairs) for i, pairs in s.neighbours.items()} for s in served
        )
        assert upgraded_now == kept_now
        for run in (kept, upgraded):
            await deliver(run, events[half:], second, catalog=False)
        states = [await neighbour_state(run.store) for run in (kept, upgraded)]
    assert states[1] == states[0]
    assert_counts_follow_neighbours(states[1])


@pytest.mark.parametrize("batch_sizes", [[], BATCH_SIZES], ids=["one batch", "batches"])
async def test_each_item_keeps_its_k_best_neighbours(
    redis_url: str, batch_sizes: list[int]
) -> None:
    """The trim keeps the K best by the script's rank, recomputed here from the events: in one
    batch every pair is ranked on the final counts, so the K kept are the K best of all pairs;
    over many batches, by the ranks frozen at each pair's last change (see kept_neighbours).
    The co-occurrence cap is out of reach, so only the top-K trim removes neighbours."""
    k, events = 4, event_stream()
    async with processor_for(redis_url, cooc_cap=1000, neighbours_k=k, cooc_window=1000) as small:
        await deliver(small, events, batch_sizes)
        keys, client, settings = small.store.keys, small.store.client, small.settings
        kept: dict[str, dict[str, float]] = {}
        for item in ITEMS:
            pairs = cast(Pairs, await client.zrange(keys.neighbours(item), 0, -1, withscores=True))
            kept[item] = dict(pairs)
        assert_counts_follow_neighbours(await neighbour_state(small.store))
    expected = kept_neighbours(events, settings, batch_sizes)
    final = Interactions(settings)
    for e in events:
        final.add(e)
    counts, norms = final.counts()
    s = settings.similarity_shrinkage
    assert sum(len(counts[item]) > k for item in ITEMS) > 20  # the trim had work to do
    for item in ITEMS:
        assert kept[item] == pytest.approx(expected.get(item, {}), rel=1e-12), item
        assert len(kept[item]) == min(k, len(counts[item])), item
        if not batch_sizes:  # fresh ranks: the K best of every pair by the final C and N
            ranks = {j: stored_rank(c, norms[j], s) for j, c in counts[item].items()}
            assert set(kept[item]) == set(sorted(ranks, key=lambda j: (ranks[j], j))[-k:]), item


async def test_loading_more_users_than_a_script_can_unpack_at_once(processor: Processor) -> None:
    """A batch may hold thousands of users (SHOPPULSE_BATCH_SIZE has no upper bound): reading
    them all in one call gives what reading a few gives, for known and unknown alike."""
    await deliver(processor, event_stream())
    store = processor.store
    strangers = [f"stranger{n}" for n in range(9_000)]
    users, items = [*USERS, *strangers], [*ITEMS, *(f"x{n}" for n in range(9_000))]
    records, categories = await store.load_users(users, items)
    few, few_categories = await store.load_users(USERS[:3], ITEMS)
    for user in USERS[:3]:
        assert (records[user].state, records[user].profile) == (few[user].state, few[user].profile)
        assert records[user].version == few[user].version > 0
    assert all(records[user].version == 0 for user in strangers)
    assert {item: categories[item] for item in ITEMS} == few_categories
    assert few_categories == {item: CATEGORY.get(item) for item in ITEMS}
    assert all(categories[f"x{n}"] is None for n in range(9_000))


async def test_a_batch_read_gives_the_records_the_served_versions_and_the_clock(
    processor: Processor,
) -> None:
    """``load_batch`` is one script call: the records and categories ``load_users`` gives, and
    what the stream used to read with three GETs (served ALS and churn versions, clock)."""
    events = event_stream()
    await deliver(processor, events)
    store, keys = processor.store, processor.store.keys
    before = await store.load_batch(USERS[:3], ITEMS)
    assert (before.als_version, before.churn_version) == (None, None)
    assert before.clock == max(float(e["ts"]) for e in events)

    await store.client.set(keys.current_model("als"), "als-test")
    await store.client.set(keys.current_model("churn"), "churn-test")
    loaded = await store.load_batch(USERS[:3], ITEMS)
    records, categories = await store.load_users(USERS[:3], ITEMS)
    assert (loaded.als_version, loaded.churn_version) == ("als-test", "churn-test")
    assert loaded.categories == categories == {item: CATEGORY.get(item) for item in ITEMS}
    for user in USERS[:3]:
        assert loaded.records[user].state == records[user].state
        assert loaded.records[user].version == records[user].version > 0
