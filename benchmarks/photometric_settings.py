"""The photometric refinement's settings, each on renders (synthetic truth) and on real photos.

A setting that wins on renders of the model's own faces may lose on photos: a render's shading is
exactly the refinement's model of it (Lambertian, one albedo, a white light), a photo's is not
(brows, lips, beard, make-up, specular skin, cast shadows). This benchmark puts both beside each
other, one row per setting, the defaults first:

- renders: ``--renders N`` faces drawn from the default model's prior (seed ``--seed``; the
  defaults were set on seed 5, the identity benchmark uses seed 0), one photo each at yaw ±40°,
  pitch, light, skin tone and a little expression (as ``identity.py``'s), decoded, detected by dlib
  and landmark-fitted once; each setting refines those fits. Reported: the identity error as a
  ratio to the mean face's (the landmark fit's beside it), the landmark residual, the seconds,
  and the final photometric energy (its weighted term, mean per face; also for the real photos)
  and the share of the photos' colour variance the model's shading explains (``shading_r2``,
  scale-free: comparable across ``photo_gamma``; over the vertices the model claims, so with
  ``cast_shadows`` over fewer, its share left out as in a cast shadow reported as ``shadowed``):
  how far a set's shading lies from the refinement's model of it; where a setting reads the light's
  direction off each photo (``cast_shadows``, ``specular``) its mean elevation above the head's
  horizon (``light_up_deg``; the renders' true one in their header: ``--light-up`` draws it
  higher); and by part of the face how far
  the refined faces' landmarks lie from the points they were fitted to (inter-ocular distances).
- real photos: ``--photos DIR``, a folder of person sub-folders (the labels only score): each photo
  detected and fitted alone, refined by each setting; the same-vs-different person pair AUC of the
  shape codes (L2). A handful of photos is a check, not a measure: say how many.

    python benchmarks/photometric_settings.py [--renders 40] [--seed 5] [--photos DIR]
        [--try "landmark_cauchy=0.06" --try "weight=20" ...] [--texture] [--textured-embedding]
        [--exact-landmarks [PARTS]] [--camera-gamma 2.2] [--shadows]

The renders' report also says how far dlib's points lie from the exact ones (the faces' own 68
points as the fit models them, projected by each render's camera), by part of the face, and how
far each jaw point lies inside the model's silhouette (``detector_error_iod``).

``--exact-landmarks``: the renders' faces fitted to their own 68 landmarks projected exactly
(the boxes still dlib's) instead of dlib's points — what the refinement does without the
detector's error, to tell its part from the shading's. With PARTS (comma-separated of ``jaw,
brows, nose, eyes, outer_lips, inner_lips``) only those parts' points are exact, dlib's elsewhere:
which part's errors cost the most.

Each ``--try`` is one setting: space-separated ``KEY=VALUE`` of
:class:`~skullsearch.encoder.photometric.PhotometricConfig`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    LANDMARK_GROUPS,
    add_camera_arguments,
    add_jaw_calibration_argument,
    add_landmark_weights_argument,
    add_texture_argument,
    add_textured_embedding_argument,
    auc,
    emit,
    exact_landmarks,
    faces_landmarks_px,
    identity_errors,
    inter_ocular,
    mean_residual_px,
    photo_copies,
    photometric_config,
    random_faces,
    render_photos,
    residual_by_group,
    same_person,
)

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.detectors import get_detector
from skullsearch.encoder.encode import detect_faces, fit_faces
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import FitConfig
from skullsearch.encoder.images import IMAGE_EXTS, read_images
from skullsearch.encoder.photometric import refine_faces
from skullsearch.encoder.render import light_elevation
from skullsearch.index.fingerprint import photo_fingerprints


def fitted(model, paths, config=None):
    """dlib → landmark fit of each photo alone (``config``: a FitConfig): the faces (largest per
    photo) and the decoded pixels by path."""
    images = read_images(paths)
    faces, _ = detect_faces(images, get_detector("dlib"), all_faces=False)
    fit_faces(model, faces, config=config)
    return faces, {im.path: im.pixels for im in images if hasattr(im, "pixels")}


def shapes(faces) -> np.ndarray:
    return code_layout.split(np.stack([f.code for f in faces])).shape[:, :code_layout.N_SHAPE]


def refined(model, faces, pixels, cfg, config=None):
    """Copies of the faces refined with ``cfg`` (and the fit's ``config``), the seconds it took and
    the final energy's terms (mean per face)."""
    out = copy.deepcopy(faces)
    t = time.time()
    terms = refine_faces(model, out, pixels, config, cfg)
    return out, time.time() - t, terms


def off_detector(model, faces, textured: bool) -> dict:
    """How far the faces' landmarks lie from the points they were fitted to, by part of the face
    (inter-ocular distances): where a setting moves faces off the detector's points."""
    fitted = faces_landmarks_px(model, faces, textured)
    return residual_by_group(fitted, np.stack([f.landmarks for f in faces]))


def detector_error_iod(detected: np.ndarray, exact: np.ndarray) -> dict:
    """dlib's points (n, 68, 2) px against the exact ones (n, 68, 2), in inter-ocular distances: the
    mean distance by part of the face, and ``jaw_inward`` (17,): the median offset of each jaw point
    towards the face's centre (the nose's points; > 0: inside the model's silhouette)."""
    out = residual_by_group(detected, exact)
    iod = inter_ocular(exact)
    outward = exact[:, :17] - exact[:, 27:36].mean(1, keepdims=True)
    outward /= np.linalg.norm(outward, axis=-1, keepdims=True)
    inward = -((detected[:, :17] - exact[:, :17]) * outward).sum(-1) / iod[:, None]
    return out | {"jaw_inward": [round(float(v), 3) for v in np.median(inward, 0)]}


def real_copies(faces, pixels) -> np.ndarray:
    """(n, n) the pairs of the real photos' faces that are two files of one picture."""
    fp = np.concatenate([photo_fingerprints(pixels[f.image], f.landmarks[None]) for f in faces])
    return photo_copies(np.array([f.sha256 for f in faces]), fp)


def pair_auc(shape: np.ndarray, who: np.ndarray, copies: np.ndarray | None = None) -> float:
    iu, same = same_person(who, copies)
    d = np.linalg.norm(shape[:, None] - shape[None], axis=-1)[iu]
    return round(auc(d[same], d[~same]), 4)


def _exact_parts(arg: str | None) -> list[str]:
    """``--exact-landmarks``' parts: none (None), all ("all") or the comma-separated ones."""
    if arg is None:
        return []
    if arg == "all":
        return list(LANDMARK_GROUPS)
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(LANDMARK_GROUPS))
    if unknown or not parts:
        sys.exit(f"--exact-landmarks: unknown parts {unknown}; choose from {', '.join(LANDMARK_GROUPS)}")
    return parts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renders", type=int, default=40, help="rendered faces (0: none)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--photos", type=Path, default=None, help="a folder of person sub-folders (real photos)")
    add_texture_argument(ap)
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar='"KEY=VALUE ..."',
                    help="one setting (repeatable); the defaults are always the first row")
    add_textured_embedding_argument(ap)
    add_jaw_calibration_argument(ap)
    add_landmark_weights_argument(ap)
    add_camera_arguments(ap)
    ap.add_argument("--distance-scale", type=float, default=1.0, metavar="S",
                    help="the renders' camera distance x S (0.386: selfies 19-35 cm away; 1: 0.5-0.9 m)")
    ap.add_argument("--exif", action="store_true",
                    help="the renders carry their 35 mm-equivalent focal length in EXIF, which the fit "
                    "reads (FitConfig.exif_focal); without, the fit guesses 1.2x the longer side")
    ap.add_argument("--exact-landmarks", nargs="?", const="all", default=None, metavar="PARTS",
                    help="fit the renders to their faces' own landmarks projected exactly, not dlib's "
                         f"(PARTS: only these, comma-separated of {','.join(LANDMARK_GROUPS)})")
    a = ap.parse_args(argv)
    exact_parts = _exact_parts(a.exact_landmarks)
    # (exact jaw points are on the silhouette already: dlib's calibrated offsets are not for them)
    fit = FitConfig(textured_embedding=a.textured_embedding,
                    jaw_calibration=a.jaw_calibration and "jaw" not in exact_parts,
                    landmark_weights=a.landmark_weights and not exact_parts)
    settings = [[]] + [t.split() for t in a.tries]
    configs = [photometric_config(s) for s in settings]  # refuse a bad key before any work
    model = FaceModel.from_env()
    rows = [{"setting": " ".join(s) or "defaults"} for s in settings]
    out = {"rows": rows, "textured_embedding": a.textured_embedding, "jaw_calibration": fit.jaw_calibration,
           "landmark_weights": fit.landmark_weights}
    if a.renders > 0:
        rng = np.random.default_rng(a.seed)
        shape, expr, pose = random_faces(model, a.renders, rng, expr_scale=0.1)
        mask = face_region(model)
        cameras: list = []
        lights: list = []
        with tempfile.TemporaryDirectory() as tmp:
            paths = render_photos(model, tmp, shape, expr, pose, rng, max_yaw=40.0, texture=a.texture,
                                  cameras=cameras, gamma=a.camera_gamma, shadows=a.shadows,
                                  light_up=a.light_up, lights=lights, distance_scale=a.distance_scale,
                                  exif=a.exif)
            faces, pixels = fitted(model, paths, fit)
        which = [int(Path(f.image).stem[5:]) for f in faces]
        exact = exact_landmarks(model, shape, expr, pose, cameras, textured=a.textured_embedding)
        detector_error = detector_error_iod(np.stack([f.landmarks for f in faces]), exact[which])
        if exact_parts:  # the faces' own points in place of dlib's, fitted again
            ix = np.concatenate([np.arange(68)[LANDMARK_GROUPS[g]] for g in exact_parts])
            for f, i in zip(faces, which, strict=True):
                f.landmarks = f.landmarks.copy()
                f.landmarks[ix] = exact[i, ix]
            fit_faces(model, faces, config=fit)
        truth = shape.numpy()[which]
        err, err0 = identity_errors(model, mask, shapes(faces), truth)
        refined(model, faces[:1], pixels, configs[0], fit)  # the model's surface rig, built once, not timed
        out["renders"] = {"truth": "synthetic (the default model's own faces)", "seed": a.seed,
                          "texture": a.texture, "camera_gamma": a.camera_gamma,
                          "shadows": a.shadows, "light_up": a.light_up,
                          "distance_scale": a.distance_scale, "exif": a.exif,
                          "true_focal_factor": [round(float(q), 2) for q in np.percentile(
                              [c.focal / max(c.width, c.height) for c in cameras], [0, 50, 100])],
                          "fitted_focal_factor_median": round(float(np.median(
                              [f.focal / max(f.image_size) for f in faces])), 2),
                          "light_up_deg": round(float(np.mean([light_elevation(lights[i])
                                                               for i in which])), 1),
                          "exact_landmarks": exact_parts or False,
                          "photos": a.renders, "faces_found": len(faces),
                          "landmark_fit_ratio_to_mean_face": round(float(err.mean() / err0.mean()), 4),
                          "landmark_fit_residual_px": mean_residual_px(faces),
                          "detector_error_iod": detector_error}
        for row, cfg in zip(rows, configs, strict=True):
            fs, sec, terms = refined(model, faces, pixels, cfg, fit)
            err, _ = identity_errors(model, mask, shapes(fs), truth)
            row["renders_ratio_to_mean_face"] = round(float(err.mean() / err0.mean()), 4)
            row["renders_residual_px"] = mean_residual_px(fs)
            row["renders_photometric_energy"] = round(terms.get("photometric", float("nan")), 5)
            row["renders_shading_r2"] = round(terms.get("shading_r2", float("nan")), 4)
            if "shadowed" in terms:  # cast_shadows: the share of the seen vertices left out
                row["renders_shadowed"] = round(terms["shadowed"], 4)
            if "light_up_deg" in terms:  # the light read off the photos (cast_shadows, specular)
                row["renders_light_up_deg"] = round(terms["light_up_deg"], 1)
            row["renders_off_detector_iod"] = off_detector(model, fs, a.textured_embedding)
            row["renders_seconds_per_face"] = round(sec / max(len(fs), 1), 3)
            print(row, file=sys.stderr, flush=True)
    if a.photos is not None:
        paths = sorted(p for p in a.photos.glob("*/*") if p.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise SystemExit(f"--photos {a.photos}: no photos in person sub-folders (DIR/PERSON/PHOTO.jpg)")
        faces, pixels = fitted(model, paths, fit)
        who = np.array([Path(f.image).parent.name for f in faces])
        copies = real_copies(faces, pixels)  # (left out: not two photos of a person)
        _, same = same_person(who, copies)
        out["real"] = {"truth": "real (labelled photos; a check at this size)", "photos": len(paths),
                       "faces": len(faces), "persons": int(len(set(who))), "same_pairs": int(same.sum()),
                       "different_pairs": int((~same).sum()),
                       "copy_pairs_left_out": int(np.triu(copies, 1).sum()),
                       "landmark_fit_auc_shape_code": pair_auc(shapes(faces), who, copies),
                       "landmark_fit_residual_px": mean_residual_px(faces)}
        for row, cfg in zip(rows, configs, strict=True):
            fs, _, terms = refined(model, faces, pixels, cfg, fit)
            row["real_auc_shape_code"] = pair_auc(shapes(fs), who, copies)
            row["real_residual_px"] = mean_residual_px(fs)
            row["real_photometric_energy"] = round(terms.get("photometric", float("nan")), 5)
            row["real_shading_r2"] = round(terms.get("shading_r2", float("nan")), 4)
            if "shadowed" in terms:
                row["real_shadowed"] = round(terms["shadowed"], 4)
            if "light_up_deg" in terms:
                row["real_light_up_deg"] = round(terms["light_up_deg"], 1)
            row["real_off_detector_iod"] = off_detector(model, fs, a.textured_embedding)
            print(row, file=sys.stderr, flush=True)
    emit(out)
    return out


if __name__ == "__main__":
    main()
