"""Closing a cut-off answer at a full sentence (trainer/raft_candidates: sentence_ends, last_sentence_end,
likeliest_stop) and the weight of the EOS that closes it (trainer/rejection: closing_weights)."""
from trainer.raft_candidates import last_sentence_end


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


def test_sentence_ends_lists_every_end():
    from trainer.raft_candidates import sentence_ends
    assert sentence_ends(["A", ".", " B", " c", "!", " D"]) == [2, 5]
    assert sentence_ends(["no", " end"]) == []


def test_likeliest_stop_picks_the_end_where_the_policy_leaned_to_stop():
    from trainer.raft_candidates import likeliest_stop
    # log π(EOS | first n tokens) at n = 0..7; sentence ends after 2, 5 and 7 tokens
    stop = [-9.0, -8.0, -3.0, -7.0, -7.0, -1.5, -6.0, -2.0]
    assert likeliest_stop([2, 5, 7], stop) == 5
    assert likeliest_stop([2, 7], stop) == 7
    assert likeliest_stop([2, 5, 7], stop, min_tokens=6) == 7        # 5 keeps too little
    assert likeliest_stop([2, 5, 8], stop, min_tokens=6) is None     # 8: no logit past the answer
    assert likeliest_stop([2, 5], [-1.0, -1.0, -4.0, -1.0, -1.0, -4.0]) == 5   # a tie: the later one


def test_closing_weights_scale_only_the_closing_eos():
    import torch
    from trainer.rejection import closing_weights
    real = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    w = closing_weights([[5, 6, 0], [5, 6, 7, 0], [5, 0]], [True, False, True], 0.25, real)
    assert w.tolist() == [[1.0, 1.0, 0.25, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.25, 0.0, 0.0]]


def test_fragment_end_marks_the_token_closing_a_too_short_first_sentence():
    from trainer.raft_candidates import fragment_end
    opening = ["The", " storm", ".", " Thunder", "storms", " are", " loud", "."]
    assert fragment_end(opening, floor=3) == 3                 # "The storm." (2 words < 3): its "." is token 3
    assert fragment_end(opening, floor=2) is None              # 2 words are not under a floor of 2
    assert fragment_end(["The", " storm", "."], floor=3) is None   # the whole answer: the length clause's case
    assert fragment_end(["Thunder", "storms", " are", " loud", ".", " Yes"], floor=3) is None   # a real sentence
    assert fragment_end(["e", ".g", ".", " rain"], floor=3) is None   # no sentence end at all


def test_fragment_targets_cut_at_the_fragment_and_mark_its_closing_token():
    from types import SimpleNamespace

    from common.tiny_model import build_tokenizer
    from trainer.rejection import fragment_targets
    tok = build_tokenizer()
    usual = " ".join(["word"] * 50)                    # the prompt's usual answer: 50 words, floor 3
    fragment = tok("The sea. The capital of France is Paris.", add_special_tokens=False).input_ids
    whole = tok("The capital of France is Paris. It is sunny.", add_special_tokens=False).input_ids
    out = fragment_targets(SimpleNamespace(tokenizer=tok), [([1, 2], fragment, usual), ([1, 2], whole, usual)])
    assert len(out) == 1                                # only the answer that opens with a fragment
    prompt, response, marks = out[0]
    assert prompt == [1, 2] and tok.decode(response) == "The sea."
    assert marks == [False] * (len(response) - 1) + [True]   # the token that closed "The sea"
