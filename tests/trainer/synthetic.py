"""A synthetic preference the tests define: answers with more digits are better.

Answers are random token strings from the tiny model's own vocabulary (so they look like what the
random tiny policy samples); the ground truth `digit_count` is independent of any model, which lets
the learning test check that PPO moved the *true* preference, not just the RM's opinion.
"""
from __future__ import annotations

import random

from trainer.data import PreferencePair, PromptItem, RatedAnswer

TOPICS = ["the sea", "Paris", "the weather", "a fox", "numbers", "a dog", "the capital", "a poem",
          "breeze", "help", "the west", "answers"]


def digit_count(text: str) -> int:
    return sum(c.isdigit() for c in text)


def prompts(n: int, seed: int) -> list[PromptItem]:
    rng = random.Random(seed)
    return [PromptItem([{"role": "user", "content": f"Please write about {rng.choice(TOPICS)} {i}."}])
            for i in range(n)]


class AnswerSampler:
    def __init__(self, tokenizer, seed: int):
        self.rng = random.Random(seed)
        special = set(tokenizer.all_special_ids)
        pieces = [(i, tokenizer.decode([i])) for i in range(len(tokenizer)) if i not in special]
        printable = [(i, s) for i, s in pieces if s.strip() and s.isprintable()]
        self.digits = [s for _, s in printable if digit_count(s)]
        self.words = [s for _, s in printable if not digit_count(s)]

    def answer(self, n_digits: int, length: int = 12) -> str:
        tokens = [self.rng.choice(self.words) for _ in range(length)]
        for _ in range(n_digits):
            tokens.insert(self.rng.randrange(len(tokens) + 1), self.rng.choice(self.digits))
        return "".join(tokens)

    def pairs(self, n: int, prompt_seed: int) -> list[PreferencePair]:
        out = []
        for item in prompts(n, prompt_seed):
            low = self.rng.randint(0, 2)
            high = low + self.rng.randint(1, 3)
            chosen, rejected = self.answer(high), self.answer(low)
            assert digit_count(chosen) > digit_count(rejected)
            out.append(PreferencePair(item.messages, chosen, rejected))
        return out

    def rated(self, n: int, prompt_seed: int) -> list[RatedAnswer]:
        out = []
        for item in prompts(n, prompt_seed):
            k = self.rng.randint(0, 4)
            out.append(RatedAnswer(item.messages, self.answer(k), "up" if k >= 2 else "down"))
        return out
