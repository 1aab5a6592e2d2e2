"""Person descriptors (dlib's face recognition network) on real decoded renders, offline."""

import numpy as np
import pytest

from skullsearch.encoder import descriptors
from skullsearch.encoder.detectors import DlibDetector
from skullsearch.encoder.encode import encode
from skullsearch.encoder.images import read_image


@pytest.fixture(scope="module")
def portraits(default_model, tmp_path_factory):
    """Two PNG portraits each (other pose, light, skin tone) of three default-model heads."""
    from photos import render_heads

    heads = [(f"head{i}_{k}", i) for i in range(3) for k in range(2)]
    paths = render_heads(default_model, tmp_path_factory.mktemp("desc"), heads, seed=3)
    return paths, np.array([h for _, h in heads])


def _describe(paths):
    det = DlibDetector()
    out = []
    for p in paths:
        img = read_image(p)
        (face,) = det.detect(img)[:1]
        out.append(descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None])[0])
    return np.stack(out)


def test_descriptors_tell_the_heads_apart(portraits):
    paths, person = portraits
    d = _describe(paths)
    assert d.shape == (6, descriptors.DIM) and d.dtype == np.float32 and np.isfinite(d).all()
    dist = descriptors.descriptor_distances(d, d)
    same = person[:, None] == person[None, :]
    off = ~np.eye(len(person), dtype=bool)
    # every head's other photo is nearer than any other head's photo
    assert dist[same & off].max() < dist[~same].min()
    assert dist[same & off].max() < descriptors.SAME_PERSON_DISTANCE


def test_gray_photos_no_landmarks_and_wrong_layouts(portraits):
    paths, _ = portraits
    img = read_image(paths[0])
    (face,) = DlibDetector().detect(img)[:1]
    rgb = descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None])
    gray = descriptors.face_descriptors(img.pixels.mean(2).astype(np.uint8), face.box[None],
                                        face.landmarks[None])
    assert np.linalg.norm(rgb - gray) < 0.3  # a gray copy is still the same person
    lost = face.landmarks.copy()
    lost[0] = np.nan
    two = descriptors.face_descriptors(img.pixels, np.stack([face.box, face.box]),
                                       np.stack([face.landmarks, lost]))
    assert np.isfinite(two[0]).all() and np.isnan(two[1]).all()
    np.testing.assert_allclose(two[0], rgb[0], atol=1e-5)
    with pytest.raises(ValueError, match="68 landmarks"):
        descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None, :5])


def test_encode_gives_descriptors_only_when_asked(default_model, portraits):
    paths, _ = portraits
    plain = encode(paths[:2], model=default_model)
    assert all(f.descriptor is None for f in plain.faces)
    assert np.isnan(plain.descriptors).all()
    described = encode(paths[:2], model=default_model, descriptors=True)
    assert described.descriptors.shape == (2, descriptors.DIM)
    np.testing.assert_allclose(described.descriptors, _describe(paths[:2]), atol=1e-5)
    assert len(described.faces[0].to_dict()["descriptor"]) == descriptors.DIM


# ---------------------------------------------------------------- the torch port of dlib's network
def _pack_int(v: int) -> bytes:
    """dlib's packed integer, written independently of the reader: size|sign byte, then the
    magnitude's bytes little-endian (0 as one zero byte)."""
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def test_reader_reads_dlib_integers_floats_and_tensors():
    from skullsearch.encoder.dlib_resnet import _Reader

    ints = [0, 1, 150, 256, 4736, -17, -(2**40), 2**62]
    r = _Reader(b"".join(_pack_int(v) for v in ints), 0)
    assert [r.int() for _ in ints] == ints
    # 122.782 as dlib writes it: mantissa 16093282, exponent -17
    r = _Reader(_pack_int(16093282) + _pack_int(-17), 0)
    assert r.float() == pytest.approx(122.782, abs=1e-4)
    values = np.arange(6, dtype="<f4")
    blob = _pack_int(2) + b"".join(_pack_int(s) for s in (1, 2, 3, 1)) + values.tobytes()
    np.testing.assert_array_equal(_Reader(blob, 0).tensor(), values.reshape(1, 2, 3, 1))
    with pytest.raises(ValueError, match="runs past"):
        _Reader(blob[:-4], 0).tensor()
    with pytest.raises(ValueError, match="version"):
        _Reader(_pack_int(1) + blob[2:], 0).tensor()


def test_the_shipped_file_reads_as_dlibs_network():
    from skullsearch.encoder import dlib_resnet

    net = dlib_resnet.read_network(descriptors._model_path())
    assert net.size == descriptors.CHIP_SIZE
    np.testing.assert_allclose(net.mean, (122.782, 117.001, 104.298), atol=1e-3)  # dlib's input means
    assert [b[4] for b in net.blocks] == [False] * 3 + [True] + [False] * 3 + [True] + [False] * 2 \
        + [True] + [False] * 2 + [True]
    widths = [b[0].weight.shape[0] for b in net.blocks]
    assert widths == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert net.stem[0].weight.shape == (32, 3, 7, 7) and net.fc.shape == (256, 128)


def test_a_file_that_is_not_the_network_is_refused(tmp_path):
    from skullsearch.encoder import dlib_resnet

    data = descriptors._model_path().read_bytes()
    cut = tmp_path / "cut.dat"  # the last layers lost
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not dlib's face recognition ResNet"):
        dlib_resnet.read_network(cut)
    other = tmp_path / "predictor.dat"  # another dlib model file
    other.write_bytes(b"\x01\x01\x01\x05shape" + bytes(200))
    with pytest.raises(ValueError):
        dlib_resnet.read_network(other)


def test_torch_gives_dlibs_descriptors(portraits):
    """The port reads the same weights and the same chips: dlib's own numbers to float rounding,
    for several faces of one photo in one pass."""
    paths, _ = portraits
    for p in paths[:3]:
        img = read_image(p)
        (face,) = DlibDetector().detect(img)[:1]
        boxes = np.stack([face.box, face.box + 3])
        lms = np.stack([face.landmarks, face.landmarks + [3.0, -2.0]])
        ours = descriptors.face_descriptors(img.pixels, boxes, lms)
        dlibs = descriptors.face_descriptors(img.pixels, boxes, lms, backend="dlib")
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, dlibs, atol=1e-5)
        assert np.abs(ours[0] - ours[1]).max() > 1e-3  # a shifted chip is another input
    with pytest.raises(ValueError, match="backend"):
        descriptors.face_descriptors(img.pixels, boxes, lms, backend="onnx")


def test_a_network_file_torch_cannot_read_falls_back_to_dlib(portraits, monkeypatch, caplog):
    from skullsearch.encoder import dlib_resnet

    paths, _ = portraits
    img = read_image(paths[0])
    (face,) = DlibDetector().detect(img)[:1]
    want = descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None], backend="dlib")

    def refuse(path):
        raise ValueError(f"{path}: not dlib's face recognition ResNet")

    monkeypatch.setattr(dlib_resnet, "read_network", refuse)
    descriptors.torch_descriptor_model.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            got = descriptors.face_descriptors(img.pixels, face.box[None], face.landmarks[None])
        assert "running dlib's own network" in caplog.text
        np.testing.assert_array_equal(got, want)
    finally:
        descriptors.torch_descriptor_model.cache_clear()
