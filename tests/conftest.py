"""Shared fixtures: small synthetic datasets, the shared data folder, CUDA marker."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rankrobust.data.interactions import Interactions
from tests import loopback

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


def ragged_negative_mask(rng: np.random.Generator, b: int, m: int) -> np.ndarray:
    """A [b, m] negative-slot mask for loss oracle tests: ~70 % of slots real, row 0 with its first slot real,
    row 1 without negatives and row 2 with exactly one (slot 3): the edge cases a masked loss must handle."""
    mask = rng.uniform(size=(b, m)) < 0.7
    mask[0, 0] = True
    mask[1, :] = False
    mask[2, :] = False
    mask[2, 3] = True
    return mask


def write_tiny_split(folder: Path, n_users: int, n_items: int, density: float) -> Path:
    """``folder`` with train.txt / test.txt (LightGCN format): `random_interactions` (seed 0) split 80/20 per user."""
    from rankrobust.data import split_per_user, write_lightgcn

    folder.mkdir(parents=True, exist_ok=True)
    train, test = split_per_user(random_interactions(n_users, n_items, density, seed=0), (0.8, 0.2), seed=0)
    write_lightgcn(train, folder / "train.txt")
    write_lightgcn(test, folder / "test.txt")
    return folder


def epoch_without_host_sync(trainer):
    """One `Trainer.epoch` on CUDA after a warm-up epoch, failing on any host sync inside it → its [2] result."""
    trainer.epoch()  # warm-up (lazy initialisation may sync once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return trainer.epoch()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def pytest_collection_modifyitems(config, items):
    """Skip CUDA tests without a GPU; leave ``netns`` tests to the loopback-only namespace (tests/loopback.py)."""
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
    if not (loopback.inside() or loopback.on_host_allowed()):
        elsewhere = pytest.mark.skip(reason="starts a server: runs inside a loopback-only network namespace "
                                            "(tests/test_netns.py)")
        for item in items:
            if "netns" in item.keywords:
                item.add_marker(elsewhere)


#: sweep kind → folder of its tiny sweep in `tiny_results` (the first five as results/*-quick)
TINY_FOLDERS = {"noisy-positives": "np-quick", "noisy-negatives": "nn-quick", "loss-comparison": "lc-quick",
                "tau-ratio": "tr-quick", "variance": "var-quick", "bsl-batching": "bsl-batching-quick",
                "loss-comparison-ood": "ood-quick"}


def _tiny_sweep(root: Path, data: Path, name: str, grid: dict, options: dict | None = None, base: dict | None = None):
    """Run a tiny sweep named ``name`` (2 epochs on a 40 x 70 dataset) into ``root/<folder>``."""
    from rankrobust.sweeps import parse_spec, run_sweep

    tree = {"data": {"train_path": str(data / "train.txt"), "test_path": str(data / "test.txt")},
            "model": {"dim": 8},
            "train": {"epochs": 2, "batch_size": 64, "num_negatives": 8, "device": "cpu", "ks": [5, 20],
                      "patience": 0}}
    for key, value in (base or {}).items():
        tree.setdefault(key, {}).update(value)
    spec = parse_spec({"name": name, "base": tree, "grid": grid, "seeds": [0], "options": options or {}})
    folder = TINY_FOLDERS[name.rsplit("-tiny", 1)[0]]
    report = run_sweep(spec, root / folder, progress=False)
    assert not report.failed, report.failed


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """The quick sweeps in miniature (folders: `TINY_FOLDERS`), built once per test session."""
    root = tmp_path_factory.mktemp("results")
    data = write_tiny_split(root / "data", 40, 70, 0.15)
    _tiny_sweep(root, data, "noisy-positives-tiny", {"loss.name": ["sl", "bsl"], "noise.pos_ratio": [0.0, 0.2, 0.4]},
                {"fairness": True}, {"loss": {"tau1": 0.5}})
    _tiny_sweep(root, data, "noisy-negatives-tiny", {"loss.name": ["sl", "bsl"], "noise.neg_prob": [0.0, 0.2]})
    _tiny_sweep(root, data, "loss-comparison-tiny", {"model.name": ["mf", "lightgcn"], "loss.name": ["bpr", "sl"]},
                {"fairness": True})
    _tiny_sweep(root, data, "tau-ratio-tiny", {"model.name": ["mf", "lightgcn"], "loss.r": [0.9, 1.1]},
                base={"loss": {"name": "bsl", "mode": "reweight"}})
    _tiny_sweep(root, data, "variance-tiny", {"loss.tau": [0.1, 0.5]}, {"track_variance": True})
    _tiny_sweep(root, data, "bsl-batching-tiny", {"loss.name": ["sl", "bsl"], "train.batching": ["pairs", "users"],
                                                  "noise.pos_ratio": [0.0, 0.3]},
                base={"loss": {"tau1": 0.5}, "train": {"positives_per_user": 4}})
    _tiny_sweep(root, data, "loss-comparison-ood-tiny", {"data.split": ["given", "popularity"],
                                                         "model.name": ["mf", "xsimgcl"], "loss.name": ["sl"]},
                base={"model": {"layers": 2}, "train": {"ips_gamma": 1.0}})
    return root
