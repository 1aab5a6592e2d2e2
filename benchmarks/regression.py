"""Behaviour unchanged? One fixed run of synth → query → reconstruct → report, summarized so that
two versions of the code can be compared exactly.

A gallery of ``--faces`` synthetic faces (seed fixed), a skull made under one of them (T-Table
depths, no noise, fixed rigid motion), an exhaustive query, F3DMM-GC reconstructions of the top 3
and the case report. The summary holds the ranking (face ids), every S and likelihood (rounded to
1e-9), each reconstruction's vertices (rounded to 1e-6 mm, hashed, and their max), the
query-result JSON without its timestamps and ids (hashed) and the report's size; ``--save FILE``
writes it, ``--check FILE`` compares with a saved one and exits 1 on any difference (printing
what differs). Synthetic: the faces and the skull come from the default model itself.

    python benchmarks/regression.py --save before.json      # on the old code
    python benchmarks/regression.py --check before.json     # on the new code
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

VOLATILE = {"query_id", "time", "created", "seconds", "gallery", "skull_path", "versions", "elapsed_s"}


def _strip(x):
    """The JSON without values that change from run to run (ids, times, paths, versions)."""
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in sorted(x.items()) if k not in VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    if isinstance(x, float):
        return round(x, 9)
    return x


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run(faces: int, seed: int, folder: Path) -> dict:
    import skullsearch
    from skullsearch import FaceModel, Gallery
    from skullsearch.index.synth import synth
    from skullsearch.retrieval.synthetic import synthetic_skull

    model = FaceModel.default()
    g = Gallery.create(folder / "gallery", face_model=model)
    synth(g, faces, seed=seed)
    ids = g.sample_ids(1, seed=seed)
    truth_code = g.codes(ids)[0]
    sk = synthetic_skull(model, truth_code, rng=np.random.default_rng(seed), rigid_motion=True)
    skull_path = sk.save(folder / "case")
    result = skullsearch.query(g, skullsearch.Skull.load(skull_path), top=10, shortlist=None)
    rec = skullsearch.reconstruct(skull_path, result, gallery=g, candidates=3, method="fit",
                                  out=folder / "recon", record=False)
    report = skullsearch.report(g, result.query_id, folder / "report.html", reconstruction=folder / "recon")
    cands = result.candidates
    summary = {
        "faces": faces, "seed": seed, "truth_face_id": int(ids[0]),
        "ranking": [int(c.face_id) for c in cands],
        "s": [round(float(c.s), 9) for c in cands],
        "likelihood": [round(float(c.likelihood), 9) for c in cands],
        "result_json": _hash(_strip(json.loads(result.to_json()))),
        "reconstructions": [{
            "face_id": int(r.face_id),
            "vertices_hash": _hash(np.round(np.asarray(r.vertices_skull, np.float64), 6).tolist()),
            "s_after": round(float(r.s_after), 9),
        } for r in rec.candidates],
        "report_bytes": report.stat().st_size,
    }
    return summary


def compare(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k != "report_bytes" and old.get(k) != new.get(k)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--check", type=Path)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="skullsearch-regression-") as tmp:
        summary = run(a.faces, a.seed, Path(tmp))
    print(json.dumps(summary))
    if a.save:
        a.save.write_text(json.dumps(summary, indent=1))
    if a.check:
        diffs = compare(json.loads(a.check.read_text()), summary)
        for d in diffs:
            print("DIFFERS", d)
        print("identical" if not diffs else f"{len(diffs)} difference(s)")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
