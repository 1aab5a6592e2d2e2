"""Near-duplicate search at ingest in large galleries: exact vs the IVF path, cost and recall.

For each size N: a synthetic gallery of N faces (codes from the model's prior, as ``synth``) whose
faces also carry photo fingerprints (benchmark-local: ``synth`` writes none; unit vectors spread
like real ones, a common direction plus noise), written through the real storage path. Then
``--repeats`` shards of ``--queries`` new faces go through ``near_duplicate_stage`` (ingest's
near-duplicate step, both criteria) twice: on a Gallery forced exact (``NEAR_EXACT_LIMIT`` above
N: the code index and the exact photo index, today's path) and on one with the default limit (the
IVF indexes beyond 100k). Half of each shard's faces are planted near-copies of gallery faces at
the thresholds' scale: the identity and the photo step are drawn up to 1.25× each threshold,
measured in the gallery's own spread (the real cuts relative to the median nearest *different*
face among 24, as benchmarks/near_duplicates.py measured them: 0.4 of 0.9 for codes, 0.12 of
0.21 for fingerprints), so a planted pair sits where a real one would; the other half are new
faces (flagged only if the dense gallery holds a face that close by chance).

Reported per size: per-photo search cost (median over shards) of each criterion, exact vs IVF;
the one-time costs (exact photo index read from the catalog; IVF train + add; its save and read);
recall = the share of the exact search's flags that the IVF path gives with the same flagged face
and criterion (and the flags it adds, which must be none: its distances are exact).

    python benchmarks/near_duplicate_scale.py [--sizes 100000 1000000] [--queries 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit

from skullsearch import Gallery
from skullsearch.index import store, vectors
from skullsearch.index.ingest import (
    NEAR_DUPLICATE_DISTANCE,
    NEAR_DUPLICATE_PHOTO_DISTANCE,
    flag_near_duplicates,
    flag_photo_duplicates,
    near_duplicate_stage,
)
from skullsearch.index.synth import add_synthetic_faces, synth_codes

#: the real cuts and the median nearest different face among 24 (benchmarks/near_duplicates.py)
REAL = {"codes": (NEAR_DUPLICATE_DISTANCE, 0.9), "photos": (NEAR_DUPLICATE_PHOTO_DISTANCE, 0.21)}


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fingerprints(rng, n, spread=0.036):
    """(n, 63) unit fingerprints around a common direction (random pairs ~0.4 apart)."""
    return unit(np.ones(63) / np.sqrt(63) + spread * rng.standard_normal((n, 63)).astype(np.float32))


def add_shard(g, codes, fps):
    """Commit one shard of synthetic faces that have photo fingerprints (as ingest writes them)."""
    return add_synthetic_faces(g, codes, fps, tag="bench")


def nearest_different(vecs: np.ndarray) -> float:
    """Median distance from each of these vectors to the nearest other one."""
    d = np.linalg.norm(vecs[:, None] - vecs[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(1)))


def plant(rng, base: np.ndarray, radius: float) -> np.ndarray:
    """Copies of base (m, d) moved by up to 1.25 × radius in a random direction."""
    step = rng.standard_normal(base.shape)
    step *= (rng.uniform(0, 1.25, len(base)) * radius / np.linalg.norm(step, axis=1))[:, None]
    return (base + step).astype(np.float32)


def run_size(model, n: int, queries: int, repeats: int, seed: int, root: Path, nprobes: list[int]) -> dict:
    rng = np.random.default_rng(seed)
    g = Gallery.create(root / f"g{n}", face_model=model)
    t = time.perf_counter()
    shard = 250_000
    for a in range(0, n, shard):
        m = min(shard, n - a)
        add_shard(g, synth_codes(model, m, rng), fingerprints(rng, m))
    t_write = time.perf_counter() - t
    # the thresholds' scale in this gallery's spread
    probe = g.sample_ids(24, seed=seed)
    scale = {"codes": nearest_different(vectors.shape_vectors(g.codes(probe)).astype(np.float64)),
             "photos": nearest_different(g.photo_fingerprints(probe).astype(np.float64))}
    cut = {k: REAL[k][0] / REAL[k][1] * scale[k] for k in REAL}

    exact = Gallery.open(g.path)
    exact.near_index = lambda name: None  # today's path: the exact searches at every size
    approx = Gallery.open(g.path)
    t = time.perf_counter()
    exact.index("shape")
    t_code_index = time.perf_counter() - t
    t = time.perf_counter()
    exact.column_index("photos")
    t_photo_read = time.perf_counter() - t
    one_time = {}
    for name in ("codes", "photos"):
        t = time.perf_counter()
        idx = approx.near_index(name)
        one_time[f"ivf_build_{name}_s"] = time.perf_counter() - t
        if idx is not None:
            one_time[f"ivf_{name}_lists"] = int(idx.nlist)
    t = time.perf_counter()
    approx.save_indexes()  # (all indexes: the near ones are timed on their own below)
    one_time["save_all_indexes_s"] = time.perf_counter() - t
    if n > vectors.NEAR_EXACT_LIMIT:
        st = approx.indexes.state()
        one_time["ivf_file_mb"] = sum((g.path / "index" / st[k]["file"]).stat().st_size
                                      for k in ("near_codes", "near_photos")) / 2**20
        t = time.perf_counter()
        again = Gallery.open(g.path)
        for name in ("codes", "photos"):
            again.near_index(name)
        one_time["ivf_read_saved_s"] = time.perf_counter() - t
        del again

    probes = sorted(set(nprobes))
    cost = {k: [] for k in ("exact_codes", "exact_photos")}
    cost.update({f"ivf{p}_{c}": [] for p in probes for c in ("codes", "photos")})
    flags = {"exact": 0, "photo": 0, "identity": 0, "planted": 0}
    flags.update({f"{k}{p}": 0 for p in probes for k in ("same", "added", "same_photo", "same_identity")})
    number = store.next_shard_number(g.path)
    default_probe = vectors.NEAR_NPROBE
    for _ in range(repeats):
        codes = synth_codes(model, queries, rng)
        fps = fingerprints(rng, queries)
        half = queries // 2
        src = g.sample_ids(half, seed=int(rng.integers(1 << 30)))
        src_codes, src_fps = g.codes(src), g.photo_fingerprints(src)
        which = rng.integers(0, 3, half)  # 0: identity copy, 1: photo copy, 2: both
        codes[:half] = src_codes
        codes[:half, :90] = np.where((which != 1)[:, None], plant(rng, src_codes[:, :90], cut["codes"]),
                                     codes[:half, :90])
        fps[:half] = np.where((which != 0)[:, None], unit(plant(rng, src_fps, cut["photos"])), fps[:half])
        fl = {}
        for label, gal, p in (("exact", exact, None), *(("ivf", approx, p) for p in probes)):
            key = label if p is None else f"ivf{p}"
            vectors.NEAR_NPROBE = p or default_probe
            t = time.perf_counter()
            flag_near_duplicates(gal, codes, number, cut["codes"])
            cost[f"{key}_codes"].append((time.perf_counter() - t) / queries)
            t = time.perf_counter()
            flag_photo_duplicates(gal, fps, number, cut["photos"])
            cost[f"{key}_photos"].append((time.perf_counter() - t) / queries)
            fl[key] = near_duplicate_stage(gal, codes, fps, number, cut["codes"], cut["photos"])
        vectors.NEAR_NPROBE = default_probe
        e = fl["exact"]
        hit = e.of >= 0
        flags["exact"] += int(hit.sum())
        flags["photo"] += e.by("photo")
        flags["identity"] += e.by("identity")
        flags["planted"] += int(hit[:half].sum())
        for p in probes:
            a = fl[f"ivf{p}"]
            same = (a.of == e.of) & (a.criterion == e.criterion) & hit
            flags[f"same{p}"] += int(same.sum())
            flags[f"same_photo{p}"] += int((same & (e.criterion == "photo")).sum())
            flags[f"same_identity{p}"] += int((same & (e.criterion == "identity")).sum())
            flags[f"added{p}"] += int(((a.of >= 0) & ~hit).sum())
    ms = {k: 1000 * float(np.median(v)) for k, v in cost.items()}
    out = {
        "faces": n, "write_s": round(t_write, 1), "code_index_build_s": round(t_code_index, 2),
        "exact_photo_index_read_s": round(t_photo_read, 2),
        **{k: round(v, 2) for k, v in one_time.items()},
        "cut_codes": round(cut["codes"], 4), "cut_photos": round(cut["photos"], 4),
        "exact_codes_ms_per_photo": round(ms["exact_codes"], 3),
        "exact_photos_ms_per_photo": round(ms["exact_photos"], 3),
        "exact_ms_per_photo": round(ms["exact_codes"] + ms["exact_photos"], 3),
        "flags_exact": flags["exact"], "flags_photo": flags["photo"], "flags_identity": flags["identity"],
        "flags_of_planted": flags["planted"], "new_path_exact": n <= vectors.NEAR_EXACT_LIMIT,
        "ivf": [{"nprobe": p,
                 "codes_ms_per_photo": round(ms[f"ivf{p}_codes"], 3),
                 "photos_ms_per_photo": round(ms[f"ivf{p}_photos"], 3),
                 "ms_per_photo": round(ms[f"ivf{p}_codes"] + ms[f"ivf{p}_photos"], 3),
                 "recall": round(flags[f"same{p}"] / max(flags["exact"], 1), 4),
                 "recall_photo": round(flags[f"same_photo{p}"] / max(flags["photo"], 1), 4),
                 "recall_identity": round(flags[f"same_identity{p}"] / max(flags["identity"], 1), 4),
                 "flags_added": flags[f"added{p}"]} for p in probes],
    }
    shutil.rmtree(g.path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=256, help="new faces per shard")
    ap.add_argument("--repeats", type=int, default=5, help="shards searched per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[vectors.NEAR_NPROBE],
                    help="IVF lists searched (a sweep; the default is NEAR_NPROBE)")
    ap.add_argument("--tmp", default=None, help="folder for the galleries (default: a temp dir)")
    args = ap.parse_args()
    from skullsearch import FaceModel

    model = FaceModel.default()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in args.sizes:
            r = run_size(model, n, args.queries, args.repeats, args.seed, Path(tmp), args.nprobe)
            rows.append(r)
            print(f"{n:>9,} faces: exact {r['exact_ms_per_photo']:.2f} ms/photo "
                  f"(codes {r['exact_codes_ms_per_photo']:.2f}, "
                  f"photos {r['exact_photos_ms_per_photo']:.2f}), "
                  f"{r['flags_exact']} flags ({r['flags_photo']} photo, {r['flags_identity']} identity)")
            for v in r["ivf"]:
                label = f"IVF nprobe {v['nprobe']:>3}" if n > vectors.NEAR_EXACT_LIMIT else "new (exact here)"
                print(f"           {label}: {v['ms_per_photo']:.2f} ms/photo (codes "
                      f"{v['codes_ms_per_photo']:.2f}, photos {v['photos_ms_per_photo']:.2f}); recall "
                      f"{100 * v['recall']:.2f} % (photo {100 * v['recall_photo']:.2f}, identity "
                      f"{100 * v['recall_identity']:.2f}), {v['flags_added']} added", flush=True)
            print("           one-time: " + ", ".join(f"{k} {v}" for k, v in r.items()
                                                     if k.endswith("_s") or k.endswith("_mb")), flush=True)
    emit({"benchmark": "near_duplicate_scale", "queries": args.queries, "repeats": args.repeats,
          "near_exact_limit": vectors.NEAR_EXACT_LIMIT, "nlist": vectors.NEAR_NLIST,
          "nprobe": vectors.NEAR_NPROBE, "sizes": rows})


if __name__ == "__main__":
    main()
