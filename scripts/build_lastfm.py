#!/usr/bin/env python
"""Build the embedded default dataset `lastfm` shipped in rankrobust/data/embedded/lastfm/.

Steps (all deterministic):

1. read the LightGCN++ LastFM split (train / valid / test, LightGCN format) and
   check the sha256 of the three gzip files against the known values;
2. merge the three splits into one set of (user, artist) pairs;
3. keep the k-core: drop users with fewer than --min-user interactions and
   items with fewer than --min-item, repeatedly until both hold;
4. remap user and item ids to 0..n-1 (in order of the original ids);
5. split each user's items 80/10/10 at random with a fixed seed, then, for
   every item that occurs in valid or test but not in train, move one of its
   held-out pairs (the one with the smallest user id) into train, so every
   valid / test item is warm;
6. write train / valid / test as gzip (mtime 0, so byte-reproducible) and a
   README with provenance, terms, the build command, statistics and sha256.

Usage (from the repository root):

    python scripts/build_lastfm.py [SOURCE_DIR] [--out DIR] [--min-user 10] [--min-item 5] [--seed 0]

SOURCE_DIR defaults to ../shared/data/lastfm next to the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rankrobust.data import Interactions, dataset_stats, read_lightgcn, split_per_user, write_lightgcn  # noqa: E402
from rankrobust.data.registry import KNOWN_SHA256  # noqa: E402

SPLITS = ("train", "valid", "test")
FRACTIONS = (0.8, 0.1, 0.1)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs that remain after repeatedly dropping users with < min_user and items with < min_item pairs."""
    while True:
        uc = np.bincount(users)
        ic = np.bincount(items)
        keep = (uc[users] >= min_user) & (ic[items] >= min_item)
        if keep.all():
            return users, items
        users, items = users[keep], items[keep]


def warm_split(inter: Interactions, seed: int) -> tuple[Interactions, Interactions, Interactions, int]:
    """80/10/10 per-user split; held-out pairs of items absent from train are moved to train.

    Returns (train, valid, test, number of pairs moved).
    """
    train, valid, test = split_per_user(inter, FRACTIONS, seed)
    moved = 0
    while True:
        warm = train.item_counts() > 0
        fixed = []
        for held in (valid, test):
            u, i = held.to_pairs()
            cold = ~warm[i]
            # one pair per cold item: the first in CSR order (smallest user id)
            ci, first = np.unique(i[cold], return_index=True)
            fixed.append((u[cold][first], ci))
        if not any(len(ci) for _, ci in fixed):
            return train, valid, test, moved
        # prefer valid's pair; take test's only for items valid cannot warm
        (vu, vi), (tu, ti) = fixed
        only_test = ~np.isin(ti, vi)
        mu = np.concatenate([vu, tu[only_test]])
        mi = np.concatenate([vi, ti[only_test]])
        move = Interactions.from_pairs(mu, mi, *inter.shape)
        train = train.union(move)
        valid = valid.difference(move)
        test = test.difference(move)
        moved += move.nnz


def check(train: Interactions, valid: Interactions, test: Interactions, full: Interactions) -> None:
    """Assert the split invariants: a partition of `full`, warm items, every user in train."""
    assert train.nnz + valid.nnz + test.nnz == full.nnz
    assert train.union(valid).union(test).nnz == full.nnz
    for a, b in ((train, valid), (train, test), (valid, test)):
        assert a.difference(b).nnz == a.nnz, "splits overlap"
    warm = train.item_counts() > 0
    for held in (valid, test):
        assert warm[held.indices].all(), "a held-out item does not occur in train"
    assert (train.user_counts() > 0).all(), "a user has no training items"
    assert (train.item_counts() > 0).all(), "an item has no training interactions"


def readme(args, src: Path, src_sha: dict, raw: Interactions, full: Interactions, parts: dict,
           moved: int, out_sha: dict) -> str:
    s = dataset_stats(full)
    held = [int(np.count_nonzero(parts[k].user_counts() == 0)) for k in ("valid", "test")]
    every_user = ("Every user has at least one item in each split." if not any(held) else
                  f"{held[0]} users have no valid item and {held[1]} no test item.")
    rows = "\n".join(
        f"| {k} | {parts[k].nnz:,} | {int(np.count_nonzero(parts[k].user_counts())):,} | "
        f"{int(np.count_nonzero(parts[k].item_counts())):,} | `{out_sha[k]}` |" for k in SPLITS)
    src_rows = "\n".join(f"| {k}.txt.gz | `{src_sha[k]}` |" for k in SPLITS)
    return f"""# Embedded dataset `lastfm`

The default dataset of rankrobust (`load_dataset("lastfm")`, `--dataset lastfm`): a small,
dense music-listening dataset for demos, smoke tests and quick experiments. Files are in
LightGCN format (one line per user: `user item item ...`, 0-based ids), gzip-compressed.

## Provenance

* **Origin:** the HetRec 2011 `hetrec2011-lastfm-2k` data set (user–artist listening
  relations of about 1,900 Last.fm users), published by GroupLens for the 2nd Workshop on
  Information Heterogeneity and Fusion in Recommender Systems (HetRec 2011, RecSys 2011).
  Only the binary user–artist relation is used: no listening counts, tags, artist names or
  social links.
* **Direct source:** the LastFM split of LightGCN++ (`geon0325/LightGCNpp`, RecSys 2024),
  files `data/lastfm/{{train,valid,test}}.txt`, added in commit
  `a18af1e1f65dc4b6a432ce5aeaae5bbe75ac1c2e` (snapshot HEAD
  `a394f79a7aceb8f485f6bcb549b4865fe83f1d49`), as gzipped copies in the project's shared data
  folder (`shared/data/lastfm`, see its README). LightGCN++ does not document how it filtered
  the HetRec data; its split has {raw.n_users:,} users, {raw.n_items:,} items and {raw.nnz:,} pairs
  in all, and many of its valid/test items never occur in its train split.
* **sha256 of the source files** (gzip, as read by the build):

| file | sha256 |
|---|---|
{src_rows}

## How it was built

```
{args.command}
```

(`scripts/build_lastfm.py` in the repository; the output is byte-reproducible.)

1. The three source splits are merged ({raw.nnz:,} pairs).
2. k-core filtering, repeated until stable: every user keeps at least {args.min_user} items and
   every item at least {args.min_item} users.
3. User and item ids are remapped to contiguous 0-based ids, in order of the source ids.
4. Each user's items are split at random 80/10/10 into train/valid/test (seed {args.seed},
   `rankrobust.data.split_per_user`). Then, for every item that occurs in valid or test but
   not in train, one of its held-out pairs is moved into train ({moved} pairs moved), so every
   valid and test item also occurs in train. {every_user}
5. Files are written with `gzip` mtime 0.

Because of the filtering and the new split, results on this dataset are **not** comparable
to numbers reported on the LightGCN++ LastFM split.

## Statistics

* {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions (density {s['density']:.4f}).
* Items per user: mean {s['mean_per_user']:.1f}, median {s['median_per_user']:.0f}, min {s['min_per_user']}, max {s['max_per_user']}.
* Users per item: mean {s['mean_per_item']:.1f}, median {s['median_per_item']:.0f}, min {int(full.item_counts().min())}, max {s['max_per_item']}; Gini of item popularity {s['item_gini']:.3f}.

| split | interactions | users | items | sha256 of the `.txt.gz` file |
|---|---|---|---|---|
{rows}

## Terms of use

The HetRec 2011 Last.fm data may be used for non-commercial purposes only; anyone who wants
to use it commercially has to ask Last.fm first. Work that uses this data should acknowledge
Last.fm (http://www.last.fm) as the source and cite the HetRec 2011 workshop:

> Iván Cantador, Peter Brusilovsky and Tsvi Kuflik. 2nd Workshop on Information Heterogeneity
> and Fusion in Recommender Systems (HetRec 2011). In Proceedings of the 5th ACM Conference on
> Recommender Systems (RecSys 2011).

The data's own readme does not forbid redistribution; LightGCN++ ships no license file. These
terms apply to this derived copy as well, whatever the license of the rankrobust code.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", default=str(REPO.parent / "shared" / "data" / "lastfm"),
                   help="folder with the LightGCN++ lastfm {train,valid,test}.txt.gz (default: ../shared/data/lastfm)")
    p.add_argument("--out", default=str(REPO / "rankrobust" / "data" / "embedded" / "lastfm"))
    p.add_argument("--min-user", type=int, default=10)
    p.add_argument("--min-item", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    defaults = dict(min_user=10, min_item=5, seed=0)
    extra = "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v)
    args.command = "python scripts/build_lastfm.py ../shared/data/lastfm" + extra

    src = Path(args.source)
    src_sha = {}
    users, items = [], []
    for k in SPLITS:
        f = src / f"{k}.txt.gz"
        src_sha[k] = sha256_file(f)
        want = KNOWN_SHA256["lastfm"][f"{k}.txt.gz"]
        if src_sha[k] != want:
            print(f"warning: {f} has sha256 {src_sha[k]}, expected {want}", file=sys.stderr)
        u, i = read_lightgcn(f)
        users.append(u)
        items.append(i)
    raw = Interactions.from_pairs(np.concatenate(users), np.concatenate(items))
    u, i = k_core(*raw.to_pairs(), args.min_user, args.min_item)
    u = np.unique(u, return_inverse=True)[1]
    i = np.unique(i, return_inverse=True)[1]
    full = Interactions.from_pairs(u, i)
    train, valid, test, moved = warm_split(full, args.seed)
    check(train, valid, test, full)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": train, "valid": valid, "test": test}
    out_sha = {}
    for k, inter in parts.items():
        f = out / f"{k}.txt.gz"
        write_lightgcn(inter, f)
        back = Interactions.from_pairs(*read_lightgcn(f), *full.shape)
        assert np.array_equal(back.indptr, inter.indptr) and np.array_equal(back.indices, inter.indices)
        out_sha[k] = sha256_file(f)
    (out / "README.md").write_text(readme(args, src, src_sha, raw, full, parts, moved, out_sha))
    s = dataset_stats(full)
    print(f"lastfm: {s['users']} users, {s['items']} items, {s['interactions']} interactions; "
          + ", ".join(f"{k} {v.nnz}" for k, v in parts.items()) + f"; {moved} pairs moved to train")
    for k in SPLITS:
        print(f"  {k}.txt.gz sha256 {out_sha[k]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
