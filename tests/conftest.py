"""Shared fixtures: small synthetic datasets, the shared data folder, CUDA marker."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rankrobust.data.interactions import Interactions

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """$RANKROBUST_DATA or ../shared/data next to the repo, if it exists."""
    env = os.environ.get("RANKROBUST_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


def require_shared(name: str) -> Path:
    """Path of shared dataset ``name`` or skip the test with the reason."""
    root = shared_data_dir()
    if root is None or not (root / name / "train.txt.gz").exists():
        pytest.skip(f"dataset {name!r} not found (set RANKROBUST_DATA or place ../shared/data/{name})")
    return root


def random_interactions(n_users: int, n_items: int, density: float, seed: int) -> Interactions:
    """A random binary matrix where every user has at least one item."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    u, i = np.nonzero(mask)
    return Interactions.from_pairs(u, i, n_users, n_items)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
