"""Redis keys and Kafka topic names, byte for byte."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from stream.keys import Keys, Topics

KEYS = Keys("shop")

PER_ID: dict[str, Callable[[str], str]] = {
    "profile": KEYS.profile,
    "recs": KEYS.recs,
    "user_state": KEYS.user_state,
    "item": KEYS.item,
    "cooccurrence": KEYS.cooccurrence,
    "neighbours": KEYS.neighbours,
    "neighbour_counts": KEYS.neighbour_counts,
    "category_popularity": KEYS.category_popularity,
}
SINGLETONS: dict[str, Callable[[], str]] = {
    "item_norms": KEYS.item_norms,
    "popularity": KEYS.popularity,
    "out_of_stock": KEYS.out_of_stock,
    "clock": KEYS.clock,
    "stats": KEYS.stats,
    "users": KEYS.users,
    "risk": KEYS.risk,
    "alerts": KEYS.alerts,
    "alert_outbox": KEYS.alert_outbox,
}


def test_per_id_keys_byte_for_byte() -> None:
    assert KEYS.profile("u1") == "shop:profile:u1"
    assert KEYS.recs("u1") == "shop:recs:u1"
    assert KEYS.user_state("u1") == "shop:ustate:u1"
    assert KEYS.item("i9") == "shop:item:i9"
    assert KEYS.cooccurrence("i9") == "shop:cooc:i9"
    assert KEYS.neighbours("i9") == "shop:sim:i9"
    assert KEYS.neighbour_counts("i9") == "shop:nbc:i9"
    assert KEYS.category_popularity("shoes") == "shop:catpop:shoes"


def test_singleton_keys_byte_for_byte() -> None:
    assert KEYS.item_norms() == "shop:norms"
    assert KEYS.popularity() == "shop:popularity"
    assert KEYS.out_of_stock() == "shop:outofstock"
    assert KEYS.clock() == "shop:clock"
    assert KEYS.stats() == "shop:stats"
    assert KEYS.users() == "shop:users"
    assert KEYS.risk() == "shop:risk"
    assert KEYS.alerts() == "shop:alerts"
    assert KEYS.alert_outbox() == "shop:outbox"


def test_namespace_prefixes_every_key() -> None:
    other = Keys("tenant-b")
    assert other.profile("u1") == "tenant-b:profile:u1"
    assert other.users() == "tenant-b:users"


def test_ids_are_used_verbatim() -> None:
    assert KEYS.profile("a:recs:b") == "shop:profile:a:recs:b"
    assert KEYS.recs("{tag}x") == "shop:recs:{tag}x"
    assert KEYS.item("  ") == "shop:item:  "
    assert KEYS.profile("ü/é") == "shop:profile:ü/é"


def test_topics_byte_for_byte() -> None:
    topics = Topics("shop")
    assert topics.clicks == "shop.clicks"
    assert topics.orders == "shop.orders"
    assert topics.catalog == "shop.catalog"
    assert topics.recommendations == "shop.recommendations"
    assert topics.churn_alerts == "shop.alerts.churn"
    assert topics.deadletter == "shop.deadletter"


@pytest.mark.parametrize("kind", sorted(PER_ID))
def test_empty_id_raises(kind: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        PER_ID[kind]("")


def test_a_crafted_user_id_cannot_reach_another_kind() -> None:
    assert KEYS.profile("x:recs:y") != KEYS.recs("y")
    assert KEYS.recs("x:profile:y") != KEYS.profile("y")
    assert KEYS.profile("recs:y") != KEYS.recs("y")
    assert KEYS.user_state("x:profile:y") != KEYS.profile("y")
    assert KEYS.profile("{shop}:recs:y") != KEYS.recs("y")


def test_all_key_kinds_are_distinct_for_the_same_id() -> None:
    keys = [build("same") for build in PER_ID.values()] + [b() for b in SINGLETONS.values()]
    assert len(set(keys)) == len(keys)


ids = st.text(alphabet="ab:{}", min_size=1, max_size=12)


@given(ids, ids)
def test_keys_of_different_kinds_never_collide(first: str, second: str) -> None:
    for (kind_a, build_a), (kind_b, build_b) in itertools.permutations(PER_ID.items(), 2):
        assert build_a(first) != build_b(second), (kind_a, first, kind_b, second)
    for build in PER_ID.values():
        for singleton in SINGLETONS.values():
            assert build(first) != singleton()


@given(ids, ids)
def test_same_kind_keys_are_equal_only_for_equal_ids(first: str, second: str) -> None:
    for build in PER_ID.values():
        assert (build(first) == build(second)) == (first == second)


# -- Redis Cluster: the namespace as hash tag -----------------------------------------------------
TAGGED = Keys("shop", hash_tag=True)


def _all_keys(keys: Keys, some_id: str) -> list[str]:
    per_id = [getattr(keys, kind)(some_id) for kind in PER_ID]
    singletons = [getattr(keys, kind)() for kind in SINGLETONS]
    models = [keys.model(some_id), keys.current_model(some_id), keys.rescore_marker(some_id)]
    return per_id + singletons + models + [keys.models(), keys.churn_models()]


def test_hash_tagged_keys_byte_for_byte() -> None:
    assert TAGGED.profile("u1") == "{shop}:profile:u1"
    assert TAGGED.recs("u1") == "{shop}:recs:u1"
    assert TAGGED.users() == "{shop}:users"
    assert TAGGED.prefix_of(TAGGED.neighbours) == "{shop}:sim:"
    assert TAGGED.pattern() == "{shop}:*"
    assert KEYS.pattern() == "shop:*"


def test_keys_follow_the_settings() -> None:
    from shoppulse.settings import Settings

    assert Keys.of(Settings(namespace="a", redis_cluster=True)) == Keys("a", hash_tag=True)
    assert Keys.of(Settings(namespace="a")).profile("u") == "a:profile:u"


@given(st.text(alphabet="ab:{}\r\n ", min_size=1, max_size=16))
def test_every_key_of_a_namespace_is_in_one_cluster_slot(some_id: str) -> None:
    # Whatever braces an id holds: the key's first {...} is the namespace.
    slot = key_slot(b"shop")
    assert {key_slot(key.encode()) for key in _all_keys(TAGGED, some_id)} == {slot}


def test_untagged_keys_spread_over_slots() -> None:
    # What the tag is for: without it a batch's keys land in many slots (and cluster nodes).
    assert len({key_slot(key.encode()) for key in _all_keys(KEYS, "u1")}) > 10
