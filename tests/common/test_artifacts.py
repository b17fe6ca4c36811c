import json

import pytest

from common import artifacts
from common.registry import UnknownVersion
from common.settings import Settings


class _Settings(Settings):
    # The two fields this feature reads; declared here so the tests run whether or not
    # common.settings has them yet.
    anchor_version: str = ""
    artifact_keep: int = 5


def _model(tmp_path, name):
    d = tmp_path / "src" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def _publish(tmp_path, reg, name, meta=None):
    return reg.publish(_model(tmp_path, name), meta or {})


def test_each_kind_has_its_own_root_and_prefix(tmp_path):
    s = Settings(data_dir=tmp_path / "data")
    pol, rms, crit = artifacts.policies(s), artifacts.reward_models(s), artifacts.critics(s)
    assert pol.root == s.models_dir
    assert rms.root == tmp_path / "data" / "reward_models"
    assert crit.root == tmp_path / "data" / "critics"
    assert _publish(tmp_path, pol, "p") == "v0"
    assert _publish(tmp_path, rms, "r") == "rm0"
    assert _publish(tmp_path, crit, "c") == "critic0"


def test_anchor_defaults_to_first_published_policy(tmp_path):
    s = Settings(data_dir=tmp_path)          # no anchor_version field needed
    pol = artifacts.policies(s)
    assert artifacts.anchor_version(s, pol) is None
    for i in range(3):
        _publish(tmp_path, pol, f"p{i}")
    pol.set_current("v2")
    assert artifacts.anchor_version(s, pol) == "v0"


def test_anchor_override_and_unknown(tmp_path):
    s = _Settings(data_dir=tmp_path, anchor_version="v1")
    pol = artifacts.policies(s)
    with pytest.raises(UnknownVersion, match="anchor_version 'v1'"):
        artifacts.anchor_version(s, pol)     # nothing published yet
    _publish(tmp_path, pol, "p0")
    _publish(tmp_path, pol, "p1")
    assert artifacts.anchor_version(s, pol) == "v1"
    with pytest.raises(UnknownVersion):
        artifacts.anchor_version(_Settings(data_dir=tmp_path, anchor_version="rm0"), pol)


def _failed(**refs):
    return {"gate": {"passed": False, "reasons": ["kl"]}, **refs}


def _passed(**refs):
    return {"gate": {"passed": True, "reasons": []}, **refs}


def test_gc_removes_rejected_policies_then_their_unreferenced_rms_and_critics(tmp_path):
    s = _Settings(data_dir=tmp_path, artifact_keep=1)
    pol, rms, crit = artifacts.policies(s), artifacts.reward_models(s), artifacts.critics(s)
    for i in range(5):
        _publish(tmp_path, rms, f"r{i}")     # rm0..rm4
    for i in range(3):
        _publish(tmp_path, crit, f"c{i}")    # critic0..critic2
    _publish(tmp_path, pol, "p0", {})                                            # v0 anchor
    _publish(tmp_path, pol, "p1", _passed(reward_model="rm0", critic="critic0"))  # v1 current
    _publish(tmp_path, pol, "p2", _failed(reward_model="rm1", critic="critic1"))  # v2 goes
    # v3: rejected but force-deployed once, so rollback history may need it; refers to its
    # RM by path, as trainer metadata does
    _publish(tmp_path, pol, "p3", _failed(reward_model=str(rms.root / "rm2")))
    _publish(tmp_path, pol, "p4", _failed(reward_model="rm1"))                    # v4 goes
    _publish(tmp_path, pol, "p5", _failed(reward_model="rm3"))                    # v5 newest
    pol.set_current("v1")
    pol.set_current("v3", reason="forced")
    pol.set_current("v1", reason="rollback")

    assert artifacts.collect_garbage(s) == {
        "policies": ["v2", "v4"], "reward_models": ["rm1"], "critics": ["critic1"]}
    assert pol.versions() == ["v0", "v1", "v3", "v5"]
    assert rms.versions() == ["rm0", "rm2", "rm3", "rm4"]   # rm4: latest (and newest 1)
    assert crit.versions() == ["critic0", "critic2"]
    lines = [json.loads(x) for x in (pol.root / "gc.jsonl").read_text().splitlines()]
    assert [(e["id"], e["reason"]) for e in lines] == [("v2", "gate-rejected"),
                                                       ("v4", "gate-rejected")]
    lines = [json.loads(x) for x in (rms.root / "gc.jsonl").read_text().splitlines()]
    assert [(e["id"], e["reason"]) for e in lines] == [("rm1", "unreferenced")]
    # a second run finds nothing more, and new ids continue past the deleted ones
    assert artifacts.collect_garbage(s) == {"policies": [], "reward_models": [], "critics": []}
    assert _publish(tmp_path, pol, "p6") == "v6"
    assert _publish(tmp_path, rms, "r5") == "rm5"


def test_gc_with_keep_zero_still_spares_pinned_anchor_and_latest_rm(tmp_path):
    s = _Settings(data_dir=tmp_path, artifact_keep=0, anchor_version="v1")
    pol, rms = artifacts.policies(s), artifacts.reward_models(s)
    for i in range(3):
        _publish(tmp_path, rms, f"r{i}")                                 # rm0..rm2
    _publish(tmp_path, pol, "p0", _passed(reward_model="rm0"))          # v0 current
    _publish(tmp_path, pol, "p1", _failed(reward_model="rm1"))          # v1 pinned anchor
    _publish(tmp_path, pol, "p2", _failed(reward_model="rm1"))          # v2 goes
    pol.set_current("v0")
    assert artifacts.collect_garbage(s) == {
        "policies": ["v2"], "reward_models": [], "critics": []}
    assert rms.versions() == ["rm0", "rm1", "rm2"]   # rm2 unreferenced but the latest


def test_gc_with_default_settings_keeps_the_newest_five(tmp_path):
    s = Settings(data_dir=tmp_path)          # no artifact_keep field: default 5
    pol = artifacts.policies(s)
    _publish(tmp_path, pol, "p0")
    for i in range(1, 7):
        _publish(tmp_path, pol, f"p{i}", _failed())                      # v1..v6 rejected
    pol.set_current("v0")
    assert artifacts.collect_garbage(s)["policies"] == ["v1"]
    assert pol.versions() == ["v0", "v2", "v3", "v4", "v5", "v6"]
