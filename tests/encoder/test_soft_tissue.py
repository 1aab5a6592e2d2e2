"""The 36 soft-tissue point names (encoder/soft_tissue.py): their fixed order, the bilateral
helpers and the name check's error."""

import pytest

from skullsearch.encoder import soft_tissue as st
from skullsearch.errors import LandmarkError, SkullsearchError


def test_36_unique_names_midline_first_then_left_right_pairs():
    names = st.SOFT_TISSUE_NAMES
    assert len(names) == 36 == len(set(names))
    assert len(st.MIDLINE) == 14 and len(st.BILATERAL) == 11
    assert names[:14] == st.MIDLINE
    assert names[14:18] == ("mso_l", "mso_r", "mio_l", "mio_r")
    assert names[-2:] == ("mmb_l", "mmb_r")
    # every array in skullsearch indexes by these positions: pin a few
    assert names.index("n") == 3 and names.index("pr") == 8 and names.index("zy_l") == 22


def test_display_and_long_names_cover_every_pair_key():
    keys = set(st.MIDLINE) | set(st.BILATERAL)
    assert set(st.FACE_POINT_NAMES) == keys
    assert set(st.LONG_NAMES) == keys
    assert st.FACE_POINT_NAMES["n"] == "se′" and st.FACE_POINT_NAMES["pr"] == "ls′"
    assert st.LONG_NAMES["zy"] == "zygion"


def test_base_key_strips_the_side_of_bilateral_names_only():
    assert st.base_key("zy_l") == "zy" and st.base_key("sM2_r") == "sM2"
    assert st.base_key("pg") == "pg"
    assert st.base_key("foo_l") == "foo_l"  # not a bilateral key: unchanged
    assert {st.base_key(n) for n in st.SOFT_TISSUE_NAMES} == set(st.MIDLINE) | set(st.BILATERAL)


def test_mirror_name_swaps_sides_and_keeps_the_midline():
    assert st.mirror_name("go_l") == "go_r" and st.mirror_name("go_r") == "go_l"
    assert st.mirror_name("me") == "me"
    mirrored = [st.mirror_name(n) for n in st.SOFT_TISSUE_NAMES]
    assert sorted(mirrored) == sorted(st.SOFT_TISSUE_NAMES)  # a permutation of the 36
    assert [st.mirror_name(n) for n in mirrored] == list(st.SOFT_TISSUE_NAMES)  # an involution
    assert sum(m != n for m, n in zip(mirrored, st.SOFT_TISSUE_NAMES, strict=True)) == 22


def test_check_names_gives_indices_in_the_order_asked():
    assert st.check_names(["zy_r", "n", "op"]) == [23, 3, 0]
    assert st.check_names(list(st.SOFT_TISSUE_NAMES)) == list(range(36))
    assert st.check_names([]) == []


def test_check_names_lists_every_unknown_name_and_the_valid_ones():
    with pytest.raises(LandmarkError) as info:
        st.check_names(["n", "zy", "nasion"])
    msg = str(info.value)
    assert "'zy', 'nasion'" in msg  # both unknown names, in order ("zy" needs a side)
    assert "valid names are: op v g n" in msg and msg.endswith("mmb_l mmb_r")
    assert isinstance(info.value, SkullsearchError)  # a user error: the CLI prints it on one line
