"""The embedding reward model (trainer/embedding_rm.py): its maths on known values, and that it
learns a taste that transfers to prompts it never saw, the right way round when length disagrees."""
import json
import math

import pytest
import torch

from trainer import embedding_rm as er
from trainer.config import PPOConfig, RMConfig
from trainer.data import PreferencePair, PromptItem, RatedAnswer
from trainer.reward_model import RewardModel, train_reward_model

# ---- pure maths -------------------------------------------------------------------------------

def test_fit_one_pair_meets_the_optimality_condition():
    # one pair with feature difference 1: minimise softplus(-w) + l2·w², so σ(-w) = 2·l2·w (w ≈ 0.6749 at l2 0.25)
    xc, xr = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    w, _ = er.fit_linear_reward((xc, xr), torch.ones(1), torch.zeros(1), torch.zeros(0, 1), torch.zeros(0),
                                torch.zeros(0), l2=0.25, pointwise_coef=0.5)
    assert w.item() == pytest.approx(0.6749, abs=1e-3)
    assert torch.sigmoid(-w).item() == pytest.approx(2 * 0.25 * w.item(), abs=1e-5)


def test_fit_symmetric_pairs_learn_nothing_and_margin_and_weight_count():
    xa, xb = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    w, _ = er.fit_linear_reward((xa, xb), torch.ones(2), torch.zeros(2), torch.zeros(0, 1), torch.zeros(0),
                                torch.zeros(0), l2=0.1, pointwise_coef=0.5)
    assert w.abs().item() < 1e-5  # a vote each way: no direction
    w3, _ = er.fit_linear_reward((xa, xb), torch.tensor([3.0, 1.0]), torch.zeros(2), torch.zeros(0, 1),
                                 torch.zeros(0), torch.zeros(0), l2=0.1, pointwise_coef=0.5)
    assert w3.item() > 0.1        # the heavier vote wins
    wm, _ = er.fit_linear_reward((torch.tensor([[1.0]]), torch.tensor([[0.0]])), torch.ones(1), torch.tensor([2.0]),
                                 torch.zeros(0, 1), torch.zeros(0), torch.zeros(0), l2=0.25, pointwise_coef=0.5)
    assert torch.sigmoid(2.0 - wm).item() == pytest.approx(2 * 0.25 * wm.item(), abs=1e-5)  # -log σ(w - margin)


def test_sign_constrained_fit_holds_a_wrong_way_weight_at_zero():
    # feature 0 predicts the votes; feature 1 (say, repeated bigrams, sign -1) is positively associated
    # with the chosen answers in this sample: unconstrained it gets a positive weight, constrained 0
    xc = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    xr = torch.zeros(3, 2)
    args = (torch.ones(3), torch.zeros(3), torch.zeros(0, 2), torch.zeros(0), torch.zeros(0))
    calls = []

    def fit(keep):
        calls.append(keep.clone())
        w, b = er.fit_linear_reward((xc * keep, xr * keep), *args, l2=0.1, pointwise_coef=0.5)
        return w * keep, b
    free, _ = fit(torch.ones(2, dtype=torch.bool))
    assert free[1].item() > 0.1
    w, _ = er.sign_constrained_fit(fit, torch.tensor([0.0, -1.0]))
    assert w[1].item() == 0.0 and w[0].item() > free[0].item()  # feature 0 takes over what 1 explained
    assert calls[-1].tolist() == [True, False]
    calls.clear()
    w_ok, _ = er.sign_constrained_fit(fit, torch.tensor([0.0, +1.0]))  # the sign it has anyway: one fit
    assert len(calls) == 1 and w_ok[1].item() == pytest.approx(free[1].item())


def test_feature_signs_name_the_columns_the_priors_constrain():
    config = RMConfig(kind="embedding", embedding_sign_priors=True)
    n_pca, width = 4, 4 + 2 + len(er.SURFACE_NAMES) + 10
    signs = er.feature_signs(n_pca, config, width)
    names = ["prompt_cosine", "finished"] + list(er.SURFACE_NAMES)
    assert {names[i - n_pca]: signs[i].item() for i in signs.nonzero().squeeze(-1).tolist()} == \
        {"finished": 1.0, "repeated_bigrams": -1.0, "ends_sentence": 1.0}
    assert not er.feature_signs(n_pca, RMConfig(kind="embedding", embedding_sign_priors=False), width).any()


def test_fit_thumbs_only_uses_the_bias():
    # every answer thumbed up, feature uninformative (all 0): only b can fit, and it goes positive
    w, b = er.fit_linear_reward((torch.zeros(0, 1), torch.zeros(0, 1)), torch.zeros(0), torch.zeros(0),
                                torch.zeros(4, 1), torch.ones(4), torch.ones(4), l2=1.0, pointwise_coef=0.5)
    assert w.abs().item() < 1e-6 and b.item() > 2.0


def test_prompt_folds_keep_a_prompt_together():
    groups = [f"p{i % 7}" for i in range(40)]
    folds = er.prompt_folds(groups, 3, seed=1)
    for g in set(groups):
        assert len({f for f, x in zip(folds, groups) if x == g}) == 1
    assert set(folds) == {0, 1, 2}
    assert folds == er.prompt_folds(groups, 3, seed=1)  # seeded


def test_pca_basis_finds_the_line_and_caps_k():
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5
    points = torch.stack([t * direction + torch.tensor([1.0, 1.0, 1.0]) for t in (-2.0, -1.0, 0.5, 3.0)])
    mean, dirs = er.pca_basis(points, k=10)
    assert dirs.shape == (3, 3)  # k capped at n - 1
    assert torch.allclose(mean, points.mean(0))
    assert abs(float(dirs[:, 0] @ direction)) == pytest.approx(1.0, abs=1e-5)


def test_pca_basis_within_groups_finds_how_answers_to_one_prompt_differ():
    # two prompts far apart on y; within each, the answers differ by +-1 on x and +-0.5 on y
    points = torch.tensor([[-1.0, 10.0], [1.0, 10.0], [0.0, 9.5], [0.0, 10.5],
                           [-1.0, -10.0], [1.0, -10.0], [0.0, -9.5], [0.0, -10.5]])
    groups = ["a"] * 4 + ["b"] * 4
    mean, across = er.pca_basis(points, k=1)
    assert abs(float(across[1, 0])) == pytest.approx(1.0, abs=1e-5)   # raw: which prompt (y)
    mean_w, within = er.pca_basis(points, k=1, groups=groups)
    assert abs(float(within[0, 0])) == pytest.approx(1.0, abs=1e-5)   # within: how the answers differ (x)
    assert torch.allclose(mean_w, points.mean(0))                      # scoring still subtracts the overall mean


def test_prompt_text_is_the_last_user_turn():
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert er.prompt_text(msgs) == "c"
    assert er.prompt_text([{"role": "system", "content": "only"}]) == "only"


# ---- learning, on a taste no length rule can satisfy ---------------------------------------------

TOPICS = [("volcanoes", "Volcanoes erupt when magma rises through cracks in the crust."),
          ("glaciers", "Glaciers are slow rivers of ice that carve valleys."),
          ("bees", "Bees pollinate flowers and make honey in hives."),
          ("the moon", "The Moon orbits Earth every 27 days and causes tides."),
          ("rainbows", "Rainbows appear when sunlight is split by raindrops."),
          ("chess", "Chess is a board game where each player has sixteen pieces."),
          ("bread", "Bread rises because yeast produces carbon dioxide."),
          ("whales", "Whales are mammals that breathe air through blowholes."),
          ("deserts", "Deserts get very little rain and can be hot or cold."),
          ("the heart", "The heart pumps blood through the body's arteries."),
          ("bicycles", "Bicycles turn pedal power into motion with a chain."),
          ("coffee", "Coffee is brewed from roasted seeds of the coffee plant."),
          ("earthquakes", "Earthquakes happen when tectonic plates slip."),
          ("penguins", "Penguins are birds that swim but cannot fly."),
          ("lightning", "Lightning is a giant spark of static electricity."),
          ("tomatoes", "Tomatoes are fruits that grow on vines."),
          ("the piano", "The piano makes sound when hammers strike strings."),
          ("owls", "Owls hunt at night with silent feathers and sharp eyes."),
          ("rust", "Rust forms when iron reacts with oxygen and water."),
          ("tea", "Tea is made by steeping dried leaves in hot water."),
          ("snow", "Snow forms when water vapour freezes into crystals."),
          ("sharks", "Sharks are fish with skeletons made of cartilage."),
          ("maps", "Maps show places on a flat surface using a scale."),
          ("clouds", "Clouds are tiny water droplets floating in the air.")]
RAMBLE = ("Well, there are many things one could say about many things, and it really depends on how you look "
          "at it, what day it is, and what mood you are in, so let me just say that {other} is also "
          "something people sometimes talk about at length when they have the time.")


def _pair(i: int, on_topic_long: bool) -> PreferencePair:
    topic, fact = TOPICS[i]
    other = TOPICS[(i + 7) % len(TOPICS)][0]
    # the longer good answer adds a second sentence on the topic (not the first one repeated: repetition
    # is a cue of its own, which the RM's surface features rightly count against an answer)
    good = fact if not on_topic_long else fact + f" People who study {topic} keep finding new details worth knowing."
    bad = RAMBLE.format(other=other) if not on_topic_long else f"Maybe {other}."
    return PreferencePair([{"role": "user", "content": f"Tell me about {topic}."}], good, bad)


@pytest.fixture(scope="module")
def embedding_rm(tmp_path_factory):
    torch.set_num_threads(2)
    # training: the on-topic answer is always the SHORTER one (length says "shorter is better");
    # held out: unseen prompts where the on-topic answer is the LONGER one
    train = [_pair(i, on_topic_long=False) for i in range(16)]
    train += [_pair(i, on_topic_long=False) for i in range(16)]  # a second vote each
    # and users dislike a reply cut off mid-way: the same fact, finished, beats it cut
    train += [PreferencePair(p.messages, p.chosen, p.chosen[: len(p.chosen) // 2], rejected_finished=False)
              for p in train[:6]]
    heldout = [_pair(i, on_topic_long=True) for i in range(16, len(TOPICS))]
    rated = [RatedAnswer(p.messages, p.chosen, "up") for p in train[:6]]
    out = tmp_path_factory.mktemp("erm") / "rm"
    config = RMConfig(kind="embedding", embedding_components=8, embedding_cv_folds=4)
    metrics = train_reward_model(train, rated, "unused-base", out, config, eval_pairs=heldout)
    return out, metrics, heldout


def test_learns_the_taste_on_unseen_prompts_even_against_length(embedding_rm):
    out, metrics, heldout = embedding_rm
    assert metrics["kind"] == "embedding" and metrics["n_pairs"] == 38 and metrics["n_rated"] == 6
    assert metrics["train_accuracy"] == 1.0
    assert metrics["heldout_accuracy"] >= 0.85, metrics   # on-topic AND longer wins on new prompts
    assert metrics["length_weight"] is not None            # the training-only length covariate was fitted
    fw = metrics["feature_weights"]                        # the sign priors hold (on by default)
    assert fw["repeated_bigrams"] <= 0 and fw["finished"] >= 0 and fw["ends_sentence"] >= 0
    assert math.isfinite(metrics["length_correlation"]) and metrics["length_correlation_on"] == "heldout"
    assert metrics["l2"] in RMConfig().embedding_l2_grid and len(metrics["cv_losses"]) == len(RMConfig().embedding_l2_grid)
    # every training pair was also scored out of fold (by a fit that never saw its prompt), and the
    # pooled accuracy weighs those and the held-out pairs by their counts
    n_held = len(heldout)
    assert metrics["n_pooled_pairs"] == 38 + n_held and 0.0 <= metrics["cv_accuracy"] <= 1.0
    assert metrics["pooled_heldout_accuracy"] == pytest.approx(
        (metrics["cv_accuracy"] * 38 + metrics["heldout_accuracy"] * n_held) / (38 + n_held))


def test_pooled_accuracy_counts_every_pair_once():
    assert er.pooled_accuracy(30, 40, 7, 13) == pytest.approx(37 / 53)
    assert er.pooled_accuracy(None, 40, 7, 13) == pytest.approx(7 / 13)   # no cross-validation ran
    assert er.pooled_accuracy(30, 40, None, 0) == pytest.approx(30 / 40)  # no held-out pairs
    assert er.pooled_accuracy(None, 0, None, 0) is None


def test_loads_through_reward_model_and_scores_like_training(embedding_rm):
    out, metrics, heldout = embedding_rm
    assert (out / er.HEAD_FILE).exists() and not list(out.glob("*.safetensors"))  # no transformer saved
    rm = RewardModel.load(out)
    assert isinstance(rm, er.EmbeddingRewardModel)
    rc = rm.score([p.messages for p in heldout], [p.chosen for p in heldout])
    rr = rm.score([p.messages for p in heldout], [p.rejected for p in heldout])
    assert sum(c > r for c, r in zip(rc, rr)) / len(heldout) == pytest.approx(metrics["heldout_accuracy"])
    norm = rm.normalised([heldout[0].messages], [heldout[0].chosen])[0]
    assert norm == pytest.approx((rc[0] - metrics["reward_mean"]) / metrics["reward_std"], rel=1e-4)
    # the same text scores lower cut off than finished (the finished feature, learned from those pairs)
    cut = rm.score([heldout[0].messages] * 2, [heldout[0].chosen] * 2, [True, False])
    assert cut[1] < cut[0]
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["kind"] == "embedding" and stats["config"]["kind"] == "embedding"


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        train_reward_model([_pair(0, False)], [], "unused", tmp_path / "rm", RMConfig(kind="bag"))


def test_ppo_starts_its_critic_from_the_policy_with_an_embedding_rm(embedding_rm, tiny_model_dir, tmp_path):
    from trainer.policy_base import PolicyJob
    from trainer.ppo import run_ppo
    rm_dir, _, _ = embedding_rm
    job = PolicyJob(tiny_model_dir, tiny_model_dir, tmp_path / "policy", reward_model_dir=rm_dir,
                    prompts=[PromptItem([{"role": "user", "content": f"Tell me about {t}."}]) for t, _ in TOPICS[:4]])
    config = PPOConfig(steps=1, batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=8,
                       show_progress_bar=False)
    result = run_ppo(job, config)
    assert result["critic_init"] == str(tiny_model_dir)
    step = json.loads((tmp_path / "policy" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(step["reward_raw"]) and math.isfinite(step["value_loss"])
