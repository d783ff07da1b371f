"""Model versions in Redis: published whole, switched atomically, loaded without pickles."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from models.churn import ChurnModel, decode_churn_model, encode_churn_model
from models.segments import SegmentModel, decode_segment_model, encode_segment_model
from models.serving import PublishedModel, decode_model, encode_model
from stream.keys import Keys

KIND_ALS = "als"
KEEP_VERSIONS = 3  # older versions are deleted once a newer one is live


class ModelStore:
    """Publishes and loads model versions; needs a client that does not decode replies."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def publish(self, model: PublishedModel, kind: str = KIND_ALS) -> None:
        """Write the version's fields and make it current in one transaction: a reader sees
        the old version or the new one, never a mix."""
        key = self.keys.model(model.version)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=encode_model(model))  # type: ignore[arg-type]
            pipe.zadd(self.keys.models(), {model.version: time.time()})
            pipe.set(self.keys.current_model(kind), model.version)
            await pipe.execute()
        await self._forget_old_versions(model.version)

    async def _forget_old_versions(self, current: str) -> None:
        versions = [_text(v) for v in await self.client.zrange(self.keys.models(), 0, -1)]
        stale = [v for v in versions[:-KEEP_VERSIONS] if v != current]
        if stale:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*[self.keys.model(v) for v in stale])
                pipe.zrem(self.keys.models(), *stale)
                await pipe.execute()

    async def current_version(self, kind: str = KIND_ALS) -> str | None:
        raw = await self.client.get(self.keys.current_model(kind))
        return _text(raw) if raw is not None else None

    async def versions(self) -> list[dict[str, Any]]:
        """Metadata of the kept versions, newest first: the header (format, shapes, training
        parameters, held-back score) plus ``published_at``; no factors are read."""
        reply: Any = await self.client.zrevrange(self.keys.models(), 0, -1, withscores=True)
        published: list[tuple[Any, float]] = [(v, float(s)) for v, s in reply]
        if not published:
            return []
        pipe = self.client.pipeline(transaction=False)
        for version, _ in published:
            pipe.hget(self.keys.model(_text(version)), "header")
        headers = await pipe.execute()
        found = []
        for (version, score), raw in zip(published, headers, strict=True):
            try:
                header = orjson.loads(raw) if raw is not None else {}
            except orjson.JSONDecodeError:
                header = {}
            if not isinstance(header, dict):
                header = {}
            found.append({**header, "version": _text(version), "published_at": float(score)})
        return found

    async def load(self, version: str, with_users: bool = False) -> PublishedModel | None:
        """A published version (None if it has been deleted meanwhile)."""
        fields = ["header", "item_ids", "item_factors"]
        if with_users:
            fields += ["user_ids", "user_factors"]
        values = await self.client.hmget(self.keys.model(version), fields)
        if any(value is None for value in values):
            return None
        found = {name: _bytes(value) for name, value in zip(fields, values, strict=True)}
        return decode_model(found, with_users=with_users)

    async def load_current(
        self, kind: str = KIND_ALS, with_users: bool = False
    ) -> PublishedModel | None:
        version = await self.current_version(kind)
        return await self.load(version, with_users) if version else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# -- churn and segments ---------------------------------------------------------------------------

KIND_CHURN = "churn"


@dataclass(frozen=True, slots=True)
class ChurnModels:
    """One published churn version: the churn model and (if one could be fitted) segments."""

    version: str
    churn: ChurnModel
    segments: SegmentModel | None
    train_seconds: float | None = None  # how long training took (for /metrics)


class ChurnModelStore:
    """Churn versions as JSON documents in a hash (``{ns}:model:{version}``: ``kind``,
    ``churn``, ``segments``), switched with ``{ns}:current:churn`` in one transaction."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def publish(self, models: ChurnModels) -> None:
        fields = {"kind": KIND_CHURN, "churn": encode_churn_model(models.churn)}
        if models.segments is not None:
            fields["segments"] = encode_segment_model(models.segments)
        if models.train_seconds is not None:
            fields["train_seconds"] = repr(models.train_seconds)
        key = self.keys.model(models.version)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.zadd(self.keys.churn_models(), {models.version: time.time()})
            pipe.set(self.keys.current_model(KIND_CHURN), models.version)
            await pipe.execute()
        versions = [_text(v) for v in await self.client.zrange(self.keys.churn_models(), 0, -1)]
        stale = [v for v in versions[:-KEEP_VERSIONS] if v != models.version]
        if stale:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*[self.keys.model(v) for v in stale])
                pipe.zrem(self.keys.churn_models(), *stale)
                await pipe.execute()

    async def current_version(self) -> str | None:
        raw = await self.client.get(self.keys.current_model(KIND_CHURN))
        return _text(raw) if raw is not None else None

    async def load(self, version: str) -> ChurnModels | None:
        """A published version (None if it has been deleted meanwhile); ChurnModelError or
        SegmentModelError if what is stored is not a valid model."""
        churn, segments = await self.client.hmget(self.keys.model(version), ["churn", "segments"])
        if churn is None:
            return None
        return ChurnModels(
            version,
            decode_churn_model(_bytes(churn)),
            decode_segment_model(_bytes(segments)) if segments is not None else None,
        )

    async def load_current(self) -> ChurnModels | None:
        version = await self.current_version()
        return await self.load(version) if version else None

    async def header(self, version: str) -> dict[str, Any]:
        """What /metrics shows of a version, shaped like an ALS version's header:
        ``published_at`` and ``params.train_seconds`` (when known)."""
        published = await self.client.zscore(self.keys.churn_models(), version)
        seconds = await self.client.hget(self.keys.model(version), "train_seconds")
        header: dict[str, Any] = {"params": {}}
        if published is not None:
            header["published_at"] = float(published)
        if seconds is not None:
            header["params"]["train_seconds"] = float(seconds)
        return header
