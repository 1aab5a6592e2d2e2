"""The skull side: mesh and landmark I/O, tissue-depth tables, extended landmarks, shortlist,
exact superimposition scores, ranking, the audit log.

Imports :mod:`skullsearch.index` and :mod:`skullsearch.encoder` only (README, Layout: imports
run cli → inpaint → retrieval → index → encoder).
"""

from skullsearch.retrieval.audit import history, load_record
from skullsearch.retrieval.query import Candidate, QueryResult, query, query_points, rerun
from skullsearch.retrieval.score import ScoreConfig, score
from skullsearch.retrieval.skull import Skull

__all__ = ["Candidate", "QueryResult", "ScoreConfig", "Skull", "history", "load_record", "query",
           "query_points", "rerun", "score"]
