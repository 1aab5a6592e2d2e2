"""Soft-tissue depth tables: how far each skull landmark lies below its face landmark.

    table = load_table()                                  # built-in 2023 global T-Table
    table = load_table("depths.csv", sex="female")        # a user table, rows selected by sex
    table.mean, table.sd                                  # (36,) mm in SOFT_TISSUE_NAMES order
    table.direction                                       # (36, 3); NaN rows = outward surface normal

The built-in table is the 2023 global T-Table (Hona & Stephan 2024, Int J Legal Med
138(2):519-535; README, How it works), stored in ``data/tissue_tables/global_2023.csv`` with its citation.
It pools sexes, ages and populations; a sex-, age-, BMI- or population-specific table comes from
the user as CSV:

    # source: my lab's female CT sample, 2024      (optional; "# source:" lines become the citation)
    landmark,mean_mm,sd_mm,direction,sex
    zy,7.0,2.5,,female
    zy_l,7.4,2.6,,female                          (a side key overrides the base key for that side)
    me,6.0,2.0,0 0 -1,female                      (a fixed direction in the skull file's frame)
    zy,8.1,3.0,,male

``landmark`` is a pair key of :data:`~skullsearch.SOFT_TISSUE_NAMES` (``n``, ``pg``...), a
bilateral base key (``zy``: both sides) or a side key (``zy_l``); case does not matter.
``mean_mm`` / ``sd_mm`` are millimetres (``NA`` or empty mean: no depth for that landmark).
``direction`` is empty or ``normal`` (push along the skull's outward surface normal) or a vector
``"x y z"`` / ``"x,y,z"`` in the skull file's frame (normalized). Every other column is a filter
column (``sex``, ``age``, ``bmi``, ``population``...): :func:`load_table` keeps the rows whose
cells match the keyword arguments given; a cell may be a label (case-insensitive), a number, a
range (``18-29``, ``<30``, ``>=40``, ``60+``) or empty / ``all`` / ``any`` / ``*`` (matches
everything). Where several rows of a landmark match, the most specific one (most filter cells
matched exactly, not by a wildcard) wins; a remaining tie is an error. Landmarks the table does
not cover get a NaN mean: they cannot be extended and are treated as absent.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skullsearch.encoder.soft_tissue import BILATERAL, MIDLINE, SOFT_TISSUE_NAMES
from skullsearch.errors import SkullsearchError

__all__ = ["BUILTIN_TABLES", "TissueTable", "TissueTableError", "load_table"]

TABLE_DIR = Path(__file__).resolve().parent / "data" / "tissue_tables"
#: Built-in tables: name → file in ``data/tissue_tables``.
BUILTIN_TABLES: dict[str, str] = {"global-2023": "global_2023.csv"}
_BUILTIN_ALIASES = {"global-2023": "global-2023", "global_2023": "global-2023", "global": "global-2023",
                    "t-table": "global-2023", "ttable": "global-2023"}
#: Depths above this are taken as a unit mistake (cm/mm are caught by the SD check only loosely).
MAX_PLAUSIBLE_MM = 100.0

_N = len(SOFT_TISSUE_NAMES)
_INDEX = {name: i for i, name in enumerate(SOFT_TISSUE_NAMES)}
_KEYS = {k.lower(): k for k in (*MIDLINE, *BILATERAL, *SOFT_TISSUE_NAMES)}
_COLUMN_SYNONYMS = {"landmark": "landmark", "name": "landmark", "mean_mm": "mean_mm", "mean": "mean_mm",
                    "sd_mm": "sd_mm", "sd": "sd_mm", "direction": "direction"}
_NA = {"", "na", "n/a", "nan", "-", "none"}
_WILDCARD = {"", "all", "any", "*"}


class TissueTableError(SkullsearchError):
    """A tissue-depth table is missing, malformed, or cannot answer the selection asked of it."""


# ------------------------------------------------------------------------------- the table
@dataclass
class TissueTable:
    """A soft-tissue depth table resolved to the 36 landmark pairs.

    name: ``"global-2023"`` for the built-in table, the file path (as given) for a user table,
    so that ``load_table(t.name, **t.filters)`` loads it again; source: the citation; mean, sd:
    (36,) float64 mm in SOFT_TISSUE_NAMES order (NaN where the table has no depth); direction:
    (36, 3) float64 unit vectors in the skull file's frame, NaN rows = the outward surface normal;
    filters: the row selection used ({"sex": "female"}); path: the file read (None if built in
    memory); sha256: hash of the resolved content (landmark names, mean, sd, direction; not the
    name, source or file formatting), computed here and checked when given.
    """

    name: str
    source: str
    mean: np.ndarray
    sd: np.ndarray
    direction: np.ndarray
    filters: dict = field(default_factory=dict)
    path: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.sd = np.asarray(self.sd, dtype=np.float64).reshape(-1)
        if self.direction is None:
            self.direction = np.full((_N, 3), np.nan)
        self.direction = np.asarray(self.direction, dtype=np.float64)
        if self.mean.shape != (_N,) or self.sd.shape != (_N,) or self.direction.shape != (_N, 3):
            raise TissueTableError(
                f"tissue table {self.name!r}: mean and sd must have {_N} entries and direction "
                f"({_N}, 3), got {self.mean.shape}, {self.sd.shape}, {self.direction.shape}")
        self.filters = {str(k): str(v) for k, v in (self.filters or {}).items()}
        digest = _content_sha256(self.mean, self.sd, self.direction)
        if self.sha256 is not None and self.sha256 != digest:
            raise TissueTableError(
                f"tissue table {self.name!r}: its content does not match the recorded sha256 "
                f"({self.sha256[:12]}… recorded, {digest[:12]}… now); the record was altered")
        self.sha256 = digest

    @property
    def available(self) -> np.ndarray:
        """(36,) bool: the table has a depth for the landmark."""
        return np.isfinite(self.mean)

    @property
    def names(self) -> tuple[str, ...]:
        return SOFT_TISSUE_NAMES

    def row(self, name: str) -> tuple[float, float, np.ndarray]:
        """(mean mm, sd mm, direction (3,) or NaN) of one landmark pair key (``"zy_l"``)."""
        if name not in _INDEX:
            raise TissueTableError(f"unknown landmark {name!r}; valid names: {' '.join(SOFT_TISSUE_NAMES)}")
        i = _INDEX[name]
        return float(self.mean[i]), float(self.sd[i]), self.direction[i].copy()

    def to_dict(self) -> dict:
        """Plain JSON-able dict for the audit log (NaN → None); :meth:`from_dict` inverts it exactly."""
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "filters": dict(self.filters),
            "landmarks": list(SOFT_TISSUE_NAMES),
            "mean_mm": [_num(v) for v in self.mean],
            "sd_mm": [_num(v) for v in self.sd],
            "direction": [None if np.isnan(d).any() else [float(x) for x in d] for d in self.direction],
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TissueTable:
        """Rebuild a table recorded by :meth:`to_dict` (checks its sha256)."""
        try:
            names = list(d.get("landmarks", SOFT_TISSUE_NAMES))
            if sorted(names) != sorted(SOFT_TISSUE_NAMES):
                raise TissueTableError(f"recorded tissue table {d.get('name')!r} has other landmarks "
                                       f"than this version of skullsearch: {names}")
            order = [names.index(n) for n in SOFT_TISSUE_NAMES]
            mean = np.array([_unnum(d["mean_mm"][j]) for j in order], dtype=np.float64)
            sd = np.array([_unnum(d["sd_mm"][j]) for j in order], dtype=np.float64)
            direction = np.array([[np.nan] * 3 if d["direction"][j] is None else d["direction"][j]
                                  for j in order], dtype=np.float64)
            return cls(name=d["name"], source=d.get("source", ""), mean=mean, sd=sd, direction=direction,
                       filters=d.get("filters") or {}, path=d.get("path"), sha256=d.get("sha256"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TissueTableError(f"malformed recorded tissue table: {exc!r}") from None


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _unnum(v) -> float:
    return np.nan if v is None else float(v)


def _content_sha256(mean: np.ndarray, sd: np.ndarray, direction: np.ndarray) -> str:
    payload = {
        "landmarks": list(SOFT_TISSUE_NAMES),
        "mean_mm": [_num(v) for v in mean],
        "sd_mm": [_num(v) for v in sd],
        "direction": [None if np.isnan(d).any() else [float(x) for x in d] for d in direction],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------- loading
def load_table(
    name_or_path: str | os.PathLike | TissueTable | dict | None = None,
    *,
    sex: str | None = None,
    population: str | None = None,
    age: float | str | None = None,
    bmi: float | str | None = None,
    **filters,
) -> TissueTable:
    """Load a tissue-depth table.

    name_or_path: None or ``"global-2023"`` → the built-in 2023 global T-Table; a CSV path → a
    user table (module docstring); a :class:`TissueTable` is returned as is; a dict from
    :meth:`TissueTable.to_dict` is rebuilt. sex / population / age / bmi / any other keyword:
    select the rows whose filter column of that name matches. Raises :class:`TissueTableError`
    (naming the file and line) for unknown landmarks, bad numbers, ambiguous or missing rows.
    """
    selection = {"sex": sex, "population": population, "age": age, "bmi": bmi, **filters}
    selection = {k: v for k, v in selection.items() if v is not None and str(v).strip() != ""}
    if isinstance(name_or_path, TissueTable):
        return name_or_path
    if isinstance(name_or_path, dict):
        return TissueTable.from_dict(name_or_path)
    builtin = _builtin_name(name_or_path)
    if builtin is not None:
        if selection:
            what = ", ".join(f"{k}={v!r}" for k, v in selection.items())
            raise TissueTableError(
                f"the built-in tissue table {builtin!r} (2023 global T-Table) pools sexes, ages and "
                f"populations, so it cannot select {what}; give a sex-specific (or population-specific) "
                f"table with --tissue-table FILE.csv (columns landmark, mean_mm, sd_mm and a "
                f"{'/'.join(selection)} column)")
        path = TABLE_DIR / BUILTIN_TABLES[builtin]
        return _table_from_text(path.read_text(encoding="utf-8"), str(path), selection={},
                                name=builtin, path=None)
    path = Path(os.fspath(name_or_path)).expanduser()
    if not path.is_file():
        raise TissueTableError(
            f"tissue table {str(name_or_path)!r} is neither a file nor a built-in table "
            f"({', '.join(BUILTIN_TABLES)}); give the path of a CSV file with columns "
            f"landmark, mean_mm, sd_mm")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TissueTableError(f"cannot read tissue table {path}: {exc}; save it as UTF-8 CSV") from None
    return _table_from_text(text, str(path), selection=selection, name=os.fspath(name_or_path),
                            path=str(path))


def _builtin_name(name_or_path) -> str | None:
    if name_or_path is None:
        return "global-2023"
    if isinstance(name_or_path, str) and not os.path.exists(name_or_path):
        return _BUILTIN_ALIASES.get(name_or_path.strip().lower())
    return None


def _table_from_text(text: str, origin: str, selection: dict, name: str, path: str | None) -> TissueTable:
    sources, body = _comments_and_body(text, origin)
    # one CSV record per line (quoted cells may hold commas, not line breaks)
    rows = [next(csv.reader([line], skipinitialspace=True), []) for _, line in body]
    header_line, header = body[0][0], [h.strip() for h in rows[0]]
    columns, filter_cols = _header_columns(header, f"{origin} line {header_line}")
    wanted = {str(k).lower(): v for k, v in selection.items()}
    unknown = [k for k in wanted if k not in filter_cols]
    if unknown:
        raise TissueTableError(
            f"{origin} has no {', '.join(map(repr, unknown))} column to select rows by (its filter "
            f"columns: {', '.join(filter_cols) or 'none'}); drop that option or give a table with "
            f"such a column")
    chosen = _selected_rows(body[1:], rows[1:], header, columns, filter_cols, wanted, selection, origin)
    mean = np.full(_N, np.nan)
    sd = np.full(_N, np.nan)
    direction = np.full((_N, 3), np.nan)
    resolved = {key: _one_row(key, candidates, origin) for key, candidates in chosen.items()}
    # base keys first, then side keys override their side
    is_side_key = lambda kv: kv[0] not in MIDLINE and kv[0] not in BILATERAL  # noqa: E731
    for key, (_, _, m, s, d, _) in sorted(resolved.items(), key=is_side_key):
        targets = [f"{key}_l", f"{key}_r"] if key in BILATERAL else [key]
        for t in targets:
            i = _INDEX[t]
            mean[i], sd[i], direction[i] = m, s, d
    source = " ".join(sources) if sources else f"user table {origin}"
    return TissueTable(name=name, source=source, mean=mean, sd=sd, direction=direction,
                       filters={k: str(v) for k, v in selection.items()}, path=path)


def _comments_and_body(text: str, origin: str) -> tuple[list[str], list[tuple[int, str]]]:
    """The ``# source:`` comments and the (line number, line) pairs of a table's non-blank,
    non-comment lines (the first is the header)."""
    sources, body = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            m = re.match(r"#\s*source\s*:\s*(.*)$", stripped, flags=re.IGNORECASE)
            if m:
                sources.append(m.group(1).strip())
            continue
        if stripped:
            body.append((lineno, line))
    if not body:
        raise TissueTableError(f"{origin}: no header line; expected columns landmark, mean_mm, sd_mm")
    return sources, body


def _header_columns(header: list[str], where: str) -> tuple[dict[str, int], dict[str, int]]:
    """(the known columns by their canonical name, the filter columns by lower-case name) → index."""
    columns: dict[str, int] = {}
    filter_cols: dict[str, int] = {}
    for j, h in enumerate(header):
        key = h.lower()
        if key in _COLUMN_SYNONYMS:
            canon = _COLUMN_SYNONYMS[key]
            if canon in columns:
                raise TissueTableError(f"{where}: column {canon!r} appears twice")
            columns[canon] = j
        elif key:
            if key in filter_cols:
                raise TissueTableError(f"{where}: column {h!r} appears twice")
            filter_cols[key] = j
    missing = [c for c in ("landmark", "mean_mm", "sd_mm") if c not in columns]
    if missing:
        raise TissueTableError(
            f"{where}: missing column(s) {', '.join(missing)}; the header must "
            f"name landmark, mean_mm, sd_mm (optional: direction, and filter columns like sex, age, "
            f"bmi, population); found {', '.join(header) or 'nothing'}")
    return columns, filter_cols


def _selected_rows(body, rows, header, columns, filter_cols, wanted, selection, origin) -> dict[str, list]:
    """Parse the data rows and keep those the selection matches: landmark key → list of
    (specificity, line number, mean, sd, direction, the other filter cells)."""
    chosen: dict[str, list] = {}
    n_rows = 0
    seen_values: dict[str, set] = {k: set() for k in wanted}
    for (lineno, _), cells in zip(body, rows, strict=True):
        if not any(c.strip() for c in cells):
            continue
        n_rows += 1
        where = f"{origin} line {lineno}"
        if len(cells) > len(header):
            raise TissueTableError(f"{where}: {len(cells)} cells but the header has {len(header)} columns "
                                   f"(quote a direction like \"0,0,-1\")")
        cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
        specificity, ok = 0, True
        for key, value in wanted.items():
            cell = cells[filter_cols[key]]
            seen_values[key].add(cell or "(empty)")
            match, exact = _cell_matches(cell, value)
            ok &= match
            specificity += exact
        if not ok:
            continue
        key = _landmark_key(cells[columns["landmark"]], where)
        mean, sd = _depth_cells(cells[columns["mean_mm"]], cells[columns["sd_mm"]], where)
        direction = _direction(cells[columns["direction"]] if "direction" in columns else "", where)
        others = {k: cells[j] for k, j in filter_cols.items() if k not in wanted}
        chosen.setdefault(key, []).append((specificity, lineno, mean, sd, direction, others))
    if n_rows == 0:
        raise TissueTableError(f"{origin}: the table has a header but no rows")
    if not chosen:
        what = ", ".join(f"{k}={v!r}" for k, v in selection.items())
        present = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in seen_values.items())
        raise TissueTableError(f"{origin}: no row matches {what} (values in the table: {present})")
    return chosen


def _depth_cells(mean_cell: str, sd_cell: str, where: str) -> tuple[float, float]:
    """A row's (mean, sd) mm: NaN for a "not available" mean; checked to be millimetres and positive."""
    if mean_cell.lower() in _NA:
        return np.nan, np.nan
    mean = _number(mean_cell, "mean_mm", where)
    sd = _number(sd_cell, "sd_mm", where)
    if mean > MAX_PLAUSIBLE_MM:
        raise TissueTableError(f"{where}: mean_mm {mean:g} is not a plausible soft-tissue depth; "
                               f"the table must be in millimetres")
    if sd <= 0:
        raise TissueTableError(f"{where}: sd_mm must be positive, got {sd_cell!r}")
    return mean, sd


def _one_row(key: str, candidates: list, origin: str) -> tuple:
    """The most specific matching row of a landmark; two equally specific ones are an error that
    says how to tell them apart."""
    candidates.sort(key=lambda c: -c[0])
    best = [c for c in candidates if c[0] == candidates[0][0]]
    if len(best) > 1:
        lines_ = ", ".join(str(c[1]) for c in best)
        differing = sorted({k for c in best for k in c[5] if c[5][k] != best[0][5][k]})
        hint = (f"they differ in {', '.join(differing)}: select with "
                f"{', '.join(f'{k}=...' for k in differing)}" if differing
                else "remove the duplicate or add a filter column")
        raise TissueTableError(f"{origin}: {len(best)} rows for landmark {key!r} (lines {lines_}); "
                               f"{hint}")
    return best[0]


def _landmark_key(cell: str, where: str) -> str:
    key = _KEYS.get(cell.strip().lower())
    if key is None:
        raise TissueTableError(
            f"{where}: unknown landmark {cell!r}; use a pair key ({' '.join(MIDLINE)}), a bilateral "
            f"key for both sides ({' '.join(BILATERAL)}) or a side key like zy_l / zy_r")
    return key


def _number(cell: str, column: str, where: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TissueTableError(f"{where}: {column} {cell!r} is not a number (millimetres)") from None
    if not math.isfinite(value):
        raise TissueTableError(f"{where}: {column} {cell!r} is not a finite number")
    if value < 0:
        raise TissueTableError(f"{where}: {column} {cell!r} is negative; depths are millimetres ≥ 0")
    return value


def _direction(cell: str, where: str) -> np.ndarray:
    text = cell.strip().lower()
    if text in ("", "normal", "n", "surface normal"):
        return np.full(3, np.nan)
    parts = [p for p in re.split(r"[\s,;]+", text.strip("()[]")) if p]
    try:
        vec = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        vec = np.zeros(0)
    if vec.shape != (3,) or not np.isfinite(vec).all():
        raise TissueTableError(f"{where}: direction {cell!r} is not \"normal\" or a vector \"x y z\"")
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        raise TissueTableError(f"{where}: direction {cell!r} is the zero vector")
    return vec / norm


_RANGE = re.compile(r"^(-?\d+(?:\.\d*)?)\s*(?:-|–|—|to|\.\.)\s*(-?\d+(?:\.\d*)?)$")
_BOUND = re.compile(r"^(<=|>=|≤|≥|<|>)\s*(-?\d+(?:\.\d*)?)$")
_PLUS = re.compile(r"^(-?\d+(?:\.\d*)?)\s*\+$")


def _cell_matches(cell: str, value) -> tuple[bool, bool]:
    """(matches, matched exactly) for one filter cell against the value asked for."""
    text = cell.strip().lower()
    if text in _WILDCARD:
        return True, False
    wanted = str(value).strip().lower()
    if text == wanted:
        return True, True
    try:
        x = float(value)
    except (TypeError, ValueError):
        return False, False
    try:
        return float(text) == x, float(text) == x
    except ValueError:
        pass
    if m := _RANGE.match(text):
        lo, hi = float(m.group(1)), float(m.group(2))
        return lo <= x <= hi, lo <= x <= hi
    if m := _BOUND.match(text):
        op, b = m.group(1), float(m.group(2))
        hit = {"<": x < b, ">": x > b, "<=": x <= b, "≤": x <= b, ">=": x >= b, "≥": x >= b}[op]
        return hit, hit
    if m := _PLUS.match(text):
        hit = x >= float(m.group(1))
        return hit, hit
    return False, False
