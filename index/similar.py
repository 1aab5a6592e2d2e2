"""``similar``: the gallery faces nearest to query faces, by person descriptor or by shape code
(``skullsearch similar``, :meth:`Gallery.similar <skullsearch.index.gallery.Gallery.similar>`)."""

from __future__ import annotations

import numpy as np

from skullsearch.encoder import code as code_layout
from skullsearch.encoder import descriptors as descriptors_mod
from skullsearch.index import vectors
from skullsearch.index.store import GalleryError


def similar(gallery, codes: np.ndarray, top: int = 10, descriptors: np.ndarray | None = None,
            by: str = "auto") -> list[list[dict]]:
    """For each query face (codes (q, 228); descriptors (q, 128) person descriptors or None,
    NaN rows: none): the ``top`` gallery faces nearest to it, as rows with rank, face_id,
    person_distance (descriptor L2; None where either face has none), distance (shape-code
    L2), person, path and by (what ranked them).

    by: ``"person"`` — by person descriptor (who it is; dlib's network, 0.6 ≈ same person),
    among the faces that have one; ``"shape"`` — by shape code (what the fitted 3D face looks
    like); ``"auto"`` — person where the query face has a descriptor and the gallery holds
    any, else shape. The other distance is given beside.
    """
    if by not in ("auto", "person", "shape"):
        raise GalleryError(f"by must be auto, person or shape, got {by!r}")
    codes = np.asarray(codes, np.float32).reshape(-1, code_layout.CODE_SIZE)
    q = len(codes)
    descs = (np.full((q, descriptors_mod.DIM), np.nan, np.float32) if descriptors is None
             else np.asarray(descriptors, np.float32).reshape(q, descriptors_mod.DIM))
    has = ~np.isnan(descs).any(1)
    if by == "person" and not has.all():
        raise GalleryError("ranking by person needs a person descriptor of every query face "
                           "(encode with descriptors=True), or use by='shape'")
    described = by != "shape" and has.any() and gallery.column_index("persons").index.ntotal > 0
    if by == "person" and not described:
        raise GalleryError("this gallery holds no person descriptors (ingested before they were "
                           "made, or with descriptors off): use by='shape', or ingest again "
                           "into a new gallery")
    out = []
    for i in range(q):
        if described and has[i]:
            _, ids = gallery.search_descriptors(descs[i: i + 1], k=top)
            ranked_by = "person"
        else:
            _, ids = gallery.search_codes(codes[i: i + 1], k=top)
            ranked_by = "shape"
        ids = ids[0][ids[0] >= 0]
        shape_d = np.linalg.norm(vectors.shape_vectors(gallery.codes(ids)).astype(np.float64)
                                 - vectors.shape_vectors(codes[i: i + 1]), axis=1)
        person_d = (np.linalg.norm(gallery.descriptors(ids).astype(np.float64) - descs[i], axis=1)
                    if has[i] else np.full(len(ids), np.nan))
        info = {r["face_id"]: r for r in gallery.rows(ids)}
        out.append([{"rank": k + 1, "face_id": int(f),
                     "person_distance": None if np.isnan(pd) else float(pd), "distance": float(sd),
                     "person": info.get(int(f), {}).get("person"),
                     "path": info.get(int(f), {}).get("path"), "by": ranked_by}
                    for k, (f, sd, pd) in enumerate(zip(ids, shape_d, person_d, strict=True))])
    return out


def similar_to_photo(gallery, photo, top: int = 10, by: str = "auto") -> list[dict]:
    """The gallery's faces most similar to the largest face in a photo (see :func:`similar`)."""
    from skullsearch.encoder.encode import encode

    result = encode([photo], model=gallery.face_model, all_faces=False, descriptors=True)
    if not result.faces:
        why = result.failures[0].detail if result.failures else "no face found"
        raise GalleryError(f"{photo}: {why}")
    return similar(gallery, result.codes, top, descriptors=result.descriptors, by=by)[0]
