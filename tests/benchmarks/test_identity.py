"""benchmarks/identity.py (its AUC; small end-to-end runs through the real detectors),
fit_uncertainty.py and mesh_depth.py: small runs that keep them working."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load

benchmark = load


@pytest.fixture(scope="module")
def identity():
    return benchmark("identity")


def test_auc(identity):
    assert identity.auc(np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0])) == 1.0
    assert identity.auc(np.array([6.0, 7.0]), np.array([3.0, 4.0, 5.0])) == 0.0
    rng = np.random.default_rng(0)
    assert abs(identity.auc(rng.random(2000), rng.random(3000)) - 0.5) < 0.03


@pytest.mark.slow
def test_a_small_run_reports_every_figure(identity, capsys):
    out = identity.main(["--persons", "4", "--photos", "2", "--gallery", "40", "--seed", "3"])
    assert out["faces_found"] >= 6 and out["gallery"] == 40
    assert 0 < out["identity_error_mm"] < 10 and 0 <= out["reshot_auc_shape_codes"] <= 1
    for label in ("1_photo", "2_photos"):
        for rank_by in ("s", "likelihood"):
            assert 0 <= out[f"{label}_{rank_by}_rank1"] <= out[f"{label}_{rank_by}_rank10"] <= 1
    assert '"identity_ratio_to_mean_face"' in capsys.readouterr().out.splitlines()[-1]
    bands = out["identity_ratio_by_band"]
    assert list(bands) == ["forehead", "brows_to_eyes", "eyes_to_nose_base", "nose_base_to_mouth",
                           "below_mouth"]
    assert all(0 < r < 5 for r in bands.values())


@pytest.mark.slow
def test_a_small_run_with_the_mesh_and_the_fit_uncertainty(identity):
    out = identity.main(["--persons", "4", "--photos", "2", "--gallery", "40", "--seed", "3",
                         "--detector", "mesh", "--uncertainty"])
    assert out["detector"] == "mesh" and out["uncertainty"] is True and out["faces_found"] >= 6
    for label in ("1_photo", "2_photos"):
        assert 0 <= out[f"{label}_likelihood_cov_rank1"] <= out[f"{label}_likelihood_cov_rank10"] <= 1
    assert out["uncertainty_median_mahalanobis2"] > 0 and 0 <= out["uncertainty_inside_95pct"] <= 1


@pytest.mark.slow
def test_the_uncertainty_calibration_benchmark(capsys):
    out = benchmark("fit_uncertainty").main(["--faces", "6", "--noise", "0.02", "0.2", "--seed", "2",
                                             "--light-up", "20", "40"])
    assert out["faces"] >= 5 and out["synthetic"] is True and out["light_up"] == [20.0, 40.0]
    low, high = out["by_noise"]
    # more landmark noise: a wider posterior, so the same errors are fewer standard deviations
    assert all(h > lo for h, lo in zip(high["predicted_sd_mm_xyz"], low["predicted_sd_mm_xyz"], strict=True))
    assert high["median_mahalanobis2"] < low["median_mahalanobis2"]
    assert out["best_noise"] in (0.02, 0.2) and '"by_noise"' in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.slow
def test_correlated_photos_in_both_benchmarks(identity):
    """--per-person: fit_uncertainty.py calibrates the one-shape fits per photo_correlation (a
    larger one, a wider posterior) and says how alike a head's photos' errors are; identity.py
    --photo-correlation ranks and calibrates the persons' Σ_face at another correlation beside the
    default's, --matched-distractors among distractors re-encoded as they were."""
    out = benchmark("fit_uncertainty").main(["--faces", "3", "--per-person", "2", "--noise", "0.03",
                                             "--seed", "2", "--photo-correlation", "0", "0.8"])
    assert out["per_person"] == 2 and len(out["by_noise"]) == 1
    plain, correlated = out["by_noise_one_shape"]
    assert (plain["photo_correlation"], correlated["photo_correlation"]) == (0, 0.8)
    assert plain["heads"] == correlated["heads"] >= 2
    wide, narrow = correlated["predicted_sd_mm_xyz"], plain["predicted_sd_mm_xyz"]
    assert all(w > n for w, n in zip(wide, narrow, strict=True))
    assert correlated["error_rms_mm_xyz"] == plain["error_rms_mm_xyz"]  # the same codes
    assert -1 <= out["photo_error_correlation"] <= 1
    out = identity.main(["--persons", "3", "--photos", "2", "--gallery", "30", "--seed", "3", "--uncertainty",
                         "--photo-correlation", "0", "--matched-distractors"])
    assert out["photo_correlation"] == 0 and "1_photo_likelihood_cov_rho_rank1" not in out
    for key in ("2_photos_likelihood_cov_rho", "2_photos_matched_likelihood_cov_rho",
                "2_photos_matched_likelihood_cov", "2_photos_matched_s"):
        assert 0 <= out[f"{key}_rank1"] <= out[f"{key}_rank10"] <= 1
    # the same errors under the default's wider posterior than the independent photos': fewer SDs
    m2 = "median_mahalanobis2"
    assert out[f"uncertainty_2_photos_{m2}"] < out[f"uncertainty_2_photos_rho_{m2}"]
    with pytest.raises(SystemExit):
        identity.main(["--persons", "3", "--photo-correlation", "0.5"])  # without --uncertainty


@pytest.mark.slow
def test_the_refined_uncertainty_in_both_benchmarks(identity):
    """--photometric: fit_uncertainty.py calibrates the refined posterior per discount (a larger
    discount, a wider posterior); identity.py puts the landmark fit's Σ_face beside the refined one."""
    out = benchmark("fit_uncertainty").main(["--faces", "4", "--noise", "0.03", "--seed", "2",
                                             "--photometric", "1", "100"])
    assert out["photometric"] is True and [r["posterior_discount"] for r in out["by_noise"]] == [1, 100]
    sure, wide = out["by_noise"]
    assert all(w > s for w, s in zip(wide["predicted_sd_mm_xyz"], sure["predicted_sd_mm_xyz"], strict=True))
    assert out["best_posterior_discount"] in (1, 100) and out["default_posterior_discount"] == 20
    assert out["posterior_time_ratio"] > 0 and out["refine_seconds_without_posterior"] > 0
    out = identity.main(["--persons", "3", "--photos", "2", "--gallery", "30", "--seed", "3", "--uncertainty",
                         "--photometric", "--photo-set", "steps=20"])
    for label in ("1_photo", "2_photos"):
        for key in ("likelihood_cov", "likelihood_landmark_cov"):
            assert 0 <= out[f"{label}_{key}_rank1"] <= out[f"{label}_{key}_rank10"] <= 1
    assert out["uncertainty_landmark_cov_median_mahalanobis2"] > 0
    assert 0 <= out["reshot_auc_tissue_mahalanobis_landmark_cov"] <= 1


@pytest.mark.slow
def test_the_mesh_depth_benchmark():
    out = benchmark("mesh_depth").main(["--photos", "3", "--seed", "1"])
    assert out["found"] == 3 and out["synthetic"] is True
    for key in ("mesh_z", "mean_face_depth"):
        assert 0 < out[key]["corr"] <= 1 and out[key]["median_abs_residual_mm"] > 0
    # the mean face's own depths, through the same map, follow the true depths closely
    assert out["mean_face_depth"]["median_abs_residual_mm"] < 3.0
