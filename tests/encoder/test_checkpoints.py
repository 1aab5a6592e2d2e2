"""Reading weights-only checkpoints (encoder/checkpoints.py): a good file comes back whole; every
wrong file raises the caller's error class with a message that says what is wrong."""

import collections
import os

import pytest
import torch

from skullsearch.encoder.checkpoints import read_checkpoint
from skullsearch.errors import SkullsearchError


class ToyCheckpointError(SkullsearchError):
    pass


class Payload:
    """Unpickling this makes a folder: a weights-only load must refuse it before that happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


ARGS = dict(fmt="toy-net", version=3, what="toy", error=ToyCheckpointError,
            hint="give a file written by save_toy", retrain="retrain the toy")


def read(path):
    return read_checkpoint(path, **ARGS)


def test_a_good_checkpoint_comes_back_with_its_tensors_on_the_cpu(tmp_path):
    state = collections.OrderedDict(w=torch.arange(6.0).reshape(2, 3))
    torch.save({"format": "toy-net", "version": 3, "state_dict": state, "config": {"width": 8},
                "note": "ok"}, tmp_path / "net.pt")
    ck = read(tmp_path / "net.pt")
    assert ck["config"] == {"width": 8} and ck["note"] == "ok"
    assert torch.equal(ck["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    assert ck["state_dict"]["w"].device.type == "cpu"


@pytest.mark.parametrize("content, shown", [
    ({"format": "other-net", "version": 3}, "format 'other-net', expected 'toy-net'"),
    ({"version": 3}, "format None, expected 'toy-net'"),
    ([1, 2, 3], "format 'list', expected 'toy-net'"),
    (torch.zeros(3), "format 'Tensor', expected 'toy-net'"),
])
def test_another_format_is_refused_with_the_hint(tmp_path, content, shown):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(ToyCheckpointError) as info:
        read(tmp_path / "x.pt")
    msg = str(info.value)
    assert msg.startswith("x.pt is not a skullsearch toy checkpoint")
    assert shown in msg and msg.endswith("; give a file written by save_toy")


@pytest.mark.parametrize("version", [2, 4, None, "3"])
def test_another_version_says_to_upgrade_or_retrain(tmp_path, version):
    torch.save({"format": "toy-net", "version": version}, tmp_path / "old.pt")
    with pytest.raises(ToyCheckpointError,
                       match=rf"old\.pt is toy checkpoint version {version!r}; this skullsearch reads "
                             r"version 3: upgrade skullsearch or retrain the toy"):
        read(tmp_path / "old.pt")


def test_a_file_that_is_not_a_torch_file_is_refused(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    with pytest.raises(ToyCheckpointError, match=r"notes\.pt is not a skullsearch toy checkpoint \(it could "
                                                 r"not be read as a plain torch file: .+\); give a file"):
        read(tmp_path / "notes.pt")


def test_an_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ToyCheckpointError, match="could not be read as a plain torch file") as info:
        read(tmp_path / "empty.pt")
    assert info.value.__cause__ is not None  # the reader's own error is kept for a traceback


def test_a_pickled_object_is_never_built(tmp_path):
    """weights_only: a checkpoint that would call a function when unpickled is refused unread."""
    marker = tmp_path / "was-unpickled"
    torch.save({"format": "toy-net", "version": 3, "evil": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ToyCheckpointError, match="could not be read as a plain torch file"):
        read(tmp_path / "evil.pt")
    assert not marker.exists()
