"""Stored filesystem snapshots: where they live and how names find them.

They are kept in the service's state dir and outlive the sandbox they were taken from (as
E2B's snapshots survive sandbox deletion); they end with the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sandbox.fs_snapshot import archive

if TYPE_CHECKING:
    from .registry import Entry

NAMESPACE = "local"  # stands in for E2B's team slug in snapshot names
_ALPHABET = string.ascii_lowercase + string.digits
# What an unnamed snapshot's id looks like (take() makes them so).
_SNAPSHOT_ID = re.compile(r"snap[a-z0-9]{16}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Snapshot:
    """One stored filesystem snapshot."""

    snapshot_id: str
    names: list[str]
    sandbox_id: str  # the sandbox it was taken from
    template_id: str
    path: Path
    created_at: datetime = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        return {"snapshotID": self.snapshot_id, "names": list(self.names)}

    def matches(self, wanted: str) -> bool:
        """Whether a name or id (optionally tag- or namespace-qualified) means this one."""
        forms = {self.snapshot_id, *self.names}
        for name in list(forms):
            bare = name.split("/", 1)[-1]
            forms |= {bare, bare.split(":", 1)[0]}
        return wanted in forms


class SnapshotStore:
    """Snapshots kept in the service's state dir; they outlive their source sandbox."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._items: dict[str, Snapshot] = {}
        self._deleted: set[str] = set()  # every form of a deleted snapshot's names

    def find(self, wanted: str) -> Snapshot | None:
        """The snapshot a template id names, if it names one."""
        return self._items.get(wanted) or next(
            (s for s in self._items.values() if s.matches(wanted)), None
        )

    def is_missing_reference(self, wanted: str) -> bool:
        """Whether a template id that names no snapshot still means one: a deleted
        snapshot's id or name, an unnamed snapshot's id form, or this service's namespace.
        E2B answers such a create with 404 (the template does not exist), so the service
        must not start a plain sandbox instead. Other unknown template names stay lenient:
        a local service has no template builds, and they get the one local image."""
        return (
            wanted in self._deleted
            or _SNAPSHOT_ID.fullmatch(wanted) is not None
            or wanted.startswith(NAMESPACE + "/")
        )

    def listing(self, sandbox_id: str | None, name: str | None) -> list[Snapshot]:
        """Oldest first, filtered by source sandbox and by name."""
        return [
            s
            for s in sorted(self._items.values(), key=lambda s: (s.created_at, s.snapshot_id))
            if (not sandbox_id or s.sandbox_id == sandbox_id) and (not name or s.matches(name))
        ]

    async def take(self, entry: Entry, name: str | None, *, hidden: bool = False) -> Snapshot:
        """Archive a running sandbox's files into a new snapshot (a named one is replaced)."""
        await asyncio.to_thread(self.directory.mkdir, mode=0o700, exist_ok=True)
        if name:
            snapshot_id, names = f"{name}:latest", [f"{NAMESPACE}/{name}:latest"]
        else:
            snapshot_id = "snap" + "".join(secrets.choice(_ALPHABET) for _ in range(16))
            names = []
        path = self.directory / f"{secrets.token_hex(8)}.tar"
        try:
            await archive(entry.sandbox, path)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        snapshot = Snapshot(snapshot_id, names, entry.sandbox_id, entry.template_id, path)
        if not hidden:
            old = self._items.pop(snapshot_id, None)
            if old is not None:
                await asyncio.to_thread(old.path.unlink, missing_ok=True)
            self._items[snapshot_id] = snapshot
        return snapshot

    async def delete(self, wanted: str) -> bool:
        snapshot = self.find(wanted)
        if snapshot is None:
            return False
        del self._items[snapshot.snapshot_id]
        for name in [snapshot.snapshot_id, *snapshot.names]:
            bare = name.split("/", 1)[-1]
            self._deleted |= {name, bare, bare.split(":", 1)[0]}
        await asyncio.to_thread(snapshot.path.unlink, missing_ok=True)
        return True
