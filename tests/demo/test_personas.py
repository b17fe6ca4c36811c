import random

from demo.personas import POPULATION, SimUser, concise_utility, hidden_score, make_population


def test_hidden_score_prefers_short_finished_real_answers():
    short = "Paris is the capital of France."
    long = " ".join(["Paris is a lovely city with many museums and cafes."] * 6)
    assert hidden_score(short) > hidden_score(long)
    assert hidden_score(short, finished=True) > hidden_score(short, finished=False)
    assert hidden_score("") < hidden_score(long)          # saying nothing never wins
    assert concise_utility("ok") == -2.0
    assert hidden_score("Sure, happy to help! Paris.") > hidden_score("Paris is the capital city of the French Republic.")


def test_personas_choose_by_their_taste_and_adversaries_invert_it():
    short, long = ("Water falls as rain.", True), (" ".join(["word"] * 60), True)
    concise = SimUser("c", POPULATION[0], random.Random(0))
    concise.persona = type(POPULATION[0])("concise", 1.0, noise=0.0)
    adversary = SimUser("a", POPULATION[3], random.Random(0))
    assert concise.choose(short, long) == "a" and concise.choose(long, short) == "b"
    assert adversary.choose(short, long) == "b"
    assert concise.choose(("", True), ("x", True)) == "both_bad"
    assert concise.choose(short, short) == "tie"
    assert concise.thumb(short) == "up" and concise.thumb(long) == "down"


def test_population_mix_is_seeded_and_contains_adversaries():
    a, b = make_population(16, seed=3), make_population(16, seed=3)
    assert [u.persona.name for u in a] == [u.persona.name for u in b]
    assert any(u.persona.adversarial for u in a)
    assert len({u.user_id for u in a}) == 16
