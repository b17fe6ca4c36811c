"""Degenerate answers, defined once: the gate, the demo report and the tests all call
`degenerate_reasons`. Pure Python, no model, so it is cheap enough to run on every gate answer.

An answer is degenerate when (each clause is a reason string; [] = healthy):
- empty: nothing but whitespace;
- far too short: fewer than `min_words` words, or, when the anchor's answer to the same prompt is
  given, fewer than `min_length_ratio` x its words (catches "Laughing." for a 50-word anchor while
  a 12-word concise answer passes);
- repetitive: one word is more than 60% of an 8+ word answer, or repeated word n-grams
  (n = `ngram`) make up more than `max_repeated_ngram_share` of all its n-grams
  ("la femme au roi, la femme au roi, la femme au roi");
- off the prompt: it shares no content word with the prompt *and* none with the anchor's answer
  (content word = 3+ letters, not a stop word, compared by `stem`: a plural ending dropped, then
  the first 5 letters, so "glacier" and "glaciers", "kite" and "kites" match). The anchor's answer stands in for the topic's vocabulary: "Paris" answers
  "What is the capital of France?" without repeating a word of it, but the anchor says "Paris" too.
  Only answers of 3+ words are judged on relevance (shorter ones fall to the length clause).
"""
from __future__ import annotations

import re
from collections import Counter

STOP_WORDS = frozenset("""
about above after again against also because been before being below between both could does doing
down during each even every from further have having here hers herself himself into itself just
more most much must myself only other ours ourselves over same should some such than that their
theirs them themselves then there these they this those through under until very what when where
which while whom with would your yours yourself yourselves will shall make made tell like know
please thing things really well want need give write explain something anything
the and for are but not you all any can had her was one our out has him his how its may now who why
did get got let put say she too use yes yet own off per via nor few see way i'm it's
don't that's what's here's there's let's you're you'll i'll i've can't won't isn't""".split())

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text or "")


def stem(word: str) -> str:
    """A cheap stemmer: lower-cased, a plural ending dropped ("stories" -> "story", "kites" ->
    "kite"; not "ss"), then the first 5 letters (tense endings drop: "learning" -> "learn"). The
    plural step matters for short words: cut to 5 letters alone, "kites" and "kite" differed, and
    "The kite is a marvel of aerodynamics..." was judged off the prompt "... about kites."."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w[:5]


def content_stems(text: str) -> set[str]:
    """The stems (`stem`) of the content words: 3+ letters, not a stop word. Why 3, not 4
    (session 19): topics are often three letters (sun, sea, tea, art, ice), and at 4+ the on-topic
    "The sun is a beautiful and powerful thing." was judged off "Explain the sun in simple terms."
    (the gate refused a candidate for it); the three-letter function words are stop words."""
    return {stem(w) for w in words(text) if len(w) >= 3 and w.lower() not in STOP_WORDS}


def repeated_ngram_share(tokens: list[str], n: int) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0 = no repetition)."""
    grams = [tuple(t.lower() for t in tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return sum(c - 1 for c in Counter(grams).values()) / len(grams)


NGRAM = 3                     # the repetition clause: word n-grams of this size ...
MAX_REPEATED_NGRAM_SHARE = 0.25  # ... may repeat in at most this share of the answer's n-grams


def is_looping(answer: str, ngram: int = NGRAM, max_repeated_ngram_share: float = MAX_REPEATED_NGRAM_SHARE) -> bool:
    """The repetition clause alone: for text that is not language, where the other clauses mean nothing."""
    return repeated_ngram_share(words(answer), ngram) > max_repeated_ngram_share


def length_floor(anchor_answer: str | None, min_words: int = 2, min_length_ratio: float = 0.06) -> float:
    """The "far too short" clause's bar: an answer with fewer words is degenerate. `min_words`, or
    `min_length_ratio` x the anchor's answer's words when that is more."""
    return max(min_words, min_length_ratio * len(words(anchor_answer))) if anchor_answer else min_words


def degenerate_reasons(answer: str, prompt: str, anchor_answer: str | None = None, *,
                       min_words: int = 2, min_length_ratio: float = 0.06, ngram: int = NGRAM,
                       max_repeated_ngram_share: float = MAX_REPEATED_NGRAM_SHARE) -> list[str]:
    """Why `answer` to `prompt` is degenerate ([] = it is not). See the module docstring."""
    toks = words(answer)
    if not answer or not answer.strip():
        return ["empty answer"]
    reasons = []
    anchor_words = len(words(anchor_answer)) if anchor_answer else 0
    if len(toks) < length_floor(anchor_answer, min_words, min_length_ratio):
        reasons.append(f"far too short ({len(toks)} words; anchor {anchor_words})" if anchor_words
                       else f"far too short ({len(toks)} words)")
    if len(toks) >= 8:
        top = Counter(t.lower() for t in toks).most_common(1)[0][1]
        if top / len(toks) > 0.6:
            reasons.append(f"one word repeated ({top}/{len(toks)} words)")
    share = repeated_ngram_share(toks, ngram)
    if share > max_repeated_ngram_share:
        reasons.append(f"repeated {ngram}-grams ({share:.0%} of the answer)")
    if len(toks) >= 3:
        topic = content_stems(prompt) | (content_stems(anchor_answer) if anchor_answer else set())
        if topic and not (content_stems(answer) & topic):
            reasons.append("does not address the prompt (no content word shared with it or the anchor's answer)")
    return reasons


def is_degenerate(answer: str, prompt: str, anchor_answer: str | None = None, **kwargs) -> bool:
    return bool(degenerate_reasons(answer, prompt, anchor_answer, **kwargs))


_FIRST_END = re.compile(r"(?<=[^\W\d_])[.!?]+[\"')\]]*(?=\s|$)")   # "...word." / "word!" then a space or the end
NOT_SENTENCE_ENDS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "dr.", "st.", "no.")   # also RAFT's sentence ends


def first_sentence(answer: str) -> str:
    """The answer up to its first sentence end: ".", "!" or "?" after a letter (closing quotes or
    brackets allowed), followed by a space or the end, not an abbreviation ("e.g."). The whole
    (stripped) answer when no sentence ends."""
    text = (answer or "").strip()
    for end in _FIRST_END.finditer(text):
        last = text[:end.start()].split()[-1].lower().lstrip("\"'([") if text[:end.start()].split() else ""
        if last + "." not in NOT_SENTENCE_ENDS:
            return text[:end.end()]
    return text


def fragment_opening(answer: str, anchor_answer: str | None = None, *, min_words: int = 2,
                     min_length_ratio: float = 0.06) -> bool:
    """Whether the answer opens with a sentence that, were the answer to stop there, would be "far
    too short" by `degenerate_reasons`' own length clause (same defaults): "The sleep. Sleep is..."
    for a 45-word usual answer, "Sure! ...". Only the length clause: a short on-topic first sentence
    ("Imagine you're at the beach.") is an opening, not a fragment. Why it matters: a policy that
    learns such openings says "The thunderstorms." to an unseen prompt and then stops, or runs on
    into a loop from there (sessions 14-23 demos: the most frequent degenerate held-out answer)."""
    first = first_sentence(answer)
    if first == (answer or "").strip():
        return False        # one sentence: the whole answer, which degenerate_reasons judges
    return len(words(first)) < length_floor(anchor_answer, min_words, min_length_ratio)
