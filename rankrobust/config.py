"""Typed configuration tree for one training run.

A run is described by a `RunConfig` made of five sections (data, noise, model,
loss, train).  Configs come from YAML files, nested dicts or dotted overrides
(`train.lr=1e-3`); every key and value is checked, and a wrong one fails with a
message naming the closest valid option.  Nothing here is parsed at import time.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is invalid; the message says which and why."""


def closest(word: str, options) -> str:
    """' (did you mean X?)' for the option closest to ``word``, or ''."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _choice(section: str, key: str, value: Any, options) -> None:
    if value not in options:
        raise ConfigError(
            f"{section}.{key} = {value!r} is not valid{closest(value, options)}; "
            f"choose one of {sorted(options)}"
        )


def _positive(section: str, key: str, value, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{section}.{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


DATASET_NAMES = ("lastfm", "yelp2018", "gowalla", "ml", "ml-100k")
MODELS = ("mf", "lightgcn")
SCORES = ("cosine", "dot")
LOSS_NAMES = ("bpr", "bce", "mse", "ccl", "sl", "bsl")
BSL_MODES = ("paper", "reweight", "multi")
SAMPLERS = ("uniform", "uniform_exclude", "popularity", "in_batch")
FN_POOLS = ("train", "heldout")


@dataclass
class DataConfig:
    """Which dataset and how validation is made.

    ``name`` is a registered dataset (see ``rankrobust datasets``) unless
    ``train_path``/``test_path`` point to LightGCN-format files.
    ``valid_is_test`` reproduces the authors' leaky protocol (valid = test).
    """

    name: str = "lastfm"
    data_dir: str | None = None
    train_path: str | None = None
    test_path: str | None = None
    valid_path: str | None = None
    valid_fraction: float = 0.1
    valid_is_test: bool = False
    split_seed: int = 0

    def validate(self) -> None:
        if self.train_path is None:
            _choice("data", "name", self.name, DATASET_NAMES)
        elif self.test_path is None:
            raise ConfigError("data.train_path is set but data.test_path is not")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction must be in [0, 1), got {self.valid_fraction}")


@dataclass
class NoiseConfig:
    """Controlled corruption of the training data (PROTOCOLS.md §3).

    ``pos_ratio`` r: each user gets floor(r·|P_u|) (or ceil) fake positives.
    ``neg_prob`` p: each sampled negative is replaced by a false negative from
    the user's ``neg_pool`` (``train`` positives, or a ``heldout`` 10%).
    """

    pos_ratio: float = 0.0
    pos_rounding: str = "floor"
    neg_prob: float = 0.0
    neg_pool: str = "train"
    heldout_fraction: float = 0.1
    seed: int | None = None

    def validate(self) -> None:
        if not 0.0 <= self.pos_ratio <= 10.0:
            raise ConfigError(f"noise.pos_ratio must be in [0, 10], got {self.pos_ratio}")
        if not 0.0 <= self.neg_prob <= 1.0:
            raise ConfigError(f"noise.neg_prob must be a probability in [0, 1], got {self.neg_prob}")
        _choice("noise", "pos_rounding", self.pos_rounding, ("floor", "ceil"))
        _choice("noise", "neg_pool", self.neg_pool, FN_POOLS)
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"noise.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass
class ModelConfig:
    """Backbone: matrix factorisation or LightGCN, with dot or cosine scores."""

    name: str = "mf"
    dim: int = 64
    layers: int = 3
    score: str = "cosine"
    dropout: float = 0.0

    def validate(self) -> None:
        _choice("model", "name", self.name, MODELS)
        _choice("model", "score", self.score, SCORES)
        _positive("model", "dim", self.dim)
        _positive("model", "layers", self.layers, allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LossConfig:
    """Loss name and its hyper-parameters (only those the loss uses are passed).

    SL: ``tau``.  BSL: ``mode`` = ``paper`` (``tau1``, ``tau2``; default both
    ``tau``) or the authors' ``reweight``/``multi`` (``tau``, ``r``).  CCL:
    ``margin``, ``neg_weight``.
    """

    name: str = "sl"
    tau: float = 0.1
    tau1: float | None = None
    tau2: float | None = None
    mode: str = "paper"
    r: float = 1.0
    margin: float = 0.8
    neg_weight: float = 1.0
    include_pos: bool = False

    def validate(self) -> None:
        _choice("loss", "name", self.name, LOSS_NAMES)
        _choice("loss", "mode", self.mode, BSL_MODES)
        for key in ("tau", "tau1", "tau2", "r"):
            _positive("loss", key, getattr(self, key))
        _positive("loss", "neg_weight", self.neg_weight, allow_zero=True)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the loss function named ``self.name``."""
        if self.name == "sl":
            return {"tau": self.tau, "include_pos": self.include_pos}
        if self.name == "bsl":
            if self.mode == "paper":
                return {"mode": "paper", "tau1": self.tau1 or self.tau, "tau2": self.tau2 or self.tau}
            return {"mode": self.mode, "tau": self.tau, "r": self.r}
        if self.name == "ccl":
            return {"margin": self.margin, "neg_weight": self.neg_weight}
        return {}


@dataclass
class TrainConfig:
    """Optimisation, sampling, early stopping and evaluation settings.

    ``fast`` uses the custom-autograd scorer (`rankrobust.kernels`), ``compile``
    wraps the step in ``torch.compile``, ``bf16`` runs the step under bfloat16
    autocast on CUDA, ``time_limit`` stops training after that many seconds
    (0: no limit), ``patience`` 0 disables early stopping.
    """

    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    l2: float = 0.0
    sampler: str = "uniform"
    num_negatives: int = 64
    pop_alpha: float = 1.0
    patience: int = 20
    eval_every: int = 1
    metric: str = "recall@20"
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    eval_chunk: int = 4096
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    fast: bool = True
    bf16: bool = False
    time_limit: float = 0.0

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "num_negatives", "eval_every", "eval_chunk"):
            _positive("train", key, getattr(self, key))
        _positive("train", "lr", self.lr)
        _positive("train", "l2", self.l2, allow_zero=True)
        _positive("train", "patience", self.patience, allow_zero=True)
        _positive("train", "time_limit", self.time_limit, allow_zero=True)
        _choice("train", "sampler", self.sampler, SAMPLERS)
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ConfigError(f"train.ks must be positive cutoffs, got {self.ks}")
        name, _, k = self.metric.partition("@")
        _choice("train", "metric", name, ("recall", "ndcg", "precision", "hit", "mrr"))
        if not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"train.metric = {self.metric!r} needs a cutoff in train.ks {self.ks}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"train.device = {self.device!r}; use 'auto', 'cpu' or 'cuda[:N]'")


@dataclass
class RunConfig:
    """The whole description of one run."""

    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        """Check every section; returns self so calls chain."""
        for section in (self.data, self.noise, self.model, self.loss, self.train):
            section.validate()
        if self.train.sampler == "in_batch" and self.noise.neg_prob > 0:
            raise ConfigError("noise.neg_prob needs a sampled-negative sampler, not train.sampler = 'in_batch'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """A copy with dotted-key overrides applied (``{"train.lr": 1e-3}``)."""
        tree = self.to_dict()
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        return config_from_dict(tree)


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
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path} must be true or false, got {value!r}")
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


def _build(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'{closest(key, names)}; valid keys: {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, full)
        else:
            kwargs[key] = _coerce(full, value, hint)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a `RunConfig` from a nested dict (unknown keys → ConfigError)."""
    return _build(RunConfig, data or {}, "").validate()


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (or JSON) config file; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``key = 'a.b'``; unknown sections fail."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            where = ".".join(parts[:depth]) or "config"
            options = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(f"unknown config section '{part}' in '{key}' under {where}{closest(part, options)}")
        node = node[part]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with a YAML value (``train.ks=[10,20]``, ``loss.tau=0.1``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(raw)
