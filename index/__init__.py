"""The gallery on disk: DuckDB catalog over Parquet shards, FAISS indexes, the ingest pipeline.

Imports only :mod:`skullsearch.encoder` (README, Layout: imports run one way).
"""

from skullsearch.index.gallery import Gallery
from skullsearch.index.ingest import IngestReport, Source, ingest
from skullsearch.index.store import GalleryError

__all__ = ["Gallery", "GalleryError", "IngestReport", "Source", "ingest"]
