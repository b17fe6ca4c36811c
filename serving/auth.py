"""Bearer API keys for the /v1 routes, trusted back ends, and key pseudonyms.

Keys: ``RLHF_API_KEYS`` (ordinary callers) and ``RLHF_TRUSTED_API_KEYS`` (trusted back ends:
also accepted, and the only keys whose feedback may name the rater with a ``user`` field).
When both are empty the API is *open* (development, loopback only: ``rlhf serve`` refuses to
listen elsewhere without keys unless ``--insecure``); every caller is then treated as trusted.

Pseudonyms: a key is never stored or logged; its pseudonym (keyed HMAC with a sub-key of the
deployment's HMAC key) is the caller's *principal*: it owns the answers it produced, is the
rater of last resort. Its *account* (``key:account`` entries, common/identity.py; a key
without one is its own account) names its quotas and is recorded with its answers, so the
worker caps an account's share of the training votes across all its keys.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

from fastapi import Request

from common.identity import check_key_lists, key_identities, key_pseudonym
from serving.errors import ApiError


def is_open(settings) -> bool:
    """No key configured at all: the development mode (loopback only by default)."""
    return not check_key_lists(settings.api_keys, settings.trusted_api_keys)  # cached parse


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _digest(token: str) -> bytes:
    # bytes via surrogateescape: any header value hashes (a non-ASCII token is a 401, not a 500)
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class Caller:
    principal: str | None
    """Pseudonym of the key presented (None: no key, or open mode without a bearer)."""
    has_key: bool
    """A valid key was presented (always False for a feedback_token-only caller)."""
    trusted: bool
    """May name the rater with `user` (trusted back-end key, or open mode)."""
    open: bool
    account: str | None = None
    """Pseudonym of the key's account (= the principal for a key without an account)."""


def _missing_key(extra: str = "") -> ApiError:
    return ApiError(401, f"missing API key: send 'Authorization: Bearer <key>'{extra}",
                    "invalid_request_error", "missing_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, key_optional: bool = False) -> Caller | None:
    """The caller of a /v1 request. Raises 401 for a wrong key, and for a missing key unless
    `key_optional` (then returns None: the route authenticates by feedback_token instead)."""
    settings = request.app.state.settings
    token = bearer(request.headers.get("authorization"))
    if is_open(settings):
        principal = key_pseudonym(token, settings) if token else None
        return Caller(principal, token is not None, True, True, principal)
    if token is None:
        if key_optional:
            return None
        raise _missing_key()
    caller = _callers(settings.api_keys, settings.trusted_api_keys,
                      settings._hmac_key_bytes).get(_digest(token))
    if caller is None:
        raise ApiError(401, "invalid API key", "invalid_request_error", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return caller


@lru_cache(maxsize=16)
def _callers(api_keys: str, trusted_api_keys: str, hmac_key: bytes) -> MappingProxyType:
    """SHA-256 of every configured key -> its Caller, built once per key configuration.
    Why: the feedback routes authenticate thousands of requests per second, and per request
    this cost four HMACs (the key's pseudonyms) and two parses of the key lists (not measured
    alone: with the metrics change, +1-5% votes/s in one side-by-side run, within noise). Looked up by the presented token's digest: the lookup's timing depends on the digest,
    not on how many leading characters of a real key were guessed (what the constant-time
    comparison this replaces protected against)."""
    return MappingProxyType({
        _digest(k): Caller(principal, True, trusted, False, account)
        for k, (principal, account, trusted) in key_identities(api_keys, trusted_api_keys,
                                                                hmac_key).items()})


async def require_api_key(request: Request) -> str | None:
    """FastAPI dependency of the OpenAI routes: 401 unless a configured key is presented.
    Returns the key's pseudonym (None when the API is open and no bearer is sent); the
    caller is also left in ``request.state.caller``."""
    caller = authenticate(request)
    request.state.caller = caller
    return caller.principal


def missing_key_or_token() -> ApiError:
    return _missing_key(" or the answer's feedback_token")
