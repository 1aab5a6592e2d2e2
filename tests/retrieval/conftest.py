"""The query modules' shared case: a synthetic gallery and a skull made under one of its faces."""

import pytest
from skulls import skull_under, table_3mm

from skullsearch import Gallery
from skullsearch.encoder import code as code_layout
from skullsearch.index.synth import synth


@pytest.fixture(scope="module")
def case(default_model, tmp_path_factory):
    """(gallery path, the planted face's id, skull path, skull mesh, its landmarks, a folder, a
    3 mm tissue table's path): 400 synthetic faces of the default model, and a skull 3 mm under
    one of them."""
    root = tmp_path_factory.mktemp("query")
    g = Gallery.create(root / "g", face_model=default_model)
    synth(g, 400, seed=3)
    truth = int(g.sample_ids(1, seed=11)[0])
    shape = code_layout.split(g.codes([truth])).shape[0, : default_model.n_shape]
    # A face pushed inward by the real depths (up to 26 mm) folds over where the depth exceeds
    # the face's curvature, which no real skull does; so the test skull sits 3 mm under the
    # face and the query uses a user table of 3 mm depths (with the global table's SDs).
    skull_path, mesh, marks = skull_under(default_model, shape, root / "case", seed=1)
    table = table_3mm(root / "depths_3mm.csv")
    return g.path, truth, skull_path, mesh, marks, root, str(table)
