"""Skull queries end to end: a planted face ranks first; missing landmarks; units; audit log."""

import json

import numpy as np
import pytest
from skulls import skull_under, table_3mm, write_skull

import skullsearch
from skullsearch import Gallery, GalleryError, Skull, SkullsearchError
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.soft_tissue import SOFT_TISSUE_NAMES
from skullsearch.index.synth import synth
from skullsearch.retrieval.tissue import load_table


def noisy_query(g, face_index: int, seed: int, keep: float = 0.75):
    """Every face id of the gallery, in shard order, and a query near one of them: (ids, target
    (36, 3) with 2 mm noise, present (36,) with about ``keep`` of the landmarks, table SDs)."""
    ids = np.concatenate([(np.int64(s.number) << 24) | np.arange(s.faces) for s in g.shards()])
    rng = np.random.default_rng(seed)
    target = g.soft_tissue(ids[[face_index]])[0] + rng.normal(scale=2.0, size=(36, 3))
    return ids, target, rng.random(36) > 1 - keep, load_table().sd


def test_the_planted_face_ranks_first(case):
    gpath, truth, skull_path, *_, table = case
    g = Gallery.open(gpath)
    res = skullsearch.query(g, Skull.load(skull_path), top=10, tissue_table=table)
    assert res.candidates[0].face_id == truth
    top = res.candidates[0]
    assert top.s >= 0.9 and top.present == 36 and top.rms_mm < 3.0
    assert top.calibrated < 0.01  # better than ~all of the gallery
    assert [c.rank for c in res.candidates] == list(range(1, 11))
    df = res.to_pandas()
    assert list(df["face_id"])[0] == truth
    data = json.loads(res.to_json())
    assert data["candidates"][0]["face_id"] == truth and len(data["present"]) == 36


def test_a_partial_skull_still_finds_its_face(case):
    gpath, truth, _, mesh, marks, root, table = case
    rng = np.random.default_rng(5)
    drop = set(rng.choice(sorted(marks), 9, replace=False))  # 25 % missing
    path = write_skull(root / "partial", mesh, marks, drop=drop)
    res = skullsearch.query(Gallery.open(gpath), Skull.load(path), top=10, record=False, tissue_table=table)
    assert res.candidates[0].face_id == truth
    assert res.candidates[0].present == 27
    assert res.query_id is None


def test_a_skull_in_metres_is_refused_then_accepted_with_units(case):
    gpath, truth, _, mesh, marks, root, table = case
    path = write_skull(root / "metres", mesh, marks, scale=0.001)
    with pytest.raises(SkullsearchError, match="--units m"):
        Skull.load(path)
    res = skullsearch.query(Gallery.open(gpath), Skull.load(path, units="m"), top=5, record=False,
                            tissue_table=table)
    assert res.candidates[0].face_id == truth


def test_audit_log_lists_and_reruns_queries(case, tmp_path):
    import shutil

    gpath, truth, skull_path, *_, table = case
    shutil.copytree(gpath, tmp_path / "g")
    g = Gallery.open(tmp_path / "g")
    res = skullsearch.query(g, Skull.load(skull_path), top=5, tissue_table=table)
    record = skullsearch.query_record(g, res.query_id)
    assert record["skull"]["sha256"] and record["tissue_table"]["name"]
    assert record["versions"]["numpy"] and record["results"][0]["face_id"] == truth
    assert any(h["query_id"] == res.query_id for h in skullsearch.history(g))
    synth(g, 200, seed=99)  # the gallery grows after the query
    again, same = skullsearch.rerun(Gallery.open(g.path), res.query_id)
    assert same and again.candidates[0].face_id == truth
    with pytest.raises(GalleryError, match="no recorded query"):
        skullsearch.rerun(g, "nope")


@pytest.mark.slow
def test_query_and_history_commands(case, tmp_path, capsys, monkeypatch):
    from skullsearch.cli.app import main

    monkeypatch.setenv("COLUMNS", "250")  # a wide "terminal": the table's columns are not cut
    gpath, truth, skull_path, *_, table = case
    out_json = tmp_path / "r.json"
    code = main(["query", str(skull_path), "-g", str(gpath), "--top", "5", "--json", str(out_json),
                 "--tissue-table", table,
                 "--csv", str(tmp_path / "r.csv"), "--export", str(tmp_path / "exp"), "--export-top", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert str(truth) in text
    assert json.loads(out_json.read_text())["candidates"][0]["face_id"] == truth
    assert (tmp_path / "r.csv").read_text().count("\n") == 6
    files = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert "skull_pegs.ply" in files and sum(f.startswith("rank") for f in files) == 2
    assert sum(f.startswith("profile_rank") and f.endswith(".png") for f in files) == 2  # their profiles
    assert main(["history", "-g", str(gpath)]) == 0
    assert "query id" in capsys.readouterr().out
    assert main(["landmarks", str(skull_path), "--tissue-table", table]) == 0
    assert "36 of 36" in capsys.readouterr().out


def test_a_landmark_extended_into_the_skull_is_a_warning_of_the_query(case, tmp_path, capsys, monkeypatch):
    """A table direction that lays g's tissue into the skull: the query still runs, and its result,
    the query command and the landmarks command say which landmark and what to do."""
    from skullsearch.cli.app import main

    monkeypatch.setenv("COLUMNS", "250")
    gpath, truth, skull_path, mesh, marks, *_ = case
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    inward = area @ tri.mean(1) / area.sum() - marks["g"]  # towards the skull's centre
    inward /= np.linalg.norm(inward)
    table = tmp_path / "t.csv"
    sd = dict(zip(SOFT_TISSUE_NAMES, load_table().sd, strict=True))
    table.write_text("landmark,mean_mm,sd_mm,direction\n" + "".join(
        f"{n},3.0,{sd[n]},{' '.join(map(str, inward)) if n == 'g' else ''}\n" for n in SOFT_TISSUE_NAMES))
    res = skullsearch.query(Gallery.open(gpath), Skull.load(skull_path), top=3, tissue_table=str(table),
                            record=False)
    skull_warnings = Skull.load(skull_path).warnings  # (the reader's: an open mesh)
    assert res.warnings[: len(skull_warnings)] == skull_warnings
    (w,) = res.warnings[len(skull_warnings):]
    assert w.startswith("g: the table's direction points 180° from outward")
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--tissue-table", str(table)]) == 0
    assert "g: the table's direction points 180°" in capsys.readouterr().err
    # left out, g is neither scored nor warned of; the record keeps it out when re-run
    g = Gallery.open(gpath)
    res = skullsearch.query(g, Skull.load(skull_path), top=3, tissue_table=str(table), leave_out=["g"])
    assert res.warnings == skull_warnings and res.params["left_out"] == ["g"]
    assert not res.present[SOFT_TISSUE_NAMES.index("g")] and res.candidates[0].present == 35
    again, same = skullsearch.rerun(g, res.query_id)
    assert same and again.extended.left_out == ["g"] and again.params["left_out"] == ["g"]
    capsys.readouterr()
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--tissue-table", str(table),
                 "--leave-out", "g", "--leave-out", "zy"]) == 0
    assert "g: the table's direction" not in capsys.readouterr().err
    assert main(["query", str(skull_path), "-g", str(gpath), "--leave-out", "nose"]) != 0
    assert "cannot leave out nose" in capsys.readouterr().err
    assert main(["landmarks", str(skull_path), "--tissue-table", str(table)]) == 0
    out, err = capsys.readouterr()
    assert "g: the table's direction points 180°" in err
    rows = {r.split("│")[1].strip(): r for r in out.splitlines() if r.count("│") > 3}
    assert "180°" in rows["g"] and "from outward" in out and "180°" not in rows["n"]
    # each midline landmark's distance from the skull's midline plane; none for the bilateral ones
    assert "off midline" in out and " mm" in rows["n"].split("│")[7]
    assert rows["zy_l"].split("│")[7].strip() == ""


def test_too_few_landmarks_is_a_clear_error(case):
    gpath, _, _, mesh, marks, root, _ = case
    keep = {"n", "pg"}
    path = write_skull(root / "two", mesh, marks, drop=set(marks) - keep)
    with pytest.raises(SkullsearchError, match="at least 3 landmarks"):
        skullsearch.query(Gallery.open(gpath), Skull.load(path), record=False)


@pytest.mark.parametrize("rank_by", ["s", "likelihood"])
def test_a_shortlist_as_large_as_the_gallery_is_exhaustive_scoring(case, rank_by):
    from skullsearch.retrieval.query import query_points
    from skullsearch.retrieval.score import rank_order, score

    g = Gallery.open(case[0])
    ids, target, present, sd = noisy_query(g, 7, seed=2, keep=0.75)
    res = query_points(g, target, present, sd, top=10, shortlist=len(ids), rank_by=rank_by,
                       calibration_sample=0)
    every = score(g.soft_tissue(ids), target, present, sd)
    assert [c.face_id for c in res.candidates] == list(ids[rank_order(every, rank_by)[:10]])


@pytest.mark.parametrize("rank_by,device", [("s", None), ("likelihood", None), ("s", "cpu")])
def test_exhaustive_mode_is_every_face_scored_whatever_the_chunks(case, tmp_path, monkeypatch, rank_by,
                                                                  device):
    """Every face scored, chunk by chunk over two shards, in numpy or with the torch scorer (the GPU
    path, run on the CPU here)."""
    import importlib
    import shutil

    from skullsearch.retrieval.score import rank_order, score

    # (the package exports a function named query: import the module by name)
    query_mod = importlib.import_module("skullsearch.retrieval.query")

    shutil.copytree(case[0], tmp_path / "g")
    g = Gallery.open(tmp_path / "g")
    synth(g, 150, seed=5)  # a second shard
    ids, target, present, sd = noisy_query(g, 420, seed=4, keep=0.75)
    every = score(g.soft_tissue(ids), target, present, sd)
    want = list(ids[rank_order(every, rank_by)[:10]])
    seen = []
    # many chunks, over both shards (a GPU's chunks are 16× larger)
    monkeypatch.setattr(query_mod, "EXHAUSTIVE_CHUNK", 64 if device is None else 4)
    monkeypatch.setattr(query_mod, "_gpu_device", lambda: device)  # "auto" → the torch scorer on the CPU
    res = query_mod.query_points(g, target, present, sd, top=10, rank_by=rank_by, calibration_sample=0,
                                 exhaustive=True, progress=lambda done, total: seen.append((done, total)))
    assert [c.face_id for c in res.candidates] == want
    assert seen[-1] == (len(ids), len(ids)) and len(seen) == sum(-(-s.faces // 64) for s in g.shards())
    assert res.params["exhaustive"] is True and res.params["shortlist"] is None
    # the reported shortlist distance is the plain masked L2 in the canonical frame
    c0 = res.candidates[0]
    canon_q = query_mod.vectors.canonical(np.nan_to_num(target)[None], g.mean_soft_tissue, mask=present)
    d2 = ((g.canonical([c0.face_id]).reshape(36, 3) - canon_q.reshape(36, 3)) ** 2).sum(-1)
    w = query_mod.shortlist_weights(present, sd, query_mod.ScoreConfig(), rank_by)
    assert c0.shortlist_distance == pytest.approx(np.sqrt((d2 * w).sum()), rel=1e-4)


def test_large_exhaustive_passes_run_on_worker_processes_with_the_same_answer(case, monkeypatch):
    import importlib

    from skullsearch.retrieval.score import ScoreConfig, rank_order, score

    query_mod = importlib.import_module("skullsearch.retrieval.query")
    g = Gallery.open(case[0])
    ids, target, present, sd = noisy_query(g, 99, seed=6, keep=0.8)
    every = score(g.soft_tissue(ids), target, present, sd)
    monkeypatch.setattr(query_mod, "EXHAUSTIVE_PROCESS_FACES", 0)  # every pass is "large"
    monkeypatch.setattr(query_mod, "EXHAUSTIVE_CHUNK", 64)
    seen = []
    got = query_mod.exhaustive_candidates(g, target, present, sd, ScoreConfig(), "s", 10, device=None,
                                          workers=2, progress=lambda d, t: seen.append(d))
    assert list(got) == list(ids[rank_order(every, "s")[:10]])
    assert seen[-1] == len(ids) and seen == sorted(seen)


def test_an_exhaustive_pass_whose_processes_die_finishes_in_this_process(case, monkeypatch):
    import concurrent.futures as cf
    import importlib

    from skullsearch.retrieval.score import ScoreConfig, rank_order, score

    query_mod = importlib.import_module("skullsearch.retrieval.query")
    g = Gallery.open(case[0])
    ids = np.concatenate([(np.int64(s.number) << 24) | np.arange(s.faces) for s in g.shards()])
    target = g.soft_tissue(ids[[5]])[0]
    present, sd = np.ones(36, bool), load_table().sd

    class DyingPool(cf.ThreadPoolExecutor):  # the first chunk comes back, then the pool breaks
        def __init__(self, n, mp_context=None):
            super().__init__(n)

        def map(self, fn, *args):
            yield fn(*[a[0] for a in args])
            raise cf.process.BrokenProcessPool("a worker died")

    monkeypatch.setattr(cf, "ProcessPoolExecutor", DyingPool)
    monkeypatch.setattr(query_mod, "EXHAUSTIVE_PROCESS_FACES", 0)
    monkeypatch.setattr(query_mod, "EXHAUSTIVE_CHUNK", 100)
    with pytest.warns(RuntimeWarning, match="__main__"):
        got = query_mod.exhaustive_candidates(g, target, present, sd, ScoreConfig(), "s", 10, device=None,
                                              workers=2)
    assert list(got) == list(ids[rank_order(score(g.soft_tissue(ids), target, present, sd), "s")[:10]])


def test_an_exhaustive_query_is_recorded_and_reruns_exhaustively(case, tmp_path):
    import shutil

    gpath, truth, skull_path, *_, table = case
    shutil.copytree(gpath, tmp_path / "g")
    g = Gallery.open(tmp_path / "g")
    res = skullsearch.query(g, Skull.load(skull_path), top=5, tissue_table=table, exhaustive=True)
    assert res.candidates[0].face_id == truth
    assert skullsearch.query_record(g, res.query_id)["params"]["exhaustive"] is True
    synth(g, 100, seed=8)  # faces added later are not scored by the re-run
    again, same = skullsearch.rerun(Gallery.open(g.path), res.query_id)
    assert same and again.params["exhaustive"] is True


def test_small_galleries_are_scored_exhaustively_unless_told_otherwise(case, monkeypatch):
    import importlib

    query_mod = importlib.import_module("skullsearch.retrieval.query")
    gpath, truth, skull_path, *_, table = case
    g = Gallery.open(gpath)
    skull = Skull.load(skull_path)
    auto = skullsearch.query(g, skull, top=3, tissue_table=table, record=False)
    assert auto.params["exhaustive"] is True and auto.candidates[0].face_id == truth
    for kw in ({"shortlist": 50}, {"exhaustive": False}):
        res = skullsearch.query(g, skull, top=3, tissue_table=table, record=False, **kw)
        assert res.params["exhaustive"] is False
    monkeypatch.setattr(query_mod, "EXHAUSTIVE_AUTO_FACES", g.n_faces - 1)  # one face too many
    big = skullsearch.query(g, skull, top=3, tissue_table=table, record=False)
    assert big.params["exhaustive"] is False and big.params["shortlist"] == query_mod.DEFAULT_SHORTLIST


@pytest.mark.parametrize("exhaustive", [None, True, False])
def test_an_empty_gallery_answers_with_no_candidates(default_model, tmp_path, exhaustive):
    from skullsearch.retrieval.query import query_points

    g = Gallery.create(tmp_path / "g", face_model=default_model)
    res = query_points(g, np.zeros((36, 3)), np.ones(36, bool), np.full(36, 2.0), exhaustive=exhaustive)
    assert res.candidates == []


def test_top_must_be_positive(case, capsys):
    from skullsearch.cli.app import main
    from skullsearch.retrieval.query import query_points

    g = Gallery.open(case[0])
    args = (g, np.zeros((36, 3)), np.ones(36, bool), np.full(36, 2.0))
    with pytest.raises(SkullsearchError, match="top must be at least 1"):
        query_points(*args, top=0)
    with pytest.raises(SkullsearchError, match="shortlist must be"):
        query_points(*args, shortlist=-5)
    assert main(["query", str(case[2]), "-g", str(case[0]), "--top", "-2"]) == 2
    assert "top must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_query_command_exhaustive(case, tmp_path, capsys, monkeypatch):
    from skullsearch.cli.app import main

    monkeypatch.setenv("COLUMNS", "250")
    gpath, truth, skull_path, *_, table = case
    out_json = tmp_path / "r.json"
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--exhaustive",
                 "--tissue-table", table, "--json", str(out_json)]) == 0
    got = json.loads(out_json.read_text())
    assert got["params"]["exhaustive"] is True and got["candidates"][0]["face_id"] == truth
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--shortlist-only",
                 "--tissue-table", table, "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["params"]["exhaustive"] is False


def test_load_record_reads_only_audit_records(default_model, tmp_path):
    import json

    import pytest

    from skullsearch import Gallery
    from skullsearch.index.store import GalleryError
    from skullsearch.retrieval.query import load_record

    g = Gallery.create(tmp_path / "g", face_model=default_model)
    (tmp_path / "outside.json").write_text(json.dumps({"query_id": "x"}))
    (g.path / "audit").mkdir(exist_ok=True)
    for bad in ("../../outside", "..\\..\\outside", ".hidden"):
        with pytest.raises(GalleryError, match="no recorded query"):
            load_record(g, bad)
    (g.path / "audit" / "broken.json").write_text('{"query_id": ')
    with pytest.raises(GalleryError, match="unreadable"):
        load_record(g, "broken")


def test_the_query_table_keeps_whole_face_ids_on_an_80_column_terminal(case, monkeypatch):
    """On a narrow terminal the table wraps the photo and person columns; the face ids (which the
    other commands take) are never cut."""
    import io

    from rich.console import Console

    import skullsearch.cli.app as cli

    gpath, truth, skull_path, *_, table = case
    screen = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=screen, width=80, force_terminal=True, color_system=None))
    assert cli.main(["query", str(skull_path), "-g", str(gpath), "--top", "5", "--tissue-table", table]) == 0
    text = screen.getvalue()
    assert str(truth) in text and "…" not in text.split("likelihood")[1].split("\n", 2)[2]
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_extended_landmarks_travel_whole(case, tmp_path, monkeypatch):
    """The result holds the skull's extended landmarks with their table; the audit record keeps
    them whole; a re-run, the export and a reconstruction use them without extending the skull
    again or reloading the table."""
    import importlib

    from skullsearch import reconstruct

    extended_mod, query_mod, tissue_mod = (importlib.import_module(f"skullsearch.retrieval.{m}")
                                           for m in ("extended", "query", "tissue"))
    from skullsearch.retrieval.extended import ExtendedLandmarks, extend

    gpath, truth, skull_path, *_, table = case
    g = Gallery.open(gpath)
    skull = Skull.load(skull_path)
    res = skullsearch.query(g, skull, top=3, tissue_table=table)
    ext = res.extended
    assert ext.table_name == load_table(table).name and ext.g_depth == 3.0 and ext.units == "mm"
    fresh = extend(skull, load_table(table))
    np.testing.assert_array_equal(ext.points, fresh.points)
    np.testing.assert_array_equal(res.target, ext.points)
    back = ExtendedLandmarks.from_dict(json.loads(json.dumps(ext.to_dict())))
    for name in ("points", "skull_points", "normals", "directions", "depth", "sd", "surface_distance",
                 "outward_angle_deg"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ext, name), err_msg=name)
    assert (back.present == ext.present).all() and back.orientation == ext.orientation
    assert back.table_sha256 == ext.table_sha256 and back.g_depth == ext.g_depth
    # an audit record of the old form (points, present, sd) still reads
    old = ExtendedLandmarks.from_dict({"points": np.where(ext.present[:, None], ext.points, np.nan).tolist(),
                                       "present": ext.present.tolist(), "sd": ext.sd.tolist()})
    np.testing.assert_array_equal(old.points, ext.points)
    assert np.isnan(old.g_depth) and np.isnan(old.skull_points).all()

    def refused(*a, **k):
        raise AssertionError("the skull was extended again or the table reloaded")

    monkeypatch.setattr(extended_mod, "extend", refused)
    monkeypatch.setattr(query_mod, "extend", refused)
    monkeypatch.setattr(tissue_mod, "load_table", refused)
    rerun, same = skullsearch.rerun(g, res.query_id)
    assert same and rerun.extended.table_name == ext.table_name
    np.testing.assert_array_equal(rerun.extended.skull_points, ext.skull_points)
    query_mod.export_candidates(g, skull, rerun, tmp_path / "export", n=1)
    rec = reconstruct(skull, res, gallery=g, candidates=1, method="fit", record=False)
    assert rec.g_depth_mm == 3.0 and rec.tissue_table == ext.table_name


def test_there_is_one_gallery_class_and_queries_are_functions_of_it(case):
    """No query-side Gallery subclass: skullsearch.Gallery is the index's, and the old methods say
    which function replaced them."""
    import skullsearch.retrieval as retrieval
    from skullsearch.index.gallery import Gallery as IndexGallery

    assert skullsearch.Gallery is IndexGallery and not hasattr(retrieval, "Gallery")
    g = Gallery.open(case[0])
    for name, fn in (("query", "skullsearch.query"), ("rerun", "skullsearch.rerun"),
                     ("history", "skullsearch.history"), ("record", "skullsearch.query_record")):
        with pytest.raises(AttributeError, match=fn.replace(".", r"\.")):
            getattr(g, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        g.nope  # noqa: B018
    assert skullsearch.query_record is skullsearch.retrieval.audit.load_record


def test_landmarks_draws_the_profile(tmp_path, default_model):
    """``skullsearch landmarks SKULL --profile PNG`` writes the midsagittal profile; a wrong name
    is an error line."""
    from PIL import Image

    from skullsearch.cli.app import main

    skull_path, _, _ = skull_under(default_model, np.zeros(default_model.n_shape), tmp_path / "s", seed=3)
    table = table_3mm(tmp_path / "t.csv")
    out = tmp_path / "profile.png"
    assert main(["landmarks", str(skull_path), "--tissue-table", str(table), "--profile", str(out)]) == 0
    assert Image.open(out).format == "PNG"
    assert main(["landmarks", str(skull_path), "--profile", str(tmp_path / "profile.gif")]) != 0


def _slid_target(model, shape, along_mm=6.0, seed=0):
    """(36, 3): extended landmarks on a face's own skin, each a skin vertex about ``along_mm``
    from the face's annotated point of that name (a skull side that defines its points
    elsewhere along the skin), moved by a random rigid motion."""
    import torch
    from scipy.spatial.transform import Rotation

    from skullsearch.retrieval.surface import patches

    with torch.no_grad():
        v = model.rest_vertices(shape=torch.as_tensor(shape[None], dtype=torch.float32))[0].double().numpy()
        p = model.soft_tissue(shape=torch.as_tensor(shape[None], dtype=torch.float32))[0].double().numpy()
    pat = patches(model)
    pts = np.array([v[s][np.abs(np.linalg.norm(v[s] - q, axis=1) - along_mm).argmin()]
                    for s, q in zip(pat.vertices, p, strict=True)])
    rot = Rotation.random(random_state=seed).as_matrix()
    return pts @ rot.T + np.array([10.0, -40.0, 300.0])


def test_ranked_by_surface_a_face_is_found_where_the_skull_defines_its_points_elsewhere(case):
    """Extended landmarks on the planted face's skin but 6 mm along it from where the face model
    annotates each point: ranked by the surface the face comes first, with every landmark's
    distance to its skin; the point scores see a gap."""
    from skullsearch.retrieval.query import query_points

    gpath, truth, *_ = case
    g = Gallery.open(gpath)
    model = g.face_model
    shape = np.asarray(code_layout.split(g.codes([truth])).shape[0, : model.n_shape])
    target = _slid_target(model, shape)
    present = np.ones(36, bool)
    present[[3, 20]] = False
    sd = load_table().sd
    res = query_points(g, target, present, sd, top=5, rank_by="surface")
    top = res.candidates[0]
    assert top.face_id == truth and res.params["rank_by"] == "surface"
    assert top.surface_mm[3] is None and top.surface_mm[20] is None
    assert max(d for d in top.surface_mm if d is not None) < 1.5  # on its skin
    assert np.median([d for d in top.distance_mm if d is not None]) > 4.0  # off its points
    assert top.calibrated < 0.01
    assert [c.surface_likelihood for c in res.candidates] == sorted(
        (c.surface_likelihood for c in res.candidates), reverse=True)
    assert "surface_likelihood" in res.to_pandas().columns
    by_points = query_points(g, target, present, sd, top=5, rank_by="likelihood")
    assert by_points.candidates[0].surface_likelihood is None
    assert "surface_likelihood" not in by_points.to_pandas().columns
    with pytest.raises(GalleryError, match="surface"):
        query_points(g, target, present, sd, rank_by="surfaces")


def test_query_command_ranks_by_surface_and_the_record_reruns(case, tmp_path, capsys, monkeypatch):
    from skullsearch.cli.app import main

    monkeypatch.setenv("COLUMNS", "250")
    gpath, truth, skull_path, *_, table = case
    out_json = tmp_path / "r.json"
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--rank-by", "surface",
                 "--tissue-table", table, "--json", str(out_json),
                 "--report", str(tmp_path / "report.html")]) == 0
    text = capsys.readouterr().out
    assert "surface" in text
    got = json.loads(out_json.read_text())
    assert got["params"]["rank_by"] == "surface" and got["candidates"][0]["face_id"] == truth
    assert got["candidates"][0]["surface_likelihood"] > -1.0  # the skull lies 3 mm under its own face
    assert "ranked by surface likelihood" in (tmp_path / "report.html").read_text()
    result, same = skullsearch.rerun(Gallery.open(gpath), got["query_id"])
    assert same and result.candidates[0].surface_likelihood is not None


def test_a_tangent_sd_ranks_a_face_whose_points_slid_along_its_skin_higher(case, tmp_path, capsys,
                                                                           monkeypatch):
    """The planted face's skin points 4 mm along it from its annotated ones: with an SD along the
    skin the likelihood ranks it higher than without (exhaustive: the same faces); recorded, the
    query re-runs to the same answer; the CLI passes it on and refuses a negative SD."""
    from skullsearch.cli.app import main
    from skullsearch.retrieval.query import query_points
    from skullsearch.retrieval.score import ScoreConfig

    gpath, truth, skull_path, *_, table = case
    g = Gallery.open(gpath)
    shape = np.asarray(code_layout.split(g.codes([truth])).shape[0, : g.face_model.n_shape])
    target = _slid_target(g.face_model, shape, along_mm=4.0, seed=3)
    present, sd = np.ones(36, bool), load_table().sd

    def place(cfg):
        res = query_points(g, target, present, sd, top=400, rank_by="likelihood", score_config=cfg,
                           exhaustive=True, calibration_sample=50)
        return [c.face_id for c in res.candidates].index(truth) + 1

    plain, tangent = place(ScoreConfig()), place(ScoreConfig(tangent_sd_mm=6.0))
    assert tangent == 1 and plain > tangent
    monkeypatch.setenv("COLUMNS", "250")
    out_json = tmp_path / "t.json"
    assert main(["query", str(skull_path), "-g", str(gpath), "--top", "3", "--rank-by", "likelihood",
                 "--tangent-sd", "4", "--tissue-table", table, "--json", str(out_json)]) == 0
    got = json.loads(out_json.read_text())
    assert got["params"]["score"]["tangent_sd_mm"] == 4.0 and got["candidates"][0]["face_id"] == truth
    _, same = skullsearch.rerun(Gallery.open(gpath), got["query_id"])
    assert same
    capsys.readouterr()
    assert main(["query", str(skull_path), "-g", str(gpath), "--tangent-sd", "-1",
                 "--tissue-table", table]) != 0
    assert "--tangent-sd" in capsys.readouterr().err
