"""Fit uncertainty in a gallery: ingest --uncertainty stores each face's soft-tissue covariance
(an optional shard file), older shards read as none, and queries with uncertainty use it in the
likelihood, record it, and re-run the same."""

import numpy as np
import pytest
from skulls import skull_under, table_3mm

from skullsearch import Gallery, Skull
from skullsearch.encoder import code as code_layout
from skullsearch.index import store
from skullsearch.index.synth import synth
from skullsearch.retrieval.query import query, query_points, rerun
from skullsearch.retrieval.tissue import load_table


@pytest.fixture(scope="module")
def case(default_model, tmp_path_factory):
    from photos import render_heads

    root = tmp_path_factory.mktemp("uncertainty")
    render_heads(default_model, root / "photos", [("a1", 0), ("a2", 0), ("b1", 1)], seed=5)
    g = Gallery.create(root / "g", face_model=default_model)
    synth(g, 50, seed=1)  # a shard without covariances (as an older ingest leaves)
    report = g.ingest([root / "photos"], workers=1, uncertainty=True, descriptors=False)
    assert report.faces == 3
    # a skull under the first photo's fitted face (3 mm under it: see tests/retrieval/test_query.py)
    first = store.face_id(g.shards()[-1].number, np.arange(1))
    shape = code_layout.split(g.codes(first)).shape[0, : default_model.n_shape]
    skull_under(default_model, shape, root / "case", seed=1)
    table_3mm(root / "depths_3mm.csv")
    return g, root


def test_pack_and_unpack_are_inverse():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 36, 3, 3))
    cov = (a @ a.transpose(0, 1, 3, 2)).astype(np.float32)
    packed = store.pack_covariance(cov)
    assert packed.shape == (5, 36, 6) and packed.dtype == np.float16
    np.testing.assert_allclose(store.unpack_covariance(packed), cov, rtol=2e-3, atol=2e-3)


def test_ingest_with_uncertainty_keeps_each_faces_covariance(case):
    g, _ = case
    old, new = g.shards()
    assert not old.file(g.path, "tissue_cov.npy").exists()
    assert np.load(new.file(g.path, "tissue_cov.npy")).shape == (3, 36, 6)
    ids_new = store.face_id(new.number, np.arange(3))
    ids_old = store.face_id(old.number, np.arange(2))
    cov = g.tissue_covariance(np.concatenate([ids_old, ids_new]))
    assert np.isnan(cov[:2]).all()
    assert np.isfinite(cov[2:]).all()
    assert (np.linalg.eigvalsh(cov[2:].astype(np.float64)) > -1e-3).all()
    sd = np.sqrt(np.diagonal(cov[2:], axis1=-2, axis2=-1))
    assert 0.1 < np.median(sd) < 10.0  # mm: a posterior, not the prior's spread nor a point
    assert g.verify()["ok"]
    assert g.info()["faces with a fit uncertainty"] == 3
    # the codes' encoder fingerprint does not change with the uncertainty (the codes do not)
    fps = {r["encoder_fingerprint"] for r in g.faces(columns=["encoder_fingerprint"]).to_pylist()}
    from skullsearch.index.ingest import encoder_fingerprint

    assert encoder_fingerprint(None, "dlib") in fps


def test_a_shard_whose_covariance_rows_disagree_fails_verification(case, tmp_path):
    import shutil

    g, _ = case
    copy = tmp_path / "g"
    shutil.copytree(g.path, copy)
    broken = Gallery.open(copy)
    f = broken.shards()[-1].file(copy, "tissue_cov.npy")
    np.save(f, np.load(f)[:2])
    problems = broken.verify()["problems"]
    assert any("disagree" in p for p in problems), problems


def test_queries_with_uncertainty_use_it_record_it_and_rerun_the_same(case):
    g, root = case
    new = g.shards()[-1]
    ids = store.face_id(new.number, np.arange(3))
    rng = np.random.default_rng(2)
    target = g.soft_tissue(ids[:1])[0] + rng.normal(scale=2.0, size=(36, 3))
    present, sd = np.ones(36, bool), load_table().sd
    plain = query_points(g, target, present, sd, top=60, rank_by="likelihood", exhaustive=True)
    unc = query_points(g, target, present, sd, top=60, rank_by="likelihood", exhaustive=True,
                       uncertainty=True)
    assert unc.params["uncertainty"] is True and plain.params["uncertainty"] is False
    lp = {c.face_id: c.likelihood for c in plain.candidates}
    lu = {c.face_id: c.likelihood for c in unc.candidates}
    assert set(lp) == set(lu)
    # faces with a covariance are scored with it; the others by the plain term (3D form)
    ref = next(f for f in lp if f not in set(ids.tolist()))
    changed = {f for f in lp if abs(lu[f] - lp[f] - (lu[ref] - lp[ref])) > 1e-6}
    assert changed == set(ids.tolist()) & set(lp)
    # a skull query records the choice and re-runs it
    skull = Skull.load(root / "case" / "skull.ply")
    table = root / "depths_3mm.csv"
    res = query(g, skull, tissue_table=str(table), top=5, rank_by="likelihood", uncertainty=True)
    assert res.params["uncertainty"] is True
    again, same = rerun(g, res.query_id)
    assert same and again.params["uncertainty"] is True


@pytest.mark.slow
def test_the_commands_pass_the_uncertainty_through(case, tmp_path, capsys):
    import json

    from skullsearch.cli.app import main

    g, root = case
    gpath = tmp_path / "cli"
    assert main(["ingest", str(root / "photos"), "--gallery", str(gpath), "--workers", "1",
                 "--no-descriptors", "--uncertainty"]) == 0
    assert Gallery.open(gpath).shards()[0].file(gpath, "tissue_cov.npy").exists()
    skull = root / "case" / "skull.ply"
    out = tmp_path / "r.json"
    assert main(["query", str(skull), "-g", str(gpath), "--top", "2", "--uncertainty",
                 "--tissue-table", str(root / "depths_3mm.csv"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"]["uncertainty"] is True
    capsys.readouterr()
    photo = sorted((root / "photos").iterdir())[0]
    assert main(["encode", str(photo), "--uncertainty", "--json", str(tmp_path / "e.json")]) == 0
    face = json.loads((tmp_path / "e.json").read_text())["faces"][0]
    assert np.asarray(face["tissue_cov"]).shape == (36, 3, 3)


def test_the_case_report_scores_its_calibration_sample_as_the_query_did(case, tmp_path):
    """A query with uncertainty: the report's calibration sample is scored with the faces' own
    covariances too (its distribution is then comparable with the candidates' likelihoods)."""
    from skullsearch.inpaint.report import _calibration_scores
    from skullsearch.retrieval.score import ScoreConfig

    g, root = case
    skull = Skull.load(root / "case" / "skull.ply")
    res = query(g, skull, tissue_table=str(root / "depths_3mm.csv"), top=3, uncertainty=True)
    p = dict(res.params)
    with_cov = _calibration_scores(g, p, res, ScoreConfig(**p["score"]))
    without = _calibration_scores(g, {**p, "uncertainty": False}, res, ScoreConfig(**p["score"]))
    np.testing.assert_array_equal(with_cov.s, without.s)
    assert not np.allclose(with_cov.likelihood, without.likelihood)
    import skullsearch

    out = skullsearch.report(g, res.query_id, tmp_path / "case.html", top=2)
    assert out.exists() and "uncertainty" in out.read_text()  # (its parameters table)
