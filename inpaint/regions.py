"""Anatomical face regions on a model's template, each tied to the soft-tissue points it holds.

A region is revised (regenerated) when one of its landmarks is unmatched after superimposition
(paper §4.3). The partition is defined once on the model's mean face and carried by the topology:

1. **Cells.** The skin (the mesh's largest connected part) as a graph of its edges (lengths in mm);
   one multi-source Dijkstra per soft-tissue point gives geodesic distances; each skin vertex goes
   to the nearest point's region (a geodesic Voronoi partition whose cells are grouped into the
   named regions of :data:`REGIONS`: "upper_lip" holds ss, mp and pr…).
2. **Symmetry.** The subject's left half (+x) and the midline are labelled from the distances;
   vertices within :data:`MIDLINE_MM` of the midsagittal plane may only take midline regions; the
   right half copies the label of its mirror vertex (nearest vertex of the mirrored position)
   with left ↔ right swapped. Meshes that are not exactly symmetric (the open model's is within
   3 mm) then agree with the mirror up to a vertex at the boundaries.
3. **Face area.** Labelled: vertices of :func:`skullsearch.encoder.face_model.face_region`, the
   skin within :data:`REACH_MM` (geodesic) of a soft-tissue point, and the whole cranial vault
   (cells of op, v and g). Everything else (eyeballs, teeth, the neck below the jaw, the ears'
   backs) is −1.
4. **Definite regions** (pinned to the skull): the forehead — g's cell plus the brow cells above
   mso + :data:`FOREHEAD_ABOVE_MSO_MM` — and the back of the head (cells of op and v).

    regions = face_regions(model)
    regions.names[regions.labels[i]]             # region of vertex i
    revise = revised_vertices(regions, matched, present)   # (V,) bool
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES, mirror_name

#: Region name → the soft-tissue points it holds ("_l" regions are mirrored as "_r").
REGIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("back_of_head", ("op", "v")),
    ("forehead", ("g",)),
    ("nasal_bridge", ("n", "mn")),
    ("nose", ("rhi",)),
    ("upper_lip", ("ss", "mp", "pr")),
    ("lower_lip", ("id", "sm")),
    ("chin", ("pg", "gn", "me")),
    ("brow_l", ("mso_l",)), ("brow_r", ("mso_r",)),
    ("infraorbital_l", ("mio_l",)), ("infraorbital_r", ("mio_r",)),
    ("ala_l", ("ac_l",)), ("ala_r", ("ac_r",)),
    ("cheekbone_l", ("zy_l",)), ("cheekbone_r", ("zy_r",)),
    ("perioral_l", ("sC_l", "iC_l")), ("perioral_r", ("sC_r", "iC_r")),
    ("buccal_l", ("sM2_l", "iM2_l")), ("buccal_r", ("sM2_r", "iM2_r")),
    ("ramus_l", ("go_l", "mr_l")), ("ramus_r", ("go_r", "mr_r")),
    ("jaw_l", ("mmb_l",)), ("jaw_r", ("mmb_r",)),
)
DEFINITE: tuple[str, ...] = ("forehead", "back_of_head")
MIDLINE_MM = 1.0
REACH_MM = 35.0
FOREHEAD_ABOVE_MSO_MM = 6.0

_CACHE: dict = {}


@dataclass(frozen=True)
class FaceRegions:
    """names: R region names; labels (V,) int32 region per vertex (−1: not in the face area);
    points: per region, indices into SOFT_TISSUE_NAMES it holds; definite (V,) bool: the
    definite regions (forehead, back of head), pinned to the skull; mirror (R,) int: the index
    of each region's mirror image (itself for midline regions); seeds (36,) int: the vertex
    each soft-tissue point was placed at."""

    names: tuple[str, ...]
    labels: np.ndarray
    points: tuple[tuple[int, ...], ...]
    definite: np.ndarray
    mirror: np.ndarray
    seeds: np.ndarray

    def region_of_point(self) -> np.ndarray:
        """(36,) int: the region holding each soft-tissue point."""
        out = np.full(len(SOFT_TISSUE_NAMES), -1, np.int64)
        for r, pts in enumerate(self.points):
            out[list(pts)] = r
        return out

    def revised_names(self, matched: np.ndarray, present: np.ndarray) -> list[str]:
        """Names of the regions that hold an unmatched present landmark."""
        bad = np.asarray(present, bool) & ~np.asarray(matched, bool)
        return [n for n, pts in zip(self.names, self.points, strict=True) if bad[list(pts)].any()]


def face_regions(model) -> FaceRegions:
    """The face regions of a model (see the module docstring); cached per topology and annotation."""
    st = model.soft_tissue_points
    if st is None:
        model.soft_tissue(batch_size=1)  # raises the explanatory LandmarkError
    key = (model.topology_hash, st.faces.tobytes(), st.bary.tobytes(), _template_hash(model))
    if key not in _CACHE:
        _CACHE[key] = _build(model)
    return _CACHE[key]


def _template_hash(model) -> str:
    """sha256 of the whole mean face (a cache key part; cheap: V × 3 float32)."""
    return hashlib.sha256(np.ascontiguousarray(model.v_template).tobytes()).hexdigest()


def revised_vertices(regions: FaceRegions, matched: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(36,) matched, (36,) present → (V,) bool: vertices of the regions holding an unmatched
    present landmark."""
    names = set(regions.revised_names(matched, present))
    ids = [i for i, n in enumerate(regions.names) if n in names]
    return np.isin(regions.labels, ids)


def _build(model) -> FaceRegions:
    import torch
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    from skullsearch.encoder.annotate import _skin
    from skullsearch.encoder.face_model import face_region

    v = model.v_template.astype(np.float64)
    n_v = len(v)
    _, skin_faces = _skin(v, model.faces)
    tri = model.faces[skin_faces]
    skin = np.zeros(n_v, bool)
    skin[np.unique(tri)] = True
    # seeds: the heaviest corner of each point's triangle
    st = model.soft_tissue_points
    seeds = model.faces[st.faces, np.argmax(st.bary, axis=1)].astype(np.int64)
    with torch.no_grad():
        pts = model.soft_tissue(batch_size=1)[0].double().numpy()
    # geodesic distances along skin edges
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    w = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1) + 1e-9
    graph = coo_matrix((w, (e[:, 0], e[:, 1])), shape=(n_v, n_v)).tocsr()
    dist = dijkstra(graph, directed=False, indices=seeds)  # (36, V)
    dist = dist.T  # (V, 36)

    names = tuple(n for n, _ in REGIONS)
    name_idx = {n: i for i, n in enumerate(names)}
    pidx = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}
    point_region = np.zeros(len(SOFT_TISSUE_NAMES), np.int64)
    points = []
    for r, (_, members) in enumerate(REGIONS):
        ids = tuple(pidx[m] for m in members)
        points.append(ids)
        point_region[list(ids)] = r
    mirror = np.array([name_idx[mirror_name(n)] for n in names])
    midline_pt = np.array([mirror_name(n) == n for n in SOFT_TISSUE_NAMES])

    # left half and midline from the distances; near-midline vertices: midline regions only
    near_mid = np.abs(v[:, 0]) <= MIDLINE_MM
    d = dist.copy()
    d[np.ix_(near_mid, ~midline_pt)] = np.inf
    nearest = np.argmin(d, axis=1)
    nearest_d = d[np.arange(n_v), nearest]
    label_pt = nearest.copy()
    # right half: the mirror vertex's point, mirrored
    right = v[:, 0] < -MIDLINE_MM
    left_ids = np.nonzero(~right & skin)[0]
    _, j = cKDTree(v[left_ids]).query(v[right] * [-1.0, 1.0, 1.0])
    src = left_ids[j]
    mir_pt = np.array([pidx[mirror_name(n)] for n in SOFT_TISSUE_NAMES])
    label_pt[right] = mir_pt[nearest[src]]
    nearest_d[right] = nearest_d[src]

    # the face area
    area = skin & (face_region(model) | (nearest_d <= REACH_MM)
                   | np.isin(label_pt, [pidx["op"], pidx["v"], pidx["g"]]))
    area[right] = skin[right] & area[src] | (skin[right] & face_region(model)[right])
    labels = np.where(area, point_region[label_pt], -1).astype(np.int32)
    # the forehead: the brow cells above mso + FOREHEAD_ABOVE_MSO_MM join g's cell
    brow = np.isin(labels, [name_idx["brow_l"], name_idx["brow_r"]])
    high = v[:, 1] > pts[pidx["mso_l"], 1] + FOREHEAD_ABOVE_MSO_MM
    labels[brow & high] = name_idx["forehead"]
    # every soft-tissue point lies in its region, whatever the boundaries did
    labels[seeds] = point_region
    definite = np.isin(labels, [name_idx[n] for n in DEFINITE])
    return FaceRegions(names=names, labels=labels, points=tuple(points), definite=definite,
                       mirror=mirror, seeds=seeds)

