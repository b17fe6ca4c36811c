"""The gate's record of greedy answers (worker/gate.py `greedy_answers`): a version's answers are
decoded once per prompt and token budget and reused by later gates — from the version's own
folder (written when it was the candidate) or from the data dir's record for folders the gate did
not write (the anchor). Tiny model, no engine."""
import json

import torch

import trainer.evaluate
from common.settings import Settings
from trainer.data import PromptItem
from trainer.evaluate import generate_finished
from worker.gate import ANSWERS_FILE, answers_cache, greedy_answers


def _prompts(n: int) -> list[PromptItem]:
    return [PromptItem([{"role": "user", "content": f"Tell me about topic {i}."}]) for i in range(n)]


def test_greedy_answers_are_recorded_and_reused(tiny_model_dir, tmp_path, monkeypatch):
    torch.set_num_threads(2)
    record = tmp_path / "record.json"
    first = greedy_answers(tiny_model_dir, _prompts(3), 8, record)
    assert first == generate_finished(tiny_model_dir, _prompts(3), 8, greedy=True)
    decoded = []
    real = trainer.evaluate.generate_finished
    monkeypatch.setattr(trainer.evaluate, "generate_finished",
                        lambda d, ps, *a, **k: decoded.append(len(ps)) or real(d, ps, *a, **k))
    again = greedy_answers(tiny_model_dir, _prompts(4), 8, record)
    assert decoded == [1]                                  # only the prompt not seen before
    assert again[0][:3] == first[0] and again[1][:3] == first[1]
    greedy_answers(tiny_model_dir, _prompts(1), 4, record)  # another token budget: decoded anew
    assert decoded == [1, 1]
    assert set(json.loads(record.read_text())) == {"8", "4"}


def test_a_folder_s_own_answers_file_is_read(tiny_model_dir, tmp_path, monkeypatch):
    # what a candidate's gate leaves in its folder is what the next gate reads for it as served
    own = tmp_path / "own.json"
    answers, finished = greedy_answers(tiny_model_dir, _prompts(2), 8, own)
    monkeypatch.setattr(trainer.evaluate, "generate_finished", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    # the same records, found as the folder's ANSWERS_FILE: nothing is decoded
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / ANSWERS_FILE).write_text(own.read_text())
    assert greedy_answers(folder, _prompts(2), 8, tmp_path / "unused.json") == (answers, finished)


def test_the_record_of_a_folder_changes_with_its_weights(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    folder = tmp_path / "v0"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    before = answers_cache(settings, folder)
    assert before == answers_cache(settings, folder) and before.parent == tmp_path / "data" / "gate_answers"
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert answers_cache(settings, folder) != before


def _pairs(n: int):
    from trainer.data import PreferencePair
    return [PreferencePair([{"role": "user", "content": f"Tell me about topic {i}."}], f"A fine answer {i}.",
                           f"No {i}", rejected_finished=bool(i % 2)) for i in range(n)]


def test_held_out_pair_log_probs_are_recorded_and_reused(tiny_model_dir, tmp_path, monkeypatch):
    """The gate's implicit preference accuracy: a folder's log-probs of the held-out answers are
    computed once; a later gate with more pairs loads the model for the new ones only, and a folder
    whose records cover every pair is not loaded at all."""
    from trainer.evaluate import LOGPROBS_FILE, implicit_preference_accuracies
    torch.set_num_threads(2)
    fresh = implicit_preference_accuracies({"p": tiny_model_dir}, tiny_model_dir, _pairs(6))
    loaded = []
    real = trainer.evaluate.load_causal_lm
    monkeypatch.setattr(trainer.evaluate, "load_causal_lm", lambda d, *a: loaded.append(str(d)) or real(d, *a))
    record = tmp_path / "record.json"
    records = {str(tiny_model_dir): record}
    assert implicit_preference_accuracies({"p": tiny_model_dir}, tiny_model_dir, _pairs(4), records=records) \
        == implicit_preference_accuracies({"p": tiny_model_dir}, tiny_model_dir, _pairs(4))
    assert len(json.loads(record.read_text())) == 8        # 4 chosen + 4 rejected answers
    loaded.clear()
    assert implicit_preference_accuracies({"p": tiny_model_dir}, tiny_model_dir, _pairs(6), records=records) == fresh
    assert loaded == [str(tiny_model_dir)] and len(json.loads(record.read_text())) == 12
    loaded.clear()
    # the records found as a folder's own LOGPROBS_FILE (what its gate left there as the candidate)
    folder = tmp_path / "version"
    folder.mkdir()
    (folder / LOGPROBS_FILE).write_text(record.read_text())
    assert implicit_preference_accuracies({"p": folder}, tiny_model_dir, _pairs(6), records=records) == fresh
    assert loaded == []
