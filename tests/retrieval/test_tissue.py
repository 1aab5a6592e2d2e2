"""Tissue-depth tables: the built-in 2023 global T-Table and user CSV tables."""

import json

import numpy as np
import pytest

from skullsearch.encoder.soft_tissue import BILATERAL, MIDLINE, SOFT_TISSUE_NAMES
from skullsearch.errors import SkullsearchError
from skullsearch.retrieval.tissue import TABLE_DIR, TissueTable, TissueTableError, load_table

IDX = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}


def write(tmp_path, text, name="table.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ built-in table
def test_builtin_values_and_layout():
    t = load_table()
    assert t.name == "global-2023"
    assert t.mean.shape == (36,) and t.sd.shape == (36,) and t.direction.shape == (36, 3)
    assert np.isfinite(t.mean).all() and np.isfinite(t.sd).all() and t.available.all()
    assert np.isnan(t.direction).all()                       # everything along the normal
    expected = {"op": (6, 2), "g": (5.5, 1), "n": (6, 1.5), "rhi": (3, 1), "ss": (13.5, 3.5),
                "pg": (11, 2.5), "me": (7, 2.5), "mso_l": (7, 2), "go_r": (12.5, 6),
                "zy_l": (7.5, 3), "sM2_l": (26, 7), "iM2_r": (22, 6.5), "mr_l": (19.5, 5),
                "mmb_r": (11, 4)}
    for name, (mean, sd) in expected.items():
        assert t.row(name)[:2] == (mean, sd), name
    for key in BILATERAL:                                    # bilateral values duplicated
        assert t.mean[IDX[f"{key}_l"]] == t.mean[IDX[f"{key}_r"]]
        assert t.sd[IDX[f"{key}_l"]] == t.sd[IDX[f"{key}_r"]]
    assert "Hona" in t.source and "Stephan" in t.source
    assert "Int" in t.source and "138" in t.source and "519" in t.source


def test_builtin_file_cites_its_source():
    text = (TABLE_DIR / "global_2023.csv").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    joined = " ".join(comments)
    assert "Hona" in joined and "International Journal of Legal Medicine" in joined
    assert "database" in joined and "verify" in joined.lower()
    header = [line for line in text.splitlines() if line and not line.startswith("#")][0]
    assert header == "landmark,mean_mm,sd_mm,direction"


def test_builtin_names_and_sha_stable():
    a, b, c = load_table(), load_table("global-2023"), load_table("GLOBAL-2023")
    assert a.sha256 == b.sha256 == c.sha256
    assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0


def test_sex_with_builtin_is_an_error():
    with pytest.raises(TissueTableError, match="--tissue-table") as err:
        load_table(sex="female")
    assert isinstance(err.value, SkullsearchError)
    with pytest.raises(TissueTableError, match="--tissue-table"):
        load_table("global-2023", population="european")


def test_unknown_table_name():
    with pytest.raises(TissueTableError, match="global-2023"):
        load_table("no-such-table")


# ------------------------------------------------------------------ user tables
SEXED = """\
# source: Test lab female/male CT sample (2024)
landmark,mean_mm,sd_mm,sex
g,5.0,1.0,female
g,6.0,1.2,male
zy,7.0,2.5,female
zy,8.0,3.0,male
me,6.5,2.0,F
"""


def test_user_table_sex_filter(tmp_path):
    path = write(tmp_path, SEXED.replace(",F\n", ",female\n"))
    f = load_table(path, sex="female")
    m = load_table(str(path), sex="MALE")
    assert f.row("g")[:2] == (5.0, 1.0) and m.row("g")[:2] == (6.0, 1.2)
    assert f.row("zy_l")[:2] == f.row("zy_r")[:2] == (7.0, 2.5)
    assert f.row("me")[0] == 6.5 and np.isnan(m.row("me")[0])      # male table lacks me
    assert f.available.sum() == 4 and not f.available[IDX["pg"]]
    assert np.isnan(f.mean[IDX["pg"]])
    assert f.source == "Test lab female/male CT sample (2024)"
    assert f.filters == {"sex": "female"} and f.name == str(path)
    # the name and filters load it again
    again = load_table(f.name, **f.filters)
    assert again.sha256 == f.sha256
    assert f.sha256 != m.sha256


def test_user_table_needs_a_selection_when_rows_differ(tmp_path):
    path = write(tmp_path, SEXED)
    with pytest.raises(TissueTableError, match="sex") as err:
        load_table(path)
    assert str(path) in str(err.value)


def test_filter_column_missing(tmp_path):
    path = write(tmp_path, "landmark,mean_mm,sd_mm\ng,5,1\n")
    with pytest.raises(TissueTableError, match="no 'sex' column"):
        load_table(path, sex="female")


def test_no_row_matches(tmp_path):
    path = write(tmp_path, SEXED)
    with pytest.raises(TissueTableError, match="no row matches"):
        load_table(path, sex="other")


def test_wildcards_ranges_and_specificity(tmp_path):
    text = """\
landmark,mean_mm,sd_mm,sex,age,population
g,5.0,1.0,all,,
g,5.5,1.1,female,,
n,6.0,1.5,,18-29,
n,7.0,1.5,,30-49,
n,8.0,1.5,,50+,
pg,11,2.5,*,any,south african
pg,12,2.5,*,any,
"""
    path = write(tmp_path, text)
    t = load_table(path, sex="female", age=35, population="South African")
    assert t.row("g")[0] == 5.5                 # the sex-specific row beats the pooled one
    assert t.row("n")[0] == 7.0                 # 35 falls in 30-49
    assert t.row("pg")[0] == 11                 # population-specific row wins
    assert load_table(path, sex="male", age=60, population="x").row("n")[0] == 8.0
    assert load_table(path, sex="male", age=60, population="x").row("g")[0] == 5.0
    assert load_table(path, sex="male", age=20, population="x").row("pg")[0] == 12


def test_side_specific_row_overrides_base(tmp_path):
    for text in ("landmark,mean_mm,sd_mm\nzy,7,3\nzy_l,9,2\n", "landmark,mean_mm,sd_mm\nzy_l,9,2\nzy,7,3\n"):
        t = load_table(write(tmp_path, text))
        assert t.row("zy_l")[:2] == (9, 2) and t.row("zy_r")[:2] == (7, 3)
    t = load_table(write(tmp_path, "landmark,mean_mm,sd_mm\nzy_r,9,2\n"))
    assert t.row("zy_r")[0] == 9 and np.isnan(t.row("zy_l")[0])
    # case-insensitive keys (sC, sM2)
    t = load_table(write(tmp_path, "Landmark,Mean_mm,SD_mm\nsc,10,2\nSM2_L,25,6\n"))
    assert t.row("sC_r")[0] == 10 and t.row("sM2_l")[0] == 25 and np.isnan(t.row("sM2_r")[0])


def test_direction_parsing(tmp_path):
    text = 'landmark,mean_mm,sd_mm,direction\nme,7,2.5,0 0 -2\ngn,7.5,2.5,"1,0,0"\nn,6,1.5,normal\ng,5,1,\n'
    t = load_table(write(tmp_path, text))
    assert np.allclose(t.row("me")[2], [0, 0, -1])
    assert np.allclose(t.row("gn")[2], [1, 0, 0])
    assert np.isnan(t.row("n")[2]).all() and np.isnan(t.row("g")[2]).all()


@pytest.mark.parametrize(
    "row, message",
    [
        ("xx,5,1", "unknown landmark 'xx'"),
        ("n_l,5,1", "unknown landmark"),
        ("g,-5,1", "negative"),
        ("g,abc,1", "not a number"),
        ("g,5,", "not a number"),
        ("g,5,0", "positive"),
        ("g,inf,1", "finite"),
        ("g,500,1", "millimetres"),
        ("g,5,1,up", "direction"),
        ("g,5,1,0 0 0", "zero vector"),
        ("g,5,1,1 2", "direction"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path, f"# comment\nlandmark,mean_mm,sd_mm,direction\nn,6,1.5,\n{row}\n")
    with pytest.raises(TissueTableError, match=message) as err:
        load_table(path)
    assert str(path) in str(err.value) and "line 4" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(TissueTableError, match="missing column"):
        load_table(write(tmp_path, "landmark,depth\ng,5\n"))
    with pytest.raises(TissueTableError, match="no rows"):
        load_table(write(tmp_path, "landmark,mean_mm,sd_mm\n"))
    with pytest.raises(TissueTableError, match="2 rows for landmark 'g'"):
        load_table(write(tmp_path, "landmark,mean_mm,sd_mm\ng,5,1\ng,6,1\n"))
    with pytest.raises(TissueTableError, match="neither a file"):
        load_table(tmp_path / "missing.csv")


def test_na_mean_leaves_landmark_absent(tmp_path):
    t = load_table(write(tmp_path, "landmark,mean_mm,sd_mm\ng,NA,\nn,6,1.5\n"))
    assert not t.available[IDX["g"]] and t.available[IDX["n"]]


# ------------------------------------------------------------------ audit round trip
def test_to_dict_round_trip(tmp_path):
    text = 'landmark,mean_mm,sd_mm,direction,sex\nme,7.125,2.5,"0.3 0 -1",female\nzy_l,9,2,,female\n'
    for table in (load_table(), load_table(write(tmp_path, text), sex="female")):
        d = json.loads(json.dumps(table.to_dict()))          # through JSON, as in the audit log
        back = TissueTable.from_dict(d)
        assert back.sha256 == table.sha256
        for a, b in ((back.mean, table.mean), (back.sd, table.sd), (back.direction, table.direction)):
            assert np.array_equal(a, b, equal_nan=True)
        assert (back.name, back.source, back.filters, back.path) == \
            (table.name, table.source, table.filters, table.path)
        assert back.to_dict() == table.to_dict()
        assert load_table(d).sha256 == table.sha256       # load_table takes the dict too


def test_sha256_tracks_content():
    t = load_table()
    d = t.to_dict()
    d["mean_mm"][0] += 0.5
    with pytest.raises(TissueTableError, match="sha256"):
        TissueTable.from_dict(d)
    d["sha256"] = None
    assert TissueTable.from_dict(d).sha256 != t.sha256
    # name and source are not content
    same = TissueTable(name="other", source="x", mean=t.mean, sd=t.sd, direction=t.direction)
    assert same.sha256 == t.sha256


def test_direct_construction_checks_shapes():
    with pytest.raises(TissueTableError, match="36"):
        TissueTable(name="bad", source="", mean=np.zeros(5), sd=np.ones(5), direction=None)


def test_every_pair_key_is_accepted(tmp_path):
    rows = "\n".join(f"{k},5,1" for k in (*MIDLINE, *BILATERAL))
    t = load_table(write(tmp_path, "landmark,mean_mm,sd_mm\n" + rows + "\n"))
    assert t.available.all()
