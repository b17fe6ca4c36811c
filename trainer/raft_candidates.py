"""RAFT's candidates (trainer/rejection.py ranks them): k samples of the policy per prompt and, for each
one cut off by the token limit, the same answer closed at a sentence end.

Why closing: on a small model and a 64-token budget most samples run past the limit, and "the same
answer, stopped where a sentence ends" is a candidate the policy nearly wrote; the RM ranks it like
the rest. Sentence ends are found on the decoded tokens (`sentence_ends`), so the closed answer is a
prefix of the sample's own token ids plus EOS.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from common.degeneracy import NOT_SENTENCE_ENDS, words
from trainer.config import RAFTConfig
from trainer.device import autocast
from trainer.online import OnlineRun

_SENTENCE_END = re.compile(r"[^\d\s][.!?][\"')\]]*$")     # "...word." but not a list number "2."


def sentence_ends(pieces: Sequence[str]) -> list[int]:
    """Every n such that the text of `pieces[:n]` (each token decoded alone) ends a sentence: a ".",
    "!" or "?" after a word (closing quotes or brackets allowed), not an abbreviation such as "e.g.",
    and followed by a space or line break or nothing. Ascending."""
    text = ""
    ends = []
    for n, piece in enumerate(pieces, 1):
        text += piece
        nxt = pieces[n] if n < len(pieces) else ""
        tail = text.rstrip()
        last_word = tail.split()[-1].lower() if tail.split() else ""
        spaced = tail != text or not nxt or nxt[:1].isspace()
        if tail and spaced and _SENTENCE_END.search(tail) and last_word.strip("\"')]") not in NOT_SENTENCE_ENDS:
            ends.append(n)
    return ends


def fragment_end(pieces: Sequence[str], floor: float) -> int | None:
    """How many leading tokens make the answer's first sentence (`sentence_ends`), when that sentence
    has fewer words than `floor` (a fragment opening, common/degeneracy.fragment_opening) and is not the
    whole answer; else None. Its last token is the one that closed the fragment ("." after "The storm")."""
    ends = sentence_ends(pieces)
    if not ends or ends[0] >= len(pieces):
        return None
    return ends[0] if len(words("".join(pieces[:ends[0]]))) < floor else None


def last_sentence_end(pieces: Sequence[str], min_tokens: int = 1) -> int | None:
    """How many leading tokens of a cut-off answer make whole sentences: the largest sentence end
    (`sentence_ends`) n >= `min_tokens`. None when no sentence ends in time."""
    ends = [n for n in sentence_ends(pieces) if n >= min_tokens]
    return ends[-1] if ends else None


def likeliest_stop(ends: Sequence[int], stop_logp: Sequence[float], min_tokens: int = 1) -> int | None:
    """Of the sentence ends n >= `min_tokens`, the one after which the policy itself was the most
    likely to stop (`stop_logp[n]` = log π(EOS | the first n tokens)); the later one on a tie."""
    ends = [n for n in ends if n >= min_tokens and n < len(stop_logp)]
    return max(ends, key=lambda n: (stop_logp[n], n)) if ends else None


@torch.no_grad()
def sample_candidates(run: OnlineRun, messages: list[list[dict]], config: RAFTConfig):
    """k samples per prompt and their scores; with `close_cut_answers`, each prompt's row becomes its
    k samples followed by k closed candidates (column k + j derives from sample j; where sample j
    finished or has no sentence end, the column repeats it, marked not `made`).
    Returns (prompt ids, responses, scores, raw, has_eos, made), flat, prompt-major."""
    k = config.k
    prompts, responses, scores, raw, has_eos = run.sample(messages, k)
    if not config.close_cut_answers:
        return prompts, responses, scores, raw, has_eos, [False] * len(responses)
    closed = close_cut_answers(run, prompts, responses, has_eos, config.close_min_share, config.close_at)
    idx = [i for i, c in enumerate(closed) if c is not None]
    c_scores, c_raw, c_eos = scores.clone(), raw.clone(), has_eos.clone()
    if idx:
        s, r, e = run.score([messages[i // k] for i in idx], [closed[i] for i in idx])
        c_scores[idx], c_raw[idx], c_eos[idx] = s, r, e
    closed_resp = [c if c is not None else r for c, r in zip(closed, responses)]
    made = [c is not None for c in closed]
    return (_side_by_side(prompts, prompts, k), _side_by_side(responses, closed_resp, k),
            _side_by_side(scores, c_scores, k), _side_by_side(raw, c_raw, k),
            _side_by_side(has_eos, c_eos, k), _side_by_side([False] * len(made), made, k))


def _side_by_side(a, b, k: int):
    """Prompt-major rows of k items of `a` then the k matching items of `b` (lists or 1-D tensors)."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a.view(-1, k), b.view(-1, k)], 1).reshape(-1)
    return [x for i in range(0, len(a), k) for x in list(a[i:i + k]) + list(b[i:i + k])]

def close_cut_answers(run: OnlineRun, prompts: list[list[int]], responses: list[list[int]], has_eos: torch.Tensor,
                      min_share: float, close_at: str = "last") -> list[list[int] | None]:
    """For each sample cut off by the token limit, its leading whole sentences plus EOS (when they
    keep at least `min_share` of its tokens), else None. Users get answers of this same token
    budget, so a sample that ran past it shows what the policy would say if it had planned to fit;
    the RM then judges the closed candidate like any other (it may prefer the cut-off one).
    `close_at`: "last" = after the last whole sentence; "likeliest" = after the sentence where the
    policy itself was the most likely to stop (`likeliest_stop`)."""
    if close_at not in ("last", "likeliest"):
        raise ValueError(f"close_at must be 'last' or 'likeliest', not {close_at!r}")
    cut = [i for i, done in enumerate(has_eos.tolist()) if not done]
    stops: dict[int, list[float]] = {}
    if close_at == "likeliest":
        for s in range(0, len(cut), 16):
            rows = cut[s:s + 16]
            with autocast(run.device):
                _, real, stop = run.token_and_stop_logprobs(run.actor, [prompts[i] for i in rows],
                                                            [responses[i] for i in rows])
            stops.update({i: stop[j, :len(responses[i])].float().tolist() for j, i in enumerate(rows)})
    out: list[list[int] | None] = [None] * len(responses)
    for i in cut:
        r = responses[i]
        least = max(1, int(min_share * len(r)))
        pieces = [run.tokenizer.decode([t]) for t in r]
        n = (likeliest_stop(sentence_ends(pieces), stops[i], least) if close_at == "likeliest"
             else last_sentence_end(pieces, least))
        out[i] = list(r[:n]) + [run.eos_ids[0]] if n else None
    return out
