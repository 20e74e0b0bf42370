"""Helpers shared by the float64 oracle tests (no rankrobust code: the oracles stay independent of it)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def finite_differences(f: Callable[[list], float], x, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar function ``f`` at the list (or nested list) ``x``, float64:
    (f(x + h·e_i) − f(x − h·e_i)) / 2h for every entry i, shaped like ``x``."""
    flat = np.array(x, dtype=np.float64)
    grad = np.zeros_like(flat)
    for i in np.ndindex(flat.shape):
        up, down = flat.copy(), flat.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up.tolist()) - f(down.tolist())) / (2 * h)
    return grad
