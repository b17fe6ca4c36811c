"""Signed, short-lived ``feedback_token``: who may rate which answers, and as whom.

Every choice of a completion response carries one. It binds the request's response ids (the
request id and ``n``: choice i has ``<id>`` for i = 0 and ``<id>_<i>`` otherwise), the principal
of the key that asked (pseudonym), the end user's pseudonym (the request's ``user``) and an
expiry, under an HMAC with a sub-key of the deployment's HMAC key. Whoever holds it (e.g. a
browser widget, without any API key) can rate those answers, and the rater is the one in the
token, never a body field.

Format: ``ft1.<base64url(JSON claims)>.<base64url(HMAC-SHA256[:16])>``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from common.identity import sub_key
from serving.errors import ApiError

VERSION = "ft1"
MAX_LEN = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(settings, signed: str) -> str:
    mac = hmac.new(sub_key(settings, "feedback-token"), signed.encode(), hashlib.sha256)
    return _b64(mac.digest()[:16])


@dataclass(frozen=True)
class Claims:
    request_id: str
    n: int
    principal: str | None
    user: str | None
    expires: int

    def covers(self, response_id: str) -> bool:
        if response_id == self.request_id:
            return True
        head, sep, tail = response_id.rpartition("_")
        return (sep == "_" and head == self.request_id and tail.isdigit()
                and str(int(tail)) == tail and 1 <= int(tail) < self.n)

    @property
    def rater(self) -> str:
        """The end user if the answer had one, else the key that asked, else anonymous."""
        return self.user or self.principal or "anonymous"


def issue(settings, request_id: str, n: int, principal: str | None, user: str | None,
          now: float | None = None) -> str:
    claims = {"q": request_id, "n": n, "p": principal, "u": user,
              "e": int((now if now is not None else time.time()) + settings.feedback_token_ttl_s)}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signed = f"{VERSION}.{payload}"
    return f"{signed}.{_sign(settings, signed)}"


def _invalid(why: str) -> ApiError:
    return ApiError(401, f"invalid feedback_token ({why})", "invalid_request_error",
                    "invalid_feedback_token", param="feedback_token")


def verify(settings, token: str, now: float | None = None) -> Claims:
    """The token's claims; 401 if it is malformed, forged or expired."""
    if not isinstance(token, str) or len(token) > MAX_LEN:
        raise _invalid("not a token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise _invalid("not a token")
    signed = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(settings, signed).encode(), parts[2].encode()):
        raise _invalid("bad signature")
    try:
        raw = json.loads(_unb64(parts[1]))
        claims = Claims(str(raw["q"]), int(raw["n"]), raw.get("p"), raw.get("u"), int(raw["e"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _invalid("unreadable claims") from None
    if claims.expires < (now if now is not None else time.time()):
        raise ApiError(401, "feedback_token expired: rate within "
                       f"{settings.feedback_token_ttl_s} s of the answer, or through a "
                       "back end with an API key", "invalid_request_error",
                       "feedback_token_expired", param="feedback_token")
    return claims
