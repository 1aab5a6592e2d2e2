"""A gallery's catalog: read-only DuckDB views over its committed shards.

Views ``faces``, ``images``, ``failures`` and ``person_groups`` live in one in-memory database per
gallery object (:class:`Catalog`, ``gallery.catalog``), redefined when the shard list changes and
kept otherwise; every :meth:`Catalog.connect` gives its own cursor. The gallery's files are never
opened for writing.
"""

from __future__ import annotations

import threading
from pathlib import Path

from skullsearch.index import persons, schema
from skullsearch.index.store import ShardInfo


def arrow(relation):
    """A DuckDB relation as a pyarrow.Table (the method's name changed across DuckDB releases)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


class Catalog:
    """The catalog of the gallery at ``path`` (module docstring); ``shards()``: its committed
    shards now (the gallery's list, read under the catalog's lock)."""

    def __init__(self, path: Path, shards):
        self.path = Path(path)
        self.shards = shards
        self.held = None  # (shard key, duckdb connection): see connect()
        self.lock = threading.Lock()

    def _files(self, kind: str, shards: list[ShardInfo]) -> list[str]:
        return [str(s.file(self.path, kind)) for s in shards]

    def connect(self):
        """A DuckDB connection with read-only views ``faces``, ``images``, ``failures`` over the
        committed shards (the gallery's files are never opened for writing).

        The views live in one in-memory database per gallery object, redefined when the shard
        list changes (a shard committed by a concurrent ingest is seen by the next call; shards
        are immutable once committed) and kept otherwise, so that a call does not open a
        database and read every shard's Parquet schema again (at 1M faces a catalog lookup of a
        query's 2,000 candidates took 190 ms that way, 113 ms now). Each call returns its own
        cursor: cursors may be used from several threads at once, and what one registers
        (``con.register``) the others do not see.
        :meth:`close` closes the database.
        """
        with self.lock:  # (the shard list read under the lock: views never go back in time)
            shards = self.shards()
            groups = self.path / persons.FILE
            key = (tuple((s.number, s.faces, s.images, s.created) for s in shards),
                   groups.stat().st_mtime_ns if groups.exists() else None)
            if self.held is None:
                import duckdb

                con = duckdb.connect()
                for name, empty in (("faces", schema.without_float16(schema.empty_faces())),
                                    ("images", schema.empty_images())):
                    con.register("_empty", empty)
                    con.execute(f"CREATE TABLE _empty_{name} AS SELECT * FROM _empty")
                    con.unregister("_empty")
                self.held = (None, con)
            held, con = self.held
            if held != key:
                self._define_views(con, shards, key[1] is not None)
                self.held = (key, con)
            return con.cursor()

    def _define_views(self, con, shards: list[ShardInfo], groups: bool = False) -> None:
        """(Re)define the catalog views over these shards, in one transaction (a query running on
        another cursor sees the old views or the new ones, never a mix; a cursor follows the
        latest views from one statement to the next). groups: the saved person groups exist
        (:mod:`~skullsearch.index.persons`; else the view ``person_groups`` is empty)."""
        if shards:
            faces = ", ".join(repr(f) for f in self._files("faces.parquet", shards))
            images = ", ".join(repr(f) for f in self._files("images.parquet", shards))
            # shards written before a column was added lack it: matched by name, NULL there
            src = f"read_parquet([{faces}], union_by_name = true)"
            have = {d[0] for d in con.execute(f"SELECT * FROM {src} LIMIT 0").description}
            missing = "".join(f", NULL::{t} AS {c}" for c, t in schema.LATER_FACE_COLUMNS.items()
                              if c not in have)
            # flags written before the criterion was recorded came from the identity criterion
            criterion = ("coalesce(near_duplicate_criterion, CASE WHEN near_duplicate_of IS NOT NULL "
                         "THEN 'identity' END) AS near_duplicate_criterion")
            faces_sql = f"SELECT * REPLACE ({criterion}) FROM (SELECT *{missing} FROM {src})"
            images_sql = f"SELECT * FROM read_parquet([{images}])"
        else:
            faces_sql, images_sql = "SELECT * FROM _empty_faces", "SELECT * FROM _empty_images"
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE OR REPLACE VIEW faces AS {faces_sql}")
            con.execute(f"CREATE OR REPLACE VIEW images AS {images_sql}")
            con.execute("CREATE OR REPLACE VIEW failures AS SELECT * FROM images WHERE status <> 'ok'")
            con.execute("CREATE OR REPLACE VIEW person_groups AS " + (
                f"SELECT * FROM read_parquet({str(self.path / persons.FILE)!r})" if groups else
                "SELECT NULL::BIGINT AS face_id, NULL::BIGINT AS person_group, NULL::INTEGER AS group_size "
                "WHERE false"))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the catalog's database (cursors from :meth:`connect` stop working); a later
        call opens a new one."""
        with self.lock:
            if self.held is not None:
                self.held[1].close()
                self.held = None

