"""Face regions: the partition covers the face, is left/right symmetric, holds its points."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from skullsearch import SOFT_TISSUE_NAMES
from skullsearch.encoder.face_model import face_region
from skullsearch.encoder.soft_tissue import mirror_name
from skullsearch.inpaint.regions import DEFINITE, MIDLINE_MM, face_regions, revised_vertices


@pytest.fixture(scope="module")
def regions(default_model):
    return face_regions(default_model)


def test_partition_covers_the_face_and_names_every_point_once(default_model, regions):
    labels = regions.labels
    assert labels.shape == (default_model.n_vertices,) and labels.dtype == np.int32
    assert (labels[face_region(default_model)] >= 0).all()  # the whole face proper is labelled
    assert labels.max() == len(regions.names) - 1 and labels.min() == -1  # eyeballs, neck: -1
    for r in range(len(regions.names)):
        assert (labels == r).sum() >= 10, regions.names[r]
    held = sorted(i for pts in regions.points for i in pts)
    assert held == list(range(len(SOFT_TISSUE_NAMES)))


def test_each_point_lies_in_its_region(default_model, regions):
    owner = regions.region_of_point()
    assert (regions.labels[regions.seeds] == owner).all()
    # the seed is a corner of the point's own triangle
    tri = default_model.faces[default_model.soft_tissue_points.faces]
    assert all(s in t for s, t in zip(regions.seeds, tri, strict=True))
    assert regions.names[owner[SOFT_TISSUE_NAMES.index("pg")]] == "chin"
    assert regions.names[owner[SOFT_TISSUE_NAMES.index("zy_l")]] == "cheekbone_l"


def test_regions_are_symmetric(default_model, regions):
    v = default_model.v_template
    lab = regions.labels
    # region names mirror each other, and points mirror into mirrored regions
    for r, name in enumerate(regions.names):
        side = {"_l": "_r", "_r": "_l"}.get(name[-2:])
        assert regions.names[regions.mirror[r]] == (name[:-2] + side if side else name)
        assert sorted(SOFT_TISSUE_NAMES[i] for i in regions.points[regions.mirror[r]]) == \
            sorted(mirror_name(SOFT_TISSUE_NAMES[i]) for i in regions.points[r])
    labelled = lab >= 0
    # exact on the right half: a vertex takes the mirrored label of the left vertex under its mirror image
    right = (v[:, 0] < -MIDLINE_MM) & labelled
    left = np.nonzero(v[:, 0] >= -MIDLINE_MM)[0]
    left = left[lab[left] >= 0]
    _, j = cKDTree(v[left]).query(v[right] * [-1, 1, 1])
    agree = regions.mirror[lab[left[j]]] == lab[right]
    assert agree.mean() > 0.97
    # mirror x → the mirrored region, over the whole labelled face (the mesh is symmetric to 3 mm)
    _, k = cKDTree(v).query(v[labelled] * [-1, 1, 1])
    assert (lab[k] == regions.mirror[lab[labelled]]).mean() > 0.98
    # the midline belongs to midline regions
    mid = labelled & (np.abs(v[:, 0]) <= MIDLINE_MM * 0.5)
    assert (regions.mirror[lab[mid]] == lab[mid]).all()


def test_definite_regions_are_the_forehead_and_back_of_head(regions):
    ids = [regions.names.index(n) for n in DEFINITE]
    assert (regions.definite == np.isin(regions.labels, ids)).all()
    assert regions.definite[regions.seeds[SOFT_TISSUE_NAMES.index("g")]]
    assert regions.definite[regions.seeds[SOFT_TISSUE_NAMES.index("op")]]
    assert not regions.definite[regions.seeds[SOFT_TISSUE_NAMES.index("pg")]]


def test_revised_vertices_follow_unmatched_present_landmarks(default_model, regions):
    n = len(SOFT_TISSUE_NAMES)
    present, matched = np.ones(n, bool), np.ones(n, bool)
    assert not revised_vertices(regions, matched, present).any()
    matched[SOFT_TISSUE_NAMES.index("pg")] = False
    rev = revised_vertices(regions, matched, present)
    assert (rev == (regions.labels == regions.names.index("chin"))).all()
    assert regions.revised_names(matched, present) == ["chin"]
    present[SOFT_TISSUE_NAMES.index("pg")] = False  # an absent landmark revises nothing
    assert not revised_vertices(regions, matched, present).any()
    assert face_regions(default_model) is regions  # cached
