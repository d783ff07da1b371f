"""The one place that reads configuration: environment variables prefixed ``SHOPPULSE_``."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "remove_from_cart": 0.0,
    "purchase": 5.0,
}
# ALS leads where a model exists; the others rank for users and items it has not seen yet (each
# source is rescaled to [0, 1] per user before weighting). From the validation folds of
# workers/evaluate.py (the best blends without EASE; README, Accuracy): popularity and category
# are kept small, for where ALS is silent (cold users, unseen items).
DEFAULT_BLEND_WEIGHTS: dict[str, float] = {
    "als": 1.0,
    "itemknn": 0.25,
    "category": 0.02,
    "popularity": 0.02,
}
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
DEFAULT_KAFKA_PORT = 9092
REDIS_SCHEMES = ("redis", "rediss", "unix")


def bootstrap_servers(bootstrap: str) -> list[tuple[str, int]]:
    """Host and port of each server of a comma-separated bootstrap list, as Kafka clients read
    it: ``host``, ``host:port``, ``[ipv6]``, ``[ipv6]:port`` or a bare IPv6 address (no port);
    the port defaults to 9092. Raises ValueError naming the server that does not parse."""
    if not bootstrap.strip():
        raise ValueError("no bootstrap server given (expected host:port, comma-separated)")
    return [_bootstrap_server(server.strip()) for server in bootstrap.split(",")]


def _bootstrap_server(server: str) -> tuple[str, int]:
    if server.startswith("["):  # a bracketed IPv6 literal, e.g. [::1]:9092
        host, bracket, rest = server[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{server!r} is not host:port (e.g. [::1]:9092 for IPv6)")
        port_text = rest.removeprefix(":")
        if not port_text and rest:
            raise ValueError(f"{server!r} has no port after ':'")
    elif server.count(":") > 1:  # only a bare IPv6 literal, which cannot carry a port
        host, port_text = server, ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"{server!r} is not host:port (an IPv6 address with a port: e.g. [::1]:9092)"
            ) from None
    else:
        host, colon, port_text = server.partition(":")
        if colon and not port_text:
            raise ValueError(f"{server!r} has no port after ':'")
    if not host:
        raise ValueError(f"{server!r} has no host" if server else "an empty server in the list")
    if any(char.isspace() or char in "/@" for char in host):
        raise ValueError(f"{server!r} is not host:port")
    if not port_text:
        return host, DEFAULT_KAFKA_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{server!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL redis-py reads as meant (None if it is). The reason never
    quotes the URL, which may hold a password."""
    from redis.connection import parse_url  # redis-py's own reading of the URL

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        return "a Redis URL starts with redis://, rediss:// or unix://"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the host or port does not parse (host:port, or e.g. [::1]:6379 for IPv6)"
    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    except ValueError as exc:  # a query option of the wrong type, e.g. ?db=abc
        return str(exc)
    if scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path"
    if port == 0:  # redis-py would quietly use 6379
        return "the port must be a number from 1 to 65535"
    # redis-py quietly ignores a database that is not a number (so uses database 0), and
    # reads /0/1 as database 1; ?db= takes precedence over the path.
    database = unquote(parts.path).removeprefix("/")
    if database and "db" not in parse_qs(parts.query) and not database.isdigit():
        return f"the database (the path after host:port) must be a number, not {database!r}"
    return None


def cluster_url_problem(url: str) -> str | None:
    """Why a (well-formed) Redis URL cannot name a Redis Cluster node, or None."""
    from redis.connection import parse_url

    if url.startswith("unix://"):
        return "the Redis URL must be redis:// or rediss:// (a cluster is reached over TCP)"
    database = parse_url(url).get("db", 0)  # type: ignore[no-untyped-call]
    if int(database) != 0:
        return f"the Redis URL must name database 0 (a Redis Cluster has no database {database})"
    return None


class Settings(BaseSettings):
    """Every setting ShopPulse reads, with its default. Frozen: read once, passed around."""

    model_config = SettingsConfigDict(
        env_prefix="SHOPPULSE_",
        frozen=True,
        extra="ignore",
        env_parse_none_str="none",
        hide_input_in_errors=True,  # a refused SHOPPULSE_REDIS_URL may hold a password
    )

    # Where things live.
    kafka_bootstrap: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, comma-separated."
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"), description="Redis URL (may hold a password)."
    )
    redis_cluster: bool = Field(
        False,
        description="The Redis URL names a node of a Redis Cluster: keys start with the "
        "namespace in braces ({shoppulse}:...), one hash slot per namespace.",
    )
    namespace: str = Field(
        "shoppulse", description="Prefix of every topic ({ns}.) and Redis key ({ns}:)."
    )
    partitions: int = Field(
        4, ge=1, description="Partitions of the input topics when ShopPulse creates them."
    )
    web_port: int = Field(6066, ge=0, le=65535, description="Port of the worker's web server.")
    web_enabled: bool = Field(True, description="Serve the worker's web endpoints.")
    kafka_rebalance_timeout: float = Field(
        10.0, gt=0, description="Seconds a consumer-group rebalance may take."
    )
    kafka_fetch_max_wait_ms: int = Field(
        100, ge=1, le=30_000, description="Longest a consumer fetch waits for new events."
    )

    # Security (secrets are SecretStr: never shown by repr, str or logs).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How Kafka clients connect: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_* protocols)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle that signs the brokers' certificates (SSL, SASL_SSL)."
    )
    pseudonymise_key: SecretStr | None = Field(
        None, description="If set, user ids are replaced by a keyed hash before storage."
    )

    # Stream batching.
    # Batches reach this size only under a backlog (stream/transport.py take_batches): there the
    # per-batch costs (each user's neighbour lists, popularity, the scripts' fixed work) are
    # shared by more events. A larger cap drains faster (docs/throughput-journal.md) but
    # lengthens the longest script, during which Redis answers nobody else.
    batch_size: int = Field(5000, ge=1, description="Most events processed in one micro-batch.")
    batch_window_ms: int = Field(
        10,
        ge=1,
        description="Longest wait of a batch's first event for more, when none are waiting.",
    )

    # Profiles.
    half_life_days: float = Field(
        7.0, gt=0, description="Half-life of decayed event counts and affinities."
    )
    recent_items_cap: int = Field(
        20, ge=1, description="Recent interacted items shown in a profile."
    )
    interactions_cap: int = Field(
        500, ge=1, description="Items kept with their weights per user (training, filtering)."
    )
    purchased_cap: int = Field(
        500, ge=1, description="Bought items remembered per user (for filtering)."
    )
    dedupe_cap: int = Field(
        256, ge=1, description="Recent event ids remembered per user for dedupe."
    )
    category_affinity_cap: int = Field(
        20, ge=1, description="Categories kept in a profile's affinity map."
    )
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Interaction weight per event type (JSON).",
    )

    # Item-item similarities.
    interaction_cap: float = Field(10.0, gt=0, description="Cap on one user's weight for one item.")
    cooc_window: int = Field(
        20, ge=1, description="Most recent items a new interaction pairs with."
    )
    cooc_cap: int = Field(200, ge=1, description="Co-occurrence counters kept per item.")
    neighbours_k: int = Field(50, ge=1, description="Top-K most similar items kept per item.")
    similarity_shrinkage: float = Field(
        2.0, ge=0, description="Support shrinkage of cosine: sim * c / (c + shrinkage)."
    )
    popularity_half_life_days: float = Field(7.0, gt=0, description="Half-life of item popularity.")

    # Recommendations.
    recs_count: int = Field(20, ge=1, le=500, description="Items per recommendation list.")
    blend_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_BLEND_WEIGHTS),
        description="Weight of each candidate source in the blend (JSON).",
    )
    recommend_seen: bool = Field(
        False, description="Allow items the user recently interacted with."
    )

    # ALS retraining (workers/retrain.py).
    als_factors: int = Field(128, ge=1, le=1024, description="ALS latent factors.")
    als_regularization: float = Field(45.0, ge=0, description="ALS L2 regularization.")
    als_iterations: int = Field(15, ge=1, le=200, description="ALS sweeps per training.")
    als_alpha: float = Field(5.0, gt=0, description="ALS confidence per unit of interaction.")
    training_half_life_days: float | None = Field(
        180.0, gt=0, description='Decay of interactions in training ("none": none).'
    )
    holdout_users: int = Field(
        1000, ge=0, description="Users whose latest interaction checks a new model."
    )

    # Churn risk, segments and lifetime value (workers/churn_train.py, stream/churn.py).
    churn_horizon_days: float = Field(
        90.0, gt=0, description="Churn = no placed order within this many days."
    )
    churn_alert_threshold: float = Field(
        0.7, gt=0, le=1, description="Alert when a customer's churn risk crosses this upward."
    )
    churn_alert_margin: float = Field(
        0.1, ge=0, lt=1, description="Re-arm an alert once the risk falls below threshold - margin."
    )
    churn_alert_cooldown_days: float = Field(
        30.0, ge=0, description="No second alert for a customer within this many days (event time)."
    )
    churn_alert_on_first_score: bool = Field(
        True, description="A customer already above the threshold when first scored is alerted."
    )
    churn_orders_cap: int = Field(100, ge=1, description="Order events kept per user for churn.")
    churn_click_days_cap: int = Field(
        180, ge=1, description="Days with clickstream activity kept per user for churn."
    )
    churn_training_cutoffs: int = Field(
        6, ge=1, le=60, description="Past cutoffs the churn model learns from."
    )
    churn_cutoff_spacing_days: float = Field(
        30.0, gt=0, description="Days between those training cutoffs."
    )
    segments: int = Field(5, ge=2, le=8, description="Customer segments (K-means on RFM).")

    @field_validator("namespace")
    @classmethod
    def _namespace_is_safe(cls, value: str) -> str:
        if not _NAMESPACE_RE.match(value):
            raise ValueError("namespace must be 1-64 characters of letters, digits, '_' or '-'")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_parses(cls, value: str) -> str:
        bootstrap_servers(value)  # raises ValueError naming the server that does not parse
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: SecretStr) -> SecretStr:
        problem = redis_url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(f"bad Redis URL: {problem}")
        return value

    @field_validator("event_weights", "blend_weights")
    @classmethod
    def _weights_are_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = [name for name, weight in value.items() if weight < 0]
        if negative:
            raise ValueError(f"weights must be >= 0, got negative for {negative}")
        return value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "SHOPPULSE_KAFKA_SASL_USERNAME and SHOPPULSE_KAFKA_SASL_PASSWORD are needed "
                f"with SHOPPULSE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
            )
        return self

    @model_validator(mode="after")
    def _cluster_url_fits(self) -> Settings:
        if self.redis_cluster:
            problem = cluster_url_problem(self.redis_dsn)
            if problem is not None:
                raise ValueError(f"with SHOPPULSE_REDIS_CLUSTER=true, {problem}")
        return self

    @model_validator(mode="after")
    def _alert_margin_below_threshold(self) -> Settings:
        if self.churn_alert_margin >= self.churn_alert_threshold:
            raise ValueError("churn_alert_margin must be below churn_alert_threshold")
        return self

    @property
    def batch_window(self) -> float:
        return self.batch_window_ms / 1000.0

    @property
    def redis_dsn(self) -> str:
        return self.redis_url.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
