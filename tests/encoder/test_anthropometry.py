"""Head and face measurements (encoder/anthropometry.py): the pooled norms' arithmetic, each
measurement against the points it is defined by, batching, and compare's rows. The norms
themselves are held against sampled faces in tests/encoder/test_ict_model.py."""

import numpy as np
import pytest
import torch

from skullsearch.encoder import anthropometry as anth
from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES


def test_the_norms_and_their_names_line_up():
    assert list(anth.ADULT_NORMS) == ["g-op", "eu-eu", "n-gn", "zy-zy", "al-al", "ch-ch"]
    assert set(anth.LONG_NAMES) == set(anth.ADULT_NORMS)
    for m, sm, f, sf in anth.ADULT_NORMS.values():
        assert m > f > 0 and sm > 0 and sf > 0  # men larger on every one of these measures


def test_pooled_is_the_equal_mixture_of_men_and_women():
    mean, sd = anth.pooled("g-op")  # (197, 7) and (187, 6)
    assert mean == 192.0
    assert sd == pytest.approx(np.sqrt((49 + 36) / 2 + 25))
    rng = np.random.default_rng(0)
    m, sm, f, sf = anth.ADULT_NORMS["zy-zy"]
    sample = np.concatenate([rng.normal(m, sm, 200_000), rng.normal(f, sf, 200_000)])
    mean, sd = anth.pooled("zy-zy")
    assert sample.mean() == pytest.approx(mean, abs=0.05)
    assert sample.std() == pytest.approx(sd, abs=0.05)
    with pytest.raises(KeyError):
        anth.pooled("ear length")


def test_extent_ignores_what_the_mask_leaves_out():
    x = np.array([[5.0, -100.0, 1.0, 3.0], [0.0, 2.0, 7.0, 100.0]])
    mask = np.array([[True, False, True, True], [True, True, True, False]])
    np.testing.assert_array_equal(anth._extent(x, mask), [4.0, 7.0])


@pytest.fixture(scope="module")
def faces(default_model):
    shape = (np.random.default_rng(1).standard_normal((5, default_model.n_shape)) * 1.5).astype(np.float32)
    with torch.no_grad():
        v = default_model.vertices(shape=torch.as_tensor(shape))
        pts = default_model.soft_tissue(vertices=v).double().numpy()
        lm = default_model.landmarks68(vertices=v).double().numpy()
    return shape, pts, lm, anth.measure(default_model, shape, batch_size=2)


def test_point_to_point_measures_are_the_distances_of_their_points(faces):
    _, pts, lm, got = faces
    i = SOFT_TISSUE_NAMES.index

    def dist(p, a, b):
        return np.linalg.norm(p[:, a] - p[:, b], axis=1)

    np.testing.assert_allclose(got["g-op"], dist(pts, i("g"), i("op")), rtol=1e-6)
    np.testing.assert_allclose(got["n-gn"], dist(pts, i("n"), i("gn")), rtol=1e-6)
    np.testing.assert_allclose(got["zy-zy"], dist(pts, i("zy_l"), i("zy_r")), rtol=1e-6)
    np.testing.assert_allclose(got["ch-ch"], dist(lm, 48, 54), rtol=1e-6)


def test_every_measure_is_one_float64_per_face_and_plausible_in_mm(faces):
    _, _, _, got = faces
    assert list(got) == list(anth.ADULT_NORMS)
    for name, values in got.items():
        assert values.shape == (5,) and values.dtype == np.float64
        mean, _ = anth.pooled(name)
        assert (values > mean / 2).all() and (values < 2 * mean).all(), (name, values)  # mm, not cm
        assert values.std() > 0  # follows the face


def test_head_breadth_is_wider_than_the_zygia_and_the_nose_narrower_than_the_mouth(faces):
    _, _, _, got = faces
    assert (got["eu-eu"] > got["zy-zy"] - 15).all() and (got["eu-eu"] < got["g-op"]).all()
    assert (got["al-al"] < got["ch-ch"]).all()


def test_the_batch_size_does_not_change_the_measures(default_model, faces):
    shape, _, _, got = faces
    whole = anth.measure(default_model, shape, batch_size=64)
    for name in got:
        np.testing.assert_allclose(whole[name], got[name], rtol=1e-6, err_msg=name)


def test_no_shape_measures_the_mean_face(default_model):
    mean = anth.measure(default_model)
    zeros = anth.measure(default_model, np.zeros((2, default_model.n_shape)))
    for name in mean:
        assert mean[name].shape == (1,)
        np.testing.assert_allclose(zeros[name], np.repeat(mean[name], 2), rtol=1e-6)


def test_compare_sets_the_sampled_faces_beside_the_pooled_norms(default_model):
    rows = anth.compare(default_model, n=6, seed=4)
    rng = np.random.default_rng(4)
    shape = rng.standard_normal((6, default_model.n_shape)).astype(np.float32) * default_model.shape_std
    got = anth.measure(default_model, shape)
    assert [r["measure"] for r in rows] == list(anth.ADULT_NORMS)
    for r in rows:
        values = got[r["measure"]]
        mean, sd = anth.pooled(r["measure"])
        assert r["what"] == anth.LONG_NAMES[r["measure"]]
        assert r["model_mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert r["model_sd"] == pytest.approx(values.std(), rel=1e-5)
        assert (r["norm_mean"], r["norm_sd"]) == (mean, sd)
        assert r["mean_off_sd"] == pytest.approx(abs(values.mean() - mean) / sd, rel=1e-5)
        assert r["sd_ratio"] == pytest.approx(values.std() / sd, rel=1e-5)
