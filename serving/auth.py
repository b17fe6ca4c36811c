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

import hmac
from dataclasses import dataclass

from fastapi import Request

from common.identity import key_account, key_pseudonym, trusted_keys
from serving.errors import ApiError


def all_keys(settings) -> list[str]:
    return settings.api_key_list + trusted_keys(settings)


def is_open(settings) -> bool:
    """No key configured at all: the development mode (loopback only by default)."""
    return not all_keys(settings)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _matches(token: str, keys: list[str]) -> bool:
    # bytes, not str: compare_digest refuses non-ASCII str (a 500); every key is compared
    # (constant time per key) so timing does not reveal which one failed
    given = token.encode("utf-8", "surrogateescape")
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k.encode("utf-8", "surrogateescape"))
    return ok


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
    trusted = _matches(token, trusted_keys(settings))
    if not (trusted or _matches(token, settings.api_key_list)):
        raise ApiError(401, "invalid API key", "invalid_request_error", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    # a dict lookup on the key only after it matched: it reveals nothing the match did not
    return Caller(key_pseudonym(token, settings), True, trusted, False,
                  key_account(token, settings))


async def require_api_key(request: Request) -> str | None:
    """FastAPI dependency of the OpenAI routes: 401 unless a configured key is presented.
    Returns the key's pseudonym (None when the API is open and no bearer is sent); the
    caller is also left in ``request.state.caller``."""
    caller = authenticate(request)
    request.state.caller = caller
    return caller.principal


def missing_key_or_token() -> ApiError:
    return _missing_key(" or the answer's feedback_token")
