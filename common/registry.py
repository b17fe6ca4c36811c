"""Model registry: immutable version folders plus a 'current' pointer.

Layout under ``settings.models_dir``::

    v0/ v1/ ...           one Hugging Face folder per version, never modified after publish
    v3/rlhf_version.json  metadata: parent, data snapshot, metrics, gate result
    CURRENT               the served version id (file = truth; survives a Redis restart)
    deploys.jsonl         append-only history of deploy/rollback decisions

Why folders are immutable and names never reused: vLLM's reload can return stale weights if a
path is rewritten in place (vLLM issue #32718), and rollback must give back exact old outputs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

METADATA_FILE = "rlhf_version.json"
_VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(Exception):
    pass


class UnknownVersion(RegistryError):
    pass


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- reading ----------------------------------------------------------------------
    def path(self, version: str) -> Path:
        if not _VERSION_RE.match(version or ""):
            raise UnknownVersion(f"not a version id: {version!r}")
        p = self.root / version
        if not (p / METADATA_FILE).exists():
            raise UnknownVersion(f"unknown version {version!r}")
        return p

    def exists(self, version: str) -> bool:
        try:
            self.path(version)
            return True
        except UnknownVersion:
            return False

    def metadata(self, version: str) -> dict[str, Any]:
        return json.loads((self.path(version) / METADATA_FILE).read_text())

    def versions(self) -> list[str]:
        """Published versions, oldest first (temp folders of unfinished publishes are skipped)."""
        found = []
        for p in self.root.iterdir():
            m = _VERSION_RE.match(p.name)
            if m and (p / METADATA_FILE).exists():
                found.append((int(m.group(1)), p.name))
        return [name for _, name in sorted(found)]

    def current(self) -> str | None:
        f = self.root / "CURRENT"
        return f.read_text().strip() or None if f.exists() else None

    def deploy_history(self) -> list[dict[str, Any]]:
        f = self.root / "deploys.jsonl"
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

    # ---- writing ----------------------------------------------------------------------
    def _next_number(self) -> int:
        # Count temp folders and the ledger too, so a name is never handed out twice even if
        # a version folder was removed by hand.
        nums = [-1]
        for p in self.root.iterdir():
            m = re.match(r"^\.?(?:tmp-)?v(\d+)", p.name)
            if m:
                nums.append(int(m.group(1)))
        ledger = self.root / "ledger.txt"
        if ledger.exists():
            nums += [int(x) for x in ledger.read_text().split() if x.isdigit()]
        return max(nums) + 1

    def publish(self, src_dir: str | Path, metadata: dict[str, Any] | None = None,
                move: bool = False) -> str:
        """Copy (or move) a finished model folder in as a new version; returns its id.

        Written under a temp name and renamed at the end, so a crash never leaves a folder
        that ``versions()`` would list.
        """
        src = Path(src_dir)
        if not (src / "config.json").exists():
            raise RegistryError(f"{src} is not a model folder (no config.json)")
        for _ in range(100):
            n = self._next_number()
            version = f"v{n}"
            tmp = self.root / f".tmp-v{n}-{uuid.uuid4().hex[:8]}"
            if move:
                shutil.move(str(src), tmp)
            else:
                _copy_tree_linked(src, tmp)
            meta = dict(metadata or {})
            meta.setdefault("created", time.time())
            meta["version"] = version
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
            _fsync_dir(tmp)
            try:
                os.rename(tmp, self.root / version)  # atomic; fails if the name is taken
            except OSError:
                if move:
                    shutil.move(str(tmp), src)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
                continue
            with open(self.root / "ledger.txt", "a") as f:
                f.write(f"{n}\n")
            _fsync_dir(self.root)
            return version
        raise RegistryError("could not allocate a version id")

    def set_current(self, version: str, reason: str = "deploy", actor: str = "") -> dict:
        self.path(version)  # raises UnknownVersion
        previous = self.current()
        tmp = self.root / f".CURRENT.{uuid.uuid4().hex[:8]}"
        tmp.write_text(version)
        os.replace(tmp, self.root / "CURRENT")
        entry = {"version": version, "previous": previous, "reason": reason,
                 "actor": actor, "time": time.time()}
        with open(self.root / "deploys.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        return entry

    def rollback_target(self) -> str:
        """The version that was served before the current one was deployed.

        Rollback entries are skipped when walking back, so repeated rollbacks step further into
        the past (v3 -> v2 -> v1) instead of toggling between two versions."""
        cur = self.current()
        for entry in reversed(self.deploy_history()):
            prev = entry.get("previous")
            if (entry["version"] == cur and entry.get("reason") != "rollback"
                    and prev and prev != cur and self.exists(prev)):
                return prev
        raise RegistryError("nothing to roll back to")

    def cleanup_partial(self) -> list[str]:
        """Remove temp folders left by publishes that died midway; returns their names."""
        removed = []
        for p in self.root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


def _copy_tree_linked(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where possible (v0 of a 500 MB model costs nothing)."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link_or_copy)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
