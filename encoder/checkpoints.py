"""Reading skullsearch's weights-only checkpoints (the CNN encoder, the inpainter).

A checkpoint is a plain dict saved with ``torch.save`` and read with
``torch.load(weights_only=True)``, so reading one never unpickles arbitrary objects; it carries
``format`` and ``version`` keys that say what it is.
"""

from __future__ import annotations

from pathlib import Path

import torch


def read_checkpoint(path: Path, *, fmt: str, version: int, what: str, error: type[Exception],
                    hint: str, retrain: str, map_location="cpu") -> dict:
    """The checkpoint dict at ``path``, checked to be ``fmt`` at ``version``.

    what: the kind in messages ("encoder", "inpainter"); error: the SkullsearchError subclass
    raised for a file that is unreadable, of another format or of another version; hint: what to
    do about a wrong file ("give a file written by …"); retrain: how to make a new one (the
    end of "upgrade skullsearch or …").
    """
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise error(
            f"{path.name} is not a skullsearch {what} checkpoint (it could not be read as a "
            f"plain torch file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            f"{hint}") from exc
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise error(
            f"{path.name} is not a skullsearch {what} checkpoint (format "
            f"{ck.get('format') if isinstance(ck, dict) else type(ck).__name__!r}, expected "
            f"{fmt!r}); {hint}")
    if ck.get("version") != version:
        raise error(
            f"{path.name} is {what} checkpoint version {ck.get('version')!r}; this skullsearch "
            f"reads version {version}: upgrade skullsearch or {retrain}")
    return ck
