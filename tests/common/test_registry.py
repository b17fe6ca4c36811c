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
