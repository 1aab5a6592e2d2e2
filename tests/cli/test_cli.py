"""The command line: help, model info/export/convert, and the error path (one line, no traceback)."""

import os
import subprocess
import sys

import pytest
import trimesh

from skullsearch.cli.app import main

from flame_writer import make_synthetic_flame, write_flame_pickle, write_malicious_pickle


def run_cli(*args, env=None):
    """The real console entry point in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "skullsearch.cli", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "model" in text
    assert main(["model", "--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("info", "export", "convert"):
        assert cmd in text


def test_model_info_default(default_model, capsys):
    assert main(["model", "info"]) == 0
    text = capsys.readouterr().out
    assert "14388" in text and "millimetres" in text and "36 / 36" in text
    assert "ICT Face Model Light" in text and "MIT" in text  # the licence and attribution


@pytest.mark.slow
def test_model_info_builtin_anny(capsys):
    assert main(["model", "info", "--face-model", "anny"]) == 0
    text = capsys.readouterr().out
    assert "4538" in text and "CC0" in text


def test_model_export_writes_a_mesh_with_coloured_landmarks(default_model, tmp_path):
    out = tmp_path / "mean.ply"
    assert main(["model", "export", str(out)]) == 0
    mesh = trimesh.load(out, process=False)
    assert len(mesh.vertices) > default_model.n_vertices  # + landmark markers
    colors = mesh.visual.vertex_colors[:, :3]
    assert ((colors == (220, 40, 40)).all(1)).sum() > 36  # red soft-tissue markers
    assert ((colors == (40, 90, 230)).all(1)).sum() > 68  # blue landmark markers


@pytest.mark.slow
def test_face_model_from_environment(tmp_path, capsys):
    raw = make_synthetic_flame(seed=1)
    path = tmp_path / "generic_model.pkl"
    write_flame_pickle(path, raw)
    npz = tmp_path / "small.npz"
    # the synthetic blob has no face for the landmark detector: conversion still works, and
    # the model says why it has no soft-tissue points
    code, _, stderr = run_cli("model", "convert", path, npz)
    assert code == 0 and "Traceback" not in stderr, stderr
    code, stdout, stderr = run_cli("model", "info", env={"SKULLSEARCH_FACE_MODEL": str(npz)})
    assert code == 0, stderr
    assert str(len(raw["v_template"])) in stdout
    assert "no face" in stdout  # the annotator's reason, in the soft-tissue row


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["model", "info", "--face-model", "nope.pkl"], "does not exist"),
    (["model", "export", "out.xyz"], "extension"),
])
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path, default_model):
    code, _, stderr = run_cli(*args)
    assert code == 2
    assert "Traceback" not in stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_malicious_model_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "generic_model.pkl"
    write_malicious_pickle(bad, marker)
    code, _, stderr = run_cli("model", "info", "--face-model", bad)
    assert code == 2 and "Traceback" not in stderr and "refus" in stderr
    assert not marker.exists()


@pytest.mark.slow
def test_model_calibrate_writes_a_calibrated_model(tmp_path, capsys):
    from skullsearch import FaceModel

    out = tmp_path / "cal.npz"
    assert main(["model", "calibrate", str(out), "--photos", "3", "--seed", "2"]) == 0
    assert "dlib found" in capsys.readouterr().out
    cal = FaceModel.load(out, annotate=False)
    assert "calibrated to dlib on" in cal.meta["landmarks68"] and cal.soft_tissue_points is not None
    assert main(["model", "calibrate", str(out), "--photos", "0"]) != 0


@pytest.mark.slow
def test_model_calibrate_pose_writes_the_per_bin_embedding_the_fit_finds(tmp_path, capsys, monkeypatch):
    import numpy as np

    from skullsearch import FaceModel
    from skullsearch.encoder.embeddings import pose_file_name

    monkeypatch.setenv("SKULLSEARCH_CACHE", str(tmp_path))
    assert main(["model", "calibrate", "--pose", "--photos", "4", "--seed", "1"]) == 0
    said = capsys.readouterr().out
    model = FaceModel.default()
    written = tmp_path / pose_file_name(model, "dlib")
    assert written.exists() and said.startswith("wrote ") and "per bin" in said
    with np.load(written) as z:
        assert z["faces"].shape == (5, 68) and str(z["model_fingerprint"]) == model.fingerprint
    assert main(["model", "calibrate", "--pose", "--detector", "mesh"]) != 0
    assert "--pose calibrates dlib" in capsys.readouterr().err


@pytest.mark.slow
def test_model_calibrate_texture_writes_the_textured_embedding_the_fit_finds(tmp_path, capsys, monkeypatch):
    import numpy as np

    from skullsearch import FaceModel
    from skullsearch.encoder.embeddings import textured_points
    from skullsearch.encoder.fitting import FitConfig, config_rig

    out = tmp_path / "textured.npz"
    assert main(["model", "calibrate", str(out), "--texture", "--photos", "3", "--seed", "1"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("wrote ") and "textured renders" in said
    model = FaceModel.default()
    with np.load(out) as z:
        assert z["faces"].shape == (68,) and str(z["model_fingerprint"]) == model.fingerprint
        assert "textured renders (seed 1" in str(z["source"])
    from skullsearch.encoder import embeddings

    monkeypatch.setattr(embeddings, "textured_paths", lambda m, det: [out])
    for k in ("_textured_points", "_rig_cache"):  # (the shipped file may be cached on the model)
        monkeypatch.setitem(model.__dict__, k, {})
    pts = textured_points(model, "dlib")
    np.testing.assert_array_equal(pts.faces, np.load(out)["faces"])
    rig = config_rig(model, FitConfig(textured_embedding=True), "dlib")
    assert rig is not config_rig(model, FitConfig(), "dlib")
    for bad in (["--pose"], ["--detector", "mesh"]):
        assert main(["model", "calibrate", str(out), "--texture", *bad]) != 0
        assert "--texture calibrates dlib" in capsys.readouterr().err


def test_synth_says_what_it_did(tmp_path, capsys):
    assert main(["synth", "--gallery", str(tmp_path / "g"), "--faces", "40"]) == 0
    captured = capsys.readouterr()
    assert "synth: 40/40 faces" in captured.err and "photos" not in captured.err
    assert "added 40 synthetic faces" in captured.out
