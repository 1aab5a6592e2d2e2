"""The default face model, the ICT Face Model Light export: layout, licence, rig, skin, annotation
anatomy, anthropometry, and the exporter itself on a small source file the test makes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anatomy import check_anatomy, render_annotation

from skullsearch import SOFT_TISSUE_NAMES, FaceModel, FaceModelError, LandmarkError
from skullsearch.encoder import ict_head
from skullsearch.encoder.annotate import _skin

SHARED_SOURCE = (Path(__file__).resolve().parents[3]
                 / "shared/models/ict-face-model-light/ict_face_model_light.npz")


def test_layout_licence_and_attribution(default_model):
    m = default_model
    assert m.n_vertices == 14388 and m.n_shape == 90 and m.n_expression == 53
    assert m.n_joints == 5 and m.meta["joint_names"] == list(ict_head.JOINT_NAMES)
    assert m.meta["expression_names"][26] == "jawOpen"
    np.testing.assert_allclose(m.shape_std, 1.0)  # the source's own statistics
    np.testing.assert_allclose(m.weights.sum(1), 1.0, atol=1e-5)
    assert "MIT" in m.meta["licence"] and "USC Institute for Creative Technologies" in m.meta["licence"]
    assert ict_head.LICENCE_FILE.exists() and "MIT" in ict_head.LICENCE_FILE.read_text()
    assert m.describe()["licence"] == m.meta["licence"]


def test_default_and_builtin_names(default_model):
    assert FaceModel.builtin("ict").fingerprint == default_model.fingerprint
    assert FaceModel.from_env("ict").fingerprint == default_model.fingerprint
    with pytest.raises(FaceModelError, match="no built-in face model 'flame'"):
        FaceModel.builtin("flame")


def test_skin_leaves_the_eyeballs_out(default_model):
    """Scoring, regions and reconstruction work on the skin: the eyeballs are separate parts."""
    m = default_model
    _, skin_faces = _skin(m.v_template.astype(np.float64), m.faces)
    skin = np.unique(m.faces[skin_faces])
    assert len(skin) == m.meta["skin_vertices"] == 11248
    assert np.isin(m.faces[m.soft_tissue_points.faces], skin).all()
    assert np.isin(m.faces[m.landmarks.static_faces], skin).all()


def test_eye_joints_sit_in_the_eyeballs_and_follow_the_shape(default_model):
    m = default_model
    betas = torch.tensor(np.random.default_rng(0).standard_normal((6, 90)), dtype=torch.float32)
    with torch.no_grad():
        verts, joints = m.forward(shape=betas)
    eye_l = verts[:, 11248:11248 + 1570].mean(1)
    assert torch.all((joints[:, 3] - eye_l).norm(dim=-1) < 0.5)
    assert torch.all(joints[:, 3, 0] > 20) and torch.all(joints[:, 4, 0] < -20)  # +x: subject's left


def test_jaw_opens_the_mouth_and_leaves_the_eyes(default_model):
    pose = torch.zeros(1, 15)
    pose[0, 6] = 0.25
    with torch.no_grad():
        lm0 = default_model.landmarks68(batch_size=1)[0]
        lm1 = default_model.landmarks68(pose=pose)[0]
    assert (lm1[66, 1] - lm0[66, 1]) < -8  # the lower lip drops
    assert (lm1[8, 1] - lm0[8, 1]) < -10  # and the chin
    assert torch.allclose(lm0[17:33], lm1[17:33], atol=0.05)  # brows and nose stay
    assert torch.allclose(lm0[36:48], lm1[36:48], atol=0.05)  # and the eyes


def test_the_neck_turns_the_head_rigidly(default_model):
    """A neck rotation moves the face as one rigid body: distances between face points keep."""
    pose = torch.zeros(1, 15)
    pose[0, 4] = 0.5  # neck about y
    with torch.no_grad():
        a = default_model.soft_tissue(batch_size=1)[0]
        b = default_model.soft_tissue(pose=pose)[0]
    assert (b - a).norm(dim=-1).max() > 20
    face = [SOFT_TISSUE_NAMES.index(n) for n in ("g", "n", "pr", "pg", "zy_l", "zy_r", "go_l")]
    da = torch.cdist(a[face], a[face])
    db = torch.cdist(b[face], b[face])
    assert torch.allclose(da, db, atol=0.05)


def test_annotation_anatomy(mean_points):
    check_anatomy(mean_points)


def test_render_with_points(default_model, mean_points, artifacts):
    """The README's picture (docs/default_model_annotation.png), regenerated for a person to see."""
    render_annotation(default_model, mean_points, artifacts / "default_model_annotation.png")


def test_annotation_is_the_annotators_from_the_source_landmarks(default_model):
    """The shipped soft-tissue points are what the annotator computes today from the 68 source
    landmarks (re-run the export if the annotator changes)."""
    from skullsearch.encoder.annotate import annotate

    lm = default_model.v_template[default_model.meta["source_landmarks68"]].astype(np.float64)
    with torch.no_grad():
        shipped = default_model.soft_tissue(batch_size=1)[0].numpy()
    _, st = annotate(default_model.v_template, default_model.faces, lm)
    verts = torch.as_tensor(default_model.v_template)[None]
    fresh = st.evaluate(verts, torch.as_tensor(default_model.faces))[0].numpy()
    assert np.linalg.norm(shipped - fresh, axis=1).max() < 0.5


def test_anthropometry_of_sampled_faces(default_model):
    """Pinned against the pooled Farkas norms (benchmarks/anthropometry.py prints the table):
    g-op, n-gn, ch-ch within 1 norm SD; eu-eu, zy-zy, al-al — wider in the ICT population than in
    Farkas's young North American whites — within 2 SD; every SD within a factor 2."""
    from skullsearch.encoder.anthropometry import compare

    rows = {r["measure"]: r for r in compare(default_model, n=200, seed=3)}
    for name in ("g-op", "n-gn", "ch-ch"):
        assert rows[name]["mean_off_sd"] < 1.0, rows[name]
    for name in ("eu-eu", "zy-zy", "al-al"):
        assert rows[name]["mean_off_sd"] < 2.2, rows[name]
    for r in rows.values():
        assert 0.5 < r["sd_ratio"] < 2.0, r


# ------------------------------------------------------------------ the exporter
def _source_from(model: FaceModel, path: Path, n_identity: int = 92) -> Path:
    """An ICT-format file made from the shipped export: its skin as 'face' + 'head_and_neck',
    its eyeballs, and an extra interior 'teeth' part (a tetrahedron) the export must drop;
    triangles stored as quads padded with −1, as in the source."""
    n_skin = model.meta["skin_vertices"]
    v = model.v_template
    teeth = np.array([[0, -60, 10], [5, -60, 10], [0, -55, 10], [0, -60, 15]], np.float32)
    verts = np.concatenate([v[:n_skin], teeth, v[n_skin:]])
    shift = np.concatenate([np.arange(n_skin), n_skin + 4 + np.arange(len(v) - n_skin)])
    faces = shift[model.faces]
    teeth_f = n_skin + np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    polys = np.full((len(faces) + 4, 4), -1, np.int32)
    polys[:len(faces), :3] = faces
    polys[len(faces):, :3] = teeth_f

    def grow(dirs, n):  # (V, 3, K) → (n, V+4, 3), zero rows for the teeth
        d = np.zeros((n, len(verts), 3), np.float32)
        k = min(n, dirs.shape[2])
        d[:k][:, shift] = dirs[..., :k].transpose(2, 0, 1)
        return d

    n_eye = (len(v) - n_skin) // 2
    ranges = [[0, 9000], [9000, n_skin], [n_skin, n_skin + 4], [n_skin + 4, n_skin + 4 + n_eye],
              [n_skin + 4 + n_eye, len(verts)]]
    lm_ids = np.asarray(model.meta["source_landmarks68"])
    np.savez(path, neutral=verts + 7.0, identity=grow(model.shapedirs, n_identity),
             expression=grow(model.exprdirs, model.n_expression),
             expression_names=np.array(model.meta["expression_names"]), faces=polys,
             group_names=np.array(["face", "head_and_neck", "teeth", "eyeball_left", "eyeball_right"]),
             group_ranges=np.array(ranges, np.int32), landmarks68=lm_ids.astype(np.int32))
    return path


def test_exporter_rebuilds_the_shipped_model_from_a_source_file(default_model, tmp_path):
    src = _source_from(default_model, tmp_path / "ict.npz")
    built = ict_head.build_model(src, calibrate=False)
    m = default_model
    assert built.n_vertices == m.n_vertices and built.n_shape == 90  # teeth dropped, 90 of 92
    np.testing.assert_allclose(built.v_template, m.v_template, atol=1e-3)  # origin between the eyes
    np.testing.assert_array_equal(built.faces, m.faces)
    np.testing.assert_allclose(built.shapedirs, m.shapedirs, atol=1e-6)
    np.testing.assert_allclose(built.j_regressor @ built.v_template, m.j_regressor @ m.v_template, atol=0.05)
    np.testing.assert_allclose(built.weights, m.weights, atol=1e-3)
    with torch.no_grad():
        d = (built.soft_tissue(batch_size=1) - m.soft_tissue(batch_size=1)).norm(dim=-1)
    assert d.max() < 0.5
    # written and read back through the package's own format
    out = ict_head.save_packaged(built, tmp_path / "export.npz")
    again = FaceModel.load(out, annotate=False)
    np.testing.assert_allclose(again.shapedirs, built.shapedirs, atol=0.01)
    assert again.soft_tissue_points is not None and again.landmarks is not None


@pytest.mark.skipif(not SHARED_SOURCE.exists(), reason="the ICT source file is not on this machine")
def test_shipped_export_is_the_exporter_applied_to_the_source(default_model):
    built = ict_head.build_model(SHARED_SOURCE, calibrate=False)
    np.testing.assert_allclose(built.v_template, default_model.v_template, atol=1e-4)
    np.testing.assert_allclose(built.shapedirs, default_model.shapedirs, atol=0.01)


def test_the_shipped_embedding_is_calibrated_to_dlib(default_model):
    """Inner 51 points measured on renders through dlib; the jaw line is the source's vertices."""
    m = default_model
    assert "calibrated to dlib" in m.meta["landmarks68"]
    src = np.asarray(m.meta["source_landmarks68"])
    with torch.no_grad():
        lm = m.landmarks68(batch_size=1)[0].numpy()
    shift = np.linalg.norm(lm - m.v_template[src], axis=1)
    assert shift[:17].max() < 1e-3  # the jaw line: the source's vertices
    assert 0.5 < np.median(shift[17:]) < 10  # the inner points moved, by millimetres


@pytest.mark.slow
def test_calibration_is_deterministic_for_a_seed(default_model):
    """Two runs with one seed give the same embedding; the report counts what was measured."""
    from skullsearch.encoder.calibrate import INNER, calibrate_embedding

    a, rep = calibrate_embedding(default_model, photos=4, seed=5, min_samples=2)
    b, _ = calibrate_embedding(default_model, photos=4, seed=5, min_samples=2)
    np.testing.assert_array_equal(a.static_faces, b.static_faces)
    np.testing.assert_array_equal(a.static_bary, b.static_bary)
    assert rep.photos == 4 and rep.found >= 3
    # eye points that land on the eyeball (not skin) are not counted
    assert (rep.samples[list(INNER)] >= 2).mean() > 0.8 and (rep.samples[:17] == 0).all()
    assert (rep.shift_mm[:17] < 1e-4).all() and np.isfinite(rep.spread_mm).all()
    c, _ = calibrate_embedding(default_model, photos=4, seed=6, min_samples=2)
    assert not np.array_equal(a.static_bary, c.static_bary)  # another seed: other renders


def test_calibration_needs_a_face_on_some_render(default_model):
    from skullsearch.encoder.calibrate import calibrate_embedding

    with pytest.raises(LandmarkError, match="found no face on any calibration render"):
        calibrate_embedding(default_model, photos=2, seed=0, detect=lambda image: [])


def test_bad_source_files_say_what_to_pass(tmp_path):
    with pytest.raises(FaceModelError, match="cannot read the ICT model file"):
        ict_head.read_source(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FaceModelError, match="repacked ict_face_model_light.npz"):
        ict_head.read_source(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", neutral=np.zeros((3, 3)))
    with pytest.raises(FaceModelError, match="lacks identity"):
        ict_head.read_source(tmp_path / "other.npz")


def test_truncated_packaged_style_file_is_a_clear_error(tmp_path, default_model):
    out = default_model.save(tmp_path / "m.npz")
    data = out.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FaceModelError, match="cannot read cut.npz"):
        FaceModel.load(tmp_path / "cut.npz")


def test_a_gallery_of_the_anny_model_refuses_the_new_default(tmp_path, default_model, anny_model):
    """Galleries built before the ICT default hold anny's faces: opening one with the default
    says why it refuses and what to do."""
    from skullsearch import Gallery, GalleryError

    Gallery.create(tmp_path / "g", face_model=anny_model)
    with pytest.raises(GalleryError, match="cannot be mixed: use a new gallery for this model"):
        Gallery.create(tmp_path / "g", face_model=default_model, exist_ok=True)
    assert Gallery.open(tmp_path / "g").face_model.fingerprint == anny_model.fingerprint
