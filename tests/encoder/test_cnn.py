"""The CNN encoder (paper's GFMOFA): crops, network, Eq. 1/2 loss, training, checkpoints.

Synthetic photos of the default model with known cameras and landmarks; small networks at 64 px so
the file runs in seconds on two CPU cores.
"""

import copy

import numpy as np
import pytest
import torch
from torch_threads import one_thread

from skullsearch.encoder import cnn
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.fitting import FitConfig, LandmarkRig, camera_rotation, fit_landmarks, project
from skullsearch.encoder.render import face_camera, render_mesh
from skullsearch.errors import SkullsearchError

PHOTO = 160  # px, synthetic photos
CROP = 64  # px, crops for the small test networks
WIDTHS = (8, 16, 32, 64)
PERSONS, PER_PERSON = 8, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions on a shared 2-core machine: one thread is faster and steadier."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def photos(default_model):
    """32 renders: 8 people (shape ~ N(0, 0.5σ) on 10 components) × 4 photos, yaw ±25°,
    pitch ±10°, 550–700 mm, off-centre. Ground-truth codes and projected landmarks."""
    m = default_model
    rng = np.random.default_rng(0)
    n = PERSONS * PER_PERSON
    person = np.repeat(np.arange(PERSONS), PER_PERSON)
    shape = torch.tensor(rng.standard_normal((PERSONS, 10)) * 0.5 * m.shape_std[:10],
                         dtype=torch.float32)[person]
    verts = m.vertices(shape=shape)
    lms = m.landmarks68(shape=shape)
    pix, lm2d, focal, rotvec, trans = [], [], [], [], []
    for i in range(n):
        yaw, pitch = rng.uniform(-25, 25), rng.uniform(-10, 10)
        cam = face_camera(yaw_deg=yaw, pitch_deg=pitch, distance=rng.uniform(550, 700), size=PHOTO,
                          center=np.array([rng.uniform(-10, 10), rng.uniform(-40, -20), 0.0]))
        pix.append(render_mesh(verts[i].numpy(), m.faces, cam).image)
        lm2d.append(cam.project(lms[i].numpy())[:, :2])
        focal.append(cam.focal)
        # face_camera's rotation is flip · Rx(pitch) · Ry(yaw): the code's axis-angle is Rx·Ry's
        r = np.diag([1.0, -1.0, -1.0]) @ cam.rotation
        angle = np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))
        axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        rotvec.append(axis / (2 * np.sin(angle)) * angle if angle > 1e-9 else np.zeros(3))
        trans.append(cam.translation)
    lm2d = np.asarray(lm2d)
    truth = code_layout.pack(shape=shape, cam_rot=torch.tensor(np.array(rotvec), dtype=torch.float32),
                             cam_trans=torch.tensor(np.array(trans), dtype=torch.float32))
    imgs, tr = cnn.crop_faces(pix, cnn.boxes_from_landmarks(lm2d), size=CROP)
    return {"pixels": pix, "landmarks": lm2d, "focal": np.asarray(focal), "person": person,
            "sizes": np.full((n, 2), PHOTO), "images": imgs, "transforms": tr, "truth": truth}


@pytest.fixture(scope="module")
def trained(default_model, photos):
    """A small encoder trained 10 epochs on the 32 photos (stage 1) and its history."""
    p = photos
    lines = []
    net, history = cnn.train_encoder(
        p["images"], p["landmarks"], p["transforms"], p["sizes"], focal=p["focal"],
        model=default_model, widths=WIDTHS, epochs=10, batch_size=8, lr=3e-3, seed=0,
        log=lines.append)
    assert len(lines) == 10 and lines[0].startswith("epoch 1/10: loss ")
    return net, history


@pytest.fixture(scope="module")
def rig(default_model):
    return LandmarkRig(default_model, 90, 90)


# ---------------------------------------------------------------------------------- crops
def test_crop_is_the_exact_window_at_unit_scale():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    b = torch.rand(90, 70, 3)  # another size, float in [0, 1]
    boxes = np.array([[10, 20, 42, 52], [30, 5, 62, 37], [0, 0, 32, 32]], float)
    imgs, tr = cnn.crop_faces([a, a, b], boxes, size=32, enlarge=1.0)
    assert imgs.shape == (3, 3, 32, 32) and imgs.dtype == torch.float32
    np.testing.assert_allclose(tr.numpy(), [[1, 10, 20], [1, 30, 5], [1, 0, 0]])
    want = torch.from_numpy(a[20:52, 10:42]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(imgs[0], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(imgs[1], torch.from_numpy(a[5:37, 30:62]).permute(2, 0, 1).float() / 255,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(imgs[2], b[:32, :32].permute(2, 0, 1), atol=1e-5, rtol=0)


def test_crop_pads_with_zeros_and_maps_points_back():
    img = np.full((200, 300, 3), 255, np.uint8)
    img[150:154, 60:64] = (255, 0, 0)  # a 4 px red square at photo px centre (62, 152)
    box = np.array([[10.0, 110.0, 110.0, 210.0]])  # runs past the bottom edge
    imgs, tr = cnn.crop_faces([img], box, size=64)  # 140 px → 64 px: anti-aliased
    assert float(tr[0, 0]) == pytest.approx(140 / 64)
    # the crop's top-left corner lies left of the photo: zeros; its inside: white
    assert imgs[0, :, 0, 0].abs().max() == 0
    assert imgs[0, :, 5, 32].min() > 0.99
    # the red square: where it lands in the crop maps back to where it is in the photo
    redness = imgs[0, 0] - imgs[0, 1]
    r, c = np.unravel_index(int(redness.argmax()), redness.shape)
    back = cnn.crop_to_image(np.array([[[c + 0.5, r + 0.5]]]), tr)[0, 0]
    assert np.abs(back - [62, 152]).max() < tr[0, 0].item()
    pts = np.random.default_rng(0).uniform(0, 200, (1, 68, 2))
    np.testing.assert_allclose(cnn.crop_to_image(cnn.image_to_crop(pts, tr), tr), pts, atol=1e-4)
    tp = torch.tensor(pts, dtype=torch.float64)
    torch.testing.assert_close(cnn.image_to_crop(tp, tr), torch.from_numpy(cnn.image_to_crop(pts, tr)))


# ---------------------------------------------------------------------------------- network
def test_forward_shapes_finite_and_differentiable(default_model):
    net = cnn.EncoderCNN.for_model(default_model, widths=(8, 16), input_size=32)
    assert net.n_shape == 90 and net.n_expression == default_model.n_expression == 53
    photo = torch.rand(80, 80, 3, requires_grad=True)
    imgs, tr = cnn.crop_faces([photo, photo, photo], np.array([[10, 10, 60, 60], [0, 5, 40, 45],
                                                              [30, 30, 70, 75]], float), size=32)
    raw = net(imgs)
    assert raw.shape == (3, code_layout.CODE_SIZE) and torch.isfinite(raw).all()
    codes = net.predict_codes(imgs, tr, np.full((3, 2), 80.0), focal=100.0)
    assert codes.shape == (3, 228) and torch.isfinite(codes).all()
    parts = code_layout.split(codes)
    assert parts.light.abs().max() == 0  # not predicted
    n_e = default_model.n_expression
    assert parts.expression[:, n_e:].abs().max() == 0  # beyond the model's expressions
    assert parts.pose[:, :6].abs().max() == 0 and parts.pose[:, 9:].abs().max() == 0  # jaw only
    codes.square().sum().backward()
    assert photo.grad is not None and torch.isfinite(photo.grad).all() and photo.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="size=32"):
        net.predict_codes(torch.rand(1, 3, 48, 48), tr[:1], np.full((1, 2), 80.0))


def test_zero_output_puts_the_mean_face_in_the_crop_centre(default_model, photos):
    net = cnn.EncoderCNN.for_model(default_model, widths=(8,), input_size=CROP)
    n = len(photos["focal"])
    f = torch.tensor(photos["focal"], dtype=torch.float32)
    codes = net.decode(torch.zeros(n, 228), photos["transforms"], photos["sizes"], f)
    p = code_layout.split(codes)
    uv = project(net.anchor.expand(n, 1, 3), camera_rotation(p.cam_rot), p.cam_trans, f,
                 torch.full((n, 2), PHOTO / 2))[:, 0]
    centre = cnn.crop_to_image(torch.full((n, 1, 2), CROP / 2), photos["transforms"])[:, 0]
    torch.testing.assert_close(uv, centre, atol=1e-3, rtol=0)
    # depth: the crop spans crop_mm at the face
    side = photos["transforms"][:, 0] * CROP
    torch.testing.assert_close(p.cam_trans[:, 2] + (camera_rotation(p.cam_rot) @ net.anchor)[:, 2],
                               f * net.config["crop_mm"] / side)


# ---------------------------------------------------------------------------------- loss
def test_loss_is_small_for_the_true_codes(rig, photos):
    p = photos
    truth = cnn.self_supervised_loss(rig, p["truth"], p["landmarks"], p["sizes"], p["focal"])
    moved = p["truth"].clone()
    moved[:, code_layout.SLICES["cam_rot"]] += 0.1
    off = cnn.self_supervised_loss(rig, moved, p["landmarks"], p["sizes"], p["focal"])
    assert truth.total.shape == (len(p["focal"]),)
    # not zero: the detector-like jaw line (silhouette) differs from the projected static contour
    assert truth.total.mean() < 0.03 < off.total.mean()
    assert truth.consistency.abs().max() == 0
    w = FitConfig()
    s = p["truth"][:, :90]
    torch.testing.assert_close(truth.regularizer, w.w_shape * (s**2).sum(1))  # σ_shape = 1 here


def test_consistency_term_on_hand_made_codes(rig):
    std = torch.ones(90)
    same = torch.randn(1, 90).expand(4, 90)
    person = np.array([3, 3, 7, 7])
    assert cnn.shape_consistency(same, person, std).abs().max() == 0
    shapes = torch.zeros(4, 90)
    shapes[0, 0], shapes[1, 0] = 1.0, -1.0  # person 3 disagrees by ±1σ; person 7 agrees
    got = cnn.shape_consistency(shapes, person, std)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert cnn.shape_consistency(shapes, np.arange(4), std).abs().max() == 0  # one photo each
    # inside the loss: weighted, only with person ids
    codes = torch.zeros(4, 228)
    codes[:, :90] = shapes
    codes[:, code_layout.SLICES["cam_trans"]] = torch.tensor([0.0, 0.0, 600.0])
    lm = np.random.default_rng(0).uniform(40, 120, (4, 68, 2))
    sizes = np.full((4, 2), 160)
    with_p = cnn.self_supervised_loss(rig, codes, lm, sizes, 300.0, person=person, w_consistency=0.5)
    without = cnn.self_supervised_loss(rig, codes, lm, sizes, 300.0)
    torch.testing.assert_close(with_p.consistency, 0.5 * got)
    torch.testing.assert_close(with_p.total - without.total, 0.5 * got)


# ---------------------------------------------------------------------------------- training
def test_training_reduces_the_loss(trained):
    net, history = trained
    losses = [h["loss"] for h in history]
    print("epoch losses:", [round(x, 5) for x in losses])
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
    assert not net.training


def test_training_is_deterministic_and_takes_crop_landmarks(default_model, photos):
    p = photos
    kw = dict(focal=p["focal"], model=default_model, widths=(4, 8), epochs=2, batch_size=8, seed=3,
              log=lambda s: None)
    _, h1 = cnn.train_encoder(p["images"][:16], p["landmarks"][:16], p["transforms"][:16],
                              p["sizes"][:16], **kw)
    lm_crop = cnn.image_to_crop(p["landmarks"][:16], p["transforms"][:16])
    _, h2 = cnn.train_encoder(p["images"][:16], None, p["transforms"][:16], p["sizes"][:16],
                              landmarks_crop=lm_crop, **kw)
    np.testing.assert_allclose([h["loss"] for h in h1], [h["loss"] for h in h2], rtol=1e-4)


def test_stage2_consistency_pulls_a_persons_shapes_together(default_model, photos):
    p = photos
    within = {}
    for w in (0.0, cnn.W_CONSISTENCY):
        net, hist = cnn.train_encoder(
            p["images"], p["landmarks"], p["transforms"], p["sizes"], focal=p["focal"],
            person=p["person"], model=default_model, widths=WIDTHS, epochs=10, batch_size=8,
            lr=3e-3, seed=0, w_consistency=w, log=lambda s: None)
        with torch.no_grad():
            codes = net.predict_codes(p["images"], p["transforms"], p["sizes"], p["focal"])
        s = code_layout.split(codes).shape[:, :90] / net.shape_std
        # 10 epochs: by then the net without the term has spread a person's shapes (0.58 σ² here
        # against 0.10 with it; at 6 epochs 0.27 vs 0.16 — a margin that package versions moved)
        within[w] = float(cnn.shape_consistency(s, p["person"], torch.ones(90)).mean())
        assert (hist[-1]["consistency"] > 0) == (w > 0)
    print("within-person shape variance (σ²):", within)
    assert within[cnn.W_CONSISTENCY] < 0.5 * within[0.0]


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, default_model, photos, trained):
    net, history = trained
    path = cnn.save_checkpoint(tmp_path / "enc.pt", net, {"history": history, "note": "test",
                                                          "n": np.int64(32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == cnn.CHECKPOINT_FORMAT and raw["version"] == 1
    assert raw["face_model_fingerprint"] == default_model.fingerprint
    assert raw["config"]["widths"] == list(WIDTHS) and raw["config"]["input_size"] == CROP
    back, meta = cnn.load_checkpoint(path, model=default_model)
    assert meta["note"] == "test" and meta["n"] == 32 and len(meta["history"]) == 10
    assert back.config == net.config and not back.training
    args = (photos["images"], photos["transforms"], photos["sizes"], photos["focal"])
    with torch.no_grad():
        torch.testing.assert_close(back.predict_codes(*args), net.predict_codes(*args))


def test_checkpoint_refusals(tmp_path, default_model, trained):
    net, _ = trained
    with pytest.raises(cnn.EncoderCheckpointError, match="does not exist"):
        cnn.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "something-else", "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(cnn.EncoderCheckpointError, match="not a skullsearch encoder checkpoint"):
        cnn.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(SkullsearchError, match="save_checkpoint"):
        cnn.load_checkpoint(tmp_path / "text.pt")
    # a pickle holding an arbitrary object is refused, never executed
    torch.save({"format": cnn.CHECKPOINT_FORMAT, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(cnn.EncoderCheckpointError):
        cnn.load_checkpoint(tmp_path / "evil.pt")
    assert not _Evil.ran
    path = cnn.save_checkpoint(tmp_path / "enc.pt", net)
    other = copy.copy(default_model)
    other.v_template = default_model.v_template + 1.0
    with pytest.raises(cnn.EncoderCheckpointError, match="trained for face model"):
        cnn.load_checkpoint(path, model=other)
    cnn.load_checkpoint(path)  # no model given: no check


class _Evil:
    ran = False

    def __reduce__(self):
        return (_Evil._run, ())

    @staticmethod
    def _run():
        _Evil.ran = True
        return _Evil()


def test_checkpoint_written_during_training(tmp_path, default_model, photos):
    p = photos
    path = tmp_path / "ck" / "enc.pt"
    cnn.train_encoder(p["images"][:8], p["landmarks"][:8], p["transforms"][:8], p["sizes"][:8],
                      focal=p["focal"][:8], model=default_model, widths=(4,), epochs=2, batch_size=8,
                      checkpoint_path=path, log=lambda s: None)
    _, meta = cnn.load_checkpoint(path, model=default_model)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2


# ---------------------------------------------------------------------------------- fit seeding
def test_cnn_codes_seed_the_fit(default_model, photos, trained):
    net, _ = trained
    p = photos
    k = 8
    with torch.no_grad():
        codes = net.predict_codes(p["images"][:k], p["transforms"][:k], p["sizes"][:k], p["focal"][:k])
    cfg = FitConfig(alternations=1, camera_steps=10, full_steps=20)
    res = fit_landmarks(default_model, p["landmarks"][:k], p["sizes"][:k], focal=p["focal"][:k],
                        config=cfg, init=codes.numpy())
    assert res.codes.shape == (k, 228) and np.isfinite(res.codes).all()
    assert np.isfinite(res.residual_px).all() and res.residual_px.mean() < 3.0  # px, 160 px photos
    # encode_faces (photos + boxes → codes) gives the same codes as the manual path
    boxes = cnn.boxes_from_landmarks(p["landmarks"][:k])
    via = cnn.encode_faces(net, p["pixels"][:k], boxes, focal=p["focal"][:k])
    # the same codes up to float32 resampling of crops made in batches of another size: nearly
    # all numbers to 2e-3, a few to 5 % (cam_trans is ~600 mm)
    np.testing.assert_allclose(via, codes.numpy(), rtol=5e-2, atol=5e-2)
    assert np.mean(np.isclose(via, codes.numpy(), rtol=2e-3, atol=2e-3)) > 0.98
    # encode_detected: the same from a detector's faces and a {path: pixels} lookup
    from types import SimpleNamespace

    faces = [SimpleNamespace(image=f"p{i}", box=boxes[i], image_size=p["pixels"][i].shape[1::-1])
             for i in range(k)][::-1]  # in another order than the photos
    pixels = {f"p{i}": p["pixels"][i] for i in range(k)}
    default_focal = cnn.encode_faces(net, p["pixels"][:k], boxes)
    np.testing.assert_array_equal(cnn.encode_detected(net, faces, pixels, batch_size=k), default_focal[::-1])
    assert cnn.encode_detected(net, [], pixels).shape == (0, 228)
