"""The skull side: mesh and landmark I/O, tissue-depth tables, extended landmarks, shortlist,
exact superimposition scores, ranking, the audit log.

Imports :mod:`skullsearch.index` and :mod:`skullsearch.encoder` only (README, Layout: imports
run cli → inpaint → retrieval → index → encoder).
"""

from skullsearch.retrieval.query import Candidate, Gallery, QueryResult, query, query_points
from skullsearch.retrieval.score import ScoreConfig, score
from skullsearch.retrieval.skull import Skull

__all__ = ["Candidate", "Gallery", "QueryResult", "ScoreConfig", "Skull", "query", "query_points", "score"]
