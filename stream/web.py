"""The worker's web endpoints, on Faust's web server (``SHOPPULSE_WEB_PORT``).

``/`` the dashboard (one static page, stream/static/dashboard.html, no build step),
``/metrics`` Prometheus text, ``/health`` liveness with Redis, and the JSON the dashboard reads:
``/api/overview``, ``/api/models``, ``/api/user/{user_id}``, ``/api/alerts``, ``/api/risk``.
``/api/user/`` takes the shop's user id (pseudonymised here when SHOPPULSE_PSEUDONYMISE_KEY is
set), or with ``?stored=1`` the id as stored (what alerts carry).

:func:`register_web` is the one call ``create_app`` makes. A timer samples the stream's
counters every :data:`SAMPLE_SECONDS` into a small in-memory ring (the event-rate chart), the
consumer lag of this worker's partitions, and the served model's metadata for the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shoppulse.settings import Settings
from stream.keys import Keys, Topics
from stream.metrics import CONTENT_TYPE, METRICS, Metrics
from stream.model_store import KIND_ALS, KIND_CHURN, ChurnModelStore, ModelStore
from stream.privacy import user_key
from stream.store import redis_for

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 2.0
RING_SIZE = 300  # ten minutes of samples
RISK_BINS = 10
MAX_ALERTS = 1000
HEALTH_TIMEOUT = 1.0
JSON = "application/json"


@dataclass(slots=True)
class Sample:
    at: float  # wall clock
    seen: int  # events taken in so far (applied + duplicates), all workers
    lag: int | None  # this worker's consumer lag on the input topics


@dataclass(slots=True)
class WebState:
    """What the endpoints share inside one worker process."""

    settings: Settings
    keys: Keys
    topics: Topics
    metrics: Metrics
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=RING_SIZE))
    clients: dict[str, Any] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)

    @property
    def redis(self) -> aioredis.Redis:
        # Created on first use, inside the worker's event loop, which the pool binds to.
        if "redis" not in self.clients:
            self.clients["redis"] = redis_for(self.settings)
        client: aioredis.Redis = self.clients["redis"]
        return client

    @property
    def models(self) -> ModelStore:
        if "models" not in self.clients:
            self.clients["models"] = ModelStore(redis_for(self.settings, decode=False), self.keys)
        models: ModelStore = self.clients["models"]
        return models

    def rates(self) -> list[dict[str, Any]]:
        """Events per second between consecutive samples, with the lag at each."""
        points = []
        previous: Sample | None = None
        for sample in self.samples:
            if previous is not None and sample.at > previous.at:
                rate = max(0, sample.seen - previous.seen) / (sample.at - previous.at)
                points.append({"t": sample.at, "rate": round(rate, 2), "lag": sample.lag})
            previous = sample
        return points


def dashboard_html() -> bytes:
    return resources.files("stream").joinpath("static", "dashboard.html").read_bytes()


def input_lag(app: faust.App, topics: Topics) -> dict[str, int]:
    """This worker's lag per input topic, from Faust's own offset bookkeeping (no extra
    consumer): per assigned partition, the high-water mark (the next offset) minus one past the
    last offset read. The development broker can under-report high-water marks; clamped at 0."""
    monitor = app.monitor
    read: Mapping[str, Mapping[int, int]] = monitor._tp_read_offsets_dict()
    end: Mapping[str, Mapping[int, int]] = monitor._tp_end_offsets_dict()
    lag: dict[str, int] = {}
    for topic in (topics.clicks, topics.orders, topics.catalog):
        behind = 0
        for partition, high in (end.get(topic) or {}).items():
            last = (read.get(topic) or {}).get(partition)
            behind += max(0, high - (last + 1 if last is not None else 0))
        lag[topic] = behind
    return lag


async def sample(app: faust.App, state: WebState) -> None:
    """One tick: stream counters into the ring, lag and the served model into the metrics."""
    try:
        lag = input_lag(app, state.topics)
    except Exception:  # the monitor has no offsets before the first assignment
        log.debug("consumer lag not available yet", exc_info=True)
        lag = {}
    state.lag = lag
    state.metrics.lag(lag)
    try:
        applied, duplicates = await state.redis.hmget(state.keys.stats(), "applied", "duplicates")
        await follow_model(state)
    except RedisError as exc:
        state.metrics.redis_failure(exc, retried=False)
        log.warning("dashboard sample failed: Redis unavailable (%s)", exc)
        return
    seen = int(applied or 0) + int(duplicates or 0)
    state.samples.append(Sample(time.time(), seen, sum(lag.values()) if lag else None))


async def follow_model(state: WebState) -> None:
    """The served ALS and churn versions, for /metrics."""
    version = await state.models.current_version(KIND_ALS)
    if version is not None:
        versions = await state.models.versions()
        header = next((v for v in versions if v.get("version") == version), None)
        state.metrics.serving(version, KIND_ALS, header)
    churn = ChurnModelStore(state.redis, state.keys)
    version = await churn.current_version()
    if version is not None:
        state.metrics.serving(version, KIND_CHURN, await churn.header(version))


# -- reads behind the JSON endpoints --------------------------------------------------------------
async def overview(app: faust.App, state: WebState) -> dict[str, Any]:
    redis = state.redis
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(state.keys.stats())
    pipe.scard(state.keys.users())
    pipe.get(state.keys.clock())
    pipe.get(state.keys.current_model(KIND_ALS))
    pipe.zcard(state.keys.risk())
    pipe.llen(state.keys.alerts())
    stats, users, clock, model, scored, alerts = await pipe.execute()
    rates = state.rates()
    return {
        "namespace": state.settings.namespace,
        "stats": {name: int(float(value)) for name, value in (stats or {}).items()},
        "users": int(users),
        "clock": float(clock) if clock is not None else None,
        "model_version": model,
        "scored_users": int(scored),
        "alerts": int(alerts),
        "rate": rates[-1]["rate"] if rates else None,
        "lag": state.lag,
        "lag_total": sum(state.lag.values()) if state.lag else None,
        "series": rates,
        "sample_seconds": SAMPLE_SECONDS,
        "now": time.time(),
    }


async def models(state: WebState) -> dict[str, Any]:
    """The kept ALS versions (``current``, ``versions``) and the serving churn model."""
    current = await state.models.current_version(KIND_ALS)
    return {
        "current": current,
        "versions": await state.models.versions(),
        "churn": await churn_model(state),
    }


async def churn_model(state: WebState) -> dict[str, Any] | None:
    """What the serving churn version's published documents say (no coefficients), or None."""
    raw = await state.redis.get(state.keys.current_model(KIND_CHURN))
    if raw is None:
        return None
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    pipe = state.redis.pipeline(transaction=False)
    pipe.hmget(state.keys.model(version), "churn", "segments")
    pipe.zscore(state.keys.churn_models(), version)
    (churn_raw, segments_raw), published = await pipe.execute()
    churn, segments = _json_object(churn_raw), _json_object(segments_raw)
    found = churn.get("params")
    params: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        "version": version,
        "published_at": float(published) if published is not None else None,
        "horizon_days": churn.get("horizon_days"),
        "features": churn.get("features") or [],
        "rows": params.get("rows"),
        "validation": params.get("validation") or {},
        "segments": segments.get("labels") or [],
    }


def _json_object(raw: str | bytes | None) -> dict[str, Any]:
    """A stored JSON document as a dict ({} if missing or not an object)."""
    try:
        document = orjson.loads(raw) if raw is not None else {}
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


async def user(state: WebState, user_id: str, stored: bool = False) -> dict[str, Any] | None:
    """Profile and recommendations, each item with its catalog category and title. ``user_id``
    is the shop's id (looked up under its pseudonym when a key is set), or with ``stored`` the
    id as stored."""
    keys = state.keys
    key_id = user_id if stored else user_key(user_id, state.settings.pseudonymise_key)
    profile_raw, recs_raw = await state.redis.mget([keys.profile(key_id), keys.recs(key_id)])
    if profile_raw is None and recs_raw is None:
        return None
    profile = orjson.loads(profile_raw) if profile_raw is not None else None
    recs = orjson.loads(recs_raw) if recs_raw is not None else None
    items = [str(i["item_id"]) for i in (recs or {}).get("items", [])]
    recent = [str(i["item_id"]) for i in (profile or {}).get("recent_items", [])]
    wanted = list(dict.fromkeys(items + recent))
    pipe = state.redis.pipeline(transaction=False)
    for item_id in wanted:
        pipe.hmget(keys.item(item_id), "category", "title")
    attributes = {
        item_id: {"category": category, "title": title}
        for item_id, (category, title) in zip(wanted, await pipe.execute(), strict=True)
    }
    if recs is not None:
        recs["items"] = [{**i, **attributes.get(str(i["item_id"]), {})} for i in recs["items"]]
    if profile is not None and "recent_items" in profile:
        profile["recent_items"] = [
            {**i, **attributes.get(str(i["item_id"]), {})} for i in profile["recent_items"]
        ]
    return {"user_id": user_id, "profile": profile, "recommendations": recs}


async def alerts(state: WebState, limit: int) -> dict[str, Any]:
    raw = await state.redis.lrange(state.keys.alerts(), 0, limit - 1)
    documents = []
    for item in raw:
        try:
            documents.append(orjson.loads(item))
        except orjson.JSONDecodeError:
            continue
    return {"alerts": documents}


async def risk(state: WebState, bins: int = RISK_BINS) -> dict[str, Any]:
    """Churn risk histogram over [0, 1] in ``bins`` bins (ZCOUNT per bin: no full scan)."""
    key = state.keys.risk()
    pipe = state.redis.pipeline(transaction=False)
    edges = [n / bins for n in range(bins + 1)]
    for n in range(bins):
        upper = f"({edges[n + 1]}" if n < bins - 1 else "+inf"
        lower = str(edges[n]) if n > 0 else "-inf"
        pipe.zcount(key, lower, upper)
    counts = await pipe.execute()
    return {
        "bins": [
            {"from": edges[n], "to": edges[n + 1], "count": int(c)} for n, c in enumerate(counts)
        ],
        "scored": int(sum(counts)),
    }


async def health(app: faust.App, state: WebState) -> tuple[int, dict[str, Any]]:
    running = bool(app.started) and not bool(app.should_stop)
    try:
        redis_ok = bool(await asyncio.wait_for(state.redis.ping(), HEALTH_TIMEOUT))
        redis_error = None
    except (RedisError, OSError, TimeoutError) as exc:
        redis_ok, redis_error = False, f"{type(exc).__name__}: {exc}"
    ok = running and redis_ok
    body = {
        "status": "ok" if ok else "unavailable",
        "app": "running" if running else "stopped",
        "redis": "ok" if redis_ok else "unreachable",
        "namespace": state.settings.namespace,
        "time": time.time(),
    }
    if redis_error:
        body["redis_error"] = redis_error
    return (200 if ok else 503), body


def _limit(request: Any, default: int, most: int) -> int:
    try:
        value = int(request.query.get("limit", default))
    except (TypeError, ValueError):
        return default
    return max(1, min(value, most))


# -- registration -------------------------------------------------------------------------------
def register_web(app: faust.App, settings: Settings, metrics: Metrics = METRICS) -> WebState | None:
    """Add ShopPulse's pages and its sampling timer to ``app`` (nothing if the web server is
    disabled)."""
    metrics.use_pseudonyms(settings.pseudonymise_key)  # the latency histogram needs it
    if not settings.web_enabled:
        return None
    state = WebState(settings, Keys.of(settings), Topics(settings.namespace), metrics)

    def reply(view: Any, document: Any, status: int = 200) -> Any:
        return view.bytes(orjson.dumps(document), content_type=JSON, status=status)

    async def guarded(view: Any, read: Any) -> Any:
        try:
            return reply(view, await read)
        except RedisError as exc:
            metrics.redis_failure(exc, retried=False)
            return reply(view, {"error": f"Redis unavailable: {type(exc).__name__}"}, 503)

    @app.page("/", name="shoppulse-dashboard")
    async def dashboard(view: Any, request: Any) -> Any:
        return view.html(dashboard_html().decode("utf-8"))

    @app.page("/metrics", name="shoppulse-metrics")
    async def prometheus(view: Any, request: Any) -> Any:
        return view.bytes(metrics.render(), content_type=CONTENT_TYPE)

    @app.page("/health", name="shoppulse-health")
    async def healthcheck(view: Any, request: Any) -> Any:
        status, body = await health(app, state)
        return reply(view, body, status)

    @app.page("/api/overview", name="shoppulse-overview")
    async def api_overview(view: Any, request: Any) -> Any:
        return await guarded(view, overview(app, state))

    @app.page("/api/models", name="shoppulse-models")
    async def api_models(view: Any, request: Any) -> Any:
        return await guarded(view, models(state))

    @app.page("/api/user/{user_id:.+}", name="shoppulse-user")
    async def api_user(view: Any, request: Any, user_id: str) -> Any:
        stored = request.query.get("stored", "") in ("1", "true")
        try:
            found = await user(state, user_id, stored)
        except RedisError as exc:
            metrics.redis_failure(exc, retried=False)
            return reply(view, {"error": f"Redis unavailable: {type(exc).__name__}"}, 503)
        if found is None:
            return reply(view, {"error": f"no profile or recommendations for {user_id!r}"}, 404)
        return reply(view, found)

    @app.page("/api/alerts", name="shoppulse-alerts")
    async def api_alerts(view: Any, request: Any) -> Any:
        return await guarded(view, alerts(state, _limit(request, 50, MAX_ALERTS)))

    @app.page("/api/risk", name="shoppulse-risk")
    async def api_risk(view: Any, request: Any) -> Any:
        return await guarded(view, risk(state))

    @app.timer(SAMPLE_SECONDS, name="shoppulse-dashboard-sample")  # type: ignore[untyped-decorator]
    async def tick() -> None:
        await sample(app, state)

    return state
