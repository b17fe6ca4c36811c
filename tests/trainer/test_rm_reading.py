"""How the RM reads texts: the frozen-trunk cache (trainer/trunk_cache.py) gives the backbone's own
outputs and gradients, refuses a model that does not take cached states unchanged, and leaves RM
training as it was; batching by length does not change scores; mean pooling is saved with the RM."""
import pytest
import torch

from tests.trainer.synthetic import AnswerSampler
from trainer.config import RMConfig
from trainer.modeling import freeze_lower_layers, load_tokenizer
from trainer.reward_model import RewardModel, by_length, train_reward_model
from trainer.trunk_cache import TrunkCache

TEXTS = ["a short one", "a much longer text that needs more tokens than the others do", "mid length text",
         "a short one"]


@pytest.fixture()
def backbone(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.padding_side = "right"
    freeze_lower_layers(model.base_model, 1)       # 2 blocks: the lower one frozen
    return model.base_model, tokenizer


def _full(backbone, tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state, \
        enc["attention_mask"]


def test_cached_top_equals_full_forward_and_trunk_runs_once_per_text(backbone):
    model, tokenizer = backbone
    cache = TrunkCache(model, tokenizer, first_trainable=1, max_length=64)
    with torch.no_grad():
        cached, mask = cache.last_hidden(TEXTS)
        full, full_mask = _full(model, tokenizer, TEXTS)
    assert torch.equal(mask.cpu(), full_mask)
    real = mask.bool()
    assert torch.allclose(cached[real], full[real], atol=1e-5)
    assert cache.trunk_passes == 3                  # the repeated text went through the trunk once
    with torch.no_grad():
        cache.last_hidden(TEXTS[::-1])
    assert cache.trunk_passes == 3                  # a second pass reads the cache only


def test_gradients_reach_the_top_block_as_in_a_full_forward(backbone):
    model, tokenizer = backbone
    cache = TrunkCache(model, tokenizer, first_trainable=1, max_length=64)

    def grads(run):
        model.zero_grad(set_to_none=True)
        hidden, mask = run()
        (hidden * mask.unsqueeze(-1)).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    via_cache = grads(lambda: cache.last_hidden(TEXTS))
    via_full = grads(lambda: _full(model, tokenizer, TEXTS))
    assert via_cache.keys() == via_full.keys() and via_cache        # top block + final norm only
    assert all(n.startswith(("layers.1.", "norm.")) for n in via_cache)
    for n in via_cache:
        assert torch.allclose(via_cache[n], via_full[n], rtol=1e-4, atol=1e-6), n


def test_a_model_that_rescales_its_inputs_embeds_is_refused(backbone):
    """Gemma multiplies embeddings by sqrt(hidden) inside forward, cached states included."""
    model, tokenizer = backbone

    def gemma_like(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            return args, {**kwargs, "inputs_embeds": kwargs["inputs_embeds"] * 8.0}
        return None

    handle = model.register_forward_pre_hook(gemma_like, with_kwargs=True)
    try:
        cache = TrunkCache(model, tokenizer, first_trainable=1, max_length=64)
        with pytest.raises(ValueError, match="differ from a full forward"):
            cache.verify(TEXTS)
    finally:
        handle.remove()


def test_rm_training_with_and_without_the_cache_agree(tiny_model_dir, tmp_path):
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=0)
    train, heldout = sampler.pairs(48, prompt_seed=1), sampler.pairs(16, prompt_seed=2)
    rated = sampler.rated(12, prompt_seed=3)
    runs = {}
    for on in (True, False):
        config = RMConfig(lr=5e-4, epochs=2, batch_size=8, trainable_layers=1, show_progress_bar=False,
                          seed=0, device="cpu", trunk_cache=on)
        runs[on] = train_reward_model(train, rated, tiny_model_dir, tmp_path / str(on), config, eval_pairs=heldout)
    assert runs[True]["trunk_cache"] == "on" and runs[False]["trunk_cache"] == "off"
    # 48 pairs (96 answers) + 12 thumbs + 16 held-out pairs (32): the verify probe's 4 texts are among them
    assert runs[True]["trunk_passes"] <= 96 + 12 + 32
    for key in ("heldout_accuracy", "train_accuracy", "reward_mean", "reward_std", "length_correlation", "final_loss"):
        assert runs[True][key] == pytest.approx(runs[False][key], rel=1e-3, abs=1e-4), key
    a = RewardModel.load(tmp_path / "True").score([p.messages for p in heldout], [p.chosen for p in heldout])
    b = RewardModel.load(tmp_path / "False").score([p.messages for p in heldout], [p.chosen for p in heldout])
    assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_by_length_batches_longest_first_and_covers_every_index():
    texts = ["aa", "a", "aaaa", "aaa", "aaaaa"]
    assert by_length(texts, 2) == [[4, 2], [3, 0], [1]]


def test_scores_do_not_depend_on_the_batching_order(trained_rm):
    out, _, heldout, _ = trained_rm
    rm = RewardModel.load(out)
    messages, answers = [p.messages for p in heldout[:12]], [p.chosen for p in heldout[:12]]
    together = rm.score(messages, answers)
    alone = [rm.score([m], [a])[0] for m, a in zip(messages, answers)]
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-5)


def test_mean_pooling_is_saved_with_the_rm_and_scores_as_trained(tiny_model_dir, tmp_path):
    """RMConfig.pooling="mean": the head reads the mean of the tokens' states, and a loaded RM
    (config.json) pools the same way, so its scores equal those measured at training time."""
    sampler = AnswerSampler(load_tokenizer(tiny_model_dir), seed=0)
    train, heldout = sampler.pairs(24, prompt_seed=1), sampler.pairs(12, prompt_seed=2)
    config = RMConfig(lr=5e-4, epochs=1, batch_size=8, show_progress_bar=False, seed=0, device="cpu",
                      pooling="mean")
    metrics = train_reward_model(train, None, tiny_model_dir, tmp_path / "rm", config, eval_pairs=heldout)
    rm = RewardModel.load(tmp_path / "rm")
    assert rm.model.config.rm_pooling == "mean"
    rc = rm.score([p.messages for p in heldout], [p.chosen for p in heldout])
    rr = rm.score([p.messages for p in heldout], [p.rejected for p in heldout])
    assert metrics["heldout_accuracy"] == pytest.approx(sum(c > r for c, r in zip(rc, rr)) / len(heldout))
    # the same weights read as "last" give other scores: the pooling is really what was saved
    rm.model.config.rm_pooling = "last"
    assert rm.score([heldout[0].messages], [heldout[0].chosen]) != pytest.approx(rc[:1], abs=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        train_reward_model(train, None, tiny_model_dir, tmp_path / "x", RMConfig(pooling="max", device="cpu"))
