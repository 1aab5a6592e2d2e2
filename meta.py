"""The package's version, from its installed metadata (a shared module below every layer)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skullsearch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict):
    """A module ``__getattr__`` (PEP 562) that imports each public name of ``package`` on first
    use from the module ``exports`` names for it, and keeps it in ``namespace`` (the package's
    globals) so that later lookups are plain attribute reads."""
    import importlib

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
