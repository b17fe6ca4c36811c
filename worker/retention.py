"""Retention of what the pipeline leaves on disk: snapshot files, work folders, old versions.

Each has its own setting (common/settings.py, "faults, retention, erasure" block); 0 / < 0 keep
for ever. Run by every pipeline run: files and folders at the snapshot step, versions after a
publish (next to the artifact garbage collection, which then drops the reward models and
critics only the deleted versions referenced).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from common import artifacts
from common.registry import RegistryError


def prune_files(settings, keep_run: str | None = None) -> dict[str, list[str]]:
    """Delete snapshot files and work folders older than their retention; never `keep_run`'s."""
    now = time.time()
    out: dict[str, list[str]] = {"snapshots": [], "work": []}
    days = settings.snapshot_retention_days
    snap_dir = Path(settings.snapshots_dir)
    if days and days > 0 and snap_dir.exists():
        for p in sorted(snap_dir.glob("*.jsonl")):
            run = p.stem.rsplit("-", 1)[0]
            if run != keep_run and now - p.stat().st_mtime > days * 86400:
                p.unlink(missing_ok=True)
                out["snapshots"].append(p.name)
    days = settings.work_retention_days
    work_root = Path(settings.data_dir) / "work"
    if days and days > 0 and work_root.exists():
        for p in sorted(work_root.iterdir()):
            if p.name != keep_run and p.is_dir() and now - p.stat().st_mtime > days * 86400:
                shutil.rmtree(p, ignore_errors=True)
                out["work"].append(p.name)
    return out


def prune_versions(settings) -> list[str]:
    """Keep the newest `versions_keep` policy versions plus the served one, the anchor and the
    rollback target; delete the rest (ids are never reused: the registry's ledger)."""
    keep = settings.versions_keep
    if keep is None or keep < 0:
        return []
    reg = artifacts.policies(settings)
    protected = {reg.current(), artifacts.anchor_version(settings, reg)}
    try:
        protected.add(reg.rollback_target())
    except RegistryError:
        pass
    protected.discard(None)
    return reg.collect_garbage(keep, protected, lambda meta: True, reason="retention")
