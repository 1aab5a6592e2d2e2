"""Atomic file writes: a temporary file beside the target, flushed to disk, renamed over it.

A reader sees the old file or the new one, never a half-written one; a writer killed mid-way
leaves only a hidden ``.NAME.*.tmp`` file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

#: the process's umask (read once: setting it is the only way to read it): an atomic write gets
#: the permissions an ordinary open() would give, not mkstemp's private 0600
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file object; on a clean exit it is fsynced and renamed to ``path``, on an
    exception it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data, sort_keys: bool = True) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=sort_keys)
