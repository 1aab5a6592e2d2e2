"""The GAN inpainter's networks, Ψ_E's supervision, training, the checkpoint and its refusals,
and ``skullsearch train inpainter``."""

import json
import os

import numpy as np
import pytest
import torch
from tiny_gan import TINY, one_thread
from typer.testing import CliRunner

from skullsearch.cli.app import app, main
from skullsearch.encoder import code as code_layout
from skullsearch.inpaint.gan import (
    CHECKPOINT_FORMAT,
    CodeMetric,
    Discriminator,
    Generator,
    InpainterCheckpointError,
    InpainterMissingError,
    RenderEncoder,
    canonical_codes,
    default_inpainter_path,
    load_inpainter,
    sidecar_path,
    train_inpainter,
)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A different (synthetic) FLAME-format face model."""
    from skullsearch import FaceModel

    from flame_writer import make_synthetic_flame, write_flame_pickle

    path = tmp_path_factory.mktemp("other") / "other.pkl"
    write_flame_pickle(path, make_synthetic_flame(seed=9))
    return FaceModel.load(path, annotate=False)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_network_shapes(size):
    g, d = Generator(100, size, 8), Discriminator(size, 8)
    e = RenderEncoder(90, 52, size, jaw=True)
    img = g(torch.randn(3, 100))
    assert img.shape == (3, 1, size, size)
    assert float(img.detach().min()) >= 0.0 and float(img.detach().max()) <= 1.0
    assert d(img).shape == (3,)
    codes = e.predict_codes(img)
    assert codes.shape == (3, code_layout.CODE_SIZE)
    parts = code_layout.split(codes.detach())
    # geometry only: global/neck pose, eyes, camera and light stay zero
    assert torch.all(parts.pose[:, :6] == 0) and torch.all(parts.pose[:, 9:] == 0)
    assert torch.all(parts.cam_rot == 0) and torch.all(parts.cam_trans == 0) and torch.all(parts.light == 0)
    assert torch.all(parts.expression[:, 52:] == 0)


def test_neutral_encoder_predicts_shape_only(default_model):
    e = RenderEncoder.for_model(default_model, 32, neutral=True)
    with torch.no_grad():
        e.head.bias.fill_(0.5)  # every raw output nonzero
        codes = e.predict_codes(torch.rand(2, 1, 32, 32))
    parts = code_layout.split(codes)
    assert torch.all(parts.shape[:, :90] != 0)
    assert torch.all(parts.expression == 0) and torch.all(parts.pose == 0)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(100, 100)
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        Discriminator(64, 8)(torch.zeros(2, 1, 32, 32))


def test_canonical_codes_keep_geometry_only():
    rng = np.random.default_rng(0)
    c = rng.standard_normal((4, code_layout.CODE_SIZE)).astype(np.float32)
    neutral = canonical_codes(c)
    assert np.array_equal(neutral[:, :90], c[:, :90]) and not neutral[:, 90:].any()
    full = canonical_codes(c, neutral=False)
    s = code_layout.SLICES
    assert np.array_equal(full[:, s["expression"]], c[:, s["expression"]])
    assert np.array_equal(full[:, 180 + 6: 180 + 9], c[:, 180 + 6: 180 + 9])  # the jaw
    assert not full[:, 180: 186].any() and not full[:, 189:].any()


def test_code_metric_is_the_mesh_distance(default_model):
    """Ψ_E's loss without meshes equals the mean squared vertex / soft-tissue distance."""
    m = default_model
    metric = CodeMetric(m, 90, 52)
    rng = np.random.default_rng(1)
    a = code_layout.pack(shape=rng.standard_normal((3, 90)).astype(np.float32),
                         expression=0.3 * rng.standard_normal((3, 52)).astype(np.float32))
    b = code_layout.pack(shape=rng.standard_normal((3, 90)).astype(np.float32))
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    got = metric(ta, tb)
    with torch.no_grad():
        va = m.rest_vertices(shape=ta[:, :90], expression=ta[:, 90:142]).double()
        vb = m.rest_vertices(shape=tb[:, :90], expression=tb[:, 90:142]).double()
        pa, pb = m.soft_tissue(vertices=va), m.soft_tissue(vertices=vb)
    np.testing.assert_allclose(got["vertex"].numpy(), ((va - vb) ** 2).sum(-1).mean(1).numpy(), rtol=1e-3)
    np.testing.assert_allclose(got["soft_tissue"].numpy(), ((pa - pb) ** 2).sum(-1).mean(1).numpy(),
                               rtol=1e-3)
    assert float(got["vertex"].min()) > 1.0  # really different faces
    assert torch.allclose(metric(ta, ta)["total"], torch.zeros(3), atol=1e-3)


def test_parallel_rendering_matches_serial(default_model):
    from skullsearch.index.synth import synth_codes
    from skullsearch.inpaint.gan import render_codes

    codes = canonical_codes(synth_codes(default_model, 20, np.random.default_rng(2)))
    events = []
    one = render_codes(default_model, codes, 32, chunk=5, workers=1)
    two = render_codes(default_model, codes, 32, chunk=5, workers=2, progress=events.append)
    assert one.dtype == np.uint8 and one.shape == (20, 1, 32, 32) and one.max() > 100
    assert np.array_equal(one, two)
    assert [e["done"] for e in events] == [5, 10, 15, 20]


# ---------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_lowers_the_encoder_loss_and_records_it(tiny_inpainter, default_model):
    hist = tiny_inpainter["inpainter"].meta["history"]
    assert len(hist) == TINY["epochs"]
    assert hist[-1]["encoder_loss"] < 0.8 * hist[0]["encoder_loss"]
    assert hist[-1]["vertex_rms_mm"] < hist[0]["vertex_rms_mm"]
    # on held-out renders Ψ_E beats guessing the mean face (expected RMS under the prior)
    metric = CodeMetric(default_model, 90, 0)
    var = default_model.shape_std[:90].astype(np.float64) ** 2
    baseline = float(np.sqrt((np.diag(metric.g_vertex.numpy()) * var).sum()))
    assert hist[-1]["val_vertex_rms_mm"] < 0.9 * baseline
    for rec in hist:
        assert all(np.isfinite(rec[k]) for k in ("d_loss", "g_loss", "encoder_loss", "seconds"))
    ev = tiny_inpainter["events"]
    renders = [e for e in ev if e["stage"] == "render"]
    steps = [e for e in ev if e["stage"] == "train"]
    assert renders[-1]["done"] == renders[-1]["total"] == TINY["faces"]
    assert steps[-1]["done"] == steps[-1]["total"] and len([e for e in ev if e["stage"] == "epoch"]) == 3


@pytest.mark.slow
def test_checkpoint_files(tiny_inpainter, default_model):
    path = tiny_inpainter["checkpoint"]
    g = tiny_inpainter["gallery"]
    assert path == default_inpainter_path(g) == g.path / "models" / "inpainter.pt"
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == 1
    assert raw["face_model_fingerprint"] == default_model.fingerprint
    assert {"generator", "discriminator", "encoder", "config", "meta"} <= set(raw)
    side = json.loads(sidecar_path(path).read_text())
    assert side["checkpoint"] == "inpainter.pt"
    assert side["face_model_fingerprint"] == default_model.fingerprint
    assert side["config"]["size"] == TINY["size"] and side["faces"] == TINY["faces"]
    assert side["gallery"] == str(g.path) and len(side["history"]) == TINY["epochs"]
    assert side["seconds"] > 0 and side["epochs"] == TINY["epochs"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_load_by_gallery_folder_or_file_gives_the_same_networks(tiny_inpainter):
    a = tiny_inpainter["inpainter"]
    b = load_inpainter(str(tiny_inpainter["gallery"].path))
    c = load_inpainter(tiny_inpainter["checkpoint"])
    assert a.size == TINY["size"] and a.z_dim == 100
    imgs = [x.sample(4, seed=3) for x in (a, b, c)]
    assert torch.equal(imgs[0], imgs[1]) and torch.equal(imgs[0], imgs[2])
    assert np.array_equal(a.codes_of(imgs[0]), c.codes_of(imgs[0]))


@pytest.mark.slow
def test_another_face_model_is_refused(tiny_inpainter, other_model):
    with pytest.raises(InpainterCheckpointError, match="trained for face model"):
        load_inpainter(tiny_inpainter["checkpoint"], model=other_model)
    with pytest.raises(InpainterCheckpointError, match="train inpainter"):
        tiny_inpainter["inpainter"].check_model(other_model)


def test_missing_inpainter_names_the_command(default_model, tmp_path):
    from skullsearch import Gallery

    g = Gallery.create(tmp_path / "g", face_model=default_model)
    with pytest.raises(InpainterMissingError, match=r"skullsearch train inpainter --gallery .*g"):
        load_inpainter(g)
    with pytest.raises(InpainterMissingError):
        load_inpainter(tmp_path / "nothing.pt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InpainterCheckpointError, match="not a skullsearch gallery"):
        load_inpainter(tmp_path / "plain")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_damaged_and_malicious_files_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InpainterCheckpointError, match="not a skullsearch inpainter"):
        load_inpainter(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(InpainterCheckpointError, match="format"):
        load_inpainter(other)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "x": _Evil(marker)}, evil)
    with pytest.raises(InpainterCheckpointError):
        load_inpainter(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_progress_counts_the_batches_that_run(tiny_inpainter, tmp_path):
    """40 faces: 36 training renders in batches of 7 = five batches and a skipped single render."""
    events = []
    with one_thread():
        train_inpainter(tiny_inpainter["gallery"], tmp_path / "p.pt", epochs=1, faces=40, size=16, width=4,
                        encoder_widths=(8, 8), batch_size=7, progress=events.append)
    steps = [e for e in events if e["stage"] == "train"]
    assert len(steps) == 5 and steps[-1]["done"] == steps[-1]["total"] == 5


# ---------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_trains_and_reports(tiny_inpainter, tmp_path):
    out = tmp_path / "small.pt"
    with one_thread():
        res = CliRunner().invoke(app, [
            "train", "inpainter", "--gallery", str(tiny_inpainter["gallery"].path), "--epochs", "1",
            "--faces", "40", "--size", "32", "--width", "8", "--batch-size", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and "held out" in res.output and "epoch 1/1" in res.output
    inp = load_inpainter(out)
    assert inp.size == 32 and inp.meta["faces"] == 40
    assert sidecar_path(out).exists()


@pytest.mark.slow
def test_cli_errors_are_one_line(tiny_inpainter, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code = main(["train", "inpainter", "--gallery", str(tiny_inpainter["gallery"].path),
                 "--device", "cuda", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "cuda" in err and "Traceback" not in err
    code = main(["train", "inpainter", "--gallery", str(tmp_path / "none")])
    assert code == 2 and "not a skullsearch gallery" in capsys.readouterr().err
    for bad, message in ((["--size", "100"], "power of two"), (["--epochs", "0"], "at least 1 epoch"),
                         (["--faces", "-5"], "faces must be at least 2"),
                         (["--device", "gpu"], "unknown device 'gpu'"),
                         (["--width", "0"], "width and z_dim must be at least 1")):
        code = main(["train", "inpainter", "--gallery", str(tiny_inpainter["gallery"].path), *bad])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
