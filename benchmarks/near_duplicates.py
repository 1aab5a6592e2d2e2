"""Near-duplicate photos: which copies of a photo do the photo-fingerprint and identity criteria
flag, which re-shots, and how many different faces are flagged by mistake?

Renders N synthetic faces of the default model (400 px, yaw ±20°, random skin tone). Per face:
the original A (PNG) and its copies, each another file of the same picture (other bytes, so the
sha256 idempotence does not catch them):

- ``jpeg95`` … ``jpeg30``: A re-saved as JPEG at several qualities;
- ``resize90`` … ``resize50``: A resized (Lanczos) to 90–50 %, JPEG 85;
- ``crop3``, ``crop6``: 3 % / 6 % cut off the left and top, JPEG 90;
- ``bright+10``, ``bright-10``: brightness ±10 %, JPEG 90;
- ``png2jpeg``: A as JPEG 90 with EXIF; ``exif_stripped``: that file with its EXIF segment removed;

and a re-shot B, the same face turned ``--yaw-step`` degrees further (the *same person*, which
``skullsearch similar`` serves: not a near-duplicate photo, reported apart). Everything goes
through ``Gallery.ingest`` (real dlib detector, photo fingerprints made in the detector workers,
real fit) with flagging off; then the pairs are measured and ingest's rule (the nearest *earlier*
face within the threshold, in ingest order) is replayed exactly for each threshold of a sweep.
Reported: per kind the photo-fingerprint distance to A and the share flagged; the nearest
different face; the false flags (a face flagged against another face's photo) at each threshold;
the identity criterion's figures; the fingerprint's cost per face, and with ``--scale-faces`` the
cost of the batched exact search against a gallery that size (random fingerprints).

    python benchmarks/near_duplicates.py [--faces 24] [--yaw-step 4] [--seed 0] [--scale-faces 1000000]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

from skullsearch import FaceModel, Gallery  # noqa: E402
from skullsearch.index import fingerprint  # noqa: E402
from skullsearch.index.ingest import NEAR_DUPLICATE_DISTANCE, NEAR_DUPLICATE_PHOTO_DISTANCE  # noqa: E402
from skullsearch.index.vectors import shape_vectors  # noqa: E402

COPIES = ("jpeg95", "jpeg75", "jpeg50", "jpeg30", "resize90", "resize70", "resize50", "crop3", "crop6",
          "bright+10", "bright-10", "png2jpeg", "exif_stripped")
RESHOT = "reshot"
SWEEP = (0.05, 0.08, 0.10, 0.12, 0.14, 0.15, 0.16, 0.18, 0.20, 0.25)


def strip_exif(jpeg: bytes) -> bytes:
    """The JPEG without its APP1 (EXIF) segments; the image data is untouched."""
    out, i = bytearray(jpeg[:2]), 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker = jpeg[i + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            break
        n = int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker != 0xE1:
            out += jpeg[i:i + 2 + n]
        i += 2 + n
    return bytes(out + jpeg[i:])


def _jpeg(im: Image.Image, quality: int, **kw) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def copies_of(a: Image.Image) -> dict[str, bytes]:
    """The copies of photo A (see the module docstring), as file bytes by kind."""
    w, h = a.size
    out = {f"jpeg{q}": _jpeg(a, q) for q in (95, 75, 50, 30)}
    for s in (90, 70, 50):
        out[f"resize{s}"] = _jpeg(a.resize((w * s // 100, h * s // 100), Image.LANCZOS), 85)
    for c in (3, 6):
        out[f"crop{c}"] = _jpeg(a.crop((w * c // 100, h * c // 100, w, h)), 90)
    out["bright+10"] = _jpeg(ImageEnhance.Brightness(a).enhance(1.1), 90)
    out["bright-10"] = _jpeg(ImageEnhance.Brightness(a).enhance(0.9), 90)
    exif = Image.Exif()
    exif[0x010E] = "a portrait (benchmark copy)"  # ImageDescription
    exif[0x0131] = "skullsearch benchmark"  # Software
    out["png2jpeg"] = _jpeg(a, 90, exif=exif.tobytes())
    out["exif_stripped"] = strip_exif(out["png2jpeg"])
    assert out["exif_stripped"] != out["png2jpeg"]
    return out


def render_photos(model, folder: Path, n: int, yaw_step: float, seed: int) -> None:
    """face{i}_a.png, face{i}_reshot.png (yaw + yaw_step) and face{i}_{copy}.jpg."""
    from skullsearch.encoder.render import face_camera, render_mesh

    rng = np.random.default_rng(seed)
    betas = torch.tensor(rng.standard_normal((n, 90)), dtype=torch.float32)
    with torch.no_grad():
        verts = model.vertices(shape=betas).numpy()
    for i, v in enumerate(verts):
        yaw = rng.uniform(-20, 20)
        albedo = np.array([0.8, 0.62, 0.5]) * rng.uniform(0.7, 1.05)
        shots = {}
        for tag, y in (("a", yaw), (RESHOT, yaw + yaw_step)):
            cam = face_camera(yaw_deg=y, size=400, distance=600, fov_mm=300,
                              center=np.array([0.0, -30.0, 0.0]))
            shots[tag] = Image.fromarray(render_mesh(v, model.faces, cam, albedo=albedo).image)
            shots[tag].save(folder / f"face{i:03d}_{tag}.png")
        for kind, data in copies_of(shots["a"]).items():
            (folder / f"face{i:03d}_{kind}.jpg").write_bytes(data)


def replay(d: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Ingest's rule on a distance matrix d (n, n): each face's nearest earlier face (in ingest
    order: order[i] < order[j] means i came first) when within threshold; −1 where none."""
    earlier = order[None, :] < order[:, None]
    dd = np.where(earlier, d, np.inf)
    j = dd.argmin(1)
    return np.where(dd[np.arange(len(d)), j] <= threshold, j, -1)


def fingerprint_cost(photos: Path, n: int = 64) -> float:
    """Median ms per face of the fingerprint (crop + descriptor) on the benchmark's photos."""
    from skullsearch.encoder.detectors import get_detector
    from skullsearch.encoder.images import read_image

    det = get_detector("dlib")
    times = []
    for p in sorted(photos.glob("*_a.png"))[:n]:
        img = read_image(p)
        faces = det.detect(img)
        if not faces:
            continue
        lm = faces[0].landmarks[None]
        fingerprint.photo_fingerprints(img.pixels, lm)
        t = time.perf_counter()
        for _ in range(5):
            fingerprint.photo_fingerprints(img.pixels, lm)
        times.append((time.perf_counter() - t) / 5 * 1e3)
    return float(np.median(times)) if times else float("nan")


def search_cost(n_faces: int, queries: int = 256, seed: int = 0) -> dict:
    """Seconds to build the exact fingerprint index over n_faces random fingerprints and to
    search one shard's worth of queries in it (what ingest pays per shard at that size)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_faces, fingerprint.DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    idx = fingerprint.flat_index(x)
    build = time.perf_counter() - t
    q = x[rng.choice(n_faces, queries, replace=False)] + 0.01
    idx.search(q[:8], 1)
    t = time.perf_counter()
    idx.search(q, 1)
    search = time.perf_counter() - t
    return {"scale_faces": n_faces, "scale_build_s": round(build, 3),
            "scale_search_s_per_256": round(search, 3),
            "scale_search_ms_per_face": round(search / queries * 1e3, 3),
            "scale_ram_mb": round(n_faces * fingerprint.DIM * 4 / 2**20, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=24)
    ap.add_argument("--yaw-step", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--keep", help="copy the photos to this folder (to look at them)")
    ap.add_argument("--scale-faces", type=int, default=0,
                    help="also time the exact fingerprint search against this many faces")
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="skullsearch-neardup-"))
    try:
        model = FaceModel.default()
        photos = scratch / "photos"
        photos.mkdir()
        t0 = time.perf_counter()
        render_photos(model, photos, args.faces, args.yaw_step, args.seed)
        if args.keep:
            shutil.copytree(photos, args.keep, dirs_exist_ok=True)
        t1 = time.perf_counter()
        g = Gallery.create(scratch / "gallery", face_model=model)
        rep = g.ingest([photos], workers=args.workers, near_duplicate_distance=0,
                       near_duplicate_photo_distance=0)
        n_photos = len(list(photos.iterdir()))
        print(f"{n_photos} photos rendered in {t1 - t0:.1f} s, ingested in {time.perf_counter() - t1:.1f} s: "
              f"{rep.faces} faces, failures {rep.failures}")
        t = g.faces(columns=["face_id", "path", "code", "photo_fingerprint", "landmarks"])
        names = [Path(p).stem for p in t.column("path").to_pylist()]
        who = np.array([s.split("_", 1)[0] for s in names])
        kind = np.array([s.split("_", 1)[1] for s in names])
        order = np.argsort(np.argsort(t.column("face_id").to_numpy()))
        # one face per photo (the largest): the renders hold one face each
        fp = np.stack([np.asarray(x, np.float32) if x is not None else np.full(63, np.nan, np.float32)
                       for x in t.column("photo_fingerprint").to_pylist()])
        have_fp = ~np.isnan(fp).any(1)
        v = shape_vectors(np.stack(t.column("code").to_numpy(zero_copy_only=False))).astype(np.float64)
        fp64 = np.nan_to_num(fp.astype(np.float64), nan=10.0)
        dp = np.sqrt(np.maximum(((fp64[:, None] - fp64[None]) ** 2).sum(-1), 0))
        di = np.sqrt(np.maximum(((v[:, None] - v[None]) ** 2).sum(-1), 0))
        np.fill_diagonal(dp, np.inf)
        np.fill_diagonal(di, np.inf)
        same = who[:, None] == who[None]
        orig = {w: i for i, (w, k) in enumerate(zip(who, kind, strict=True)) if k == "a"}
        # landmark agreement: the alignment points' largest move between A and the copy, in
        # eye distances (dlib sometimes places a copy's landmarks very differently)
        lms = np.stack(t.column("landmarks").to_numpy(zero_copy_only=False)).reshape(-1, 68, 2)
        res = {"faces": args.faces, "photos": n_photos, "faces_ingested": rep.faces,
               "yaw_step_deg": args.yaw_step, "photo_threshold": NEAR_DUPLICATE_PHOTO_DISTANCE,
               "identity_threshold": NEAR_DUPLICATE_DISTANCE}
        print(f"\nphoto fingerprint (L2, unit vectors) and identity (shape-code L2) distance to the "
              f"original, share within the thresholds {NEAR_DUPLICATE_PHOTO_DISTANCE} / "
              f"{NEAR_DUPLICATE_DISTANCE}:")
        pair_rows = {}
        for k in (*COPIES, RESHOT):
            idx = [i for i in range(len(kind)) if kind[i] == k and who[i] in orig]
            if not idx:
                continue
            a = np.array([orig[who[i]] for i in idx])
            pd_, id_ = dp[idx, a], di[idx, a]
            pair_rows[k] = (np.array(idx), a)
            res[f"{k}_photo_median"] = round(float(np.median(pd_)), 4)
            res[f"{k}_photo_within"] = round(float(np.mean(pd_ <= NEAR_DUPLICATE_PHOTO_DISTANCE)), 4)
            res[f"{k}_identity_median"] = round(float(np.median(id_)), 4)
            res[f"{k}_identity_within"] = round(float(np.mean(id_ <= NEAR_DUPLICATE_DISTANCE)), 4)
            print(f"  {k:14s} n={len(idx):3d}  photo median {np.median(pd_):.3f} max {pd_.max():.3f} "
                  f"within {np.mean(pd_ <= NEAR_DUPLICATE_PHOTO_DISTANCE):5.0%}   identity median "
                  f"{np.median(id_):.3f} within {np.mean(id_ <= NEAR_DUPLICATE_DISTANCE):5.0%}")
        cidx = np.concatenate([pair_rows[k][0] for k in COPIES if k in pair_rows])
        ca = np.concatenate([pair_rows[k][1] for k in COPIES if k in pair_rows])
        pts_a = fingerprint.align_points(lms[ca])
        iod = np.linalg.norm(pts_a[:, 1] - pts_a[:, 0], axis=1)
        # the copy's landmarks in the original's pixels (undo the resize / crop)
        lm_c = lms[cidx].copy()
        for j, i in enumerate(cidx):
            k = kind[i]
            if k.startswith("resize"):
                lm_c[j] = (lm_c[j] + 0.5) * 100 / int(k[6:]) - 0.5
            elif k.startswith("crop"):
                lm_c[j] += 400 * int(k[4:]) // 100
        moved = np.abs(fingerprint.align_points(lm_c) - pts_a).max((1, 2)) / iod
        agree = moved <= 0.05
        within = dp[cidx, ca] <= NEAR_DUPLICATE_PHOTO_DISTANCE
        res["copies_landmarks_agree_share"] = round(float(agree.mean()), 4)
        res["copies_within_landmarks_agree"] = round(float(np.mean(within[agree])), 4)
        res["copies_within_landmarks_moved"] = (round(float(np.mean(within[~agree])), 4)
                                                if (~agree).any() else None)
        print(f"  dlib put {1 - agree.mean():.0%} of the copies' alignment points > 5 % of the eye distance "
              f"away from the original's: within the threshold {np.mean(within[agree]):.0%}"
              f" of the others, {res['copies_within_landmarks_moved'] or 0:.0%} of those")
        diff_p = np.where(same, np.inf, dp)
        nn = diff_p.min(1)
        diff_pairs = dp[np.triu_indices(len(dp), 1)][~same[np.triu_indices(len(dp), 1)]]
        res["different_nn_min"] = round(float(nn.min()), 4)
        res["different_nn_p05"] = round(float(np.percentile(nn, 5)), 4)
        res["different_nn_median"] = round(float(np.median(nn)), 4)
        print(f"  nearest different face (photo): min {nn.min():.3f}, 5th percentile "
              f"{np.percentile(nn, 5):.3f}, median {np.median(nn):.3f}")
        # ingest's rule replayed for each threshold: the photo criterion alone, then with the
        # identity criterion as the fallback (what ingest records)
        is_copy = np.isin(kind, COPIES)
        is_reshot = kind == RESHOT
        print("\nphoto threshold sweep (ingest's rule replayed in ingest order; a false flag: "
              "a face flagged against another face's photo):")
        sweep = []
        id_flag = replay(di, order, NEAR_DUPLICATE_DISTANCE)
        for thr in sorted({*SWEEP, NEAR_DUPLICATE_PHOTO_DISTANCE}):
            pf = replay(np.where(have_fp[:, None] & have_fp[None], dp, np.inf), order, thr)
            flag = np.where(pf >= 0, pf, id_flag)
            wrong = (flag >= 0) & ~same[np.arange(len(flag)), np.maximum(flag, 0)]
            row = {"threshold": thr,
                   "copies_flagged": round(float(np.mean(flag[is_copy] >= 0)), 4),
                   "copies_flagged_photo": round(float(np.mean(pf[is_copy] >= 0)), 4),
                   "reshots_flagged": round(float(np.mean(flag[is_reshot] >= 0)), 4),
                   "false_flags": int(wrong.sum()),
                   "false_flags_photo": int(((pf >= 0) & ~same[np.arange(len(pf)), np.maximum(pf, 0)]).sum()),
                   "different_pairs_within": int((diff_pairs <= thr).sum())}
            sweep.append(row)
            mark = "  <- default" if thr == NEAR_DUPLICATE_PHOTO_DISTANCE else ""
            print(f"  {thr:.2f}: copies flagged {row['copies_flagged']:6.1%} (photo criterion "
                  f"{row['copies_flagged_photo']:6.1%}), re-shots {row['reshots_flagged']:6.1%}, false flags "
                  f"{row['false_flags']} (photo {row['false_flags_photo']}), different-face pairs within "
                  f"{row['different_pairs_within']}{mark}")
            if thr == NEAR_DUPLICATE_PHOTO_DISTANCE:
                res.update({f"default_{k}": v for k, v in row.items() if k != "threshold"})
                res["default_false_flag_pairs"] = [[names[i], names[flag[i]], round(float(dp[i, flag[i]]), 4)]
                                                   for i in np.flatnonzero(wrong)]
                for a_, b_, x_ in res["default_false_flag_pairs"]:
                    print(f"    false flag: {a_} flagged against {b_} (photo distance {x_:.3f})")
                right = (flag >= 0) & same[np.arange(len(flag)), np.maximum(flag, 0)]
                per_kind = []
                for k in (*COPIES, RESHOT):
                    sel = kind == k
                    res[f"{k}_flagged"] = round(float(np.mean(right[sel])), 4)
                    per_kind.append(f"{k} {np.mean(right[sel]):.0%}")
                print("    flagged per kind (against a photo of the same face): " + ", ".join(per_kind))
        res["sweep"] = sweep
        # the alternative: 64-bit pHash of the same crops (one bit per kept coefficient, above
        # their median: the fingerprint's order, so computable from it), Hamming distance
        bits = fp > np.median(fp, axis=1, keepdims=True)
        ham = (bits[:, None] != bits[None]).sum(-1).astype(np.float64)
        ham[~(have_fp[:, None] & have_fp[None])] = np.inf
        np.fill_diagonal(ham, np.inf)

        def zero_false(dist, thresholds):
            best = (None, 0.0)
            for thr in thresholds:
                f = replay(dist, order, thr)
                if ((f >= 0) & ~same[np.arange(len(f)), np.maximum(f, 0)]).any():
                    break
                best = (thr, float(np.mean(f[is_copy] >= 0)))
            return best

        res["phash_zero_false_threshold"], res["phash_zero_false_copies"] = zero_false(ham, range(0, 33))
        res["fingerprint_zero_false_threshold"], res["fingerprint_zero_false_copies"] = zero_false(
            dp, np.round(np.arange(0.01, 0.4, 0.005), 3))
        print("  largest threshold with no false flag: fingerprint "
              f"{res['fingerprint_zero_false_threshold']} "
              f"(copies flagged {res['fingerprint_zero_false_copies']:.1%}); 64-bit pHash of the same "
              f"crops {res['phash_zero_false_threshold']} bits ({res['phash_zero_false_copies']:.1%})")
        res["identity_only_copies_flagged"] = round(float(np.mean(id_flag[is_copy] >= 0)), 4)
        res["identity_only_false_flags"] = int(((id_flag >= 0) & ~same[np.arange(len(id_flag)),
                                                                       np.maximum(id_flag, 0)]).sum())
        print(f"  identity criterion alone ({NEAR_DUPLICATE_DISTANCE}): copies flagged "
              f"{res['identity_only_copies_flagged']:.1%}, false flags {res['identity_only_false_flags']}")
        res["fingerprint_ms_per_face"] = round(fingerprint_cost(photos), 3)
        print(f"\nfingerprint: {res['fingerprint_ms_per_face']:.2f} ms per face (crop + descriptor, "
              "one core)")
        if args.scale_faces:
            res.update(search_cost(args.scale_faces))
            print(f"exact search at {args.scale_faces:,} faces: index built in {res['scale_build_s']} s "
                  f"({res['scale_ram_mb']} MB), {res['scale_search_s_per_256']} s per 256 new faces "
                  f"({res['scale_search_ms_per_face']} ms per face)")
        emit(res)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
