"""The HTML case report: contents for a known query, escaping, reconstruction folder, CLI, and a
real browser (headless Chromium) drawing the 3D view."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from photos import render_faces

import skullsearch
from skullsearch import SOFT_TISSUE_NAMES, Gallery, GalleryError, Skull
from skullsearch.encoder import code as code_layout
from skullsearch.index.synth import synth
from skullsearch.inpaint import report as rep
from skullsearch.retrieval.query import aligned_faces
from skullsearch.retrieval.tissue import load_table

EVIL = "<script>alert('x')<script> & \"Co\""  # a person (folder) name; no '/' in a folder name


def _skull(model, code, rng):
    """A skull 3 mm under the neutral face of a code (the face the gallery scores), under a random
    rigid motion; queried with a table of 3 mm depths, as in tests/retrieval/test_query.py."""
    from skulls import skull_from_face

    shape = np.asarray(code_layout.split(np.asarray(code)[None]).shape[0, : model.n_shape])
    return skull_from_face(model, shape, np.full(36, 3.0), rng=rng)


@pytest.fixture(scope="module")
def case(default_model, tmp_path_factory):
    """A gallery of 300 synthetic faces plus 2 photos of a person whose name is an HTML attack; a
    synthetic skull of one photo's face; one recorded query."""
    from skulls import write_skull

    root = tmp_path_factory.mktemp("report")
    g = Gallery.create(root / "g", face_model=default_model)
    synth(g, 300, seed=3)
    photos = root / "photos" / EVIL
    render_faces(default_model, photos, 2, seed=4)
    g.ingest([root / "photos"], workers=1, person_from_parent_dir=True, chunk_images=4)
    rows = g.faces(as_pandas=True)
    mine = rows[rows["person"] == EVIL]
    assert len(mine) == 2, "both renders must go through the real detector"
    person_ids = {int(i) for i in mine["face_id"]}  # one shared shape (paper Eq. 2): the same face
    truth = min(person_ids)
    mesh, marks = _skull(default_model, g.codes([truth])[0], np.random.default_rng(2))
    skull_path = write_skull(root / "case", mesh, marks)
    table = root / "depths_3mm.csv"
    table.write_text("landmark,mean_mm,sd_mm\n" + "".join(
        f"{n},3.0,{sd}\n" for n, sd in zip(SOFT_TISSUE_NAMES, load_table().sd, strict=True)))
    res = skullsearch.query(g, Skull.load(skull_path), top=8, tissue_table=str(table))
    return {"root": root, "g": g.path, "truth": truth, "skull": skull_path, "result": res,
            "qid": res.query_id, "table": str(table),
            "person_ids": person_ids}


@pytest.fixture(scope="module")
def built(case):
    out = case["root"] / "out" / "report.html"
    path = rep.report(case["g"], case["qid"], out, top=3)
    return path, path.read_text(encoding="utf-8")


def test_report_has_the_query_its_hashes_and_ranked_faces(case, built):
    path, text = built
    res = case["result"]
    record = json.loads((case["g"] / "audit" / f"{case['qid']}.json").read_text())
    assert {c.face_id for c in res.candidates[:2]} == case["person_ids"]  # the person's two photos
    assert case["qid"] in text
    assert record["skull"]["sha256"] in text and record["skull"]["landmarks_sha256"] in text
    assert record["tissue_table"]["sha256"] in text and record["sha256"] in text
    assert hashlib.sha256(case["skull"].read_bytes()).hexdigest() == record["skull"]["sha256"]
    assert "unchanged (sha256 matches)" in text and "same answer as recorded" in text
    # the ranked table lists the recorded candidates in order
    ranked = [int(m) for m in re.findall(r'<tr id="cand-(\d+)">', text)]
    assert ranked == [r["face_id"] for r in record["results"]]
    assert set(ranked[:2]) == case["person_ids"]
    # versions from the audit record, and the viewer's
    assert f"numpy (at query time)</th><td>{record['versions']['numpy']}" in text
    assert f"three.js (3D view)</th><td>{rep.THREE_VERSION}" in text
    # the tissue table and parameters
    assert "depths_3mm.csv" in text and record["tissue_table"]["name"] in text
    assert "score.eta_sd" in text and "calibration_sample" in text
    # the midsagittal profile: the skull's section with the best face's, a PNG embedded in the page
    m = re.search(r'<figure id="profile"><img src="data:image/png;base64,([^"]+)"', text)
    assert m, "no profile figure"
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB")).astype(int)
    assert (np.abs(im - [220, 40, 40]).max(-1) <= 40).sum() > 500   # bone
    assert (np.abs(im - [30, 160, 60]).max(-1) <= 40).sum() > 500   # the best candidate's face


def test_distance_tables_match_the_scores(case, built):
    _, text = built
    res = case["result"]
    tables = re.findall(r'<table class="dist" data-face="(\d+)">(.*?)</table>', text, re.S)
    assert [int(f) for f, _ in tables] == [c.face_id for c in res.candidates[:3]]
    for (_, body), c in zip(tables, res.candidates[:3], strict=True):
        rows = re.findall(r"<tr><td>([A-Za-z0-9_]+)</td><td>[^<]*</td><td class=\"num\">([\d.]+)</td>"
                          r"<td class=\"num\">([\d.]+)</td><td><span class=(m|u)>", body)
        assert len(rows) == c.present
        for name, d, _eta, flag in rows:
            i = SOFT_TISSUE_NAMES.index(name)
            assert abs(float(d) - c.distance_mm[i]) < 0.006
            assert (flag == "m") == c.matched_flags[i]
        assert sum(f == "m" for *_, f in rows) == c.matched


def test_scene_has_aligned_faces_and_coloured_landmarks(case, built):
    _, text = built
    scene = json.loads(re.search(r'<script type="application/json" id="scene-data">(.*?)</script>',
                                 text, re.S).group(1))
    res = case["result"]
    assert [c["face_id"] for c in scene["candidates"]] == [c.face_id for c in res.candidates[:3]]
    assert scene["skull"] is not None and len(scene["extended"]) == 36
    c0 = scene["candidates"][0]
    assert c0["matched"] == [None if d is None else m for d, m in
                             zip(res.candidates[0].distance_mm, res.candidates[0].matched_flags, strict=True)]
    # the embedded face decodes to the aligned face (uint16 quantized: error < 0.01 mm)
    q = np.frombuffer(base64.b64decode(c0["face"]["q"]), "<u2").reshape(-1, 3).astype(np.float64)
    face = np.asarray(c0["face"]["origin"]) + q * np.asarray(c0["face"]["step"])
    verts, pts = aligned_faces(Gallery.open(case["g"]), res.candidates[:1])
    assert np.abs(face - verts[0]).max() < 0.01
    # the embedded face points sit at the scored distances from the extended landmarks
    ext = np.array([[np.nan] * 3 if p is None else p for p in scene["extended"]])
    got = np.linalg.norm(np.asarray([[np.nan] * 3 if p is None else p for p in c0["points"]]) - ext, axis=1)
    want = np.array([np.nan if d is None else d for d in res.candidates[0].distance_mm])
    assert np.allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=0.01)


def test_aligned_face_vertices_carry_the_scored_points(default_model, case):
    import torch

    g = Gallery.open(case["g"])
    verts, pts = aligned_faces(g, case["result"].candidates[:2])
    sp = default_model.soft_tissue_points
    with torch.no_grad():
        on_mesh = sp.evaluate(torch.as_tensor(verts), torch.as_tensor(default_model.faces)).numpy()
    assert np.abs(on_mesh - pts).max() < 0.05  # the drawn face passes through the scored points


def test_self_contained_and_escaped(built):
    _, text = built
    assert "<script src" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert "import(" in text and "createObjectURL" in text
    # outside the vendored three.js blocks, the only URL is the SVG namespace (text, not a load)
    ours = re.sub(r'<script type="text/plain" id="three-(core|module)">.*?</script>', "", text, flags=re.S)
    assert set(re.findall(r"https?://[^\s\"'<>)]+", ours)) == {"http://www.w3.org/2000/svg"}
    # the vendored viewer is inlined byte for byte
    core = (rep.ASSETS / "three.core.min.js").read_text()
    assert core in text and (rep.ASSETS / "three.module.min.js").read_text() in text
    # the attacker's person name appears only escaped
    assert EVIL not in text and "<script>alert" not in ours
    assert html_escaped(EVIL) in text
    head = text.split('<script type="application/json"')[0]
    assert "<script>alert" not in head
    assert text.count("<script") == 4  # scene data, three core, three module, viewer


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_thumbnails_and_placeholders(case, built, tmp_path):
    _, text = built
    assert "data:image/jpeg;base64," in text  # the truth's photo
    assert "synthetic face: no photo" in text  # the synthetic distractors
    url, why = rep.thumbnail(str(tmp_path / "gone.jpg"))
    assert url is None and why == "photo file not found"
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert rep.thumbnail(str(tmp_path / "bad.jpg"))[1].startswith("photo unreadable")
    from PIL import Image

    Image.new("RGB", (640, 480), (200, 100, 50)).save(tmp_path / "ok.jpg")
    url, _ = rep.thumbnail(str(tmp_path / "ok.jpg"))
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(im.size) == rep.THUMB_PX


def test_decimate_bounds_faces_and_keeps_shape():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=6, radius=80.0)  # 81,920 faces
    v, f = rep.decimate(sphere.vertices, sphere.faces, 20_000)
    assert 8_000 < len(f) <= 20_000
    r = np.linalg.norm(v, axis=1)
    assert np.abs(r - 80).max() < 3.0 and f.max() < len(v)
    same_v, same_f = rep.decimate(sphere.vertices, sphere.faces, 100_000)
    assert len(same_f) == len(sphere.faces)


def test_unknown_query_id_is_a_clear_error(case, tmp_path):
    with pytest.raises(GalleryError, match="no recorded query 'nope'.*recent ones"):
        rep.report(case["g"], "nope", tmp_path / "r.html")
    with pytest.raises(rep.ReportError, match=r"\.html"):
        rep.report(case["g"], case["qid"], tmp_path / "r.pdf")


def _write_reconstruction(folder: Path, case, default_model, moved_skull=False) -> Path:
    """A reconstruction folder in the documented format (inpaint/report_interfaces): the top
    candidate's aligned face, slightly moved, as the re-synthesized mesh, and a render."""
    import trimesh
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    c = case["result"].candidates[0]
    verts, _ = aligned_faces(Gallery.open(case["g"]), [c])
    mesh = trimesh.Trimesh(verts[0] + 1.0, default_model.faces, process=False)
    mesh.export(folder / f"face_{c.face_id}.ply")
    Image.new("RGB", (256, 256), (180, 140, 120)).save(folder / f"face_{c.face_id}.png")
    data = {"query_id": case["qid"], "skull": {"path": str(case["skull"]), "sha256": "x"},
            "method_requested": "auto", "note": "no inpainter trained: constrained fit",
            "candidates": [{"rank": 1, "face_id": c.face_id, "person": EVIL, "method": "fit",
                            "mesh": f"face_{c.face_id}.ply", "render": f"face_{c.face_id}.png",
                            "s_before": c.s, "s_after": 1.0, "matched_before": c.matched,
                            "matched_after": c.present, "present": c.present,
                            "distance_mm_before": c.distance_mm,
                            "distance_mm_after": [None if d is None else d / 2 for d in c.distance_mm],
                            "matched_flags_after": [d is not None for d in c.distance_mm],
                            "revised_regions": ["nose", "<b>lips</b>"],
                            "losses": [{"iteration": i, "total": 1.0 / (i + 1)} for i in range(50)],
                            "iterations": 50, "seconds": 1.5},
                           {"rank": 2, "face_id": 12345, "method": "gan", "mesh": "missing.ply",
                            "render": "missing.png"}]}
    (folder / "reconstruction.json").write_text(json.dumps(data))
    return folder


def test_reconstruction_folder_is_included(case, default_model, tmp_path):
    folder = _write_reconstruction(tmp_path / "recon", case, default_model)
    path = rep.report(case["g"], case["qid"], tmp_path / "r.html", reconstruction=folder, top=2,
                      result=case["result"])
    text = path.read_text()
    fid = case["result"].candidates[0].face_id
    assert f'id="recon-{fid}"' in text and "Re-synthesized faces" in text
    assert "data:image/png;base64," in text and "(in the 3D view)" in text
    assert "&lt;b&gt;lips&lt;/b&gt;" in text and "<b>lips</b>" not in text
    assert "missing.ply unreadable" in text or "missing.png missing" in text
    assert "live result of this query" in text
    scene = json.loads(re.search(r'id="scene-data">(.*?)</script>', text, re.S).group(1))
    assert list(scene["reconstructions"]) == [str(fid)]
    with pytest.raises(rep.ReportError, match="reconstruction.json"):
        rep.report(case["g"], case["qid"], tmp_path / "r2.html", reconstruction=tmp_path)


def test_the_report_shows_each_candidates_rank_range(case, tmp_path):
    """sensitivity=True: a rank range column, one cell per candidate, the planted person's faces
    keeping their place; a precomputed answer is shown as given; without it, no column."""
    from skullsearch.retrieval.sensitivity import VARIANTS

    text = rep.report(case["g"], case["qid"], tmp_path / "s.html", top=1, sensitivity=True).read_text()
    assert '<th class="num">rank range</th>' in text and "thin: every tissue depth" in text
    cells = re.findall(r'<td class="num">(\d+)–(\d+|&gt;\d+)</td></tr>', text)
    assert len(cells) == len(case["result"].candidates)
    assert all(int(a) <= int(b) for a, b in cells[:2] if b.isdigit()) and cells[0][0] == "1"
    given = {"variants": ["thin"], "depth": 100, "skipped": {"forward": "no frame"},
             "range": {c.face_id: (c.rank, None) for c in case["result"].candidates}, "ranks": {}}
    text = rep.report(case["g"], case["qid"], tmp_path / "g.html", top=1, result=case["result"],
                      sensitivity=given).read_text()
    assert "1–&gt;100" in text and "No forward variant: no frame." in text and list(VARIANTS)[0] == "thin"
    assert "rank range" not in built_text(case)


def built_text(case) -> str:
    return rep.report(case["g"], case["qid"], case["root"] / "plain.html", top=1).read_text()


def test_a_moved_skull_file_still_gives_a_report(case, tmp_path):
    g2 = tmp_path / "g"
    shutil.copytree(case["g"], g2)
    record_path = g2 / "audit" / f"{case['qid']}.json"
    rec = json.loads(record_path.read_text())
    rec["skull"]["path"] = str(tmp_path / "elsewhere.ply")
    assert "outward_angle_deg" in rec["extended"] and 'class="note">extended landmark' not in built_text(case)
    rec["extended"]["outward_angle_deg"][SOFT_TISSUE_NAMES.index("g")] = 150.0  # (as if it were)
    rec["extended"]["left_out"] = ["rhi"]
    record_path.write_text(json.dumps(rec))
    text = rep.report(g2, case["qid"], tmp_path / "r.html", top=1).read_text()
    assert "no longer at its recorded path" in text
    assert "extended landmark g: its surface normal points 150° from outward" in text
    assert "left out of the scoring by the examiner: rhi" in text
    scene = json.loads(re.search(r'id="scene-data">(.*?)</script>', text, re.S).group(1))
    assert scene["skull"] is None and len(scene["candidates"]) == 1
    assert 'id="profile"' not in text  # no skull mesh to cut


# ------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_report_and_query_report(case, tmp_path):
    from typer.testing import CliRunner

    from skullsearch.cli.app import app

    runner = CliRunner()
    out = tmp_path / "cli.html"
    r = runner.invoke(app, ["report", case["qid"], "--gallery", str(case["g"]), "--out", str(out),
                            "--top", "2", "--sensitivity"])
    assert r.exit_code == 0, r.output
    assert out.exists() and case["qid"] in out.read_text() and "rank range" in out.read_text()
    r = runner.invoke(app, ["report", "nope", "--gallery", str(case["g"]), "--out", str(out)])
    assert r.exit_code != 0 and "no recorded query" in str(r.exception)

    g2 = tmp_path / "g"
    shutil.copytree(case["g"], g2)
    qout = tmp_path / "q.html"
    r = runner.invoke(app, ["query", str(case["skull"]), "--gallery", str(g2), "--top", "5",
                            "--tissue-table", case["table"], "--report", str(qout), "--sensitivity"])
    assert r.exit_code == 0, r.output
    text = qout.read_text()
    assert "rank range" in text and "rank range" in r.output  # (the table's and the report's: one run)
    qid = re.search(r"query (\d{8}T\d{6}Z-[0-9a-f]{8})", r.output).group(1)
    assert qid in text and "live result of this query" in text
    assert {int(i) for i in re.findall(r'<tr id="cand-(\d+)">', text)[:2]} == case["person_ids"]


def test_cli_error_is_one_line(case, tmp_path, capsys):
    from skullsearch.cli.app import main

    code = main(["report", "nope", "--gallery", str(case["g"]), "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err
    assert code != 0 and "no recorded query" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):  # CI installs it (.ci/run): absent there is a failure
    CHROMIUM = "chromium"


def run_chromium(page: Path, screenshot: Path, profile: Path, size=(1200, 2400), timeout=120):
    """Open a page in headless Chromium with no network; returns its log (stderr) and writes a
    screenshot. WebGL runs on SwiftShader (software)."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("CI=true but chromium is not installed: .ci/run installs it with apt-get")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # nothing leaves
            f"--log-net-log={profile.parent / (profile.name + '-net.json')}",
            f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=20000",
            f"--screenshot={screenshot}", page.resolve().as_uri()]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stderr


def page_requests(profile: Path, page: Path) -> list[str]:
    """URLs the page itself asked for (from Chromium's net log), other than the page: a
    self-contained report asks for none. The browser's own background requests (its
    isolation key is not the file:// page's) are left out."""
    log = json.loads((profile.parent / (profile.name + "-net.json")).read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for ev in log["events"]:
        prm = ev.get("params") or {}
        if ev["type"] == start and str(prm.get("network_isolation_key", "")).startswith("file://"):
            if prm["url"] != page.resolve().as_uri():
                urls.append(prm["url"])
    return urls


def console_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if ":CONSOLE" in ln]


def console_errors(log: str) -> list[str]:
    bad = []
    for ln in console_lines(log):
        level = ln.split(":CONSOLE")[0].rsplit(":", 1)[-1]
        if "GL Driver Message" in ln:  # SwiftShader performance notes (ReadPixels stalls)
            continue
        if level in ("ERROR", "WARNING") or "Uncaught" in ln or "Error" in ln:
            bad.append(ln)
    # also: network errors (a blocked fetch), failed loads
    bad += [ln for ln in log.splitlines() if "net::ERR_" in ln]
    return bad


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                    "CI installs it")
def test_report_renders_in_headless_chromium(built, artifacts, tmp_path):
    from PIL import Image

    path, _ = built
    shot = artifacts / "report_chromium.png"
    rc, log = run_chromium(path, shot, tmp_path / "profile")
    assert rc == 0, log[-3000:]
    lines = console_lines(log)
    assert any("skullsearch-viewer: rendered" in ln for ln in lines), "\n".join(lines) or log[-3000:]
    assert not console_errors(log), console_errors(log)
    assert page_requests(tmp_path / "profile", path) == []  # nothing loaded: no network, no files
    drawn = re.search(r"rendered (\d+) triangles, 3 candidate\(s\), re-synthesized face 0", "\n".join(lines))
    assert drawn and int(drawn.group(1)) > 10_000  # skull + face + landmark balls
    # the canvas is drawn: find it as the large block of the viewer's background colour
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    bg = np.all(np.abs(im - [244, 244, 242]) <= 2, axis=-1)
    rows = np.nonzero(bg.sum(1) > im.shape[1] * 0.3)[0]
    assert len(rows) > 100, "no viewer canvas (background colour block) in the screenshot"
    top, bottom = rows.min(), rows.max()
    cols = np.nonzero(bg[top:bottom].sum(0) > (bottom - top) * 0.3)[0]
    box = im[top:bottom, cols.min():cols.max()]
    drawn = ~np.all(np.abs(box - [244, 244, 242]) <= 6, axis=-1)
    share = drawn.mean()
    assert 0.02 < share < 0.9, f"{share:.3f} of the canvas is drawn"
    # colours of the scene: bone, skin, green (matched) landmarks
    flat = box.reshape(-1, 3)
    green = (flat[:, 1] > 120) & (flat[:, 0] < 90) & (flat[:, 2] < 110)
    assert green.sum() > 20, "no matched (green) landmarks visible"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_check_catches_a_broken_page(tmp_path):
    """The console check is real: a page whose script throws fails it."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><canvas id="viewer"></canvas>'
                    '<script type="module">throw new Error("boom in the viewer")</script></body></html>')
    rc, log = run_chromium(page, tmp_path / "b.png", tmp_path / "profile", size=(400, 300))
    assert rc == 0
    assert any("boom in the viewer" in ln for ln in console_errors(log)), log[-2000:]
    # and the network check is real: a page that loads from a CDN is caught
    cdn = tmp_path / "cdn.html"
    cdn.write_text('<!doctype html><html><body><img src="http://example.invalid/x.png">'
                   '<script src="https://cdn.example.invalid/three.js"></script></body></html>')
    assert run_chromium(cdn, tmp_path / "c.png", tmp_path / "profile2", size=(400, 300))[0] == 0
    assert sorted(page_requests(tmp_path / "profile2", cdn)) == [
        "http://example.invalid/x.png", "https://cdn.example.invalid/three.js"]


@pytest.mark.slow
def test_report_of_a_real_reconstruction_renders(case, tmp_path, artifacts):
    """skullsearch.reconstruct's folder (the real one, F3DMM-GC) goes into the report, and the
    browser draws the re-synthesized face too."""
    from skullsearch.inpaint.reconstruct import reconstruct

    g = Gallery.open(case["g"])
    folder = tmp_path / "recon"
    reconstruct(Skull.load(case["skull"]), case["result"], gallery=g, candidates=1, method="fit", out=folder)
    path = rep.report(g, case["qid"], tmp_path / "recon.html", reconstruction=folder, top=2,
                      result=case["result"])
    text = path.read_text()
    fid = case["result"].candidates[0].face_id
    assert f'id="recon-{fid}"' in text and "(in the 3D view)" in text
    assert f'alt="midsagittal profile of face {fid}" ' in text  # the profile image, embedded
    scene = json.loads(re.search(r'id="scene-data">(.*?)</script>', text, re.S).group(1))
    assert list(scene["reconstructions"]) == [str(fid)]
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    rc, log = run_chromium(path, artifacts / "report_reconstruction_chromium.png", tmp_path / "profile")
    assert rc == 0 and not console_errors(log), console_errors(log) or log[-2000:]
    assert page_requests(tmp_path / "profile", path) == []
    import trimesh

    drawn = re.search(r"rendered (\d+) triangles, 2 candidate\(s\), re-synthesized face (\d+) triangles", log)
    assert drawn, log[-2000:]
    recon_faces = len(trimesh.load(folder / f"face_{fid}.ply", process=False).faces)
    assert int(drawn.group(2)) == recon_faces and int(drawn.group(1)) > 2 * recon_faces


def test_distribution_is_the_calibration_sample(case, built):
    from skullsearch.retrieval.score import ScoreConfig, score

    _, text = built
    g = Gallery.open(case["g"])
    res = case["result"]
    p = res.params
    sample = g.sample_ids(p["calibration_sample"], seed=p["seed"], max_shard=p["max_shard"])
    ref = score(g.soft_tissue(sample), res.target, res.present, res.sd, ScoreConfig(**p["score"]))
    assert len(sample) == g.n_faces == 302  # the whole small gallery
    assert f"grey: {len(sample)} gallery faces" in text
    assert f"Median S {np.median(ref.s):.3f}, best S in the sample {ref.s.max():.3f}" in text
    # the top candidate's calibrated rank is that sample's share scoring at least as well
    top = res.candidates[0]
    share = (1 + np.sum(ref.s + 1e-9 * ref.likelihood >= top.s + 1e-9 * top.likelihood)) / (1 + len(sample))
    assert abs(share - top.calibrated) < 1e-9 and f"{top.calibrated * 100:.2f} %" in text
    assert text.count('<svg class="plot"') == 2


def test_a_photo_too_large_to_decode_is_a_placeholder(tmp_path, monkeypatch):
    """Pillow's bomb check raises DecompressionBombError (not an OSError): a placeholder, not a
    traceback (a gallery photo replaced by a huge one after ingest)."""
    from PIL import Image

    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 px > 2 × the limit
    url, why = rep.thumbnail(str(tmp_path / "big.png"))
    assert url is None and why == "photo unreadable (DecompressionBombError)"


def test_reconstruction_files_outside_the_folder_are_not_embedded(case, default_model, tmp_path):
    from PIL import Image

    folder = _write_reconstruction(tmp_path / "recon", case, default_model)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "secret.png")
    data = json.loads((folder / "reconstruction.json").read_text())
    data["candidates"][0]["render"] = "../secret.png"
    data["candidates"][0]["mesh"] = str(tmp_path / "elsewhere.ply")
    (folder / "reconstruction.json").write_text(json.dumps(data))
    rec = rep.read_reconstruction(folder)
    fid = int(data["candidates"][0]["face_id"])
    assert rec.renders[fid] is None and rec.meshes[fid] is None
    assert any("outside the reconstruction folder" in p for p in rec.problems)


def test_a_profile_the_landmarks_cannot_frame_is_a_note(case):
    """Landmarks that do not tell the skull's midline (one brow point and the zygia): no profile
    figure, one note that says why."""
    from types import SimpleNamespace

    from skullsearch import Gallery, Skull
    from skullsearch.retrieval.extended import extend
    from skullsearch.retrieval.tissue import load_table

    skull = Skull.load(case["skull"])
    few = {k: v for k, v in skull.landmarks.items() if k in ("g", "zy_l", "zy_r")}
    ext = extend(Skull(mesh=skull.mesh, landmarks=few), load_table())
    notes: list = []
    no_faces = np.zeros((0, 1, 3))
    result = SimpleNamespace(extended=ext)
    url = rep._profile_url(Gallery.open(case["g"]), skull.mesh, result, [], no_faces, notes)
    assert url is None and len(notes) == 1
    assert notes[0].startswith("no midsagittal profile: the skull's midline")
