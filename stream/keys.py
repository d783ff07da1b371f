"""The one place that builds Redis keys and Kafka topic names.

Every key is ``{ns}:{kind}:{id}`` with the id as the *last* segment and no kind a prefix of
another kind's segment, so an id holding ``:`` or ``{`` can only ever name a key of its own
kind: ``profile`` of user ``"a:recs:b"`` is ``ns:profile:a:recs:b``, never ``ns:recs:b``.

On a Redis Cluster (``SHOPPULSE_REDIS_CLUSTER``) the namespace is written in braces,
``{shoppulse}:profile:u1``: a hash tag, so every key of a namespace hashes to one slot. The batch
scripts read and write many users' and items' keys in one atomic step, which Redis Cluster
allows only within a slot; several namespaces (shops) spread over the cluster's nodes. The tag
is the key's first ``{...}``, so no id placed after it can move a key to another slot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoppulse.settings import Settings

_PROBE = "probe"  # any id will do: prefix_of keeps only what a kind puts before it


def _require_id(value: str) -> str:
    if not value:
        raise ValueError("ids in Redis keys must be non-empty")
    return value


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key builder for one namespace."""

    ns: str
    hash_tag: bool = False  # {ns} as the prefix: one cluster slot per namespace
    prefix: str = field(init=False)  # what every key starts with, before its first ':'

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", f"{{{self.ns}}}" if self.hash_tag else self.ns)

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        """The keys of the configured namespace, hash-tagged when Redis is a cluster."""
        return cls(settings.namespace, hash_tag=settings.redis_cluster)

    def pattern(self) -> str:
        """SCAN pattern matching every key of the namespace (a brace is literal in a pattern)."""
        return f"{self.prefix}:*"

    def prefix_of(self, key_of: Callable[[str], str]) -> str:
        """The prefix a key kind puts before the id, for Lua scripts that build many keys of
        one kind (``keys.prefix_of(keys.neighbours)`` -> ``"ns:sim:"``)."""
        return key_of(_PROBE).removesuffix(_PROBE)

    # Public contract.
    def profile(self, user_id: str) -> str:
        return f"{self.prefix}:profile:{_require_id(user_id)}"

    def recs(self, user_id: str) -> str:
        return f"{self.prefix}:recs:{_require_id(user_id)}"

    # Internal per-user state: recent items, bought items, seen event ids, version.
    def user_state(self, user_id: str) -> str:
        return f"{self.prefix}:ustate:{_require_id(user_id)}"

    # Internal per-item state.
    def item(self, item_id: str) -> str:
        """Catalog attributes of an item (hash)."""
        return f"{self.prefix}:item:{_require_id(item_id)}"

    def cooccurrence(self, item_id: str) -> str:
        """Weighted co-occurrence counts with other items (sorted set, capped)."""
        return f"{self.prefix}:cooc:{_require_id(item_id)}"

    def neighbours(self, item_id: str) -> str:
        """Top-K most similar items with their similarity (sorted set)."""
        return f"{self.prefix}:sim:{_require_id(item_id)}"

    def neighbour_counts(self, item_id: str) -> str:
        """C[i, j] of exactly the neighbours ``neighbours(i)`` keeps (hash j -> count): what a
        read needs of them in one command (the counts themselves live in ``cooccurrence``)."""
        return f"{self.prefix}:nbc:{_require_id(item_id)}"

    def category_popularity(self, category: str) -> str:
        """Items of one category by log decayed popularity (sorted set)."""
        return f"{self.prefix}:catpop:{_require_id(category)}"

    # Models (values are data: arrays and JSON, never pickles).
    def model(self, version: str) -> str:
        """One published model version (hash of byte fields)."""
        return f"{self.prefix}:model:{_require_id(version)}"

    def current_model(self, kind: str) -> str:
        """The version of ``kind`` (e.g. ``als``) that workers serve (string)."""
        return f"{self.prefix}:current:{_require_id(kind)}"

    # Namespace-wide singletons.
    def item_norms(self) -> str:
        """Sum of squared interaction weights per item (hash): the cosine denominator."""
        return f"{self.prefix}:norms"

    def popularity(self) -> str:
        """Items by log decayed popularity (sorted set)."""
        return f"{self.prefix}:popularity"

    def out_of_stock(self) -> str:
        """Items the catalog says are out of stock (set)."""
        return f"{self.prefix}:outofstock"

    def clock(self) -> str:
        """Highest event time seen (string float)."""
        return f"{self.prefix}:clock"

    def stats(self) -> str:
        """Running counters of the stream (hash): events applied, duplicates skipped, ..."""
        return f"{self.prefix}:stats"

    def models(self) -> str:
        """Published model versions by publication time (sorted set)."""
        return f"{self.prefix}:models"

    def users(self) -> str:
        """Every known user id (set); retraining and re-scoring walk it."""
        return f"{self.prefix}:users"

    # Churn risk (read by the dashboard: keep these two names).
    def risk(self) -> str:
        """Every scored customer by current churn risk (sorted set, user -> risk)."""
        return f"{self.prefix}:risk"

    def alerts(self) -> str:
        """The most recent churn alerts, newest first (list of JSON documents, capped)."""
        return f"{self.prefix}:alerts"

    def alert_outbox(self) -> str:
        """Churn alerts written but not yet known to be on the alerts topic (sorted set: alert
        document -> wall-clock time after which any worker may (re)send it)."""
        return f"{self.prefix}:outbox"

    def churn_models(self) -> str:
        """Published churn/segment model versions by publication time (sorted set)."""
        return f"{self.prefix}:churnmodels"

    def rescore_marker(self, token: str) -> str:
        """Claimed by the one worker that re-scores everyone for ``token`` (a day or a model
        version): SET NX, with an expiry."""
        return f"{self.prefix}:rescore:{_require_id(token)}"


@dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names for one namespace."""

    ns: str

    @property
    def clicks(self) -> str:
        return f"{self.ns}.clicks"

    @property
    def orders(self) -> str:
        return f"{self.ns}.orders"

    @property
    def catalog(self) -> str:
        return f"{self.ns}.catalog"

    @property
    def recommendations(self) -> str:
        return f"{self.ns}.recommendations"

    @property
    def churn_alerts(self) -> str:
        return f"{self.ns}.alerts.churn"

    @property
    def deadletter(self) -> str:
        return f"{self.ns}.deadletter"
