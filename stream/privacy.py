"""Pseudonymisation of user ids: a keyed hash applied as events are decoded, before anything
is stored in Redis or published, for shops that must not keep raw customer ids.

The shop computes the same function to find a customer's state (``shoppulse pseudonym USER``
prints it; ``shoppulse recs USER`` and ``shoppulse profile USER`` apply it themselves).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from models.profile import Interaction, Order

# 128 bits of HMAC-SHA256: collisions are out of reach for any number of customers, and the
# key is short enough to read.
PSEUDONYM_HEX_CHARS = 32

UserEvent = Interaction | Order


def pseudonym(user_id: str, key: SecretStr | str) -> str:
    """``hex(HMAC-SHA256(key, user_id))[:32]``: the same id and key always give the same
    pseudonym; without the key, pseudonyms cannot be linked back to ids."""
    secret = key.get_secret_value() if isinstance(key, SecretStr) else key
    digest = hmac.new(secret.encode("utf-8"), user_id.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:PSEUDONYM_HEX_CHARS]


def user_key(user_id: str, key: SecretStr | None) -> str:
    """The id under which a user's state is stored: the pseudonym if a key is set."""
    return pseudonym(user_id, key) if key is not None else user_id


def pseudonymise_events(events: Sequence[UserEvent], key: SecretStr | None) -> list[UserEvent]:
    """The events with their user ids replaced (unchanged when no key is set)."""
    if key is None:
        return list(events)
    return [dataclasses.replace(e, user_id=pseudonym(e.user_id, key)) for e in events]
