"""Surface features and the bag of words of the embedding RM (trainer/text_features.py): each
feature on hand-computed values, and an RM that uses them learns a cue of *how* an answer is
written on prompts it never saw, and scores the same after loading."""
import pytest
import torch

from trainer import embedding_rm as er
from trainer.config import RMConfig
from trainer.data import PreferencePair
from trainer.reward_model import RewardModel, train_reward_model
from trainer.text_features import SURFACE_NAMES, Vocabulary, surface_features, surface_matrix


def _named(prompt: str, answer: str) -> dict:
    return dict(zip(SURFACE_NAMES, surface_features(prompt, answer)))


def test_each_surface_feature_on_known_values():
    f = _named("Why do glaciers move?",
               "Glaciers slide on meltwater! In Alaska, 2 of them move 10 m a day. Isn't that fast? I think so.")
    # prompt content stems {glaci}; "move" is 4 letters and not a stop word: {glaci, move}
    assert f["prompt_coverage"] == 1.0 and f["prompt_overlap_any"] == 1.0
    assert f["numbers"] == pytest.approx(2 / 3)          # "2", "10"
    assert f["names"] == pytest.approx(1 / 3)            # "Alaska" (sentence starts and "I" do not count)
    assert f["exclamations"] == pytest.approx(1 / 3) and f["questions"] == pytest.approx(1 / 3)
    assert f["contractions"] == pytest.approx(1 / 3)     # "Isn't"
    assert f["first_person"] == pytest.approx(1 / 3) and f["second_person"] == 0.0
    assert f["ends_sentence"] == 1.0 and f["repeated_bigrams"] == 0.0
    assert f["emoji"] == 0.0 and f["list_items"] == 0.0 and f["markdown"] == 0.0

    g = _named("Why do glaciers move?", "- **Gravity** pulls\n- ice melts\n- the the the the the the")
    assert g["list_items"] == 1.0 and g["markdown"] == pytest.approx(1 / 3)
    assert g["prompt_coverage"] == 0.0 and g["prompt_overlap_any"] == 0.0   # nothing of what was asked
    assert g["repeated_bigrams"] > 0.5 and g["ends_sentence"] == 0.0
    assert all(0.0 <= v <= 1.0 for v in list(f.values()) + list(g.values()))


def test_surface_features_are_not_a_length():
    # shares and counts capped at 3 (commas 6): past a few sentences, saying more buys nothing
    one = "It rains often in Wales, about 150 days a year!"
    three, ten = (surface_features("rain", " ".join([one] * k)) for k in (6, 20))
    assert three == ten
    assert surface_matrix([], []).shape == (0, len(SURFACE_NAMES))


def test_vocabulary_keeps_words_seen_often_enough_most_frequent_first():
    vocab = Vocabulary.fit(["The cat sat.", "the dog sat", "THE end", "a cat"], min_df=2, max_words=2)
    assert vocab.words == ["the", "cat"]                 # df 3, then ties by name: cat (2) before sat (2)
    assert vocab.matrix(["Cat and cat", "nothing"]).tolist() == [[0.0, 1.0], [0.0, 0.0]]


TOPICS = ["volcanoes", "glaciers", "bees", "the moon", "rainbows", "chess", "bread", "whales", "deserts",
          "the heart", "bicycles", "coffee", "earthquakes", "penguins", "lightning", "tomatoes", "owls", "rust",
          "tea", "snow", "sharks", "maps", "clouds", "tides"]


def _pair(i: int) -> PreferencePair:
    # the same plain sentence, with and without a number in it: users prefer the one with a figure
    topic = TOPICS[i]
    plain = f"People have studied {topic} for a long time and still find them interesting."
    figure = f"People have studied {topic} for {100 + 37 * i} years and still find them interesting."
    return PreferencePair([{"role": "user", "content": f"Tell me about {topic}."}], figure, plain)


def test_rm_with_surface_features_learns_a_written_cue_on_unseen_prompts(tmp_path):
    torch.set_num_threads(2)
    train, heldout = [_pair(i) for i in range(16)], [_pair(i) for i in range(16, len(TOPICS))]
    config = RMConfig(kind="embedding", embedding_components=4, embedding_cv_folds=4, embedding_surface=True,
                      embedding_vocab=50, embedding_vocab_min_df=2)
    metrics = train_reward_model(train, [], "unused-base", tmp_path / "rm", config, eval_pairs=heldout)
    assert metrics["heldout_accuracy"] == 1.0, metrics
    assert metrics["feature_weights"]["numbers"] > 0                  # the cue, by name
    assert set(metrics["feature_weights"]) == {"prompt_cosine", "finished", *SURFACE_NAMES}
    rm = RewardModel.load(tmp_path / "rm")
    assert isinstance(rm, er.EmbeddingRewardModel) and rm.head.surface and rm.head.vocab is not None
    rc = rm.score([p.messages for p in heldout], [p.chosen for p in heldout])
    rr = rm.score([p.messages for p in heldout], [p.rejected for p in heldout])
    assert all(c > r for c, r in zip(rc, rr))                         # loaded = trained: same features
