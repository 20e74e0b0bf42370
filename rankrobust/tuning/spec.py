"""Tune specs: a YAML file parsed once into arms, each with its trial base config and search space.

A spec (see ``configs/tune/``)::

    name: lastfm-quick
    base: {data: {name: lastfm}, model: {name: mf}, train: {epochs: 100, patience: 5}}
    arms: {model.name: [mf], loss.name: [sl, bpr]}      # a grid over dotted keys: one arm per point
    overrides:                                          # optional, as in sweep specs
      - when: {loss.name: bpr}
        set: {train.num_negatives: 1}
    tune:
      trials: 20                 # the same budget for every arm (complete + pruned trials), >= 1
      objective: valid.ndcg@20   # a validation metric (never test); default valid.ndcg@20
      noise: clean               # clean: every trial trains on clean data; cell: under the arm's own noise
      seed: 0                    # an arm's seed: seed + crc32(label) (`TuneSpec.arm_seed`)
      sampler: {n_startup_trials: 5}
      pruner: {kind: median, n_startup_trials: 3, n_warmup_steps: 5}  # or halving (min_resource,
                                                                      # reduction_factor) or none
      exclude: [model.score]     # searched keys held at their config value
      resources: {num_cpus: 1}   # per trial, for --executor ray

Each arm's *trial base* is base ⊕ the arm's values ⊕ its overrides, with
``train.metric`` set to the objective's metric and, for ``noise: clean``, the
noise section reset to clean.  What a trial searches is read from the option
declarations of that config (`rankrobust.config.search_space`): the keys that
define the arm (the ``arms`` axes), the keys its overrides set and the keys in
``tune.exclude`` are held fixed.  A bad spec raises one `ConfigError` line
naming the key and the fix.
"""
from __future__ import annotations

import copy
import itertools
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rankrobust.config import ConfigError, RunConfig, Searched, closest, config_from_dict, prune_inapplicable, \
    search_space, set_dotted, load_yaml, yaml_problem
from rankrobust.evaluate import METRIC_NAMES
from rankrobust.sweeps.spec import check_resources

__all__ = ["Arm", "TuneSpec", "load_tune_spec", "parse_tune_spec", "SPEC_KEYS", "TUNE_KEYS", "PRUNERS"]

SPEC_KEYS = ("name", "description", "base", "arms", "overrides", "tune")
TUNE_KEYS = ("trials", "objective", "noise", "seed", "sampler", "pruner", "exclude", "resources")
NOISE_SETTINGS = ("clean", "cell")
#: pruner kind → its settings and their defaults (Optuna's MedianPruner / SuccessiveHalvingPruner)
PRUNERS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 3, "n_warmup_steps": 5, "interval_steps": 1},
    "halving": {"min_resource": 5, "reduction_factor": 3, "min_early_stopping_rate": 0},
    "none": {},
}
SAMPLER_DEFAULTS = {"n_startup_trials": 5, "multivariate": True}
#: the keys ``best/<arm>.yaml`` always names in ``values`` (with the arm axes)
IDENTITY_KEYS = ("data.name", "model.name", "loss.name")


@dataclass
class Arm:
    """One tuned arm: its label, the values that define it, its trial base config and its search space."""

    index: int
    label: str
    values: dict[str, Any]
    config: RunConfig
    space: dict[str, Searched]

    def trial_config(self, params: dict[str, Any]) -> RunConfig:
        """The config of one trial: the trial base with the suggested ``params`` (dotted keys) applied."""
        return self.config.with_overrides(params)

    def prior(self) -> dict[str, Any]:
        """The documented best settings (or defaults) of the searched keys that lie in their space: trial 0."""
        return {key: s.prior for key, s in self.space.items() if s.space.contains(s.prior)}


@dataclass
class TuneSpec:
    """A parsed tune spec (module docstring); ``arms`` are built and validated at parse time."""

    name: str
    trials: int
    objective: str
    noise: str
    seed: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    exclude: list[str]
    resources: dict[str, Any]
    arms: list[Arm] = field(default_factory=list)
    description: str = ""
    source: Path | None = None
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The objective's metric name as the run folders spell it (``ndcg@20``)."""
        return self.objective.split(".", 1)[1]

    def arm(self, label: str) -> Arm:
        """The arm called ``label``; ConfigError naming the closest otherwise."""
        for arm in self.arms:
            if arm.label == label:
                return arm
        labels = [a.label for a in self.arms]
        raise ConfigError(f"tune spec {self.name}: no arm {label!r}{closest(label, labels)}; arms: {', '.join(labels)}")

    def arm_seed(self, arm: Arm) -> int:
        """The seed of a NEW study of ``arm``: ``tune.seed + crc32(label)`` (zlib.crc32 of the UTF-8 label).

        It depends on the arm's label only, not its position in ``arms``, so adding, removing or reordering
        arms leaves every other arm's seed alone.  An arm whose study exists keeps the seed recorded in it
        (`rankrobust.tuning.study.check_protocol`): studies started before this rule have ``tune.seed + n``
        for the arm's index n at their start.
        """
        return self.seed + zlib.crc32(arm.label.encode("utf-8"))

    def protocol(self, arm: Arm, seed: int | None = None) -> dict[str, Any]:
        """The protocol of ``arm``'s study (recorded in protocol.json and as the study's ``protocol`` attribute).

        ``seed`` is the arm's seed (default `arm_seed`; an existing study's recorded seed when continuing it);
        ``tune_seed`` is the spec's ``tune.seed``, so a changed ``tune.seed`` is a changed protocol.
        """
        seed = self.arm_seed(arm) if seed is None else seed
        return {
            "arm": arm.label, "values": arm.values, "budget": self.trials,
            "objective": self.objective, "direction": "maximize", "noise": self.noise,
            "tune_seed": self.seed, "seed": seed,
            "sampler": {"kind": "tpe", "seed": seed, **self.sampler},
            "pruner": self.pruner,
            "space": {key: {**s.space.to_dict(), "describe": s.space.describe(), "prior": s.prior}
                      for key, s in arm.space.items()},
            "config": arm.config.to_dict(),
        }


def _label(values: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]", "-", "-".join(str(v) for v in values.values()))


def _known_keys(mapping: dict, valid: tuple[str, ...], what: str, prefix: str, where: str) -> None:
    """ConfigError naming the first key of ``mapping`` not in ``valid`` (and the closest valid one)."""
    for key in mapping:
        if key not in valid:
            raise ConfigError(f"{where}unknown {what} '{prefix}{key}'{closest(key, valid)}; valid: {', '.join(valid)}")


def _tune_section(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}tune must be a mapping with {', '.join(TUNE_KEYS)}")
    _known_keys(raw, TUNE_KEYS, "tune key", "tune.", where)
    trials = raw.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{where}tune.trials must be an integer >= 1 (the trial budget of every arm), "
                          f"got {trials!r}")
    objective = str(raw.get("objective", "valid.ndcg@20"))
    split, dot, metric = objective.partition(".")
    if not dot:
        split, metric = "valid", objective
    if split == "test":
        raise ConfigError(f"{where}tune.objective = {objective!r} selects on the test split; tuning selects on "
                          f"validation only: use valid.{metric}")
    if split != "valid":
        raise ConfigError(f"{where}tune.objective = {objective!r} must be valid.<metric>@K, e.g. valid.ndcg@20")
    name, _, k = metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit():
        raise ConfigError(f"{where}tune.objective = {objective!r}: {metric!r} is not a metric@K"
                          f"{closest(name, METRIC_NAMES)}; choose one of {list(METRIC_NAMES)} with @K")
    noise = raw.get("noise", "clean")
    if noise not in NOISE_SETTINGS:
        raise ConfigError(f"{where}tune.noise must be clean or cell, got {noise!r}{closest(noise, NOISE_SETTINGS)}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}tune.seed must be an integer, got {seed!r}")
    pruner = raw.get("pruner", "median")
    pruner = {"kind": pruner} if isinstance(pruner, str) else dict(pruner or {"kind": "none"})
    kind = pruner.pop("kind", "median")
    if kind not in PRUNERS:
        raise ConfigError(f"{where}tune.pruner kind must be one of {list(PRUNERS)}, got {kind!r}{closest(kind, PRUNERS)}")
    for key, value in pruner.items():
        if key not in PRUNERS[kind]:
            raise ConfigError(f"{where}unknown setting tune.pruner.{key} of the {kind} pruner"
                              f"{closest(key, PRUNERS[kind])}; valid: {', '.join(PRUNERS[kind]) or 'none'}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}tune.pruner.{key} must be an integer >= 0, got {value!r}")
    sampler = raw.get("sampler") or {}
    if not isinstance(sampler, dict) or set(sampler) - set(SAMPLER_DEFAULTS):
        raise ConfigError(f"{where}tune.sampler takes {', '.join(SAMPLER_DEFAULTS)} (TPE settings), got {sampler!r}")
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list):
        raise ConfigError(f"{where}tune.exclude must be a list of dotted keys, got {exclude!r}")
    resources = raw.get("resources") or {"num_cpus": 1}
    check_resources(resources, f"{where}tune.resources")  # the sweeps' rule: Ray's task option names
    return {"trials": trials, "objective": f"valid.{metric}", "noise": noise, "seed": seed,
            "sampler": {**SAMPLER_DEFAULTS, **sampler}, "pruner": {"kind": kind, **PRUNERS[kind], **pruner},
            "exclude": [str(k) for k in exclude], "resources": dict(resources)}


def _base(data: Any, source: Path | None) -> dict[str, Any]:
    from rankrobust.sweeps.spec import _base_tree  # the sweep specs' base: a preset file, then keys over it

    if not isinstance(data, dict):
        raise ConfigError("base must be a mapping of config sections (data, noise, model, loss, train)")
    return _base_tree(data, source)


def _arms(spec: TuneSpec, base: dict[str, Any], axes: dict[str, list[Any]],
          overrides: list[dict[str, Any]]) -> list[Arm]:
    keys = list(axes)
    arms: list[Arm] = []
    excluded_used: set[str] = set()
    for index, combo in enumerate(itertools.product(*(axes[k] for k in keys))):
        values = dict(zip(keys, combo))
        tree = copy.deepcopy(base)
        fixed = set(keys)
        for key, value in values.items():
            set_dotted(tree, key, value)
        for rule in overrides:
            if all(values.get(k) == v for k, v in rule.get("when", {}).items()):
                for key, value in rule.get("set", {}).items():
                    set_dotted(tree, key, value)
                    fixed.add(key)
        set_dotted(tree, "train.metric", spec.metric)
        if spec.noise == "clean":
            set_dotted(tree, "noise.pos_ratio", 0.0)
            set_dotted(tree, "noise.neg_prob", 0.0)
        label = _label(values)
        try:
            cfg = config_from_dict(prune_inapplicable(tree)[0])
        except ConfigError as err:
            raise ConfigError(f"arm {label} ({values}): {err}") from None
        if cfg.train.patience < 1:
            raise ConfigError(f"arm {label}: train.patience = {cfg.train.patience}; every trial trains to early "
                              f"stopping (train.epochs is a cap): set base.train.patience >= 1")
        found = search_space(cfg)
        excluded_used |= set(spec.exclude) & set(found)
        space = {k: s for k, s in found.items() if k not in fixed and k not in spec.exclude}
        if not space:
            raise ConfigError(f"arm {label}: empty search space (searchable: {', '.join(found) or 'none'}; held fixed "
                              f"by arms, overrides or tune.exclude: {', '.join(sorted(fixed | set(spec.exclude)))}); "
                              f"remove a key from those or drop the arm")
        full = {k: _dotted(cfg, k) for k in IDENTITY_KEYS}
        full.update(values)
        arms.append(Arm(index, label, full, cfg, space))
    unknown = [k for k in spec.exclude if k not in excluded_used]
    if unknown:
        raise ConfigError(f"tune.exclude names {unknown}, which no arm searches; remove it")
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise ConfigError("arms give duplicate labels (two values print alike); make the arm values distinct")
    return arms


def _dotted(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".", 1)
    return cfg.to_dict()[section][name]


def parse_tune_spec(data: Any, source: Path | None = None) -> TuneSpec:
    """Validate a tune spec dict and build its arms; one `ConfigError` line (naming the key and fix) otherwise."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}a tune spec must be a mapping with {', '.join(SPEC_KEYS)}")
    _known_keys(data, SPEC_KEYS, "tune spec key", "", where)
    axes = data.get("arms")
    if not isinstance(axes, dict) or not axes or any(not isinstance(v, list) or not v for v in axes.values()):
        raise ConfigError(f"{where}arms must map dotted config keys to non-empty lists, e.g. "
                          f"{{loss.name: [sl, bpr], model.name: [mf]}}")
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or any(
            not isinstance(r, dict) or set(r) - {"when", "set"} or not isinstance(r.get("when", {}), dict)
            or not isinstance(r.get("set", {}), dict) for r in overrides):
        raise ConfigError(f"{where}overrides must be a list of {{when: {{arm key: value}}, set: {{key: value}}}}")
    for n, rule in enumerate(overrides):
        for key in rule.get("when", {}):
            if key not in axes:
                raise ConfigError(f"{where}overrides[{n}].when names {key!r}, which is not an arms axis"
                                  f"{closest(key, axes)}; 'when' tests the arms axes: {list(axes)}")
    try:
        settings = _tune_section(data.get("tune"), "")
        spec = TuneSpec(name=str(data.get("name") or (source.stem if source else "tune")),
                        description=str(data.get("description", "")), source=source, document=data, **settings)
        base = _base(data.get("base") or {}, source)
        spec.arms = _arms(spec, base, axes, overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None
    return spec


def load_tune_spec(path: str | Path) -> TuneSpec:
    """Read and validate a tune spec YAML (`parse_tune_spec`); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tune spec {path} {'is not a file' if path.exists() else 'does not exist'}; "
                          f"pass a tune spec YAML (see configs/tune/)")
    try:
        data = load_yaml(path.read_text(), f"tune spec {path}")  # bounded (rankrobust.config.load_yaml)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"tune spec {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}; fix the spec") from None
    return parse_tune_spec(data, path)
