"""Typed configuration tree for one training run.

A run is described by a `RunConfig` made of five sections (data, noise, model,
loss, train).  Configs come from YAML files, nested dicts or dotted overrides
(``train.lr=1e-3``); every key and value is checked, and a wrong one fails with
a message naming the closest valid option.  Nothing here is parsed at import
time.

Names and options come from the registries, never from lists kept here:

=========  ================  =====================================================
section    chosen by          options read from
=========  ================  =====================================================
data       ``name``           `rankrobust.data.registry.DATASETS` (names only)
model      ``name``           `rankrobust.models.MODELS` (dim, score, dropout, layers…)
loss       ``name``           `rankrobust.losses.LOSSES` (tau, mode, margin…)
train      ``sampler``        `rankrobust.sampling.SAMPLERS` (num_negatives, pop_alpha)
train      ``batching``       `rankrobust.batching.BATCHINGS` (positives_per_user)
=========  ================  =====================================================

In YAML the chosen entry's options sit flat in the section, as before
(``loss: {name: bsl, tau1: 0.5}``).  An option of another entry
(``loss: {name: bpr, tau: 0.1}``) is rejected with a message naming the
entries that accept it, so ``config.json`` only ever holds options that act.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from rankrobust.batching import BATCHINGS
from rankrobust.data.registry import DATASETS
from rankrobust.data.splits import OOD_TEST_FRACTION, SPLITS
from rankrobust.evaluate import METRIC_NAMES
from rankrobust.losses import LOSSES
from rankrobust.models import MODELS
from rankrobust.noise import FN_POOL_KINDS, NOISE_KINDS
from rankrobust.registry import (ConfigError, Registry, Space, check_options, choice, closest, field_default,
                                 log_uniform, non_negative, one_of, option, option_prior, option_space, positive,
                                 probability, searchable_fields, unit_interval)
from rankrobust.sampling import SAMPLERS, negative_kind
from rankrobust.scoring import SCORERS

__all__ = ["ConfigError", "closest", "DataConfig", "NoiseConfig", "ModelConfig", "LossConfig", "TrainConfig",
           "RunConfig", "config_from_dict", "config_from_template", "load_config", "set_dotted", "parse_override",
           "prune_inapplicable", "SECTIONS", "Searched", "search_space", "PATH_KEYS", "with_absolute_paths",
           "CONFIG_SCHEMA", "MIGRATIONS", "Migration", "OutdatedConfig", "migrate_config", "canonical_config",
           "stored_config", "option_defaults", "load_yaml", "yaml_problem", "YAML_MAX_NODES"]


def _dataset_name(value: Any) -> str | None:
    return None if value in DATASETS else f"one of {list(DATASETS)}{closest(value, DATASETS)}"


_dataset_name.choices = DATASETS  # type: ignore[attr-defined]  # listed in --dataset's help


def _closed(lo: float, hi: float) -> Any:
    """A check for lo <= value <= hi."""
    return lambda value: None if lo <= value <= hi else f"in [{lo}, {hi}]"


def _open(lo: float, hi: float) -> Any:
    """A check for lo < value < hi."""
    return lambda value: None if lo < value < hi else f"in ({lo}, {hi})"


def _device(value: Any) -> str | None:
    ok = value in ("auto", "cpu") or str(value).startswith("cuda")
    return None if ok else "'auto', 'cpu' or 'cuda[:N]'"


def _cutoffs(value: Any) -> str | None:
    return None if value and all(k > 0 for k in value) else "a non-empty list of positive cutoffs"


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how validation is made.

    ``name`` is a registered dataset (see ``rankrobust datasets``) unless
    ``train_path``/``test_path`` point to files: then ``name`` is None (the
    run is not on a registered dataset, whatever ``name`` said; the store
    labels it by its files, `rankrobust.data.registry.files_label`), so
    ``config.json`` never claims ``lastfm`` for user data and runs stored
    before this rule keep their identity.  ``valid_is_test`` reproduces
    the authors' leaky protocol (valid = test).  Frozen (hashable), so a loaded
    dataset can be cached by its `DataConfig`.
    """

    name: str | None = option("lastfm", "dataset name (see `rankrobust datasets`; none with data.train_path)",
                              check=_dataset_name, flag="--dataset")
    data_dir: str | None = option(None, "folder holding yelp2018/, gowalla/, ml/, ml-100k/ (default $RANKROBUST_DATA "
                                        "or ../shared/data)", flag="--data-dir")
    train_path: str | None = option(None, "your own training file (LightGCN text, CSV/TSV/parquet)")
    test_path: str | None = option(None, "your own test file (with train_path)")
    valid_path: str | None = option(None, "your own validation file (default: carved from train)")
    valid_fraction: float = option(0.1, "share of each user's training items carved out for validation",
                                   check=unit_interval)
    valid_is_test: bool = option(False, "authors' leaky protocol: validate on test", flag="--valid-is-test")
    split_seed: int = option(0, "seed of the validation split (and of the popularity-shift test draw)")
    split: str = option("given", "test split: given (the dataset's own) or popularity (PSL's out-of-distribution "
                                 "test, drawn with probability ∝ 1/pop(i) per interaction; README: "
                                 "\"XSimGCL and the popularity-shift (OOD) test\")",
                        check=one_of(*SPLITS), flag="--split")
    ood_test_fraction: float = option(OOD_TEST_FRACTION, "share of all interactions drawn into the popularity-shift "
                                                         "test (data.split = popularity)", check=_open(0.0, 1.0))

    def validate(self) -> None:
        if self.train_path is not None and self.test_path is None:
            raise ConfigError("data.train_path is set but data.test_path is not")
        if self.train_path is not None:  # user files: no registered dataset is read
            object.__setattr__(self, "name", None)
        elif self.name is None:
            raise ConfigError("data.name is not set: name a dataset (--dataset lastfm) or give your files with "
                              "--set data.train_path=FILE --set data.test_path=FILE")
        if self.split != "popularity" and self.ood_test_fraction != OOD_TEST_FRACTION:
            raise ConfigError(f"data.ood_test_fraction = {self.ood_test_fraction} acts only with data.split = "
                              f"popularity (here {self.split!r}); add --split popularity or remove it")


@dataclass
class NoiseConfig:
    """Controlled corruption of the training data (docs/PROTOCOLS.md §3).

    ``pos_ratio`` r: each user gets floor(r·|P_u|) (or ceil) fake positives,
    drawn by the noise kind ``pos_kind`` (`rankrobust.noise.NOISE_KINDS`:
    ``uniform``, ``popularity``; its options flat in the section).
    ``neg_prob`` p: each sampled negative is replaced by a false negative from
    the user's ``neg_pool`` (``train`` positives, or a ``heldout`` 10%).
    """

    SELECTORS: ClassVar[dict[str, tuple[str, Registry]]] = {"pos_kind": ("pos_options", NOISE_KINDS)}
    pos_ratio: float = option(0.0, "noisy-positive ratio r", check=_closed(0.0, 10.0), flag="--noise-pos")
    pos_rounding: str = option("floor", "floor or ceil of r·|P_u|", check=one_of("floor", "ceil"))
    neg_prob: float = option(0.0, "false-negative probability p", check=probability, flag="--noise-neg")
    neg_pool: str = option("train", "false-negative pool: train or heldout", check=one_of(*FN_POOL_KINDS),
                           flag="--fn-pool")
    heldout_fraction: float = option(0.1, "share of positives held out as the false-negative pool",
                                     check=_open(0.0, 1.0))
    seed: int | None = option(None, "noise seed (default: train.seed)")
    pos_kind: str = option("uniform", "how noisy positives are drawn among a user's free items", flag="--noise-kind")
    pos_options: Any = None


@dataclass
class ModelConfig:
    """Backbone (`rankrobust.models.MODELS`) and its options (``options``, flat in YAML)."""

    SELECTORS: ClassVar[dict[str, tuple[str, Registry]]] = {"name": ("options", MODELS)}
    name: str = option("mf", "backbone", flag="--model")
    options: Any = None


@dataclass
class LossConfig:
    """Loss (`rankrobust.losses.LOSSES`) and its hyper-parameters (``options``, flat in YAML)."""

    SELECTORS: ClassVar[dict[str, tuple[str, Registry]]] = {"name": ("options", LOSSES)}
    name: str = option("sl", "loss", flag="--loss")
    options: Any = None

    def to_flat(self) -> dict[str, Any]:
        """The chosen loss's options as a plain dict (as they appear in YAML)."""
        return dataclasses.asdict(self.options)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the loss function (its options' ``loss_kwargs()`` where defined)."""
        own = getattr(self.options, "loss_kwargs", None)
        return own() if own is not None else dataclasses.asdict(self.options)


@dataclass
class TrainConfig:
    """Optimisation, batching, negative sampling, early stopping and evaluation.

    The sampler's options (``num_negatives``, ``pop_alpha``) and the batching's
    (``positives_per_user``) sit flat in this section, as every other key.
    """

    SELECTORS: ClassVar[dict[str, tuple[str, Registry]]] = {
        "sampler": ("sampler_options", SAMPLERS), "batching": ("batching_options", BATCHINGS)}
    epochs: int = option(100, "maximum epochs", check=positive, flag="--epochs")
    batch_size: int = option(1024, "training pairs per batch", check=positive, flag="--batch-size",
                             search=choice(512, 1024, 2048, 4096))
    lr: float = option(1e-3, "Adam learning rate", check=positive, flag="--lr", search=log_uniform(1e-4, 1e-2))
    l2: float = option(0.0, "the authors' L2 coefficient on the batch's embeddings", check=non_negative, flag="--l2",
                       search=choice(0.0, 1e-6, 1e-5, 1e-4, 1e-3))
    sampler: str = option("uniform", "negative sampler", flag="--sampler")
    sampler_options: Any = None
    batching: str = option("pairs", "how pairs are batched: pairs (shuffled) or users (chunks of a user's "
                                    "positives; README: \"BSL's positive side\")", flag="--batching")
    batching_options: Any = None
    patience: int = option(20, "early-stopping patience in validation rounds (one per train.eval_every epochs; "
                               "0: off)", check=non_negative, flag="--patience")
    eval_every: int = option(1, "validate every N epochs", check=positive)
    metric: str = option("recall@20", "validation metric for model selection (name@K, K in train.ks)")
    ks: list[int] = option(None, "cutoffs K of the metrics", check=_cutoffs, default_factory=lambda: [5, 10, 20, 50])
    eval_chunk: int = option(4096, "the most users per evaluation chunk (fewer when the device's memory or cache "
                                   "says so; never changes a result: rankrobust.evaluate.chunk_rows)", check=positive)
    valid_users: int | None = option(None, "validate on a fixed sample of this many users, drawn once with "
                                           "data.split_seed (the same users in every seed and trial; metrics.json "
                                           "records it as valid_sample); unset: every user. Test metrics always use "
                                           "every user", check=positive)
    ips_gamma: float | None = option(None, "also report IPS-weighted Recall/NDCG on test (test.ips_recall@K, "
                                           "test.ips_ndcg@K), propensity ∝ pop(i)^γ with pop the training count "
                                           "(rankrobust.evaluate.ips_metrics); γ = 0 gives the plain metrics, "
                                           "1 weights each test pair by 1/pop(i); unset: off",
                                     check=non_negative, flag="--ips-gamma")
    seed: int = option(0, "seed of the run", flag="--seed")
    device: str = option("auto", "auto, cpu or cuda[:N]", check=_device, flag="--device")
    compile: bool = option(False, "torch.compile the training step", flag="--compile")
    scorer: str = option("auto", "how sampled-negative scores are computed: gather (the M item rows), sparse "
                                 "(a sampled matrix product on the batch's columns), dense (one matrix product "
                                 "against the whole catalog) or auto (a cost model picks; rankrobust.scoring)",
                         check=one_of(*SCORERS), flag="--scorer")
    fast: bool = option(True, "custom-autograd gather-dot kernel of the gather scorer (rankrobust.kernels)")
    bf16: bool = option(False, "bfloat16: on CUDA autocast of the step; on CPU the matrix products of the dense "
                               "and all-items scorers (fast with AMX / AVX512-bf16), scores and loss in float32")
    time_limit: float = option(0.0, "stop training after this many seconds (0: no limit)", check=non_negative)
    deterministic: bool = option(False, "deterministic algorithms for the run where the device has them "
                                        "(torch.use_deterministic_algorithms, cuDNN, CUBLAS_WORKSPACE_CONFIG on CUDA); "
                                        "ops without one are named in metrics.json (rankrobust.determinism)")

    def validate(self) -> None:
        name, _, k = self.metric.partition("@")
        if name not in METRIC_NAMES:
            raise ConfigError(f"train.metric = {self.metric!r}: {name!r} is not a metric{closest(name, METRIC_NAMES)}; "
                              f"choose one of {list(METRIC_NAMES)} with @K")
        if not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"train.metric = {self.metric!r} needs a cutoff in train.ks {self.ks}")

    @property
    def num_negatives(self) -> int | None:
        """M of the chosen sampler (None for in-batch negatives, where M = B)."""
        return getattr(self.sampler_options, "num_negatives", None)


#: section name → its dataclass, in config order
SECTIONS: dict[str, type] = {"data": DataConfig, "noise": NoiseConfig, "model": ModelConfig, "loss": LossConfig,
                             "train": TrainConfig}


def _selectors(cls: type) -> dict[str, tuple[str, Registry]]:
    return getattr(cls, "SELECTORS", {})


def _plain_fields(cls: type) -> list[dataclasses.Field]:
    """Fields a user sets directly (the options holders of the selectors excluded)."""
    holders = {attr for attr, _ in _selectors(cls).values()}
    return [f for f in dataclasses.fields(cls) if f.name not in holders]


@dataclass
class RunConfig:
    """The whole description of one run."""

    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        """Check every section's values and the cross-section rules; returns self so calls chain."""
        for name in SECTIONS:
            section = getattr(self, name)
            for selector, (attr, registry) in _selectors(type(section)).items():
                if getattr(section, attr) is None:  # built in code, not parsed: default options
                    setattr(section, attr, registry.entry(getattr(section, selector)).make_options())
                options = getattr(section, attr)
                check_options(options, name)
                if hasattr(options, "validate"):  # rules between an entry's own options
                    options.validate()
            check_options(section, name)
            if hasattr(section, "validate"):  # cross-field rules of the section
                section.validate()
        if negative_kind(self.train.sampler) != "sampled" and self.train.scorer != "auto":
            raise ConfigError(f"train.scorer = {self.train.scorer!r} applies to sampled negatives only; "
                              f"train.sampler = {self.train.sampler!r} has one scoring path: remove train.scorer")
        if negative_kind(self.train.sampler) != "sampled" and self.noise.neg_prob > 0:
            raise ConfigError(f"noise.neg_prob needs a sampled-negative sampler, not train.sampler = "
                              f"{self.train.sampler!r} (false negatives are mixed into sampled negatives)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict: each section's keys with the chosen entries' options flat beside them."""
        tree: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            flat = {f.name: _plain(getattr(section, f.name)) for f in _plain_fields(type(section))}
            for attr, _ in _selectors(type(section)).values():
                flat.update(dataclasses.asdict(getattr(section, attr)))
            tree[name] = flat
        return tree

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """A copy with dotted-key overrides applied (``{"train.lr": 1e-3}``).

        Switching an entry (``loss.name``: sl → bpr) drops the old entry's
        options that were left at their defaults and that the new entry does
        not take; options set on purpose are kept, and rejected if they do not
        apply to the new entry.
        """
        tree = self.to_dict()
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        for name in SECTIONS:
            section = getattr(self, name)
            for selector, (attr, registry) in _selectors(type(section)).items():
                new = tree[name].get(selector)
                if new == getattr(section, selector) or new not in registry:
                    continue
                keep = set(registry.entry(new).option_names)
                old = getattr(section, attr)
                for f in dataclasses.fields(old):
                    if (f.name not in keep and f"{name}.{f.name}" not in overrides
                            and getattr(old, f.name) == field_default(f)):
                        tree[name].pop(f.name, None)
        return config_from_dict(tree)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: the options that name files or folders (dotted keys): relative ones are relative to the working directory
PATH_KEYS = ("data.data_dir", "data.train_path", "data.test_path", "data.valid_path")


def with_absolute_paths(cfg: RunConfig, base: str | Path | None = None) -> RunConfig:
    """``cfg`` with every relative path option (`PATH_KEYS`) made absolute against ``base`` (default: the cwd).

    A sweep's cells carry absolute paths, so a task whose working directory is
    another one (a Ray worker started elsewhere) reads the files the driver
    meant.  ``~`` is expanded.  Returns ``cfg`` itself when nothing changes.
    """
    root = Path(base) if base is not None else Path.cwd()
    changes = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and not Path(value).expanduser().is_absolute():
            changes[key] = str((root / Path(value).expanduser()).resolve())
        elif value is not None and str(value).startswith("~"):
            changes[key] = str(Path(value).expanduser())
    return cfg.with_overrides(changes) if changes else cfg


@dataclass(frozen=True)
class Searched:
    """One tunable option of a config: its search space, its documented prior and its doc line."""

    space: Space
    prior: Any
    doc: str


def search_space(cfg: RunConfig) -> dict[str, Searched]:
    """The options that act in ``cfg`` and declare a search space, by dotted key (``"loss.tau"``).

    Read from the option declarations themselves (`rankrobust.registry.option`
    with ``search=``): the section's own fields (the trainer's lr, l2, batch
    size) and the options of the entries ``cfg`` chooses (its loss, its
    backbone, its sampler, its batching).  Options of entries not chosen are
    not included, so an SL config is never searched over BPR's options; nor
    are options that the chosen entry says do not act under its other values
    (its ``searchable()`` hook: BSL in mode paper searches τ₁, τ₂ and not r).
    In config order; empty when nothing in ``cfg`` is tunable.
    """
    found: dict[str, Searched] = {}

    def add(section: str, holder: Any, fields) -> None:
        for f in searchable_fields(holder, fields):
            found[f"{section}.{f.name}"] = Searched(option_space(f), option_prior(f), f.metadata.get("doc", ""))

    for name in SECTIONS:
        section = getattr(cfg, name)
        add(name, section, _plain_fields(type(section)))
        for attr, _ in _selectors(type(section)).values():
            add(name, getattr(section, attr), dataclasses.fields(getattr(section, attr)))
    return found


# --------------------------------------------------------------------------- parsing
def _coerce(path: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint ``hint``; ints become floats where needed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(path, value, args[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(f"{path}[{n}]", v, inner) for n, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # `--set key=1` arrives as the YAML integer 1
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path} must be true or false, got {'nothing' if value is None else repr(value)}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{path} must be an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value


def _coerce_into(cls: type, values: dict[str, Any], path: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {key: _coerce(f"{path}.{key}", value, hints[key]) for key, value in values.items()}


def _build_section(cls: type, data: Any, path: str):
    """One section from its flat mapping: plain keys, selectors, and the chosen entries' options."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping, got {type(data).__name__}")
    plain = {f.name for f in _plain_fields(cls)}
    selectors = _selectors(cls)
    chosen = {}
    for selector, (_, registry) in selectors.items():
        name = data.get(selector, field_default(next(f for f in dataclasses.fields(cls) if f.name == selector)))
        try:
            chosen[selector] = registry.entry(name)
        except ConfigError as err:
            raise ConfigError(f"{path}.{selector} = {name!r} is not valid: {err}") from None
    own: dict[str, dict[str, Any]] = {s: {} for s in selectors}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in plain:
            kwargs[key] = value
            continue
        takers = [s for s, e in chosen.items() if key in e.option_names]
        if takers:
            own[takers[0]][key] = value
            continue
        for selector, (_, registry) in selectors.items():
            owners = registry.owners(key)
            if owners:
                raise ConfigError(
                    f"{path}.{key} does not apply to {path}.{selector} = {chosen[selector].name!r}; it is an "
                    f"option of {registry.kind} {', '.join(owners)}. Remove it or choose one of those")
        valid = sorted(plain | {n for e in chosen.values() for n in e.option_names})
        raise ConfigError(f"unknown config key '{path}.{key}'{closest(key, valid)}; valid keys: {', '.join(valid)}")
    kwargs = _coerce_into(cls, kwargs, path)
    for selector, (attr, _) in selectors.items():
        entry = chosen[selector]
        kwargs[attr] = entry.options(**_coerce_into(entry.options, own[selector], path))
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a `RunConfig` from a nested dict (unknown keys → ConfigError).

    A stored ``config.json`` (with its ``"schema"``) is first brought to the current layout
    (`migrate_config`: `OutdatedConfig` when it cannot be); a dict without ``"schema"`` is read as it is.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
    if "schema" in data:
        data = migrate_config(data)
    sections = {}
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"unknown config key '{key}'{closest(key, SECTIONS)}; valid keys: {', '.join(SECTIONS)}")
        sections[key] = _build_section(SECTIONS[key], value, key)
    return RunConfig(**sections).validate()


def prune_inapplicable(tree: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Drop the options that belong to entries other than the chosen ones; returns (tree, dropped keys).

    For templates that serve several entries at once (a sweep base shared by
    BPR and SL cells): ``loss.tau`` is kept for an SL cell and dropped for a
    BPR cell.  Unknown keys are left in place (parsing rejects them).
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    dropped: set[str] = set()
    for name, cls in SECTIONS.items():
        section = out.get(name)
        if not isinstance(section, dict):
            continue
        selectors = _selectors(cls)
        plain = {f.name for f in _plain_fields(cls)}
        accepted, foreign = set(plain), set()
        for selector, (_, registry) in selectors.items():
            chosen = section.get(selector, field_default(next(f for f in dataclasses.fields(cls)
                                                               if f.name == selector)))
            if chosen in registry:
                accepted |= set(registry.entry(chosen).option_names)
            foreign |= registry.all_option_names()
        for key in list(section):
            if key in foreign and key not in accepted:
                del section[key]
                dropped.add(f"{name}.{key}")
    return out, dropped


def config_from_template(overrides: dict[str, Any]) -> RunConfig:
    """A `RunConfig` from dotted keys used as a template (``{"model.name": "mf", "model.layers": 3}``).

    Options that the chosen entries do not take are dropped (`prune_inapplicable`),
    as in a sweep template, so one set of flags can serve MF and LightGCN, sampled
    and in-batch negatives; unknown keys and bad values still raise ConfigError.
    """
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return config_from_dict(prune_inapplicable(tree)[0])


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (or JSON) config file; errors name the file."""
    return config_from_dict(read_config_tree(path))


def read_config_tree(path: str | Path) -> dict[str, Any]:
    """The nested dict of a YAML (or JSON) config file, unvalidated; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file (a folder?); give the path of a YAML config")
    try:
        data = load_yaml(path.read_text(), str(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}; fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    try:
        config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return data


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``key = 'a.b'``; unknown sections fail."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            if depth == 0 and part in SECTIONS:  # a sparse tree: sections appear on first use
                node[part] = {}
            else:
                where = ".".join(parts[:depth]) or "config"
                options = [k for k, v in node.items() if isinstance(v, dict)] or list(SECTIONS)
                raise ConfigError(f"unknown config section '{part}' in '{key}' under {where}{closest(part, options)}")
        node = node[part]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with a YAML value (``train.ks=[10,20]``, ``loss.tau=0.1``).

    A value that is not plain YAML (``train.lr=[``, a ``!!python/…`` tag)
    is one ConfigError line naming the key and the fix.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        return key.strip(), load_yaml(raw, f"--set {key.strip()}")
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text}: the value of {key.strip()} is not a plain YAML value "
                          f"({yaml_problem(err)}); write a number, word, true/false or [list], quoting text that "
                          f"holds YAML characters (--set '{key.strip()}=\"...\"')") from None


#: the most values (scalars, lists, mappings) a YAML document may expand to, an alias counting at every use: a
#: config or spec holds hundreds; a few hundred bytes of nested aliases ("billion laughs") would expand to billions
YAML_MAX_NODES = 100_000


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in a few words with its line (``expected ',' or ']', but got '<stream end>' at line 1``)."""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    if "constructor for the tag" in problem:
        problem = f"{problem}: YAML tags such as !!python/... are not read"
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}" if mark is not None else problem


def load_yaml(text: str, where: str) -> Any:
    """The data of one YAML document, read with the safe loader and bounded: the one YAML reader of rankrobust.

    Before anything is built, the document's node graph is measured as it
    would expand (each alias counting its whole target at every use): more
    than `YAML_MAX_NODES` values, an alias that refers to itself, or nesting
    too deep to measure is one ConfigError line naming ``where`` (a file, a
    ``--set`` key), so a few hundred bytes of nested aliases cannot take the
    CPU and memory of what later walks the data.  A malformed document
    raises yaml.YAMLError (callers name the file).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _bounded(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: the YAML document is nested too deeply; flatten it") from None
    finally:
        loader.dispose()


def _bounded(root: "yaml.Node", where: str) -> None:
    """ConfigError when ``root`` expands to more than `YAML_MAX_NODES` values or holds a recursive alias."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: "yaml.Node") -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{where}: a YAML alias refers to a node that contains it (a recursive anchor); "
                              f"write the values out")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > YAML_MAX_NODES:
                raise ConfigError(f"{where}: the YAML document expands to more than {YAML_MAX_NODES:,} values "
                                  f"through its aliases (*name); a config or spec needs far fewer: write the "
                                  f"values out or use fewer aliases")
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


# --------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class Flag:
    """A command-line flag setting one config key, with its type and help text (from the registries)."""

    flag: str
    key: str
    type: type
    help: str


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def config_flags() -> list[Flag]:
    """Every flag declared with ``option(..., flag=...)`` in the sections and in the registries' options.

    A selector's help lists its registered names; an entry option's help says
    which entries take it and each one's default (`_shared_help`: ``--layers`` →
    "model lightgcn: LightGCN propagation layers (hops) (default 3); xsimgcl:
    propagation layers L … (default 2)").  One flag per key.
    """
    flags: dict[str, Flag] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        selectors = _selectors(cls)
        for f in _plain_fields(cls):
            if not f.metadata.get("flag"):
                continue
            text = f.metadata["doc"]
            choices = selectors[f.name][1] if f.name in selectors else getattr(f.metadata["check"], "choices", None)
            if choices is not None:
                text += f": {', '.join(map(str, choices))}"
            default = field_default(f)
            if default is not None and default is not False and default != "":  # 0 and 0.0 are shown
                text += f" (default {default})"
            flags[f.metadata["flag"]] = Flag(f.metadata["flag"], f"{section}.{f.name}", _base_type(hints[f.name]), text)
        for _, registry in selectors.values():
            for entry in registry.entries():
                hints = typing.get_type_hints(entry.options)
                for f in dataclasses.fields(entry.options):
                    name = f.metadata.get("flag")
                    if not name or name in flags:
                        continue
                    text = _shared_help(registry, f.name)
                    flags[name] = Flag(name, f"{section}.{f.name}", _base_type(hints[f.name]), text)
    return list(flags.values())


def _shared_help(registry: Registry, key: str) -> str:
    """The help of an entry option ``key`` that one or several entries of ``registry`` declare, naming each
    entry's own doc line and default (an entry's help never shows another's default).

    One doc line and one default: "DOC (loss sl, bsl; default 0.1)".  One doc line, defaults that differ:
    "DOC (model lightgcn: default 3; xsimgcl: default 2)".  Doc lines that differ: each group of entries with
    its own, "loss bce, sl: DOC₁ (default 0.1); psl: DOC₂ (default 0.05)".  A default of None is not shown.
    """
    docs: dict[str, dict[str, Any]] = {}  # doc line -> {entry name: default}, in registration order
    for entry in registry.entries():
        for f in dataclasses.fields(entry.options):
            if f.name == key:
                docs.setdefault(f.metadata["doc"], {})[entry.name] = field_default(f)

    def defaults(by_entry: dict[str, Any], with_names: bool) -> str:
        groups: dict[str, list[str]] = {}  # shown default -> entries
        for name, default in by_entry.items():
            groups.setdefault(str(default), []).append(name)
        shown = [(names, d) for d, names in groups.items() if d != "None"]
        if not with_names or len(groups) == 1:
            return "; ".join(f"default {d}" for _, d in shown)
        return "; ".join(f"{', '.join(names)}: default {d}" for names, d in shown)

    if len(docs) == 1:
        (doc, by_entry), = docs.items()
        names = ", ".join(by_entry)
        text = defaults(by_entry, with_names=True)
        if len({str(v) for v in by_entry.values()}) == 1:
            return f"{doc} ({registry.kind} {names}" + (f"; {text})" if text else ")")
        return f"{doc} ({registry.kind} {text})"
    parts = []
    for doc, by_entry in docs.items():
        text = defaults(by_entry, with_names=True)
        parts.append(f"{', '.join(by_entry)}: {doc}" + (f" ({text})" if text else ""))
    return f"{registry.kind} " + "; ".join(parts)


# --------------------------------------------------------------------------- run identity
#: version of the stored config layout: ``config.json`` carries it as its top-level ``"schema"`` (`stored_config`);
#: a file without one was written before versions existed and is version 1.  Raise it with each new `MIGRATIONS`
#: rule (the rule's ``schema``).
CONFIG_SCHEMA = 2


class OutdatedConfig(ConfigError):
    """A stored config that this version cannot read as a run it would make (an option removed or renamed
    without a rule in `MIGRATIONS`, a value no longer valid, a newer schema).  Not an error for readers: such a
    run is outdated.  The message is one line naming the key."""


@dataclass(frozen=True)
class Migration:
    """One change of the stored config layout, applied to stored configs of a schema below ``schema``.

    ``kind``:

    - ``"default"``: option ``key`` was added with a default that behaves otherwise than the code did before
      it existed; a stored config without ``key`` gets ``value`` (the old behaviour), only where every
      ``when`` key has its value.  An option whose default *is* the old behaviour needs no rule.
    - ``"rename"``: option ``key`` is now called ``to``; its stored value moves there.
    - ``"remove"``: option ``key`` no longer exists and the code now always behaves as ``key = value``; a
      stored ``value`` is dropped, any other value makes the run outdated (`OutdatedConfig`).
    """

    schema: int
    kind: str
    key: str
    value: Any = None
    to: str | None = None
    when: tuple[tuple[str, Any], ...] = ()
    doc: str = ""


#: The one place where a stored config (``config.json``) of an older schema is brought to the current layout,
#: in order (`canonical_config`).  Options added since version 1 whose default is the old behaviour need no rule:
#: data.split = given (the dataset's own test), data.ood_test_fraction (acts with split = popularity only),
#: train.ips_gamma = None (off), train.deterministic = false, train.scorer = auto (every scorer computes the
#: same scores; it only picks the computation path).  Changing the default of an existing option also needs a
#: ``"default"`` rule with the old default (configs written before that option existed get the old behaviour)
#: and a new `CONFIG_SCHEMA`; tests/test_run_identity.py compares every default with its frozen snapshot.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "default", "loss.tau", 1.0, when=(("loss.name", "bce"),),
              doc="BCE read plain logits (τ = 1) before it took a temperature; loss.tau defaults to 0.1 since"),
)


def _get_dotted(tree: dict[str, Any], key: str, missing: Any = None) -> Any:
    section, _, name = key.partition(".")
    node = tree.get(section)
    return node.get(name, missing) if isinstance(node, dict) else missing


def _pop_dotted(tree: dict[str, Any], key: str) -> None:
    section, _, name = key.partition(".")
    if isinstance(tree.get(section), dict):
        tree[section].pop(name, None)


def migrate_config(tree: dict[str, Any]) -> dict[str, Any]:
    """A stored config tree brought to the current layout: every `MIGRATIONS` rule above its schema, in order.

    ``tree``: the content of a ``config.json``; its ``"schema"`` (1 when absent) says which rules it already
    follows.  Returns a new tree without ``"schema"`` (the input is not changed).  Raises `OutdatedConfig`
    (one line naming the key) for a schema that is not a whole number from 1 to `CONFIG_SCHEMA`, a renamed
    option set under both names, or a removed option at a value this version no longer reproduces.
    """
    if not isinstance(tree, dict):
        raise OutdatedConfig(f"config must be a mapping, got {type(tree).__name__}")
    version = tree.get("schema", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise OutdatedConfig(f"schema = {version!r} is not a config schema (a whole number from 1)")
    if version > CONFIG_SCHEMA:
        raise OutdatedConfig(f"schema = {version} was written by a newer rankrobust (this version reads schemas up "
                             f"to {CONFIG_SCHEMA}); upgrade rankrobust to read it")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items() if k != "schema"}
    missing = object()
    for rule in MIGRATIONS:
        if rule.schema <= version:
            continue
        present = _get_dotted(out, rule.key, missing)
        if rule.kind == "default":
            if present is missing and all(_get_dotted(out, k, missing) == v for k, v in rule.when):
                set_dotted(out, rule.key, rule.value)
        elif rule.kind == "rename":
            if present is not missing:
                if _get_dotted(out, rule.to, missing) is not missing:
                    raise OutdatedConfig(f"{rule.key} was renamed {rule.to} (config schema {rule.schema}) and both "
                                         f"are set; keep one")
                _pop_dotted(out, rule.key)
                set_dotted(out, rule.to, present)
        elif rule.kind == "remove":
            if present is not missing:
                if present != rule.value:
                    raise OutdatedConfig(f"{rule.key} = {present!r}: option removed in config schema {rule.schema} "
                                         f"({rule.doc}); this version only makes {rule.key} = {rule.value!r} runs")
                _pop_dotted(out, rule.key)
        else:
            raise ValueError(f"MIGRATIONS: unknown kind {rule.kind!r} of the rule for {rule.key}")
    return out


def canonical_config(tree: dict[str, Any]) -> dict[str, Any]:
    """The canonical form of a stored config (a ``config.json``): migrated, every default filled, as `to_dict`.

    Two runs are the same run exactly when their canonical forms are equal, so an option added later with a
    default equal to the old behaviour leaves old runs current.  ``tree`` without ``"schema"`` is read as a
    version-1 file (`migrate_config`); the result has no ``"schema"``.  A fresh `RunConfig`'s ``to_dict()`` is
    its own canonical form.  Raises `OutdatedConfig` (one line naming the key: an option this version does not
    know, a value it no longer accepts) when the config is not one this version would make.
    """
    migrated = migrate_config(tree)
    try:
        return config_from_dict(migrated).to_dict()
    except ConfigError as err:
        reason = str(err).strip().splitlines()[0].partition("; valid keys")[0] if str(err).strip() else "invalid"
        raise OutdatedConfig(f"not a config of this version: {reason} (an option removed or renamed without a rule "
                             f"in rankrobust.config.MIGRATIONS?)") from None


def stored_config(cfg: RunConfig) -> dict[str, Any]:
    """What ``config.json`` holds for ``cfg``: its `to_dict` with the layout's version (``"schema"``: `CONFIG_SCHEMA`)."""
    return {"schema": CONFIG_SCHEMA, **cfg.to_dict()}


def option_defaults() -> dict[str, Any]:
    """Every option's default by key: ``section.key`` for the sections' own options, ``section.entry.key`` for
    the options of each registered entry (``loss.bce.tau``).  What the frozen snapshot
    ``tests/data/option_defaults.json`` is compared with."""
    found: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        for f in _plain_fields(cls):
            found[f"{section}.{f.name}"] = _plain(field_default(f))
        for _, registry in _selectors(cls).values():
            for entry in registry.entries():
                for f in dataclasses.fields(entry.options):
                    found[f"{section}.{entry.name}.{f.name}"] = _plain(field_default(f))
    return found
