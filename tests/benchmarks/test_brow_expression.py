"""benchmarks/brow_expression.py: a small real run on textured renders through dlib (both
embeddings: residual and brow expression per embedding) and its refusal of an empty input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.benchmarks.test_identity import benchmark


@pytest.fixture(scope="module")
def bench():
    return benchmark("brow_expression")


def test_no_photos_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="no photos"):
        bench.main([str(tmp_path)])


def test_both_embeddings_report_their_residual_and_brows(bench, default_model, tmp_path, capsys):
    from _common import random_faces, render_photos

    rng = np.random.default_rng(4)
    shape, expr, pose = random_faces(default_model, 2, rng, expr_scale=0.0)
    (tmp_path / "sub").mkdir()
    render_photos(default_model, tmp_path / "sub", shape, expr, pose, rng, max_yaw=10.0, texture=True)
    (tmp_path / "notes.txt").write_text("not a photo")
    out = bench.main([str(tmp_path)])
    assert out["photos"] == 2
    for k in ("default", "textured_embedding"):
        row = out[k]
        assert row["faces"] == 2 and row["residual_px"] > 0
        assert set(row["brow_expression"]) == {f"brow{n}_{s}" for n in ("Down", "InnerUp", "OuterUp")
                                               for s in "LR"}
        assert all(abs(v) < 2 for v in row["brow_expression"].values())
    assert out["default"] != out["textured_embedding"]  # another embedding, another fit
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == out
