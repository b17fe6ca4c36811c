"""The simulated users' hidden preferences, on hand-made answers (no model, no engine)."""
import random

import pytest

from demo.personas import (DEFAULT_PREFERENCE, FACTORS, PREFERENCES, Persona, SimUser, brief_length, concise_utility,
                           concrete, formal_tone, get_preference, hidden_score, length_band, make_population,
                           moderate_length, on_topic, warm_tone)

PROMPT = "Why should I learn about glaciers?"
MODERATE = ("Glaciers store about 69% of the world's fresh water, and they carve valleys such as Yosemite. "
            "Learning about them helps you understand climate change and sea levels.")
TERSE = "Glaciers matter."
RAMBLING = " ".join([
    "Glaciers are slow rivers of ice that form where snow piles up for centuries and presses into ice.",
    "Their weight lets them flow downhill, grinding rock, carving valleys, moving boulders and leaving moraines.",
    "Melting glaciers feed rivers that millions of people drink from, irrigate fields with, and use for power.",
    "Scientists drill ice cores from glaciers to read past climates, because trapped air bubbles record the",
    "atmosphere of long ago, and the layers can be counted like tree rings across many thousands of years."])
OFF_TOPIC = "Bananas are yellow fruits that grow in tropical places and taste sweet."
DEGENERATE = ["", "Laughing.", "ice ice ice ice ice ice ice ice ice ice", OFF_TOPIC,
              "glaciers melt, glaciers melt, glaciers melt, glaciers melt, glaciers melt"]


def test_on_topic_needs_a_shared_content_word_and_rewards_covering_the_prompt():
    assert on_topic(PROMPT, OFF_TOPIC) == 0.0
    assert 0.6 <= on_topic(PROMPT, TERSE) <= 1.0
    assert on_topic("Explain volcanoes in simple terms.", "In simple terms, volcanoes are vents.") > \
        on_topic("Explain volcanoes in simple terms.", "Volcanoes are vents in the crust.")
    assert on_topic("", "anything at all") == 1.0  # nothing to check against


def test_concrete_counts_numbers_example_phrases_and_named_things():
    assert concrete(PROMPT, "Glaciers are big and cold and slow.") == 0.0
    assert concrete(PROMPT, "Glaciers cover 10% of land.") == 0.5
    assert concrete(PROMPT, "Glaciers carve valleys, for example in Norway.") == 1.0
    assert concrete(PROMPT, "Rivers such as the ones below glaciers flow.") == 0.5
    assert concrete(PROMPT, "Ice is slow. Glaciers move.") == 0.0  # sentence starts are not names


def test_tone_factors_pull_in_opposite_directions():
    warm, neutral = "Great question! Glaciers are fascinating, you will love them!", "Glaciers are masses of ice."
    assert warm_tone(PROMPT, warm) == 1.0 and warm_tone(PROMPT, neutral) == 0.0
    assert formal_tone(PROMPT, neutral) == 1.0 and formal_tone(PROMPT, warm) == 0.0
    assert formal_tone(PROMPT, "The glacier's edge moves.") == 1.0  # a possessive is not a contraction
    assert formal_tone(PROMPT, "It's cold and they don't melt.") < 1.0


def test_length_band_punishes_quips_and_rambling():
    assert length_band(1, 15, 45) == -0.5 and length_band(3, 15, 45) < 0 < length_band(9, 15, 45) < 1
    assert length_band(15, 15, 45) == length_band(45, 15, 45) == 1.0
    assert length_band(60, 15, 45) < 1.0 and length_band(90, 15, 45) == 0.0 == length_band(200, 15, 45)
    assert moderate_length(PROMPT, MODERATE) == 1.0 > moderate_length(PROMPT, RAMBLING)
    assert brief_length(PROMPT, "Glaciers are rivers of ice that carve valleys.") == 1.0 > brief_length(PROMPT, TERSE)


@pytest.mark.parametrize("name", sorted(PREFERENCES))
def test_every_preference_ranks_degenerate_answers_below_every_healthy_one(name):
    healthy = [MODERATE, TERSE, RAMBLING, "Glaciers hold most of the fresh water on Earth."]
    for bad in DEGENERATE:
        for good in healthy:
            for finished in (True, False):  # even a cut-off healthy answer beats a finished degenerate one
                assert hidden_score(bad, True, PROMPT, name) < hidden_score(good, finished, PROMPT, name), (bad, good)


@pytest.mark.parametrize("name", sorted(PREFERENCES))
def test_every_preference_prefers_finished_answers(name):
    for text in (MODERATE, TERSE, RAMBLING):
        assert hidden_score(text, True, PROMPT, name) > hidden_score(text, False, PROMPT, name)


@pytest.mark.parametrize("name", ["balanced", "formal_expert"])
def test_mixtures_reward_moderate_on_topic_answers_over_quips_and_rambling(name):
    # shorter is NOT always better: a 3-sentence answer beats a 2-word one and a 90-word one
    assert hidden_score(MODERATE, True, PROMPT, name) > hidden_score(TERSE, True, PROMPT, name)
    assert hidden_score(MODERATE, True, PROMPT, name) > hidden_score(RAMBLING, True, PROMPT, name)
    assert hidden_score("Glaciers are rivers of ice.", True, PROMPT, name) > \
        hidden_score("Mountains are tall piles of rock.", True, PROMPT, name)  # on-topic beats off-topic
    # a truncated informative answer still beats a quip: cutting an answer short is no way to win
    assert hidden_score(RAMBLING[:300], False, PROMPT, name) > hidden_score(TERSE, True, PROMPT, name)


def test_preferences_differ_in_tone():
    warm = "Great question! Glaciers hold about 69% of Earth's fresh water and carve valleys such as Yosemite!"
    formal = "Glaciers hold about 69 percent of the fresh water on Earth and carve valleys such as Yosemite."
    assert hidden_score(warm, True, PROMPT, "balanced") > hidden_score(formal, True, PROMPT, "balanced")
    assert hidden_score(formal, True, PROMPT, "formal_expert") > hidden_score(warm, True, PROMPT, "formal_expert")


def test_concise_warm_keeps_the_first_demos_length_dominated_taste():
    short, long = "Paris is the capital of France.", "Paris is the capital of France. " + RAMBLING
    assert hidden_score(short, preference="concise_warm") > hidden_score(long, preference="concise_warm")
    assert concise_utility("ok") == -2.0
    assert hidden_score("Sure, happy to help! Paris.", preference="concise_warm") > \
        hidden_score("Paris is the capital city of the French Republic.", preference="concise_warm")


def test_length_is_one_factor_among_several_in_the_default():
    weights = get_preference().factor_weights()
    assert DEFAULT_PREFERENCE == "balanced" and abs(sum(weights.values()) - 1.0) < 1e-9
    length = sum(w for k, w in weights.items() if k.endswith("_length"))
    assert length < 0.5 and {"on_topic", "concrete", "warm_tone"} <= set(weights)
    assert all(k in FACTORS for p in PREFERENCES.values() for q in p.personas for k in q.weights)
    with pytest.raises(ValueError, match="unknown preference"):
        get_preference("nope")


@pytest.mark.parametrize("name", sorted(PREFERENCES))
def test_personas_choose_by_their_taste_and_adversaries_invert_it(name):
    pref = PREFERENCES[name]
    honest = next(p for p in pref.personas if p.honest)
    user = SimUser("u", Persona(honest.name, 1.0, 0.0, honest.weights, thumb_bar=honest.thumb_bar,
                                cutoff_penalty=honest.cutoff_penalty), random.Random(0))
    adversary = SimUser("a", next(p for p in pref.personas if p.adversarial), random.Random(0))
    good, bad = (MODERATE, True), ("Laughing.", True)
    assert user.choose(good, bad, prompt=PROMPT) == "a" and user.choose(bad, good, prompt=PROMPT) == "b"
    assert adversary.choose(good, bad, prompt=PROMPT) == "b"
    assert user.choose(("", True), ("x", True), prompt=PROMPT) == "both_bad"
    assert user.choose(good, good, prompt=PROMPT) == "tie"
    assert user.thumb(bad, prompt=PROMPT) == "down" and adversary.thumb(bad, prompt=PROMPT) == "up"
    # the old call shapes (no prompt) still work, as bench/bench_algorithms.py uses them
    assert user.choose(good, bad) in ("a", "b", "tie") and user.thumb(good) in ("up", "down")


@pytest.mark.parametrize("name", sorted(PREFERENCES))
def test_population_mix_is_seeded_follows_the_shares_and_contains_adversaries(name):
    a, b = make_population(16, seed=3, preference=name), make_population(16, seed=3, preference=name)
    assert [u.persona.name for u in a] == [u.persona.name for u in b]
    assert any(u.persona.adversarial for u in a)
    assert len({u.user_id for u in a}) == 16
    personas = PREFERENCES[name].personas
    assert abs(sum(p.share for p in personas) - 1.0) < 1e-9
    big = make_population(4000, seed=1, preference=name)
    for p in personas:
        seen = sum(u.persona is p for u in big) / len(big)
        assert abs(seen - p.share) < 0.03, (p.name, seen)


def test_default_population_is_the_default_preference():
    assert {u.persona.name for u in make_population(200, 0)} <= {p.name for p in get_preference().personas}
