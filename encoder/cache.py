"""Where skullsearch caches what it builds once (the anny head model, annotations, detector
embeddings calibrated by the user): ``$SKULLSEARCH_CACHE``, else ``$XDG_CACHE_HOME/skullsearch``,
else ``~/.cache/skullsearch``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SKULLSEARCH_CACHE``, else ``$XDG_CACHE_HOME/skullsearch``, else ``~/.cache/skullsearch``."""
    root = os.environ.get("SKULLSEARCH_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "skullsearch"
