"""The shortlist search: exact masked and weighted L2 through the augmented inner-product index."""

import numpy as np

from skullsearch.index import vectors
from skullsearch.retrieval.query import shortlist_weights
from skullsearch.retrieval.score import ScoreConfig


def test_weighted_masked_search_is_exact_on_a_flat_index():
    rng = np.random.default_rng(0)
    base = rng.normal(scale=30.0, size=(500, 36, 3)).astype(np.float32)
    index = vectors.new_index(vectors.AUG_DIM, "ip", kind="flat")
    vectors.add(index, vectors.augment_base(base.reshape(500, -1)), np.arange(500))
    q = base[17] + rng.normal(scale=2.0, size=(36, 3)).astype(np.float32)
    present = rng.random(36) > 0.25
    w = present * rng.uniform(0.1, 3.0, 36)
    canon = (q * present[:, None]).reshape(1, -1)
    scores, ids = vectors.search(index, vectors.augment_query(canon, w[None]), k=500)
    dist = vectors.masked_distance(scores, canon, w[None])[0]
    brute = (w * ((base - q) ** 2).sum(-1)).sum(1)
    np.testing.assert_allclose(dist, brute[ids[0]], rtol=1e-4, atol=1e-2)
    assert ids[0][0] == 17
    order = np.argsort(brute)
    assert (ids[0][:20] == order[:20]).mean() >= 0.95  # float32 inner products: near-ties may swap


def test_shortlist_weights_follow_the_ranking():
    sd = np.linspace(1.0, 7.0, 36)
    present = np.ones(36, bool)
    present[[3, 9, 30]] = False
    cfg = ScoreConfig()
    plain = shortlist_weights(present, sd, cfg, "s")
    np.testing.assert_array_equal(plain, present.astype(float))
    lik = shortlist_weights(present, sd, cfg, "likelihood")
    assert (lik[~present] == 0).all() and np.isclose(lik[present].mean(), 1.0)
    ratio = lik[present] * cfg.sigma(sd)[present] ** 2
    np.testing.assert_allclose(ratio, ratio[0])  # ∝ 1/σ²


def test_shortlist_weights_where_an_absent_landmark_has_no_sd():
    """A table without a depth for a landmark gives it SD NaN (and no presence): its weight is 0,
    not NaN (a NaN in the query vector made every inner product NaN)."""
    sd = np.full(36, 2.0)
    sd[5] = np.nan
    present = np.ones(36, bool)
    present[5] = False
    for rank_by in ("s", "likelihood"):
        w = shortlist_weights(present, sd, ScoreConfig(), rank_by)
        assert np.isfinite(w).all() and w[5] == 0 and np.allclose(w[present], 1.0)
