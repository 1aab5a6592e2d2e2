"""Person identity in a gallery: descriptors stored at ingest, the person near-duplicate
criterion, ``similar`` by person, ``persons`` grouping (on a handmade set with known persons)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from skullsearch import Gallery
from skullsearch.encoder.descriptors import DIM
from skullsearch.errors import SkullsearchError
from skullsearch.index import persons, store
from skullsearch.index.ingest import IDENTITY, PERSON, PHOTO, near_duplicate_stage
from skullsearch.index.store import GalleryError
from skullsearch.index.synth import add_synthetic_faces, synth_codes


def _people(rng, n_persons: int, per: int, spread: float = 0.08):
    """Descriptors (n_persons·per, 128) of known persons: a centre each (pairwise ~1 apart, as
    dlib's different persons are) and photos scattered ``spread`` around it; person labels."""
    centres = rng.standard_normal((n_persons, DIM)) / np.sqrt(2 * DIM)
    d = np.repeat(centres, per, 0) + rng.standard_normal((n_persons * per, DIM)) * spread / np.sqrt(DIM)
    return d.astype(np.float32), np.repeat(np.arange(n_persons), per)


@pytest.fixture()
def known(default_model, tmp_path):
    """A gallery of 8 persons × 4 photo-less faces (two shards) with handmade descriptors, plus 3
    faces without one (an older ingest)."""
    rng = np.random.default_rng(5)
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    desc, who = _people(rng, 8, 4)
    order = rng.permutation(len(who))
    desc, who = desc[order], who[order]
    codes = synth_codes(default_model, len(who), rng)
    labels = [f"p{w}" for w in who]
    ids = np.concatenate([add_synthetic_faces(g, codes[:20], descriptors=desc[:20], persons=labels[:20]),
                          add_synthetic_faces(g, codes[20:], descriptors=desc[20:], persons=labels[20:])])
    add_synthetic_faces(g, synth_codes(default_model, 3, rng), tag="old")
    return g, ids, desc, who, codes


def test_grouping_finds_the_known_persons(known):
    g, ids, _, who, _ = known
    table = g.group_persons()
    assert table.num_rows == len(ids)  # the faces without a descriptor are left out
    group = dict(zip(table.column("face_id").to_pylist(), table.column("person_group").to_pylist(),
                     strict=True))
    got = np.array([group[int(i)] for i in ids])
    for p in range(8):  # one group per person, named by its smallest face id
        assert len(set(got[who == p])) == 1
        assert got[who == p][0] == ids[who == p].min()
    assert len(set(got)) == 8
    assert set(table.column("group_size").to_pylist()) == {4}
    # saved, with its settings, and seen by the catalog
    saved = pq.read_table(g.path / persons.FILE)
    assert saved.equals(table)
    assert b"threshold" in saved.schema.metadata[b"skullsearch"]
    assert g.sql("SELECT count(DISTINCT person_group) AS n FROM person_groups").column("n")[0].as_py() == 8
    listed = g.person_groups(min_size=2).to_pylist()
    assert len(listed) == 32 and all(r["person"] == f"p{who[list(ids).index(r['face_id'])]}" for r in listed)


def test_a_strict_threshold_splits_and_bad_settings_are_refused(known):
    g, ids, *_ = known
    table = g.group_persons(threshold=0.01)
    assert len(set(table.column("person_group").to_pylist())) == len(ids)  # nobody is linked
    with pytest.raises(SkullsearchError, match="threshold"):
        g.group_persons(threshold=0)
    with pytest.raises(SkullsearchError, match="k must"):
        g.group_persons(k=0)


def test_a_gallery_without_descriptors_says_what_to_do(default_model, tmp_path):
    g = Gallery.create(tmp_path / "g", face_model=default_model)
    add_synthetic_faces(g, synth_codes(default_model, 5, np.random.default_rng(0)))
    assert g.person_groups() is None
    assert g.info()["faces with a person descriptor"] == 0
    with pytest.raises(SkullsearchError, match="no face in this gallery has a person descriptor"):
        g.group_persons()
    with pytest.raises(GalleryError, match="no person descriptors"):
        g.similar(synth_codes(default_model, 1, np.random.default_rng(1)),
                  descriptors=np.zeros((1, DIM), np.float32), by="person")
    # auto falls back to the shape code
    (rows,) = g.similar(synth_codes(default_model, 1, np.random.default_rng(1)),
                        descriptors=np.zeros((1, DIM), np.float32))
    assert rows and all(r["by"] == "shape" and r["person_distance"] is None for r in rows)


def test_similar_ranks_by_person_with_the_shape_distance_beside(known):
    g, ids, desc, who, codes = known
    probe = desc[:1] + 0.01 / np.sqrt(DIM)
    other_code = codes[1:2]  # another face's shape: the person descriptor decides
    (rows,) = g.similar(other_code, top=4, descriptors=probe)
    assert [r["by"] for r in rows] == ["person"] * 4
    assert {r["face_id"] for r in rows} == set(ids[who == who[0]].tolist())
    assert rows[0]["face_id"] == ids[0] and rows[0]["person_distance"] < 0.05
    assert [r["person_distance"] for r in rows] == sorted(r["person_distance"] for r in rows)
    assert rows[0]["distance"] > 0  # the shape distance to face 0, not to the probe's person
    (by_shape,) = g.similar(other_code, top=1, descriptors=probe, by="shape")
    assert by_shape[0]["face_id"] == ids[1] and by_shape[0]["distance"] < 1e-3
    assert by_shape[0]["person_distance"] is not None  # given beside
    with pytest.raises(GalleryError, match="by must be"):
        g.similar(other_code, by="name")
    with pytest.raises(GalleryError, match="needs a person descriptor"):
        g.similar(other_code, by="person")


def test_the_person_criterion_flags_a_reshot_after_the_photo_criterion(known, default_model):
    g, ids, desc, who, codes = known
    rng = np.random.default_rng(9)
    new_codes = synth_codes(default_model, 4, rng)
    new_desc = np.full((4, DIM), np.nan, np.float32)
    new_desc[0] = desc[3] + 0.05 / np.sqrt(DIM)  # a re-shot of face 3's person
    new_desc[1] = desc[3] + 0.05 / np.sqrt(DIM)  # ... which is also another file of a picture
    new_desc[2] = -desc[3]  # far from everyone
    fps = np.full((4, 63), np.nan, np.float32)
    fp = np.zeros(63, np.float32)
    fp[0] = 1
    fps[1] = fp
    new_codes[3] = codes[5]  # same shape code as face 5 (identity), no descriptor
    number = store.next_shard_number(g.path)
    add_synthetic_faces(g, codes[7:8], fingerprints=fp[None])  # the picture face 1 copies
    number = store.next_shard_number(g.path)
    nd = near_duplicate_stage(g, new_codes, fps, number, descs=new_desc)
    assert list(nd.criterion) == [PERSON, PHOTO, None, IDENTITY]
    assert nd.of[0] == ids[3]
    assert nd.person_distance[0] == pytest.approx(0.05, abs=0.01)
    assert np.isnan(nd.person_distance[3])  # the new face has no descriptor
    assert nd.of[3] == ids[5] and nd.distance[3] < 1e-4
    off = near_duplicate_stage(g, new_codes, fps, number, descs=new_desc, person_distance=0)
    assert off.criterion[0] is None


@pytest.fixture(scope="module")
def two_heads(default_model, tmp_path_factory):
    """Three PNG portraits: two of one default-model head (other pose and light), one of another."""
    from photos import render_heads

    folder = tmp_path_factory.mktemp("heads")
    return folder, render_heads(default_model, folder, [("a1", 0), ("a2", 0), ("b1", 1)], seed=11)


@pytest.mark.slow
def test_ingest_stores_descriptors_and_the_cli_uses_them(default_model, two_heads, tmp_path, capsys):
    from skullsearch.cli.app import main

    folder, paths = two_heads
    gpath = tmp_path / "g"
    assert main(["ingest", str(folder), "--gallery", str(gpath), "--workers", "1"]) == 0
    g = Gallery.open(gpath)
    t = g.faces(columns=["path", "descriptor", "near_duplicate_criterion"]).to_pylist()
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in t}
    assert all(len(r["descriptor"]) == DIM for r in t)
    assert by_name["a2.png"]["near_duplicate_criterion"] == PERSON  # a re-shot of a1's head
    assert by_name["b1.png"]["near_duplicate_criterion"] is None
    capsys.readouterr()
    assert main(["similar", str(paths[1]), "--gallery", str(gpath), "--top", "2", "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('"rank","face_id","person_distance","distance","by"')
    assert [line.split(",")[4] for line in lines[1:]] == ['"person"'] * 2
    assert "a2.png" in lines[1] and "a1.png" in lines[2]
    assert main(["persons", "--gallery", str(gpath)]) == 0
    out = capsys.readouterr().out
    assert "3 faces in 2 person group(s)" in out and "a1.png" in out and "b1.png" not in out
    # descriptors off: nothing stored, nothing flagged by person, similar falls back to shape
    off = tmp_path / "off"
    assert main(["ingest", str(folder), "--gallery", str(off), "--workers", "1", "--no-descriptors"]) == 0
    g = Gallery.open(off)
    assert g.info()["faces with a person descriptor"] == 0
    assert PERSON not in g.info()["near-duplicates by criterion"]
    assert g.similar_to_photo(paths[0], top=1)[0]["by"] == "shape"


@pytest.mark.slow
def test_ingest_with_the_identity_prior(default_model, two_heads, tmp_path):
    """Renders of the default model are in the prior's domain: fitted with it (no flag), their
    faces' encoder fingerprint says so; without descriptors it is refused with what to do."""
    folder, _ = two_heads
    plain = Gallery.create(tmp_path / "plain", face_model=default_model)
    plain.ingest([folder], workers=1)
    g = Gallery.create(tmp_path / "prior", face_model=default_model)
    g.ingest([folder], workers=1, identity_prior=True)
    rows = g.faces(columns=["path", "quality", "encoder_fingerprint"]).to_pylist()
    assert all("identity-prior-out-of-domain" not in r["quality"] for r in rows)
    (fp,) = {r["encoder_fingerprint"] for r in rows}
    (plain_fp,) = {r["encoder_fingerprint"] for r in plain.faces(columns=["encoder_fingerprint"]).to_pylist()}
    assert fp != plain_fp
    assert not np.allclose(g.codes(g.sample_ids(3)), plain.codes(plain.sample_ids(3)))
    with pytest.raises(SkullsearchError, match="descriptor"):
        Gallery.create(tmp_path / "off", face_model=default_model).ingest(
            [folder], workers=1, identity_prior=True, descriptors=False)


def test_cliques_split_a_chain_of_look_alikes():
    """a–b and b–c are within the cut, a–c is not: Chinese whispers may link all three; cliques
    keep only faces all pairwise within it together."""
    x = np.array([[0.0, 0], [0.35, 0], [0.7, 0], [5.0, 5.0], [5.1, 5.0]])
    labels = np.array([0, 0, 0, 1, 1])
    out = persons.cliques(x, labels, 0.5)
    assert out[3] == out[4] and len({out[0], out[1], out[2]}) == 2 and out[3] not in out[:3]
    assert out[1] in (out[0], out[2])  # the medoid b takes one neighbour, the other stands alone
    # a group whose members are all close stays whole; labels are the groups' own otherwise
    np.testing.assert_array_equal(persons.cliques(x, labels, 10.0) == persons.cliques(x, labels, 10.0)[0],
                                  [True, True, True, False, False])
    assert (persons.cliques(x, np.arange(5), 0.5) == np.arange(5)).all()
