"""Batch processing, independent of Faust: raw events in, state in Redis, documents out.

The Faust agents (stream/app.py) only hand batches of raw messages to a :class:`Processor`
and publish what it returns. Keeping the orchestration here keeps the agents thin and lets the
same code serve the worker, replays and tests.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.profile import Interaction, ItemDeltas, Order, ProfileParams, UserRecord
from models.recommend import Recommendation, UserCandidates, rank_batch
from models.serving import AlsScorer, PublishedModel
from shoppulse.errors import InvalidEvent, ShopPulseError, StoreError
from shoppulse.settings import Settings
from stream.churn import BatchHistories, ChurnService, changes_history
from stream.events import CatalogIn, decode_catalog, decode_click, decode_order
from stream.keys import Topics
from stream.model_store import ModelStore
from stream.privacy import pseudonymise_events
from stream.store import LoadedBatch, RedisStore, SimilarityParams

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
MODEL_VERSION = "online"  # the streaming item-kNN + popularity blend; ALS versions replace it
TOP_CATEGORIES = 3
MAX_COMMIT_ATTEMPTS = 8
MAX_REFRESH_ATTEMPTS = 3  # the last writes whatever the model: lists are never dropped
_PREVIEW_BYTES = 4096
DEAD_LETTER_KEPT_BYTES = 512 * 1024  # with base64 and the rest, well inside Kafka's 1 MB


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One Kafka message as received, before decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class BatchOutcome:
    """What a batch produced: documents to publish, and counts for metrics and logs."""

    recommendations: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # churn alerts (stream/churn.py)
    applied: int = 0
    duplicates: int = 0

    def merge(self, other: BatchOutcome) -> None:
        self.recommendations += other.recommendations
        self.dead_letters += other.dead_letters
        self.alerts += other.alerts
        self.applied += other.applied
        self.duplicates += other.duplicates


@dataclass(slots=True)
class AppliedBatch:
    """A batch whose events are stored: what it produced so far, and the records of its users
    as committed (with the batch's latest event time), for the refresh."""

    outcome: BatchOutcome
    records: list[UserRecord] = field(default_factory=list)
    clock: float = 0.0

    def merge(self, other: AppliedBatch) -> None:
        """Add a later part of the same batch (events isolated one by one after a failure):
        a user's latest record wins."""
        self.outcome.merge(other.outcome)
        latest = {record.user_id: record for record in [*self.records, *other.records]}
        self.records = list(latest.values())
        self.clock = max(self.clock, other.clock)


def dead_letter(event: RawEvent, reason: str) -> dict[str, Any]:
    """The dead-letter document: where the event came from, why it failed, its exact bytes.

    Bytes past ``DEAD_LETTER_KEPT_BYTES`` are cut (``original_truncated``, with the size in
    ``original_bytes``): base64 makes a value a third bigger, so a bad event near Kafka's
    message limit could otherwise never be dead-lettered at all."""
    kept = event.value[:DEAD_LETTER_KEPT_BYTES]
    try:
        text: str | None = kept[:_PREVIEW_BYTES].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "source_topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": None if event.key is None else event.key[:_PREVIEW_BYTES].decode("utf-8", "replace"),
        "reason": reason,
        "original_base64": base64.b64encode(kept).decode("ascii"),
        "original_bytes": len(event.value),
        "original_truncated": len(kept) < len(event.value),
        "original_text": text,
        "dead_at": time.time(),
    }


def profile_params(settings: Settings) -> ProfileParams:
    return ProfileParams(
        half_life=settings.half_life_days * SECONDS_PER_DAY,
        recent_cap=settings.interactions_cap,
        display_cap=settings.recent_items_cap,
        purchased_cap=settings.purchased_cap,
        dedupe_cap=settings.dedupe_cap,
        affinity_cap=settings.category_affinity_cap,
        interaction_cap=settings.interaction_cap,
        cooc_window=settings.cooc_window,
        event_weights=dict(settings.event_weights),
    )


def similarity_params(settings: Settings) -> SimilarityParams:
    return SimilarityParams(
        cooc_cap=settings.cooc_cap,
        k=settings.neighbours_k,
        shrinkage=settings.similarity_shrinkage,
        popularity_half_life=settings.popularity_half_life_days * SECONDS_PER_DAY,
    )


UserEvent = Interaction | Order


class Processor:
    """Applies batches of events to Redis and recomputes the affected recommendations."""

    def __init__(
        self,
        store: RedisStore,
        settings: Settings,
        models: ModelStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.models = models
        self.scorer: AlsScorer | None = None
        self.refused_models: set[str] = set()  # versions that failed to decode
        self.settings = settings
        self.topics = Topics(settings.namespace)
        self.profile_params = profile_params(settings)
        self.similarity_params = similarity_params(settings)
        self.wall_clock = wall_clock
        self.churn = ChurnService(store, settings)

    # -- user events (clicks and orders) ------------------------------------------------------
    def decode_user_events(
        self, raw_events: Sequence[RawEvent], outcome: BatchOutcome
    ) -> list[UserEvent]:
        events: list[UserEvent] = []
        for raw in raw_events:
            try:
                if raw.topic == self.topics.orders:
                    events.append(decode_order(raw.value))
                elif raw.topic == self.topics.clicks:
                    events.append(decode_click(raw.value))
                else:
                    raise InvalidEvent(f"unexpected topic {raw.topic!r}")
            except InvalidEvent as exc:
                outcome.dead_letters.append(dead_letter(raw, str(exc)))
        return pseudonymise_events(events, self.settings.pseudonymise_key)

    async def process_user_events(
        self, raw_events: Sequence[RawEvent], refresh: bool = True
    ) -> BatchOutcome:
        """Apply a batch and (unless ``refresh`` is False: evaluation baselines only) recompute
        its users' recommendations."""
        applied = await self.apply_user_events(raw_events)
        if refresh:
            await self.refresh_applied(applied)
        return applied.outcome

    async def apply_user_events(self, raw_events: Sequence[RawEvent]) -> AppliedBatch:
        """The first half of a batch: decode, store and score its events. The agent runs it
        for the next batch while :meth:`refresh_applied` finishes the previous
        one, so the worker computes while Redis works."""
        outcome = BatchOutcome()
        events = self.decode_user_events(raw_events, outcome)
        if not events:
            return AppliedBatch(outcome)
        users = list(dict.fromkeys(event.user_id for event in events))
        items = sorted(_items_of(events))
        # One read gives the records and what used to take three more round trips (the two
        # served versions, the clock), each of which could wait behind the previous batch's
        # refresh script in Redis.
        loaded = await self.store.load_batch(users, items)
        await self.follow_model_version(loaded.als_version)
        churn_model_changed = await self.churn.follow_version(loaded.churn_version)
        records, stored_clock = await self._apply(events, users, items, loaded, outcome)
        clock = max(event.ts for event in events)
        # Silence: as the service's clock crosses a UTC day (or a new churn model is live),
        # every customer is re-scored, by the one worker that claims it. The clock as read
        # with the batch: the commit raises it to this batch's clock at most, which `max` adds.
        now = max(clock, stored_clock if stored_clock is not None else clock)
        outcome.alerts += await self.churn.after_batch(now, churn_model_changed)
        return AppliedBatch(outcome, list(records.values()), clock)

    async def refresh_applied(self, applied: AppliedBatch) -> None:
        """The second half: recompute the recommendations of every user of the batch, into
        ``applied.outcome.recommendations``. Duplicates-only users are refreshed too: if a
        previous attempt stored the events but died before the refresh, this one catches up."""
        if applied.records:
            applied.outcome.recommendations = await self.refresh_recommendations(
                applied.records, applied.clock
            )

    async def _apply(
        self,
        events: list[UserEvent],
        users: list[str],
        items: list[str],
        loaded: LoadedBatch,
        outcome: BatchOutcome,
    ) -> tuple[dict[str, UserRecord], float | None]:
        """Apply events to the records read (``loaded``) and commit; re-read and redo on a
        conflict.

        Returns the records of all the batch's users as committed, and the clock as read."""
        clock = max(event.ts for event in events)
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            if attempt:
                loaded = await self.store.load_batch(users, items)
            records, categories = loaded.records, loaded.categories
            deltas = ItemDeltas()
            histories = BatchHistories(self.churn.config.caps)
            applied, changed_users = 0, set[str]()
            for event in events:
                record = records[event.user_id]
                for_churn = changes_history(record, event)
                if self._apply_one(record, event, categories, deltas):
                    applied += 1
                    changed_users.add(event.user_id)
                    if for_churn:
                        histories.record(record, event)
            histories.write_back(records)
            changed = [records[u] for u in users if u in changed_users]
            counts = (applied, len(events) - applied)
            scores = self.churn.score(changed, max(clock, self.churn.clock))
            stale = await self.store.commit(
                changed,
                deltas,
                clock,
                self.similarity_params,
                counts,
                scores.risks,
                scores.alerts,
            )
            if not stale:
                outcome.applied += applied
                outcome.duplicates += len(events) - applied
                outcome.alerts += scores.alerts
                return records, loaded.clock
            log.info("version conflict for %d users; re-reading", len(stale))
        raise StoreError(f"could not commit a batch after {MAX_COMMIT_ATTEMPTS} attempts")

    def _apply_one(
        self,
        record: UserRecord,
        event: UserEvent,
        categories: dict[str, str | None],
        deltas: ItemDeltas,
    ) -> bool:
        if isinstance(event, Order):
            return record.apply_order(event, categories, self.profile_params, deltas)
        category = categories.get(event.item_id)
        return record.apply_interaction(event, category, self.profile_params, deltas)

    # -- models -------------------------------------------------------------------------------
    async def follow_model(self) -> None:
        """Switch to the published ALS version if it changed (one GET; cheap per batch)."""
        if self.models is None:
            return
        await self.follow_model_version(await self.models.current_version())

    async def follow_model_version(self, version: str | None) -> None:
        """Switch to ALS ``version`` (the current one, as read) unless already serving it."""
        if self.models is None:
            return
        if version is None or version in self.refused_models:
            return
        if self.scorer is not None and self.scorer.version == version:
            return
        try:
            model = await self.models.load(version)
        except ShopPulseError as exc:
            # Whoever wrote it, a broken version must not stop the stream: keep serving the
            # model in hand and do not try this version again.
            self.refused_models.add(version)
            log.error("refusing model %s (%s); still serving %s", version, exc, self.model_version)
            return
        if model is not None:
            self.use_model(model)
            log.info("now serving model %s", version)

    def use_model(self, model: PublishedModel) -> None:
        self.scorer = AlsScorer(model)

    @property
    def model_version(self) -> str:
        return self.scorer.version if self.scorer is not None else MODEL_VERSION

    def als_candidates(
        self,
        records: Sequence[UserRecord],
        clock: float,
        vectors: dict[str, NDArray[np.floating]] | None = None,
    ) -> dict[str, dict[str, float]]:
        """ALS scores per user: given vectors (right after training) or folded in from the
        user's current interactions, so new events count at once."""
        scorer = self.scorer
        if scorer is None:
            return {}
        given = vectors or {}
        users, rows = [], []
        for record in records:
            vector = given.get(record.user_id)
            if vector is None:
                vector = scorer.user_vector(record.recent_items(), clock)
            if vector is not None:
                users.append(record.user_id)
                rows.append(vector)
        if not rows:
            return {}
        # Room for the user's own items, which the blend filters out afterwards.
        n = self.settings.recs_count * 2 + self.profile_params.recent_cap
        return dict(zip(users, scorer.top_items_batch(np.vstack(rows), n), strict=True))

    # -- recommendations ----------------------------------------------------------------------
    async def refresh_recommendations(
        self,
        records: Sequence[UserRecord],
        clock: float,
        vectors: dict[str, NDArray[np.floating]] | None = None,
        versions: Mapping[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Recompute, store and return the recommendation documents of these users.

        Lists are written only if the model they were computed with is still the current one
        (else the new one is followed and they are recomputed: a retrain's fresh lists are
        never overwritten by older ones), and, for users in ``versions``, only if their state
        is still that version (a retrain never overwrites a list a newer batch wrote)."""
        documents: list[dict[str, Any]] = []
        for attempt in range(MAX_REFRESH_ATTEMPTS):
            documents = await self._rank(records, clock, vectors)
            last = attempt == MAX_REFRESH_ATTEMPTS - 1
            accept = None if last else self._acceptable_models()
            current, skipped = await self.store.write_recommendations(documents, accept, versions)
            if current:
                return [d for d in documents if d["user_id"] not in skipped]
            if self.models is None:  # cannot follow (a retrain's own processor): the newer
                return []  # model's refresh writes these users' lists
            await self.follow_model()
        return documents

    def _acceptable_models(self) -> list[str] | None:
        """The current ALS versions under which this processor's lists may be written: the
        one it serves ("" for none) and versions it refused (it cannot serve those)."""
        if self.models is None and self.scorer is None:
            return None
        serving = self.scorer.version if self.scorer is not None else ""
        return [serving, *sorted(self.refused_models)]

    async def _rank(
        self,
        records: Sequence[UserRecord],
        clock: float,
        vectors: dict[str, NDArray[np.floating]] | None,
    ) -> list[dict[str, Any]]:
        if not records:
            return []
        window = self.profile_params.cooc_window
        half_life = self.profile_params.half_life
        recent = {r.user_id: r.recent_items(window) for r in records}
        favourites = {r.user_id: r.top_categories(TOP_CATEGORIES, half_life) for r in records}
        als = self.als_candidates(records, clock, vectors)
        source_items = sorted({item for items in recent.values() for item, _, _ in items})
        categories = sorted({c for cats in favourites.values() for c, _ in cats})
        popular_n = max(100, 5 * self.settings.recs_count)
        als_items = sorted({item for scores in als.values() for item in scores})
        inputs = await self.store.recommendation_inputs(
            source_items, categories, popular_n, self.similarity_params.shrinkage, als_items
        )
        ranked = rank_batch(
            [
                UserCandidates(
                    recent[r.user_id],
                    favourites[r.user_id],
                    als.get(r.user_id, {}),
                    self._excluded(r),
                )
                for r in records
            ],
            inputs.neighbours,
            inputs.category_items,
            inputs.popularity,
            self.settings.blend_weights,
            self.settings.recs_count,
            half_life,
            unavailable=inputs.out_of_stock,
        )
        return [self._document(r, items, clock) for r, items in zip(records, ranked, strict=True)]

    def _excluded(self, record: UserRecord) -> set[str]:
        """Never recommended to this user: bought and (unless configured) recently seen. Out
        of stock items are excluded for everyone (``rank_batch``'s ``unavailable``)."""
        exclude = record.purchased()
        if not self.settings.recommend_seen:
            exclude |= record.recent_ids()
        return exclude

    def _document(
        self, record: UserRecord, ranked: Sequence[Recommendation], clock: float
    ) -> dict[str, Any]:
        return {
            "user_id": record.user_id,
            "items": [{"item_id": r.item_id, "score": r.score, "source": r.source} for r in ranked],
            "recommendation_id": uuid.uuid4().hex,
            "model_version": self.model_version,
            "as_of": clock,
            "generated_at": self.wall_clock(),
        }

    # -- catalog ------------------------------------------------------------------------------
    async def process_catalog(self, raw_events: Sequence[RawEvent]) -> BatchOutcome:
        outcome = BatchOutcome()
        items: list[CatalogIn] = []
        for raw in raw_events:
            try:
                items.append(decode_catalog(raw.value))
            except InvalidEvent as exc:
                outcome.dead_letters.append(dead_letter(raw, str(exc)))
        if items:
            outcome.applied = await self.store.upsert_catalog(items)
        return outcome


def _items_of(events: Sequence[UserEvent]) -> set[str]:
    items: set[str] = set()
    for event in events:
        if isinstance(event, Order):
            items.update(line.item_id for line in event.lines)
        else:
            items.add(event.item_id)
    return items
