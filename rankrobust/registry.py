"""Registries: one home for every name a config can choose and for that entry's options.

A *registry* (`Registry`) maps names (``"sl"``, ``"lightgcn"``, ``"uniform"``)
to an *entry*: the object it builds (a loss function, a model factory, a
sampler factory), a one-line summary, and an *options* dataclass whose fields
are that entry's typed parameters.  Every field is declared with `option`,
which keeps its default, its documentation, its check and its command-line
flag next to each other::

    @dataclass
    class SLOptions:
        tau: float = option(0.1, "temperature τ", check=positive, flag="--tau")

    LOSSES.register("sl", SLOptions)(sl)

`rankrobust.config` reads the names and options of every registry to parse
and validate configs (an option that belongs to another entry is rejected
with a message naming the entries that accept it), and `rankrobust.cli`
derives its flags and help texts from the same metadata.  Adding a loss,
model or sampler is therefore one function plus one ``register`` call.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

__all__ = [
    "ConfigError", "closest", "option", "positive", "non_negative", "probability", "unit_interval",
    "one_of", "NoOptions", "Entry", "Registry", "check_options", "option_fields",
    "Space", "log_uniform", "uniform", "integers", "choice", "option_space", "option_prior", "searchable_fields",
    "not_searched",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is invalid; the message says which and why."""


def closest(word: Any, options) -> str:
    """' (did you mean X?)' for the option closest to ``word``, or ''."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


# --------------------------------------------------------------------------- checks
# A check takes a value and returns None when it is fine, else the end of a sentence
# "<section.key> must be ..." describing what is allowed.
Check = Callable[[Any], "str | None"]


def positive(value: Any) -> str | None:
    """> 0 and finite."""
    return None if value is None or (math.isfinite(value) and value > 0) else "> 0"


def non_negative(value: Any) -> str | None:
    """>= 0 and finite."""
    return None if value is None or (math.isfinite(value) and value >= 0) else ">= 0"


def probability(value: Any) -> str | None:
    """In [0, 1]."""
    return None if 0.0 <= value <= 1.0 else "a probability in [0, 1]"


def unit_interval(value: Any) -> str | None:
    """In [0, 1)."""
    return None if 0.0 <= value < 1.0 else "in [0, 1)"


def one_of(*choices: Any) -> Check:
    """A check accepting only ``choices`` (its message lists them)."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"one of {list(choices)}{closest(value, choices)}"

    check.choices = choices  # type: ignore[attr-defined]
    return check


# --------------------------------------------------------------------------- search spaces
@dataclass(frozen=True)
class Space:
    """The range a hyper-parameter tuner explores for one option.

    ``kind`` is ``"float"`` (``low``..``high``, log scale when ``log``),
    ``"int"`` (``low``..``high`` inclusive, in steps of ``step``, log scale
    when ``log``) or ``"categorical"`` (one of ``choices``).  Build one with
    `log_uniform`, `uniform`, `integers` or `choice` and declare it on the
    option it belongs to (``option(..., search=log_uniform(0.02, 1.0))``);
    the tuner (`rankrobust.tuning`) reads it from there, so a new loss is
    tuned by declaring its space in its own file.  An option left without one
    keeps its configured value in every trial; its options class says why in
    a ``NOT_SEARCHED`` class attribute (name → reason, `not_searched`), and a
    ``searchable()`` method leaves out options that do not act under the
    others' values (`searchable_fields`).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int = 1
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical search space needs at least one choice")
        elif self.kind in ("float", "int"):
            if self.low is None or self.high is None or not self.low <= self.high:
                raise ValueError(f"a {self.kind} search space needs low <= high, got [{self.low}, {self.high}]")
            if self.log and self.low <= 0:
                raise ValueError(f"a log-scale search space needs low > 0, got {self.low}")
        else:
            raise ValueError(f"search space kind must be float, int or categorical, got {self.kind!r}")

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw a value for option ``name`` from an Optuna-style ``trial`` (``suggest_float`` / ``_int`` /
        ``_categorical``)."""
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step, log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the space (a prior must)."""
        if self.kind == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        """One line for docs and protocol records: ``log-uniform [0.02, 1]``, ``one of ['dot', 'cosine']``."""
        if self.kind == "categorical":
            return f"one of {list(self.choices)}"
        scale = "log-" if self.log else ""
        kind = "uniform" if self.kind == "float" else "integers"
        return f"{scale}{kind} [{self.low:g}, {self.high:g}]" + (f" step {self.step}" if self.step != 1 else "")

    def to_dict(self) -> dict[str, Any]:
        """A plain record of the space (JSON-serialisable)."""
        if self.kind == "categorical":
            return {"kind": "categorical", "choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log, "step": self.step}


def log_uniform(low: float, high: float) -> Space:
    """Floats in [low, high] on a log scale (temperatures, learning rates, L2 weights)."""
    return Space("float", float(low), float(high), log=True)


def uniform(low: float, high: float) -> Space:
    """Floats in [low, high] on a linear scale (probabilities, margins)."""
    return Space("float", float(low), float(high))


def integers(low: int, high: int, *, step: int = 1, log: bool = False) -> Space:
    """Integers in [low, high] (layers, negatives; ``log`` for sizes spanning orders of magnitude)."""
    return Space("int", int(low), int(high), log=log, step=step)


def choice(*values: Any) -> Space:
    """One of ``values`` (an activation, a score function, a mode)."""
    return Space("categorical", choices=tuple(values))


def option_space(f: dataclasses.Field) -> Space | None:
    """The search space declared on an option field (None: the tuner leaves it at its value)."""
    return f.metadata.get("search")


def option_prior(f: dataclasses.Field) -> Any:
    """The documented best setting of an option (``prior=``), else its default: the tuner's first trial."""
    return f.metadata["prior"] if "prior" in f.metadata else field_default(f)


def searchable_fields(options: Any, fields=None) -> list[dataclasses.Field]:
    """The fields of the dataclass instance ``options`` that declare a search space and act under its values.

    ``fields`` defaults to all of its fields.  An options class whose options
    act only under some values of the others defines ``searchable(self) ->
    set[str]``, the names of its searched options that act now; the others are
    left out (BSL searches τ₁, τ₂ in mode paper and τ, r in modes reweight and
    multi, as `BSLOptions.validate` refuses the other mode's options).
    """
    fields = dataclasses.fields(options) if fields is None else fields
    hook = getattr(options, "searchable", None)
    acting = hook() if hook is not None else None
    return [f for f in fields if option_space(f) is not None and (acting is None or f.name in acting)]


def not_searched(options_cls: type) -> dict[str, str]:
    """Why each option of ``options_cls`` without a search space is not tuned (its ``NOT_SEARCHED`` class
    attribute: option name → reason, shown in docs/LOSSES.md), or {}."""
    return dict(getattr(options_cls, "NOT_SEARCHED", {}))


def option(default: Any, doc: str, *, check: Check | None = None, flag: str | None = None,
           default_factory: Callable[[], Any] | None = None, search: Space | None = None,
           prior: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its documentation, its check, its CLI flag and its search space.

    ``doc``: one line shown in ``--help`` and in the docs; ``check``: one of
    the checks above (or any callable returning None or the allowed range);
    ``flag``: the command-line flag that sets it (``--tau``), if any;
    ``search``: the range a tuner explores (`Space`), if the option is tuned;
    ``prior``: the documented best setting (docs/LOSSES.md "best settings per
    paper") that the tuner tries first, when it differs from ``default``.
    """
    meta = {"doc": doc, "check": check, "flag": flag}
    if search is not None:
        meta["search"] = search
    if prior is not dataclasses.MISSING:
        meta["prior"] = prior
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def option_fields(options_cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of an options dataclass (an empty tuple for `NoOptions`)."""
    return dataclasses.fields(options_cls)


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (calling its factory if it has one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def check_options(obj: Any, where: str) -> None:
    """Run every field's check on the dataclass instance ``obj``; ConfigError names ``where.key``."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is None or value is None:
            continue
        try:
            problem = check(value)
        except TypeError:
            problem = "of the declared type"
        if problem:
            raise ConfigError(f"{where}.{f.name} must be {problem}, got {value!r}")


@dataclass(frozen=True)
class NoOptions:
    """An entry without options."""


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: what it builds (``target``), its options class and a summary line."""

    name: str
    target: T
    options: type
    summary: str

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in option_fields(self.options))

    def make_options(self, **values: Any) -> Any:
        """An instance of the options class (defaults for missing keys), checked."""
        opts = self.options(**values)
        check_options(opts, self.name)
        return opts


class Registry(Mapping[str, T]):
    """Names → entries of one kind (``"loss"``, ``"model"``, ``"sampler"``).

    Behaves as a read-only mapping from names to targets (``LOSSES["sl"]`` is
    the function), in registration order.  ``entry(name)`` gives the whole
    `Entry`; an unknown name raises `ConfigError` naming the closest one.
    """

    #: the class of this registry's entries: a registry whose entries declare more than `Entry` (the losses'
    #: ``reads`` and ``family``, `rankrobust.losses.base.LossEntry`) names a subclass, whose extra fields are the
    #: keywords of `register`
    entry_type: type = Entry

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, options: type = NoOptions, summary: str | None = None,
                 **declared: Any) -> Callable[[T], T]:
        """Decorator registering ``target`` under ``name`` with its ``options`` dataclass.

        ``summary`` defaults to the target's ``description`` attribute or the
        first line of its docstring; ``declared`` are the extra fields of this
        registry's `entry_type` (TypeError for a keyword it does not have).
        Registering a name twice raises ValueError.
        """

        def add(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if not dataclasses.is_dataclass(options):
                raise TypeError(f"options of {self.kind} {name!r} must be a dataclass")
            doc = getattr(target, "description", None) or getattr(target, "__doc__", None) or ""
            line = summary or (doc.strip().splitlines() or [""])[0]
            self._entries[name] = self.entry_type(name, target, options, line, **declared)
            return target

        return add

    def entry(self, name: str) -> Entry[T]:
        """The entry registered as ``name``; ConfigError naming the closest valid one otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            plural = self.kind + ("es" if self.kind.endswith("s") else "s")
            raise ConfigError(f"unknown {self.kind} {name!r}{closest(name, self._entries)}; "
                              f"valid {plural} are {list(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._entries.values())

    def owners(self, key: str) -> list[str]:
        """Names of the entries that accept option ``key``."""
        return [e.name for e in self._entries.values() if key in e.option_names]

    def all_option_names(self) -> set[str]:
        return {n for e in self._entries.values() for n in e.option_names}

    # Mapping protocol: name -> target
    def __getitem__(self, name: str) -> T:
        return self._entries[name].target

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
