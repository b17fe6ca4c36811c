"""A decoding default written into a model folder's generation_config.json reaches every greedy answer
the system judges (HF `generate`, as the gate, the report and RAFT's loop check call it), survives
training's save, never touches the source folder it was copied from, and stays out of sampled
training rollouts (PPO/RAFT sample from π itself)."""
import json
from collections import Counter

from common.generation_defaults import generation_defaults, with_generation_defaults
from trainer.data import PromptItem
from trainer.evaluate import generate_finished
from trainer.modeling import load_causal_lm

PROMPTS = [PromptItem([{"role": "user", "content": f"tell me about topic {i} please"}]) for i in range(6)]


def repeats(text: str) -> int:
    """How many tokens of the answer repeat an earlier one."""
    return sum(c - 1 for c in Counter(text.split()).values())


def test_copy_carries_the_default_and_leaves_the_source_alone(tiny_model_dir, tmp_path):
    before = (tiny_model_dir / "generation_config.json").read_text()
    out = with_generation_defaults(tiny_model_dir, tmp_path / "m", repetition_penalty=1.3)
    assert generation_defaults(out)["repetition_penalty"] == 1.3
    # the rest of the model's generation config is kept
    assert generation_defaults(out)["eos_token_id"] == generation_defaults(tiny_model_dir)["eos_token_id"]
    # the config was written as a new file: the hard-linked source is unchanged
    assert (tiny_model_dir / "generation_config.json").read_text() == before
    assert "repetition_penalty" not in json.loads(before)
    # the weights are shared, not copied
    weights = next(tiny_model_dir.glob("*.safetensors"))
    assert (out / weights.name).stat().st_ino == weights.stat().st_ino
    # an existing copy is replaced
    again = with_generation_defaults(tiny_model_dir, tmp_path / "m", repetition_penalty=1.1)
    assert generation_defaults(again)["repetition_penalty"] == 1.1


def test_a_model_without_a_generation_config_keeps_its_special_tokens(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"eos_token_id": 2, "bos_token_id": 1, "pad_token_id": None}))
    out = with_generation_defaults(src, tmp_path / "out", repetition_penalty=1.1)
    assert generation_defaults(out) == {"bos_token_id": 1, "eos_token_id": 2, "repetition_penalty": 1.1}
    assert not (src / "generation_config.json").exists()


def test_greedy_answers_decode_with_it_and_a_trained_save_keeps_it(tiny_model_dir, tmp_path):
    guarded = with_generation_defaults(tiny_model_dir, tmp_path / "guarded", repetition_penalty=50.0)
    plain, _ = generate_finished(tiny_model_dir, PROMPTS, max_new_tokens=24, greedy=True)
    strict, _ = generate_finished(guarded, PROMPTS, max_new_tokens=24, greedy=True)
    assert sum(map(repeats, plain)) > 0, "the random tiny model's greedy answers should repeat tokens"
    assert sum(map(repeats, strict)) < sum(map(repeats, plain))
    # what the trainer does with a version's actor: load it, save it; the default goes along
    load_causal_lm(guarded).save_pretrained(tmp_path / "trained")
    assert generation_defaults(tmp_path / "trained")["repetition_penalty"] == 50.0


def test_sampled_rollouts_ignore_it(tiny_model_dir, tmp_path):
    guarded = with_generation_defaults(tiny_model_dir, tmp_path / "guarded", repetition_penalty=50.0)
    a = generate_finished(tiny_model_dir, PROMPTS, max_new_tokens=16, greedy=False, seed=3)
    b = generate_finished(guarded, PROMPTS, max_new_tokens=16, greedy=False, seed=3)
    assert a == b


def test_vllm_serves_with_it(tiny_model_dir, tmp_path):
    """The serving side of the contract: vLLM's model config (generation_config="auto", what
    `rlhf serve` and `vllm serve` use) turns the folder's default into the default sampling
    parameters of every request that does not set it."""
    from vllm.config import ModelConfig
    guarded = with_generation_defaults(tiny_model_dir, tmp_path / "guarded", repetition_penalty=1.2)
    assert ModelConfig(model=str(guarded), dtype="float32").get_diff_sampling_param() == {"repetition_penalty": 1.2}
    assert ModelConfig(model=str(tiny_model_dir), dtype="float32").get_diff_sampling_param() == {}


def test_output_penalties_lower_only_the_answer_tokens_as_vllm_does():
    """Hand-computed: vLLM's presence/frequency arithmetic on the raw logits, answer tokens only."""
    import torch

    from trainer.rollout import OutputPenalties, output_penalties
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ids = torch.tensor([[0, 3, 1, 1, 2]])         # prompt [0, 3], answer so far [1, 1, 2]
    out = OutputPenalties(prompt_len=2, presence=1.0, frequency=0.5)(ids, scores.clone())
    # token 0 and 3 only in the prompt: untouched; token 1 twice: -1 - 2*0.5; token 2 once: -1 - 0.5
    assert out.tolist() == [[1.0, 0.0, 1.5, 4.0]]
    assert OutputPenalties(prompt_len=5, presence=1.0)(ids, scores.clone()).tolist() == scores.tolist()

    class Config:
        presence_penalty, frequency_penalty = None, 0.0
    assert len(output_penalties(Config(), 2)) == 0          # none set: nothing added to generate


def test_output_penalties_reach_greedy_answers_and_vllm(tiny_model_dir, tmp_path):
    """presence/frequency penalties in generation_config.json: HF greedy answers (gate, report) apply them
    through trainer/rollout.OutputPenalties, vLLM reads the same keys; sampled rollouts stay π's."""
    from vllm.config import ModelConfig
    guarded = with_generation_defaults(tiny_model_dir, tmp_path / "guarded", presence_penalty=1000.0)
    plain, _ = generate_finished(tiny_model_dir, PROMPTS, max_new_tokens=24, greedy=True)
    strict, _ = generate_finished(guarded, PROMPTS, max_new_tokens=24, greedy=True)
    assert sum(map(repeats, plain)) > 0
    assert sum(map(repeats, strict)) == 0        # no answer token can come twice
    assert ModelConfig(model=str(guarded), dtype="float32").get_diff_sampling_param() == {"presence_penalty": 1000.0}
    a = generate_finished(tiny_model_dir, PROMPTS, max_new_tokens=16, greedy=False, seed=3)
    assert generate_finished(guarded, PROMPTS, max_new_tokens=16, greedy=False, seed=3) == a


def test_decoding_defaults_are_checked_and_described():
    from common.generation_defaults import check_decoding, describe_decoding
    assert check_decoding({"repetition_penalty": 1.1, "presence_penalty": -0.5, "top_k": -1, "temperature": 0}) == ""
    assert "unknown decoding key 'no_repeat_ngram_size'" in check_decoding({"no_repeat_ngram_size": 3})
    assert "must be a number" in check_decoding({"presence_penalty": "1"})
    assert "must be a number" in check_decoding({"frequency_penalty": True})
    assert "out of range" in check_decoding({"repetition_penalty": 0})
    assert "out of range" in check_decoding({"presence_penalty": 2.5})
    assert "out of range" in check_decoding({"top_p": 1.5})
    assert describe_decoding({"repetition_penalty": 1.1, "presence_penalty": 1.0}) == "repetition penalty 1.1, presence penalty 1"
