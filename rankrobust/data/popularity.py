"""Item popularity: the one definition, and the training matrix each protocol counts it on.

`item_popularity` is the only place that counts an item's popularity; every
caller names the variant (the matrix) it needs, so a reader can tell at the
call site which popularity is meant and why (`POPULARITY_VARIANTS`).
"""
from __future__ import annotations

import numpy as np

from rankrobust.data.interactions import Interactions

__all__ = ["POPULARITY_VARIANTS", "item_popularity"]

#: variant → the matrix M it counts and the protocols that use it (docs/PROTOCOLS.md), as `item_popularity` says
POPULARITY_VARIANTS: dict[str, str] = {
    "clean": "the clean training split (no injected pair, the held-out false-negative pool included)",
    "seen": "the clean training split ∪ the injected noisy positives (what evaluation masks as seen)",
    "trained": "the pairs trained on (held-out pool withheld, injected noisy positives included)",
    "all": "every interaction of the dataset (train ∪ valid ∪ test)",
}


def item_popularity(pairs: Interactions, variant: str) -> np.ndarray:
    """Popularity of every item, int64 ``[n_items]``: φ_M(i) = |{u : (u, i) ∈ M}|, M = ``pairs``.

    The one definition of item popularity in rankrobust: the number of users
    who have item i in a user × item matrix M (each pair counts once; items
    without a pair count 0).  Protocols differ only in which matrix M they
    count, named by ``variant``; the caller passes that matrix:

    - ``"clean"``: M = the clean training split, before any noise and with the
      held-out false-negative pool still in.  What a practitioner observes:
      the IPS propensities p_i ∝ max(φ_i, 1)^γ (docs/PROTOCOLS.md §11), the
      ``popularity`` noise kind's weights (fake positive j ∝ φ_j^α, §3) and
      the t-SNE colours of fig. 7.  It does not depend on the noise settings,
      so cells of a noise sweep share it.
    - ``"seen"``: M = clean ∪ injected noisy positives, the matrix evaluation
      masks: the popularity groups, head and tail of the fairness metrics
      (§5, ``analysis/popularity.py``) and the most-popular baseline (§4),
      which rank and group the items the way a model trained on the noisy
      data sees them.
    - ``"trained"``: M = the pairs the model trains on (clean minus the
      ``heldout`` false-negative pool, plus the injected noisy positives):
      the ``popularity`` negative sampler (P(i) ∝ φ_i^α, §2) and the head of
      the popularity score gap (§6), which act on the training pairs.
    - ``"all"``: M = train ∪ valid ∪ test, every interaction: the
      popularity-shift test draws interaction (u, i) ∝ 1/φ_i (§11).

    Without noise and without a ``heldout`` pool, ``clean``, ``seen`` and
    ``trained`` are the same matrix.  ``variant`` is checked (ValueError
    naming the valid ones) and recorded at the call site; the count itself is
    the same for every variant.
    """
    if variant not in POPULARITY_VARIANTS:
        raise ValueError(f"popularity variant must be one of {list(POPULARITY_VARIANTS)}, got {variant!r}")
    return pairs.item_counts()
