"""Identity end to end: do photos of one person give that person's face, and find them from a skull?

Persons are faces drawn from the default model's prior; each is photographed ``--photos`` times
(perspective renders, yaw ±40°, pitch ±10°, random distance, light, skin tone and a little
expression) and every photo goes through the real decoder, dlib detector and batched fit.

- **identity error**: fitted neutral face against the true one over the face region
  (similarity-aligned), as a ratio to the mean face's error on the same persons;
- **re-shot verification**: AUC of same-person vs different-person pairs of photos, from the
  distance between their fitted shape codes, and from their person descriptors (dlib's face
  recognition network) (chance 0.5);
- **identification**: a skull's extended landmarks made from each person's *true* face
  (depth error ~ N(0, table SD), 1 mm placement, a random rigid motion); gallery = the persons'
  photo-encoded faces (one photo each, or all ``--photos`` fitted with one shared shape, paper
  Eq. 2) plus distractors up to ``--gallery`` faces, drawn from the prior and "re-encoded" with
  the measured fit errors (the persons' own shape-code residuals, resampled); every face scored
  exactly; rank-1 / rank-10 of the true person by S and by likelihood.

    python benchmarks/identity.py [--persons 100] [--photos 3] [--gallery 3000 [10000 ...]] [--seed 0]
                                  [--identity-prior [--identity-prior-file NPZ]] [--uncertainty]
                                  [--landmark-noise 0.03] [--photo-correlation RHO]
                                  [--detector dlib|mesh] [--pose-embedding] [--textured-embedding]
                                  [--photometric] [--camera-gamma 2.2] [--shadows] [--exif]
                                  [--no-jaw-calibration]
                                  [--photo-set KEY=VALUE ...] [--cnn CKPT [--cnn-mode alone|seed]]

``--uncertainty`` fits with the posterior covariance (``FitConfig(posterior=True)``), adds the
re-shot AUC from the soft-tissue points (L2, and Mahalanobis under both faces' Σ_face) and
``likelihood_cov`` ranks: the likelihood with each face's own soft-tissue covariance
(Σ_tissue + Σ_face; distractors carry the covariance of the person photo whose residual they
borrow), and its calibration: the median Mahalanobis distance² per point of the true soft-tissue
error under Σ_face (2.37, χ²₃'s, if calibrated) and the share of points inside the 95 % ellipsoid.
With ``--photometric`` Σ_face is the refined fit's, and the same figures under the landmark fit's
(the ``landmark_cov`` keys) stand beside it. ``--photo-correlation RHO`` fits the persons' photos
with one shape once more, their posterior counting them as correlated evidence by RHO instead of
the default (``FitConfig.photo_correlation``: K photos as K / (1 + (K − 1) ρ) independent ones;
the codes are the same; 0: as independent, as before it existed), and ranks with that Σ_face too
(``likelihood_cov_rho``), with its calibration (``uncertainty_<K>_photos_rho_*``).
``--matched-distractors`` also ranks the persons' one-shape faces among distractors re-encoded
as those faces were (the one-shape fits' errors and covariances; label ``<K>_photos_matched``)
rather than as one photo's: with one-photo distractors the true faces alone carry a narrower
three-photo Σ_face, which the likelihood's determinant favours.

``--cnn CKPT`` measures a trained CNN encoder (``benchmarks/cnn_train.py``) in the fit's place:
its codes alone (three photos: the person's mean shape code), or seeding the fit.

``--identity-prior`` fits with the shape predicted from each photo's person descriptor
(:mod:`skullsearch.encoder.identity_prior`, learned on other renders of the same model: a
synthetic figure; real photos lie outside its domain); ``--identity-prior-file`` another one (one
learned on textured renders: ``skullsearch model train-identity-prior --texture --out FILE``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import (
    CHI2_3_95,
    add_camera_arguments,
    add_identity_prior_file_argument,
    add_jaw_calibration_argument,
    add_landmark_weights_argument,
    add_texture_argument,
    add_textured_embedding_argument,
    auc,
    emit,
    face_bands,
    face_normals,
    identity_errors,
    photometric_config,
    random_faces,
    render_photos,
    synthetic_skull_targets,
    table_sd,
    tissue_errors_under_cov,
)

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.detectors import get_detector
from skullsearch.encoder.encode import describe_faces, detect_faces, fit_faces
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.fitting import FitConfig
from skullsearch.encoder.images import read_images
from skullsearch.index.ingest import neutral_soft_tissue
from skullsearch.retrieval.score import ScoreConfig, rank_order, score


def encode(model, paths, persons=None, descriptors=False, prior=None, config=None, detector="dlib",
           photometric=None, cnn=None, cnn_mode="alone", landmark_covs: list | None = None):
    """Fitted codes (n, 228), the photo index of each face (photos without a face dropped),
    when asked the person descriptors (n, 128) (else None), and the soft-tissue covariances
    (n, 36, 3, 3) when the config asks for the posterior (else None). prior: an IdentityPrior for
    the fit (computes the descriptors); photometric: a PhotometricConfig to refine the fits with
    the photos' shading (the covariances are then the refined fit's; ``landmark_covs``, a list,
    gets the landmark fit's before the refinement). cnn: a CNN encoder checkpoint
    (:mod:`skullsearch.encoder.cnn`) whose predictions are the codes (``cnn_mode`` "alone"; with
    persons, each face gets its person's mean shape code: the feed-forward Eq. 2) or seed the fit
    ("seed")."""
    images = read_images(paths)
    faces, _ = detect_faces(images, get_detector(detector), all_faces=False)
    if persons is not None:
        for f in faces:
            f.person = str(persons[int(Path(f.image).stem[5:])])
    descs = None
    if descriptors or prior is not None:
        describe_faces(faces, {im.path: im.pixels for im in images if hasattr(im, "pixels")})
        descs = np.stack([f.descriptor if f.descriptor is not None else np.full(128, np.nan, np.float32)
                          for f in faces])
    init = None
    if cnn is not None and faces:
        from skullsearch.encoder.cnn import encode_detected, load_checkpoint

        net, _ = load_checkpoint(cnn, model=model)
        pixels = {im.path: im.pixels for im in images if hasattr(im, "pixels")}
        init = encode_detected(net, faces, pixels)
        if cnn_mode == "alone":
            shape_slice = code_layout.SLICES["shape"]
            if persons is not None:
                who = np.array([f.person for f in faces])
                for p in np.unique(who):
                    init[who == p, shape_slice] = init[who == p, shape_slice].mean(0)
            idx = np.array([int(Path(f.image).stem[5:]) for f in faces])
            return init, idx, descs, None
    fit_faces(model, faces, config=config, init=init, identity_prior=prior)
    if landmark_covs is not None and config is not None and config.posterior:
        landmark_covs.append(np.stack([f.tissue_cov for f in faces]))
    if photometric is not None:
        from skullsearch.encoder.photometric import refine_faces

        refine_faces(model, faces, {im.path: im.pixels for im in images if hasattr(im, "pixels")},
                     config, photometric)
    idx = np.array([int(Path(f.image).stem[5:]) for f in faces])
    covs = np.stack([f.tissue_cov for f in faces]) if config is not None and config.posterior else None
    return np.stack([f.code for f in faces]), idx, descs, covs


def reshot_auc_tissue(pts: np.ndarray, cov: np.ndarray, person: np.ndarray) -> dict:
    """Re-shot AUC from the faces' 36 soft-tissue points (n, 36, 3) mm: by their L2 distance, and
    by the Mahalanobis distance under both faces' fit covariances (n, 36, 3, 3) summed per point,
    Σ_k Δ_kᵀ (Σ_a,k + Σ_b,k)⁻¹ Δ_k: a frontal photo fixes widths and heights, not depths, so a
    depth difference counts for less than a width difference of the same size."""
    n = len(pts)
    l2, mah, same = [], [], []
    for i in range(n - 1):
        delta = pts[i + 1:] - pts[i]  # (m, 36, 3)
        s = cov[i + 1:] + cov[i]
        l2.append(np.linalg.norm(delta.reshape(len(delta), -1), axis=1))
        mah.append(np.einsum("mka,mka->m", delta, np.linalg.solve(s, delta[..., None])[..., 0]))
        same.append(person[i + 1:] == person[i])
    l2, mah, same = np.concatenate(l2), np.concatenate(mah), np.concatenate(same)
    return {"reshot_auc_tissue_l2": round(auc(l2[same], l2[~same]), 3),
            "reshot_auc_tissue_mahalanobis": round(auc(mah[same], mah[~same]), 3)}


def identification(model, fits, person, photos: int, dis: np.ndarray, targets, present, sd,
                   dis_cov=None, landmark_covs: dict | None = None, landmark_dis_cov=None,
                   correlated_covs: dict | None = None, distractors: dict | None = None) -> dict:
    """Rank-1 / rank-10 by S and by likelihood of each person's skull among the persons'
    photo-encoded faces (one photo, or all photos with one shared shape) plus distractors
    (shape codes (m, S)). fits: {label: (codes, photo index, covariances or None)}; with
    covariances (and dis_cov (m, 36, 3, 3)) also by the likelihood with them; landmark_covs
    ({label: covariances}, with landmark_dis_cov): the refined fits' landmark-fit covariances, as
    ``likelihood_landmark_cov``; correlated_covs ({label: covariances}): the same fits'
    covariances with ``FitConfig.photo_correlation``, as ``likelihood_cov_rho``.
    distractors ({label: {"dis", "dis_cov", "landmark_dis_cov", "correlated_dis_cov"}}): a label's
    own distractors (and their covariances) in place of the shared ones."""
    cfg = ScoreConfig()
    out = {}
    shared = {"dis": dis, "dis_cov": dis_cov, "landmark_dis_cov": landmark_dis_cov,
              "correlated_dis_cov": dis_cov}
    for label, (codes, idx, covs) in fits.items():
        own = (distractors or {}).get(label, shared)
        dis, dis_cov, landmark_dis_cov = own["dis"], own["dis_cov"], own["landmark_dis_cov"]
        first = {}
        for row, i in enumerate(idx):  # one gallery face per person
            first.setdefault(int(person[i]), row)
        members = np.array(sorted(first))
        rows = np.array([first[p] for p in members])
        gal = np.concatenate([codes[rows], code_layout.pack(shape=dis).astype(np.float32)])
        pts = neutral_soft_tissue(model, gal)
        cov = None if covs is None else np.concatenate([covs[rows], dis_cov])
        lcov = None if not landmark_covs else np.concatenate([landmark_covs[label][rows], landmark_dis_cov])
        hits = {"s": [0, 0], "likelihood": [0, 0]}
        if cov is not None:
            hits["likelihood_cov"] = [0, 0]
        if lcov is not None:
            hits["likelihood_landmark_cov"] = [0, 0]
        ccov = (None if cov is None or label not in (correlated_covs or {})
                else np.concatenate([correlated_covs[label][rows], own["correlated_dis_cov"]]))
        if ccov is not None:
            hits["likelihood_cov_rho"] = [0, 0]
        for row, p in enumerate(members):
            sc = score(pts, targets[p], present[p], sd, cfg)
            orders = {k: rank_order(sc, k) for k in ("s", "likelihood")}
            if cov is not None:
                sc.likelihood = score(pts, targets[p], present[p], sd, cfg, face_cov=cov).likelihood
                orders["likelihood_cov"] = rank_order(sc, "likelihood")
            if lcov is not None:
                sc.likelihood = score(pts, targets[p], present[p], sd, cfg, face_cov=lcov).likelihood
                orders["likelihood_landmark_cov"] = rank_order(sc, "likelihood")
            if ccov is not None:
                sc.likelihood = score(pts, targets[p], present[p], sd, cfg, face_cov=ccov).likelihood
                orders["likelihood_cov_rho"] = rank_order(sc, "likelihood")
            for rank_by in hits:
                r = int(np.flatnonzero(orders[rank_by] == row)[0])
                hits[rank_by][0] += r == 0
                hits[rank_by][1] += r < 10
        for rank_by, (h1, h10) in hits.items():
            out[f"{label}_{rank_by}_rank1"] = round(h1 / len(members), 3)
            out[f"{label}_{rank_by}_rank10"] = round(h10 / len(members), 3)
    return out


def label_free(model, paths, person, idx1, descs1, prior, cfg, a, fits, mask, true_shape, err0) -> dict:
    """Person groups from the descriptors alone (the person gallery's: k-NN links under the
    threshold, Chinese whispers, split into cliques), each group fitted with one shape; adds the codes to
    ``fits`` and returns the grouping's pairwise precision / recall and the identity ratio."""
    from skullsearch.encoder.descriptors import PERSON_DISTANCE
    from skullsearch.index.persons import cliques, cluster, knn_edges

    ok = np.isfinite(descs1).all(1)
    labels = np.full(len(paths), -1, np.int64)
    rows = np.flatnonzero(ok)
    threshold = a.group_threshold or PERSON_DISTANCE
    pairs, _ = knn_edges(descs1[rows], 20, threshold)
    # the person gallery's rule: groups split into cliques within the threshold
    labels[idx1[rows]] = cliques(descs1[rows], cluster(len(rows), pairs), threshold)
    alone = np.flatnonzero(labels < 0)
    labels[alone] = labels.max() + 1 + np.arange(len(alone))  # (no descriptor: its own person)
    codes, idx, _, cov = encode(model, paths, persons=labels, prior=prior, config=cfg, detector=a.detector)
    fits[f"{a.photos}_photos_label_free"] = (codes, idx, cov)
    err, _ = identity_errors(model, mask, code_layout.split(codes).shape[:, :code_layout.N_SHAPE],
                             true_shape[idx])
    iu = np.triu_indices(len(idx1), 1)
    same_true = person[idx1][iu[0]] == person[idx1][iu[1]]
    same_group = labels[idx1][iu[0]] == labels[idx1][iu[1]]
    both = float((same_true & same_group).sum())
    return {f"identity_ratio_{a.photos}_photos_label_free": round(float(err.mean() / err0.mean()), 3),
            "grouping_pair_precision": round(both / max(same_group.sum(), 1), 3),
            "grouping_pair_recall": round(both / max(same_true.sum(), 1), 3),
            "groups": int(len(np.unique(labels[idx1]))), "group_threshold": threshold}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_texture_argument(ap)
    add_camera_arguments(ap)
    ap.add_argument("--persons", type=int, default=100)
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--gallery", type=int, nargs="+", default=[3000],
                    help="gallery sizes (nested: each holds the smaller one's distractors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identity-prior", action="store_true",
                    help="fit with the identity prior (shape predicted from the person descriptor)")
    ap.add_argument("--detector", default="dlib", help="dlib or mesh (MediaPipe's face mesh)")
    ap.add_argument("--uncertainty", action="store_true",
                    help="fit with the posterior covariance and rank also by the likelihood with it")
    ap.add_argument("--matched-distractors", action="store_true",
                    help="also rank the persons' one-shape faces among distractors re-encoded as they "
                         "were (the one-shape fits' errors and covariances), not the one-photo fits' "
                         "(the label <K>_photos_matched)")
    ap.add_argument("--photo-correlation", type=float, default=None, metavar="RHO",
                    help="with --uncertainty: the persons' photos fitted with one shape once more, their "
                         "posterior with FitConfig.photo_correlation RHO (0: as independent), and "
                         "ranked by the likelihood with that Σ_face too (the _rho keys)")
    ap.add_argument("--landmark-noise", type=float, default=FitConfig.landmark_noise,
                    help="the posterior's landmark noise (fraction of the inter-ocular distance)")
    ap.add_argument("--label-free", action="store_true",
                    help="also fit each person group found from the person descriptors with one shape "
                         "(the person gallery's label-free Eq. 2) and rank with those codes")
    ap.add_argument("--group-threshold", type=float, default=None,
                    help="--label-free: the grouping's descriptor distance (default PERSON_DISTANCE, 0.5)")
    ap.add_argument("--pose-embedding", action="store_true",
                    help="fit dlib's points with its per-yaw-bin embedding (FitConfig.pose_embedding)")
    add_textured_embedding_argument(ap)
    add_jaw_calibration_argument(ap)
    add_landmark_weights_argument(ap)
    ap.add_argument("--exif", action="store_true",
                    help="the renders carry their focal length in EXIF (35 mm-equivalent), which the fit "
                         "reads (FitConfig.exif_focal; dlib's jaw line then moved: jaw_calibration)")
    add_identity_prior_file_argument(ap)
    ap.add_argument("--w-dense", type=float, default=FitConfig.w_dense,
                    help="weight of the dense detector's points in the fit (mesh; 0 leaves them out)")
    ap.add_argument("--photometric", action="store_true",
                    help="refine every fit with the photo's shading (encoder.photometric, default settings)")
    ap.add_argument("--photo-set", nargs="+", default=None, metavar="KEY=VALUE",
                    help="--photometric with these PhotometricConfig settings (e.g. landmark_cauchy=0.06)")
    ap.add_argument("--cnn", default=None, metavar="CKPT",
                    help="a CNN encoder checkpoint (benchmarks/cnn_train.py): its codes replace the fit's")
    ap.add_argument("--cnn-mode", default="alone", choices=("alone", "seed"),
                    help="--cnn: the CNN's codes alone, or as the fit's starting point")
    a = ap.parse_args(argv)
    if a.photo_correlation is not None and not a.uncertainty:
        ap.error("--photo-correlation changes the persons' Σ_face: give --uncertainty too")
    photometric = photometric_config(a.photo_set) if a.photometric or a.photo_set else None
    rng = np.random.default_rng(a.seed)
    model = FaceModel.from_env()
    mask = face_region(model)
    n_s = code_layout.N_SHAPE
    shape, expr, pose = random_faces(model, a.persons * a.photos, rng, expr_scale=0.1)
    shape = shape.reshape(a.persons, a.photos, -1)[:, :1].expand(-1, a.photos, -1).reshape(-1, shape.shape[1])
    person = np.repeat(np.arange(a.persons), a.photos)
    folder = Path(tempfile.mkdtemp(prefix="skullsearch-identity-"))
    t0 = time.perf_counter()
    paths = render_photos(model, folder, shape, expr, pose, rng, max_yaw=40.0, texture=a.texture,
                          gamma=a.camera_gamma, shadows=a.shadows, light_up=a.light_up, exif=a.exif)
    t1 = time.perf_counter()
    prior = None
    if a.identity_prior or a.identity_prior_file:  # (a file implies the prior)
        from skullsearch.encoder.identity_prior import for_model

        prior = for_model(model, a.identity_prior_file)
    cfg = FitConfig(posterior=a.uncertainty, landmark_noise=a.landmark_noise, w_dense=a.w_dense,
                    pose_embedding=a.pose_embedding, textured_embedding=a.textured_embedding,
                    jaw_calibration=a.jaw_calibration, landmark_weights=a.landmark_weights)
    lcov1, lcov3 = ([], []) if photometric is not None and a.uncertainty else (None, None)
    codes1, idx1, descs1, cov1 = encode(model, paths, descriptors=True, prior=prior, config=cfg,
                                        detector=a.detector, photometric=photometric, cnn=a.cnn,
                                        cnn_mode=a.cnn_mode, landmark_covs=lcov1)
    codes3, idx3, _, cov3 = encode(model, paths, persons=person, prior=prior, config=cfg, detector=a.detector,
                                   photometric=photometric, cnn=a.cnn, cnn_mode=a.cnn_mode,
                                   landmark_covs=lcov3)
    correlated = None
    if a.photo_correlation is not None:  # the same fits, their posterior counting the photos as correlated
        _, idx_c, _, cov_c = encode(model, paths, persons=person, prior=prior, detector=a.detector,
                                    config=replace(cfg, photo_correlation=a.photo_correlation),
                                    photometric=photometric)
        if not np.array_equal(idx_c, idx3):
            raise SystemExit("--photo-correlation: the second pass found other faces than the first")
        correlated = {f"{a.photos}_photos": cov_c}
    t2 = time.perf_counter()

    # identity error, single photo
    true_shape = shape.numpy()
    err, err0 = identity_errors(model, mask, code_layout.split(codes1).shape[:, :n_s], true_shape[idx1])

    # re-shot verification from shape codes
    s1 = code_layout.split(codes1).shape[:, :n_s] / model.shape_std[:n_s]
    p1 = person[idx1]
    d = np.linalg.norm(s1[:, None] - s1[None], axis=-1)
    iu = np.triu_indices(len(s1), 1)
    same = p1[iu[0]] == p1[iu[1]]
    code_auc = auc(d[iu][same], d[iu][~same])
    # ... and from the person descriptors (dlib's network on the same photos)
    dd = np.linalg.norm(descs1[:, None] - descs1[None], axis=-1)[iu]
    ok = np.isfinite(dd)
    desc_auc = auc(dd[same & ok], dd[~same & ok])

    # identification: skulls from the true faces; gallery of photo-encoded faces + distractors
    sd = table_sd()
    true_pts = neutral_soft_tissue(model, code_layout.pack(shape=true_shape[::a.photos]))
    targets, present = synthetic_skull_targets(true_pts, face_normals(model), sd, rng)
    resid = (code_layout.split(codes1).shape[:, :n_s] - true_shape[idx1][:, :n_s])
    sizes = sorted(a.gallery)
    n_dis = max(sizes[-1] - a.persons, 0)
    dis_true = rng.standard_normal((n_dis, n_s)).astype(np.float32) * model.shape_std[:n_s]
    borrow = rng.integers(0, len(resid), n_dis)
    dis = dis_true + resid[borrow]
    dis_cov = None if cov1 is None else cov1[borrow]
    landmark_dis_cov = lcov1[0][borrow] if lcov1 else None
    out = {"persons": a.persons, "photos_per_person": a.photos, "texture": a.texture,
           "camera_gamma": a.camera_gamma, "shadows": a.shadows, "light_up": a.light_up,
           "gallery": max(sizes[0], a.persons),
           "identity_prior": bool(prior is not None), "detector": a.detector, "w_dense": a.w_dense,
           "pose_embedding": a.pose_embedding, "textured_embedding": a.textured_embedding,
           "exif": a.exif, "jaw_calibration": a.jaw_calibration,
           "landmark_weights": a.landmark_weights, "photometric": bool(photometric),
           "photometric_settings": a.photo_set or [],
           "cnn": a.cnn and Path(a.cnn).name, "cnn_mode": a.cnn and a.cnn_mode,
           "photos": len(paths), "faces_found": int(len(idx1)),
           "identity_error_mm": round(float(err.mean()), 3),
           "mean_face_error_mm": round(float(err0.mean()), 3),
           "identity_ratio_to_mean_face": round(float(err.mean() / err0.mean()), 3),
           "identity_ratio_by_band": {k: round(float(err[:, b].mean() / err0[:, b].mean()), 3)
                                      for k, b in face_bands(model, mask).items()},
           "reshot_auc_shape_codes": round(code_auc, 3),
           "reshot_auc_person_descriptor": round(desc_auc, 3),
           "uncertainty": bool(a.uncertainty), "photo_correlation": a.photo_correlation,
           "default_photo_correlation": cfg.photo_correlation,
           "seconds": {"render": round(t1 - t0, 1), "detect_and_fit_twice": round(t2 - t1, 1)}}
    if cov1 is not None:  # re-shot verification from the soft-tissue points, Euclidean and under Σ_face
        out.update(reshot_auc_tissue(neutral_soft_tissue(model, codes1), cov1, p1))
    if cov1 is not None:  # calibration: the true soft-tissue error under each face's Σ_face
        _, m2 = tissue_errors_under_cov(neutral_soft_tissue(model, codes1), true_pts[person[idx1]], cov1)
        out["uncertainty_median_mahalanobis2"] = round(float(np.median(m2)), 2)  # χ²₃: 2.37
        out["uncertainty_inside_95pct"] = round(float((m2 < CHI2_3_95).mean()), 3)
        out["landmark_noise"] = a.landmark_noise
    once = np.unique(person[idx3], return_index=True)[1]  # the one-shape fits: one face per person
    if cov3 is not None:  # ... and of the persons' one-shape fits (each person once)
        sets = {"": cov3} | ({} if correlated is None else {"_rho": correlated[f"{a.photos}_photos"]})
        for key, covs in sets.items():
            _, m2 = tissue_errors_under_cov(neutral_soft_tissue(model, codes3[once]),
                                            true_pts[person[idx3[once]]], covs[once])
            out[f"uncertainty_{a.photos}_photos{key}_median_mahalanobis2"] = round(float(np.median(m2)), 2)
            out[f"uncertainty_{a.photos}_photos{key}_inside_95pct"] = round(float((m2 < CHI2_3_95).mean()), 3)
    if lcov1:  # the same of the landmark fit's covariances, around the refined faces
        tissue = reshot_auc_tissue(neutral_soft_tissue(model, codes1), lcov1[0], p1)
        out["reshot_auc_tissue_mahalanobis_landmark_cov"] = tissue["reshot_auc_tissue_mahalanobis"]
        _, m2 = tissue_errors_under_cov(neutral_soft_tissue(model, codes1), true_pts[person[idx1]], lcov1[0])
        out["uncertainty_landmark_cov_median_mahalanobis2"] = round(float(np.median(m2)), 2)
        out["uncertainty_landmark_cov_inside_95pct"] = round(float((m2 < CHI2_3_95).mean()), 3)
    fits = {"1_photo": (codes1, idx1, cov1), f"{a.photos}_photos": (codes3, idx3, cov3)}
    landmark_covs = {"1_photo": lcov1[0], f"{a.photos}_photos": lcov3[0]} if lcov1 else None
    err3, _ = identity_errors(model, mask, code_layout.split(codes3).shape[:, :n_s], true_shape[idx3])
    out[f"identity_ratio_{a.photos}_photos"] = round(float(err3.mean() / err0.mean()), 3)
    if a.label_free:
        out.update(label_free(model, paths, person, idx1, descs1, prior, cfg, a, fits, mask, true_shape,
                              err0))
    matched = None
    if a.matched_distractors:  # distractors as the persons' one-shape faces were encoded
        label = f"{a.photos}_photos_matched"
        resid3 = code_layout.split(codes3[once]).shape[:, :n_s] - true_shape[idx3[once]][:, :n_s]
        borrow3 = np.random.default_rng(a.seed + 1).integers(0, len(once), n_dis)
        fits[label] = fits[f"{a.photos}_photos"]
        pick = lambda c: None if c is None else c[once][borrow3]  # noqa: E731
        matched = {"dis": dis_true + resid3[borrow3], "dis_cov": pick(cov3),
                   "landmark_dis_cov": pick(lcov3[0] if lcov3 else None),
                   "correlated_dis_cov": pick(None if correlated is None
                                              else correlated[f"{a.photos}_photos"])}
        if landmark_covs:
            landmark_covs[label] = landmark_covs[f"{a.photos}_photos"]
        if correlated is not None:
            correlated[label] = correlated[f"{a.photos}_photos"]
    out["by_gallery_size"] = {}
    for size in sizes:
        m = max(size - a.persons, 0)
        own = None if matched is None else {f"{a.photos}_photos_matched": {
            k: None if v is None else v[:m] for k, v in matched.items()}}
        ranks = identification(model, fits, person, a.photos, dis[:m], targets, present, sd,
                               None if dis_cov is None else dis_cov[:m], landmark_covs,
                               None if landmark_dis_cov is None else landmark_dis_cov[:m], correlated, own)
        out["by_gallery_size"][str(max(size, a.persons))] = ranks
        if size == sizes[0]:
            out.update(ranks)
    print(f"{out['faces_found']}/{out['photos']} faces; identity error {out['identity_error_mm']} mm = "
          f"{out['identity_ratio_to_mean_face']}× the mean face's; re-shot AUC from shape codes "
          f"{out['reshot_auc_shape_codes']}, from person descriptors {out['reshot_auc_person_descriptor']}")
    if "uncertainty_median_mahalanobis2" in out:
        print(f"fit uncertainty (landmark noise {a.landmark_noise:g} IOD): true soft-tissue error's median "
              f"Mahalanobis² {out['uncertainty_median_mahalanobis2']} (2.37 if calibrated), "
              f"{out['uncertainty_inside_95pct']:.1%} of points inside the 95 % ellipsoid")
    for size, r in out["by_gallery_size"].items():
        for label in (("1_photo", f"{a.photos}_photos")
                      + ((f"{a.photos}_photos_label_free",) if a.label_free else ())
                      + ((f"{a.photos}_photos_matched",) if a.matched_distractors else ())):
            print(f"{label}: rank-1 / rank-10 among {size} faces: S {r[f'{label}_s_rank1']:.1%} / "
                  f"{r[f'{label}_s_rank10']:.1%}, likelihood {r[f'{label}_likelihood_rank1']:.1%} / "
                  f"{r[f'{label}_likelihood_rank10']:.1%}"
                  + (f", likelihood with Σ_face {r[f'{label}_likelihood_cov_rank1']:.1%} / "
                     f"{r[f'{label}_likelihood_cov_rank10']:.1%}" if a.uncertainty else "")
                  + (f" (the landmark fit's Σ_face {r[f'{label}_likelihood_landmark_cov_rank1']:.1%} / "
                     f"{r[f'{label}_likelihood_landmark_cov_rank10']:.1%})"
                     if f"{label}_likelihood_landmark_cov_rank1" in r else "")
                  + (f", with photo_correlation {a.photo_correlation:g} "
                     f"{r[f'{label}_likelihood_cov_rho_rank1']:.1%} / "
                     f"{r[f'{label}_likelihood_cov_rho_rank10']:.1%}"
                     if f"{label}_likelihood_cov_rho_rank1" in r else ""))
    emit(out)
    return out


if __name__ == "__main__":
    main()
