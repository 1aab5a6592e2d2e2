"""A query's ranks under the conventions the skull cannot settle: thinner and thicker tissue, the
midline's tissue laid forward, slack along the skin (skullsearch.retrieval.sensitivity)."""

import json

import numpy as np
import pytest

import skullsearch
from skullsearch import Gallery, Skull
from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.retrieval.extended import FORWARD_MIDLINE, ExtendedLandmarkError, extend
from skullsearch.retrieval.query import query_points
from skullsearch.retrieval.sensitivity import VARIANTS, rank_sensitivity
from skullsearch.retrieval.tissue import load_table


def test_the_variants_lay_the_skulls_tissue_again(case):
    """×0.8 / ×1.2 move every extended point along its own direction; laid forward moves only the
    midline face's points, each its depth along the skull's own forward axis; both follow a rigid
    motion of the skull; points given without a skull cannot be laid again."""
    _, _, skull_path, *_, table = case
    skull = Skull.load(skull_path)
    ext = extend(skull, load_table(table))
    p = ext.present
    for k in (0.8, 1.2):
        got = ext.with_depths(k)
        offset = got.points[p] - ext.skull_points[p]
        assert np.allclose(offset, k * ext.depth[p, None] * ext.directions[p])
    fwd = ext.laid_forward()
    forward = ext.frame()[2]
    for i, n in enumerate(SOFT_TISSUE_NAMES):
        if not p[i]:
            continue
        if n in FORWARD_MIDLINE:
            assert np.allclose(fwd.points[i], ext.skull_points[i] + ext.depth[i] * forward)
            assert fwd.direction_source[i] == "forward"
        else:
            assert np.allclose(fwd.points[i], ext.points[i])
            assert fwd.direction_source[i] == ext.direction_source[i]
    # one rigid motion of the skull file: the relaid points move with it
    c, s = np.cos(0.5), np.sin(0.5)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    moved_mesh = skull.mesh.copy()
    moved_mesh.vertices = moved_mesh.vertices @ rot.T + [10.0, -5.0, 30.0]
    moved = extend(Skull(moved_mesh, {k: v @ rot.T + [10.0, -5.0, 30.0] for k, v in skull.landmarks.items()}),
                   load_table(table))
    assert np.allclose(moved.laid_forward().points[p], fwd.points[p] @ rot.T + [10.0, -5.0, 30.0], atol=1e-6)
    assert np.allclose(moved.with_depths(0.8).points[p], ext.with_depths(0.8).points[p] @ rot.T
                       + [10.0, -5.0, 30.0], atol=1e-6)
    bare = ext.from_points(ext.points, ext.present, ext.sd)
    with pytest.raises(ExtendedLandmarkError, match="without a skull"):
        bare.with_depths(0.8)
    with pytest.raises(ExtendedLandmarkError):
        bare.laid_forward()


def test_the_planted_face_keeps_its_place_under_every_variant(case):
    gpath, truth, skull_path, *_, table = case
    g = Gallery.open(gpath)
    res = skullsearch.query(g, Skull.load(skull_path), top=5, tissue_table=table, record=False)
    assert res.candidates[0].face_id == truth
    spread = skullsearch.rank_sensitivity(g, res)
    assert spread["variants"] == list(VARIANTS) and not spread["skipped"]
    assert spread["ranks"][truth] == dict.fromkeys(VARIANTS, 1)
    assert spread["range"][truth] == (1, 1)
    for c in res.candidates[1:]:  # the runners-up: ranks somewhere, or beyond the depth
        best, worst = spread["range"][c.face_id]
        assert best <= c.rank and (worst is None or worst >= c.rank)
        assert all(r is None or 1 <= r <= spread["depth"] for r in spread["ranks"][c.face_id].values())
    # the rigid superimposition is not touched: the same query ranked by likelihood agrees
    by_ll = skullsearch.query(g, Skull.load(skull_path), top=5, tissue_table=table, record=False,
                              rank_by="likelihood")
    assert skullsearch.rank_sensitivity(g, by_ll, depth=10)["ranks"][truth] == dict.fromkeys(VARIANTS, 1)


def test_landmarks_without_a_skull_keep_the_variants_they_can(case):
    """Extended landmarks given as points (no skull, no depths): only the slack along the skin."""
    gpath, truth, *_ = case
    g = Gallery.open(gpath)
    target = g.soft_tissue(np.array([truth]))[0] + np.random.default_rng(0).normal(scale=1.0, size=(36, 3))
    res = query_points(g, target, np.ones(36, bool), load_table().sd, top=3)
    spread = rank_sensitivity(g, res)
    assert spread["variants"] == ["fuzzy"] and set(spread["skipped"]) == {"thin", "thick", "forward"}
    assert "without a skull" in spread["skipped"]["thin"]
    assert spread["ranks"][truth]["fuzzy"] == 1


def test_query_command_shows_each_candidates_rank_range(case, tmp_path, capsys, monkeypatch):
    from skullsearch.cli.app import main

    monkeypatch.setenv("COLUMNS", "250")
    gpath, truth, skull_path, *_, table = case
    out_json = tmp_path / "r.json"
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--tissue-table", table,
                 "--sensitivity", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "rank range" in text and "1–1" in text and "thin, thick, forward, fuzzy" in text
    data = json.loads(out_json.read_text())
    assert data["sensitivity"]["ranks"][str(truth)] == dict.fromkeys(VARIANTS, 1)
