"""Where skullsearch caches what it builds (encoder/cache.py): $SKULLSEARCH_CACHE, else
$XDG_CACHE_HOME/skullsearch, else ~/.cache/skullsearch."""

from pathlib import Path

from skullsearch.encoder.cache import cache_dir


def test_skullsearch_cache_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("SKULLSEARCH_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"  # as given: no "skullsearch" appended


def test_xdg_cache_home_next(monkeypatch, tmp_path):
    monkeypatch.delenv("SKULLSEARCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "skullsearch"


def test_home_cache_last(monkeypatch, tmp_path):
    monkeypatch.delenv("SKULLSEARCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "skullsearch"


def test_empty_variables_count_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("SKULLSEARCH_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "skullsearch"


def test_the_folder_is_not_created_by_asking(monkeypatch, tmp_path):
    monkeypatch.setenv("SKULLSEARCH_CACHE", str(tmp_path / "later"))
    assert isinstance(cache_dir(), Path) and not (tmp_path / "later").exists()
