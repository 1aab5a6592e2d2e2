"""Kill -9 an ingest at random moments; read while another process ingests; one writer at a time."""

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

# One photo per shard and a short fit: these tests are about storage, not fit quality. Enough
# photos that four interrupted runs do not finish the folder between them (the fit is fast).
N_PHOTOS = 16
INGEST = (
    "import sys; from skullsearch import Gallery, FitConfig; "
    "cfg = FitConfig(lm_rigid_iters=3, lm_iters=3); "
    "g = Gallery.open(sys.argv[1]); r = g.ingest([sys.argv[2]], workers=1, chunk_images=1, config=cfg); "
    "print('DONE', r.images_new, r.faces, flush=True)"
)


def start_ingest(gallery, folder):
    return subprocess.Popen([sys.executable, "-c", INGEST, str(gallery), str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


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


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(default_model, photos, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        proc = start_ingest(g.path, photos)
        # wait for one or two more commits, then kill at a random moment of the next one
        target = len(store.committed_shards(g.path)) + int(rng.integers(1, 3))
        while proc.poll() is None and len(store.committed_shards(g.path)) < target:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the ingest and its detector workers
            kills += 1
        proc.wait()
        check_consistent(Gallery.open(g.path), killed=True)  # what is there is whole, even mid-way
    proc = start_ingest(g.path, photos)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert kills >= 2  # the trials really interrupted ingests
    final = Gallery.open(g.path)
    check_consistent(final, n_photos=N_PHOTOS)
    assert final.n_faces == N_PHOTOS
    assert not list((g.path / "shards").glob(".tmp-*"))


def test_reads_work_while_another_process_ingests(default_model, photos, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    proc = start_ingest(g.path, photos)
    reads, seen = 0, set()
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
                    reader.ingest([photos], workers=1)
                except GalleryError as e:
                    assert "another process is writing" in str(e)
            reads += 1
            time.sleep(0.3)
    finally:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert reads >= 3 and len(seen) >= 2, (reads, seen)  # reads saw the gallery grow
    check_consistent(Gallery.open(g.path), n_photos=N_PHOTOS)


def test_face_ids_are_stable_and_decodable():
    ids = store.face_id(7, np.arange(3))
    shard, row = store.split_id(ids)
    assert shard.tolist() == [7, 7, 7] and row.tolist() == [0, 1, 2]
