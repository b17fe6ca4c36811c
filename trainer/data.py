"""The trainer's input records and their JSONL files (one record type per file).

The worker writes these from Redis; the trainer only ever sees these dataclasses.
`messages` is an OpenAI-style chat prompt: ``[{"role": "user", "content": "..."}, ...]``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, TypeVar, Union


@dataclass
class PreferencePair:
    """A human comparison: `chosen` was preferred over `rejected` for the same prompt."""
    messages: list[dict]
    chosen: str
    rejected: str
    weight: float = 1.0   # scales this pair's loss (e.g. trust in the rater)
    margin: float = 0.0   # required reward gap: loss is -log σ(r_c - r_r - margin)
    # False = the answer was cut off by max_tokens (finish_reason "length"): the trainers then
    # neither close its turn (RM) nor append EOS (DPO/KTO), so a truncated reply is never
    # taught as a finished one and the RM can see that it was cut.
    chosen_finished: bool = True
    rejected_finished: bool = True


@dataclass
class RatedAnswer:
    """A thumbs-up/down on a single answer (no partner to compare with)."""
    messages: list[dict]
    answer: str
    label: str            # "up" | "down"
    weight: float = 1.0
    finished: bool = True  # False = cut off by max_tokens (see PreferencePair)

    def __post_init__(self) -> None:
        if self.label not in ("up", "down"):
            raise ValueError(f"RatedAnswer.label must be 'up' or 'down', got {self.label!r}")


@dataclass
class PromptItem:
    """A prompt to roll out during PPO."""
    messages: list[dict]


# Prompts may be given as PromptItem or directly as a messages list.
PromptLike = Union[PromptItem, list]
T = TypeVar("T", PreferencePair, RatedAnswer, PromptItem)


def prompt_messages(prompt: PromptLike) -> list[dict]:
    """Messages of a PromptItem, or the list itself."""
    return prompt.messages if isinstance(prompt, PromptItem) else list(prompt)


def user_text(messages: list[dict]) -> str:
    """The last user message of a conversation (what a prompt is judged and compared by)."""
    return next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")


def write_jsonl(path: str | Path, items: Iterable[PreferencePair | RatedAnswer | PromptItem]) -> Path:
    """Write dataclass records, one JSON object per line (atomic: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _read(path: str | Path, cls: type[T]) -> list[T]:
    known = {f.name for f in fields(cls)}
    items = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            unknown = set(record) - known
            if unknown:  # a pair file passed as rated data etc. should fail loudly
                raise ValueError(f"{path}:{lineno}: unexpected fields {sorted(unknown)} for {cls.__name__}")
            items.append(cls(**record))
    return items


def read_pairs(path: str | Path) -> list[PreferencePair]:
    return _read(path, PreferencePair)


def read_rated(path: str | Path) -> list[RatedAnswer]:
    return _read(path, RatedAnswer)


def read_prompts(path: str | Path) -> list[PromptItem]:
    return _read(path, PromptItem)
