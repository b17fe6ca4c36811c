"""Padding/alignment plumbing: the log-prob PPO computes for a response token in a padded batch must be
the one the model gives that token in an unpadded forward; generation trimming; layer freezing."""
import torch

from trainer import ppo_math as pm
from trainer.modeling import (freeze_lower_layers, left_pad, load_causal_lm, load_tokenizer,
                              position_ids_from_mask, prompt_token_ids, response_logits, right_pad)
from trainer.rollout import HFGenerator, RolloutGenerator, SamplingSettings, trim_response


def test_pad_helpers_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask = right_pad([[1], [2, 3]], pad_id=9)
    assert ids.tolist() == [[1, 9], [2, 3]] and mask.tolist() == [[1, 0], [1, 1]]


def test_trim_response():
    assert trim_response([4, 5, 2, 0, 0], eos_ids=[2], pad_id=0) == [4, 5, 2]
    assert trim_response([4, 2, 2, 2], eos_ids=[2], pad_id=2) == [4, 2]   # pad == eos (SmolLM2)
    assert trim_response([4, 5, 6], eos_ids=[2], pad_id=0) == [4, 5, 6]   # cut off: no EOS


def test_padded_batch_logprobs_match_unpadded_forward(tiny_model_dir):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    short = prompt_token_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    long = prompt_token_ids(tokenizer, [{"role": "user", "content": "What is the weather like today?"}])
    responses = [[300, 301, 302, tokenizer.eos_token_id], [310, 311]]
    p_ids, p_mask = left_pad([short, long], tokenizer.pad_token_id)
    r_ids, r_mask = right_pad(responses, tokenizer.pad_token_id)
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    with torch.no_grad():
        batched = pm.logprobs_from_logits(response_logits(model, ids, mask, r_ids.shape[1]), r_ids)
        for row, (prompt, response) in enumerate(zip([short, long], responses)):
            full = torch.tensor([prompt + response])
            logits = model(input_ids=full).logits[0, len(prompt) - 1:-1]
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
            assert torch.allclose(batched[row, :len(response)], expected, atol=1e-4)


def test_hf_generator_protocol_and_greedy_determinism(tiny_model_dir):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    gen = HFGenerator()
    assert isinstance(gen, RolloutGenerator)
    gen.sync_weights(model)
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": c}]) for c in ("Hi", "Tell me more")]
    settings = SamplingSettings(max_new_tokens=5, greedy=True, eos_token_ids=[tokenizer.eos_token_id],
                                pad_token_id=tokenizer.pad_token_id)
    first, second = gen.generate(prompts, settings), gen.generate(prompts, settings)
    assert first == second and all(1 <= len(r) <= 5 for r in first)


def test_freeze_lower_layers(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    freeze_lower_layers(model.get_decoder(), 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # top block + final norm train; the (untied) LM head is outside the backbone and trains too
    assert any(n.startswith("model.layers.1.") for n in trainable) and "model.norm.weight" in trainable
    assert all(n.startswith(("model.layers.1.", "model.norm", "lm_head")) for n in trainable), trainable


def test_freeze_all_or_too_many_layers_trains_everything(tiny_model_dir):
    for n in (None, 2, 6):
        model = load_causal_lm(tiny_model_dir)
        freeze_lower_layers(model.get_decoder(), n)
        assert all(p.requires_grad for p in model.parameters())
