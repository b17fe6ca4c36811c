"""Closing a cut-off answer at its last full sentence (trainer/rejection.last_sentence_end)."""
from trainer.rejection import last_sentence_end


def test_last_sentence_end_takes_the_last_whole_sentence():
    pieces = ["Gl", "aciers", " are", " ice", ".", " They", " move", " slowly", "!", " For", " e", ".g", ".", " the"]
    # "e.g." is an abbreviation, not an end: the last end is "slowly!" (9 tokens)
    assert last_sentence_end(pieces) == 9


def test_list_numbers_are_not_sentence_ends_and_newlines_are():
    # "1." and "2." number a list; "cold.\n" ends a sentence inside one token
    assert last_sentence_end(["1", ".", " Ice", " is", " cold", ".\n", "2", ".", " Snow"]) == 6
    assert last_sentence_end(["v", "3", ".", "5"]) is None   # a decimal point


def test_closing_quotes_and_the_following_space():
    assert last_sentence_end(["He", " said", ' "', "hi", '."', " Then"]) == 5
    # a "." glued to the next word ("Node.js") is no sentence end
    assert last_sentence_end(["Use", " Node", ".", "js", " now"]) is None


def test_no_end_or_too_short_gives_none():
    assert last_sentence_end(["No", " end", " here"]) is None
    assert last_sentence_end(["A", ".", " B", ".", " C"], min_tokens=3) == 4
    assert last_sentence_end(["A", ".", " B", ".", " C"], min_tokens=5) is None


def test_typical_answer_is_the_median_length_sample():
    from trainer.rejection import typical_answer
    assert typical_answer(["a b c", "a", "a b c d e", "a b"]) == "a b c"   # lengths 1,2,3,5 -> index 2
    assert typical_answer(["only one"]) == "only one"
