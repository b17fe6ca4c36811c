"""Event and record models stored in Redis; shared by the server (writer) and worker (reader)."""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field


class StoredAnswer(BaseModel):
    """One returned choice, as the training side needs it."""

    response_id: str
    request_id: str
    model_version: str
    kind: Literal["chat", "completion"]
    messages: list[dict[str, Any]] | None = None
    """Chat requests: the messages as sent (before the chat template)."""
    prompt: str | None = None
    """Completion requests: the raw prompt."""
    prompt_key: str
    """Hash of the prompt/messages: two answers answer the same prompt iff keys are equal."""
    text: str
    finish_reason: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)
    user: str | None = None
    """Pseudonymised end user (keyed HMAC), never the raw id."""
    created: float = Field(default_factory=time.time)
    completion_tokens: int = 0


class FeedbackEvent(BaseModel):
    """One entry of the feedback stream. Thumbs and comparisons share one stream so their
    relative order is kept; the latest vote of a rater on a target wins."""

    event_id: str
    kind: Literal["thumb", "comparison"]
    rater: str
    """Pseudonymised rater (user field, else the API key's pseudonym, else 'anonymous')."""
    target: str
    """response id (thumb) or 'a|b' (comparison, ids in the order given)."""
    response_id: str | None = None
    rating: Literal["up", "down"] | None = None
    response_ids: list[str] | None = None
    choice: Literal["a", "b", "tie", "both_bad"] | None = None
    comment: str | None = None
    created: float = Field(default_factory=time.time)

    def to_stream_fields(self) -> dict[str, str]:
        return {"event": self.model_dump_json()}

    @classmethod
    def from_stream_fields(cls, fields: dict) -> "FeedbackEvent":
        raw = fields.get("event") or fields.get(b"event")
        return cls.model_validate_json(raw)
