"""The audit log: one JSON record per query in the gallery's ``audit/`` folder — the skull and
its landmarks (with sha256), the extended landmarks whole, the tissue table, the parameters, the
gallery's model and shards, the package versions and the ranked results — written atomically and
hashed. :func:`~skullsearch.retrieval.query.rerun` re-runs a record on the shards it saw.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid

import numpy as np

from skullsearch.encoder.atomic import write_json_atomic
from skullsearch.index.store import GalleryError


def json_plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serializable: {type(x)}")


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("skullsearch", "numpy", "faiss-cpu", "torch", "duckdb", "trimesh"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def record_query(gallery, skull, table, ext, result) -> str:
    """Write the audit record; returns its id."""
    now = _dt.datetime.now(_dt.timezone.utc)
    qid = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    record = {
        "query_id": qid, "time": now.isoformat(timespec="seconds"),
        "skull": {"path": skull.path, "sha256": skull.sha256, "landmarks_path": skull.landmarks_path,
                  "landmarks_sha256": skull.landmarks_sha256, "units": skull.units,
                  "landmarks": {k: np.asarray(v).tolist() for k, v in skull.landmarks.items()},
                  "warnings": list(skull.warnings)},
        "extended": ext.to_dict(),
        "tissue_table": table.to_dict(),
        "params": result.params,
        "gallery": {"face_model": gallery.manifest["face_model"],
                    "shards": [s.number for s in gallery.shards()]},
        "versions": _versions(),
        "results": [{"rank": c.rank, "face_id": c.face_id, "s": c.s, "likelihood": c.likelihood}
                    for c in result.candidates],
    }
    text = json.dumps(record, sort_keys=True, default=json_plain)
    record["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    folder = gallery.path / "audit"
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"{qid}.json", json.loads(json.dumps(record, default=json_plain)))
    return qid


def history(gallery) -> list[dict]:
    """The recorded queries, oldest first: id, time, skull, landmarks, top candidate."""
    out = []
    for p in sorted((gallery.path / "audit").glob("*.json")):
        try:
            r = json.loads(p.read_text())
            top = r["results"][0] if r.get("results") else {}
            out.append({"query_id": r["query_id"], "time": r["time"], "skull": r["skull"]["path"],
                        "landmarks": sum(r["extended"]["present"]), "table": r["tissue_table"].get("name"),
                        "top_face": top.get("face_id"), "top_s": top.get("s")})
        except (OSError, ValueError, LookupError, TypeError, AttributeError):
            continue  # unreadable, or a JSON file that is not a query record
    return out


def load_record(gallery, query_id: str) -> dict:
    """The audit record of a recorded query (a file name in ``audit/``: nothing outside it)."""
    query_id = str(query_id)
    path = gallery.path / "audit" / f"{query_id}.json"
    if "/" in query_id or "\\" in query_id or query_id.startswith(".") or not path.is_file():
        known = ", ".join(h["query_id"] for h in history(gallery)[-5:]) or "none"
        raise GalleryError(f"no recorded query {query_id!r} in {gallery.path}; recent ones: {known}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GalleryError(f"the audit record {path} is unreadable ({exc}); run the query again") from None


#: The public name (``skullsearch.query_record``) of :func:`load_record`.
query_record = load_record
