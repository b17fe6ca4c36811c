"""Surface features of an answer, for the embedding reward model (`RMConfig.embedding_surface`).

Why: a mean-pooled, L2-normalised sentence embedding keeps what an answer is *about* and loses
much of *how* it is written — whether it has a number or a name in it, exclamation marks,
contractions, a list, a question back to the user. Human raters react to exactly those (Chatbot
Arena's "style control" regresses its votes on markdown headers, lists and bold text beside length;
stylometry has used such counts for decades). Each feature below is cheap, bounded and documented,
and none is a length: they are shares, presences or counts capped at 3 (commas 6), so past a few
sentences a longer answer buys nothing through them (length has its own training-only covariate).
Which of them matter, and which way, is the Bradley–Terry head's to learn from the votes (with the
L2 chosen by prompt-grouped cross-validation): a taste indifferent to them gets weights near 0.

Plus an optional bag of words (`Vocabulary`): the words that occur in at least `min_df` of the
RM's own training answers (so a word the votes could not have weighed is never a feature),
present / absent per answer. It lets the head weigh vocabulary the encoder averages away
("glad", "however", "approximately").
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import torch

from common.degeneracy import content_stems, repeated_ngram_share, words

_SENTENCE = re.compile(r"[.!?]+(?:\s+|$)")
_EMOJI = re.compile(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]")
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.M)
_CONTRACTION = re.compile(r"\b\w+'(?:t|re|ll|ve|m|d|s)\b", re.I)


def _capped(count: int, cap: int = 3) -> float:
    """A count as a bounded cue: 0, 1/3, 2/3, 1 for 0, 1, 2, 3+."""
    return min(count, cap) / cap


def surface_features(prompt: str, answer: str) -> list[float]:
    """`SURFACE_NAMES`, in order, for one answer to `prompt`; every value in [0, 1]."""
    tokens = words(answer)
    n = max(1, len(tokens))
    asked = content_stems(prompt)
    said = content_stems(answer)
    sentences = [s for s in _SENTENCE.split(answer) if s.strip()]
    mid_sentence_caps = sum(w[:1].isupper() and w != "I" for s in sentences for w in words(s)[1:])
    return [
        len(asked & said) / len(asked) if asked else 1.0,     # prompt_coverage: lexical relevance
        float(bool(asked & said)) if asked else 1.0,          # prompt_overlap_any
        len(said - asked) / max(1, len(said)),                # new_content_share: adds beyond the question
        _capped(len(re.findall(r"\d+", answer))),             # numbers
        _capped(mid_sentence_caps),                           # names: capitalised words inside a sentence
        _capped(answer.count("!")),                           # exclamations
        _capped(answer.count("?")),                           # questions (back to the user)
        _capped(len(_CONTRACTION.findall(answer))),           # contractions ("it's", "don't")
        _capped(len(_EMOJI.findall(answer))),                 # emoji
        _capped(len(_LIST_LINE.findall(answer))),             # list items
        _capped(answer.count("**") // 2 + len(re.findall(r"^#+\s", answer, re.M))),  # markdown emphasis / headers
        _capped(answer.count(","), 6),                        # commas (clause-heavy prose)
        min(1.0, sum(map(len, tokens)) / n / 10),             # mean word length / 10 (register)
        min(1.0, repeated_ngram_share(tokens, 2) * 2),        # repeated bigrams (looping)
        float(bool(re.search(r"[.!?)\"']\s*$", answer))),     # ends like a finished sentence
        _capped(sum(t.lower() in ("i", "me", "my", "we", "our") for t in tokens)),  # first person
        _capped(sum(t.lower() in ("you", "your", "you're") for t in tokens)),       # second person
    ]


SURFACE_NAMES = ("prompt_coverage", "prompt_overlap_any", "new_content_share", "numbers", "names", "exclamations",
                 "questions", "contractions", "emoji", "list_items", "markdown", "commas", "mean_word_length",
                 "repeated_bigrams", "ends_sentence", "first_person", "second_person")


def surface_matrix(prompts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """(n, len(SURFACE_NAMES)) float tensor, one row per (prompt, answer)."""
    rows = [surface_features(p, a) for p, a in zip(prompts, answers)]
    return torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros(0, len(SURFACE_NAMES))


class Vocabulary:
    """Bag of words over the words in at least `min_df` training answers (lower-cased; the
    `max_words` most frequent). Features are presence (0/1) per word."""

    def __init__(self, words_: Sequence[str]):
        self.words = list(words_)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, answers: Sequence[str], min_df: int, max_words: int) -> "Vocabulary":
        df = Counter(w for a in answers for w in {t.lower() for t in words(a)})
        kept = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))[:max_words]
        return cls(kept)

    def matrix(self, answers: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(answers), len(self.words))
        for row, a in enumerate(answers):
            for t in {t.lower() for t in words(a)}:
                if t in self.index:
                    out[row, self.index[t]] = 1.0
        return out

