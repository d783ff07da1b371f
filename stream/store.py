"""Redis state: the only module that talks to Redis for the stream (workers reuse it).

Reads are pipelined (one round trip per kind of read for a whole batch) and every multi-key
update is one Lua script, so a crash can never leave half a batch behind.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import chain, compress
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson
import redis.asyncio as aioredis
from numpy.typing import NDArray
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from models.decay import log_forward_weight, logaddexp
from models.profile import ItemDeltas, UserRecord
from models.recommend import Neighbours
from models.similarity import shrunk_cosine_array
from stream.events import CatalogIn
from stream.keys import Keys
from stream.model_store import KIND_ALS, KIND_CHURN

if TYPE_CHECKING:
    from shoppulse.settings import Settings

ALERTS_KEPT = 1000  # length of the {ns}:alerts list (newest first)
# Neighbour ranks (sim:i scores) are stored as whole numbers: the rank times this, rounded.
# Integer scores are what Redis stores and formats fastest (commit_batch.lua says why).
NEIGHBOUR_RANK_SCALE = 2**20
ALERT_LEASE_SECONDS = 30.0  # an alert not confirmed on Kafka this long after it is written
# (or claimed) may be sent by any worker: at least once, never lost with a crashed writer


def _lua(name: str, *shared: str) -> str:
    """A script's text, after the ``shared`` files it uses (function definitions)."""
    folder = resources.files("stream").joinpath("lua")
    return "\n".join(folder.joinpath(part).read_text(encoding="utf-8") for part in (*shared, name))


def connect(url: str, decode: bool = True, cluster: bool = False) -> aioredis.Redis:
    """An async client with a connection pool (hiredis parses replies when installed).

    ``decode=False`` keeps replies as bytes, for binary values such as model factors.
    ``cluster=True``: ``url`` names any node of a Redis Cluster; the client learns the slot map
    from it and sends each command (each script, by its first key) to the slot's node."""
    if cluster:
        client = RedisCluster.from_url(url, decode_responses=decode, health_check_interval=30)
        # The commands, pipelines and scripts this code uses behave alike on both clients
        # (tests/integration/test_redis_cluster.py runs the service on a real cluster).
        return cast(aioredis.Redis, client)
    return aioredis.Redis.from_url(url, decode_responses=decode, health_check_interval=30)


def redis_for(settings: Settings, decode: bool = True) -> aioredis.Redis:
    """A client for the configured Redis (a single server or a cluster)."""
    return connect(settings.redis_dsn, decode=decode, cluster=settings.redis_cluster)


@dataclass(frozen=True, slots=True)
class SimilarityParams:
    cooc_cap: int
    k: int
    shrinkage: float
    popularity_half_life: float


@dataclass(slots=True)
class RecommendationInputs:
    """Everything the recommender reads for a batch of users, fetched together."""

    neighbours: Neighbours  # item -> [(neighbour, cosine)]
    popularity: list[tuple[str, float]]  # (item, log decayed score), best first
    category_items: dict[str, list[tuple[str, float]]]
    out_of_stock: set[str]


@dataclass(slots=True)
class LoadedBatch:
    """What :meth:`RedisStore.load_batch` reads for a batch of user events."""

    records: dict[str, UserRecord]
    categories: dict[str, str | None]  # item -> catalog category
    als_version: str | None  # the served ALS version, None if none is published
    churn_version: str | None  # the served churn version, likewise
    clock: float | None  # the service clock (highest event time stored), None before any


class RedisStore:
    """Typed reads and atomic writes of ShopPulse state."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        # Each script declares one key, which a Redis Cluster client routes it by: every key a
        # script touches is in the namespace's slot (Keys.hash_tag), so any one of them will do.
        self._slot = [keys.clock()]
        self._commit: AsyncScript = client.register_script(
            _lua("commit_batch.lua", "neighbour_counts.lua")
        )
        self._catalog: AsyncScript = client.register_script(_lua("upsert_catalog.lua"))
        self._scores: AsyncScript = client.register_script(_lua("commit_scores.lua"))
        self._candidates: AsyncScript = client.register_script(
            _lua("read_candidates.lua", "neighbour_counts.lua")
        )
        self._claim_alerts: AsyncScript = client.register_script(_lua("claim_alerts.lua"))
        self._write_recs: AsyncScript = client.register_script(_lua("write_recs.lua"))
        self._load_users: AsyncScript = client.register_script(_lua("load_users.lua"))

    async def close(self) -> None:
        await self.client.aclose()

    # -- users --------------------------------------------------------------------------------
    async def load_users(
        self, user_ids: Sequence[str], item_ids: Sequence[str]
    ) -> tuple[dict[str, UserRecord], dict[str, str | None]]:
        """Current records of the users and catalog categories of the items, in one call."""
        records, categories, _ = await self._load(user_ids, item_ids, [])
        return records, categories

    async def load_batch(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> LoadedBatch:
        """What a batch of user events reads before it is applied, in one call: the users'
        records, the items' categories, the served model versions and the service clock."""
        keys = self.keys
        heads = [keys.current_model(KIND_ALS), keys.current_model(KIND_CHURN), keys.clock()]
        records, categories, (als, churn, clock) = await self._load(user_ids, item_ids, heads)
        return LoadedBatch(
            records, categories, als, churn, float(clock) if clock is not None else None
        )

    async def _load(
        self, user_ids: Sequence[str], item_ids: Sequence[str], string_keys: Sequence[str]
    ) -> tuple[dict[str, UserRecord], dict[str, str | None], list[str | None]]:
        keys = self.keys
        args: list[str | int] = [
            len(user_ids),
            len(string_keys),
            *string_keys,
            *map(keys.user_state, user_ids),
            *map(keys.profile, user_ids),
            *map(keys.item, item_ids),
        ]
        states, profiles, found, strings = await self._load_users(keys=self._slot, args=args)
        records: dict[str, UserRecord] = {}
        for n, user_id in enumerate(user_ids):
            version, state, profile = states[2 * n], states[2 * n + 1], profiles[n]
            if state is None or profile is None:
                records[user_id] = UserRecord.new(user_id)
                records[user_id].version = int(version or 0)
            else:
                records[user_id] = UserRecord(
                    user_id, orjson.loads(profile), orjson.loads(state), int(version)
                )
        return records, dict(zip(item_ids, found, strict=True)), list(strings)

    async def commit(
        self,
        records: Iterable[UserRecord],
        deltas: ItemDeltas,
        clock: float,
        params: SimilarityParams,
        counts: tuple[int, int] = (0, 0),
        risks: Sequence[tuple[str, float]] = (),
        alerts: Sequence[dict[str, Any]] = (),
    ) -> list[str]:
        """Write users and item deltas atomically; returns users whose version moved (then
        nothing at all was written). ``counts`` = (applied, duplicates) for the stats;
        ``risks`` and ``alerts`` (churn) go to ``{ns}:risk`` and ``{ns}:alerts`` with them."""
        keys = self.keys
        # Documents travel as their own arguments (no JSON inside JSON); the payload names them
        # by position: user n's state is ARGV[2n + 2], its profile ARGV[2n + 3].
        users = [
            [r.user_id, keys.user_state(r.user_id), keys.profile(r.user_id), r.version]
            for r in records
        ]
        documents: list[bytes] = []
        for record in records:
            documents += [orjson.dumps(record.state), orjson.dumps(record.profile)]
        by_item: dict[str, list[Any]] = defaultdict(list)  # i -> [j, delta, j, delta, ...]
        for (i, j), delta in deltas.cooccurrence.items():
            by_item[i] += (j, delta)
        payload = {
            "users": users,
            "norms": [[item, delta] for item, delta in deltas.norms.items()],
            "cooc": [[i, pairs] for i, pairs in by_item.items()],
            "cooc_prefix": keys.prefix_of(keys.cooccurrence),
            "sim_prefix": keys.prefix_of(keys.neighbours),
            "nbc_prefix": keys.prefix_of(keys.neighbour_counts),
            "pop": self._popularity_updates(deltas, params.popularity_half_life),
            "norms_key": keys.item_norms(),
            "users_key": keys.users(),
            "clock_key": keys.clock(),
            "clock": clock,
            "cooc_cap": params.cooc_cap,
            "k": params.k,
            "shrinkage": params.shrinkage,
            "rank_scale": NEIGHBOUR_RANK_SCALE,
            "stats_key": keys.stats(),
            "applied": counts[0],
            "duplicates": counts[1],
            **self._churn_payload(risks),
        }
        documents += [orjson.dumps(alert) for alert in alerts]
        stale = await self._commit(keys=self._slot, args=[orjson.dumps(payload), *documents])
        return [str(user_id) for user_id in stale]

    def _churn_payload(self, risks: Sequence[tuple[str, float]]) -> dict[str, Any]:
        return {
            "risk_key": self.keys.risk(),
            "risks": [[user, risk] for user, risk in risks],
            "alerts_key": self.keys.alerts(),
            "alerts_cap": ALERTS_KEPT,
            "outbox_key": self.keys.alert_outbox(),
            "outbox_due": time.time() + ALERT_LEASE_SECONDS,
        }

    async def confirm_alerts(self, alerts: Sequence[dict[str, Any]]) -> None:
        """Take alerts that are on Kafka now out of the outbox (the scripts wrote them there
        with the same bytes: orjson gives one encoding per document)."""
        if alerts:
            await self.client.zrem(self.keys.alert_outbox(), *map(orjson.dumps, alerts))

    async def claim_due_alerts(self, limit: int = 500) -> list[dict[str, Any]]:
        """Alerts whose writer did not confirm them in time, claimed for this caller to send."""
        args: list[str | float] = [
            self.keys.alert_outbox(),
            time.time(),
            ALERT_LEASE_SECONDS,
            limit,
        ]
        return [
            orjson.loads(document)
            for document in await self._claim_alerts(keys=self._slot, args=args)
        ]

    async def churn_histories(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored churn history (``state["churn"]``, plain data) of each user having one."""
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hget(self.keys.user_state(user_id), "s")
        found: dict[str, dict[str, Any]] = {}
        for user_id, raw in zip(user_ids, await pipe.execute(), strict=True):
            if raw is not None:
                history = orjson.loads(raw).get("churn")
                if history is not None:
                    found[user_id] = history
        return found

    async def commit_scores(
        self,
        records: Sequence[UserRecord],
        risks: Sequence[tuple[str, float]],
        alerts: Sequence[dict[str, Any]],
    ) -> list[str]:
        """Write re-scored users (state, profile, risk, alerts) in one script, each only if
        their version has not moved since they were read; returns those whose version moved
        (nothing of theirs was written)."""
        keys = self.keys
        users = [
            [r.user_id, keys.user_state(r.user_id), keys.profile(r.user_id), r.version]
            for r in records
        ]
        documents: list[bytes] = []
        for record in records:
            documents += [orjson.dumps(record.state), orjson.dumps(record.profile)]
        documents += [orjson.dumps(alert) for alert in alerts]
        payload = {
            "users": users,
            "alert_users": [alert["user_id"] for alert in alerts],
            **self._churn_payload(risks),
        }
        stale = await self._scores(keys=self._slot, args=[orjson.dumps(payload), *documents])
        return [str(user_id) for user_id in stale]

    def _popularity_updates(self, deltas: ItemDeltas, half_life: float) -> list[list[Any]]:
        """The batch's observations merged per sorted-set member, grouped by sorted set:
        ``[[key, [[item, log_weight], ...]], ...]``."""
        merged: dict[str, dict[str, float]] = defaultdict(dict)
        observations = [(self.keys.popularity(), i, w, ts) for i, w, ts in deltas.popularity]
        observations += [
            (self.keys.category_popularity(c), i, w, ts)
            for c, i, w, ts in deltas.category_popularity
        ]
        for key, item_id, weight, ts in observations:
            score = log_forward_weight(weight, ts, half_life)
            scores = merged[key]
            current = scores.get(item_id)
            scores[item_id] = score if current is None else logaddexp(current, score)
        return [[key, [[i, s] for i, s in scores.items()]] for key, scores in merged.items()]

    async def user_chunks(self, size: int = 1000) -> AsyncIterator[list[str]]:
        """Every known user id, in chunks (SSCAN: never blocks Redis on a big set)."""
        chunk: list[str] = []
        async for user_id in self.client.sscan_iter(self.keys.users(), count=size):
            chunk.append(str(user_id))
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def interactions(
        self, user_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, float, float]]]:
        """Each user's kept interactions ``(item_id, weight, ts)``, most recent first."""
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hget(self.keys.user_state(user_id), "s")
        found: dict[str, list[tuple[str, float, float]]] = {}
        for user_id, raw in zip(user_ids, await pipe.execute(), strict=True):
            if raw is not None:
                recent = orjson.loads(raw)["recent"]
                found[user_id] = [(str(i), float(w), float(t)) for i, w, t in recent]
        return found

    async def known_users(self) -> set[str]:
        return {str(u) for u in await self.client.smembers(self.keys.users())}

    async def events_seen(self) -> int:
        """Events the stream has taken in so far: applied plus skipped duplicates."""
        applied, duplicates = await self.client.hmget(self.keys.stats(), "applied", "duplicates")
        return int(applied or 0) + int(duplicates or 0)

    async def clock(self) -> float | None:
        value = await self.client.get(self.keys.clock())
        return float(value) if value is not None else None

    # -- catalog ------------------------------------------------------------------------------
    async def upsert_catalog(self, items: Sequence[CatalogIn]) -> int:
        """Apply catalog upserts (newest event time wins); returns how many changed."""
        documents = []
        for item in items:
            fields = {
                name: (orjson.dumps(value).decode() if name == "tags" else str(value))
                for name, value in item.model_dump(exclude={"item_id"}, exclude_none=True).items()
            }
            document: dict[str, Any] = {
                "key": self.keys.item(item.item_id),
                "item": item.item_id,
                "fields": fields,
            }
            if item.ts is not None:
                document["ts"] = item.ts
            if item.in_stock is not None:
                document["in_stock"] = item.in_stock
            documents.append(document)
        changed = await self._catalog(
            keys=self._slot, args=[orjson.dumps(documents), self.keys.out_of_stock()]
        )
        return int(changed)

    async def item_attributes(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self.keys.item(item_id))
        replies = await pipe.execute()
        return dict(zip(item_ids, replies, strict=True))

    # -- recommendations ----------------------------------------------------------------------
    async def recommendation_inputs(
        self,
        source_items: Sequence[str],
        categories: Sequence[str],
        popular_n: int,
        shrinkage: float,
        more_candidates: Sequence[str] = (),
    ) -> RecommendationInputs:
        """Neighbours of the source items with their similarity as of now, popular items
        overall and per category, and which of all those candidates are out of stock: one
        script call for the whole batch."""
        keys = self.keys
        payload = {
            "popularity": keys.popularity(),
            "popular_n": popular_n,
            "categories": [keys.category_popularity(c) for c in categories],
            "items": list(source_items),
            "nbc_prefix": keys.prefix_of(keys.neighbour_counts),
            "sim_prefix": keys.prefix_of(keys.neighbours),
            "cooc_prefix": keys.prefix_of(keys.cooccurrence),
            "norms_key": keys.item_norms(),
            "out_of_stock": keys.out_of_stock(),
            "extra": list(more_candidates),
        }
        reply = await self._candidates(keys=self._slot, args=[orjson.dumps(payload)])
        popular, popular_oos, category_replies, categories_oos = reply[:4]
        item_norms, counts, others, other_norms, others_oos, extra_oos = reply[4:]
        out_of_stock = _flagged(_flat_members(popular), popular_oos)
        for flat, flags in zip(category_replies, categories_oos, strict=True):
            out_of_stock |= _flagged(_flat_members(flat), flags)
        out_of_stock |= _flagged(others, others_oos)
        out_of_stock |= _flagged(list(more_candidates), extra_oos)
        pairs = list(chain.from_iterable(counts))  # at, C[i,j], ... for each item in turn
        neighbour = np.array(pairs[0::2], dtype=np.int64) - 1  # Lua counts from 1
        return RecommendationInputs(
            _similarities(
                source_items,
                [len(flat) // 2 for flat in counts],
                others,
                neighbour,
                _numbers(item_norms, 0.0),
                _numbers(pairs[1::2], np.nan),
                _numbers(other_norms, 0.0)[neighbour],
                shrinkage,
            ),
            _score_pairs(popular),
            {c: _score_pairs(flat) for c, flat in zip(categories, category_replies, strict=True)},
            out_of_stock,
        )

    async def write_recommendations(
        self,
        documents: Sequence[dict[str, Any]],
        accept_models: Sequence[str] | None = None,
        versions: Mapping[str, int] | None = None,
    ) -> tuple[bool, set[str]]:
        """Write lists in one script: none if the current ALS version is not one of
        ``accept_models`` ("" for no model; None: not checked), and not those of users whose
        state version is no longer the one in ``versions``. Returns (model still current,
        users skipped)."""
        keys = self.keys
        expect = versions or {}
        payload: dict[str, Any] = {
            "users": [
                [
                    keys.recs(d["user_id"]),
                    keys.user_state(d["user_id"]),
                    expect.get(d["user_id"], -1),
                ]
                for d in documents
            ]
        }
        if accept_models is not None:
            payload |= {"current_key": keys.current_model(KIND_ALS), "accept": list(accept_models)}
        reply = await self._write_recs(
            keys=self._slot, args=[orjson.dumps(payload), *map(orjson.dumps, documents)]
        )
        skipped = {documents[int(n) - 1]["user_id"] for n in reply[1:]}
        return bool(int(reply[0])), skipped

    # -- reading for people and tests ---------------------------------------------------------
    async def get_json(self, key: str) -> Any:
        raw = await self.client.get(key)
        return orjson.loads(raw) if raw is not None else None


def _score_pairs(flat: Sequence[Any]) -> list[tuple[str, float]]:
    """``(member, score)`` pairs from a flat ``member, score, ...`` ZRANGE reply (as a script
    returns it), best first. Scores are parsed by numpy: a batch reads thousands of them."""
    if not flat:
        return []
    scores = np.array(flat[1::2], dtype=np.float64)
    return list(zip(map(str, flat[0::2]), scores.tolist(), strict=True))


def _flat_members(flat: Sequence[Any]) -> list[str]:
    """The members of a flat ``member, score, ...`` reply."""
    return list(flat[0::2])


def _flagged(members: Sequence[str], flags: Sequence[int]) -> set[str]:
    """The members whose SMISMEMBER flag is set."""
    return set(compress(members, flags))


def _numbers(replies: list[Any], missing: float) -> NDArray[np.float64]:
    """Numbers from Redis's text replies (None, for a missing field or member, becomes
    ``missing``), parsed by numpy in one pass."""
    if None in replies:
        replies = [missing if reply is None else reply for reply in replies]
    return np.array(replies, dtype=np.float64)


def _similarities(
    items: Sequence[str],
    lengths: Sequence[int],
    ids: Sequence[str],
    neighbour: NDArray[np.int64],
    item_norms: NDArray[np.float64],
    counts: NDArray[np.float64],
    neighbour_norms: NDArray[np.float64],
    shrinkage: float,
) -> Neighbours:
    """Each item's kept neighbours with their shrunk cosine from C and N as they are now, for
    the whole batch in one array pass: item ``items[k]`` has the next ``lengths[k]`` pairs of
    the flat ``neighbour`` (positions in ``ids``), ``counts`` and ``neighbour_norms``. Pairs of
    no positive similarity are left out."""
    per_item = np.array(lengths, dtype=np.int64)
    values = shrunk_cosine_array(
        counts, np.repeat(item_norms, per_item), neighbour_norms, shrinkage
    )
    kept = values > 0.0
    # Per item, how many of its pairs are kept: the offsets of the flat arrays.
    owner = np.repeat(np.arange(len(items)), per_item)
    kept_per_item = np.bincount(owner[kept], minlength=len(items))
    has_any = kept_per_item > 0
    starts = np.zeros(int(has_any.sum()) + 1, dtype=np.int64)
    np.cumsum(kept_per_item[has_any], out=starts[1:])
    sources = list(compress(items, has_any.tolist()))
    return Neighbours(sources, starts, ids, neighbour[kept], values[kept])
