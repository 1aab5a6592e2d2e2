"""The ray engine: Ray Data detector stage = the local stage, and a full ingest with engine="ray".

One Ray session for the module (started by the first stage, shared by the ingests, which leave it
running since they did not start it). Skipped where ray is not installed
(``pip install "skullsearch[distributed]"``).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skullsearch.errors import DependencyError
from skullsearch.index.ingest import LocalDetectStage, read_sources

# Ray Data's own DataContext() sets its deprecated fields (ray 2.60): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning:ray")

EXPECTED = {"empty.png": "empty", "face0.png": "ok", "face1.png": "ok", "face2.png": "ok",
            "notes.png": "not-an-image"}


@pytest.fixture(scope="module")
def photos(default_model, tmp_path_factory):
    """Three renders of the open model's face (the dlib detector finds them), a zero-byte file and
    a text file named .png."""
    from skullsearch.encoder.render import face_camera, render_mesh

    folder = tmp_path_factory.mktemp("ray-photos")
    for k, yaw in enumerate((-20, 0, 20)):
        cam = face_camera(yaw_deg=yaw, size=400, distance=600, fov_mm=300, center=np.array([0, -30, 0]))
        Image.fromarray(render_mesh(default_model.v_template, default_model.faces, cam).image).save(
            folder / f"face{k}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image\n")
    return folder


@pytest.fixture(scope="module")
def stage():
    """A RayDetectStage with 2 actors; it starts the module's Ray session and shuts it down."""
    why = 'the ray engine needs Ray: pip install "skullsearch[distributed]"'
    ray = pytest.importorskip("ray", reason=why)
    from skullsearch.index.ray_engine import RayDetectStage

    owned = not ray.is_initialized()
    s = RayDetectStage(2, frozenset(), "dlib")
    assert s.started == owned
    yield s
    s.close()
    assert ray.is_initialized() != owned


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    from skullsearch.index.ray_engine import RayDetectStage

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(DependencyError, match=r'skullsearch\[distributed\].*--engine local'):
        RayDetectStage(2, frozenset(), "dlib")


@pytest.mark.slow  # a Ray session: end to end
def test_rows_are_the_local_stage_rows(stage, photos):
    """Same rows, same order (stage(chunk) itself runs in the ingest test below)."""
    sources = list(read_sources([photos]))
    local = LocalDetectStage(1, frozenset(), "dlib", 60)
    try:
        want = local(sources)
    finally:
        local.close()
    # one dataset for all the photos, rows given back chunk by chunk, in order
    chunks = list(stage.iter_chunks(sources, 2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    got = [r for c in chunks for r in c]
    assert [r.path for r in got] == [s.path for s in sources]
    assert {Path(r.path).name: r.status for r in got} == EXPECTED
    # chunk sizes as the local stage takes them (a list: small first chunks)
    assert [len(c) for c in stage.iter_chunks(sources, [1, 2, 2])] == [1, 2, 2]
    for w, g in zip(want, got, strict=True):
        assert type(g) is type(w) and g.status == w.status and g.sha256 == w.sha256
        assert (g.width, g.height, g.size_bytes) == (w.width, w.height, w.size_bytes)
        assert len(g.faces) == len(w.faces)
        for fw, fg in zip(w.faces, g.faces, strict=True):
            np.testing.assert_allclose(fg.landmarks, fw.landmarks, atol=1e-3)
            np.testing.assert_allclose(fg.box, fw.box, atol=1e-3)
            assert fg.quality == fw.quality and fg.detector == fw.detector


@pytest.mark.slow  # a Ray session: end to end
def test_ingest_with_the_ray_engine(stage, photos, tmp_path):
    import ray

    from skullsearch import Gallery

    g = Gallery.create(tmp_path / "g")
    rep = g.ingest([photos], engine="ray", workers=2)
    assert rep.faces == 3 and rep.images_new == 5
    assert rep.failures == {"empty": 1, "not-an-image": 1}
    assert g.faces().num_rows == 3
    assert ray.is_initialized()  # the ingest's stage did not start Ray, so it left it running
    again = g.ingest([photos], engine="ray")
    assert again.faces == 0 and again.images_new == 0 and again.images_skipped == 5
    assert g.faces().num_rows == 3
