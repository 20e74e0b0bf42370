"""Recommendation losses as small pure functions, one registry (docs/PROTOCOLS.md §1, §10; docs/LOSSES.md).

Fifteen losses, by family:

- ``base``: the pointwise and pairwise classics ``bpr``, ``bce``, ``mse``,
  ``ccl`` and the softmax family ``sl``, ``bsl`` (with the helpers and the
  `LOSSES` registry every loss uses);
- ``successors``: the losses after BSL, ``psl``, ``slatk``, ``advinfonce``,
  ``llpauc``, ``drrl``;
- ``denoising``: the noise-robust baselines ``tce``, ``rce`` (noisy
  positives) and ``dcl``, ``rince`` (false negatives).

Each function has the signature ``fn(pos [B], neg [B, M], *, users=None,
neg_mask=None, **hyper) -> scalar`` and is registered once with its options
(`rankrobust.losses.base`).  Stateful losses (``slatk``, ``advinfonce``,
``llpauc``, ``drrl``, ``tce``) get their state through the one mechanism of
`rankrobust.loss_state`.  Everything is importable from here:
``from rankrobust.losses import LOSSES, get_loss, sl, bsl``.
"""
from __future__ import annotations

from .base import *  # noqa: F401,F403
from .base import (BSL_MODES, LOSSES, BSLOptions, CCLOptions, SLOptions, _check_positive, _check_shapes,
                   _group_logmeanexp, _masked_logsumexp, _masked_mean, _masked_sum, _neg_count, bce, bpr, bsl,
                   bsl_temperatures, ccl, get_loss, groups_positives, mse, sl, state_keywords)
from .successors import *  # noqa: F401,F403
from .successors import advinfonce, drrl, llpauc, psl, slatk
from .denoising import *  # noqa: F401,F403  (registered after the successors: the order of LOSSES)
from .denoising import dcl, rce, rince, tce

#: keyword hyper-parameters each loss accepts as options (derived from the registry, after every family registered)
LOSS_HYPERS: dict[str, set[str]] = {e.name: set(e.option_names) for e in LOSSES.entries()}

#: the loss families, in the order figures and tables show them
LOSS_FAMILIES: dict[str, tuple[str, ...]] = {
    "classic": ("bpr", "bce", "mse", "ccl"),
    "softmax": ("sl", "bsl", "psl", "slatk", "advinfonce"),
    "ranking-dro": ("llpauc", "drrl"),
    "denoising": ("tce", "rce", "dcl", "rince"),
}

__all__ = ["bpr", "bce", "mse", "ccl", "sl", "bsl", "psl", "slatk", "advinfonce", "llpauc", "drrl", "tce", "rce",
           "dcl", "rince", "LOSSES", "LOSS_HYPERS", "LOSS_FAMILIES", "BSL_MODES", "get_loss", "bsl_temperatures",
           "groups_positives", "state_keywords", "loss_family", "SLOptions", "CCLOptions", "BSLOptions"]


def loss_family(name: str) -> str:
    """The family of loss ``name`` (`LOSS_FAMILIES`), ``"other"`` for a loss registered elsewhere."""
    return next((fam for fam, names in LOSS_FAMILIES.items() if name in names), "other")
