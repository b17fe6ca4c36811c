"""Simulated end users with a hidden preference the system never sees.

The population mostly likes *concise* answers, some like *warm, enthusiastic* ones, a few
click at random, and a few adversarial raters vote against the majority on purpose. The RM
only ever sees their clicks; the final table scores versions with `hidden_score`, the
population's true taste (adversaries and noise excluded), on prompts no user ever asked.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

WARM_WORDS = {"great", "glad", "happy", "love", "wonderful", "fun", "amazing", "sure", "enjoy", "fascinating"}


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


def concise_utility(text: str) -> float:
    n = len(words(text))
    if n < 3:
        return -2.0  # not an answer: brevity must not win by saying nothing
    return -n / 40.0


def warm_utility(text: str) -> float:
    w = [x.lower() for x in words(text)]
    warmth = min(text.count("!"), 3) + sum(x in WARM_WORDS for x in w)
    return 0.4 * min(warmth, 4) - len(w) / 120.0 + (-2.0 if len(w) < 3 else 0.0)


def hidden_score(text: str, finished: bool = True) -> float:
    """The population's true taste: 70% concise, 30% warm; an answer cut off mid-sentence
    (no end of sequence) costs extra, as real users dislike truncated replies."""
    return 0.7 * concise_utility(text) + 0.3 * warm_utility(text) - (0.0 if finished else 0.5)


@dataclass
class Persona:
    name: str
    share: float
    noise: float          # probability of a random click
    adversarial: bool = False

    def utility(self, text: str, finished: bool) -> float:
        if self.name == "warm":
            u = warm_utility(text)
        else:
            u = concise_utility(text)
        u -= 0.0 if finished else 0.5
        return -u if self.adversarial else u


POPULATION = [
    Persona("concise", 0.6, noise=0.1),
    Persona("warm", 0.25, noise=0.1),
    Persona("random", 0.1, noise=1.0),
    Persona("adversarial", 0.05, noise=0.0, adversarial=True),
]


@dataclass
class SimUser:
    user_id: str
    persona: Persona
    rng: random.Random

    def choose(self, a: tuple[str, bool], b: tuple[str, bool]) -> str:
        """'a', 'b', 'tie' or 'both_bad' for two (text, finished) answers."""
        if self.rng.random() < self.persona.noise:
            return self.rng.choice(["a", "b", "a", "b", "tie", "both_bad"])
        ua, ub = self.persona.utility(*a), self.persona.utility(*b)
        if max(ua, ub) <= -2.0:
            return "both_bad"
        if abs(ua - ub) < 0.05:
            return "tie"
        return "a" if ua > ub else "b"

    def thumb(self, answer: tuple[str, bool]) -> str:
        if self.rng.random() < self.persona.noise:
            return self.rng.choice(["up", "down"])
        # A thumbs-up means "better than what I usually get": about 30 words or fewer.
        return "up" if self.persona.utility(*answer) > -0.75 else "down"


def make_population(n_users: int, seed: int) -> list[SimUser]:
    rng = random.Random(seed)
    users = []
    for i in range(n_users):
        r, acc, persona = rng.random(), 0.0, POPULATION[0]
        for p in POPULATION:
            acc += p.share
            if r <= acc:
                persona = p
                break
        users.append(SimUser(f"user{i:02d}", persona, random.Random(seed * 1000 + i)))
    # Make sure the adversaries exist even in a small population: they are part of the test.
    if not any(u.persona.adversarial for u in users) and n_users >= 8:
        users[-1].persona = POPULATION[3]
    return users
