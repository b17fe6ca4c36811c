"""Reward model: a transformer with a scalar head scoring (prompt, answer) under the chat template.

Trained with Bradley–Terry on pairs plus a pointwise logistic loss on thumbs. The folder it writes is
a plain HF `...ForSequenceClassification` checkpoint plus `reward_stats.json` (mean/std of rewards on
the training answers, so PPO can normalise, and the training metrics).

Length debiasing (ODIN, Chen et al. 2024; `RMConfig.length_debias`): during training the reward is
r_Q + r_L, where r_Q is the HF `score` head and r_L an extra linear head on the same pooled state; r_Q
is pushed to be uncorrelated with answer length, r_L to carry it, and their weights to be orthogonal.
Only r_Q is saved, so scoring is unchanged. Every RM records `length_correlation` (Pearson of r_Q and
answer tokens) so a length meter shows in its metrics whether or not it was debiased.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from trainer import ppo_math as pm
from trainer.config import RMConfig
from trainer.data import PreferencePair, RatedAnswer
from trainer.device import autocast, describe, resolve_device
from trainer.modeling import (conversation_text, freeze_lower_layers, fresh_output_dir, load_tokenizer,
                              model_device, publish, set_threads)
from trainer.trunk_cache import TrunkCache

STATS_FILE = "reward_stats.json"
Progress = Callable[[str, int, int, dict], None]


def pooled_states(model, tokenizer, texts: Sequence[str], max_length: int,
                  cache: TrunkCache | None = None) -> torch.Tensor:
    """Last hidden state of each text at its last real token (right padding): what the heads read;
    the mean over its real tokens instead when the model's config says `rm_pooling = "mean"`
    (RMConfig.pooling, saved in the RM's config.json). With `cache`, the frozen lower blocks' output
    is read from it (computed once per text).

    Pooling is done here from the attention mask, not by HF's pad-token search, because many chat
    tokenizers use EOS as pad and EOS also ends every answer.
    """
    if cache is not None:
        hidden, mask = cache.last_hidden(texts)
    else:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length, add_special_tokens=False).to(model_device(model))
        hidden = model.base_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  use_cache=False).last_hidden_state
        mask = enc["attention_mask"]
    if getattr(model.config, "rm_pooling", "last") == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1)
    last = mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def sequence_scores(model, tokenizer, texts: Sequence[str], max_length: int,
                    cache: TrunkCache | None = None) -> torch.Tensor:
    """Scalar score of each text: the `score` head (r_Q, the only head saved) on the pooled state."""
    return model.score(pooled_states(model, tokenizer, texts, max_length, cache)).squeeze(-1).float()


def by_length(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `texts` in batches of similar length (longest first): a batch pads to its longest
    text, so batching scored texts in arrival order pays for padding that sorting avoids. Scores are
    per text, so the order they are computed in does not change them."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def answer_lengths(tokenizer, answers: Sequence[str]) -> torch.Tensor:
    """Length of each answer in tokens, the answer alone (no chat template): ODIN's L(y), and what
    `length_correlation` is measured against."""
    ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    return torch.tensor([float(len(i)) for i in ids])


class RewardModel:
    """A trained RM folder, loaded once; scores are raw, `normalised` uses the stored mean/std."""

    def __init__(self, model, tokenizer, mean: float = 0.0, std: float = 1.0,
                 max_length: int = 512, batch_size: int = 16, open_turns: bool = False):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.mean, self.std, self.max_length, self.batch_size = mean, std, max_length, batch_size
        # Trained on cut-off answers (rendered as open turns)? Only then are the finished flags
        # shown to it: an open turn would be out of distribution for an RM that never saw one.
        self.open_turns = open_turns

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device | str = "cpu") -> "RewardModel":
        """The RM in `model_dir`, of whichever kind it is (an embedding RM has the same interface)."""
        from transformers import AutoModelForSequenceClassification

        from trainer import embedding_rm
        if embedding_rm.is_embedding_rm(model_dir):
            return embedding_rm.EmbeddingRewardModel.load(model_dir)
        model_dir = Path(model_dir)
        stats = json.loads((model_dir / STATS_FILE).read_text()) if (model_dir / STATS_FILE).exists() else {}
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
        return cls(model, _rm_tokenizer(model_dir), stats.get("mean", 0.0), stats.get("std", 1.0),
                   stats.get("max_length", 512), open_turns=stats.get("open_turns", False))

    @torch.no_grad()
    def score(self, messages_list: Sequence[list[dict]], answers: Sequence[str],
              finished: Sequence[bool] | None = None) -> list[float]:
        """Raw scalar reward of each (prompt messages, answer); `finished[i]` False = answer i was
        cut off by the token limit (None = all finished)."""
        if len(messages_list) != len(answers):
            raise ValueError("messages_list and answers differ in length")
        finished = [True] * len(answers) if finished is None or not self.open_turns else list(finished)
        texts = [conversation_text(self.tokenizer, m, a, f) for m, a, f in zip(messages_list, answers, finished)]
        return score_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length).tolist()

    def normalised(self, messages_list: Sequence[list[dict]], answers: Sequence[str],
                   finished: Sequence[bool] | None = None) -> list[float]:
        """(raw - mean) / std with the statistics stored at training time."""
        return [(r - self.mean) / self.std for r in self.score(messages_list, answers, finished)]


def _rm_tokenizer(model_dir):
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "right"      # pooling reads the last real token
    tokenizer.truncation_side = "left"    # keep the answer when the chat is too long
    return tokenizer


def _load_for_training(init_dir: Path, config: RMConfig, device: torch.device):
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(config.seed)  # the fresh scalar head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(str(init_dir), num_labels=1,
                                                               dtype=torch.float32).to(device)
    tokenizer = _rm_tokenizer(init_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.rm_pooling = config.pooling     # saved in config.json: the RM scores as it was trained
    freeze_lower_layers(model.base_model, config.trainable_layers)
    return model.eval(), tokenizer  # eval(): no dropout, deterministic scores; grads still flow


def split_heldout(pairs, config: RMConfig, rng: random.Random):
    if len(pairs) < config.min_heldout_pairs or config.heldout_fraction <= 0:
        return list(pairs), []
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    n_eval = max(1, int(round(len(shuffled) * config.heldout_fraction)))
    return shuffled[n_eval:], shuffled[:n_eval]


def _length_head(model, config: RMConfig, device: torch.device):
    """ODIN's length head r_L: a linear map of the same pooled state as `model.score`, shaped and
    initialised like it. It lives outside the HF model, so `save_pretrained` never writes it and a
    loaded RM scores with r_Q alone; a warm start gets a fresh one (r_L is training scaffolding)."""
    if not config.length_debias:
        return None
    score = model.score
    head = torch.nn.Linear(score.in_features, score.out_features, bias=score.bias is not None)
    # own generator: enabling the head must not shift any other random draw of the run
    generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        head.weight.normal_(0.0, getattr(model.config, "initializer_range", 0.02), generator=generator)
        if head.bias is not None:
            head.bias.zero_()
    return head.to(device)


def _train_scores(model, length_head, tokenizer, messages_list, answers, finished, max_length: int,
                  cache: TrunkCache | None = None):
    """(r_Q, r_L or None, answer lengths) of each answer in one training forward."""
    texts = [conversation_text(tokenizer, m, a, f) for m, a, f in zip(messages_list, answers, finished)]
    pooled = pooled_states(model, tokenizer, texts, max_length, cache)
    r_q = model.score(pooled).squeeze(-1).float()
    r_l = length_head(pooled).squeeze(-1).float() if length_head is not None else None
    return r_q, r_l, answer_lengths(tokenizer, answers).to(r_q.device)


def _trained_reward(r_q: torch.Tensor, r_l: torch.Tensor | None) -> torch.Tensor:
    """What the preference losses fit: r_Q + r_L under ODIN (the length head soaks up length), r_Q otherwise."""
    return r_q if r_l is None else r_q + r_l


def _pair_loss(model, length_head, tokenizer, batch: list[PreferencePair], max_length: int,
               cache: TrunkCache | None = None):
    messages = [p.messages for p in batch] * 2
    answers = [p.chosen for p in batch] + [p.rejected for p in batch]
    finished = [p.chosen_finished for p in batch] + [p.rejected_finished for p in batch]
    scored = _train_scores(model, length_head, tokenizer, messages, answers, finished, max_length, cache)
    reward = _trained_reward(scored[0], scored[1])
    rc, rr = reward[:len(batch)], reward[len(batch):]
    loss = pm.bradley_terry_loss(rc, rr, torch.tensor([p.margin for p in batch], device=rc.device),
                                 torch.tensor([p.weight for p in batch], device=rc.device))
    return loss, pm.pairwise_accuracy(rc.detach(), rr.detach()), scored


def _rated_loss(model, length_head, tokenizer, batch: list[RatedAnswer], max_length: int,
                cache: TrunkCache | None = None):
    scored = _train_scores(model, length_head, tokenizer, [r.messages for r in batch],
                           [r.answer for r in batch], [r.finished for r in batch], max_length, cache)
    reward = _trained_reward(scored[0], scored[1])
    signs = torch.tensor([1.0 if r.label == "up" else -1.0 for r in batch], device=reward.device)
    loss = pm.pointwise_loss(reward, signs, torch.tensor([r.weight for r in batch], device=reward.device))
    return loss, scored


def _odin_loss(model, length_head, scored: list, config: RMConfig):
    """λ_L·(|ρ(r_Q, L)| − ρ(r_L, L)) + λ_O·|w_Q·w_L| over every answer scored in this step (pairs and
    thumbs together: the paper's correlation is over the whole batch, and more answers make it less noisy)."""
    r_q, r_l, lengths = (torch.cat(parts) for parts in zip(*scored))
    corr = pm.length_decorrelation_loss(r_q, r_l, lengths)
    ortho = pm.head_orthogonality_loss(model.score.weight, length_head.weight)
    stats = {"length_corr_loss": corr.item(), "ortho_loss": ortho.item(),
             "quality_length_corr": pm.pearson_correlation(r_q.detach(), lengths).item()}
    return config.length_corr_coef * corr + config.length_ortho_coef * ortho, stats


@torch.no_grad()
def score_texts(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int,
                cache: TrunkCache | None = None) -> torch.Tensor:
    """Scores of `texts` (CPU, in their order), computed in batches of similar length (`by_length`)."""
    out = torch.zeros(len(texts))
    for batch in by_length(texts, batch_size):
        with autocast(model_device(model)):
            out[batch] = sequence_scores(model, tokenizer, [texts[i] for i in batch], max_length, cache).cpu()
    return out


def _score_texts(model, tokenizer, texts: list[str], config: RMConfig, cache: TrunkCache | None = None) -> torch.Tensor:
    return score_texts(model, tokenizer, texts, config.eval_batch_size, config.max_length, cache)


def _pair_scores(model, tokenizer, pairs, config: RMConfig,
                 cache: TrunkCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Saved-head scores (r_Q) of the chosen and of the rejected answers."""
    rc = _score_texts(model, tokenizer, [conversation_text(tokenizer, p.messages, p.chosen, p.chosen_finished)
                                         for p in pairs], config, cache)
    rr = _score_texts(model, tokenizer, [conversation_text(tokenizer, p.messages, p.rejected, p.rejected_finished)
                                         for p in pairs], config, cache)
    return rc, rr


def _trunk_cache(model, tokenizer, config: RMConfig, pairs, rated) -> tuple[TrunkCache | None, str]:
    """A trunk cache when the lower blocks are frozen and the model takes cached states unchanged
    (checked on a few training texts), else None; and why."""
    n_layers = len(model.base_model.layers)
    if not config.trunk_cache or config.trainable_layers is None or config.trainable_layers >= n_layers:
        return None, "off" if not config.trunk_cache else "nothing frozen"
    cache = TrunkCache(model.base_model, tokenizer, n_layers - config.trainable_layers, config.max_length)
    probe = [conversation_text(tokenizer, p.messages, p.chosen, p.chosen_finished) for p in pairs[:2]]
    probe += [conversation_text(tokenizer, r.messages, r.answer, r.finished) for r in rated[:2]]
    try:
        cache.verify(probe)
    except ValueError as e:
        return None, str(e)
    return cache, "on"


def _batches(items: list, size: int, n_batches: int, rng: random.Random):
    """n_batches minibatches cycling through a reshuffled list (the shorter data source repeats)."""
    order: list = []
    for _ in range(n_batches):
        if len(order) < size:
            fresh = list(items)
            rng.shuffle(fresh)
            order += fresh
        yield order[:size]
        del order[:size]


def train_reward_model(pairs: Sequence[PreferencePair], rated: Sequence[RatedAnswer] | None,
                       base_dir: str | Path, out_dir: str | Path, config: RMConfig = RMConfig(),
                       warm_start: str | Path | None = None,
                       eval_pairs: Sequence[PreferencePair] | None = None,
                       progress: Progress | None = None) -> dict:
    """Train an RM on pairs (+ thumbs) and save it to out_dir; returns its metrics.

    Initialised from `warm_start` (a previous RM folder) if given, else from `base_dir` (usually the
    policy) with a fresh scalar head. Without eval_pairs, `config.heldout_fraction` of the pairs is
    held out for `heldout_accuracy`. reward_mean/std are measured on every training answer;
    `length_correlation` on the held-out pairs' answers (`length_correlation_on` = "heldout"), else on
    every training answer ("train").
    """
    if config.kind == "embedding":  # frozen sentence-encoder features + a linear head (trainer/embedding_rm.py)
        from trainer.embedding_rm import train_embedding_rm
        return train_embedding_rm(pairs, rated, out_dir, config, eval_pairs, progress)
    if config.kind != "transformer":
        raise ValueError(f"RMConfig.kind must be 'transformer' or 'embedding', got {config.kind!r}")
    from tqdm.auto import tqdm
    set_threads(config.num_threads)
    started = time.time()
    rng = random.Random(config.seed)
    rated = list(rated or [])
    if eval_pairs is None:
        train_pairs, heldout = split_heldout(pairs, config, rng)
    else:
        train_pairs, heldout = list(pairs), list(eval_pairs)
    if not train_pairs and not rated:
        raise ValueError("no training data: give preference pairs and/or rated answers")
    if config.pooling not in ("last", "mean"):
        raise ValueError(f"RMConfig.pooling must be 'last' or 'mean', got {config.pooling!r}")

    final, partial = fresh_output_dir(out_dir)  # fail before training, not after
    device = resolve_device(config.device)
    model, tokenizer = _load_for_training(Path(warm_start or base_dir), config, device)
    length_head = _length_head(model, config, device)
    cache, cache_state = _trunk_cache(model, tokenizer, config, train_pairs, rated)
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(length_head.parameters()) if length_head is not None else []
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(math.ceil(len(train_pairs) / config.batch_size),
                          math.ceil(len(rated) / config.batch_size))
    total = steps_per_epoch * config.epochs
    history, step = [], 0
    bar = tqdm(total=total, desc="reward model", disable=not config.show_progress_bar)
    for epoch in range(config.epochs):
        pair_batches = _batches(train_pairs, config.batch_size, steps_per_epoch, rng) if train_pairs else None
        rated_batches = _batches(rated, config.batch_size, steps_per_epoch, rng) if rated else None
        for _ in range(steps_per_epoch):
            metrics: dict = {"epoch": epoch}
            loss, scored = torch.zeros((), device=device), []
            with autocast(device):
                if pair_batches:
                    pair_loss, acc, pair_scored = _pair_loss(model, length_head, tokenizer, next(pair_batches),
                                                             config.max_length, cache)
                    loss = loss + pair_loss
                    scored.append(pair_scored)
                    metrics.update(pair_loss=pair_loss.item(), train_accuracy=acc)  # acc of r_Q + r_L
                if rated_batches:
                    point_loss, rated_scored = _rated_loss(model, length_head, tokenizer, next(rated_batches),
                                                           config.max_length, cache)
                    loss = loss + config.pointwise_coef * point_loss
                    scored.append(rated_scored)
                    metrics["pointwise_loss"] = point_loss.item()
                if length_head is not None:
                    odin_loss, odin_stats = _odin_loss(model, length_head, scored, config)
                    loss = loss + odin_loss
                    metrics.update(odin_stats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            optimizer.step()
            metrics["loss"] = loss.item()
            step += 1
            history.append(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            if progress:
                progress("rm", step, total, metrics)
    bar.close()

    ref_items = [(p.messages, a, f) for p in train_pairs
                 for a, f in ((p.chosen, p.chosen_finished), (p.rejected, p.rejected_finished))]
    ref_items += [(r.messages, r.answer, r.finished) for r in rated]
    ref_scores = _score_texts(model, tokenizer, [conversation_text(tokenizer, m, a, f) for m, a, f in ref_items],
                              config, cache)
    # chosen/rejected alternate at the front of `ref_items`: train accuracy without another pass
    n_pair_texts = 2 * len(train_pairs)
    train_accuracy = (pm.pairwise_accuracy(ref_scores[0:n_pair_texts:2], ref_scores[1:n_pair_texts:2])
                      if train_pairs else None)
    mean = ref_scores.mean().item()
    std = ref_scores.std(unbiased=False).item() if len(ref_scores) > 1 else 1.0
    # length bias of the saved head on held-out answers (both sides of each pair), else on the training ones
    if heldout:
        rc, rr = _pair_scores(model, tokenizer, heldout, config, cache)
        corr_scores, corr_answers = torch.cat([rc, rr]), [p.chosen for p in heldout] + [p.rejected for p in heldout]
    else:
        corr_scores, corr_answers = ref_scores, [a for _, a, _ in ref_items]
    last = history[-min(len(history), steps_per_epoch):]
    metrics = {
        "heldout_accuracy": pm.pairwise_accuracy(rc, rr) if heldout else None,
        "train_accuracy": train_accuracy,
        "length_correlation": pm.pearson_correlation(corr_scores, answer_lengths(tokenizer, corr_answers)).item(),
        "length_correlation_on": "heldout" if heldout else "train",
        "reward_mean": mean, "reward_std": max(std, 1e-6),
        "final_loss": sum(h["loss"] for h in last) / len(last),
        "n_pairs": len(train_pairs), "n_heldout_pairs": len(heldout), "n_rated": len(rated),
        "steps": step, "seconds": round(time.time() - started, 2), "device": describe(device),
        "trunk_cache": cache_state, "trunk_passes": cache.trunk_passes if cache is not None else None,
        "open_turns": _saw_cut_off(train_pairs, rated, warm_start),
    }
    _save(model, tokenizer, final, partial, metrics, config, base_dir, warm_start)
    if progress:
        progress("rm_done", step, total, metrics)
    return metrics


def _saw_cut_off(pairs, rated, warm_start) -> bool:
    """Did this RM (or the RM it was warm-started from) train on cut-off answers?"""
    if any(not (p.chosen_finished and p.rejected_finished) for p in pairs) or any(not r.finished for r in rated):
        return True
    stats = Path(warm_start) / STATS_FILE if warm_start else None
    return bool(stats and stats.exists() and json.loads(stats.read_text()).get("open_turns", False))


def _save(model, tokenizer, final: Path, partial: Path, metrics: dict, config: RMConfig, base_dir, warm_start) -> None:
    model.save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_pretrained(str(partial))
    stats = {"mean": metrics["reward_mean"], "std": metrics["reward_std"], "max_length": config.max_length,
             "open_turns": metrics["open_turns"],
             "base": str(base_dir), "warm_start": str(warm_start) if warm_start else None,
             "config": asdict(config), "metrics": metrics}
    (partial / STATS_FILE).write_text(json.dumps(stats, indent=2))
    publish(partial, final)
