"""Bearer API keys for the /v1 routes.

When ``RLHF_API_KEYS`` is empty the API is open (development); otherwise every /v1 call needs
``Authorization: Bearer <one of the keys>``. The dependency returns a *pseudonym* of the key,
used as the rater identity when a feedback call names no end user.
"""
from __future__ import annotations

import hashlib
import secrets

from fastapi import Request

from serving.errors import ApiError


def key_pseudonym(key: str) -> str:
    # Not the key itself: rater ids end up in the training data and in logs.
    return "k_" + hashlib.sha256(key.encode()).hexdigest()[:16]


async def require_api_key(request: Request) -> str | None:
    """FastAPI dependency: 401 unless a configured key is presented. Returns the key's
    pseudonym (or None when the API is open)."""
    keys: list[str] = request.app.state.settings.api_key_list
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not keys:
        return key_pseudonym(token) if scheme.lower() == "bearer" and token else None
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       "invalid_request_error", "missing_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    # compare against every key (constant time per key) so timing does not reveal which failed
    ok = False
    for k in keys:
        ok |= secrets.compare_digest(token.encode(), k.encode())
    if not ok:
        raise ApiError(401, "invalid API key", "invalid_request_error", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return key_pseudonym(token)
