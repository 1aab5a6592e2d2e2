"""Errors a user can cause. Each one says what to do about it.

The CLI prints a :class:`SkullsearchError` on stderr as one line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SkullsearchError(Exception):
    """Base class of every error a user can cause (bad file, wrong units, unknown name...)."""

    exit_code = 2


class FaceModelError(SkullsearchError):
    """A face-model file is missing, malformed or incompatible."""


class UnsafePickleError(FaceModelError):
    """A pickle asked to import or call something outside the allowed numeric types."""


class LandmarkError(SkullsearchError):
    """A landmark name, embedding or annotation is unknown or malformed."""


class DependencyError(SkullsearchError):
    """An optional dependency (or its offline data) is not available."""


class EncoderCheckpointError(SkullsearchError):
    """An encoder checkpoint is missing, of another format, or trained for another face model."""


class SkullError(SkullsearchError):
    """A skull mesh or its landmark file is missing, unreadable, in the wrong units or implausible."""


class SkullLandmarkError(SkullError, LandmarkError):
    """A skull landmark file names an unknown or duplicate landmark, or has malformed coordinates."""
