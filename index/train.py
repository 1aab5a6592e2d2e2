"""Training the CNN encoder on a gallery's photos and their stored landmarks (paper Eq. 1, and
Eq. 2 over photos of the same person)."""

from __future__ import annotations

import os

import numpy as np


def train_encoder_on_gallery(gallery, out: str | os.PathLike, *, use_person: bool = True,
                             max_faces: int | None = None, seed: int = 0, **kw):
    """Train the CNN encoder on the gallery's photographed faces (synthetic rows are skipped);
    the detections stored at ingest are reused. Keywords go to
    :func:`skullsearch.encoder.encode.train_encoder_on_faces`. Returns (net, history)."""
    from skullsearch.encoder.encode import EncodedFace, train_encoder_on_faces
    from skullsearch.encoder.images import DecodedImage, read_images

    rows = gallery.sql(
        "SELECT path, sha256, face_index, box, landmarks, person, image_width, image_height, score "
        "FROM faces WHERE detector <> 'synth' AND landmarks IS NOT NULL ORDER BY face_id").to_pylist()
    if max_faces is not None and len(rows) > max_faces:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_faces, replace=False))
        rows = [rows[i] for i in pick]
    faces = [EncodedFace(
        image=r["path"], sha256=r["sha256"], face_index=r["face_index"], box=np.asarray(r["box"]),
        score=r["score"], landmarks=np.asarray(r["landmarks"], np.float64).reshape(68, 2), quality=(),
        yaw_deg=0.0, detector="gallery", image_size=(r["image_width"], r["image_height"]),
        person=r["person"]) for r in rows]
    decoded = read_images(sorted({f.image for f in faces}))
    pixels = {d.path: d.pixels for d in decoded if isinstance(d, DecodedImage)}  # moved files drop out
    return train_encoder_on_faces(faces, pixels, out, model=gallery.face_model, use_person=use_person,
                                  seed=seed, **kw)
