"""Model registry: immutable version folders plus a 'current' pointer.

Layout under ``settings.models_dir``::

    v0/ v1/ ...           one Hugging Face folder per version, never modified after publish
    v3/rlhf_version.json  metadata: parent, data snapshot, metrics, gate result
    CURRENT               the served version id (file = truth; survives a Redis restart)
    deploys.jsonl         append-only history of deploy/rollback decisions
    gc.jsonl              append-only record of versions removed by ``collect_garbage``

The same class holds every kind of artifact (policies ``v*``, reward models ``rm*``, critics
``critic*``): the prefix picks the id family, so one kind never sees or reuses another's ids.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

METADATA_FILE = "rlhf_version.json"


class RegistryError(Exception):
    pass


class UnknownVersion(RegistryError):
    pass


class PointerMoved(RegistryError):
    """Compare-and-set on CURRENT failed: someone deployed or rolled back meanwhile."""


ANY = object()
"""`set_current(expected=ANY)`: move the pointer whatever it is now (operator deploys)."""


class ModelRegistry:
    def __init__(self, root: str | Path, prefix: str = "v"):
        if not prefix or prefix[-1].isdigit():
            # a trailing digit would make "v1" + "2" and "v" + "12" the same name
            raise ValueError(f"bad version prefix {prefix!r}")
        self.root = Path(root)
        self.prefix = prefix
        p = re.escape(prefix)
        self._version_re = re.compile(rf"^{p}(\d+)$")
        # Temp folders count too (see _next_number); the digits must end the id part so that a
        # prefix "v" never claims a neighbour's name such as "v1x".
        self._claimed_re = re.compile(rf"^\.?(?:tmp-)?{p}(\d+)(?:-|$)")
        self._temp_re = re.compile(rf"^\.tmp-{p}\d+-")
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- reading ----------------------------------------------------------------------
    def path(self, version: str) -> Path:
        if not self._version_re.match(version or ""):
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
            m = self._version_re.match(p.name)
            if m and (p / METADATA_FILE).exists():
                found.append((int(m.group(1)), p.name))
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        """Newest published version, or None when nothing is published yet."""
        found = self.versions()
        return found[-1] if found else None

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
            m = self._claimed_re.match(p.name)
            if m:
                nums.append(int(m.group(1)))
        nums += self._ledger_numbers()
        return max(nums) + 1

    # The ledger keeps bare numbers for the default "v" prefix (the format older ledgers
    # already have) and full ids for other prefixes, so kinds sharing a root stay apart.
    def _ledger_entry(self, n: int) -> str:
        return str(n) if self.prefix == "v" else f"{self.prefix}{n}"

    def _ledger_numbers(self) -> set[int]:
        ledger = self.root / "ledger.txt"
        if not ledger.exists():
            return set()
        nums = set()
        for token in ledger.read_text().split():
            m = self._version_re.match(token)
            if m:
                nums.add(int(m.group(1)))
            elif self.prefix == "v" and token.isdigit():
                nums.add(int(token))
        return nums

    def _record_number(self, n: int) -> None:
        with open(self.root / "ledger.txt", "a") as f:
            f.write(f"{self._ledger_entry(n)}\n")

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
            version = f"{self.prefix}{n}"
            tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
            if move:
                shutil.move(str(src), tmp)
            else:
                copy_tree_linked(src, tmp)
            meta = dict(metadata or {})
            meta.setdefault("created", time.time())
            meta["version"] = version
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
            fsync_dir(tmp)
            try:
                os.rename(tmp, self.root / version)  # atomic; fails if the name is taken
            except OSError:
                if move:
                    shutil.move(str(tmp), src)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
                continue
            self._record_number(n)
            fsync_dir(self.root)
            return version
        raise RegistryError("could not allocate a version id")

    @contextmanager
    def pointer_lock(self):
        """Exclusive lock around read-compare-write of CURRENT (flock on a file beside it), so a
        compare-and-set by the pipeline and an operator's deploy never interleave."""
        import fcntl
        with open(self.root / ".CURRENT.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def set_current(self, version: str, reason: str = "deploy", actor: str = "",
                    expected: Any = ANY, guard: Callable[[], None] | None = None) -> dict:
        """Point CURRENT at `version`. With `expected`, only if CURRENT is still that version
        (else PointerMoved); `guard()` runs under the same lock just before the write (the
        pipeline's lock fencing: it raises if the run lost its lock)."""
        self.path(version)  # raises UnknownVersion
        with self.pointer_lock():
            previous = self.current()
            if expected is not ANY and previous != expected:
                raise PointerMoved(f"the served version is {previous}, not {expected}: "
                                   f"someone deployed or rolled back meanwhile")
            if guard is not None:
                guard()
            tmp = self.root / f".CURRENT.{uuid.uuid4().hex[:8]}"
            tmp.write_text(version)
            os.replace(tmp, self.root / "CURRENT")
            entry = {"version": version, "previous": previous, "reason": reason,
                     "actor": actor, "time": time.time()}
            with open(self.root / "deploys.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            fsync_dir(self.root)
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
        """Remove temp folders left by publishes (or GC deletions) that died midway; returns
        their names. Only this prefix's temp folders: another kind sharing the root may be
        publishing right now."""
        removed = []
        for p in self.root.iterdir():
            if self._temp_re.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    def collect_garbage(self, keep_last: int, protected: set[str],
                        deletable: Callable[[dict[str, Any]], bool],
                        reason: str = "gc") -> list[str]:
        """Delete published versions that ``deletable(metadata)`` accepts, except CURRENT, the
        ``protected`` ids and the newest ``keep_last`` versions (< 0 keeps everything).

        Returns the deleted ids, oldest first; each deletion is one line in ``gc.jsonl``.
        Deleted ids are never handed out again: the ledger remembers every number.
        """
        if keep_last < 0:
            return []
        found = self.versions()
        newest = set(found[max(0, len(found) - keep_last):]) if keep_last else set()
        spared = set(protected) | newest | {self.current()}
        deleted = []
        for version in found:
            if version in spared or not deletable(self.metadata(version)):
                continue
            n = int(self._version_re.match(version).group(1))
            if n not in self._ledger_numbers():  # folder placed by hand: pin its number first
                self._record_number(n)
            # Rename first: the version leaves versions() atomically, and a crash during the
            # rmtree leaves a temp folder for cleanup_partial, never a half-deleted version.
            doomed = self.root / f".tmp-{version}-gc{uuid.uuid4().hex[:8]}"
            os.rename(self.root / version, doomed)
            with open(self.root / "gc.jsonl", "a") as f:
                f.write(json.dumps({"id": version, "time": time.time(),
                                    "reason": reason}) + "\n")
            shutil.rmtree(doomed, ignore_errors=True)
            deleted.append(version)
        return deleted


def copy_tree_linked(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where possible (v0 of a 500 MB model costs nothing)."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link_or_copy)


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries: a rename or a new file survives a crash); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
