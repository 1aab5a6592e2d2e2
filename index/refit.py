"""Label-free Eq. 2: one shared shape per person group, refitted from the group's photos.

The paper fits one shape to all the photos of a person (Eq. 2). A gallery rarely says who is
who, but its person groups (:mod:`skullsearch.index.persons`, from the person descriptors) do:
:func:`refit_persons` fits every group of at least ``min_size`` faces again from the landmarks
its faces were fitted from (stored in the catalog), with one shape shared by the group's photos
(each keeps its own camera, expression and jaw; a group whose photos came through different
detectors shares it within each detector's photos, and keeps its first face's), and writes a
**person gallery**: a new gallery at ``out``, one face per person — a refitted group (a person
group's faces whose descriptors are all pairwise within the grouping's threshold: look-alikes
that Chinese whispers chains together are not fitted as one face), or a face
in no such group as it was — queried like any gallery (``skullsearch query --gallery OUT``).
The source gallery is not changed (its shards are immutable); a row of the person gallery names
its member faces and photos in ``metadata`` (``source``, ``faces``, ``photos``), its ``person``
is the members' label where they all share one, else ``group:<id>``, and its photo the group's
first. Codes of faces without stored landmarks (synthetic, refitted) are carried over as they
are. Soft-tissue covariances (``uncertainty=True``) are kept only when every person has one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skullsearch.encoder.descriptors import PERSON_DISTANCE
from skullsearch.errors import SkullsearchError
from skullsearch.index.columns import list_matrix

#: the person gallery's faces of a refitted group record this encoder (before the source's own)
REFIT = "person-refit"


@dataclass
class RefitReport:
    """persons: faces of the person gallery; groups_refit: groups fitted with one shared shape;
    faces_refit: source faces in those groups; carried: persons carried over as they were
    (faces in no group of ``min_size``, or without landmarks); seconds."""

    persons: int = 0
    groups_refit: int = 0
    faces_refit: int = 0
    carried: int = 0
    seconds: float = 0.0


def _groups(gallery, regroup: bool):
    """face_id → person_group of the gallery's saved grouping (made now when there is none,
    when it predates the gallery's shards, or when asked)."""
    import pyarrow.parquet as pq

    from skullsearch.index import persons

    path = Path(gallery.path) / persons.FILE
    current = [s.number for s in gallery.shards()]
    if not regroup and path.exists():
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"skullsearch", b"{}"))
        if meta.get("shards") == current:
            return table
    return persons.group_persons(gallery)


@dataclass
class _Faces:
    """The catalog's faces as columns (face-id order): ids (n,) int64; path, person, detector
    (n,) lists; landmarks (n, 68, 2) float32 px and descriptor (n, 128) float32 (NaN rows: none);
    size (n, 2) image width and height px; residual (n,) px (NaN: none); photo_focal (n,) px the
    photo's own focal length from its EXIF, which the refit fits with as the ingest did (NaN:
    not known, or a gallery older than the column: the guess). About 2 KB a face (the rows as
    Python dicts took several times that)."""

    ids: np.ndarray
    path: list
    person: list
    detector: list
    landmarks: np.ndarray
    descriptor: np.ndarray
    size: np.ndarray
    residual: np.ndarray
    photo_focal: np.ndarray  # (n,) px the photo's own focal length from its EXIF; NaN: not known

    @classmethod
    def read(cls, gallery) -> _Faces:
        cols = ["face_id", "path", "person", "detector", "landmarks", "image_width", "image_height",
                "descriptor", "residual_px", "photo_focal_px"]
        import pyarrow as pa

        t = gallery.faces(columns=cols)

        def num(c):  # (nulls: NaN)
            return t.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)

        return cls(t.column("face_id").to_numpy().astype(np.int64), t.column("path").to_pylist(),
                   t.column("person").to_pylist(), t.column("detector").to_pylist(),
                   list_matrix(t.column("landmarks"), 136)[0].reshape(-1, 68, 2),
                   list_matrix(t.column("descriptor"), 128)[0],
                   np.stack([num("image_width"), num("image_height")], 1), num("residual_px"),
                   num("photo_focal_px"))


def _members(gallery, min_size: int, regroup: bool) -> tuple[_Faces, np.ndarray]:
    """The catalog's faces (:class:`_Faces`) and, per face, its group id when it will be refitted
    with its group (−1: carried over). The groups are the saved person groups split into cliques
    (:func:`~skullsearch.index.persons.cliques`, at the grouping's threshold): one shape is fitted
    only to faces whose descriptors are all pairwise that close. A clique is named by its smallest
    face id."""
    from skullsearch.index.persons import cliques

    faces = _Faces.read(gallery)
    groups = _groups(gallery, regroup)
    meta = json.loads((groups.schema.metadata or {}).get(b"skullsearch", b"{}"))
    gid = groups.column("face_id").to_numpy().astype(np.int64)
    grouped = np.zeros(len(faces.ids), bool)
    group_of = np.full(len(faces.ids), -1, np.int64)
    if len(gid):  # each face's saved group (the grouping may leave faces out)
        order = np.argsort(gid)
        pos = np.minimum(np.searchsorted(gid[order], faces.ids), len(gid) - 1)
        grouped = gid[order][pos] == faces.ids
        group_of = groups.column("person_group").to_numpy().astype(np.int64)[order][pos]
    group = np.full(len(faces.ids), -1, np.int64)
    take = grouped & ~np.isnan(faces.landmarks[:, 0, 0]) & ~np.isnan(faces.descriptor[:, 0])
    if take.any():
        ids = faces.ids[take]
        split = cliques(faces.descriptor[take], group_of[take], meta.get("threshold", PERSON_DISTANCE))
        order = np.lexsort((ids, split))
        first = np.r_[True, split[order][1:] != split[order][:-1]]
        name = np.empty(len(ids), np.int64)
        name[order] = ids[order][np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))]
        group[take] = name
    ids, counts = np.unique(group[group >= 0], return_counts=True)
    small = ids[counts < max(2, min_size)]
    group[np.isin(group, small)] = -1
    return faces, group


def _fit_groups(model, faces: _Faces, group, config):
    """Refit the grouped faces: one shared shape per group. Returns {group: (code (228,),
    mean residual px, tissue covariance (36, 3, 3) or None)}."""
    from skullsearch.encoder.encode import EncodedFace, fit_faces

    todo, idx = [], np.flatnonzero(group >= 0)
    for i in idx:
        todo.append(EncodedFace(
            image=faces.path[i], sha256="", face_index=0, box=np.zeros(4), score=1.0,
            landmarks=faces.landmarks[i].astype(np.float64), quality=(),
            yaw_deg=0.0, detector=faces.detector[i],
            image_size=(int(faces.size[i, 0]), int(faces.size[i, 1])),
            photo_focal=float(faces.photo_focal[i]), person=f"group:{group[i]}"))
    fit_faces(model, todo, config)
    out: dict[int, tuple] = {}
    for i, f in zip(idx, todo, strict=True):
        g = int(group[i])
        code, res, cov = out.get(g, (f.code, [], f.tissue_cov))
        res.append(f.residual_px)
        out[g] = (code, res, cov)
    return {g: (code, float(np.mean(res)), cov) for g, (code, res, cov) in out.items()}


def refit_persons(gallery, out, *, min_size: int = 2, config=None, regroup: bool = False,
                  uncertainty: bool = False) -> RefitReport:
    """Write the person gallery of ``gallery`` at ``out`` (module docstring).

    min_size: groups of at least this many faces (≥ 2) are refitted with one shape; regroup:
    group the faces again first (otherwise the saved grouping is used when it covers every
    shard, :meth:`Gallery.group_persons`); config: the fit's :class:`FitConfig` (default the
    ingest's); uncertainty: keep each person's soft-tissue covariance (the group's photos'
    information summed, ``query --uncertainty``). Returns a :class:`RefitReport`.
    """
    from dataclasses import replace

    from skullsearch.encoder.fitting import FitConfig

    t0 = time.perf_counter()
    if min_size < 2:
        raise SkullsearchError(f"min_size must be at least 2 (a group of one has nothing to share), "
                               f"got {min_size}")
    if Path(out).resolve() == Path(gallery.path).resolve():
        raise SkullsearchError("the person gallery is a new gallery: give another folder than the source's")
    if gallery.n_faces == 0:
        raise SkullsearchError(f"{gallery.path} has no faces to refit")
    cfg = config or FitConfig()
    if uncertainty and not cfg.posterior:
        cfg = replace(cfg, posterior=True)
    # (the source's own class: refit sits below the gallery module; refuses a folder with a gallery)
    dest = type(gallery).create(out, face_model=gallery.face_model)
    try:
        rep = _write_persons(gallery, dest, cfg, config, min_size, regroup, uncertainty)
    except BaseException:
        dest.close()
        shutil.rmtree(dest.path, ignore_errors=True)  # (made just now: nothing else is in it)
        raise
    rep.seconds = time.perf_counter() - t0
    return rep


def _write_persons(gallery, dest, cfg, config, min_size: int, regroup: bool, uncertainty: bool):
    """Group, refit and write the person gallery ``dest`` (:func:`refit_persons`)."""
    from skullsearch.index import store
    from skullsearch.index.ingest import encoder_fingerprint
    from skullsearch.index.synth import write_code_shard

    faces, group = _members(gallery, min_size, regroup)
    fitted = _fit_groups(gallery.face_model, faces, group, cfg)
    persons = _persons(gallery, faces, group, fitted)
    codes = np.stack([p["code"] for p in persons]).astype(np.float32)
    descs = np.stack([p["descriptor"] for p in persons]).astype(np.float32)
    covs = [p["cov"] for p in persons]
    tissue_cov = np.stack(covs) if uncertainty and all(c is not None for c in covs) else None
    fp = f"{REFIT}:{encoder_fingerprint(config, 'refit')[:8]}"
    with store.WriteLock(dest.path):
        for a in range(0, len(persons), store.MAX_ROWS):
            part = slice(a, a + store.MAX_ROWS)
            write_code_shard(dest, store.next_shard_number(dest.path), codes[part],
                             [p["path"] for p in persons[part]], [p["person"] for p in persons[part]],
                             detector="refit", encoder_fingerprint=fp,
                             metadata=[p["metadata"] for p in persons[part]],
                             residual_px=np.array([p["residual"] for p in persons[part]]),
                             descriptors=descs[part],
                             tissue_cov=None if tissue_cov is None else tissue_cov[part])
        dest.save_indexes()
    dest.close()
    return RefitReport(persons=len(persons), groups_refit=len(fitted), faces_refit=int((group >= 0).sum()),
                       carried=int((group < 0).sum()))


def _persons(gallery, faces: _Faces, group, fitted) -> list[dict]:
    """The person gallery's rows: one per refitted group (its first face's photo), one per face
    carried over (its own code, covariance and descriptor), in source face-id order."""
    ids = faces.ids
    own_codes = gallery.codes(ids)
    own_cov = gallery.tissue_covariance(ids)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        if g >= 0:
            members.setdefault(int(g), []).append(i)
    out, done = [], set()
    for i in range(len(ids)):
        g = int(group[i])
        if g in done:
            continue
        take = members[g] if g >= 0 else [i]
        if g >= 0:
            done.add(g)
        labels = {faces.person[j] for j in take}
        descs = faces.descriptor[take]
        descs = descs[~np.isnan(descs[:, 0])]
        desc = descs.astype(np.float64).mean(0) if len(descs) else np.full(128, np.nan)
        if g >= 0:
            code, residual, cov = fitted[g]
        else:
            code = own_codes[i]
            residual = 0.0 if np.isnan(faces.residual[i]) else float(faces.residual[i])
            cov = None if np.isnan(own_cov[i]).any() else own_cov[i]
        person = labels.pop() if len(labels) == 1 and None not in labels else (
            f"group:{g}" if g >= 0 else faces.person[i])
        out.append({"code": code, "residual": residual, "cov": cov, "descriptor": desc,
                    "path": faces.path[i], "person": person, "metadata": json.dumps({
                        "source": str(gallery.path), "faces": [int(ids[j]) for j in take],
                        "photos": [faces.path[j] for j in take]})})
    return out
