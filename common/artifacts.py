"""Where each kind of trained artifact lives, and the garbage collection that spans them.

Policies, reward models and critics are all Hugging Face folders kept in a ``ModelRegistry``
(immutable ids, ledger, metadata); only the root and id prefix differ. A policy's metadata
names the reward model / critic it was trained with, so those stay while the policy stays.
Imports only ``common``: the server, worker and trainer all call this.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.registry import ModelRegistry, UnknownVersion


def policies(settings) -> ModelRegistry:
    return ModelRegistry(settings.models_dir)


def reward_models(settings) -> ModelRegistry:
    return ModelRegistry(Path(settings.data_dir) / "reward_models", prefix="rm")


def critics(settings) -> ModelRegistry:
    return ModelRegistry(Path(settings.data_dir) / "critics", prefix="critic")


def anchor_version(settings, reg: ModelRegistry) -> str | None:
    """The policy version used as the fixed reference: ``settings.anchor_version`` when set,
    else the first published version (the model we started from), else None."""
    pinned = getattr(settings, "anchor_version", "") or ""
    if pinned:
        if not reg.exists(pinned):
            raise UnknownVersion(f"anchor_version {pinned!r} is not a published version "
                                 f"in {reg.root} (published: {reg.versions()})")
        return pinned
    found = reg.versions()
    return found[0] if found else None


def _gate_rejected(meta: dict[str, Any]) -> bool:
    # Only an explicit failed gate: such a version was never served, so nothing can need it
    # back. Versions with no gate record (v0, hand-published) are kept.
    return (meta.get("gate") or {}).get("passed") is False


def _ref_id(value: Any) -> str | None:
    # Metadata may hold an id ("rm3") or a path to the registry folder (".../rm3"): both name
    # the same version, so compare by the last path component.
    return Path(str(value)).name if value else None


def collect_garbage(settings) -> dict[str, list[str]]:
    """Delete gate-rejected policies, then reward models and critics that no remaining policy
    names. Returns the deleted ids per kind."""
    keep = getattr(settings, "artifact_keep", 5)
    pol = policies(settings)
    protected = {pol.current(), anchor_version(settings, pol)}
    for entry in pol.deploy_history():
        protected |= {entry.get("version"), entry.get("previous")}
    protected.discard(None)
    deleted = {"policies": pol.collect_garbage(keep, protected, _gate_rejected,
                                               reason="gate-rejected")}

    # Read the references only after the policy pass, so RMs/critics of just-deleted
    # policies can go in the same run.
    remaining = [pol.metadata(v) for v in pol.versions()]
    for kind, reg, fields in (("reward_models", reward_models(settings), ("reward_model", "judge_reward_model")),
                              ("critics", critics(settings), ("critic",))):
        used = {_ref_id(meta.get(f)) for meta in remaining for f in fields} | {reg.latest()}
        used.discard(None)
        deleted[kind] = reg.collect_garbage(keep, used, lambda meta: True,
                                            reason="unreferenced")
    return deleted
