"""Pseudonyms of API keys and the deployment's derived HMAC sub-keys: shared by the servers (who
is calling, who may rate what) and the workers (capping each key's share of the training votes),
so both compute the same principal from the same settings.
"""
from __future__ import annotations

import hashlib
import hmac


def sub_key(settings, purpose: str) -> bytes:
    """A key derived from the deployment's HMAC key for one purpose (pseudonyms of keys,
    feedback tokens), so one use can never be replayed as another."""
    return hmac.new(settings._hmac_key_bytes, b"rlhf-live/" + purpose.encode(),
                    hashlib.sha256).digest()


def key_pseudonym(key: str, settings) -> str:
    # Not the key itself: principals end up in the training data and in logs. Keyed, so a
    # leaked pseudonym cannot be checked against guessed keys offline.
    digest = hmac.new(sub_key(settings, "api-key-pseudonym"), key.encode(),
                      hashlib.sha256).hexdigest()
    return "k_" + digest[:16]


def split_keys(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def trusted_keys(settings) -> list[str]:
    """RLHF_TRUSTED_API_KEYS: trusted back ends (may name the rater; exempt from the key cap)."""
    return split_keys(settings.trusted_api_keys)
