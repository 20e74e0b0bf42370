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
    tuned: ../tuning/losses-lastfm  # optional: run every cell at its arm's tuned settings

Each cell (one grid point × one seed) is one run.  The base, grid and
overrides are a *template* shared by cells with different entries: an option
that belongs to another entry than a cell's (``loss.tau`` in a BPR cell,
``model.layers`` in an MF cell) is left out of that cell's config, so it never
reaches its ``config.json``; an option that applies to no cell at all is an
error (it is a typo or a misplaced key).

``tuned:`` names the output folder of a tuning run (``rankrobust tune SPEC
--out DIR``; a relative path is read from the spec file's folder).  Its
``best/<arm>.yaml`` files each hold one arm::

    arm: mf-sl                                       # the file's stem
    values: {model.name: mf, loss.name: sl, data.name: lastfm}   # the config values that define the arm
    settings: {loss.tau: 0.21, train.lr: 0.0013, model.score: cosine}   # the tuned values
    origin: {study: /abs/DIR/study.db, study_name: mf-sl, trial: 17, objective: valid.ndcg@20, value: 0.412,
             direction: maximize, noise: clean}

A cell takes the settings of the one arm whose ``values`` all equal its
resolved config (base, grid values and override rules, defaults filled in);
they are applied in the order base → tuned settings → grid values → override
rules, so a grid axis or a rule that sets a tuned key wins.  A cell that
matches no arm or several is an error naming the arms, and so is a tuned
setting that acts in none of its cells.  Each such cell's run folder records
where its settings came from (``origin.json``, `RunDir.origin`: the file, arm,
settings and the study's origin), and the sweep record (``sweep.json``) holds
them under ``tuned``; new tuned settings change the cells' configs, so their
old runs are outdated and redone.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rankrobust.config import (SECTIONS, ConfigError, RunConfig, closest, config_from_dict, load_yaml,
                               prune_inapplicable, read_config_tree, set_dotted, with_absolute_paths, yaml_problem)
from rankrobust.runs import cell_id, config_hash

__all__ = ["Cell", "SweepSpec", "TunedArm", "cell_id", "load_spec", "load_tuned", "parse_spec"]

SPEC_KEYS = ("name", "description", "base", "grid", "seeds", "overrides", "options", "tuned")
#: keys of a tuned arm's file, ``best/<arm>.yaml`` of a tuning output folder
BEST_KEYS = ("arm", "values", "settings", "origin")
#: run options of a sweep: which probes its cells get, Ray resources per task and the cap on tasks in flight
OPTION_KEYS = ("fairness", "track_variance", "resources", "max_concurrent")
#: keys of ``options.resources`` (and of an override rule's ``resources``): Ray's own task option names
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")


def check_resources(resources: Any, where: str) -> None:
    """A resource request (``{num_cpus: 2, num_gpus: 0.25}``) with known keys and non-negative numbers, else ConfigError.

    ``resources`` (custom resources, as in ``ray start --resources``) maps names to amounts.
    """
    if not isinstance(resources, dict):
        raise ConfigError(f"{where} must be a mapping such as {{num_cpus: 1, num_gpus: 0.25}}, got {resources!r}")
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{where}.{key} is not a resource{closest(key, RESOURCE_KEYS)}; "
                              f"valid keys: {', '.join(RESOURCE_KEYS)}")
        amounts = value.items() if key == "resources" and isinstance(value, dict) else [(key, value)]
        if key == "resources" and not isinstance(value, dict):
            raise ConfigError(f"{where}.resources must map custom resource names to amounts, got {value!r}")
        for name, amount in amounts:
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise ConfigError(f"{where}.{name} must be a number >= 0, got {amount!r}")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its id, grid values, seed and resolved config."""

    cell_id: str
    values: dict[str, Any]
    seed: int
    config: RunConfig
    #: where its tuned settings came from (``{arm, file, settings, origin}``), None without ``tuned:``
    origin: dict[str, Any] | None = None


@dataclass(frozen=True)
class TunedArm:
    """One ``best/<arm>.yaml`` of a tuning output folder: the values defining the arm, its tuned settings and
    the study's origin record (study, trial, objective, value, direction, noise)."""

    arm: str
    values: dict[str, Any]
    settings: dict[str, Any]
    origin: dict[str, Any]
    path: Path

    def record(self) -> dict[str, Any]:
        """What a cell run at these settings records (``origin.json``; ``sweep.json`` → ``tuned.arms``)."""
        return {"arm": self.arm, "file": str(self.path), "values": self.values, "settings": self.settings,
                "origin": self.origin}


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
    #: the tuning output folder (absolute) and its arms, when the spec says ``tuned:``
    tuned: Path | None = None
    arms: list[TunedArm] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The document saved as the sweep folder's spec record (``sweep.json``).

        ``cells`` maps each cell id to the hash of its resolved config
        (`rankrobust.runs.config_hash`): results use exactly these cells, and
        a run folder of another id (stale) or with another config (outdated)
        is left out of them.  With ``tuned:``, ``tuned`` holds the folder, each
        arm's record (`TunedArm.record`) and the arm of each cell.
        """
        doc = {"name": self.name, "grid": self.grid, "seeds": self.seeds, "base": self.base,
               "overrides": self.overrides, "options": {k: v for k, v in self.options.items() if k != ORIGINS},
               "source": str(self.source) if self.source else None,
               "cells": {c.cell_id: config_hash(c.config.to_dict()) for c in self.cells}}
        if self.tuned is not None:
            doc["tuned"] = {"dir": str(self.tuned), "arms": {a.arm: a.record() for a in self.arms},
                            "cells": {c.cell_id: c.origin["arm"] for c in self.cells if c.origin}}
        return doc


#: the run option carrying each cell's origin to `rankrobust.sweeps.cell.run_cell` (cell id → `TunedArm.record`),
#: set from ``tuned:`` (not a key a spec's ``options`` may hold)
ORIGINS = "origins"


def _dotted_keys(mapping: Any, what: str, path: Path) -> dict[str, Any]:
    """``mapping`` checked as {section.key: value}; ConfigError naming ``path`` and ``what`` otherwise."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: {what} must be a mapping of config keys (section.key) to values, got {mapping!r}")
    for key in mapping:
        section, dot, name = str(key).partition(".")
        if not dot or not name or "." in name or section not in SECTIONS:
            raise ConfigError(f"{path}: {what} key {key!r} is not a config key (section.key with section one of "
                              f"{', '.join(SECTIONS)})")
    return dict(mapping)


def _read_best(path: Path) -> TunedArm:
    """One best file (`BEST_KEYS`); a malformed one is one ConfigError line naming it."""
    try:
        data = load_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} cannot be read ({getattr(err, 'strerror', None) or err}); rerun the tuning "
                          f"or remove the file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; rerun the tuning or remove the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a best file must be a mapping with keys {', '.join(BEST_KEYS)}, got "
                          f"{type(data).__name__}")
    missing, unknown = [k for k in BEST_KEYS if k not in data], [k for k in data if k not in BEST_KEYS]
    if missing or unknown:
        problem = f"lacks {', '.join(missing)}" if missing else f"has unknown key(s) {', '.join(map(str, unknown))}"
        raise ConfigError(f"{path}: the best file {problem}: it has {', '.join(map(str, data)) or 'no keys'}; a best "
                          f"file has exactly {', '.join(BEST_KEYS)} (rerun the tuning or fix the file)")
    if data["arm"] != path.stem:
        raise ConfigError(f"{path}: arm {data['arm']!r} differs from the file's name {path.stem!r}")
    values = _dotted_keys(data["values"], "values", path)
    if not values:
        raise ConfigError(f"{path}: values is empty; it names the config values that define the arm")
    if not isinstance(data["origin"], dict):
        raise ConfigError(f"{path}: origin must be a mapping (study, trial, objective, ...), got {data['origin']!r}")
    return TunedArm(str(data["arm"]), values, _dotted_keys(data["settings"], "settings", path), dict(data["origin"]),
                    path)


def load_tuned(folder: str | Path) -> list[TunedArm]:
    """The arms of a tuning output folder (``folder/best/<arm>.yaml``, sorted by name); ConfigError naming the
    folder when it has none, or the file that is malformed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"tuned: {folder} is not a folder; give the output folder of `rankrobust tune SPEC "
                          f"--out DIR` (it holds best/<arm>.yaml)")
    best = folder / "best"
    files = sorted(best.glob("*.yaml")) if best.is_dir() else []
    if not files:
        raise ConfigError(f"tuned: {best} holds no best files (<arm>.yaml); finish `rankrobust tune SPEC --out "
                          f"{folder}` first")
    return [_read_best(p) for p in files]


def _arm_of(spec: SweepSpec, values: dict[str, Any], tree: dict[str, Any]) -> TunedArm:
    """The one arm of ``spec.arms`` whose values all equal those of the cell's untuned config ``tree``."""
    try:  # defaults filled in, entries' foreign options dropped
        resolved = config_from_dict(prune_inapplicable(tree)[0]).to_dict()
    except ConfigError:
        resolved = tree
    missing = object()

    def value(key: str) -> Any:
        section, _, name = key.partition(".")
        return resolved.get(section, {}).get(name, missing)

    found = [a for a in spec.arms if all(value(k) == v for k, v in a.values.items())]
    if len(found) == 1:
        return found[0]
    arms = "; ".join(f"{a.arm} {a.values}" for a in (found or spec.arms))
    if found:
        raise ConfigError(f"sweep {spec.name}: cell {values} matches {len(found)} tuned arms of {spec.tuned} "
                          f"({arms}); their values must tell the cells apart")
    raise ConfigError(f"sweep {spec.name}: cell {values} matches no tuned arm of {spec.tuned} (arms: {arms}); "
                      f"tune that arm or leave it out of the grid")


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
        rules = [n for n, rule in enumerate(spec.overrides)
                 if all(values.get(k) == v for k, v in rule.get("when", {}).items())]
        matched.update(rules)
        arm = _arm_of(spec, values, _cell_tree(spec, {}, values, rules)) if spec.arms else None
        settings = arm.settings if arm else {}
        tree, dropped = prune_inapplicable(_cell_tree(spec, settings, values, rules))
        for key in settings:
            note(f"tuned {arm.path}", key, dropped)
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
                cfg = with_absolute_paths(config_from_dict(tree))  # tasks may run in another directory
            except ConfigError as err:
                tuned = f" (tuned settings of {arm.path})" if arm else ""
                raise ConfigError(f"sweep {spec.name}, cell {values} seed {seed}{tuned}: {err}") from None
            cells.append(Cell(cell_id(values, seed), values, seed, cfg, arm.record() if arm else None))
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
    return _distinct(spec, cells)


def _distinct(spec: SweepSpec, cells: list[Cell]) -> list[Cell]:
    """``cells`` with those that resolve to the config of an earlier cell left out (one run per config), warning.

    A grid axis that acts only in some cells (``loss.tau`` × ``loss.name: [sl,
    bpr]``: BPR takes no temperature) gives cells whose resolved configs
    (`RunConfig.to_dict`, compared as `config_hash`) are equal; running each
    would train the same run twice and count one seed as two.  The first such
    cell (spec order) is kept under its own id; the warning names the axes that
    did not act and an example pair.  Tuned cells compare with their origin.
    """
    first: dict[tuple[str, str], Cell] = {}
    kept: list[Cell] = []
    dropped: list[tuple[Cell, Cell]] = []
    for cell in cells:
        key = (config_hash(cell.config.to_dict()), config_hash({"origin": cell.origin}))
        if key in first:
            dropped.append((cell, first[key]))
        else:
            first[key] = cell
            kept.append(cell)
    if dropped:
        axes = sorted({k for cell, same in dropped for k in cell.values if cell.values[k] != same.values.get(k)})
        cell, same = dropped[0]
        warnings.warn(f"sweep {spec.name}: {', '.join(axes)} does not act in some cells (their entries do not take "
                      f"it), so {len(dropped)} cell(s) resolve to the same config as another and run once, as that "
                      f"cell (e.g. {cell.cell_id} is {same.cell_id}); results count each config once",
                      stacklevel=3)
    return kept


def _cell_tree(spec: SweepSpec, settings: dict[str, Any], values: dict[str, Any], rules: list[int]) -> dict[str, Any]:
    """A cell's config template, in the order base → tuned ``settings`` → grid ``values`` → override ``rules``."""
    tree = copy.deepcopy(spec.base)
    for key, value in [*settings.items(), *values.items(),
                       *(kv for n in rules for kv in spec.overrides[n].get("set", {}).items())]:
        set_dotted(tree, key, value)
    return tree


def _check_rules(spec: SweepSpec) -> None:
    """Each override rule is ``{when: {grid key: value}, set: {config key: value}}``; its keys must be grid axes.

    A ``when`` on a key that is not a grid axis (a typo, or a base key), or with
    a value no config accepts (``loss.name: bls``), could never match and would
    silently skip the rule, so it is an error; a valid value that is just not
    in this grid only warns (one override list may serve several grids).
    """
    for n, rule in enumerate(spec.overrides):
        if not isinstance(rule, dict) or set(rule) - {"when", "set", "resources"} \
                or not isinstance(rule.get("set", {}), dict) or not isinstance(rule.get("when", {}), dict):
            raise ConfigError(f"sweep {spec.name}: overrides[{n}] must be a mapping with 'when' and 'set' mappings "
                              f"(and optionally 'resources' for its cells' Ray tasks), got {rule!r}")
        if "resources" in rule:
            check_resources(rule["resources"], f"sweep {spec.name}: overrides[{n}].resources")
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
    if "resources" in options:
        check_resources(options["resources"], f"{where}options.resources")
    cap = options.get("max_concurrent")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"{where}options.max_concurrent must be a whole number >= 1 (tasks in flight), got {cap!r}")
    seeds = data.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or \
            any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}seeds must be a whole number or a non-empty list of whole numbers (seeds: [0, 1, "
                          f"2]), got {seeds!r}")
    try:
        spec = SweepSpec(name=str(data.get("name") or (source.stem if source else "sweep")),
                         base=_base_tree(data.get("base") or {}, source), grid=grid, seeds=seeds,
                         overrides=list(data.get("overrides") or []), options=dict(options),
                         description=str(data.get("description", "")), source=source)
        tuned = data.get("tuned")
        if tuned is not None:
            if not isinstance(tuned, str) or not tuned.strip():
                raise ConfigError(f"tuned must be the path of a tuning output folder (`rankrobust tune SPEC --out "
                                  f"DIR`), got {tuned!r}")
            folder = Path(tuned).expanduser()
            spec.tuned = (folder if folder.is_absolute() or source is None else source.parent / folder).absolute()
            spec.arms = load_tuned(spec.tuned)
        spec.cells = _expand(spec)
        if spec.tuned is not None:  # each cell's origin travels to run_cell with the run options
            spec.options[ORIGINS] = {c.cell_id: c.origin for c in spec.cells}
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    return spec


def load_spec(path: str | Path, *, seeds: list[int] | None = None, device: str | None = None) -> SweepSpec:
    """Read, validate and expand a sweep spec YAML.

    ``seeds`` replaces the spec's seeds and ``device`` sets ``train.device`` in its base (``rankrobust sweep
    --seeds``, ``--device``): both become part of the cells' configs and of the recorded spec, as if written in it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    try:
        data = load_yaml(path.read_text(), f"sweep spec {path}")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep spec {path} cannot be read ({getattr(err, 'strerror', None) or err}); "
                          f"pass a sweep spec YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}; fix the spec") from None
    if isinstance(data, dict) and seeds is not None:
        data["seeds"] = list(seeds)
    if isinstance(data, dict) and device is not None:
        base = data["base"] = dict(data.get("base") or {})
        base["train"] = {**(base.get("train") or {}), "device": device}
    return parse_spec(data, path)
