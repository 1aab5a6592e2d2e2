"""benchmarks/cnn_train.py (the CNN encoder's training set from renders through dlib, and its
training) and identity.py --cnn: small real runs that keep them working."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.benchmarks.test_identity import benchmark


@pytest.fixture(scope="module")
def cnn_train():
    return benchmark("cnn_train")


@pytest.mark.slow
def test_the_training_set_and_a_short_training(cnn_train, tmp_path, capsys):
    from skullsearch.encoder.cnn import image_to_crop, load_checkpoint

    data = tmp_path / "renders.npz"
    made = cnn_train.main(["data", "--persons", "4", "--photos", "2", "--seed", "5", "--workers", "1",
                           "--out", str(data)])
    assert made["photos"] == 8 and 6 <= made["faces"] <= 8
    z = np.load(data)
    n = made["faces"]
    assert len(z["offsets"]) == n + 1 and z["offsets"][-1] == len(z["jpeg"]) == made["bytes"]
    first = np.asarray(Image.open(io.BytesIO(z["jpeg"][z["offsets"][0]:z["offsets"][1]].tobytes())))
    assert first.shape == (128, 128, 3) and first.std() > 5  # a face, not a blank crop
    # the landmarks (photo px) fall in their crops (a turned face's jaw line may leave it a little);
    # a person's photos share one true shape
    crop_px = image_to_crop(z["landmarks"].astype(np.float64), z["transform"].astype(np.float64))
    assert ((crop_px > 0) & (crop_px < 128)).all(-1).mean() > 0.95
    assert ((crop_px > -20) & (crop_px < 148)).all()
    for p in np.unique(z["person"]):
        shapes = z["shape"][z["person"] == p]
        assert np.allclose(shapes, shapes[0])
    assert len(np.unique(z["person"])) >= 3

    loaded = cnn_train.load_data(data)
    assert loaded["images"].shape == (n, 3, 128, 128) and loaded["images"].dtype == torch.uint8
    ckpt = tmp_path / "cnn.pt"
    out = cnn_train.main(["train", "--data", str(data), "--out", str(ckpt), "--epochs", "2",
                          "--holdout", "1", "--batch-size", "4"])
    assert out["faces"] + out["held_out"] == n and out["held_out"] >= 1 and out["device"] == "cpu"
    assert out["held_out_shape_rms_sigma"] > 0 and out["held_out_mean_face_rms_sigma"] > 0
    net, meta = load_checkpoint(ckpt)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2 and net.input_size == 128
    assert '"step": "train"' in capsys.readouterr().out.splitlines()[-1]

    sup = cnn_train.main(["train", "--data", str(data), "--out", str(tmp_path / "sup.pt"), "--epochs", "8",
                          "--batch-size", "8", "--supervised", "0.01", "--lr", "3e-3"])
    history = load_checkpoint(tmp_path / "sup.pt")[1]["history"]
    # the diagnostic's loss asks for the true shapes: on its own training faces the error falls
    assert history[-1]["supervised_sigma2"] < history[0]["supervised_sigma2"]
    assert sup["supervised_weight"] == 0.01 and sup["person_consistency"] is False


@pytest.mark.slow
def test_identity_measures_a_cnn_checkpoint_alone_and_seeding_the_fit(tmp_path):
    from skullsearch import FaceModel
    from skullsearch.encoder.cnn import EncoderCNN, save_checkpoint

    ckpt = tmp_path / "untrained.pt"
    save_checkpoint(ckpt, EncoderCNN.for_model(FaceModel.default()).eval())
    identity = benchmark("identity")
    alone = identity.main(["--persons", "3", "--photos", "2", "--gallery", "30", "--seed", "3",
                           "--cnn", str(ckpt)])
    seeded = identity.main(["--persons", "3", "--photos", "2", "--gallery", "30", "--seed", "3",
                            "--cnn", str(ckpt), "--cnn-mode", "seed"])
    assert alone["cnn"] == "untrained.pt" and alone["cnn_mode"] == "alone" and seeded["cnn_mode"] == "seed"
    # an untrained network predicts (near) the mean face for every photo; the fit it seeds moves off it
    assert abs(alone["identity_ratio_to_mean_face"] - 1.0) < 0.05
    assert seeded["identity_error_mm"] != alone["identity_error_mm"]
    assert 0 <= alone["reshot_auc_person_descriptor"] <= 1


@pytest.mark.slow
def test_the_photometric_device_benchmark_on_the_cpu(tmp_path):
    bench = benchmark("photometric_device")
    data = tmp_path / "faces.npz"
    made = bench.main(["prepare", "--faces", "4", "--seed", "21", "--out", str(data)])
    assert 3 <= made["faces"] <= 4 and made["bytes"] > 0
    out = bench.main(["run", "--data", str(data), "--batch", "2", "--steps", "5", "--compare", "cpu",
                      "--compare-faces", "2"])
    assert out["faces"] == made["faces"] and set(out["by_batch"]) == {"2"}
    assert out["by_batch"]["2"]["faces_per_s"] > 0 and 0 < out["identity_ratio_landmark_fit"] < 2
    # the same faces on the same device, in a batch of their own: the same refinement
    assert out["compare"]["shape_code_max_abs_diff_sigma"] < 1e-4


@pytest.mark.slow
def test_the_real_photos_check_reports_the_checkpoint_beside_untrained_controls(cnn_train, tmp_path):
    """photos: a folder of person sub-folders (here renders of two heads, as a user's photos would
    be laid out); the checkpoint's pair AUC, the landmark fit's and the untrained controls'."""
    from skullsearch import FaceModel
    from skullsearch.encoder.cnn import EncoderCNN, save_checkpoint
    from skullsearch.encoder.render import random_portrait

    model = FaceModel.default()
    rng = np.random.default_rng(8)
    for person in ("ann", "bob"):
        shape = torch.as_tensor(rng.standard_normal((1, 90)) * model.shape_std[:90], dtype=torch.float32)
        with torch.no_grad():
            v = model.vertices(shape=shape)[0].numpy()
        (tmp_path / "photos" / person).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(random_portrait(v, model.faces, rng, 20.0)[0].image).save(
                tmp_path / "photos" / person / f"{k}.png")
    ckpt = save_checkpoint(tmp_path / "net.pt", EncoderCNN.for_model(model).eval())
    out = cnn_train.main(["photos", "--photos", str(tmp_path / "photos"), "--cnn", str(ckpt),
                          "--controls", "2"])
    assert out["faces"] == 4 and out["persons"] == 2
    assert out["same_pairs"] == 2 and out["different_pairs"] == 4
    assert 0 <= out["cnn"]["net.pt"]["pair_auc"] <= 1 and 0 <= out["landmark_fit_pair_auc"] <= 1
    assert len(out["untrained_pair_auc"]) == 2 and out["copy_pairs_left_out"] == 0
    # no checkpoint: the untrained controls alone
    alone = cnn_train.main(["photos", "--photos", str(tmp_path / "photos"), "--controls", "1"])
    assert alone["cnn"] == {} and len(alone["untrained_pair_auc"]) == 1
