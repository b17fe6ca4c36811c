"""Simulated end users with a hidden preference the system never sees.

A *preference* is a population of personas. Each honest persona scores an answer as a weighted
sum of small factors (below), each a function of (prompt, answer text, finished flag); some
users click at random and a few adversarial raters vote against their own taste on purpose.
The RM only ever sees their clicks. The final table scores versions with `hidden_score`: the
share-weighted mean utility of the honest personas (random and adversarial raters excluded),
on prompts no user ever asked.

Two rules hold for every persona, so for every preference:
- an answer cut off mid-sentence (no end of sequence) costs `cutoff_penalty`: real users
  dislike truncated replies;
- a degenerate answer (`common.degeneracy.degenerate_reasons`: empty, far too short,
  repetitive, off the prompt) costs more than the persona's whole utility range, so it loses to
  every healthy answer. Without this, a length-dominated taste rewards "Laughing." to "Why
  should I learn about glaciers?" (what the first demo's policy learned to say).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Callable

from common.degeneracy import content_stems, degenerate_reasons

WARM_WORDS = {"great", "glad", "happy", "love", "wonderful", "fun", "amazing", "sure", "enjoy", "fascinating",
              "exciting", "beautiful", "awesome", "delightful", "lovely", "cool"}
EXAMPLE_PHRASES = ("for example", "for instance", "e.g.", "such as", "including", "known as", "is called")
CASUAL_MARKS = re.compile(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]|\b(?:lol|wow|hey|yeah|gonna|kinda|stuff)\b"
                          r"|\b\w+(?:n't|'re|'ll|'ve|'m|'d)\b|\b(?:it|that|there|here|what|let|he|she)'s\b", re.I)


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


# ---- factors: f(prompt, text, finished) -> float, each bounded (FACTORS records the bounds) ----

def on_topic(prompt: str, text: str, finished: bool = True) -> float:
    """Stays on the subject asked about, in [0, 1]: 0 if the answer shares no content word
    (common.degeneracy.content_stems) with the prompt, else 0.6 plus 0.4 x the share of the
    prompt's content words it covers. A prompt with no content word can't be checked: 1."""
    asked = content_stems(prompt)
    if not asked:
        return 1.0
    hits = len(asked & content_stems(text))
    return 0.0 if hits == 0 else 0.6 + 0.4 * hits / len(asked)


def concrete(prompt: str, text: str, finished: bool = True) -> float:
    """Gives a concrete example or fact, in [0, 1]: half a point per kind of cue present, of
    three kinds: a number (any digit), an example phrase ("for example", "e.g.", "such as" ...),
    a named thing (a capitalised word that does not start a sentence, other than "I")."""
    low = text.lower()
    named = any(w[:1].isupper() and w != "I"
                for sentence in re.split(r"[.!?:;\n]+\s*", text) for w in words(sentence)[1:])
    cues = bool(re.search(r"\d", text)) + any(p in low for p in EXAMPLE_PHRASES) + named
    return min(cues, 2) / 2


def warm_tone(prompt: str, text: str, finished: bool = True) -> float:
    """Warm, enthusiastic tone, in [0, 1]: exclamation marks (at most 2 count) plus warm words
    ("glad", "love", "fascinating" ...), a third of a point each."""
    warmth = min(text.count("!"), 2) + sum(w.lower() in WARM_WORDS for w in words(text))
    return min(warmth, 3) / 3


def formal_tone(prompt: str, text: str, finished: bool = True) -> float:
    """Formal, neutral tone, in [0, 1]: 1 minus a third per casual mark (exclamation marks,
    contractions such as "it's" or "don't" but not possessives, warm or slang words, emoji)."""
    casual = (text.count("!") + sum(w.lower() in WARM_WORDS for w in words(text))
              + len(CASUAL_MARKS.findall(text)))
    return 1.0 - min(casual, 3) / 3


def length_band(n_words: int, lo: int, hi: int) -> float:
    """In [-0.5, 1]: 1 inside [lo, hi] words; below lo, linear from -0.5 at one word up to 1 at
    lo (a 1-3 word quip is worse than no length credit: it is barely an answer); above hi,
    linear from 1 down to 0 at 2 x hi. Both quips and rambling lose."""
    if n_words < lo:
        return -0.5 + 1.5 * max(0, n_words - 1) / (lo - 1)
    if n_words > hi:
        return max(0.0, 1.0 - (n_words - hi) / hi)
    return 1.0


def moderate_length(prompt: str, text: str, finished: bool = True) -> float:
    """A few sentences: 15-45 words score 1 (see `length_band`)."""
    return length_band(len(words(text)), 15, 45)


def brief_length(prompt: str, text: str, finished: bool = True) -> float:
    """One or two sentences: 6-20 words score 1 (see `length_band`)."""
    return length_band(len(words(text)), 6, 20)


def concise_utility(text: str) -> float:
    """The first demo's taste, in [-2, 0]: every word costs 1/40; under 3 words is not an answer."""
    n = len(words(text))
    if n < 3:
        return -2.0  # not an answer: brevity must not win by saying nothing
    return max(-2.0, -n / 40.0)


def warm_utility(text: str) -> float:
    """The first demo's warm taste, in [-2, 1.6]: warmth up to 4 points, 1/120 per word."""
    w = [x.lower() for x in words(text)]
    warmth = min(text.count("!"), 3) + sum(x in WARM_WORDS for x in w)
    u = 0.4 * min(warmth, 4) - len(w) / 120.0 + (-2.0 if len(w) < 3 else 0.0)
    return min(1.6, max(-2.0, u))


@dataclass(frozen=True)
class Factor:
    fn: Callable[[str, str, bool], float]
    lo: float = 0.0   # bounds of fn: they size the degenerate penalty so it always dominates
    hi: float = 1.0


FACTORS = {
    "on_topic": Factor(on_topic), "concrete": Factor(concrete), "warm_tone": Factor(warm_tone),
    "formal_tone": Factor(formal_tone), "moderate_length": Factor(moderate_length, -0.5),
    "brief_length": Factor(brief_length, -0.5),
    "concise_legacy": Factor(lambda p, t, f=True: concise_utility(t), -2.0, 0.0),
    "warm_legacy": Factor(lambda p, t, f=True: warm_utility(t), -2.0, 1.6),
}


@dataclass
class Persona:
    name: str
    share: float
    noise: float                      # probability of a random click
    weights: dict[str, float] = field(default_factory=dict)   # factor name -> weight
    adversarial: bool = False
    thumb_bar: float = 0.5            # a thumbs-up means "better than what I usually get"
    tie_margin: float = 0.05
    # A cut-off answer loses to the same answer finished, but a truncated informative answer
    # still beats a two-word quip (moderate_length goes negative for those).
    cutoff_penalty: float = 0.25

    @property
    def honest(self) -> bool:
        return self.noise < 1.0 and not self.adversarial

    @property
    def degenerate_penalty(self) -> float:
        """More than the utility's whole range (factor spans + cut-off), so a degenerate
        answer scores below the worst healthy one whatever the weights."""
        span = sum(abs(w) * (FACTORS[k].hi - FACTORS[k].lo) for k, w in self.weights.items())
        return span + self.cutoff_penalty + 1.0

    def taste(self, text: str, finished: bool = True, prompt: str = "") -> tuple[float, bool]:
        """(honest utility, degenerate?) of one answer: what this persona truly thinks of it."""
        u = sum(w * FACTORS[k].fn(prompt, text, finished) for k, w in self.weights.items())
        u -= 0.0 if finished else self.cutoff_penalty
        bad = bool(degenerate_reasons(text, prompt))
        return u - (self.degenerate_penalty if bad else 0.0), bad

    def utility(self, text: str, finished: bool = True, prompt: str = "") -> float:
        """What the persona's clicks follow: its taste, inverted for an adversary."""
        u, _ = self.taste(text, finished, prompt)
        return -u if self.adversarial else u


@dataclass
class Preference:
    name: str
    description: str
    personas: list[Persona]

    def hidden_score(self, text: str, finished: bool = True, prompt: str = "") -> float:
        """The population's true taste: share-weighted mean of the honest personas' utilities."""
        honest = [p for p in self.personas if p.honest]
        total = sum(p.share for p in honest)
        return sum(p.share * p.taste(text, finished, prompt)[0] for p in honest) / total

    def factor_weights(self) -> dict[str, float]:
        """Each factor's weight in `hidden_score` (for the report: what the users want)."""
        honest = [p for p in self.personas if p.honest]
        total = sum(p.share for p in honest)
        out: dict[str, float] = {}
        for p in honest:
            for k, w in p.weights.items():
                out[k] = out.get(k, 0.0) + p.share * w / total
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def describe(self) -> str:
        mix = ", ".join(f"{k} {w:.2f}" for k, w in self.factor_weights().items())
        people = ", ".join(f"{p.name} {p.share:.0%}" for p in self.personas)
        return (f"{self.description} Hidden score = {mix}; cut-off answers and degenerate answers "
                f"are penalised. Personas: {people}.")


def _random(share=0.1) -> Persona:
    return Persona("random", share, noise=1.0)


def _adversary_of(persona: Persona, share: float = 0.05) -> Persona:
    """Votes against `persona`'s own taste on purpose, never at random: pushes the signal back."""
    return replace(persona, name="adversarial", share=share, noise=0.0, adversarial=True)


_LEARNER = Persona("learner", 0.45, 0.1, {"on_topic": 0.3, "concrete": 0.3, "moderate_length": 0.3,
                                          "warm_tone": 0.1})
_EXPERT = Persona("expert", 0.55, 0.1, {"formal_tone": 0.3, "concrete": 0.3, "on_topic": 0.25,
                                        "moderate_length": 0.15})
_CONCISE = Persona("concise", 0.6, 0.1, {"concise_legacy": 1.0}, thumb_bar=-0.75, cutoff_penalty=0.5)

PREFERENCES: dict[str, Preference] = {p.name: p for p in [
    Preference("balanced", "Curious learners: on-topic answers with a concrete example, a few sentences long, "
               "a little warmth.", [
                   _LEARNER,
                   Persona("warm", 0.25, 0.1, {"warm_tone": 0.35, "on_topic": 0.25, "moderate_length": 0.25,
                                               "concrete": 0.15}),
                   Persona("skimmer", 0.15, 0.15, {"on_topic": 0.4, "brief_length": 0.4, "concrete": 0.2}),
                   _random(),
                   _adversary_of(_LEARNER)]),
    Preference("formal_expert", "Professionals: formal, factual, on-topic answers; no chit-chat.", [
        _EXPERT,
        Persona("analyst", 0.3, 0.1, {"concrete": 0.4, "on_topic": 0.3, "moderate_length": 0.3}),
        _random(),
        _adversary_of(_EXPERT)]),
    # The first demo's length-dominated taste, kept for comparison (plus the degenerate penalty).
    Preference("concise_warm", "Mostly concise (each word costs), some warm and enthusiastic.", [
        # thumbs-up: about 30 words or fewer; cut-off costs 0.5 as in the first demo
        _CONCISE,
        Persona("warm", 0.25, 0.1, {"warm_legacy": 1.0}, thumb_bar=-0.75, cutoff_penalty=0.5),
        _random(),
        _adversary_of(_CONCISE)]),
]}
DEFAULT_PREFERENCE = "balanced"


def get_preference(name: str | None = None) -> Preference:
    try:
        return PREFERENCES[name or DEFAULT_PREFERENCE]
    except KeyError:
        raise ValueError(f"unknown preference {name!r}; choose from {sorted(PREFERENCES)}") from None


def hidden_score(text: str, finished: bool = True, prompt: str = "", preference: str | None = None) -> float:
    """The population's true taste (see `Preference.hidden_score`). Without a prompt the
    on-topic factor and the off-prompt clause of the degenerate check cannot judge anything."""
    return get_preference(preference).hidden_score(text, finished, prompt)


@dataclass
class SimUser:
    user_id: str
    persona: Persona
    rng: random.Random

    def choose(self, a: tuple[str, bool], b: tuple[str, bool], prompt: str = "") -> str:
        """'a', 'b', 'tie' or 'both_bad' for two (text, finished) answers to `prompt`."""
        if self.rng.random() < self.persona.noise:
            return self.rng.choice(["a", "b", "a", "b", "tie", "both_bad"])
        (ta, bad_a), (tb, bad_b) = self.persona.taste(*a, prompt), self.persona.taste(*b, prompt)
        if bad_a and bad_b and not self.persona.adversarial:
            return "both_bad"
        ua, ub = (-ta, -tb) if self.persona.adversarial else (ta, tb)
        if abs(ua - ub) < self.persona.tie_margin:
            return "tie"
        return "a" if ua > ub else "b"

    def thumb(self, answer: tuple[str, bool], prompt: str = "") -> str:
        if self.rng.random() < self.persona.noise:
            return self.rng.choice(["up", "down"])
        good = self.persona.taste(*answer, prompt)[0] > self.persona.thumb_bar
        return "up" if good != self.persona.adversarial else "down"


def make_population(n_users: int, seed: int, preference: str | None = None) -> list[SimUser]:
    personas = get_preference(preference).personas
    rng = random.Random(seed)
    users = []
    for i in range(n_users):
        r, acc, persona = rng.random(), 0.0, personas[0]
        for p in personas:
            acc += p.share
            if r <= acc:
                persona = p
                break
        users.append(SimUser(f"user{i:02d}", persona, random.Random(seed * 1000 + i)))
    # Make sure the adversaries exist even in a small population: they are part of the test.
    adversary = next((p for p in personas if p.adversarial), None)
    if adversary and not any(u.persona.adversarial for u in users) and n_users >= 8:
        users[-1].persona = adversary
    return users
