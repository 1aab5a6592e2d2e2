"""Atomic file writes (encoder/atomic.py): the content arrives whole, a failed write leaves the
old file (or none) and no temporary file."""

import json
import os
import stat

import pytest

from skullsearch.encoder.atomic import atomic_file, write_json_atomic


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_the_content_arrives_and_parent_folders_are_made(tmp_path):
    target = tmp_path / "a" / "b" / "data.bin"
    with atomic_file(target) as fh:
        fh.write(b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert leftovers(target.parent) == []


def test_text_mode_and_replacing_an_existing_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    with atomic_file(target, "w") as fh:
        fh.write("new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"


def test_until_the_block_ends_readers_see_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with atomic_file(target, "w") as fh:
        fh.write("new")
        fh.flush()
        assert target.read_text() == "old"
        (tmp,) = leftovers(tmp_path)  # the temporary file: hidden, beside the target
        assert tmp.startswith(".state.json.")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failure_leaves_the_old_file_and_no_temporary_file(tmp_path, exc):
    target = tmp_path / "index.json"
    target.write_text("old")
    with pytest.raises(type(exc)):
        with atomic_file(target, "w") as fh:
            fh.write("half of the new")
            raise exc
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_a_failed_first_write_leaves_no_file_at_all(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError):
        with atomic_file(target) as fh:
            fh.write(b"x")
            raise ValueError("no")
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_writes_indented_sorted_json(tmp_path):
    target = tmp_path / "rec.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert json.loads(text) == {"b": 1, "a": [1, 2]}
    assert text.index('"a"') < text.index('"b"') and text.startswith('{\n "a"')  # indent 1, sorted
    write_json_atomic(target, {"b": 1, "a": 2}, sort_keys=False)
    assert target.read_text().index('"b"') < target.read_text().index('"a"')


def test_unserializable_json_keeps_the_old_file(tmp_path):
    """json.dump writes part of the document before it meets the bad value: none of it shows."""
    target = tmp_path / "rec.json"
    write_json_atomic(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": 1, "z": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert leftovers(tmp_path) == []


def test_an_atomic_write_gets_the_permissions_of_an_ordinary_write(tmp_path):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
        write_json_atomic(tmp_path / "atomic.json", {})
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic.json").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o644
