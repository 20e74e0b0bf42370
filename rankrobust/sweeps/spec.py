"""Sweep specs: a YAML file expanded once into a list of validated cells.

A spec (see ``configs/sweeps/``)::

    name: noisy-positives-lastfm-quick
    base: {preset: configs/x.yaml, data: {name: lastfm}, train: {epochs: 30}}
    grid: {loss.name: [sl, bsl], noise.pos_ratio: [0.0, 0.2]}
    seeds: [0, 1]
    overrides:                       # optional, applied in order to matching cells
      - when: {loss.name: bsl}
        set: {loss.mode: paper, loss.tau1: 0.5}
    options: {fairness: true, track_variance: false}

Each cell (one grid point × one seed) is one run.  The base, grid and
overrides are a *template* shared by cells with different entries: an option
that belongs to another entry than a cell's (``loss.tau`` in a BPR cell,
``model.layers`` in an MF cell) is left out of that cell's config, so it never
reaches its ``config.json``; an option that applies to no cell at all is an
error (it is a typo or a misplaced key).
"""
from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rankrobust.config import (SECTIONS, ConfigError, RunConfig, closest, config_from_dict, prune_inapplicable,
                               read_config_tree, set_dotted)
from rankrobust.runs import cell_id, config_hash

__all__ = ["Cell", "SweepSpec", "cell_id", "load_spec", "parse_spec"]

SPEC_KEYS = ("name", "description", "base", "grid", "seeds", "overrides", "options")
#: run options of a sweep: which probes its cells get, and Ray resources per task
OPTION_KEYS = ("fairness", "track_variance", "resources")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its id, grid values, seed and resolved config."""

    cell_id: str
    values: dict[str, Any]
    seed: int
    config: RunConfig


@dataclass
class SweepSpec:
    """A parsed sweep spec; ``cells`` are expanded and validated once, at parse time."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    overrides: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None
    cells: list[Cell] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The document saved as the sweep folder's spec record (``sweep.json``).

        ``cells`` maps each cell id to the hash of its resolved config
        (`rankrobust.runs.config_hash`): results use exactly these cells, and
        a run folder of another id (stale) or with another config (outdated)
        is left out of them.
        """
        return {"name": self.name, "grid": self.grid, "seeds": self.seeds, "base": self.base,
                "overrides": self.overrides, "options": self.options,
                "source": str(self.source) if self.source else None,
                "cells": {c.cell_id: config_hash(c.config.to_dict()) for c in self.cells}}


def _base_tree(base: dict[str, Any], spec_path: Path | None) -> dict[str, Any]:
    """The base template as a sparse nested dict: a ``preset:`` file first, then the rest over it."""
    base = copy.deepcopy(dict(base or {}))
    preset = base.pop("preset", None)
    tree: dict[str, Any] = {}
    if preset is not None:
        candidates = [Path(preset)] + ([spec_path.parent / preset] if spec_path else [])
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise ConfigError(f"sweep base preset {preset!r} not found")
        tree = read_config_tree(path)
    for section, values in base.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}'{closest(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"base.{section} must be a mapping")
        tree.setdefault(section, {}).update(values)
    return tree


def _expand(spec: SweepSpec) -> list[Cell]:
    """grid × seeds (in spec order) → validated cells.

    Every key the template sets (in the base, on a grid axis, or in an
    override rule) must act in at least one cell where it is set; a key that
    every such cell drops (its entry does not take it) is an error.
    """
    keys = list(spec.grid)
    cells: list[Cell] = []
    acted: dict[tuple[str, str], bool] = {}  # (where it was set, dotted key) -> kept in some cell

    def note(where: str, key: str, dropped: set[str]) -> None:
        acted[(where, key)] = acted.get((where, key), False) or key not in dropped

    base_keys = [f"{section}.{k}" for section, values in spec.base.items() for k in values]
    _check_rules(spec)
    matched: set[int] = set()
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        tree = copy.deepcopy(spec.base)
        for key, value in values.items():
            set_dotted(tree, key, value)
        rules = [n for n, rule in enumerate(spec.overrides)
                 if all(values.get(k) == v for k, v in rule.get("when", {}).items())]
        matched.update(rules)
        for n in rules:
            for key, value in spec.overrides[n].get("set", {}).items():
                set_dotted(tree, key, value)
        tree, dropped = prune_inapplicable(tree)
        for key in base_keys:
            note("base", key, dropped)
        for key in keys:
            note("grid", key, dropped)
        for n in rules:
            for key in spec.overrides[n].get("set", {}):
                note(f"overrides[{n}]", key, dropped)
        for seed in spec.seeds:
            set_dotted(tree, "train.seed", seed)
            try:
                cfg = config_from_dict(tree)
            except ConfigError as err:
                raise ConfigError(f"sweep {spec.name}, cell {values} seed {seed}: {err}") from None
            cells.append(Cell(cell_id(values, seed), values, seed, cfg))
    for n in range(len(spec.overrides)):
        if n not in matched:
            warnings.warn(f"sweep {spec.name}: overrides[{n}] (when {spec.overrides[n].get('when', {})}) matches no "
                          f"cell of the grid {spec.grid}", stacklevel=3)
    idle = [f"{key} (set in {where})" for (where, key), kept in acted.items() if not kept]
    if idle:
        raise ConfigError(f"sweep {spec.name}: {', '.join(idle)} applies to no cell it is set for (the entries "
                          f"of those cells do not take it); remove it or set it where it acts")
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sweep {spec.name}: grid values give duplicate cell ids")
    return cells


def _check_rules(spec: SweepSpec) -> None:
    """Each override rule is ``{when: {grid key: value}, set: {config key: value}}``; its keys must be grid axes.

    A ``when`` on a key that is not a grid axis (a typo, or a base key), or with
    a value no config accepts (``loss.name: bls``), could never match and would
    silently skip the rule, so it is an error; a valid value that is just not
    in this grid only warns (one override list may serve several grids).
    """
    for n, rule in enumerate(spec.overrides):
        if not isinstance(rule, dict) or set(rule) - {"when", "set"} or not isinstance(rule.get("set", {}), dict) \
                or not isinstance(rule.get("when", {}), dict):
            raise ConfigError(f"sweep {spec.name}: overrides[{n}] must be a mapping with 'when' and 'set' mappings, "
                              f"got {rule!r}")
        for key, value in rule.get("when", {}).items():
            if key not in spec.grid:
                raise ConfigError(f"sweep {spec.name}: overrides[{n}].when names {key!r}, which is not a grid axis"
                                  f"{closest(key, spec.grid)}; 'when' can only test grid axes: {list(spec.grid)}")
            if value not in spec.grid[key]:
                probe: dict[str, Any] = {}
                set_dotted(probe, key, value)
                try:  # a value no config accepts (a typo such as loss.name: bls) can never match
                    config_from_dict(prune_inapplicable(probe)[0])
                except ConfigError as err:
                    raise ConfigError(f"sweep {spec.name}: overrides[{n}].when {key} = {value!r} can never match: "
                                      f"{err}") from None


def parse_spec(data: dict[str, Any], source: Path | None = None) -> SweepSpec:
    """Validate a spec dict and expand its cells (unknown keys → ConfigError naming the closest)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}a sweep spec must be a mapping")
    for key in data:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{where}unknown sweep key '{key}'{closest(key, SPEC_KEYS)}; valid: {', '.join(SPEC_KEYS)}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{where}grid must map config keys to non-empty lists")
    options = data.get("options") or {}
    for key in options:
        if key not in OPTION_KEYS:
            raise ConfigError(f"{where}unknown sweep option '{key}'{closest(key, OPTION_KEYS)}")
    seeds = data.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    try:
        spec = SweepSpec(name=str(data.get("name") or (source.stem if source else "sweep")),
                         base=_base_tree(data.get("base") or {}, source), grid=grid, seeds=seeds,
                         overrides=list(data.get("overrides") or []), options=dict(options),
                         description=str(data.get("description", "")), source=source)
        spec.cells = _expand(spec)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read, validate and expand a sweep spec YAML."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep spec {path} cannot be read ({getattr(err, 'strerror', None) or err}); "
                          f"pass a sweep spec YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, path)
