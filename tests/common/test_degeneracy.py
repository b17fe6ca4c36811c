"""common.degeneracy: each clause on hand-made answers, and the failures the old gate let through."""
from common.degeneracy import (content_stems, degenerate_reasons, first_sentence, fragment_opening,
                               repeated_ngram_share, words)

ANCHOR = ("Glaciers are large bodies of ice that move slowly. Learning about them helps you understand "
          "climate change, sea levels and the history of the landscape around you.")
GLACIERS = "Why should I learn about glaciers?"


def test_healthy_answers_pass():
    assert degenerate_reasons("They show how the climate changed over thousands of years.", GLACIERS, ANCHOR) == []
    # concise and sharing no word with the prompt, but on the anchor's topic ("Paris")
    assert degenerate_reasons("It is Paris, of course.", "What is the capital of France?",
                              "The capital of France is Paris.") == []


def test_empty():
    assert degenerate_reasons("   \n", GLACIERS) == ["empty answer"]


def test_far_too_short_absolute_and_relative_to_anchor():
    assert degenerate_reasons("Laughing.", GLACIERS) == ["far too short (1 words)"]
    # 27-word anchor x 0.06 = 1.62 -> floor 2 words; with a 100-word anchor the floor is 6 words
    long_anchor = " ".join(["glaciers"] + ["ice"] * 99)
    assert "far too short (5 words; anchor 100)" in degenerate_reasons(
        "Glaciers hold ice for ages.", GLACIERS, long_anchor)
    assert degenerate_reasons("Glaciers hold ice for many ages.", GLACIERS, long_anchor) == []


def test_repetition_single_word_and_ngrams():
    assert repeated_ngram_share(words("a b c a b c"), 3) == 1 / 4     # abc bca cab abc: one repeat of 4
    probe = "L'Étoile, la Marseillaise, la femme au roi, la femme au roi, la femme au roi"
    reasons = degenerate_reasons(probe, "What is the capital of France?", "The capital of France is Paris.")
    assert any(r.startswith("repeated 3-grams") for r in reasons)
    assert any(r.startswith("one word repeated") for r in
               degenerate_reasons("ice ice ice ice ice ice ice glaciers", GLACIERS, ANCHOR))


def test_off_prompt():
    reasons = degenerate_reasons("Bananas grow on tall green plants everywhere.", GLACIERS, ANCHOR)
    assert reasons == ["does not address the prompt (no content word shared with it or the anchor's answer)"]
    assert content_stems("Glaciers glacier LEARNING about") == {"glaci", "learn"}


def test_plurals_of_short_words_match():
    # session 17: cut to 5 letters alone, "kites" != "kite", and this on-topic answer was judged
    # off the prompt (with no anchor answer to share a word with)
    kites = "Tell me something interesting about kites."
    assert degenerate_reasons("The kite is a marvel of aerodynamics that has captivated people.", kites) == []
    assert content_stems("kites stories classes tides") == {"kite", "story", "class", "tide"}
    assert content_stems("kite story class tide") == {"kite", "story", "class", "tide"}
    # still off the prompt when no word is shared
    assert degenerate_reasons("Bananas grow on tall green plants everywhere.", kites) != []


def test_three_letter_topics_count_and_function_words_do_not():
    # session 19: at 4+ letters the topic "sun" was invisible and this answer judged off the prompt
    sun = "Explain the sun in simple terms."
    assert degenerate_reasons("The sun is a beautiful and powerful thing.", sun) == []
    assert content_stems("the sun and the sea, not you") == {"sun", "sea"}
    # three-letter function words shared with the prompt do not make an answer relevant
    assert degenerate_reasons("You can get one for all of them, but not now.",
                              "How can you get the tea out?") != []



def test_first_sentence_ends_after_a_word_not_an_abbreviation_or_a_number():
    assert first_sentence("The sleep. Sleep is a state of rest.") == "The sleep."
    assert first_sentence("  Sure! Owls hunt at night.") == "Sure!"
    assert first_sentence('"The owls." They are great.') == '"The owls."'
    assert first_sentence("E.g. owls hunt. They fly.") == "E.g. owls hunt."
    assert first_sentence("Dr. Smith studies owls. They fly.") == "Dr. Smith studies owls."
    assert first_sentence("Step 2. comes next. Then more.") == "Step 2. comes next."
    assert first_sentence("Owls are birds") == "Owls are birds"


def test_fragment_opening_is_a_first_sentence_too_short_to_be_an_answer():
    usual = " ".join(["word"] * 45)     # the floor: max(2, 0.06 x 45 = 2.7) words, so 2 words fall short
    # the session-24 case: a kept answer opening with the topic alone
    assert fragment_opening("The sleep. Sleep is a state of rest that the body needs.", usual)
    assert fragment_opening("Great question! Owls hunt at night.", usual)
    # a short but whole first sentence is an opening, not a fragment
    assert not fragment_opening("Imagine you're at the beach. The waves roll in.", usual)
    assert not fragment_opening("Owls hunt. They fly at night.", " ".join(["word"] * 30))   # 2 >= max(2, 1.8)
    # one sentence is the whole answer, which degenerate_reasons judges ("far too short" there)
    assert not fragment_opening("The sleep.", usual)
    assert degenerate_reasons("The sleep.", "Tell me something interesting about sleep.", usual)
    # without a usual answer only the absolute floor applies
    assert fragment_opening("Sure! Owls hunt at night.")
    assert not fragment_opening("The sleep. Sleep is rest.")
