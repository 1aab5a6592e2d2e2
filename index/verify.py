"""``verify``: check a gallery's catalog ↔ shards ↔ indexes, and mend what is found (``skullsearch
verify [--repair]``, :meth:`Gallery.verify <skullsearch.index.gallery.Gallery.verify>`)."""

from __future__ import annotations

import os

import numpy as np

from skullsearch.index import store
from skullsearch.index.indexes import KINDS


def verify(gallery, repair: bool = False) -> dict:
    """Check catalog ↔ shards ↔ indexes. Returns {"ok": bool, "problems": [...], "repaired": [...],
    "notes": [...]} (notes: normal states worth knowing, such as an index behind the catalog).

    repair: (under the write lock) remove leftovers of interrupted writes, move damaged shards to
    ``quarantine/`` (their photos are ingested again by the next ingest) and rebuild the indexes.
    """
    root = gallery.path
    problems = []
    leftovers = [p for p in (root / "shards").iterdir()
                 if p.name.startswith(".") or (p.name[:8].isdigit() and not
                                               (root / "shards" / f"{p.name[:8]}.json").exists())]
    if leftovers:
        problems.append(f"{len(leftovers)} leftover file(s) of an interrupted write")
    shards = gallery.shards()
    damaged = []
    for s in shards:
        problem = _shard_problem(gallery, s)
        if problem:
            problems.append(f"shard {s.number}: {problem}")
            damaged.append(s)
    index_problems, notes = _index_problems(gallery, shards)
    problems += index_problems
    repaired = _repair(gallery, damaged) if repair and (problems or notes) else []
    return {"ok": not problems, "problems": problems, "repaired": repaired, "notes": notes}


def _shard_problem(gallery, s: store.ShardInfo) -> str | None:
    """What is wrong with one committed shard (unreadable files, row counts or face ids that
    disagree with its record), or None."""
    import pyarrow.parquet as pq

    root = gallery.path
    try:
        faces = pq.read_metadata(s.file(root, "faces.parquet")).num_rows
        images = pq.read_metadata(s.file(root, "images.parquet")).num_rows
        soft = gallery._npy(s, "soft").shape
        codes = gallery._npy(s, "codes").shape
        optional = [np.load(f, mmap_mode="r").shape[0]
                    for f in (s.file(root, n) for n in store.OPTIONAL_SHARD_FILES) if f.exists()]
        ids = pq.read_table(s.file(root, "faces.parquet"), columns=["face_id"]).column(0).to_numpy()
    except Exception as e:  # noqa: BLE001 - any unreadable file is damage
        return f"unreadable ({e})"
    expect = store.face_id(s.number, np.arange(s.faces))
    if (faces, images, soft[0], codes[0]) != (s.faces, s.images, s.faces, s.faces) or \
            any(rows != s.faces for rows in optional) or not np.array_equal(np.sort(ids), expect):
        return "row counts or face ids disagree with its record"
    return None


def _index_problems(gallery, shards: list) -> tuple[list[str], list[str]]:
    """(problems, notes) of the saved indexes against the committed shards."""
    state = gallery.indexes.state()
    numbers = {s.number for s in shards}
    problems, notes = [], []
    for kind in KINDS.values():
        st = state.get(kind.key) or {"shards": [], "ntotal": 0}
        behind = numbers - set(st["shards"])
        if behind:  # normal after an interrupted ingest: readers add them on open
            notes.append(f"index {kind.key}: {len(behind)} newer shard(s) not saved in it yet (added "
                         "in memory on open; the next ingest or --repair saves them)")
        if not set(st["shards"]) <= numbers:
            problems.append(f"index {kind.key}: holds shards that are not in the catalog")
        elif st["ntotal"] != sum(s.faces for s in shards if s.number in st["shards"]):
            problems.append(f"index {kind.key}: {st['ntotal']} vectors, the catalog says otherwise")
    return problems, notes


def _repair(gallery, damaged: list) -> list[str]:
    """Under the write lock: remove leftovers, quarantine damaged shards, rebuild the indexes.
    Returns what was done."""
    root = gallery.path
    with store.WriteLock(root):
        repaired = [f"removed {p.name}" for p in store.remove_uncommitted(root)]
        q = root / "quarantine"
        for s in damaged:
            q.mkdir(exist_ok=True)
            for f in (root / "shards").glob(f"{s.number:08d}.*"):
                os.replace(f, q / f.name)
            repaired.append(f"quarantined shard {s.number} (its photos will be ingested again)")
        for kind in KINDS.values():
            for f in (root / "index").glob(f"{kind.key}*.faiss"):
                f.unlink(missing_ok=True)
        (root / "index" / "state.json").unlink(missing_ok=True)
        gallery.indexes.forget()
        gallery.save_indexes()
        repaired.append("rebuilt the indexes")
    return repaired
