"""68-point detectors: dlib on a real photo and on renders, .pts sidecars, FAN refusal, quality."""

import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skullsearch.encoder import detectors
from skullsearch.encoder.detectors import (
    DlibDetector,
    Face,
    FanDetector,
    PtsDetector,
    estimate_yaw,
    get_detector,
    quality_flags,
    read_pts,
)
from skullsearch.encoder.images import DecodedImage, read_image
from skullsearch.errors import DependencyError, LandmarkError, SkullsearchError


def _astronaut_path() -> Path:
    """scikit-image ships this real photo (Eileen Collins, NASA, public domain) in its wheel."""
    skimage_data = pytest.importorskip("skimage.data")
    p = Path(skimage_data.__file__).parent / "astronaut.png"
    if not p.is_file():
        pytest.skip("this scikit-image install does not ship astronaut.png")
    return p


def _decoded(pixels: np.ndarray, path="mem.png") -> DecodedImage:
    h, w = pixels.shape[:2]
    return DecodedImage(path=str(path), pixels=pixels, sha256="0" * 64, size=(w, h),
                        exif_transposed=False)


def _synthetic_landmarks(cx=100.0, cy=100.0, iod=60.0, nose_shift=0.0, roll_deg=0.0) -> np.ndarray:
    """A plausible frontal 68-point layout (68, 2) px: contour, brows, nose, eyes, mouth."""
    s = iod / 2
    u = np.linspace(0, np.pi, 17)
    lm = np.zeros((68, 2))
    lm[0:17] = np.c_[-1.6 * s * np.cos(u), 2.6 * s * np.sin(u)]  # ear, chin, ear
    lm[17:22] = np.c_[np.linspace(-1.5, -0.3, 5) * s, np.full(5, -0.6 * s)]
    lm[22:27] = np.c_[np.linspace(0.3, 1.5, 5) * s, np.full(5, -0.6 * s)]
    lm[27:31] = np.c_[np.zeros(4) + np.linspace(0, nose_shift, 4), np.linspace(0, 1.0 * s, 4)]
    lm[31:36] = np.c_[np.linspace(-0.4, 0.4, 5) * s + nose_shift, np.full(5, 1.15 * s)]
    lm[36:42] = np.c_[np.linspace(-1.0, -0.3, 6) * s, np.zeros(6)]
    lm[42:48] = np.c_[np.linspace(0.3, 1.0, 6) * s, np.zeros(6)]
    lm[36], lm[45] = (-s, 0), (s, 0)
    lm[48:60] = np.c_[0.7 * s * np.cos(np.linspace(np.pi, -np.pi, 12)), 1.7 * s + 0.2 * s * np.sin(
        np.linspace(0, 2 * np.pi, 12))]
    lm[60:68] = np.c_[0.5 * s * np.cos(np.linspace(np.pi, -np.pi, 8)), np.full(8, 1.7 * s)]
    lm[30] = (nose_shift, 1.0 * s)
    r = np.deg2rad(roll_deg)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return lm @ rot.T + (cx, cy)


def _write_pts(path: Path, lm0: np.ndarray, newline="\n", header=True):
    """Write 0-based landmarks as a 1-based 300-W .pts file."""
    lines = (["version: 1", f"n_points: {len(lm0)}"] if header else []) + ["{"]
    lines += [f"{x + 1:.3f} {y + 1:.3f}" for x, y in lm0] + ["}"]
    path.write_bytes((newline.join(lines) + newline).encode())


# ---------------------------------------------------------------- dlib, real photo
def test_dlib_on_a_real_photo():
    photo = read_image(_astronaut_path())
    assert isinstance(photo, DecodedImage) and photo.size == (512, 512)
    faces = DlibDetector(min_score=0.5).detect(photo)
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, Face) and f.detector == "dlib" and f.score > 0.5
    assert f.landmarks.shape == (68, 2) and f.box.shape == (4,)
    x0, y0, x1, y1 = f.box
    mx, my = 0.25 * (x1 - x0), 0.25 * (y1 - y0)  # dlib's chin and jaw run a little past the box
    assert (f.landmarks[:, 0] >= x0 - mx).all() and (f.landmarks[:, 0] <= x1 + mx).all()
    assert (f.landmarks[:, 1] >= y0 - my).all() and (f.landmarks[:, 1] <= y1 + my).all()
    assert f.landmarks[36:48, 1].mean() < f.landmarks[27:36, 1].mean() < f.landmarks[48:68, 1].mean()
    assert f.quality == () and abs(f.yaw_deg) < 15
    # dlib's default threshold also finds the mission patch (a weak score): the photo's face
    # is still the first (largest) one
    first = DlibDetector().detect(photo)[0]
    np.testing.assert_array_equal(first.box, f.box)
    np.testing.assert_allclose(first.landmarks, f.landmarks)


def test_dlib_batch_and_legacy_function():
    photo = read_image(_astronaut_path())
    blank = _decoded(np.full((200, 200, 3), 255, np.uint8))
    det = get_detector("dlib", min_score=0.5)
    out = det.detect_batch([photo, blank])
    assert [len(x) for x in out] == [1, 0]
    legacy = detectors.dlib_landmarks68(photo.pixels)
    np.testing.assert_allclose(legacy[0][1], out[0][0].landmarks)


@pytest.mark.parametrize("yaw", [20.0, -20.0])
def test_dlib_on_a_render_of_the_default_model(default_model, yaw):
    from skullsearch.encoder.render import face_camera, render_mesh

    m = default_model
    cam = face_camera(yaw_deg=yaw, size=400, orthographic=True, fov_mm=280)
    img = render_mesh(m.v_template, m.faces, cam).image
    faces = DlibDetector().detect(_decoded(img))
    assert len(faces) >= 1
    f = faces[0]
    assert "extreme-yaw" not in f.quality and "landmarks-outside" not in f.quality
    assert np.sign(f.yaw_deg) == np.sign(yaw)
    assert 10 <= abs(f.yaw_deg) <= 32


# ---------------------------------------------------------------- quality flags
def test_quality_flags_clean_face():
    flags, yaw = quality_flags(_synthetic_landmarks(), (200, 200))
    assert flags == () and abs(yaw) < 1e-6


def test_quality_flag_landmarks_outside():
    lm = _synthetic_landmarks(cx=20.0)  # contour runs past the left edge
    assert (lm[:, 0] < 0).any()
    assert quality_flags(lm, (200, 200))[0] == ("landmarks-outside",)
    lm = _synthetic_landmarks()
    assert "landmarks-outside" in quality_flags(lm, (int(lm[:, 0].max()), 400))[0]


def test_quality_flag_tiny():
    lm = _synthetic_landmarks(iod=12.0)
    assert quality_flags(lm, (200, 200))[0] == ("tiny",)
    assert quality_flags(lm, (200, 200), min_iod_px=10)[0] == ()


def test_quality_flag_extreme_yaw_and_sign():
    iod = 60.0
    turned = _synthetic_landmarks(iod=iod, nose_shift=0.6 * iod)  # atan(0.6 / 0.386) ≈ 57°
    flags, yaw = quality_flags(turned, (200, 200))
    assert flags == ("extreme-yaw",) and 50 < yaw < 65
    flags, yaw = quality_flags(_synthetic_landmarks(iod=iod, nose_shift=-0.6 * iod), (200, 200))
    assert flags == ("extreme-yaw",) and -65 < yaw < -50
    mild = _synthetic_landmarks(iod=iod, nose_shift=0.15 * iod)
    assert quality_flags(mild, (200, 200))[0] == ()
    assert quality_flags(mild, (200, 200), max_yaw_deg=10)[0] == ("extreme-yaw",)


def test_yaw_estimate_ignores_roll():
    a = estimate_yaw(_synthetic_landmarks(nose_shift=10.0))
    b = estimate_yaw(_synthetic_landmarks(nose_shift=10.0, roll_deg=30.0))
    assert a == pytest.approx(b, abs=1e-6) and a > 0


def test_quality_flags_rejects_wrong_shape():
    with pytest.raises(LandmarkError):
        quality_flags(np.zeros((5, 2)), (100, 100))


# ---------------------------------------------------------------- .pts files
def test_read_pts_converts_one_based(tmp_path):
    lm0 = _synthetic_landmarks()
    p = tmp_path / "a.pts"
    _write_pts(p, lm0)
    got = read_pts(p)
    assert got.shape == (68, 2) and got.dtype == np.float64
    np.testing.assert_allclose(got, lm0, atol=1e-3)
    p.write_text("version: 1\nn_points: 2\n{\n1 1\n10.5 20\n}\n")
    np.testing.assert_array_equal(read_pts(p), [[0, 0], [9.5, 19]])


def test_read_pts_crlf_comments_blank_lines(tmp_path):
    p = tmp_path / "b.pts"
    p.write_bytes(b"\xef\xbb\xbf# made by hand\r\nversion: 1\r\n\r\nn_points:  3\r\n{\r\n"
                  b"1 2  // first\r\n\r\n3 4\r\n5.5\t6.5\r\n}\r\n\r\n")
    np.testing.assert_array_equal(read_pts(p), [[0, 1], [2, 3], [4.5, 5.5]])


@pytest.mark.parametrize(
    "text, line",
    [
        ("version: 1\nn_points: 2\n{\n1 2\n3 abc\n}\n", 5),
        ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", 6),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", 5),
        ("version: 1\nthis is not a header\n{\n1 2\n}\n", 2),
        ("version: 1\nn_points: 1\n{\n1 2 3\n}\n", 4),
        ("version: 1\nn_points: 1\n{\n1 2\n}\n5 6\n", 6),
    ],
)
def test_read_pts_malformed_names_file_and_line(tmp_path, text, line):
    p = tmp_path / "bad.pts"
    p.write_text(text)
    with pytest.raises(LandmarkError) as e:
        read_pts(p)
    assert str(p) in str(e.value) and f"line {line}:" in str(e.value)


def test_read_pts_missing_file(tmp_path):
    with pytest.raises(LandmarkError, match="cannot read"):
        read_pts(tmp_path / "none.pts")


def test_pts_detector_with_sidecars(tmp_path):
    img = tmp_path / "photo.jpg"
    Image.new("RGB", (300, 200), (128, 128, 128)).save(img)
    photo = read_image(img)
    assert PtsDetector().detect(photo) == []  # no sidecar: no faces

    small, big = _synthetic_landmarks(cx=60, iod=30), _synthetic_landmarks(cx=200, iod=60)
    _write_pts(tmp_path / "photo_1.pts", small, newline="\r\n")
    _write_pts(tmp_path / "photo_2.pts", big)
    _write_pts(tmp_path / "photo_x.pts", big)  # not a numbered sidecar: ignored
    faces = get_detector("pts").detect(photo)
    assert len(faces) == 2 and all(f.detector == "pts" and f.score == 1.0 for f in faces)
    np.testing.assert_allclose(faces[0].landmarks, big, atol=1e-3)  # largest first
    np.testing.assert_allclose(faces[0].box, [*big.min(0), *big.max(0)], atol=1e-3)
    np.testing.assert_allclose(faces[1].landmarks, small, atol=1e-3)

    other = tmp_path / "single.png"
    Image.new("RGB", (200, 200)).save(other)
    _write_pts(tmp_path / "single.pts", big)
    assert len(PtsDetector().detect_batch([read_image(other)])[0]) == 1

    (tmp_path / "single.pts").write_text("version: 1\nn_points: 2\n{\n1 1\n2 2\n}\n")
    with pytest.raises(LandmarkError, match="68-point"):
        PtsDetector().detect(read_image(other))


# ---------------------------------------------------------------- FAN and the registry
def test_fan_refuses_without_the_package(monkeypatch):
    monkeypatch.setattr(detectors.importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_alignment" else _real_find_spec(name))
    with pytest.raises(DependencyError) as e:
        get_detector("fan")
    assert "--detector dlib" in str(e.value) and "face-alignment" in str(e.value)


_real_find_spec = detectors.importlib.util.find_spec


@pytest.fixture
def fake_face_alignment(monkeypatch):
    """A stand-in face_alignment package: records how FanDetector builds it, never downloads."""
    calls = {}

    class FaceAlignment:
        def __init__(self, landmarks_type, **kw):
            import torch.hub

            calls["init"] = (landmarks_type, kw, torch.hub.get_dir())
            calls["hub_files"] = sorted(p.name for p in (Path(torch.hub.get_dir()) / "checkpoints")
                                        .iterdir())

        def get_landmarks_from_image(self, image, return_bboxes=False, return_landmark_score=False):
            calls["detect"] = (image.shape, return_bboxes, return_landmark_score)
            lm = _synthetic_landmarks(cx=100, cy=80, iod=40)
            return [lm], [np.ones(68)], [np.array([60.0, 40.0, 140.0, 150.0, 0.97])]

    mods = {n: types.ModuleType(n) for n in ("face_alignment", "face_alignment.api",
                                              "face_alignment.detection",
                                              "face_alignment.detection.sfd",
                                              "face_alignment.detection.sfd.sfd_detector")}
    for n, m in mods.items():
        m.__spec__ = importlib.machinery.ModuleSpec(n, None, is_package=True)
        monkeypatch.setitem(sys.modules, n, m)
    fa, api, sfd = (mods["face_alignment"], mods["face_alignment.api"],
                    mods["face_alignment.detection.sfd.sfd_detector"])
    fa.FaceAlignment, fa.LandmarksType, fa.api = FaceAlignment, types.SimpleNamespace(TWO_D=1), api
    mods["face_alignment.detection"].sfd = mods["face_alignment.detection.sfd"]
    mods["face_alignment.detection.sfd"].sfd_detector = sfd
    api.default_model_urls = {"2DFAN-4": "https://example.invalid/python-fan/2DFAN4-abc.zip"}
    api.models_urls = {}
    sfd.models_urls = {"s3fd": "https://example.invalid/python-fan/s3fd-123.pth"}
    return calls


def test_fan_refuses_without_weights_and_names_the_files(tmp_path, fake_face_alignment):
    with pytest.raises(DependencyError) as e:
        FanDetector(weights_dir=tmp_path)
    msg = str(e.value)
    assert "2DFAN4-abc.zip" in msg and "s3fd-123.pth" in msg and str(tmp_path) in msg
    assert "--detector dlib" in msg
    assert "init" not in fake_face_alignment  # nothing was built, nothing downloaded


def test_fan_with_local_weights(tmp_path, fake_face_alignment):
    import torch.hub

    hub_before = torch.hub.get_dir()
    (tmp_path / "2DFAN4-abc.zip").write_bytes(b"x")
    (tmp_path / "s3fd-123.pth").write_bytes(b"x")
    det = get_detector("fan", device="cpu", weights_dir=tmp_path)
    ltype, kw, hub = fake_face_alignment["init"]
    assert ltype == 1 and kw["device"] == "cpu"
    assert kw["face_detector_kwargs"]["path_to_detector"] == str(tmp_path / "s3fd-123.pth")
    assert fake_face_alignment["hub_files"] == ["2DFAN4-abc.zip", "s3fd-123.pth"]
    assert torch.hub.get_dir() == hub_before
    faces = det.detect(_decoded(np.zeros((200, 220, 3), np.uint8)))
    assert fake_face_alignment["detect"] == ((200, 220, 3), True, True)
    assert len(faces) == 1 and faces[0].detector == "fan" and faces[0].score == pytest.approx(0.97)
    assert faces[0].landmarks.shape == (68, 2) and faces[0].quality == ()


def test_get_detector_unknown_name_lists_the_valid_ones():
    with pytest.raises(SkullsearchError) as e:
        get_detector("nope")
    assert all(n in str(e.value) for n in ("dlib", "fan", "pts"))
    assert isinstance(get_detector("DLIB", upsample=0), DlibDetector)
    assert get_detector("dlib", upsample=0).upsample == 0
