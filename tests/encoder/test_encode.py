"""encode(): real renders and bad files through the real decoder, detector and fit."""

import numpy as np
import pytest
import torch
from PIL import Image

import skullsearch
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.render import face_camera, render_mesh


@pytest.fixture(scope="module")
def photos(default_model, tmp_path_factory):
    """Three perspective renders of known faces (yaw −20°, 0°, +20°) and two bad files."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    truth = []
    for i, yaw in enumerate((-20, 0, 20)):
        betas = torch.tensor(rng.standard_normal((1, 90)), dtype=torch.float32)
        v = default_model.vertices(shape=betas)[0].numpy()
        cam = face_camera(yaw_deg=yaw, size=400, distance=600, fov_mm=300, center=np.array([0, -30, 0]))
        Image.fromarray(render_mesh(v, default_model.faces, cam).image).save(folder / f"face{i}.png")
        truth.append((betas, yaw))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    Image.new("RGB", (200, 200), (120, 160, 200)).save(folder / "sky.jpg")  # no face
    return folder, truth


def test_encode_finds_and_fits_every_face(default_model, photos):
    folder, truth = photos
    paths = sorted(folder.glob("face*.png"))
    res = skullsearch.encode(paths, model=default_model, light=True)
    assert len(res.faces) == 3 and not res.failures
    for f, (_, yaw) in zip(sorted(res.faces, key=lambda f: f.image), truth, strict=True):
        assert f.residual_px < 5.0  # px: the static 68-point embedding vs the detector (see README)
        assert f.code.shape == (code_layout.CODE_SIZE,)
        assert np.sign(f.yaw_deg) == np.sign(yaw) or yaw == 0
        # the fitted camera turns the same way as the one that took the photo
        cam_yaw = np.rad2deg(code_layout.split(f.code[None]).cam_rot[0, 1])
        assert abs(cam_yaw - yaw) < 10.0, (cam_yaw, yaw)  # dlib landmarks on renders
        light = code_layout.split(f.code[None]).light[0]
        assert np.abs(light).sum() > 0  # lighting estimated from the photo's colours


def test_bad_files_are_recorded_and_skipped(default_model, photos):
    folder, _ = photos
    from skullsearch.encoder.encode import image_paths

    res = skullsearch.encode(image_paths([folder]), model=default_model)
    assert len(res.faces) == 3
    reasons = res.failures_by_reason()
    assert reasons == {"empty": 1, "not-an-image": 1, "no-face": 1}, reasons


def test_same_person_shares_shape(default_model, photos):
    folder, _ = photos
    paths = sorted(folder.glob("face*.png"))
    res = skullsearch.encode(paths, model=default_model, person=["p", "p", "q"])
    shapes = {f.image: code_layout.split(f.code[None]).shape[0] for f in res.faces}
    a, b, c = (shapes[str(p)] for p in paths)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_encode_command(default_model, photos, tmp_path, capsys):
    from skullsearch.cli.app import main

    folder, _ = photos
    out_json = tmp_path / "faces.json"
    code = main(["encode", str(folder), "--export-mesh", str(tmp_path / "meshes"), "--json", str(out_json)])
    assert code == 0
    text = capsys.readouterr().out
    assert "3 face(s)" in text and "no-face" in text and "empty" in text
    assert len(list((tmp_path / "meshes").glob("*.ply"))) == 3
    import json

    data = json.loads(out_json.read_text())
    assert len(data["faces"]) == 3 and len(data["faces"][0]["code"]) == 228


def test_photometric_encode_refines_the_landmark_fit(default_model, photos, tmp_path, capsys):
    """encode(photometric=…) and ``encode --photometric``: the same faces, codes moved by the
    shading (the camera and the shape), a person's photos still sharing one shape."""
    from skullsearch.cli.app import main
    from skullsearch.encoder.photometric import PhotometricConfig

    folder, _ = photos
    paths = sorted(folder.glob("face*.png"))
    plain = skullsearch.encode(paths, model=default_model, person=["p", "p", "q"])
    refined = skullsearch.encode(paths, model=default_model, person=["p", "p", "q"],
                                 photometric=PhotometricConfig(steps=30))
    by = lambda res: {f.image: f.code for f in res.faces}  # noqa: E731
    a, b = by(plain), by(refined)
    assert a.keys() == b.keys()
    shape = code_layout.SLICES["shape"]
    for k in a:
        assert np.isfinite(b[k]).all() and not np.allclose(a[k][shape], b[k][shape])
    np.testing.assert_array_equal(b[str(paths[0])][shape], b[str(paths[1])][shape])
    out_json = tmp_path / "faces.json"
    assert main(["encode", str(paths[1]), "--photometric", "--json", str(out_json)]) == 0
    assert "1 face(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_train_encoder_command_and_seeded_encode(default_model, photos, tmp_path, capsys):
    from skullsearch.cli.app import main

    folder, _ = photos
    ckpt = tmp_path / "enc.pt"
    assert main(["train", "encoder", str(folder), "--out", str(ckpt), "--epochs", "2",
                 "--batch-size", "2"]) == 0
    assert ckpt.exists() and "wrote" in capsys.readouterr().out
    res = skullsearch.encode(sorted(folder.glob("face*.png")), model=default_model, cnn=ckpt)
    assert len(res.faces) == 3 and all(np.isfinite(f.code).all() for f in res.faces)
    assert max(f.residual_px for f in res.faces) < 5.0


def test_the_photos_own_focal_length_from_exif_places_the_face(default_model, tmp_path):
    """A photo whose EXIF gives its focal length is fitted with it (the face at the distance the
    camera was), not with the guess (1.2 × the longer side); FitConfig(exif_focal=False) and a
    photo without EXIF keep the guess."""
    from skullsearch.encoder.fitting import FitConfig
    from skullsearch.encoder.images import FRAME_35MM_DIAGONAL

    rng = np.random.default_rng(4)
    v = default_model.vertices(shape=torch.tensor(rng.standard_normal((1, 90)), dtype=torch.float32))[0]
    cam = face_camera(yaw_deg=10, size=400, distance=600, fov_mm=300, center=np.array([0, -30, 0]))
    image = Image.fromarray(render_mesh(v.numpy(), default_model.faces, cam).image)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8769)[0xA405] = int(round(cam.focal * FRAME_35MM_DIAGONAL / np.hypot(400, 400)))
    image.save(tmp_path / "exif.jpg", quality=95, exif=exif)
    image.save(tmp_path / "plain.jpg", quality=95)
    f_exif = exif.get_ifd(0x8769)[0xA405] * np.hypot(400, 400) / FRAME_35MM_DIAGONAL
    assert cam.focal == pytest.approx(800) and f_exif == pytest.approx(800, rel=0.02)

    def fitted(path, **kw):
        (face,) = skullsearch.encode([path], model=default_model, config=FitConfig(**kw)).faces
        return face.focal, float(code_layout.split(face.code[None]).cam_trans[0, 2])

    focal, z = fitted(tmp_path / "exif.jpg")
    guess, z_guess = fitted(tmp_path / "exif.jpg", exif_focal=False)
    plain, z_plain = fitted(tmp_path / "plain.jpg")
    assert focal == pytest.approx(f_exif) and guess == plain == pytest.approx(1.2 * 400)
    assert z_plain == pytest.approx(z_guess, rel=0.02)
    # the face's distance scales with the focal length it was fitted with (same size in pixels)
    assert z / z_guess == pytest.approx(f_exif / guess, rel=0.1)


def test_a_face_writes_strict_json_with_null_for_what_is_not_known():
    import json

    from skullsearch.encoder.encode import EncodedFace

    f = EncodedFace(image="a.jpg", sha256="", face_index=0, box=np.zeros(4), score=1.0,
                    landmarks=np.zeros((68, 2)), quality=(), yaw_deg=0.0, detector="dlib",
                    image_size=(400, 300), focal=480.0)
    d = json.loads(json.dumps(f.to_dict(), allow_nan=False))  # (no NaN: not a JSON value)
    assert d["photo_focal"] is None and d["residual_px"] is None and d["focal"] == 480.0
