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


def option(default: Any, doc: str, *, check: Check | None = None, flag: str | None = None,
           default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field carrying its documentation, its check and its CLI flag.

    ``doc``: one line shown in ``--help`` and in the docs; ``check``: one of
    the checks above (or any callable returning None or the allowed range);
    ``flag``: the command-line flag that sets it (``--tau``), if any.
    """
    meta = {"doc": doc, "check": check, "flag": flag}
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

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, options: type = NoOptions, summary: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``target`` under ``name`` with its ``options`` dataclass.

        ``summary`` defaults to the target's ``description`` attribute or the
        first line of its docstring.
        Registering a name twice raises ValueError.
        """

        def add(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if not dataclasses.is_dataclass(options):
                raise TypeError(f"options of {self.kind} {name!r} must be a dataclass")
            doc = getattr(target, "description", None) or getattr(target, "__doc__", None) or ""
            line = summary or (doc.strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, target, options, line)
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
