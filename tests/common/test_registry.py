import pytest

from common.registry import ModelRegistry, RegistryError, UnknownVersion


def _model(tmp_path, name, payload="w"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_text(payload)
    return d


def test_publish_assigns_increasing_never_reused_ids(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    v0 = reg.publish(_model(tmp_path, "a"), {"parent": None})
    v1 = reg.publish(_model(tmp_path, "b"), {"parent": v0})
    assert (v0, v1) == ("v0", "v1")
    assert reg.metadata(v1)["parent"] == "v0"
    # a version removed by hand does not give its name back
    import shutil
    shutil.rmtree(reg.root / "v1")
    assert reg.publish(_model(tmp_path, "c")) == "v2"
    assert reg.versions() == ["v0", "v2"]


def test_published_folder_is_a_copy_not_the_source(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    src = _model(tmp_path, "a", payload="original")
    v = reg.publish(src)
    assert (reg.path(v) / "model.safetensors").read_text() == "original"
    assert src.exists()
    moved = _model(tmp_path, "m")
    v2 = reg.publish(moved, move=True)
    assert not moved.exists() and (reg.path(v2) / "config.json").exists()


def test_half_written_publish_is_invisible_and_cleaned(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    # what a worker killed mid-publish leaves behind
    partial = reg.root / ".tmp-v0-deadbeef"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    assert reg.versions() == []
    with pytest.raises(UnknownVersion):
        reg.path("v0")
    assert reg.cleanup_partial() == [".tmp-v0-deadbeef"]
    # that name never became visible, so handing it out now reuses nothing anyone saw
    assert reg.publish(_model(tmp_path, "a")) == "v0"
    assert reg.versions() == ["v0"]


def test_current_pointer_and_rollback_walk_back(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    for i in range(4):
        reg.publish(_model(tmp_path, f"m{i}"))
    assert reg.current() is None
    with pytest.raises(RegistryError):
        reg.rollback_target()
    for v in ["v0", "v1", "v2", "v3"]:
        reg.set_current(v)
    assert reg.current() == "v3"
    assert reg.rollback_target() == "v2"
    reg.set_current("v2", reason="rollback")
    assert reg.rollback_target() == "v1"   # a second rollback steps further back, no toggling
    reg.set_current("v1", reason="rollback")
    assert reg.rollback_target() == "v0"
    history = reg.deploy_history()
    assert [h["version"] for h in history] == ["v0", "v1", "v2", "v3", "v2", "v1"]
    with pytest.raises(UnknownVersion):
        reg.set_current("v9")
    with pytest.raises(UnknownVersion):
        reg.set_current("../etc")


def test_publish_rejects_non_model_folder(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="not a model folder"):
        reg.publish(tmp_path / "empty")


def test_pseudonymise_is_stable_and_keyed(tmp_path):
    from common.settings import Settings
    a = Settings(data_dir=tmp_path)
    b = Settings(data_dir=tmp_path)
    assert a.pseudonymise("alice") == b.pseudonymise("alice") != a.pseudonymise("bob")
    assert "alice" not in a.pseudonymise("alice")
    assert a.pseudonymise(None) is None
    other = Settings(data_dir=tmp_path, user_hmac_key="k2")
    assert other.pseudonymise("alice") != a.pseudonymise("alice")


def test_prefixes_sharing_a_root_never_see_each_others_ids(tmp_path):
    root = tmp_path / "shared"
    pol = ModelRegistry(root)
    rms = ModelRegistry(root, prefix="rm")
    assert pol.publish(_model(tmp_path, "p0")) == "v0"
    assert pol.publish(_model(tmp_path, "p1")) == "v1"
    assert rms.publish(_model(tmp_path, "r0")) == "rm0"   # v0/v1 and their ledger lines ignored
    assert pol.publish(_model(tmp_path, "p2")) == "v2"    # rm0's ledger line ignored
    assert pol.versions() == ["v0", "v1", "v2"]
    assert rms.versions() == ["rm0"]
    assert rms.exists("rm0") and not rms.exists("v0") and not pol.exists("rm0")
    with pytest.raises(UnknownVersion):
        rms.path("v1")
    # a half-written rm publish is rm's to clean, not the policy registry's
    (root / ".tmp-rm1-deadbeef").mkdir()
    assert pol.cleanup_partial() == []
    assert rms.cleanup_partial() == [".tmp-rm1-deadbeef"]


def test_latest_is_the_newest_published_id(tmp_path):
    reg = ModelRegistry(tmp_path / "critics", prefix="critic")
    assert reg.latest() is None
    for i in range(11):
        reg.publish(_model(tmp_path, f"c{i}"))
    # numeric order, not string order: critic10 is newer than critic9
    assert reg.latest() == "critic10"
    (reg.root / ".tmp-critic11-deadbeef").mkdir()        # unfinished: not published
    assert reg.latest() == "critic10"


def _registry_with(tmp_path, n, prefix="v"):
    reg = ModelRegistry(tmp_path / "reg", prefix=prefix)
    for i in range(n):
        reg.publish(_model(tmp_path, f"src{i}"), {"i": i})
    return reg


def _gc_lines(reg):
    import json
    return [json.loads(line) for line in (reg.root / "gc.jsonl").read_text().splitlines()]


def test_gc_spares_current_protected_and_newest(tmp_path):
    reg = _registry_with(tmp_path, 7)        # v0..v6
    reg.set_current("v1")
    deleted = reg.collect_garbage(keep_last=2, protected={"v3"}, deletable=lambda m: True)
    # v1 current, v3 protected, v5/v6 newest two; v0, v2, v4 go
    assert deleted == ["v0", "v2", "v4"]
    assert reg.versions() == ["v1", "v3", "v5", "v6"]
    assert not (reg.root / "v0").exists()
    assert [e["id"] for e in _gc_lines(reg)] == ["v0", "v2", "v4"]
    assert all(e["reason"] == "gc" and e["time"] > 0 for e in _gc_lines(reg))
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]


def test_gc_asks_deletable_with_the_metadata(tmp_path):
    reg = _registry_with(tmp_path, 5)        # metadata {"i": 0..4}
    deleted = reg.collect_garbage(keep_last=0, protected=set(),
                                  deletable=lambda m: m["i"] % 2 == 1, reason="odd")
    assert deleted == ["v1", "v3"]
    assert reg.versions() == ["v0", "v2", "v4"]
    assert [(e["id"], e["reason"]) for e in _gc_lines(reg)] == [("v1", "odd"), ("v3", "odd")]


def test_gc_negative_keep_keeps_everything_and_large_keep_keeps_all(tmp_path):
    reg = _registry_with(tmp_path, 3)
    assert reg.collect_garbage(keep_last=-1, protected=set(), deletable=lambda m: True) == []
    assert reg.collect_garbage(keep_last=10, protected=set(), deletable=lambda m: True) == []
    assert reg.versions() == ["v0", "v1", "v2"]
    assert not (reg.root / "gc.jsonl").exists()


def test_gc_deleted_ids_are_never_reused(tmp_path):
    reg = _registry_with(tmp_path, 3, prefix="rm")      # rm0..rm2
    # keep_last=0 lets even the newest go: its number must still not come back
    assert reg.collect_garbage(keep_last=0, protected=set(), deletable=lambda m: True) == [
        "rm0", "rm1", "rm2"]
    assert reg.versions() == [] and reg.latest() is None
    assert reg.publish(_model(tmp_path, "next")) == "rm3"


def test_gc_pins_numbers_of_versions_missing_from_the_ledger(tmp_path):
    reg = _registry_with(tmp_path, 2)                    # v0, v1
    (reg.root / "ledger.txt").unlink()                   # e.g. folders copied in by hand
    assert reg.collect_garbage(keep_last=0, protected=set(), deletable=lambda m: True) == [
        "v0", "v1"]
    assert reg.publish(_model(tmp_path, "next")) == "v2"
