"""Scale-out: two workers in one consumer group over a four-partition topic end with the same
state as one worker given the same events.

What must be equal, and why it can be: a user's events are keyed by user, so one partition and
one worker see them in order, which makes profiles the same whoever runs them (up to the last
bits: a user's clicks and orders arrive on two topics, and event time makes how a worker
interleaves them matter only in rounding). Per-item counts (co-occurrence, norms, popularity)
are sums, equal up to summation order. Similarities are maintained incrementally with the
norms as they were when a pair was last touched, so they depend on how batches interleave; the
final recommendations, computed from the final state in both namespaces, must recommend the
same items (measured here: 96% of items in common on average, at least 85% for every user).
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable

import pytest

from shoppulse.bench import LoadSpec, build_world, catalog_documents, generate_user_events
from tests.integration.compare import (
    assert_close,
    assert_same_profiles,
    final_recommendations,
    item_counts,
    publish_one_topic_at_a_time,
)
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

EVENTS = 4_000
SPEC = LoadSpec(items=400, users=300, categories=8, seed=11)


async def test_two_workers_end_with_the_state_of_one(
    make_stack: Callable[..., Awaitable[Stack]],
) -> None:
    world = build_world(SPEC)
    catalog = catalog_documents(world)
    events = generate_user_events(world, EVENTS, seed=5, start_ts=SPEC.start_ts, prefix="s")

    # Co-occurrence counters capped above the catalog size: which counter a full item evicts
    # depends on how other users' batches interleave, by design (bounded state, README).
    settings = {"batch_size": 100, "cooc_cap": 2 * SPEC.items}
    one = await make_stack(workers=1, partitions=4, **settings)
    two = await make_stack(workers=2, partitions=4, **settings)
    await publish_one_topic_at_a_time([one, two], catalog, events, timeout=180)
    assert await _stable_members(two) == 2, "both workers must be members of the group"

    assert await one.events_seen() == await two.events_seen() == EVENTS
    users = sorted({d["user_id"] for _, d in events})
    await assert_same_profiles(one, two, users)
    assert_close(await item_counts(one), await item_counts(two))

    first = await final_recommendations(one, users)
    second = await final_recommendations(two, users)
    assert all(first[u] for u in users), "every user gets recommendations"
    # Similarities carry the norms of when each pair was last touched (README, "Guarantees"),
    # so lists differ where neighbours' scores are close; the items recommended must agree.
    overlap = [len(set(first[u]) & set(second[u])) / len(first[u]) for u in users]
    assert statistics.mean(overlap) >= 0.9, statistics.mean(overlap)
    assert min(overlap) >= 0.7, min(overlap)


async def _stable_members(stack: Stack) -> int:
    """Members of the worker group, once the group is stable (the broker here, Tansu, leaves
    the assignments out; the round-robin assignor gives each of n members a share of the
    partitions)."""
    state, members = await stack.consumer_group()
    assert state == "Stable", state
    return members
