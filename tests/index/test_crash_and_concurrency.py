"""Kill -9 an ingest at fixed points of its shard commits; read while another process ingests; one
writer at a time."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from photos import render_faces

from skullsearch import Gallery, GalleryError
from skullsearch.index import store

pytestmark = pytest.mark.slow  # ingest subprocesses, kill -9

# One photo per shard and a short fit: these tests are about storage, not fit quality. Enough
# photos that four interrupted runs do not finish the folder between them (the fit is fast).
N_PHOTOS = 16
INGEST = (
    "import sys; from skullsearch import Gallery, FitConfig; "
    "cfg = FitConfig(lm_rigid_iters=3, lm_iters=3); "
    "g = Gallery.open(sys.argv[1]); r = g.ingest([sys.argv[2]], workers=1, chunk_images=1, config=cfg); "
    "print('DONE', r.images_new, r.faces, flush=True)"
)


def start_ingest(gallery, folder, crash: str | None = None):
    env = dict(os.environ)
    env.pop(store.CRASH_ENV, None)
    if crash:
        env[store.CRASH_ENV] = crash
    return subprocess.Popen([sys.executable, "-c", INGEST, str(gallery), str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


@pytest.fixture(scope="module")
def photos(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash-photos")
    render_faces(default_model, folder, N_PHOTOS, seed=11, size=256)
    return folder


def check_consistent(g: Gallery, n_photos: int | None = None, killed: bool = False):
    res = g.verify()
    if killed:  # a kill inside a shard's write leaves its temporary folder (the next run removes it)
        res["problems"] = [p for p in res["problems"] if "leftover" not in p]
        assert all(p.name.startswith(".tmp-") for p in (g.path / "shards").iterdir()
                   if p.name.startswith(".")), res
        res["ok"] = not res["problems"]
    assert res["ok"], res
    images = g.sql("SELECT path, sha256 FROM images").to_pylist()
    paths = [r["path"] for r in images]
    assert len(paths) == len(set(paths)), "a photo was recorded twice"
    if n_photos is not None:
        assert len(paths) == n_photos, "a photo was lost"
    faces = g.faces(columns=["face_id"]).column("face_id").to_numpy()
    assert len(faces) == len(set(faces.tolist()))
    idx = g.index("shortlist")
    assert idx.ntotal == len(faces)
    if len(faces):
        assert np.isfinite(g.soft_tissue(faces)).all()


@pytest.mark.slow
@pytest.mark.parametrize("step", ["written", "renamed", "recorded"])
def test_kill_9_inside_a_shard_commit_loses_and_duplicates_nothing(default_model, photos, tmp_path, step):
    """SIGKILL (the ingest and its detector workers) at a fixed point of the 2nd, then the 3rd
    shard commit of a run (store.CRASH_ENV): what is there is whole, and the next run completes
    the folder with every photo once."""
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    committed = []
    for k in (2, 3):
        proc = start_ingest(g.path, photos, crash=f"{step}:{k}")
        proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL  # it died where it was told to
        check_consistent(Gallery.open(g.path), killed=True)
        committed.append(len(store.committed_shards(g.path)))
    # the shard being committed counts only once its record is written
    done_before = 1 if step == "recorded" else 0
    assert committed == [1 + done_before, 1 + done_before + 2 + done_before]
    proc = start_ingest(g.path, photos)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    final = Gallery.open(g.path)
    check_consistent(final, n_photos=N_PHOTOS)
    assert final.n_faces == N_PHOTOS
    assert not list((g.path / "shards").glob(".tmp-*"))


def test_reads_work_while_another_process_ingests(default_model, photos, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    proc = start_ingest(g.path, photos)
    reads, seen, refused = 0, set(), 0
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            reader = Gallery.open(g.path)
            faces = reader.faces(columns=["face_id", "path"])
            seen.add(faces.num_rows)
            if faces.num_rows:
                codes = reader.codes(faces.column("face_id").to_numpy()[:1])
                _, ids = reader.search_codes(codes, k=3)
                assert ids[0, 0] == faces.column("face_id")[0].as_py()
            # a second writer is refused with a clear message while the first holds the lock
            if faces.num_rows and proc.poll() is None:
                try:
                    rep = reader.ingest([photos], workers=1)
                except GalleryError as e:
                    assert "another process is writing" in str(e)
                    refused += 1
                else:  # accepted: only right once the first writer's ingest had finished (its
                    # process may still be exiting), so that nothing was left to add
                    assert rep.images_new == 0, "a second writer was not refused"
            reads += 1
            time.sleep(0.3)
    finally:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert reads >= 3 and len(seen) >= 2, (reads, seen)  # reads saw the gallery grow
    assert refused >= 1  # the second writer was tried while the first held the lock, and refused
    check_consistent(Gallery.open(g.path), n_photos=N_PHOTOS)


def test_face_ids_are_stable_and_decodable():
    ids = store.face_id(7, np.arange(3))
    shard, row = store.split_id(ids)
    assert shard.tolist() == [7, 7, 7] and row.tolist() == [0, 1, 2]
