"""trainer/decoding.py: the compacted decoder gives `generate`'s greedy answers and (at a seed) its samples
token for token, while dropping ended rows from the batch; a repeated prompt is prefilled once;
configs it does not implement keep `generate`."""
import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList

from trainer.decoding import (compacted_decode, greedy_processors, sampling_processors, shared_prompt_cache,
                              unsupported_settings)
from trainer.modeling import left_pad, load_causal_lm, load_tokenizer, prompt_token_ids
from trainer.rollout import HFGenerator, SamplingSettings, output_penalties, trim_response

QUESTIONS = ("Hi", "Tell me more about the sea", "Why?", "What is the weather like today in the city?", "Name a fruit")


def _generate(model, prompts, max_new, eos, pad):
    """HFGenerator's greedy call to HF `generate` (what it ran for every greedy batch before compaction)."""
    ids, mask = left_pad(prompts, pad)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, eos_token_id=eos,
                         pad_token_id=pad, do_sample=False, temperature=None, top_k=None, top_p=None,
                         logits_processor=output_penalties(model.generation_config, ids.shape[1]))
    return [trim_response(r, eos, pad) for r in out[:, ids.shape[1]:].tolist()]


@pytest.mark.parametrize("penalties", [{}, {"repetition_penalty": 1.1},
                                       {"repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.2}])
def test_same_answers_as_generate_with_rows_ending_at_different_steps(tiny_model_dir, penalties):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    for key, value in penalties.items():
        setattr(model.generation_config, key, value)
    pad = tokenizer.pad_token_id
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    # "EOS" tokens taken from the free-running answers, so that rows end at different steps
    free = _generate(model, prompts, 12, [tokenizer.vocab_size + 7], pad)
    eos = sorted({free[0][2], free[1][6], free[3][9]})
    expected = _generate(model, prompts, 12, eos, pad)
    # the case compaction is for: some rows end early, at different steps
    assert sum(a[-1] in eos for a in expected) >= 2 and len({len(a) for a in expected}) >= 2
    ids, mask = left_pad(prompts, pad)
    got = compacted_decode(model, ids, mask, 12, eos, greedy_processors(
        model.generation_config, output_penalties(model.generation_config, ids.shape[1])))
    assert [trim_response(r, eos, pad) for r in got] == expected
    settings = SamplingSettings(max_new_tokens=12, greedy=True, eos_token_ids=eos, pad_token_id=pad)
    assert HFGenerator(model, batch_size=2).generate(prompts, settings) == expected   # batches of 2 as well


def test_every_row_ending_at_once_and_a_budget_of_one(tiny_model_dir):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    pad = tokenizer.pad_token_id
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    first = _generate(model, prompts, 1, [tokenizer.vocab_size + 7], pad)
    eos = sorted({a[0] for a in first})                   # every answer ends with its first token
    ids, mask = left_pad(prompts, pad)
    assert compacted_decode(model, ids, mask, 6, eos, LogitsProcessorList()) == first
    assert compacted_decode(model, ids, mask, 1, [tokenizer.vocab_size + 7], LogitsProcessorList()) == first


def test_unsupported_settings_keep_generate():
    assert unsupported_settings(GenerationConfig(repetition_penalty=1.1, eos_token_id=2, pad_token_id=2)) == []
    assert unsupported_settings(GenerationConfig(no_repeat_ngram_size=3)) == ["no_repeat_ngram_size"]
    assert unsupported_settings(GenerationConfig(min_new_tokens=4, suppress_tokens=[5])) == ["min_new_tokens",
                                                                                          "suppress_tokens"]


def test_generator_falls_back_to_generate_for_an_unsupported_config(tiny_model_dir, monkeypatch):
    import trainer.rollout
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    model.generation_config.no_repeat_ngram_size = 2
    monkeypatch.setattr(trainer.rollout, "compacted_decode", lambda *a, **k: pytest.fail("not for this config"))
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:2]]
    settings = SamplingSettings(max_new_tokens=8, greedy=True, eos_token_ids=[tokenizer.eos_token_id],
                                pad_token_id=tokenizer.pad_token_id)
    answers = HFGenerator(model).generate(prompts, settings)
    for a in answers:                                     # generate's own no-repeat rule held
        pairs = list(zip(a, a[1:]))
        assert len(pairs) == len(set(pairs))


def _sampled(model, prompts, pad, seed, cache=None):
    """HF `generate` sampling at temperature 1 (HFGenerator's call), optionally from a prefilled cache."""
    ids, mask = left_pad(prompts, pad)
    torch.manual_seed(seed)
    extra = {"past_key_values": cache} if cache is not None else {}
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[pad], pad_token_id=pad,
                         do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, **extra)
    return out[:, ids.shape[1]:].tolist()


def test_repeated_prompts_share_one_prefill_and_sample_as_generate_does(tiny_model_dir):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    pad = tokenizer.pad_token_id
    distinct = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    prompts = [p for p in distinct for _ in range(4)]            # RAFT's layout: k samples of each prompt
    ids, mask = left_pad(prompts, pad)
    cache = shared_prompt_cache(model, ids, mask)
    assert cache is not None and cache.get_seq_length() == ids.shape[1] - 1
    assert shared_prompt_cache(model, *left_pad(distinct, pad)) is None      # nothing repeats: nothing shared
    plain = _sampled(model, prompts, pad, seed=5)
    assert _sampled(model, prompts, pad, seed=5, cache=cache) == plain
    assert len({tuple(r) for r in plain}) > 3                     # really sampled: the repeats differ
    greedy = SamplingSettings(max_new_tokens=10, greedy=True, eos_token_ids=[pad], pad_token_id=pad)
    assert HFGenerator(model).generate(prompts, greedy) == _generate(model, prompts, 10, [pad], pad)


@pytest.mark.parametrize("warp", [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.7, top_k=0, top_p=0.9),
                                  dict(temperature=1.3, top_k=20, top_p=1.0)])
def test_sampling_draws_what_generate_draws_at_the_same_seed(tiny_model_dir, warp):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    pad = tokenizer.pad_token_id
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS for _ in range(2)]
    ids, mask = left_pad(prompts, pad)

    def generate(eos, seed=3):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad,
                             do_sample=True, repetition_penalty=1.0, **warp)
        return [trim_response(r, eos, pad) for r in out[:, ids.shape[1]:].tolist()]

    def compacted(eos, seed=3):
        torch.manual_seed(seed)
        rows = compacted_decode(model, ids, mask, 12, eos, sampling_processors(**warp), sample=True)
        return [trim_response(r, eos, pad) for r in rows]

    never = [tokenizer.vocab_size + 7]                    # no row ends: every draw is generate's
    assert compacted(never) == generate(never)
    free = generate(never)
    eos = sorted({free[0][3], free[5][7]})
    expected, got = generate(eos), compacted(eos)
    assert sum(a[-1] in eos for a in expected) >= 2       # rows ended early, and the draws stayed generate's
    assert got == expected
    settings = SamplingSettings(max_new_tokens=12, eos_token_ids=eos, pad_token_id=pad, **warp)
    torch.manual_seed(3)
    assert HFGenerator(model).generate(prompts, settings) == got
