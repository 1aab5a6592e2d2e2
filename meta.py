"""The package's version, from its installed metadata (a shared module below every layer)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skullsearch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"
