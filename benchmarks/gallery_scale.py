"""Gallery at scale: synthetic galleries of 100k–1M faces through the real storage path.

For each size: a fresh gallery, ``synth(g, n)`` (faces/s), bytes per face on disk (catalog =
``shards/``, indexes = ``index/``), the resident memory of opening the gallery and loading both
FAISS indexes and of one catalog lookup (each measured in a fresh subprocess, so nothing this
process allocated pollutes it), the same for opening the indexes memory-mapped (the default) and
read into memory followed by one shortlist and one code search (private memory, file pages,
identical results), and the time of one masked shortlist search (k=2000; all 36
landmarks present, and 10 missing), checked against an exact numpy search.

    python benchmarks/gallery_scale.py [--sizes 100000,1000000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import emit  # noqa: E402

from skullsearch import Gallery  # noqa: E402
from skullsearch.index import store, vectors  # noqa: E402
from skullsearch.index.synth import synth  # noqa: E402

#: Disk needed per face (measured ~2.4 kB; margin for the temporary files of a shard write).
DISK_PER_FACE = 3_200
#: Distances this close to the exact k-th count as ties (float32 rounding of the augmented
#: inner product is ~0.3 mm² at ~1000 mm²).
TIE_MM2 = 1.0
#: Memory synth needs per face at its peak (codes, soft tissue, index vectors, Arrow tables).
RAM_PER_FACE = 6_000

# Run in a fresh interpreter: libraries imported first, then RSS before/after the measured step.
_PROBE = r"""
import json, resource, sys, time
import numpy as np, faiss, duckdb, pyarrow
from skullsearch import Gallery
from skullsearch.index import gallery as _g, store, vectors

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out

path, what, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
res = {"before": status()}
t0 = time.perf_counter()
g = Gallery.open(path)
if what.startswith("indexes"):  # indexes[-nommap][-search]
    g.mmap_indexes = "nommap" not in what
    a = g.index("shortlist")
    b = g.index("shape")
    res["ntotal"] = [int(a.ntotal), int(b.ntotal)]
    res["types"] = [type(a).__name__, type(b).__name__]
    res["mapped"] = [g.indexes.held["shortlist"].mapped, g.indexes.held["shape"].mapped]
    res["loaded"] = status()
    res["load_s"] = time.perf_counter() - t0
    if what.endswith("search"):  # one masked shortlist search (k=2000) and one code search
        qid = g.sample_ids(1, seed=7)
        pts = g.soft_tissue(qid)
        mask = np.ones((1, 36), bool)
        mask[0, :5] = False
        t1 = time.perf_counter()
        d, i = g.search_shortlist(vectors.canonical(pts, g.mean_soft_tissue, mask), mask, 2000)
        dc, ic = g.search_codes(g.codes(qid), 10)
        res["search_s"] = time.perf_counter() - t1
        res["ids"] = i[0].tolist() + ic[0].tolist()
        res["dist"] = d[0].tolist() + dc[0].tolist()
else:
    q = f"SELECT face_id, person, path FROM faces WHERE face_id IN ({', '.join(map(str, ids))})"
    t = g.sql(q)
    res["rows"] = t.num_rows
    res["first_s"] = time.perf_counter() - t0
    times = []
    for _ in range(5):
        t1 = time.perf_counter()
        g.sql(q)
        times.append(time.perf_counter() - t1)
    res["warm_s"] = float(np.median(times))
res["seconds"] = time.perf_counter() - t0
res["after"] = status()
res["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("PROBE " + json.dumps(res))
"""


def probe(path: Path, what: str, ids=()) -> dict:
    """Run :data:`_PROBE` in a fresh interpreter; returns its measurements."""
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path), what, json.dumps([int(i) for i in ids])],
                         capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise RuntimeError(f"memory probe failed ({what}):\n{out.stderr[-2000:]}")


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def mem_available() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def flat_base(index) -> np.ndarray | None:
    """The stored (n, d) vectors and ids of an IndexIDMap(2) over a flat index, else None."""
    import faiss

    inner = getattr(index, "index", None)
    if inner is None:
        return None
    inner = faiss.downcast_index(inner)
    if not isinstance(inner, faiss.IndexFlat):
        return None
    xb = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
    ids = faiss.vector_to_array(index.id_map)
    return xb, ids


def exact_masked(xb: np.ndarray, ids: np.ndarray, canon: np.ndarray, mask: np.ndarray, k: int):
    """Exact masked squared distances (numpy, float64, in chunks): the k nearest (dist, ids) and
    every face's distance (n,), in the order of ``ids``."""
    q = canon.reshape(36, 3).astype(np.float64)
    m = mask.astype(np.float64)
    d = np.empty(len(xb))
    for a in range(0, len(xb), 200_000):
        c = xb[a:a + 200_000, :108].astype(np.float64).reshape(-1, 36, 3)
        d[a:a + len(c)] = (((c - q) ** 2).sum(-1) * m).sum(-1)
    top = np.argpartition(d, k - 1)[:k]
    top = top[np.argsort(d[top])]
    return d[top], ids[top], d


def shortlist_bench(g: Gallery, rng, k: int, repeats: int) -> dict:
    """Time masked shortlist searches (all landmarks, 10 missing) and check them exactly."""
    shards = g.shards()
    s = shards[rng.integers(len(shards))]
    target = int(store.face_id(s.number, rng.integers(s.faces)))
    # a query: one gallery face, every landmark moved by ~1.5 mm (a skull's estimate is rougher)
    pts = g.soft_tissue([target]) + rng.normal(0, 1.5, (1, 36, 3)).astype(np.float32)
    idx = g.index("shortlist")
    base = flat_base(idx)
    out = {"target": target}
    for label, n_missing in (("all", 0), ("missing10", 10)):
        mask = np.ones((1, 36), bool)
        mask[0, rng.choice(36, n_missing, replace=False)] = False
        canon = vectors.canonical(pts, g.mean_soft_tissue, mask)
        g.search_shortlist(canon, mask, k)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dist, ids = g.search_shortlist(canon, mask, k)
            times.append(time.perf_counter() - t0)
        r = {"ms": 1e3 * float(np.median(times)), "ms_min": 1e3 * min(times),
             "target_rank": int(np.flatnonzero(ids[0] == target)[0]) if target in ids[0] else None}
        if base is not None:
            xb, all_ids = base
            ed, eids, d_all = exact_masked(xb, all_ids, canon[0], mask[0], k)
            r["recall"] = len(set(eids.tolist()) & set(ids[0].tolist())) / k
            order = np.argsort(all_ids)
            got = d_all[order[np.searchsorted(all_ids, ids[0], sorter=order)]]
            # a face counts as correct if it is as near as the exact k-th, up to float32 rounding
            r["recall_ties"] = float(np.mean(got <= ed[-1] + TIE_MM2))
            r["max_dist_err_mm2"] = float(np.abs(np.sort(dist[0]) - ed).max())
            r["kth_dist_mm2"] = float(ed[-1])
        out[label] = r
    return out


def run_size(n: int, root: Path, keep: bool, seed: int, k: int, repeats: int) -> dict | None:
    free = shutil.disk_usage(root).free
    need = n * DISK_PER_FACE
    if free < need:
        print(f"[{n:,}] skipped: needs ~{need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free at {root}")
        return None
    avail = mem_available()
    if avail is not None and avail < n * RAM_PER_FACE:
        print(f"[{n:,}] skipped: needs ~{n * RAM_PER_FACE / 1e9:.1f} GB of memory, "
              f"{avail / 1e9:.1f} GB available")
        return None
    path = root / f"gallery_{n}" if keep else Path(tempfile.mkdtemp(prefix=f"gallery_{n}_", dir=root))
    try:
        g = Gallery.create(path)
        t0 = time.perf_counter()
        rep = synth(g, n, seed=seed)
        wall = time.perf_counter() - t0
        cat = dir_bytes(path / "shards")
        ind = dir_bytes(path / "index")
        rng = np.random.default_rng(seed + 1)
        sl = shortlist_bench(g, rng, k, repeats)
        del g
        # 20 random face ids for the catalog lookup
        g2 = Gallery.open(path)
        ids = [int(store.face_id(s.number, r)) for s in g2.shards()
               for r in rng.choice(s.faces, min(s.faces, 20), replace=False)]
        ids = rng.choice(ids, 20, replace=False).tolist()
        mi = probe(path, "indexes-nommap")
        mc = probe(path, "catalog", ids)
        # memory-mapped vs read into memory: open + both indexes + one search, fresh processes
        mm = {w: probe(path, w) for w in ("indexes-search", "indexes-nommap-search")}
        res = {
            "faces": n, "synth_s": rep.seconds, "synth_wall_s": wall, "shards": rep.shards,
            "synth_faces_per_s": n / rep.seconds,
            "disk_catalog": cat, "disk_index": ind,
            "ram_index": mi["after"]["VmRSS"] - mi["before"]["VmRSS"],
            "ram_index_peak": mi["after"]["VmHWM"] - mi["before"]["VmRSS"],
            "index_load_s": mi["seconds"], "index_types": mi["types"], "index_ntotal": mi["ntotal"],
            "ram_catalog": mc["after"]["VmRSS"] - mc["before"]["VmRSS"],
            "ram_catalog_peak": mc["after"]["VmHWM"] - mc["before"]["VmRSS"],
            "catalog_rows": mc["rows"], "catalog_first_ms": 1e3 * mc["first_s"],
            "catalog_warm_ms": 1e3 * mc["warm_s"], "shortlist": sl,
        }
        for w, key in (("indexes-search", "mmap"), ("indexes-nommap-search", "inmem")):
            r, b = mm[w], mm[w]["before"]
            res[f"{key}_mapped"] = r["mapped"]
            res[f"{key}_open_s"] = r["load_s"]
            res[f"{key}_search_s"] = r["search_s"]
            for phase in ("loaded", "after"):
                for field in ("VmRSS", "RssAnon", "RssFile"):
                    res[f"{key}_{phase}_{field}"] = r[phase][field] - b[field]
            res[f"{key}_peak"] = r["after"]["VmHWM"] - b["VmRSS"]
        res["mmap_same_results"] = (mm["indexes-search"]["ids"] == mm["indexes-nommap-search"]["ids"]
                                    and mm["indexes-search"]["dist"] == mm["indexes-nommap-search"]["dist"])
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    mb = 1 / 2**20
    print(f"[{n:,} faces] synth {res['synth_faces_per_s']:,.0f} faces/s ({rep.seconds:.1f} s, "
          f"{rep.shards} shards)")
    print(f"  disk: catalog {cat * mb:,.0f} MiB ({cat / n:,.0f} B/face), indexes {ind * mb:,.0f} MiB "
          f"({ind / n:,.0f} B/face)")
    print(f"  RAM, open + both indexes ({'/'.join(mi['types'])}): +{res['ram_index'] * mb:,.0f} MiB "
          f"({res['ram_index'] / n:,.0f} B/face; peak +{res['ram_index_peak'] * mb:,.0f} MiB), "
          f"loaded in {mi['seconds']:.2f} s")
    for key, label in (("mmap", "memory-mapped"), ("inmem", "read into memory")):
        print(f"  open + both indexes, {label} (mapped: {res[f'{key}_mapped']}): +"
              f"{res[f'{key}_loaded_RssAnon'] * mb:,.0f} MiB private, "
              f"+{res[f'{key}_loaded_RssFile'] * mb:,.0f} MiB file pages in {res[f'{key}_open_s']:.2f} s; "
              f"after one search +{res[f'{key}_after_RssAnon'] * mb:,.0f} MiB private, "
              f"+{res[f'{key}_after_RssFile'] * mb:,.0f} MiB file pages (RSS "
              f"+{res[f'{key}_after_VmRSS'] * mb:,.0f} MiB, peak +{res[f'{key}_peak'] * mb:,.0f} MiB), "
              f"search {1e3 * res[f'{key}_search_s']:.0f} ms")
    print(f"  same results mapped and in memory: {res['mmap_same_results']}")
    print(f"  catalog lookup of 20 ids: {res['catalog_rows']} rows, first {res['catalog_first_ms']:.0f} ms "
          f"(open + connect + query), then {res['catalog_warm_ms']:.0f} ms; "
          f"RAM +{res['ram_catalog'] * mb:,.0f} MiB (peak +{res['ram_catalog_peak'] * mb:,.0f} MiB)")
    for label in ("all", "missing10"):
        r = sl[label]
        extra = (f", recall@{k} vs exact {r['recall']:.4f} ({r['recall_ties']:.4f} counting ties within "
                 f"{TIE_MM2} mm²), max distance error {r['max_dist_err_mm2']:.3g} mm² "
                 f"(k-th distance {r['kth_dist_mm2']:.0f} mm²)" if "recall" in r else "")
        print(f"  shortlist k={k} ({label}): {r['ms']:.1f} ms median (min {r['ms_min']:.1f}); "
              f"true face at rank {r['target_rank']}{extra}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated gallery sizes")
    ap.add_argument("--out", default=None, help="keep the galleries here (default: temporary, deleted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5, help="timed shortlist searches per case")
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    keep = args.out is not None
    root = Path(args.out) if keep else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {"sizes": sizes}
    for n in sizes:
        res = run_size(n, root, keep, args.seed, args.k, args.repeats)
        if res is None:
            result[f"skipped_{n}"] = True
            continue
        sl = res["shortlist"]
        result.update({
            f"synth_faces_per_s_{n}": round(res["synth_faces_per_s"]),
            f"disk_bytes_per_face_catalog_{n}": round(res["disk_catalog"] / n, 1),
            f"disk_bytes_per_face_index_{n}": round(res["disk_index"] / n, 1),
            f"ram_bytes_per_face_index_{n}": round(res["ram_index"] / n, 1),
            f"ram_bytes_per_face_index_peak_{n}": round(res["ram_index_peak"] / n, 1),
            f"index_load_s_{n}": round(res["index_load_s"], 3),
            f"catalog_lookup_ms_{n}": round(res["catalog_first_ms"], 1),
            f"catalog_lookup_warm_ms_{n}": round(res["catalog_warm_ms"], 1),
            f"ram_bytes_catalog_lookup_{n}": res["ram_catalog"],
            f"mmap_same_results_{n}": res["mmap_same_results"],
            f"ram_open_search_private_mmap_{n}": res["mmap_after_RssAnon"],
            f"ram_open_search_private_inmem_{n}": res["inmem_after_RssAnon"],
            f"ram_open_search_file_mmap_{n}": res["mmap_after_RssFile"],
            f"ram_open_search_rss_mmap_{n}": res["mmap_after_VmRSS"],
            f"ram_open_search_rss_inmem_{n}": res["inmem_after_VmRSS"],
            f"index_open_s_mmap_{n}": round(res["mmap_open_s"], 3),
            f"index_open_s_inmem_{n}": round(res["inmem_open_s"], 3),
            f"shortlist_ms_{n}": round(sl["all"]["ms"], 2),
            f"shortlist_missing10_ms_{n}": round(sl["missing10"]["ms"], 2),
        })
        if "recall" in sl["all"]:
            result[f"shortlist_recall_{n}"] = round(min(sl["all"]["recall"], sl["missing10"]["recall"]), 5)
            result[f"shortlist_recall_ties_{n}"] = round(min(sl["all"]["recall_ties"],
                                                             sl["missing10"]["recall_ties"]), 5)
    emit(result)


if __name__ == "__main__":
    main()
