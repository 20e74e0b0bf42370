"""Recommendation losses as small functions, one registry (docs/PROTOCOLS.md §1, §10; docs/LOSSES.md).

The fifteen original losses, by family:

- ``base``: the pointwise and pairwise classics ``bpr``, ``bce``, ``mse``,
  ``ccl`` and the softmax family ``sl``, ``bsl`` (with the loss contract
  `LossBatch`, the helpers and the `LOSSES` registry every loss uses);
- ``successors``: the losses after BSL, ``psl``, ``slatk``, ``advinfonce``,
  ``llpauc``, ``drrl``;
- ``denoising``: the noise-robust baselines ``tce``, ``rce`` (noisy
  positives) and ``dcl``, ``rince`` (false negatives).

Every other module of this package is one loss (or a few) in one file: it is
imported here automatically, after the three above and in name order, so
adding a loss is that file alone (docs/EXTENDING.md §1).  Its public names are
not re-exported: import them from their module
(``from rankrobust.losses.directau import directau``), or read ``LOSSES``.

A loss reads one `LossBatch` and declares what it reads (``reads`` on its
registry entry); the fifteen above are pure functions of the scores,
``fn(pos [B], neg [B, M], *, users=None, neg_mask=None, **hyper) -> scalar``
(`rankrobust.losses.base`).  Stateful losses (``slatk``, ``advinfonce``,
``llpauc``, ``drrl``, ``tce``) get their state through the one mechanism of
`rankrobust.loss_state`.  Everything of the three modules is importable from
here: ``from rankrobust.losses import LOSSES, get_loss, sl, bsl``.
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

import importlib as _importlib
import pkgutil as _pkgutil

#: the modules that hold the original losses (imported above, in this order: the order of `LOSSES`)
_CORE_MODULES = ("base", "successors", "denoising")
for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__) if m.name not in _CORE_MODULES):
    _importlib.import_module(f"{__name__}.{_module}")  # one file per further loss: registering is importing

#: keyword hyper-parameters each loss accepts as options (derived from the registry, after every family registered)
LOSS_HYPERS: dict[str, set[str]] = {e.name: set(e.option_names) for e in LOSSES.entries()}

#: the loss families, in the order figures and tables show them (each entry's ``family``, in registration order)
LOSS_FAMILIES: dict[str, tuple[str, ...]] = {}
for _entry in LOSSES.entries():
    LOSS_FAMILIES[_entry.family] = LOSS_FAMILIES.get(_entry.family, ()) + (_entry.name,)

__all__ = ["bpr", "bce", "mse", "ccl", "sl", "bsl", "psl", "slatk", "advinfonce", "llpauc", "drrl", "tce", "rce",
           "dcl", "rince", "LOSSES", "LOSS_HYPERS", "LOSS_FAMILIES", "BSL_MODES", "get_loss", "bsl_temperatures",
           "groups_positives", "state_keywords", "loss_family", "SLOptions", "CCLOptions", "BSLOptions", "LossBatch",
           "LossEntry", "LOSS_INPUTS", "SCORES", "SCORE_INPUTS", "apply_loss", "loss_reads", "score_only_entry"]


def loss_family(name: str) -> str:
    """The family of loss ``name`` (`LOSS_FAMILIES`), ``"other"`` for a loss registered elsewhere."""
    return next((fam for fam, names in LOSS_FAMILIES.items() if name in names), "other")
