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


def _record(path, prompts, answers, budget: int) -> None:
    from trainer.data import prompt_messages
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(budget): {json.dumps(prompt_messages(p), sort_keys=True): [a, True]
                                              for p, a in zip(prompts, answers)}}))


def test_degeneracy_only_prompts_catch_a_loop_the_judged_prompts_do_not_show(tiny_model_dir, tmp_path):
    """Settings.gate_degeneracy_prompts: a candidate whose judged gate answers are all healthy but which
    loops on one more prompt of the operator's set is refused when the served version does not loop
    there, and passes that check when the served version has as many degenerate answers there (never
    more degenerate than what is served); without the extra prompts nothing is checked there."""
    import shutil

    from worker.gate import degeneracy_prompt_set, run_gate
    torch.set_num_threads(2)
    settings = Settings(data_dir=tmp_path / "data", gate_max_new_tokens=8)
    probe = PromptItem([{"role": "user", "content": settings.probe_prompt}])
    judged, extra = _prompts(3), [PromptItem([{"role": "user", "content": f"Tell me about river {i}."}]) for i in range(2)]
    healthy = [f"Topic {i} is a broad subject that people study in school and write books about." for i in range(3)]
    rivers = [f"River {i} flows through a green valley past old mills and into the sea." for i in range(2)]
    loop = "River 1 is a river, a river is a river, a river is a river, a river is a river."
    candidate = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, candidate)
    everything = [probe] + judged + extra
    paris = "The capital of France is Paris, a city on the river Seine."
    _record(candidate / ANSWERS_FILE, everything, [paris] + healthy + [rivers[0], loop], 8)
    _record(answers_cache(settings, tiny_model_dir), everything, [paris] + healthy + rivers, 8)

    assert degeneracy_prompt_set(judged, judged[:1] + extra, 5) == extra     # judged ones are not repeated
    assert degeneracy_prompt_set(judged, extra, 1) == extra[:1]
    plain = run_gate(candidate, tiny_model_dir, tiny_model_dir, judged, settings)
    assert plain["metrics"]["degenerate_answers"] == 0 and plain["metrics"]["degeneracy_prompts"] == 4
    assert not any("degenerate" in r for r in plain["reasons"])
    wider = run_gate(candidate, tiny_model_dir, tiny_model_dir, judged, settings, degeneracy_only=extra)
    m = wider["metrics"]
    assert m["gate_prompts"] == 4 and m["degeneracy_prompts"] == 6 and m["degeneracy_only_prompts"] == 2
    assert m["degenerate_answers"] == 0 and m["degenerate_answers_extra"] == 1 and m["degenerate_answers_extra_served"] == 0
    assert m["degenerate_answers_extra_new"] == 1          # the served version answers river 1 healthily
    assert m["degenerate_examples"][0]["prompt"] == "Tell me about river 1."
    assert any(r.startswith("1/2 degenerate answers on the degeneracy-only prompts, more than the served version's 0")
               for r in wider["reasons"]), wider["reasons"]

    # the served version (here the anchor) loops on river 0: one loop of the candidate's is no regression
    served_loop = "River 0 is a river, a river is a river, a river is a river, a river is a river."
    _record(answers_cache(settings, tiny_model_dir), everything, [paris] + healthy + [served_loop, rivers[1]], 8)
    level = run_gate(candidate, tiny_model_dir, tiny_model_dir, judged, settings, degeneracy_only=extra)
    assert level["metrics"]["degenerate_answers_extra"] == 1 and level["metrics"]["degenerate_answers_extra_served"] == 1
    assert level["metrics"]["degenerate_answers_extra_new"] == 1   # ... but on another prompt than the candidate's
    assert not any("degenerate" in r for r in level["reasons"]), level["reasons"]
    # both loop on river 1: nothing new
    _record(answers_cache(settings, tiny_model_dir), everything, [paris] + healthy + [rivers[0], loop], 8)
    same = run_gate(candidate, tiny_model_dir, tiny_model_dir, judged, settings, degeneracy_only=extra)
    assert same["metrics"]["degenerate_answers_extra_new"] == 0 and not same["reasons"], same["reasons"]


def test_reward_gain_is_judged_on_the_degeneracy_only_prompts_too(tiny_model_dir, tmp_path):
    """Settings.gate_judge_degeneracy_prompts: the paired reward-gain bound is taken over every prompt
    whose answers the gate decoded for both sides (judged + degeneracy-only), or over the judged ones
    alone when it is off; the recorded gain is the judges' per-prompt mean over exactly those prompts."""
    import shutil

    from trainer.config import RMConfig
    from trainer.data import PreferencePair, prompt_messages
    from trainer.reward_model import train_reward_model
    from worker.gate import judged_diffs, run_gate
    torch.set_num_threads(2)
    rm = tmp_path / "rm"
    train_reward_model([PreferencePair(prompt_messages(p), f"Topic {i} has a long history worth knowing.", "No.")
                        for i, p in enumerate(_prompts(8))], [], tiny_model_dir, rm,
                       RMConfig(lr=5e-4, epochs=1, batch_size=8, show_progress_bar=False, seed=0, device="cpu",
                                length_debias=False, num_threads=1))
    settings = Settings(data_dir=tmp_path / "data", gate_max_new_tokens=8)
    probe = PromptItem([{"role": "user", "content": settings.probe_prompt}])
    judged, extra = _prompts(3), [PromptItem([{"role": "user", "content": f"Tell me about river {i}."}]) for i in range(3)]
    everything = [probe] + judged + extra
    new = [f"Answer {i} names a river, a date and a town near the sea." for i in range(len(everything))]
    old = [f"Answer {i} is short." for i in range(len(everything))]
    candidate = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, candidate)
    _record(candidate / ANSWERS_FILE, everything, new, 8)
    _record(answers_cache(settings, tiny_model_dir), everything, old, 8)

    wide = run_gate(candidate, tiny_model_dir, tiny_model_dir, judged, settings, judges=[rm], degeneracy_only=extra)
    done = [True] * len(everything)
    expected = judged_diffs([rm], everything, (new, done), (old, done))
    assert wide["metrics"]["rm_gain_prompts"] == 7
    assert abs(wide["metrics"]["rm_gain"] - sum(expected) / 7) < 1e-6
    narrow = run_gate(candidate, tiny_model_dir, tiny_model_dir, judged,
                      Settings(data_dir=tmp_path / "data", gate_max_new_tokens=8, gate_judge_degeneracy_prompts=False),
                      judges=[rm], degeneracy_only=extra)
    assert narrow["metrics"]["rm_gain_prompts"] == 4
    assert abs(narrow["metrics"]["rm_gain"] - sum(expected[:4]) / 4) < 1e-6
