"""The 36 soft-tissue points of the 2023 global T-Table and their names.

A point is named by the *pair key* of its skull landmark (README, How it works: soft-tissue
points): the face point over nasion (soft-tissue sellion, se′) is ``"n"``, the one over
prosthion (labrale superius, ls′) is ``"pr"``. Bilateral points carry ``_l`` / ``_r`` for the
subject's left / right; in the face frame (+y up, +z out of the face) the subject's left is +x.

The order of :data:`SOFT_TISSUE_NAMES` is fixed: every ``(n, 36, 3)`` array in skullsearch uses it.
"""

from __future__ import annotations

from skullsearch.errors import LandmarkError

#: Midline pair keys, top of the head to the chin (T-Table order).
MIDLINE: tuple[str, ...] = (
    "op", "v", "g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg", "gn", "me",
)
#: Bilateral pair keys (each gets ``_l`` and ``_r``).
BILATERAL: tuple[str, ...] = (
    "mso", "mio", "ac", "go", "zy", "sC", "iC", "sM2", "iM2", "mr", "mmb",
)
#: The 36 names in their fixed order: 14 midline, then each bilateral key as ``_l``, ``_r``.
SOFT_TISSUE_NAMES: tuple[str, ...] = MIDLINE + tuple(
    f"{key}_{side}" for key in BILATERAL for side in ("l", "r")
)

#: Skull landmark → facial landmark names of the T-Table, for display.
FACE_POINT_NAMES: dict[str, str] = {
    "op": "op′", "v": "v′", "g": "g′", "n": "se′", "mn": "mn′", "rhi": "rhi′",
    "ss": "sn′", "mp": "mp′", "pr": "ls′", "id": "li′", "sm": "sm′", "pg": "pg′",
    "gn": "gn′", "me": "me′", "mso": "mso′", "mio": "mio′", "ac": "ac′", "go": "go′",
    "zy": "zy′", "sC": "sC′", "iC": "iC′", "sM2": "sM2′", "iM2": "iM2′", "mr": "mr′",
    "mmb": "mmb′",
}

#: Full anatomical names of the skull landmarks.
LONG_NAMES: dict[str, str] = {
    "op": "opisthocranion", "v": "vertex", "g": "glabella", "n": "nasion",
    "mn": "mid-nasal", "rhi": "rhinion", "ss": "subspinale", "mp": "mid-philtrum",
    "pr": "prosthion", "id": "infradentale", "sm": "supramentale", "pg": "pogonion",
    "gn": "gnathion", "me": "menton", "mso": "mid-supraorbital", "mio": "mid-infraorbital",
    "ac": "alar curvature", "go": "gonion", "zy": "zygion", "sC": "supracanine",
    "iC": "infracanine", "sM2": "supra-M2", "iM2": "infra-M2", "mr": "mid-ramus",
    "mmb": "mid-mandibular border",
}


def base_key(name: str) -> str:
    """``"zy_l"`` → ``"zy"``; midline names are returned unchanged."""
    if name.endswith(("_l", "_r")) and name[:-2] in BILATERAL:
        return name[:-2]
    return name


def mirror_name(name: str) -> str:
    """The bilateral counterpart (``"zy_l"`` ↔ ``"zy_r"``); midline names map to themselves."""
    if name.endswith("_l"):
        return name[:-2] + "_r"
    if name.endswith("_r"):
        return name[:-2] + "_l"
    return name


def check_names(names) -> list[int]:
    """Indices of ``names`` in :data:`SOFT_TISSUE_NAMES`; an unknown name raises
    :class:`LandmarkError` listing the valid ones."""
    index = {n: i for i, n in enumerate(SOFT_TISSUE_NAMES)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise LandmarkError(
            f"unknown soft-tissue landmark(s) {', '.join(map(repr, unknown))}; "
            f"valid names are: {' '.join(SOFT_TISSUE_NAMES)}"
        )
    return [index[n] for n in names]
