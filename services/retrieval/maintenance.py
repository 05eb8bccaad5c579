"""Index maintenance: what the Chroma store holds, and removing what nobody uses
(`twinarm index list|prune`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.retrieval.index import PatientIndexError, get_client, is_missing_collection


@dataclass(frozen=True)
class IndexEntry:
    """One TwinArm collection of the store. `created`/`last_used`: epoch seconds, None for a
    collection made before TwinArm recorded them."""

    name: str
    trial_hash: str
    space: str
    vector_version: str
    patients: int
    complete: bool
    created: float | None
    last_used: float | None

    def idle_days(self, now: float | None = None) -> float | None:
        seen = self.last_used or self.created
        if seen is None:
            return None
        return max(0.0, ((now or time.time()) - seen) / 86400)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def list_indexes(client=None) -> list[IndexEntry]:
    """The store's TwinArm collections (metadata `twinarm`), most recently used first; other
    collections on a shared server are not listed and never touched."""
    client = client or get_client()
    out = []
    for col in client.list_collections():
        if isinstance(col, str):  # older clients list names only
            col = client.get_collection(col, embedding_function=None)
        meta = dict(col.metadata or {})
        if meta.get("twinarm") != 1:
            continue
        out.append(IndexEntry(
            name=col.name, trial_hash=str(meta.get("trial_hash", "")),
            space=str(meta.get("space", "")), vector_version=str(meta.get("vector_version", "")),
            patients=int(meta.get("n") or 0), complete=meta.get("complete") is True,
            created=float(meta["created"]) if meta.get("created") else None,
            last_used=float(meta["last_used"]) if meta.get("last_used") else None))
    return sorted(out, key=lambda e: -(e.last_used or e.created or 0))


def prune_indexes(unused_days: float | None = 30, *, everything: bool = False,
                  dry_run: bool = False, client=None, now: float | None = None) -> list[IndexEntry]:
    """Delete TwinArm collections unused for `unused_days` (or all with `everything=True`).

    An index is a cache of patient vectors: a pruned trial's index is rebuilt the next time the
    trial is used. Collections without a recorded use (made before TwinArm kept one) count as
    unused; incomplete builds are pruned too. Returns the entries removed (or that would be,
    with `dry_run`)."""
    if not everything and (unused_days is None or unused_days < 0):
        raise PatientIndexError("unused_days must be >= 0 (or prune everything)")
    from chromadb.errors import ChromaError

    client = client or get_client()
    now = time.time() if now is None else now
    doomed = []
    for e in list_indexes(client):
        idle = e.idle_days(now)
        if everything or idle is None or idle >= unused_days or (not e.complete and idle >= 1):
            doomed.append(e)
    if not dry_run:
        for e in doomed:
            try:
                client.delete_collection(e.name)
            except ChromaError as exc:  # deleted meanwhile by another process: fine
                if not is_missing_collection(exc):
                    raise
    return doomed
